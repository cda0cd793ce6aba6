//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Durations recorded one by one, kept whole (a few MB for a few million samples) so the
/// percentiles are exact rather than a histogram's approximation.
#[derive(Debug, Default)]
pub struct Latencies {
    micros: Vec<u64>,
}

/// The figures a report prints, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// `None` when nothing was recorded: no percentile exists then, and 0 ms would look like
    /// a very fast broker.
    pub fn summary(mut self) -> Option<LatencySummary> {
        self.micros.sort_unstable();
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(LatencySummary {
            samples: self.micros.len(),
            p50_ms: ms(percentile(&self.micros, 50.0)?),
            p99_ms: ms(percentile(&self.micros, 99.0)?),
            max_ms: ms(*self.micros.last()?),
        })
    }
}

/// The nearest-rank percentile of `sorted` (ascending): the smallest sample that at least `p`
/// percent of the samples do not exceed. Always one of the samples, never an interpolation.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_pick_a_sample() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 100.0), Some(100));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // 99 % of 10 samples is 9.9, so the 10th sample: a single slow message shows in p99.
        let mostly_fast = [1, 1, 1, 1, 1, 1, 1, 1, 1, 500];
        assert_eq!(percentile(&mostly_fast, 99.0), Some(500));
        assert_eq!(percentile(&mostly_fast, 50.0), Some(1));
    }

    #[test]
    fn no_samples_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Latencies::default().summary(), None);
    }

    #[test]
    fn summary_is_in_milliseconds_whatever_the_order_of_recording() {
        let mut latencies = Latencies::default();
        for ms in [30, 10, 20] {
            latencies.record(Duration::from_millis(ms));
        }
        let summary = latencies.summary().unwrap();
        assert_eq!(summary.samples, 3);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.p99_ms, 30.0);
        assert_eq!(summary.max_ms, 30.0);
    }
}
