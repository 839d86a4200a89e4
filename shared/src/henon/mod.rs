//! The Henon-map image cipher: keyed pixel permutation, then forward and
//! backward diffusion, driven by a Henon-map keystream.
//!
//! ```text
//! encrypt:  pixels ─► permute (σ, π, ρ, κ) ─► forward diffusion (⊕ keystream) ─► backward diffusion
//! decrypt:  undo backward ─► undo forward ─► inverse permutation
//! ```
//!
//! - [`keystream`]: sixteen interleaved Henon orbits, bit-exact IEEE f64.
//! - [`permute`]: the confusion stage, a keyed bijection on pixel positions.
//! - [`diffuse`]: the diffusion stage, every output byte depends on every
//!   input byte and on the key.
//!
//! The keystream is consumed in one fixed order: permutation tables, then
//! diffusion states, then one keystream byte per pixel byte for the forward
//! pass. Within medgate every image gets its own [`HenonKey`] (derived per
//! message, see [`crate::kdf`]), but the cipher does not rely on that: its
//! diffusion alone changes about 99.6 % of the output when one pixel changes
//! under the same key.
//!
//! Two [`Variant`]s exist, one per generation of the sealed-image format:
//!
//! | | Original (formats 2, 3) | Whitened (format 4) |
//! |---|---|---|
//! | keystream | 4 raw mantissa bytes per iterate (measurably biased) | 8 bytes per iterate, added to a keyed counter and folded through a 128-bit multiply |
//! | permutation unit | one pixel | a run of up to 8 bytes of a row (8 pixels of 8 bits, 4 of 16) |
//!
//! Moving pixels one at a time cost more than the rest of the cipher
//! together (three dependent table reads per byte); moving runs of a row
//! costs one eighth of that. What the permutation is for, scattering the
//! image's spatial structure before diffusion, does not need single pixels:
//! runs still land in keyed, unrelated rows and columns, and the diffusion
//! that follows makes every output byte depend on every input byte either
//! way. Pixels move as whole pixels in both; diffusion works on the bytes.

mod diffuse;
mod keystream;
mod permute;

use std::cell::RefCell;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::pixels::Pixels;
use diffuse::DiffusionKeys;
pub use keystream::Keystream;
use permute::Permutation;

/// Which generation of the cipher: the keystream it draws and the unit its
/// permutation moves (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Formats 2 and 3.
    Original,
    /// Format 4.
    Whitened,
}

impl Variant {
    /// The variant that images are sealed with today.
    pub const CURRENT: Self = Self::Whitened;
}

/// A 256-bit key of the Henon cipher. Wiped from memory when dropped; its
/// `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct HenonKey([u8; 32]);

impl HenonKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The same key with bit `bit` (0 = lowest bit of byte 0) flipped: the
    /// neighbour used to measure key sensitivity.
    pub fn with_bit_flipped(&self, bit: usize) -> Self {
        let mut bytes = self.0;
        bytes[(bit / 8) % 32] ^= 1 << (bit % 8);
        Self(bytes)
    }
}

impl std::fmt::Debug for HenonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HenonKey(<redacted>)")
    }
}

/// How a variant cuts an image into the units its permutation moves: a
/// grid of `columns` units of `unit` bytes per row.
#[derive(Debug, Clone, Copy)]
struct Layout {
    unit: usize,
    columns: usize,
}

impl Layout {
    fn of(variant: Variant, image: &Pixels) -> Self {
        let pixel = image.format().bytes_per_pixel();
        let width = image.width() as usize;
        match variant {
            Variant::Original => Self {
                unit: pixel,
                columns: width,
            },
            Variant::Whitened => {
                // The longest run of 8, 4, 2 or 1 bytes that tiles a row
                // (a whole number of pixels, since a row's byte count is a
                // multiple of the pixel size).
                let row = width * pixel;
                let unit = [8, 4, 2, 1]
                    .into_iter()
                    .find(|&unit| row.is_multiple_of(unit))
                    .unwrap_or(1);
                Self {
                    unit,
                    columns: row / unit,
                }
            }
        }
    }
}

