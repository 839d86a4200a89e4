//! Cipher-quality metrics for 8- and 16-bit grayscale images, the full
//! report that `medgate-sim cipher-report` prints, and a bias check of raw
//! keystream bytes ([`StreamBias`]).
//!
//! Reference values for an ideal cipher of 8-bit images: NPCR 99.6094 %,
//! UACI 33.4635 %, entropy of a random 256×256 image 7.9972 bits,
//! adjacent-pixel correlation ≈ 0; of 16-bit images: NPCR 99.9985 %, UACI
//! 33.3338 % (see [`Ideal`]). Decryption must be exact (MSE 0).

use serde::Serialize;

use crate::henon::{self, HenonKey, Variant};
use crate::pixels::{PixelFormat, Pixels};

/// A pixel value the metrics read: `u8` for 8-bit images, `u16` for 16-bit.
pub trait Sample: Copy + PartialEq + Into<u64> {
    /// The largest value.
    const PEAK: u64;
}

impl Sample for u8 {
    const PEAK: u64 = 255;
}

impl Sample for u16 {
    const PEAK: u64 = 65_535;
}

/// What a perfect cipher would score on images of one depth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ideal {
    /// NPCR of two independent uniform images: 100 · (1 − 1/levels).
    pub npcr: f64,
    /// UACI of two independent uniform images: 100 · (levels + 1) / (3 · levels).
    pub uaci: f64,
    /// Entropy of a uniform source, in bits.
    pub entropy: f64,
}

impl Ideal {
    /// The ideal values for `format`.
    pub fn of(format: PixelFormat) -> Self {
        let levels: f64 = match format {
            PixelFormat::Gray8 => 256.0,
            PixelFormat::Gray16 => 65_536.0,
        };
        Self {
            npcr: 100.0 * (1.0 - 1.0 / levels),
            uaci: 100.0 * (levels + 1.0) / (3.0 * levels),
            entropy: levels.log2(),
        }
    }
}

/// Why a report cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QualityError {
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
pub fn npcr<T: Sample>(a: &[T], b: &[T]) -> f64 {
    let changed = a.iter().zip(b).filter(|(x, y)| x != y).count();
    100.0 * changed as f64 / a.len() as f64
}

/// UACI, the unified average changing intensity: the mean of |a − b| over
/// the largest value (255 or 65 535), as a percentage.
pub fn uaci<T: Sample>(a: &[T], b: &[T]) -> f64 {
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| x.into().abs_diff(y.into()))
        .sum();
    100.0 * total as f64 / (T::PEAK as f64 * a.len() as f64)
}

/// How many pixels take each of the 256 values.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &v in data {
        counts[v as usize] += 1;
    }
    counts
}

/// Shannon entropy of the pixel values, in bits (8 or 16 at most).
pub fn entropy<T: Sample>(data: &[T]) -> f64 {
    let n = data.len() as f64;
    let mut counts = vec![0u64; T::PEAK as usize + 1];
    for &v in data {
        counts[v.into() as usize] += 1;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Mean squared error between two images of the same size.
pub fn mse<T: Sample>(a: &[T], b: &[T]) -> f64 {
    let total: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x.into() as f64 - y.into() as f64;
            d * d
        })
        .sum();
    total / a.len() as f64
}

