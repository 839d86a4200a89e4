//! The confusion stage: a keyed permutation of pixel positions.
//!
//! Four tables are drawn from the Henon keystream: a row permutation σ and a
//! column permutation π (Fisher–Yates), a rotation ρ for every output row
//! and a rotation κ for every source column. Output pixel `(y, x)` takes
//! source pixel `(r, c)` with
//!
//! ```text
//! c = π[(x + ρ[y]) mod W]
//! r = σ[(y + κ[c]) mod H]
//! ```
//!
//! This is a bijection: equal `(r, c)` forces equal `c`, hence equal `y`
//! (κ[c] is then the same), hence equal `x`. Pixels of one source row land
//! in different output rows (κ differs per column) and pixels of one source
//! column in different output columns (ρ differs per row).
//!
//! Why not one Fisher–Yates over all pixels: that needs a random 32-bit draw
//! and a random memory access per pixel, several times slower than the
//! diffusion stage. Here the keystream cost is O(W + H) and the work per
//! pixel is a few reads from small tables.
//!
//! Measured alternatives that were slower (`medgate-sim bench-cipher`):
//! two stages (row shuffle, then column rotation in 64-column tiles), where
//! with power-of-two widths the rows of a tile share a few cache sets; and an
//! inverse written as a gather, whose dependent table reads cost more than
//! the scatter's random writes.

use super::keystream::Keystream;

/// The tables of one keyed permutation of a `width × height` grid.
pub(crate) struct Permutation {
    width: usize,
    height: usize,
    /// Per output-row rotation ρ, each in `0..width`.
    row_shift: Vec<u32>,
    /// For `j` in `0..2·width`: `(π[j mod W], κ[π[j mod W]])`, doubled so
    /// that a rotated row reads one contiguous window.
    columns: Vec<(u32, u32)>,
    /// For `j` in `0..2·height`: `σ[j mod H] · W`, the offset of a source row.
    row_offset: Vec<usize>,
    /// σ⁻¹: where source row `r` stands in σ, for the blocked passes and the
    /// direct inverse.
    sigma_inverse: Vec<u32>,
    /// κ by source column.
    kappa: Vec<u32>,
}

impl Permutation {
    /// Draws the tables from `stream`, consuming, in order, H − 1 and W − 1
    /// Fisher–Yates draws (σ then π), H draws for ρ and W draws for κ.
    pub(crate) fn new(width: usize, height: usize, stream: &mut Keystream) -> Self {
        let sigma = shuffled(height, stream);
        let pi = shuffled(width, stream);
        let row_shift = (0..height).map(|_| stream.below(width) as u32).collect();
        let kappa: Vec<u32> = (0..width).map(|_| stream.below(height) as u32).collect();
        let columns = (0..2 * width)
            .map(|j| {
                let c = pi[j % width];
                (c as u32, kappa[c])
            })
            .collect();
        let row_offset = (0..2 * height).map(|j| sigma[j % height] * width).collect();
        Self {
            width,
            height,
            row_shift,
            columns,
            row_offset,
            sigma_inverse: {
                let mut inverse = vec![0u32; height];
                for (j, &r) in sigma.iter().enumerate() {
                    inverse[r] = j as u32;
                }
                inverse
            },
            kappa,
        }
    }

    /// `out[y·W + x] = input[r·W + c]` for every output position.
    pub(crate) fn apply<T: Copy + Default>(&self, input: &[T], out: &mut [T]) {
        if self.direct::<T>() {
            self.gather(input, out);
        } else {
            self.apply_blocked(input, out);
        }
    }

    /// The inverse of [`apply`](Self::apply) for an image that
    /// [`fits_cache`](Self::fits_cache): `out[r·W + c] = input[y·W + x]`.
    pub(crate) fn invert<T: Copy>(&self, input: &[T], out: &mut [T]) {
        self.invert_direct(input, out);
    }

    /// Whether an image of `T` units is small enough to stay in cache, so
    /// that one pass of scattered accesses beats the blocked passes (and a
    /// second buffer costs little).
    pub(crate) fn fits_cache<T>(&self) -> bool {
        self.direct::<T>()
    }

    /// Whether the image is small enough to stay in cache, so that one pass
    /// of scattered reads beats three passes in order.
    fn direct<T>(&self) -> bool {
        self.width * self.height * size_of::<T>() <= DIRECT_LIMIT
    }

    fn gather<T: Copy>(&self, input: &[T], out: &mut [T]) {
        debug_assert_eq!(input.len(), self.width * self.height);
        debug_assert_eq!(out.len(), input.len());
        for (y, (out_row, &shift)) in out
            .chunks_exact_mut(self.width)
            .zip(&self.row_shift)
            .enumerate()
        {
            let shift = shift as usize;
            let window = &self.columns[shift..shift + self.width];
            let offsets = &self.row_offset[y..y + self.height];
            for (o, &(c, k)) in out_row.iter_mut().zip(window) {
                *o = input[offsets[k as usize] + c as usize];
            }
        }
    }

