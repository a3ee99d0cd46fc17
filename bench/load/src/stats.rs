//! Pure arithmetic of the measurements: latency percentiles and the
//! memory slopes (bytes per entry, per extra holder) between two readings.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latencies {
    /// Summarises `samples` (any order).
    pub fn of(samples: &[Duration]) -> Latencies {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Latencies {
            count: ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The `p`th percentile (0-100) of sorted values, nearest-rank: the
/// smallest value with at least `p`% of the values at or below it. 0 for
/// no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Bytes per unit between two RSS readings in KiB (0 when it shrank or
/// there are no units).
pub fn slope_bytes(before_kib: u64, after_kib: u64, units: u64) -> u64 {
    if units == 0 {
        return 0;
    }
    after_kib.saturating_sub(before_kib) * 1024 / units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // Ten samples: p99 is the largest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), 10.0);
        assert_eq!(percentile(&ten, 50.0), 5.0);
    }

    #[test]
    fn latencies_sort_their_samples() {
        let samples = [30, 10, 20].map(Duration::from_millis);
        let l = Latencies::of(&samples);
        assert_eq!((l.count, l.p50_ms, l.p99_ms, l.max_ms), (3, 20.0, 30.0, 30.0));
        assert_eq!(Latencies::of(&[]), Latencies::default());
    }

    #[test]
    fn slopes_are_bytes_per_unit() {
        assert_eq!(slope_bytes(1000, 2000, 2048), 500);
        assert_eq!(slope_bytes(2000, 1000, 10), 0);
        assert_eq!(slope_bytes(0, 10, 0), 0);
    }
}