/// Peak signal-to-noise ratio in dB (peak 255 or 65 535); infinite when
/// the images are equal.
pub fn psnr<T: Sample>(a: &[T], b: &[T]) -> f64 {
    let error = mse(a, b);
    if error == 0.0 {
        f64::INFINITY
    } else {
        let peak = T::PEAK as f64;
        10.0 * (peak * peak / error).log10()
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
pub fn correlation<T: Sample>(
    data: &[T],
    width: usize,
    height: usize,
    direction: Direction,
) -> f64 {
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
            let (a, b): (u64, u64) = (a.into(), b.into());
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
    pub fn of<T: Sample>(data: &[T], width: usize, height: usize) -> Self {
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
    /// Bits per pixel, 8 or 16.
    pub depth: u8,
    /// What a perfect cipher would score at this depth.
    pub ideal: Ideal,
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
/// and measures everything in [`CipherReport`], on 8- or 16-bit pixels.
///
/// # Errors
/// [`QualityError`] for an image smaller than 2×2.
pub fn report(
    plain: &Pixels,
    key: &HenonKey,
) -> Result<(CipherReport, ReportImages), QualityError> {
    let (width, height) = (plain.width(), plain.height());
    if width < 2 || height < 2 {
        return Err(QualityError::TooSmall { width, height });
    }
    let (w, h) = (width as usize, height as usize);

    let cipher = henon::encrypt(Variant::CURRENT, key, plain);

    // The centre pixel's lowest bit flipped (its first byte, little-endian).
    let mut neighbour = plain.clone();
    let centre = ((h / 2) * w + w / 2) * plain.format().bytes_per_pixel();
    neighbour.data_mut()[centre] ^= 1;
    let cipher_pixel = henon::encrypt(Variant::CURRENT, key, &neighbour);

    let cipher_key = henon::encrypt(Variant::CURRENT, &key.with_bit_flipped(0), plain);
    let decrypted = henon::decrypt(Variant::CURRENT, key, &cipher);

    let images = [plain, &cipher, &cipher_pixel, &cipher_key, &decrypted];
    let exact = decrypted == *plain;
    let report = match plain.format() {
        PixelFormat::Gray8 => measure(plain, images.map(|p| p.data().to_vec()), exact),
        PixelFormat::Gray16 => measure(
            plain,
            images.map(|p| {
                p.data()
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect()
            }),
            exact,
        ),
    };
    Ok((
        report,
        ReportImages {
            plain: plain.clone(),
            cipher,
        },
    ))
}

/// The report of `plain` from its samples `[plain, cipher, cipher of the
/// changed pixel, cipher under the flipped key, decrypted]`, and whether
/// decryption gave back every byte.
fn measure<T: Sample>(plain: &Pixels, images: [Vec<T>; 5], decrypt_exact: bool) -> CipherReport {
    let (w, h) = (plain.width() as usize, plain.height() as usize);
    let [p, c, c_pixel, c_key, d] = &images;
    CipherReport {
        depth: (8 * plain.format().bytes_per_pixel()) as u8,
        ideal: Ideal::of(plain.format()),
        width: plain.width(),
        height: plain.height(),
        npcr_pixel: npcr(c, c_pixel),
        uaci_pixel: uaci(c, c_pixel),
        npcr_key: npcr(c, c_key),
        uaci_key: uaci(c, c_key),
        entropy_plain: entropy(p),
        entropy_cipher: entropy(c),
        corr_plain: Correlations::of(p, w, h),
        corr_cipher: Correlations::of(c, w, h),
        psnr_cipher_db: psnr(p, c),
        mse_cipher: mse(p, c),
        mse_decrypted: mse(p, d),
        decrypt_exact,
    }
}

/// Per-position bias of a byte stream read as little-endian 64-bit words:
/// the share of ones at each of the 64 bit positions, the mean byte at each
/// of the 8 byte positions and the mean of each 32-bit half, each as a
/// z-score against a uniform source (|z| < 4 is what an unbiased stream
/// shows over any length, bar one test in 16 000). Counts one histogram per
/// byte position, from which all three follow, so it reads a gigabyte in
/// about a second.
#[derive(Debug, Clone)]
pub struct StreamBias {
    histograms: Box<[[u64; 256]; 8]>,
    bytes: u64,
}

impl Default for StreamBias {
    fn default() -> Self {
        Self {
            histograms: Box::new([[0; 256]; 8]),
            bytes: 0,
        }
    }
}

/// What [`StreamBias::report`] finds.
#[derive(Debug, Clone, Serialize)]
pub struct BiasReport {
    /// Bytes read.
    pub bytes: u64,
    /// The z-score of the share of ones at bit positions 0 (lowest) to 63.
    pub bit_z: Vec<f64>,
    /// The z-score of the mean byte at byte positions 0 to 7.
    pub byte_mean_z: Vec<f64>,
    /// The z-score of the mean of the low and the high 32-bit half.
    pub u32_mean_z: Vec<f64>,
    /// The largest |z| of all of them.
    pub max_abs_z: f64,
}

impl StreamBias {
    /// Counts `bytes`, continuing where the previous call stopped.
    pub fn update(&mut self, bytes: &[u8]) {
        let start = (self.bytes % 8) as usize;
        for (i, &b) in bytes.iter().enumerate() {
            self.histograms[(start + i) % 8][b as usize] += 1;
        }
        self.bytes += bytes.len() as u64;
    }

    /// The z-scores of everything counted so far.
    pub fn report(&self) -> BiasReport {
        // Per byte position: how many bytes, their sum, and ones per bit.
        let mut count = [0f64; 8];
        let mut sum = [0f64; 8];
        let mut ones = [[0f64; 8]; 8];
        for (position, histogram) in self.histograms.iter().enumerate() {
            for (value, &n) in histogram.iter().enumerate() {
                let n = n as f64;
                count[position] += n;
                sum[position] += n * value as f64;
                for (bit, ones) in ones[position].iter_mut().enumerate() {
                    if value >> bit & 1 == 1 {
                        *ones += n;
                    }
                }
            }
        }
        let z = |observed: f64, mean: f64, variance: f64| {
            if variance > 0.0 {
                (observed - mean) / variance.sqrt()
            } else {
                0.0
            }
        };
        let bit_z: Vec<f64> = (0..64)
            .map(|b| {
                let n = count[b / 8];
                z(ones[b / 8][b % 8], n / 2.0, n / 4.0)
            })
            .collect();
        // A uniform byte: mean 127.5, variance (256² − 1) / 12.
        let byte_variance = (256.0f64 * 256.0 - 1.0) / 12.0;
        let byte_mean_z: Vec<f64> = (0..8)
            .map(|p| z(sum[p], count[p] * 127.5, count[p] * byte_variance))
            .collect();
        // A 32-bit half is Σ 256^k · byte_k; its bytes are independent
        // under the null, so the deviations add with weights 256^k and the
        // variances with 256^2k.
        let u32_mean_z: Vec<f64> = (0..2)
            .map(|half| {
                let (mut deviation, mut variance) = (0.0, 0.0);
                for k in 0..4 {
                    let p = 4 * half + k;
                    let weight = 256f64.powi(k as i32);
                    deviation += weight * (sum[p] - count[p] * 127.5);
                    variance += weight * weight * count[p] * byte_variance;
                }
                z(deviation, 0.0, variance)
            })
            .collect();
        let max_abs_z = bit_z
            .iter()
            .chain(&byte_mean_z)
            .chain(&u32_mean_z)
            .fold(0.0f64, |m, z| m.max(z.abs()));
        BiasReport {
            bytes: self.bytes,
            bit_z,
            byte_mean_z,
            u32_mean_z,
            max_abs_z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        assert_eq!(npcr(&[1u8, 2, 3, 4], &[1, 0, 3, 0]), 50.0);
        assert!((uaci(&[0u8, 0], &[255, 0]) - 50.0).abs() < 1e-12);
        assert!((uaci(&[0u16, 0], &[65_535, 0]) - 50.0).abs() < 1e-12);
        assert_eq!(entropy(&[0u8, 1, 2, 3]), 2.0);
        assert_eq!(entropy(&[7u16; 10]), 0.0);
        assert_eq!(mse(&[0u8, 10], &[0, 0]), 50.0);
        assert_eq!(psnr(&[1u8, 2], &[1, 2]), f64::INFINITY);
        assert!((psnr(&[0u16], &[65_535]) - 0.0).abs() < 1e-12);
        // A horizontal ramp: perfectly correlated horizontally.
        let ramp: Vec<u8> = (0..16).map(|i| (i % 4) as u8 * 10).collect();
        assert!((correlation(&ramp, 4, 4, Direction::Horizontal) - 1.0).abs() < 1e-12);
        // Every row is the same, so vertical neighbours are equal.
        assert!((correlation(&ramp, 4, 4, Direction::Vertical) - 1.0).abs() < 1e-12);
        // A constant image has no defined correlation.
        assert_eq!(correlation(&[9u8; 16], 4, 4, Direction::Diagonal), 0.0);
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
        assert_eq!(r.depth, 8);
        assert!((r.ideal.npcr - 99.6094).abs() < 1e-4 && (r.ideal.uaci - 33.4635).abs() < 1e-4);
        for c in [r.corr_cipher.h, r.corr_cipher.v, r.corr_cipher.d] {
            assert!(c.abs() < 0.02, "{r:?}");
        }
        assert!(r.corr_plain.h > 0.9);
    }

    #[test]
    fn report_on_a_smooth_16_bit_image_meets_its_targets() {
        let (w, h) = (256u32, 256u32);
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                // 12 significant bits, as detectors deliver.
                (((x + 2 * y) * 4095 / 765) as u16).to_le_bytes()
            })
            .collect();
        let plain = Pixels::new(w, h, PixelFormat::Gray16, data).unwrap();
        let (r, _) = report(&plain, &HenonKey::from_bytes([0x5a; 32])).unwrap();
        assert_eq!(r.depth, 16);
        assert!((r.ideal.npcr - 99.9985).abs() < 1e-4 && (r.ideal.uaci - 33.3338).abs() < 1e-4);
        assert!(r.decrypt_exact && r.mse_decrypted == 0.0);
        assert!(r.npcr_pixel > 99.99 && r.npcr_key > 99.99, "{r:?}");
        assert!(
            (r.uaci_pixel - 33.33).abs() < 0.5 && (r.uaci_key - 33.33).abs() < 0.5,
            "{r:?}"
        );
        // 65 536 pixels over 65 536 levels: a uniform sample scores ~15.3.
        assert!(r.entropy_cipher > 15.0 && r.entropy_plain < 12.0, "{r:?}");
        for c in [r.corr_cipher.h, r.corr_cipher.v, r.corr_cipher.d] {
            assert!(c.abs() < 0.02, "{r:?}");
        }
        assert!(r.corr_plain.h > 0.9);
    }

    #[test]
    fn report_refuses_what_it_cannot_measure() {
        let thin = Pixels::new(5, 1, PixelFormat::Gray8, vec![0; 5]).unwrap();
        assert!(matches!(
            report(&thin, &HenonKey::from_bytes([0; 32])),
            Err(QualityError::TooSmall { .. })
        ));
    }

    #[test]
    fn stream_bias_finds_a_biased_bit_and_passes_a_uniform_stream() {
        // Every byte value equally often at every position: no bias at all.
        let uniform: Vec<u8> = (0..256 * 8 * 16).map(|i| (i / 8) as u8).collect();
        let mut bias = StreamBias::default();
        // Fed in uneven pieces, as a reader does.
        for piece in uniform.chunks(1000) {
            bias.update(piece);
        }
        let report = bias.report();
        assert_eq!(report.bytes, uniform.len() as u64);
        assert!(report.max_abs_z < 1e-9, "{report:?}");

        // The top bit of every word set 60 % of the time.
        let mut skewed = uniform.clone();
        for (i, word) in skewed.chunks_exact_mut(8).enumerate() {
            word[7] = if i % 5 < 3 {
                word[7] | 0x80
            } else {
                word[7] & 0x7f
            };
        }
        let mut bias = StreamBias::default();
        bias.update(&skewed);
        let report = bias.report();
        assert!(report.bit_z[63] > 10.0, "{:?}", report.bit_z);
        assert!(report.bit_z[..63].iter().all(|z| z.abs() < 1e-9));
        assert!(report.byte_mean_z[7] > 4.0 && report.u32_mean_z[1] > 4.0);
        assert_eq!(report.max_abs_z, report.bit_z[63]);
    }
}
