//! Order statistics for latency samples (nearest-rank percentiles: with 50 samples the p99 is
//! the largest one, which is what an honest p99 of 50 samples can say).

use std::time::Duration;

/// Nearest-rank percentile `p` (0..=100) of `samples` (any order); `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Median, p99 and count of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// 50th percentile.
    pub median: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Largest sample.
    pub max: Option<Duration>,
}

impl Summary {
    /// Summarises `samples`.
    pub fn of(samples: &[Duration]) -> Self {
        Self {
            n: samples.len(),
            median: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: samples.iter().max().copied(),
        }
    }
}

/// A duration as milliseconds with three decimals, or `-`.
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        let fifty: Vec<Duration> = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(percentile(&fifty, 99.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(ms(Some(Duration::from_micros(1234))), "1.234");
    }
}
