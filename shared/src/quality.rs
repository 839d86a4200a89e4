//! Cipher-quality metrics for 8-bit grayscale images, and the full report
//! that `medgate-sim cipher-report` prints.
//!
//! Reference values for an ideal 8-bit cipher: NPCR 99.6094 %, UACI
//! 33.4635 %, entropy of a random 256×256 image 7.9972 bits, adjacent-pixel
//! correlation ≈ 0; decryption must be exact (MSE 0).

use serde::Serialize;

use crate::henon::{self, HenonKey};
use crate::pixels::{PixelFormat, Pixels};

/// Why a report cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QualityError {
    /// The metrics are defined for 8-bit images only.
    #[error("cipher metrics need an 8-bit grayscale image, got {0:?}")]
    NotGray8(PixelFormat),
    /// Correlation needs at least two pixels in each direction.
    #[error("cipher metrics need an image of at least 2x2 pixels, got {width}x{height}")]
    TooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// NPCR, the number of pixels change rate: the percentage of positions where
/// `a` and `b` differ. Both slices must have the same length.
pub fn npcr(a: &[u8], b: &[u8]) -> f64 {
    let changed = a.iter().zip(b).filter(|(x, y)| x != y).count();
    100.0 * changed as f64 / a.len() as f64
}

/// UACI, the unified average changing intensity: the mean of |a − b| / 255,
/// as a percentage.
pub fn uaci(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    100.0 * total as f64 / (255.0 * a.len() as f64)
}

/// How many pixels take each of the 256 values.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &v in data {
        counts[v as usize] += 1;
    }
    counts
}

/// Shannon entropy of the pixel values, in bits (8 at most).
pub fn entropy(data: &[u8]) -> f64 {
    let n = data.len() as f64;
    histogram(data)
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Mean squared error between two images of the same size.
pub fn mse(a: &[u8], b: &[u8]) -> f64 {
    let total: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    total / a.len() as f64
}

/// Peak signal-to-noise ratio in dB for 8-bit images; infinite when the
/// images are equal.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let error = mse(a, b);
    if error == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / error).log10()
    }
}

/// A direction of adjacent pixel pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `(x, y)` and `(x + 1, y)`.
    Horizontal,
    /// `(x, y)` and `(x, y + 1)`.
    Vertical,
    /// `(x, y)` and `(x + 1, y + 1)`.
    Diagonal,
}

/// Pearson correlation over every adjacent pair in `direction` (all pairs,
/// not a sample). A constant image has no defined correlation; 0 is
/// returned then.
pub fn correlation(data: &[u8], width: usize, height: usize, direction: Direction) -> f64 {
    let (dx, dy) = match direction {
        Direction::Horizontal => (1, 0),
        Direction::Vertical => (0, 1),
        Direction::Diagonal => (1, 1),
    };
    let (mut n, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for y in 0..height.saturating_sub(dy) {
        let row = &data[y * width..(y + 1) * width];
        let next = &data[(y + dy) * width..(y + dy + 1) * width];
        for (&a, &b) in row[..width - dx].iter().zip(&next[dx..]) {
            let (a, b) = (u64::from(a), u64::from(b));
            n += 1;
            sx += a;
            sy += b;
            sxx += a * a;
            syy += b * b;
            sxy += a * b;
        }
    }
    // Exact integer sums, then one division: no drift on large images.
    let n = n as f64;
    let cov = n * sxy as f64 - sx as f64 * sy as f64;
    let var_x = n * sxx as f64 - (sx as f64).powi(2);
    let var_y = n * syy as f64 - (sy as f64).powi(2);
    if var_x <= 0.0 || var_y <= 0.0 {
        0.0
    } else {
        cov / (var_x.sqrt() * var_y.sqrt())
    }
}

/// Correlations in the three directions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Correlations {
    /// Horizontal neighbours.
    pub h: f64,
    /// Vertical neighbours.
    pub v: f64,
    /// Diagonal neighbours.
    pub d: f64,
}

impl Correlations {
    /// All three directions of an image.
    pub fn of(data: &[u8], width: usize, height: usize) -> Self {
        Self {
            h: correlation(data, width, height, Direction::Horizontal),
            v: correlation(data, width, height, Direction::Vertical),
            d: correlation(data, width, height, Direction::Diagonal),
        }
    }
}

/// The cipher report of one image under one key, with exactly the fields of
/// `medgate-sim cipher-report --json`. Percentages are 0–100.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CipherReport {
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// NPCR between the ciphertexts of the image and of the image with its
    /// centre pixel changed, under the same key.
    pub npcr_pixel: f64,
    /// UACI for the same pair.
    pub uaci_pixel: f64,
    /// NPCR between the ciphertexts of the image under the key and under the
    /// key with its lowest bit flipped.
    pub npcr_key: f64,
    /// UACI for the same pair.
    pub uaci_key: f64,
    /// Entropy of the plain image.
    pub entropy_plain: f64,
    /// Entropy of the cipher image.
    pub entropy_cipher: f64,
    /// Adjacent-pixel correlations of the plain image.
    pub corr_plain: Correlations,
    /// Adjacent-pixel correlations of the cipher image.
    pub corr_cipher: Correlations,
    /// PSNR of the cipher image against the plain one, in dB.
    pub psnr_cipher_db: f64,
    /// MSE of the cipher image against the plain one.
    pub mse_cipher: f64,
    /// MSE of the decrypted image against the plain one.
    pub mse_decrypted: f64,
    /// Whether decryption gave back every pixel exactly.
    pub decrypt_exact: bool,
}

