//! Latency samples and their percentiles.

use std::time::Duration;

/// A set of measured durations, sorted once.
#[derive(Debug, Clone)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut durations: Vec<Duration>) -> Self {
        durations.sort_unstable();
        Self { sorted: durations }
    }

    /// The `p`-th percentile (0.0 ..= 1.0), nearest rank.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.pct(0.5)
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
}

/// The mean of a slice of durations (zero for an empty one).
pub fn mean(durations: &[Duration]) -> Duration {
    if durations.is_empty() {
        return Duration::ZERO;
    }
    durations.iter().sum::<Duration>() / durations.len() as u32
}

/// A duration in the unit that suits it: `812 ns`, `1.52 µs`, `9.81 ms`, `2.40 s`.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `a / b` as `1.23×` (or `–` when `b` is zero).
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The ratio of two durations.
pub fn dur_ratio(a: Duration, b: Duration) -> String {
    ratio(a.as_secs_f64(), b.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Samples {
        Samples::new(v.iter().map(|&m| Duration::from_millis(m)).collect())
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s = ms(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(s.median(), Duration::from_millis(50));
        assert_eq!(s.pct(0.95), Duration::from_millis(95));
        assert_eq!(s.pct(0.99), Duration::from_millis(99));
        assert_eq!(s.pct(1.0), Duration::from_millis(100));
        assert_eq!(s.pct(0.0), Duration::from_millis(1));
        assert_eq!(ms(&[7]).pct(0.99), Duration::from_millis(7));
        assert_eq!(ms(&[]).median(), Duration::ZERO);
        assert_eq!(
            mean(&[Duration::from_millis(1), Duration::from_millis(5)]),
            Duration::from_millis(3)
        );
    }

    #[test]
    fn durations_and_ratios_read_well() {
        assert_eq!(fmt_dur(Duration::from_nanos(812)), "812 ns");
        assert_eq!(fmt_dur(Duration::from_nanos(1_520)), "1.52 µs");
        assert_eq!(fmt_dur(Duration::from_micros(9_810)), "9.81 ms");
        assert_eq!(fmt_dur(Duration::from_millis(2_400)), "2.40 s");
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "–");
    }
}