    /// The inverse of [`gather`](Self::gather), as a gather.
    fn invert_direct<T: Copy>(&self, input: &[T], out: &mut [T]) {
        let (w, h) = (self.width, self.height);
        debug_assert_eq!(input.len(), w * h);
        debug_assert_eq!(out.len(), input.len());
        // For source column c: (π⁻¹[c] + W, H − 1 − κ[c]).
        let mut column = vec![(0u32, 0u32); w];
        for (j, &(c, k)) in self.columns[..w].iter().enumerate() {
            column[c as usize] = ((j + w) as u32, (h - 1 - k as usize) as u32);
        }
        let position = &self.sigma_inverse;
        // For j in 0..2H, output row y = j mod H: (y·W, ρ[y]).
        let rows: Vec<(u32, u32)> = (0..2 * h)
            .map(|j| (((j % h) * w) as u32, self.row_shift[j % h]))
            .collect();
        for (out_row, &s) in out.chunks_exact_mut(w).zip(position) {
            let rows = &rows[s as usize + 1..s as usize + h + 1];
            for (o, &(x_plus_w, k)) in out_row.iter_mut().zip(&column) {
                let (start, shift) = rows[k as usize];
                let mut x = x_plus_w - shift;
                if x >= w as u32 {
                    x -= w as u32;
                }
                *o = input[(start + x) as usize];
            }
        }
    }

    /// [`gather`](Self::gather) for images larger than the cache, in the
    /// order the memory likes: for each block of columns (a few cache lines
    /// of every row), copy the block's piece of every source row, read in
    /// memory order, to its place σ⁻¹ in a row-major strip, and read each
    /// output row's piece from the strip (σ and κ); then move every row's
    /// pixels within the row (π and ρ), in place. Every source cache line
    /// is read once and every output line written whole.
    fn apply_blocked<T: Copy + Default>(&self, input: &[T], out: &mut [T]) {
        let (w, h) = (self.width, self.height);
        let block = block_width::<T>(w, h);
        let mut strip = vec![T::default(); block * h];
        for c0 in (0..w).step_by(block) {
            let b = block.min(w - c0);
            let strip = &mut strip[..b * h];
            // strip[j·b + c] = source (σ[j], c0 + c): source rows in memory
            // order (a constant stride the prefetcher follows; in σ order
            // every row was a cache miss of its own), each piece one copy.
            for (from, &j) in input.chunks_exact(w).zip(&self.sigma_inverse) {
                let j = j as usize * b;
                strip[j..j + b].copy_from_slice(&from[c0..c0 + b]);
            }
            // T(y, c0 + c) = strip[((y + κ[c0 + c]) mod H)·b + c]
            let kappa = &self.kappa[c0..c0 + b];
            for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
                let to = &mut out_row[c0..c0 + b];
                for (c, (o, &k)) in to.iter_mut().zip(kappa).enumerate() {
                    *o = strip[wrap(y + k as usize, h) * b + c];
                }
            }
        }
        let mut row = Vec::with_capacity(w);
        for (out_row, &shift) in out.chunks_exact_mut(w).zip(&self.row_shift) {
            row.clear();
            row.extend_from_slice(out_row);
            let window = &self.columns[shift as usize..shift as usize + w];
            for (o, &(c, _)) in out_row.iter_mut().zip(window) {
                *o = row[c as usize];
            }
        }
    }

    /// The inverse of [`apply`](Self::apply) in `data`'s own buffer: the
    /// passes of [`apply_blocked`](Self::apply_blocked) undone in reverse
    /// order, each column block read whole into the strip before it is
    /// written back. A large image needs no second buffer (whose pages
    /// the kernel would first have to fault in and clear).
    pub(crate) fn invert_in_place<T: Copy + Default>(&self, data: &mut [T]) {
        let (w, h) = (self.width, self.height);
        debug_assert_eq!(data.len(), w * h);
        let mut row = Vec::with_capacity(w);
        for (in_row, &shift) in data.chunks_exact_mut(w).zip(&self.row_shift) {
            row.clear();
            row.extend_from_slice(in_row);
            let window = &self.columns[shift as usize..shift as usize + w];
            for (&v, &(c, _)) in row.iter().zip(window) {
                in_row[c as usize] = v;
            }
        }
        let block = block_width::<T>(w, h);
        let mut strip = vec![T::default(); block * h];
        for c0 in (0..w).step_by(block) {
            let b = block.min(w - c0);
            let strip = &mut strip[..b * h];
            let kappa = &self.kappa[c0..c0 + b];
            for (y, in_row) in data.chunks_exact(w).enumerate() {
                let from = &in_row[c0..c0 + b];
                for (c, (&v, &k)) in from.iter().zip(kappa).enumerate() {
                    strip[wrap(y + k as usize, h) * b + c] = v;
                }
            }
            for (to, &j) in data.chunks_exact_mut(w).zip(&self.sigma_inverse) {
                let j = j as usize * b;
                to[c0..c0 + b].copy_from_slice(&strip[j..j + b]);
            }
        }
    }
}

