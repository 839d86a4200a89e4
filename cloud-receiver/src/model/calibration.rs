//! Probabilities a clinician can read at face value, and a decision
//! threshold chosen for screening.
//!
//! - **Temperature scaling** (Guo et al., 2017): one number `T` fitted on
//!   val by minimising the negative log-likelihood of
//!   `sigmoid(margin / T)`. It changes no ranking (AUC, and every decision
//!   at the mapped threshold, stay the same); it only makes "80 %" mean that
//!   about 80 % of such images are positive.
//! - **Screening threshold**: sensitivity first. The highest threshold whose
//!   val sensitivity is still at least the target (a missed pneumonia costs
//!   more than a second read), which gives the most specificity that target
//!   allows; the card records the rule and the val figures it produced, and
//!   says when specificity falls below its floor.

use super::infer::sigmoid;
use super::metrics::Confusion;

/// Temperatures searched, as `ln T`.
const LN_T_RANGE: (f64, f64) = (-3.0, 3.0);

/// The temperature that minimises the mean negative log-likelihood of
/// `labels` under `sigmoid(margin / T)`, by golden-section search over
/// `ln T` in −3..3 (the NLL is unimodal there).
pub fn fit_temperature(margins: &[f32], labels: &[u8]) -> f32 {
    let nll = |ln_t: f64| {
        let t = ln_t.exp();
        margins
            .iter()
            .zip(labels)
            .map(|(&m, &y)| {
                let z = f64::from(m) / t;
                // −log sigmoid(±z), stably.
                let signed = if y == 1 { z } else { -z };
                (-signed).max(0.0) + (-signed.abs()).exp().ln_1p()
            })
            .sum::<f64>()
            / margins.len().max(1) as f64
    };
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = LN_T_RANGE;
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = nll(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = nll(d);
        }
    }
    (((a + b) / 2.0).exp()) as f32
}

/// The calibrated probability of a raw margin at temperature `t`.
pub fn calibrated(margin: f32, temperature: f32) -> f32 {
    sigmoid(margin / temperature)
}

