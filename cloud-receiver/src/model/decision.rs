//! From the network's output to what an image is told: the calibrated
//! probability and label, or "out of distribution" from the model's gate.
//! The service and `classify` decide the same way, through [`decide`].

use super::ModelCard;
use super::gate::{Gate, Refusal};

/// What a model says about one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Classified.
    Classified {
        /// The label (a class of the card).
        label: String,
        /// Calibrated probability of the positive class.
        positive: f32,
        /// The out-of-distribution score, when the model has a gate.
        score: Option<f32>,
    },
    /// Refused by the gate.
    Unlike(Refusal),
}

/// Decides for one model input (`input`, the resized 8-bit image), its
/// margin and its features.
pub fn decide(
    card: &ModelCard,
    gate: Option<&Gate>,
    input: &[u8],
    margin: f32,
    features: &[f32],
) -> Decision {
    let score = match gate.map(|g| g.admit(input, features)) {
        Some(Err(refusal)) => return Decision::Unlike(refusal),
        Some(Ok(score)) => Some(score),
        None => None,
    };
    let positive = card.probability(margin);
    let index = usize::from(positive >= card.threshold);
    Decision::Classified {
        label: card.classes.get(index).cloned().unwrap_or_default(),
        positive,
        score,
    }
}
