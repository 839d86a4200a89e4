//! Inference: the classifier's positive-class probabilities for a batch of
//! images, as the daemon's batcher, `evaluate`, `bench-inference` and the
//! training loop's validation all compute them.

use burn::tensor::Device;
use burn::tensor::activation::softmax;

use super::data::images_tensor;
use super::{Classifier, Normalisation};

/// Probabilities of the positive class for square 8-bit images, in batches.
pub fn predict(
    network: &Classifier,
    images: &[u8],
    side: usize,
    norm: Normalisation,
    device: &Device,
    batch: usize,
) -> Vec<f32> {
    let per_image = side * side;
    let mut scores = Vec::with_capacity(images.len() / per_image);
    for chunk in images.chunks(per_image * batch.max(1)) {
        let logits = network.forward(images_tensor(chunk, side, norm, device));
        let probs = softmax(logits, 1);
        let data = probs.into_data().convert::<f32>();
        // `convert` fixes the element type, so this read cannot fail.
        let values: Vec<f32> = data.try_to_vec().unwrap_or_default();
        scores.extend(values.chunks_exact(2).map(|p| p[1]));
    }
    scores
}
