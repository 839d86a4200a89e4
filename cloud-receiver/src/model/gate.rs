//! The out-of-distribution gate: whether an image routed to a model is
//! like the images it was trained on, before its class is believed. A
//! classifier's softmax is confident far from its data, which is why the
//! probability cannot be the gate.
//!
//! Three checks, cheapest first; the first two need no inference:
//!
//! 1. **Pixel statistics** of the model's input (after resizing): a blank,
//!    nearly uniform or mostly clipped frame is no radiograph. Limits from
//!    train: half the smallest pixel spread seen, and a quarter more clipped
//!    pixels than the most seen.
//! 2. **Layout**: the input standardised and averaged into 7×7 cells, its
//!    Mahalanobis distance to the training images' mean layout. The
//!    network's pooled features hardly change when a radiograph is turned
//!    upside down or cropped to a corner; where the lungs, heart and
//!    diaphragm lie does. And an upright radiograph lies nearer that mean
//!    than itself turned over (flipped top to bottom or rotated by 180°):
//!    when the turned-over frame is clearly nearer, the frame is upside
//!    down.
//! 3. **Features**: the Mahalanobis distance of the network's pooled
//!    features to the nearer class mean, under the covariance the classes
//!    share (Lee et al., 2018): a CT slice, an MR or noise gives features far
//!    from every chest X-ray's.
//!
//! Means and covariances come from train; each limit is the distance that
//! accepts 99 % of val (images the model never saw), so that together they
//! accept at least [`VAL_ACCEPTANCE`] of it. The score reported is the
//! larger distance as a multiple of its limit: above 1 is refused.
//!
//! Cost on top of inference: a 49×49 and a 96×96 matrix-vector product per
//! image (the features come out of the same forward pass).

use serde::{Deserialize, Serialize};

/// File name of the gate in a model folder.
pub const GATE_FILE: &str = "ood.json";
/// The gate format this build reads and writes.
pub const GATE_FORMAT: &str = "medgate-ood/1";
/// Share of val images the fitted gate must accept at least.
pub const VAL_ACCEPTANCE: f64 = 0.97;
/// Pixel values at or below this, or at or above 255 minus it, are clipped.
const CLIPPED_WITHIN: u8 = 2;

/// A Mahalanobis distance model: class means (one or more) and the inverse
/// of the covariance they share, with the largest distance accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distance {
    /// The means, one per class (each `dims` values).
    pub means: Vec<Vec<f32>>,
    /// The inverse of the shared covariance, row-major, `dims × dims`.
    pub precision: Vec<f32>,
    /// Largest distance accepted.
    pub limit: f32,
}

impl Distance {
    /// Dimensions measured.
    pub fn dims(&self) -> usize {
        self.means.first().map_or(0, Vec::len)
    }

    fn check(&self, dims: usize, what: &str) -> Result<(), GateError> {
        if self.means.is_empty() || self.means.iter().any(|m| m.len() != dims) {
            return Err(GateError::Shape(format!(
                "{what}: means must be vectors of {dims} values"
            )));
        }
        if self.precision.len() != dims * dims {
            return Err(GateError::Shape(format!(
                "{what}: precision has {} values, {dims}x{dims} expected",
                self.precision.len()
            )));
        }
        if !self.limit.is_finite() || self.limit <= 0.0 {
            return Err(GateError::Shape(format!(
                "{what}: limit must be a positive number"
            )));
        }
        Ok(())
    }

    /// The distance of `x` to the nearest mean.
    pub fn distance(&self, x: &[f32]) -> f32 {
        let d = x.len();
        let mut best = f64::INFINITY;
        let mut diff = vec![0f64; d];
        for mean in &self.means {
            for (slot, (v, m)) in diff.iter_mut().zip(x.iter().zip(mean)) {
                *slot = f64::from(*v) - f64::from(*m);
            }
            let mut squared = 0.0;
            for (i, row) in self.precision.chunks_exact(d.max(1)).enumerate() {
                let dot: f64 = row.iter().zip(&diff).map(|(p, v)| f64::from(*p) * v).sum();
                squared += diff[i] * dot;
            }
            best = best.min(squared);
        }
        best.max(0.0).sqrt() as f32
    }