/// The images a report was computed from, for plotting.
#[derive(Debug, Clone)]
pub struct ReportImages {
    /// The plain image.
    pub plain: Pixels,
    /// Its encryption under the report's key.
    pub cipher: Pixels,
}

/// Encrypts `plain` under `key` (and its one-pixel and one-bit neighbours)
/// and measures everything in [`CipherReport`].
///
/// # Errors
/// [`QualityError`] for a 16-bit image or one smaller than 2×2.
pub fn report(
    plain: &Pixels,
    key: &HenonKey,
) -> Result<(CipherReport, ReportImages), QualityError> {
    if plain.format() != PixelFormat::Gray8 {
        return Err(QualityError::NotGray8(plain.format()));
    }
    let (width, height) = (plain.width(), plain.height());
    if width < 2 || height < 2 {
        return Err(QualityError::TooSmall { width, height });
    }
    let (w, h) = (width as usize, height as usize);

    let cipher = henon::encrypt(key, plain);

    let mut neighbour = plain.clone();
    let centre = (h / 2) * w + w / 2;
    neighbour.data_mut()[centre] ^= 1;
    let cipher_pixel = henon::encrypt(key, &neighbour);

    let cipher_key = henon::encrypt(&key.with_bit_flipped(0), plain);
    let decrypted = henon::decrypt(key, &cipher);

    let (p, c) = (plain.data(), cipher.data());
    let report = CipherReport {
        width,
        height,
        npcr_pixel: npcr(c, cipher_pixel.data()),
        uaci_pixel: uaci(c, cipher_pixel.data()),
        npcr_key: npcr(c, cipher_key.data()),
        uaci_key: uaci(c, cipher_key.data()),
        entropy_plain: entropy(p),
        entropy_cipher: entropy(c),
        corr_plain: Correlations::of(p, w, h),
        corr_cipher: Correlations::of(c, w, h),
        psnr_cipher_db: psnr(p, c),
        mse_cipher: mse(p, c),
        mse_decrypted: mse(p, decrypted.data()),
        decrypt_exact: decrypted == *plain,
    };
    Ok((
        report,
        ReportImages {
            plain: plain.clone(),
            cipher,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        assert_eq!(npcr(&[1, 2, 3, 4], &[1, 0, 3, 0]), 50.0);
        assert!((uaci(&[0, 0], &[255, 0]) - 50.0).abs() < 1e-12);
        assert_eq!(entropy(&[0, 1, 2, 3]), 2.0);
        assert_eq!(entropy(&[7; 10]), 0.0);
        assert_eq!(mse(&[0, 10], &[0, 0]), 50.0);
        assert_eq!(psnr(&[1, 2], &[1, 2]), f64::INFINITY);
        // A horizontal ramp: perfectly correlated horizontally.
        let ramp: Vec<u8> = (0..16).map(|i| (i % 4) as u8 * 10).collect();
        assert!((correlation(&ramp, 4, 4, Direction::Horizontal) - 1.0).abs() < 1e-12);
        // Every row is the same, so vertical neighbours are equal.
        assert!((correlation(&ramp, 4, 4, Direction::Vertical) - 1.0).abs() < 1e-12);
        // A constant image has no defined correlation.
        assert_eq!(correlation(&[9; 16], 4, 4, Direction::Diagonal), 0.0);
    }

    #[test]
    fn report_on_a_smooth_image_meets_the_targets() {
        let (w, h) = (256u32, 256u32);
        let data = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                ((x + 2 * y) / 3) as u8
            })
            .collect();
        let plain = Pixels::new(w, h, PixelFormat::Gray8, data).unwrap();
        let (r, _) = report(&plain, &HenonKey::from_bytes([0x5a; 32])).unwrap();
        println!("{r:?}");
        assert!(r.decrypt_exact && r.mse_decrypted == 0.0);
        assert!(r.npcr_pixel > 99.5 && r.npcr_key > 99.5, "{r:?}");
        assert!(
            (r.uaci_pixel - 33.46).abs() < 0.5 && (r.uaci_key - 33.46).abs() < 0.5,
            "{r:?}"
        );
        assert!(r.entropy_cipher > 7.99, "{r:?}");
        for c in [r.corr_cipher.h, r.corr_cipher.v, r.corr_cipher.d] {
            assert!(c.abs() < 0.02, "{r:?}");
        }
        assert!(r.corr_plain.h > 0.9);
    }

    #[test]
    fn report_refuses_what_it_cannot_measure() {
        let wide = Pixels::new(2, 2, PixelFormat::Gray16, vec![0; 8]).unwrap();
        assert!(matches!(
            report(&wide, &HenonKey::from_bytes([0; 32])),
            Err(QualityError::NotGray8(_))
        ));
        let thin = Pixels::new(5, 1, PixelFormat::Gray8, vec![0; 5]).unwrap();
        assert!(matches!(
            report(&thin, &HenonKey::from_bytes([0; 32])),
            Err(QualityError::TooSmall { .. })
        ));
    }
}
