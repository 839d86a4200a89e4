//! Inference: what the classifier says about a batch of images, as the
//! daemon's batcher, `evaluate`, `classify`, `bench-inference` and the
//! training loop's validation all compute it.

use burn::tensor::Device;

use super::data::images_tensor;
use super::{Forward, Normalisation};

/// The network's output for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Logit of the positive class minus that of the negative one: the
    /// raw softmax probability is `sigmoid(margin)`, the calibrated one
    /// `sigmoid(margin / temperature)` (see `ModelCard::probability`).
    pub margin: f32,
    /// The pooled features the head reads (for the out-of-distribution
    /// gate).
    pub features: Vec<f32>,
}

/// The network's outputs for square 8-bit images, in batches.
pub fn infer<N: Forward + ?Sized>(
    network: &N,
    images: &[u8],
    side: usize,
    norm: Normalisation,
    device: &Device,
    batch: usize,
) -> Vec<Output> {
    let per_image = side * side;
    let mut outputs = Vec::with_capacity(images.len() / per_image);
    for chunk in images.chunks(per_image * batch.max(1)) {
        let (logits, features) =
            network.forward_with_features(images_tensor(chunk, side, norm, device));
        let [_, width] = features.dims();
        // `convert` fixes the element type, so these reads cannot fail.
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        let features: Vec<f32> = features
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        outputs.extend(
            logits
                .chunks_exact(2)
                .zip(features.chunks_exact(width.max(1)))
                .map(|(l, f)| Output {
                    margin: l[1] - l[0],
                    features: f.to_vec(),
                }),
        );
    }
    outputs
}

/// Raw (uncalibrated) probabilities of the positive class: the softmax of
/// the two logits, `sigmoid(margin)`. Training selects epochs and
/// thresholds on these; what results show goes through the card's
/// temperature.
pub fn predict<N: Forward + ?Sized>(
    network: &N,
    images: &[u8],
    side: usize,
    norm: Normalisation,
    device: &Device,
    batch: usize,
) -> Vec<f32> {
    infer(network, images, side, norm, device, batch)
        .into_iter()
        .map(|o| sigmoid(o.margin))
        .collect()
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