/// Images up to this many bytes are permuted in one pass of scattered
/// accesses (see [`Permutation::direct`]).
const DIRECT_LIMIT: usize = 1 << 20;
/// A cache line.
const LINE: usize = 64;
/// The widest column block, in cache lines of every row.
const BLOCK_LINES: usize = 8;
/// The most bytes the strip of a column block may take: its reads and
/// writes are scattered, so it must stay in cache (past this, measured at
/// 8192 rows, wider blocks are slower).
const STRIP_BYTES: usize = 2 << 20;

/// Units per column block of the blocked passes: up to
/// [`BLOCK_LINES`] cache lines of every row, fewer when the image is so
/// tall that the strip would outgrow [`STRIP_BYTES`], at least one line.
///
/// Wide blocks matter because each pass over a block touches every row,
/// and rows lie a page or more apart: with one line per block, every access
/// of a 4096² 16-bit image missed the TLB (measured with the blocked passes
/// on their own: 8 lines take 40 % less time than 1 at 4096 rows of
/// 8192 bytes, 25 % less at 2048 rows of 4096; more than 8 lines, or a
/// larger strip, is slower again).
fn block_width<T>(width: usize, height: usize) -> usize {
    let per_line = (LINE / size_of::<T>()).max(1);
    let lines = (STRIP_BYTES / (height * LINE).max(1)).clamp(1, BLOCK_LINES);
    (per_line * lines).min(width)
}

/// `v mod n` for `v < 2n`.
#[inline(always)]
fn wrap(v: usize, n: usize) -> usize {
    if v >= n { v - n } else { v }
}

/// A Fisher–Yates shuffle of `0..n` driven by the keystream.
fn shuffled(n: usize, stream: &mut Keystream) -> Vec<usize> {
    let mut items: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = stream.below(i + 1);
        items.swap(i, j);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::henon::{HenonKey, Variant};

    fn permutation(width: usize, height: usize) -> Permutation {
        Permutation::new(
            width,
            height,
            &mut Keystream::new(&HenonKey::from_bytes([3; 32]), Variant::Original),
        )
    }

    #[test]
    fn both_ways_are_one_bijection_and_invert_undoes_it() {
        // Widths around the column block (64 bytes: 64 u8, 32 [u8; 2]).
        for (w, h) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (5, 3),
            (64, 64),
            (33, 17),
            (65, 9),
            (130, 3),
            (31, 40),
            // Several column blocks and a ragged last one.
            (300, 5),
            (1100, 3),
        ] {
            let perm = permutation(w, h);
            let input: Vec<u32> = (0..(w * h) as u32).collect();
            let mut mixed = vec![0; w * h];
            perm.gather(&input, &mut mixed);
            let mut seen = mixed.clone();
            seen.sort_unstable();
            assert_eq!(seen, input, "{w}x{h} is not a permutation");
            // A column block holds up to 128 u32, 512 u8 or 256 [u8; 2].
            agree(&perm, &input);
            agree(&perm, &input.iter().map(|&v| v as u8).collect::<Vec<_>>());
            agree(
                &perm,
                &input
                    .iter()
                    .map(|&v| (v as u16).to_le_bytes())
                    .collect::<Vec<_>>(),
            );
        }
    }

    /// The blocked passes give the direct ones' result, and both inverses
    /// undo it.
    fn agree<T: Copy + Default + PartialEq + std::fmt::Debug>(perm: &Permutation, input: &[T]) {
        let (w, h) = (perm.width, perm.height);
        let mut direct = vec![T::default(); input.len()];
        perm.gather(input, &mut direct);
        let mut blocked = vec![T::default(); input.len()];
        perm.apply_blocked(input, &mut blocked);
        assert_eq!(blocked, direct, "{w}x{h}: blocked and direct differ");

        let mut back = vec![T::default(); input.len()];
        perm.invert_direct(&direct, &mut back);
        assert_eq!(back, input, "{w}x{h}: direct inverse");
        let mut back = direct.clone();
        perm.invert_in_place(&mut back);
        assert_eq!(back, input, "{w}x{h}: inverse in place");
    }

    #[test]
    fn source_rows_are_spread_over_many_output_rows() {
        let (w, h) = (64, 64);
        let perm = permutation(w, h);
        let input: Vec<u32> = (0..(w * h) as u32).collect();
        let mut mixed = vec![0; w * h];
        perm.gather(&input, &mut mixed);
        // Output rows that hold a pixel of source row 0.
        let mut rows: Vec<usize> = (0..w * h)
            .filter(|&i| (mixed[i] as usize) / w == 0)
            .map(|i| i / w)
            .collect();
        rows.dedup();
        assert!(
            rows.len() > w / 2,
            "source row 0 spans only {} rows",
            rows.len()
        );
    }
}
