//! Images as model input: MedMNIST splits, normalisation, augmentation for
//! training, and preprocessing of received images of any size.

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::imageops::FilterType;
use medgate_medmnist::Split;
use medgate_shared::pixels::{PixelFormat, Pixels};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{Normalisation, Scope};

/// Mean and standard deviation of every pixel of `images`, on the 0–1 scale.
pub fn normalisation_of(images: &[u8]) -> Normalisation {
    let n = images.len().max(1) as f64;
    let sum: f64 = images.iter().map(|&v| f64::from(v)).sum();
    let mean = sum / n;
    let var = images
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    Normalisation {
        mean: (mean / 255.0) as f32,
        std: (var.sqrt() / 255.0).max(1e-6) as f32,
        scope: Scope::Dataset,
    }
}

/// SHA-256 of a split's images followed by its labels, as hex.
pub fn fingerprint(split: &Split) -> String {
    let mut hasher = Sha256::new();
    hasher.update(&split.images);
    hasher.update(&split.labels);
    hex::encode(hasher.finalize())
}

/// The smallest spread, on the 0–1 scale, an image is divided by under
/// [`Scope::Image`]: a blank or nearly uniform frame stays near zero
/// instead of having its noise blown up (the gate refuses such frames).
const MIN_IMAGE_STD: f32 = 4.0 / 255.0;

/// Square 8-bit images (`count × side × side` bytes) as a normalised
/// `[count, 1, side, side]` tensor.
pub fn images_tensor(
    images: &[u8],
    side: usize,
    norm: Normalisation,
    device: &Device,
) -> Tensor<4> {
    let per_image = (side * side).max(1);
    let count = images.len() / per_image;
    let mut values: Vec<f32> = Vec::with_capacity(count * per_image);
    for image in images.chunks_exact(per_image) {
        let (mean, std) = match norm.scope {
            Scope::Dataset => (norm.mean, norm.std),
            Scope::Image => {
                let own = normalisation_of(image);
                (own.mean, own.std.max(MIN_IMAGE_STD))
            }
        };
        values.extend(image.iter().map(|&v| (f32::from(v) / 255.0 - mean) / std));
    }
    Tensor::from_data(TensorData::new(values, [count, 1, side, side]), device)
}

/// Labels as an integer tensor.
pub fn labels_tensor(labels: &[u8], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_data(TensorData::new(values, [labels.len()]), device)
}

/// How strongly [`augment`] varies training images.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// Rotation within ±8°, scaling 0.9–1.1, shifts of up to 2 pixels,
    /// contrast 0.85–1.15, brightness ±0.05 (the shipped model's).
    #[default]
    Mild,
    /// Wider geometry (±12°, scaling 0.85–1.15 per axis, shifts of up to 3
    /// pixels) and what another hospital's detector and processing change:
    /// contrast 0.7–1.3, brightness ±0.1, gamma 0.7–1.4, blur or
    /// sharpening (one image in four), sensor noise (one in three), and a
    /// patch blanked out (one in four: the model must not rest on one
    /// region, such as a marker or a tube). On val it has not paid off
    /// yet (see `train`'s module text).
    Strong,
}

/// The ranges one [`Augmentation`] draws from.
struct Ranges {
    degrees: f32,
    scale: (f32, f32),
    aspect: f32,
    shift: f32,
    contrast: (f32, f32),
    brightness: f32,
    gamma: (f32, f32),
    filter: f64,
    noise: f64,
    erase: f64,
}

impl Augmentation {
    fn ranges(self) -> Ranges {
        match self {
            Self::Mild => Ranges {
                degrees: 8.0,
                scale: (0.9, 1.1),
                aspect: 0.0,
                shift: 2.0,
                contrast: (0.85, 1.15),
                brightness: 0.05,
                gamma: (1.0, 1.0),
                filter: 0.0,
                noise: 0.0,
                erase: 0.0,
            },
            Self::Strong => Ranges {
                degrees: 12.0,
                scale: (0.85, 1.15),
                aspect: 0.05,
                shift: 3.0,
                contrast: (0.7, 1.3),
                brightness: 0.1,
                gamma: (0.7, 1.4),
                filter: 0.25,
                noise: 0.33,
                erase: 0.25,
            },
        }
    }
}

/// Draws from `lo..hi`, or gives `lo` when the range is empty.
fn between(rng: &mut impl Rng, (lo, hi): (f32, f32)) -> f32 {
    if hi > lo { rng.gen_range(lo..hi) } else { lo }
}