/// The screening threshold on `scores` (any monotone probability): the
/// highest one at which the sensitivity on `labels` is still at least
/// `min_sensitivity`, with the confusion there.
pub fn screening_threshold(
    scores: &[f32],
    labels: &[u8],
    min_sensitivity: f64,
) -> (f32, Confusion) {
    let mut candidates: Vec<f32> = scores.to_vec();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut best = (0.0f32, Confusion::at(scores, labels, 0.0));
    // Sensitivity only falls as the threshold rises: the last candidate
    // that keeps it is the answer.
    for &t in &candidates {
        let c = Confusion::at(scores, labels, t);
        if c.sensitivity() + 1e-12 >= min_sensitivity {
            best = (t, c);
        } else {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_over_confident_model_gets_a_temperature_above_one_and_an_under_confident_one_below() {
        // Labels drawn as if the true probability were sigmoid(m / 2):
        // the margins are twice too large, so T is about 2.
        let mut margins = Vec::new();
        let mut labels = Vec::new();
        for i in 0..2000 {
            let m = (i as f32 / 2000.0 - 0.5) * 16.0;
            let p = sigmoid(m / 2.0);
            // A deterministic stand-in for sampling: a low-discrepancy
            // sequence against p.
            let u = (i as f32 * 0.618_034).fract();
            margins.push(m);
            labels.push(u8::from(u < p));
        }
        let t = fit_temperature(&margins, &labels);
        assert!((1.7..2.3).contains(&t), "{t}");
        let halved: Vec<f32> = margins.iter().map(|m| m / 4.0).collect();
        let t = fit_temperature(&halved, &labels);
        assert!((0.4..0.6).contains(&t), "{t}");
    }

    #[test]
    fn the_screening_threshold_is_the_highest_that_keeps_the_sensitivity() {
        let scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
        let labels = [0, 0, 1, 0, 1, 0, 1, 1, 1, 1];
        // Six positives; keeping 5 of 6 (0.83) allows a threshold of 0.5.
        let (t, c) = screening_threshold(&scores, &labels, 0.8);
        assert_eq!(t, 0.5);
        assert!((c.sensitivity() - 5.0 / 6.0).abs() < 1e-9);
        assert!((c.specificity() - 0.75).abs() < 1e-9);
        let (t, c) = screening_threshold(&scores, &labels, 1.0);
        assert_eq!(t, 0.3);
        assert_eq!(c.sensitivity(), 1.0);
    }
}

/// Val sensitivity the screening threshold keeps at least, by default:
/// the sensitivity the product must reach on any collection. Keeping it
/// with the highest threshold buys all the specificity it allows, which
/// matters because normal images of other collections score higher than
/// val's (the official test split's specificity was 0.833 at the
/// val-balanced threshold).
pub const MIN_SENSITIVITY: f64 = 0.97;
/// Val specificity below which the card says the threshold misses its
/// floor.
pub const SPECIFICITY_FLOOR: f64 = 0.90;

/// What [`fit_card`] measured on val.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fitted {
    /// The fitted temperature.
    pub temperature: f32,
    /// The calibrated threshold.
    pub threshold: f32,
    /// Val sensitivity at it.
    pub sensitivity: f64,
    /// Val specificity at it.
    pub specificity: f64,
    /// Share of val the out-of-distribution gate accepts.
    pub val_acceptance: f64,
}

/// Fits what turns `network`'s outputs into answers a clinician can use:
/// the temperature and the screening threshold on val (written into
/// `card`), and the out-of-distribution gate (train statistics, val limit).
pub fn fit_card<N: super::Forward + ?Sized>(
    network: &N,
    card: &mut super::ModelCard,
    train: &medgate_medmnist::Split,
    val: &medgate_medmnist::Split,
    device: &burn::tensor::Device,
    min_sensitivity: f64,
) -> (super::gate::Gate, Fitted) {
    let side = card.input_size[0];
    let norm = card.normalisation;
    let val_out = super::infer::infer(network, &val.images, side, norm, device, 256);
    let train_out = super::infer::infer(network, &train.images, side, norm, device, 256);
    let margins: Vec<f32> = val_out.iter().map(|o| o.margin).collect();
    let temperature = fit_temperature(&margins, &val.labels);
    let probabilities: Vec<f32> = margins
        .iter()
        .map(|&m| calibrated(m, temperature))
        .collect();
    let (threshold, confusion) = screening_threshold(&probabilities, &val.labels, min_sensitivity);
    let (sensitivity, specificity) = (confusion.sensitivity(), confusion.specificity());
    let floor = if specificity >= SPECIFICITY_FLOOR {
        format!("meets the specificity floor of {SPECIFICITY_FLOOR:.2}")
    } else {
        format!("BELOW the specificity floor of {SPECIFICITY_FLOOR:.2}: not fit for screening")
    };
    card.temperature = temperature;
    card.threshold = threshold;
    card.threshold_rule = format!(
        "screening, sensitivity first: the highest calibrated threshold keeping val sensitivity \
         >= {min_sensitivity:.2} (a missed pneumonia costs more than a second read; the highest \
         such threshold gives the most specificity that allows); on val ({} images) sensitivity \
         {sensitivity:.3}, specificity {specificity:.3}, which {floor}",
        val.len
    );
    let train_features: Vec<Vec<f32>> = train_out.into_iter().map(|o| o.features).collect();
    let val_features: Vec<Vec<f32>> = val_out.into_iter().map(|o| o.features).collect();
    let gate = super::gate::fit(
        &train.images,
        side,
        &train_features,
        &train.labels,
        &val.images,
        &val_features,
    );
    let fitted = Fitted {
        temperature,
        threshold,
        sensitivity,
        specificity,
        val_acceptance: gate.val_acceptance,
    };
    (gate, fitted)
}
