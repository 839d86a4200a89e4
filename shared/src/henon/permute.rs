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
        }
    }

    /// `out[y·W + x] = input[r·W + c]` for every output position.
    pub(crate) fn gather<T: Copy>(&self, input: &[T], out: &mut [T]) {
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

    /// The inverse of [`gather`](Self::gather): `out[r·W + c] = input[y·W + x]`.
    pub(crate) fn scatter<T: Copy>(&self, input: &[T], out: &mut [T]) {
        debug_assert_eq!(input.len(), self.width * self.height);
        debug_assert_eq!(out.len(), input.len());
        for (y, (in_row, &shift)) in input
            .chunks_exact(self.width)
            .zip(&self.row_shift)
            .enumerate()
        {
            let shift = shift as usize;
            let window = &self.columns[shift..shift + self.width];
            let offsets = &self.row_offset[y..y + self.height];
            for (&v, &(c, k)) in in_row.iter().zip(window) {
                out[offsets[k as usize] + c as usize] = v;
            }
        }
    }
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
    use crate::henon::HenonKey;

    fn permutation(width: usize, height: usize) -> Permutation {
        Permutation::new(
            width,
            height,
            &mut Keystream::new(&HenonKey::from_bytes([3; 32])),
        )
    }

    #[test]
    fn gather_is_a_bijection_and_scatter_undoes_it() {
        for (w, h) in [(1, 1), (1, 7), (7, 1), (5, 3), (64, 64), (33, 17)] {
            let perm = permutation(w, h);
            let input: Vec<u32> = (0..(w * h) as u32).collect();
            let mut mixed = vec![0; w * h];
            perm.gather(&input, &mut mixed);
            let mut seen = mixed.clone();
            seen.sort_unstable();
            assert_eq!(seen, input, "{w}x{h} is not a permutation");
            let mut back = vec![0; w * h];
            perm.scatter(&mixed, &mut back);
            assert_eq!(back, input);
        }
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