    /// Fits means (by `labels`, or one for all when `labels` is `None`) and
    /// the shared covariance of `samples`, with a little shrinkage; the
    /// limit is set later.
    fn fit(samples: &[Vec<f32>], labels: Option<&[u8]>) -> Self {
        let d = samples.first().map_or(0, Vec::len);
        let class_of = |i: usize| labels.map_or(0, |l| usize::from(l[i]));
        let classes = labels.map_or(1, |l| usize::from(l.iter().copied().max().unwrap_or(0)) + 1);
        let mut means = vec![vec![0f64; d]; classes];
        let mut counts = vec![0usize; classes];
        for (i, x) in samples.iter().enumerate() {
            counts[class_of(i)] += 1;
            for (m, v) in means[class_of(i)].iter_mut().zip(x) {
                *m += f64::from(*v);
            }
        }
        for (mean, &count) in means.iter_mut().zip(&counts) {
            for m in mean.iter_mut() {
                *m /= count.max(1) as f64;
            }
        }
        let mut cov = vec![0f64; d * d];
        let mut centred = vec![0f64; d];
        for (i, x) in samples.iter().enumerate() {
            for (c, (v, m)) in centred.iter_mut().zip(x.iter().zip(&means[class_of(i)])) {
                *c = f64::from(*v) - m;
            }
            for a in 0..d {
                for b in 0..d {
                    cov[a * d + b] += centred[a] * centred[b];
                }
            }
        }
        let n = samples.len().max(1) as f64;
        for c in &mut cov {
            *c /= n;
        }
        // Shrinkage towards the mean variance keeps the inverse stable in
        // directions the training images hardly vary in.
        let mean_variance = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / d.max(1) as f64;
        for i in 0..d {
            cov[i * d + i] += 1e-3 * mean_variance + 1e-9;
        }
        Self {
            means: means
                .iter()
                .map(|m| m.iter().map(|&v| v as f32).collect())
                .collect(),
            precision: invert_spd(&cov, d).iter().map(|&v| v as f32).collect(),
            limit: 1.0,
        }
    }
}

/// A fitted gate, as `ood.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Always [`GATE_FORMAT`].
    pub format: String,
    /// Smallest standard deviation of input pixel values (0–255) accepted.
    pub min_pixel_std: f32,
    /// Largest share of clipped input pixels (near 0 or 255) accepted.
    pub max_clipped: f32,
    /// Cells per side of the layout thumbnail.
    pub layout_cells: usize,
    /// Where brightness lies in the frame: the input, standardised, averaged
    /// into `layout_cells²` cells. An upside-down, rotated, cropped or
    /// inverted radiograph is laid out unlike the training images.
    pub layout: Distance,
    /// How much closer (in multiples of the layout limit) the frame turned
    /// upside down (flipped top to bottom, or rotated by 180°) may lie to
    /// the training layout than the frame itself; beyond it, the frame is
    /// taken to be upside down. Absent: not checked.
    #[serde(default)]
    pub max_orientation: Option<f32>,
    /// The pooled network features, per class.
    pub features: Distance,
    /// Share of val the gate accepted when fitted.
    pub val_acceptance: f64,
}

/// Why the gate refused an image, for the not-classified answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What the device is told.
    pub detail: String,
    /// The out-of-distribution score when a distance was measured: the
    /// larger of the layout and feature distances, each as a multiple of
    /// its limit (above 1 is refused).
    pub score: Option<f32>,
}

/// Why a gate file cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    /// Wrong format string.
    #[error("format {0:?}, this build reads {GATE_FORMAT:?}")]
    Format(String),
    /// Shapes do not fit each other or the network.
    #[error("{0}")]
    Shape(String),
}

impl Gate {
    /// Checks the shapes against a network with `features` pooled features.
    ///
    /// # Errors
    /// [`GateError`] saying what does not fit.
    pub fn check(&self, features: usize) -> Result<(), GateError> {
        if self.format != GATE_FORMAT {
            return Err(GateError::Format(self.format.clone()));
        }
        if self.layout_cells == 0 || self.layout_cells > 64 {
            return Err(GateError::Shape("layout_cells must be 1 to 64".into()));
        }
        self.layout
            .check(self.layout_cells * self.layout_cells, "layout")?;
        self.features.check(features, "features")
    }

