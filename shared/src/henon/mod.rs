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
//! Pixels move as whole pixels (one byte for 8-bit, two for 16-bit images);
//! diffusion works on the bytes.

mod diffuse;
mod keystream;
mod permute;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::pixels::{PixelFormat, Pixels};
use diffuse::DiffusionKeys;
use keystream::Keystream;
use permute::Permutation;

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

/// The tables and states of one key for one image size, drawn once.
struct Schedule {
    permutation: Permutation,
    diffusion: DiffusionKeys,
    /// Positioned at the forward pass's first keystream byte.
    stream: Keystream,
}

impl Schedule {
    fn new(key: &HenonKey, width: u32, height: u32) -> Self {
        let mut stream = Keystream::new(key);
        let permutation = Permutation::new(width as usize, height as usize, &mut stream);
        let diffusion = DiffusionKeys::new(&mut stream);
        Self {
            permutation,
            diffusion,
            stream,
        }
    }
}

/// Encrypts an image; the result has the same size and format.
pub fn encrypt(key: &HenonKey, plain: &Pixels) -> Pixels {
    let mut data = vec![0u8; plain.data().len()];
    encrypt_into(key, plain, &mut data);
    plain.with_data(data)
}

/// Encrypts an image into `out`, which must be exactly as long as its
/// pixel data (a sealer writes the ciphertext straight into the envelope,
/// so a large image is not held twice).
///
/// # Panics
/// If `out` is not as long as the image's data.
pub fn encrypt_into(key: &HenonKey, plain: &Pixels, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        plain.data().len(),
        "ciphertext buffer must match the image"
    );
    let Schedule {
        permutation,
        diffusion,
        mut stream,
    } = Schedule::new(key, plain.width(), plain.height());
    match plain.format() {
        PixelFormat::Gray8 => permutation.apply(plain.data(), out),
        PixelFormat::Gray16 => {
            let (input, _) = plain.data().as_chunks::<2>();
            let (output, _) = out.as_chunks_mut::<2>();
            permutation.apply(input, output);
        }
    }
    diffuse::forward_encrypt(out, &diffusion, &mut stream);
    diffuse::backward_encrypt(out, &diffusion);
}

/// Decrypts an image made by [`encrypt`] under the same key.
pub fn decrypt(key: &HenonKey, cipher: &Pixels) -> Pixels {
    decrypt_owned(key, cipher.clone())
}

/// [`decrypt`], undoing the diffusion in the ciphertext's own buffer (an
/// opener owns it already, so a large image is not copied first).
pub fn decrypt_owned(key: &HenonKey, mut cipher: Pixels) -> Pixels {
    let Schedule {
        permutation,
        diffusion,
        mut stream,
    } = Schedule::new(key, cipher.width(), cipher.height());
    let mixed = cipher.data_mut();
    diffuse::backward_decrypt(mixed, &diffusion);
    diffuse::forward_decrypt(mixed, &diffusion, &mut stream);
    match cipher.format() {
        PixelFormat::Gray8 => cipher.map_data(|data| unpermute(&permutation, data)),
        PixelFormat::Gray16 => cipher.map_data(|mut data| {
            if permutation.fits_cache::<[u8; 2]>() {
                let mut out = vec![0u8; data.len()];
                let (input, _) = data.as_chunks::<2>();
                let (output, _) = out.as_chunks_mut::<2>();
                permutation.invert(input, output);
                out
            } else {
                let (units, _) = data.as_chunks_mut::<2>();
                permutation.invert_in_place(units);
                data
            }
        }),
    }
}

/// Undoes the permutation of 8-bit pixels: an image that fits the cache
/// through a second buffer (one pass of scattered reads), a larger one in
/// its own buffer.
fn unpermute(permutation: &Permutation, mut data: Vec<u8>) -> Vec<u8> {
    if permutation.fits_cache::<u8>() {
        let mut out = vec![0u8; data.len()];
        permutation.invert(&data, &mut out);
        out
    } else {
        permutation.invert_in_place(&mut data);
        data
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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

    #[test]
    fn round_trips_awkward_sizes() {
        let key = HenonKey::from_bytes([42; 32]);
        for (w, h) in [
            (1, 1),
            (1, 9),
            (3, 3),
            (8, 8),
            (9, 8),
            (13, 7),
            (64, 1),
            (100, 37),
        ] {
            for format in [PixelFormat::Gray8, PixelFormat::Gray16] {
                let plain = image(w, h, format, 5);
                let cipher = encrypt(&key, &plain);
                assert_ne!(cipher, plain, "{w}x{h} {format:?} unchanged");
                assert_eq!(decrypt(&key, &cipher), plain, "{w}x{h} {format:?}");
            }
        }
    }

    #[test]
    fn one_changed_pixel_changes_almost_every_byte() {
        let key = HenonKey::from_bytes([1; 32]);
        for format in [PixelFormat::Gray8, PixelFormat::Gray16] {
            let plain = image(128, 96, format, 0);
            let base = encrypt(&key, &plain);
            // First, middle and last pixel: each must reach everything.
            let len = plain.data().len();
            for at in [0, len / 2 + 3, len - 1] {
                let mut other = plain.clone();
                other.data_mut()[at] ^= 1;
                let changed = fraction_changed(&base, &encrypt(&key, &other));
                assert!(changed > 0.99, "{format:?} pixel byte {at}: {changed}");
            }
        }
    }

    #[test]
    fn one_flipped_key_bit_changes_almost_every_byte() {
        let key = HenonKey::from_bytes([77; 32]);
        let plain = image(64, 64, PixelFormat::Gray8, 9);
        let base = encrypt(&key, &plain);
        for bit in [0, 100, 255] {
            let changed = fraction_changed(&base, &encrypt(&key.with_bit_flipped(bit), &plain));
            assert!(changed > 0.99, "bit {bit}: {changed}");
        }
    }

    #[test]
    fn wrong_key_does_not_decrypt() {
        let plain = image(32, 32, PixelFormat::Gray8, 3);
        let cipher = encrypt(&HenonKey::from_bytes([5; 32]), &plain);
        let wrong = decrypt(&HenonKey::from_bytes([6; 32]), &cipher);
        assert!(fraction_changed(&wrong, &plain) > 0.95);
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
            seed in any::<u8>(),
        ) {
            let format = if wide { PixelFormat::Gray16 } else { PixelFormat::Gray8 };
            let key = HenonKey::from_bytes(key);
            let plain = image(width, height, format, seed);
            prop_assert_eq!(decrypt(&key, &encrypt(&key, &plain)), plain);
        }
    }
}