/// A random geometric and photometric change of one square image, as
/// strong as `strength` says. Geometry is sampled bilinearly with edge
/// clamping. Chest X-rays are never mirrored: the heart's side is anatomy,
/// not noise.
pub fn augment(
    image: &[u8],
    side: usize,
    strength: Augmentation,
    rng: &mut impl Rng,
    out: &mut Vec<u8>,
) {
    let r = strength.ranges();
    let angle = rng.gen_range(-r.degrees..r.degrees).to_radians();
    let scale = between(rng, r.scale);
    let aspect = 1.0 + between(rng, (-r.aspect, r.aspect));
    let (scale_x, scale_y) = (scale * aspect, scale / aspect);
    let (dx, dy) = (
        rng.gen_range(-r.shift..r.shift),
        rng.gen_range(-r.shift..r.shift),
    );
    let contrast = between(rng, r.contrast);
    let brightness = between(rng, (-r.brightness, r.brightness)) * 255.0;
    let gamma = between(rng, r.gamma);
    let (sin, cos) = angle.sin_cos();
    let centre = (side as f32 - 1.0) / 2.0;
    let max = side as f32 - 1.0;
    let at = |x: usize, y: usize| f32::from(image[y * side + x]);
    let mut values = Vec::with_capacity(side * side);
    for y in 0..side {
        for x in 0..side {
            // Where this output pixel comes from in the input (inverse map).
            let (u, v) = (x as f32 - centre - dx, y as f32 - centre - dy);
            let sx = ((cos * u + sin * v) / scale_x + centre).clamp(0.0, max);
            let sy = ((-sin * u + cos * v) / scale_y + centre).clamp(0.0, max);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
            let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
            let value = top * (1.0 - fy) + bottom * fy;
            let value = if gamma == 1.0 {
                value
            } else {
                255.0 * (value / 255.0).clamp(0.0, 1.0).powf(gamma)
            };
            values.push((value - 128.0) * contrast + 128.0 + brightness);
        }
    }
    if r.filter > 0.0 && rng.gen_bool(r.filter) {
        // A 3×3 blur, or its opposite (unsharp masking), of random weight.
        let amount = rng.gen_range(-1.0f32..0.6);
        let blurred = box_blur(&values, side);
        for (v, b) in values.iter_mut().zip(blurred) {
            *v = b + (*v - b) * (1.0 - amount);
        }
    }
    if r.noise > 0.0 && rng.gen_bool(r.noise) {
        let sigma = rng.gen_range(2.0f32..8.0);
        for v in &mut values {
            // The sum of four uniforms: near enough to Gaussian noise.
            let n: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            *v += n * sigma * 0.866;
        }
    }
    if r.erase > 0.0 && rng.gen_bool(r.erase) {
        let w = rng.gen_range(side / 6..=side / 3).max(1);
        let h = rng.gen_range(side / 6..=side / 3).max(1);
        let (x0, y0) = (rng.gen_range(0..=side - w), rng.gen_range(0..=side - h));
        let fill = values.iter().sum::<f32>() / values.len().max(1) as f32;
        for y in y0..y0 + h {
            values[y * side + x0..y * side + x0 + w].fill(fill);
        }
    }
    out.clear();
    out.extend(values.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
}

/// The 3×3 mean of each pixel (edges clamped).
fn box_blur(values: &[f32], side: usize) -> Vec<f32> {
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, side as isize - 1) as usize;
        let y = y.clamp(0, side as isize - 1) as usize;
        values[y * side + x]
    };
    let mut out = Vec::with_capacity(values.len());
    for y in 0..side as isize {
        for x in 0..side as isize {
            let mut sum = 0.0;
            for (ox, oy) in (-1..=1).flat_map(|ox| (-1..=1).map(move |oy| (ox, oy))) {
                sum += at(x + ox, y + oy);
            }
            out.push(sum / 9.0);
        }
    }
    out
}