    /// The checks that need no inference, on a model input (square 8-bit
    /// image): pixel statistics, then layout.
    ///
    /// # Errors
    /// A [`Refusal`] naming the frame's problem.
    pub fn check_pixels(&self, input: &[u8]) -> Result<(), Refusal> {
        self.check_layout(input).map(|_| ())
    }

    /// [`Self::check_pixels`], giving the layout score (a multiple of its
    /// limit) on success.
    fn check_layout(&self, input: &[u8]) -> Result<f32, Refusal> {
        let (std, clipped) = pixel_stats(input);
        if std < self.min_pixel_std {
            return Err(Refusal {
                detail: format!(
                    "a nearly uniform frame (pixel spread {std:.1}, radiographs show at least {:.1})",
                    self.min_pixel_std
                ),
                score: None,
            });
        }
        if clipped > self.max_clipped {
            return Err(Refusal {
                detail: format!(
                    "a mostly saturated frame ({:.0} % of pixels clipped, radiographs at most {:.0} %)",
                    clipped * 100.0,
                    self.max_clipped * 100.0
                ),
                score: None,
            });
        }
        let thumbnail = layout_of(input, self.layout_cells);
        let layout = self.layout.distance(&thumbnail) / self.layout.limit;
        if layout > 1.0 {
            return Err(Refusal {
                detail: format!(
                    "laid out unlike a frontal chest radiograph (rotated, upside down, cropped or inverted?); score {layout:.2}, limit 1"
                ),
                score: Some(layout),
            });
        }
        if let Some(limit) = self.max_orientation {
            let turned = self.upside_down_gain(&thumbnail, layout);
            if turned > limit {
                return Err(Refusal {
                    detail: format!(
                        "upside down: turned over, the frame looks more like a chest radiograph (by {turned:.2}, limit {limit:.2})"
                    ),
                    score: Some(layout.max(1.0 + turned - limit)),
                });
            }
        }
        Ok(layout)
    }

    /// How much closer to the training layout the thumbnail lies turned
    /// over (the nearer of: flipped top to bottom, rotated by 180°) than as
    /// it is (`layout`, its own score), in multiples of the layout limit.
    fn upside_down_gain(&self, thumbnail: &[f32], layout: f32) -> f32 {
        let cells = self.layout_cells;
        let flipped: Vec<f32> = thumbnail
            .chunks_exact(cells)
            .rev()
            .flatten()
            .copied()
            .collect();
        let rotated: Vec<f32> = thumbnail.iter().rev().copied().collect();
        let nearer = (self.layout.distance(&flipped)).min(self.layout.distance(&rotated))
            / self.layout.limit;
        layout - nearer
    }

    /// The whole gate: pixels, layout, features. On success, the score: the
    /// larger of the layout and feature distances, each as a multiple of
    /// its limit (at most 1 here).
    ///
    /// # Errors
    /// A [`Refusal`] with the detail and, for the distances, the score.
    pub fn admit(&self, input: &[u8], features: &[f32]) -> Result<f32, Refusal> {
        let layout = self.check_layout(input)?;
        let by_features = self.features.distance(features) / self.features.limit;
        let score = layout.max(by_features);
        if by_features > 1.0 {
            return Err(Refusal {
                detail: format!(
                    "unlike the model's training images; score {by_features:.2}, limit 1"
                ),
                score: Some(score),
            });
        }
        Ok(score)
    }
}

/// Standard deviation of the pixel values and the share of clipped ones.
pub fn pixel_stats(input: &[u8]) -> (f32, f32) {
    let n = input.len().max(1) as f64;
    let mean = input.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = input
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let clipped = input
        .iter()
        .filter(|&&v| v <= CLIPPED_WITHIN || v >= 255 - CLIPPED_WITHIN)
        .count() as f64
        / n;
    (var.sqrt() as f32, clipped as f32)
}

