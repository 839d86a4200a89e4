//! Latency percentiles for the demo's summary and the load report.

use std::time::Duration;

use serde::Serialize;

/// Collected latencies.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Latencies {
    /// Adds one.
    pub fn push(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles, or `None` without samples.
    pub fn summary_ms(&self) -> Option<Percentiles> {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).saturating_sub(1);
            sorted[rank.min(last)].as_secs_f64() * 1e3
        };
        Some(Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: sorted[last].as_secs_f64() * 1e3,
        })
    }
}

impl Extend<Duration> for Latencies {
    fn extend<I: IntoIterator<Item = Duration>>(&mut self, iter: I) {
        self.samples.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut latencies = Latencies::default();
        assert_eq!(latencies.summary_ms(), None);
        latencies.extend((1..=100).map(Duration::from_millis));
        let p = latencies.summary_ms().unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let mut one = Latencies::default();
        one.push(Duration::from_millis(7));
        let p = one.summary_ms().unwrap();
        assert_eq!((p.p50, p.p99, p.max), (7.0, 7.0, 7.0));
    }
}
