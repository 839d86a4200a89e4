//! Binary classification metrics: the evaluation report's numbers.
//!
//! Positive = pneumonia (label 1). Scores are the model's probability of the
//! positive class; a case is called positive when its score is at or above
//! the decision threshold.

use serde::Serialize;

/// Counts of a 2×2 confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// True negatives.
    pub tn: u64,
    /// False positives.
    pub fp: u64,
    /// False negatives.
    pub fn_: u64,
    /// True positives.
    pub tp: u64,
}

impl Confusion {
    /// Tallies predictions against labels (1 = positive) at `threshold`.
    pub fn at(scores: &[f32], labels: &[u8], threshold: f32) -> Self {
        let mut c = Self::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l == 1) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// `[[tn, fp], [fn, tp]]`.
    pub fn matrix(&self) -> [[u64; 2]; 2] {
        [[self.tn, self.fp], [self.fn_, self.tp]]
    }

    fn ratio(num: u64, den: u64) -> f64 {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    }

    /// Sensitivity (recall, true positive rate).
    pub fn sensitivity(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    /// Specificity (true negative rate).
    pub fn specificity(&self) -> f64 {
        Self::ratio(self.tn, self.tn + self.fp)
    }

    /// Precision (positive predictive value).
    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        Self::ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }

    /// Mean of sensitivity and specificity.
    pub fn balanced_accuracy(&self) -> f64 {
        (self.sensitivity() + self.specificity()) / 2.0
    }

    /// Harmonic mean of precision and sensitivity.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.sensitivity());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

/// The ROC curve as (false positive rate, true positive rate) points from
/// (0, 0) to (1, 1), one per distinct score.
pub fn roc_curve(scores: &[f32], labels: &[u8]) -> Vec<(f64, f64)> {
    let positives = labels.iter().filter(|&&l| l == 1).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        // Cases with equal scores move the curve together (a diagonal step).
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if labels[order[i]] == 1 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        points.push((
            if negatives > 0.0 { fp / negatives } else { 0.0 },
            if positives > 0.0 { tp / positives } else { 0.0 },
        ));
    }
    points
}

/// Area under the ROC curve (trapezoids, so ties count one half), in [0, 1].
/// 0.5 when one class is absent.
pub fn roc_auc(scores: &[f32], labels: &[u8]) -> f64 {
    let positives = labels.iter().filter(|&&l| l == 1).count();
    if positives == 0 || positives == labels.len() {
        return 0.5;
    }
    roc_curve(scores, labels)
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

/// The threshold that balances sensitivity and specificity best: among the
/// candidate thresholds (every distinct score), the one with the highest
/// balanced accuracy, ties broken by the smallest gap between the two.
pub fn balanced_threshold(scores: &[f32], labels: &[u8]) -> f32 {
    let mut candidates: Vec<f32> = scores.to_vec();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut best = (0.5f32, f64::MIN, f64::MAX);
    for &t in &candidates {
        let c = Confusion::at(scores, labels, t);
        let balanced = c.balanced_accuracy();
        let gap = (c.sensitivity() - c.specificity()).abs();
        if balanced > best.1 + 1e-12 || ((balanced - best.1).abs() <= 1e-12 && gap < best.2) {
            best = (t, balanced, gap);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_rates() {
        let scores = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1];
        let labels = [1, 1, 1, 0, 0, 0];
        let c = Confusion::at(&scores, &labels, 0.5);
        assert_eq!(c.matrix(), [[2, 1], [1, 2]]);
        assert!((c.sensitivity() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.specificity() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auc_matches_pairwise_counting() {
        let scores = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.6];
        let labels = [1, 1, 1, 0, 0, 0, 1];
        // Mann–Whitney: fraction of (pos, neg) pairs ranked right, ties ½.
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li == 1 && lj == 0 {
                    pairs += 1.0;
                    wins += match scores[i].partial_cmp(&scores[j]).unwrap() {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
        }
        assert!((roc_auc(&scores, &labels) - wins / pairs).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[1, 1]), 0.5);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0, 1]), 1.0);
    }

    #[test]
    fn balanced_threshold_separates_separable_scores() {
        let scores = [0.1, 0.2, 0.35, 0.4, 0.7, 0.9];
        let labels = [0, 0, 0, 1, 1, 1];
        let t = balanced_threshold(&scores, &labels);
        let c = Confusion::at(&scores, &labels, t);
        assert_eq!(c.balanced_accuracy(), 1.0, "threshold {t}");
    }
}