/// The layout thumbnail of a square image: standardised (zero mean, unit
/// spread), then averaged into `cells × cells` cells, row by row.
pub fn layout_of(input: &[u8], cells: usize) -> Vec<f32> {
    let side = (input.len() as f64).sqrt() as usize;
    let n = input.len().max(1) as f64;
    let mean = input.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (input
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
        .max(1e-6);
    let mut sums = vec![0f64; cells * cells];
    let mut counts = vec![0usize; cells * cells];
    for y in 0..side {
        for x in 0..side {
            let cell = (y * cells / side) * cells + x * cells / side;
            sums[cell] += (f64::from(input[y * side + x]) - mean) / std;
            counts[cell] += 1;
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, &c)| (s / c.max(1) as f64) as f32)
        .collect()
}

/// Cells per side of the layout thumbnail fitted.
const LAYOUT_CELLS: usize = 7;
/// Share of val each distance's limit accepts (both together accept at
/// least [`VAL_ACCEPTANCE`] minus the overlap of their refusals).
const EACH_ACCEPTS: f64 = 0.99;

/// Fits a gate: pixel limits, layout and feature statistics from the
/// training images (`train_inputs` with `train_features` and
/// `train_labels`); the distance limits from val, which the model never
/// saw.
pub fn fit(
    train_inputs: &[u8],
    side: usize,
    train_features: &[Vec<f32>],
    train_labels: &[u8],
    val_inputs: &[u8],
    val_features: &[Vec<f32>],
) -> Gate {
    let per_image = side * side;
    let (mut min_std, mut max_clipped) = (f32::INFINITY, 0f32);
    for image in train_inputs.chunks_exact(per_image) {
        let (std, clipped) = pixel_stats(image);
        min_std = min_std.min(std);
        max_clipped = max_clipped.max(clipped);
    }
    let cells = LAYOUT_CELLS.min(side.max(1));
    let layouts = |images: &[u8]| -> Vec<Vec<f32>> {
        images
            .chunks_exact(per_image)
            .map(|image| layout_of(image, cells))
            .collect()
    };
    let mut layout = Distance::fit(&layouts(train_inputs), None);
    let mut features = Distance::fit(train_features, Some(train_labels));
    let val_layouts = layouts(val_inputs);
    layout.limit = quantile(val_layouts.iter().map(|x| layout.distance(x)), EACH_ACCEPTS);
    features.limit = quantile(
        val_features.iter().map(|x| features.distance(x)),
        EACH_ACCEPTS,
    );
    let mut gate = Gate {
        format: GATE_FORMAT.into(),
        min_pixel_std: min_std * 0.5,
        max_clipped: (max_clipped + 0.25).min(1.0),
        layout_cells: cells,
        layout,
        max_orientation: None,
        features,
        val_acceptance: 0.0,
    };
    // Upright radiographs lie nearer the training layout than turned over:
    // the limit lets ORIENTATION_ACCEPTS of val through.
    let gains = val_layouts.iter().map(|thumbnail| {
        let own = gate.layout.distance(thumbnail) / gate.layout.limit;
        gate.upside_down_gain(thumbnail, own)
    });
    gate.max_orientation = Some(quantile_signed(gains, ORIENTATION_ACCEPTS).max(0.0));
    let accepted = val_inputs
        .chunks_exact(per_image)
        .zip(val_features)
        .filter(|(input, f)| gate.admit(input, f).is_ok())
        .count();
    gate.val_acceptance = accepted as f64 / val_features.len().max(1) as f64;
    gate
}

/// Share of val the upside-down check lets through.
const ORIENTATION_ACCEPTS: f64 = 0.995;

/// The value below which a share `q` of `values` lies (any sign).
fn quantile_signed(values: impl Iterator<Item = f32>, q: f64) -> f32 {
    let mut sorted: Vec<f32> = values.collect();
    sorted.sort_by(f32::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or(0.0)
}

/// The value below which a share `q` of `values` lies.
fn quantile(values: impl Iterator<Item = f32>, q: f64) -> f32 {
    let mut sorted: Vec<f32> = values.collect();
    sorted.sort_by(f32::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted
        .get(index)
        .copied()
        .unwrap_or(1.0)
        .max(f32::MIN_POSITIVE)
}

/// The inverse of a symmetric positive definite `d × d` matrix, through its
/// Cholesky factor.
fn invert_spd(a: &[f64], d: usize) -> Vec<f64> {
    // a = L Lᵀ
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut sum = a[i * d + j];
            for k in 0..j {
                sum -= l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = if i == j {
                sum.max(1e-12).sqrt()
            } else {
                sum / l[j * d + j]
            };
        }
    }
    // Solve L Lᵀ x = e_c for each column c.
    let mut inverse = vec![0f64; d * d];
    let mut y = vec![0f64; d];
    for c in 0..d {
        for i in 0..d {
            let mut sum = if i == c { 1.0 } else { 0.0 };
            for k in 0..i {
                sum -= l[i * d + k] * y[k];
            }
            y[i] = sum / l[i * d + i];
        }
        for i in (0..d).rev() {
            let mut sum = y[i];
            for k in i + 1..d {
                sum -= l[k * d + i] * inverse[k * d + c];
            }
            inverse[i * d + c] = sum / l[i * d + i];
        }
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inverse_times_the_matrix_is_the_identity() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = invert_spd(&a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({i},{j}) = {v}");
            }
        }
    }

    /// Training images: a bright top half and a dark bottom half with some
    /// texture; features in two classes around (0, 0) and (4, 0),
    /// elongated along y.
    fn training() -> (Vec<u8>, Vec<Vec<f32>>, Vec<u8>) {
        let side = 14;
        let mut inputs = Vec::new();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            let t = i as f32 / 400.0;
            for y in 0..side {
                for x in 0..side {
                    let base = if y < side / 2 { 170.0 } else { 70.0 };
                    let texture = ((x * 7 + y * 3 + i) % 11) as f32 * 4.0;
                    inputs.push((base + texture) as u8);
                }
            }
            let wobble = ((t * 97.0).sin(), (t * 31.0).cos() * 3.0);
            let class = u8::from(i % 2 == 1);
            features.push(vec![f32::from(class) * 4.0 + wobble.0 * 0.5, wobble.1]);
            labels.push(class);
        }
        (inputs, features, labels)
    }

    #[test]
    fn images_far_from_the_training_ones_are_refused_and_near_ones_kept() {
        let (inputs, features, labels) = training();
        let side = 14;
        let gate = fit(&inputs, side, &features, &labels, &inputs, &features);
        assert!(gate.check(2).is_ok());
        assert!(
            gate.val_acceptance >= VAL_ACCEPTANCE,
            "{}",
            gate.val_acceptance
        );
        let upright = &inputs[..side * side];
        // Far along x (the direction the classes hardly vary in) is far;
        // an offset along y (where they do vary) is not.
        assert!(gate.admit(upright, &[0.2, 2.0]).is_ok());
        let refused = gate.admit(upright, &[12.0, 0.0]).unwrap_err();
        assert!(refused.score.unwrap() > 1.0);
        assert!(
            refused
                .detail
                .contains("unlike the model's training images")
        );
        // Upside down: refused by its layout, before any features.
        let flipped: Vec<u8> = upright
            .chunks_exact(side)
            .rev()
            .flatten()
            .copied()
            .collect();
        let refused = gate.check_pixels(&flipped).unwrap_err();
        assert!(
            refused.detail.contains("laid out unlike"),
            "{}",
            refused.detail
        );
        // A blank frame is refused before anything is measured.
        let blank = gate.admit(&[128; 196], &[0.0, 0.0]).unwrap_err();
        assert!(blank.detail.contains("uniform"), "{}", blank.detail);
        assert_eq!(blank.score, None);
    }

    #[test]
    fn a_gate_that_does_not_fit_the_network_is_refused() {
        let (inputs, features, labels) = training();
        let gate = fit(&inputs, 14, &features, &labels, &inputs, &features);
        assert!(matches!(gate.check(96), Err(GateError::Shape(_))));
        let mut other = gate.clone();
        other.format = "medgate-ood/0".into();
        assert!(matches!(other.check(2), Err(GateError::Format(_))));
    }
}
