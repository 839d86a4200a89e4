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

/// One bin of a reliability diagram: the images whose predicted
/// probability fell in `lower..upper` (the last bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// Images in the bin.
    pub count: usize,
    /// Mean predicted probability of the images in it (0 when empty).
    pub predicted: f64,
    /// Fraction of them that are positive (0 when empty).
    pub observed: f64,
}

/// The reliability diagram of `scores` against `labels` in `bins` bins of
/// equal width over 0..=1.
pub fn reliability(scores: &[f32], labels: &[u8], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&score, &label) in scores.iter().zip(labels) {
        let p = f64::from(score).clamp(0.0, 1.0);
        // Truncation picks the bin; 1.0 goes into the last one.
        let index = ((p * bins as f64) as usize).min(bins - 1);
        let entry = &mut sums[index];
        entry.0 += 1;
        entry.1 += p;
        entry.2 += usize::from(label == 1);
    }
    sums.iter()
        .enumerate()
        .map(|(i, &(count, predicted, positives))| {
            let n = count.max(1) as f64;
            ReliabilityBin {
                lower: i as f64 / bins as f64,
                upper: (i + 1) as f64 / bins as f64,
                count,
                predicted: predicted / n,
                observed: positives as f64 / n,
            }
        })
        .collect()
}

/// Expected calibration error: the gap between predicted probability and
/// observed frequency, averaged over the bins weighted by their images.
pub fn expected_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.observed - b.predicted).abs())
        .sum::<f64>()
        / total as f64
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
    fn calibration_error_is_zero_when_frequencies_match_and_the_gap_otherwise() {
        // Four images at 0.25, one of them positive; two at 0.75, both
        // positive (observed 1.0, a gap of 0.25).
        let scores = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75];
        let labels = [1, 0, 0, 0, 1, 1];
        let bins = reliability(&scores, &labels, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 6);
        assert_eq!(bins[2].count, 4);
        assert!((bins[2].observed - 0.25).abs() < 1e-12);
        assert_eq!(bins[7].count, 2);
        assert!((bins[7].observed - 1.0).abs() < 1e-12);
        let ece = expected_calibration_error(&bins);
        assert!((ece - 2.0 / 6.0 * 0.25).abs() < 1e-6, "{ece}");
        // 0 and 1 land in the first and last bins.
        let edges = reliability(&[0.0, 1.0], &[0, 1], 10);
        assert_eq!((edges[0].count, edges[9].count), (1, 1));
        assert_eq!(expected_calibration_error(&edges), 0.0);
        assert_eq!(expected_calibration_error(&reliability(&[], &[], 10)), 0.0);
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