/// Brings a received image to the model's input: 16-bit images are mapped
/// to 8 bits over their own value range, then the image is resized to
/// `side × side` (triangle filter, so downscaling averages) and returned as
/// bytes ready for [`images_tensor`].
pub fn preprocess(pixels: &Pixels, side: usize) -> Vec<u8> {
    let (w, h) = (pixels.width(), pixels.height());
    let gray8: Vec<u8> = match pixels.format() {
        PixelFormat::Gray8 => pixels.data().to_vec(),
        PixelFormat::Gray16 => {
            let values: Vec<u16> = pixels
                .data()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let lo = values.iter().copied().min().unwrap_or(0);
            let hi = values.iter().copied().max().unwrap_or(0);
            let span = f32::from(hi.saturating_sub(lo)).max(1.0);
            values
                .iter()
                .map(|&v| (f32::from(v - lo) * 255.0 / span).round() as u8)
                .collect()
        }
    };
    if w as usize == side && h as usize == side {
        return gray8;
    }
    match image::GrayImage::from_raw(w, h, gray8) {
        Some(img) => {
            image::imageops::resize(&img, side as u32, side as u32, FilterType::Triangle).into_raw()
        }
        // Pixels guarantees the length; an impossible mismatch yields a blank input
        // rather than a panic in the daemon.
        None => vec![0; side * side],
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn normalisation_of_a_known_set() {
        let n = normalisation_of(&[0, 255]);
        assert!((n.mean - 0.5).abs() < 1e-6 && (n.std - 0.5).abs() < 1e-6);
    }

    fn tensor_values(images: &[u8], side: usize, norm: Normalisation) -> Vec<f32> {
        let device = crate::model::backend::select(crate::model::backend::BackendChoice::Cpu)
            .unwrap()
            .device;
        images_tensor(images, side, norm, &device)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn per_image_scope_ignores_an_images_exposure_and_gain() {
        let side = 8;
        let image: Vec<u8> = (0..side * side).map(|i| 60 + (i * 7 % 64) as u8).collect();
        // Twice the contrast, brighter: a linear map that clips nothing.
        let scaled: Vec<u8> = image.iter().map(|&v| v * 2 - 40).collect();
        let dataset = normalisation_of(&image);
        let per_image = Normalisation {
            scope: Scope::Image,
            ..dataset
        };
        let both: Vec<u8> = image.iter().chain(&scaled).copied().collect();
        let values = tensor_values(&both, side, per_image);
        let (a, b) = values.split_at(side * side);
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 1e-4, "{mean}");
        // The dataset scope lets the difference through.
        let values = tensor_values(&both, side, dataset);
        let (a, b) = values.split_at(side * side);
        assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 0.5));
        // A blank frame is not blown up into noise.
        let blank = vec![128u8; side * side];
        let values = tensor_values(&blank, side, per_image);
        assert!(values.iter().all(|v| v.abs() < 1e-4));
    }

    #[test]
    fn cards_without_a_scope_normalise_by_the_dataset_and_keep_that_form() {
        let old: Normalisation = serde_json::from_str(r#"{"mean":0.5,"std":0.25}"#).unwrap();
        assert_eq!(old.scope, Scope::Dataset);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"mean":0.5,"std":0.25}"#
        );
        let new = Normalisation {
            scope: Scope::Image,
            ..old
        };
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains(r#""scope":"image""#), "{text}");
        assert_eq!(serde_json::from_str::<Normalisation>(&text).unwrap(), new);
    }

    #[test]
    fn augmentation_keeps_size_and_stays_close() {
        let side = 28;
        let image: Vec<u8> = (0..side * side).map(|i| ((i % side) * 9) as u8).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut out = Vec::new();
        for _ in 0..20 {
            augment(&image, side, Augmentation::Mild, &mut rng, &mut out);
            assert_eq!(out.len(), image.len());
            let mean_diff: f64 = image
                .iter()
                .zip(&out)
                .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                .sum::<f64>()
                / image.len() as f64;
            assert!(mean_diff < 60.0, "augmentation too strong: {mean_diff}");
        }
    }

    #[test]
    fn strong_augmentation_varies_more_and_is_reproducible() {
        let side = 28;
        let image: Vec<u8> = (0..side * side).map(|i| ((i % side) * 9) as u8).collect();
        let change = |strength| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut out = Vec::new();
            let mut total = 0.0;
            for _ in 0..50 {
                augment(&image, side, strength, &mut rng, &mut out);
                assert_eq!(out.len(), image.len());
                total += image
                    .iter()
                    .zip(&out)
                    .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                    .sum::<f64>();
            }
            total
        };
        let (mild, strong) = (change(Augmentation::Mild), change(Augmentation::Strong));
        assert!(strong > mild * 1.2, "mild {mild}, strong {strong}");
        assert_eq!(
            strong,
            change(Augmentation::Strong),
            "same seed, same images"
        );
    }

    #[test]
    fn preprocessing_resizes_and_maps_16_bit() {
        let big = Pixels::new(56, 56, PixelFormat::Gray8, vec![200; 56 * 56]).unwrap();
        assert_eq!(preprocess(&big, 28), vec![200; 28 * 28]);
        let wide: Vec<u8> = [1000u16, 3000]
            .iter()
            .cycle()
            .take(28 * 28)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let px = Pixels::new(28, 28, PixelFormat::Gray16, wide).unwrap();
        let out = preprocess(&px, 28);
        assert_eq!((out[0], out[1]), (0, 255));
    }
}