thread_local! {
    /// A copy of a small image being unpermuted, at most as large as an
    /// image that [`Permutation::fits_cache`] (1 MiB), one per thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The tables and states of one key for one image size, drawn once.
struct Schedule {
    layout: Layout,
    permutation: Permutation,
    diffusion: DiffusionKeys,
    /// Positioned at the forward pass's first keystream byte.
    stream: Keystream,
}

impl Schedule {
    fn new(variant: Variant, key: &HenonKey, image: &Pixels) -> Self {
        let layout = Layout::of(variant, image);
        let mut stream = Keystream::new(key, variant);
        let permutation = Permutation::new(layout.columns, image.height() as usize, &mut stream);
        let diffusion = DiffusionKeys::new(&mut stream);
        Self {
            layout,
            permutation,
            diffusion,
            stream,
        }
    }

    /// Permutes `input` into `out` in the layout's units.
    fn permute(&self, input: &[u8], out: &mut [u8]) {
        fn units<const U: usize>(permutation: &Permutation, input: &[u8], out: &mut [u8])
        where
            [u8; U]: Default,
        {
            let (input, _) = input.as_chunks::<U>();
            let (out, _) = out.as_chunks_mut::<U>();
            permutation.apply(input, out);
        }
        match self.layout.unit {
            1 => self.permutation.apply(input, out),
            2 => units::<2>(&self.permutation, input, out),
            4 => units::<4>(&self.permutation, input, out),
            _ => units::<8>(&self.permutation, input, out),
        }
    }

    /// Undoes [`permute`](Self::permute) in `data`'s own buffer: an image
    /// that fits the cache from a copy in this thread's scratch buffer (one
    /// pass of scattered reads), a larger one through the blocked passes.
    ///
    /// The scratch buffer is kept between calls because a new one per image
    /// cost more than the inversion: glibc hands the freed pair of
    /// image-sized buffers back to the kernel and every call faulted them in
    /// again (measured at 512² 8-bit: 632 000 page faults in one
    /// `bench-cipher` run and half the decryption speed).
    fn unpermute(&self, data: Vec<u8>) -> Vec<u8> {
        fn units<const U: usize>(permutation: &Permutation, mut data: Vec<u8>) -> Vec<u8>
        where
            [u8; U]: Default,
        {
            if permutation.fits_cache::<[u8; U]>() {
                SCRATCH.with_borrow_mut(|scratch| {
                    scratch.clear();
                    scratch.extend_from_slice(&data);
                    let (input, _) = scratch.as_chunks::<U>();
                    let (output, _) = data.as_chunks_mut::<U>();
                    permutation.invert(input, output);
                });
                data
            } else {
                let (units, _) = data.as_chunks_mut::<U>();
                permutation.invert_in_place(units);
                data
            }
        }
        match self.layout.unit {
            1 => units::<1>(&self.permutation, data),
            2 => units::<2>(&self.permutation, data),
            4 => units::<4>(&self.permutation, data),
            _ => units::<8>(&self.permutation, data),
        }
    }
}

/// Encrypts an image; the result has the same size and format.
pub fn encrypt(variant: Variant, key: &HenonKey, plain: &Pixels) -> Pixels {
    let mut data = vec![0u8; plain.data().len()];
    encrypt_into(variant, key, plain, &mut data);
    plain.with_data(data)
}

/// Encrypts an image into `out`, which must be exactly as long as its
/// pixel data (a sealer writes the ciphertext straight into the envelope,
/// so a large image is not held twice).
///
/// # Panics
/// If `out` is not as long as the image's data.
pub fn encrypt_into(variant: Variant, key: &HenonKey, plain: &Pixels, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        plain.data().len(),
        "ciphertext buffer must match the image"
    );
    let mut schedule = Schedule::new(variant, key, plain);
    schedule.permute(plain.data(), out);
    diffuse::forward_encrypt(out, &schedule.diffusion, &mut schedule.stream);
    diffuse::backward_encrypt(out, &schedule.diffusion);
}

/// Decrypts an image made by [`encrypt`] under the same key and variant.
pub fn decrypt(variant: Variant, key: &HenonKey, cipher: &Pixels) -> Pixels {
    decrypt_owned(variant, key, cipher.clone())
}

