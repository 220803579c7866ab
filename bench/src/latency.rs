//! Latency summaries: exact percentiles over every sample (no histogram buckets, so no bucket error).
//!
//! A percentile is taken by the nearest-rank method: the p-th percentile of `n` sorted samples is the
//! sample at rank `ceil(p / 100 * n)` (1-based). It is always one of the samples; p100 is the maximum.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Count, mean and percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// The smallest.
    pub min_ms: f64,
    /// The arithmetic mean.
    pub mean_ms: f64,
    /// The median (nearest rank).
    pub p50_ms: f64,
    /// The 95th percentile (nearest rank).
    pub p95_ms: f64,
    /// The 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `samples`, or `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        let count = sorted.len();
        let mean = total.as_secs_f64() / count as f64;
        Some(Self {
            count,
            min_ms: millis(sorted[0]),
            mean_ms: mean * 1000.0,
            p50_ms: millis(percentile(&sorted, 50.0)),
            p95_ms: millis(percentile(&sorted, 95.0)),
            p99_ms: millis(percentile(&sorted, 99.0)),
            max_ms: millis(sorted[count - 1]),
        })
    }
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` (ascending, not empty) by the nearest-rank method.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let n = sorted.len();
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// A duration in milliseconds, with microsecond precision.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let samples = ms(&(1..=100).collect::<Vec<_>>());
        let summary = Summary::of(&samples).expect("samples");
        assert_eq!(summary.count, 100);
        assert_eq!((summary.p50_ms, summary.p95_ms, summary.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!((summary.min_ms, summary.max_ms), (1.0, 100.0));
        assert!((summary.mean_ms - 50.5).abs() < 1e-9);
    }

    #[test]
    fn order_of_the_samples_does_not_matter() {
        let summary = Summary::of(&ms(&[30, 10, 20])).expect("samples");
        assert_eq!((summary.p50_ms, summary.p99_ms, summary.max_ms), (20.0, 30.0, 30.0));
    }

    #[test]
    fn small_sets_take_the_nearest_rank() {
        let sorted = ms(&[1, 2, 3, 4]);
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(2));
        assert_eq!(percentile(&sorted, 75.0), Duration::from_millis(3));
        assert_eq!(percentile(&sorted, 76.0), Duration::from_millis(4));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(4));
        assert_eq!(percentile(&sorted, 0.1), Duration::from_millis(1));
        let one = ms(&[7]);
        assert_eq!(percentile(&one, 50.0), percentile(&one, 99.0));
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn milliseconds_keep_microseconds() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.567);
    }
}