/// [`decrypt`], undoing the diffusion in the ciphertext's own buffer (an
/// opener owns it already, so a large image is not copied first).
pub fn decrypt_owned(variant: Variant, key: &HenonKey, mut cipher: Pixels) -> Pixels {
    let mut schedule = Schedule::new(variant, key, &cipher);
    let data = cipher.data_mut();
    diffuse::backward_decrypt(data, &schedule.diffusion);
    diffuse::forward_decrypt(data, &schedule.diffusion, &mut schedule.stream);
    cipher.map_data(|data| schedule.unpermute(data))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pixels::PixelFormat;

    fn image(width: u32, height: u32, format: PixelFormat, seed: u8) -> Pixels {
        let len = width as usize * height as usize * format.bytes_per_pixel();
        let data = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        Pixels::new(width, height, format, data).unwrap()
    }

    fn fraction_changed(a: &Pixels, b: &Pixels) -> f64 {
        let changed = a
            .data()
            .iter()
            .zip(b.data())
            .filter(|(x, y)| x != y)
            .count();
        changed as f64 / a.data().len() as f64
    }

    const VARIANTS: [Variant; 2] = [Variant::Original, Variant::Whitened];

    #[test]
    fn round_trips_awkward_sizes() {
        let key = HenonKey::from_bytes([42; 32]);
        // Widths whose rows tile in runs of 1, 2, 4 and 8 bytes.
        for (w, h) in [
            (1, 1),
            (1, 9),
            (3, 3),
            (8, 8),
            (9, 8),
            (13, 7),
            (64, 1),
            (100, 37),
            (6, 5),
            (12, 3),
            (2000, 600),
        ] {
            for format in [PixelFormat::Gray8, PixelFormat::Gray16] {
                for variant in VARIANTS {
                    let plain = image(w, h, format, 5);
                    let cipher = encrypt(variant, &key, &plain);
                    assert_ne!(cipher, plain, "{w}x{h} {format:?} {variant:?} unchanged");
                    assert_eq!(
                        decrypt(variant, &key, &cipher),
                        plain,
                        "{w}x{h} {format:?} {variant:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_changed_pixel_changes_almost_every_byte() {
        let key = HenonKey::from_bytes([1; 32]);
        for (format, variant) in [PixelFormat::Gray8, PixelFormat::Gray16]
            .into_iter()
            .flat_map(|f| VARIANTS.map(|v| (f, v)))
        {
            let plain = image(128, 96, format, 0);
            let base = encrypt(variant, &key, &plain);
            // First, middle and last pixel: each must reach everything.
            let len = plain.data().len();
            for at in [0, len / 2 + 3, len - 1] {
                let mut other = plain.clone();
                other.data_mut()[at] ^= 1;
                let changed = fraction_changed(&base, &encrypt(variant, &key, &other));
                assert!(
                    changed > 0.99,
                    "{format:?} {variant:?} byte {at}: {changed}"
                );
            }
        }
    }

    #[test]
    fn one_flipped_key_bit_changes_almost_every_byte() {
        let key = HenonKey::from_bytes([77; 32]);
        let plain = image(64, 64, PixelFormat::Gray8, 9);
        for variant in VARIANTS {
            let base = encrypt(variant, &key, &plain);
            for bit in [0, 100, 255] {
                let flipped = encrypt(variant, &key.with_bit_flipped(bit), &plain);
                let changed = fraction_changed(&base, &flipped);
                assert!(changed > 0.99, "{variant:?} bit {bit}: {changed}");
            }
        }
    }

    #[test]
    fn wrong_key_does_not_decrypt() {
        let plain = image(32, 32, PixelFormat::Gray8, 3);
        for variant in VARIANTS {
            let cipher = encrypt(variant, &HenonKey::from_bytes([5; 32]), &plain);
            let wrong = decrypt(variant, &HenonKey::from_bytes([6; 32]), &cipher);
            assert!(fraction_changed(&wrong, &plain) > 0.95, "{variant:?}");
        }
    }

    #[test]
    fn key_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", HenonKey::from_bytes([9; 32])),
            "HenonKey(<redacted>)"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decrypt_inverts_encrypt(
            key in any::<[u8; 32]>(),
            width in 1u32..40,
            height in 1u32..40,
            wide in any::<bool>(),
            whitened in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let variant = if whitened { Variant::Whitened } else { Variant::Original };
            let format = if wide { PixelFormat::Gray16 } else { PixelFormat::Gray8 };
            let key = HenonKey::from_bytes(key);
            let plain = image(width, height, format, seed);
            prop_assert_eq!(decrypt(variant, &key, &encrypt(variant, &key, &plain)), plain);
        }
    }
}
