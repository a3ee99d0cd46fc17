//! [`Backoff`]: the one retry-delay policy of DartSync.
//!
//! Exponential from an initial delay up to a cap, with "equal jitter": the
//! nominal delay doubles after every failure (never beyond the cap), and
//! each returned delay is drawn uniformly from `[nominal / 2, nominal]`, so
//! peers that failed together do not retry together, and a delay is never
//! below half its nominal value. [`Backoff::reset`] after a success starts
//! over from the initial delay.
//!
//! Pure: it computes durations and never sleeps, so it knows nothing about
//! tokio and its tests need no clock. Callers own the waiting (and whether
//! to give up; nothing here does). Jitter comes from a small splitmix64
//! generator seeded from the OS once per `Backoff`, or from
//! [`Backoff::with_seed`] for reproducible tests.

use std::time::Duration;

/// Exponentially growing, jittered delays between attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The nominal delay after a reset.
    initial: Duration,
    /// The nominal delay never grows beyond this.
    max: Duration,
    /// The nominal delay of the next attempt, before jitter.
    nominal: Duration,
    /// Delays handed out since the last reset (saturating).
    attempts: u32,
    /// splitmix64 state for the jitter.
    rng: u64,
}

impl Backoff {
    /// A policy starting at `initial` and doubling up to `max`. A zero
    /// `initial` is raised to 1 ms (a zero delay would never grow), and
    /// `max` is raised to `initial` if it is smaller.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = if initial.is_zero() { Duration::from_millis(1) } else { initial };
        let max = max.max(initial);
        Backoff { initial, max, nominal: initial, attempts: 0, rng: rand::random() }
    }

    /// The same policy with a fixed jitter seed (reproducible tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = seed;
        self
    }

    /// The delay to wait before the next attempt; each call doubles the
    /// nominal delay (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = u64::try_from(self.nominal.as_nanos()).unwrap_or(u64::MAX);
        let half = nominal / 2;
        // nominal - half <= 2^63, so the range cannot overflow.
        let jitter = self.next_random() % (nominal - half + 1);
        self.nominal = self.nominal.saturating_mul(2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        Duration::from_nanos(half + jitter)
    }

    /// Starts over from the initial delay (call after a success).
    pub fn reset(&mut self) {
        self.nominal = self.initial;
        self.attempts = 0;
    }

    /// How many delays were handed out since the last reset: the number of
    /// consecutive failures, for a summary log line.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// splitmix64: fast, and good enough to spread retries.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(100 * MS, 2_000 * MS).with_seed(7);
        let nominal = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (i, n) in nominal.into_iter().enumerate() {
            let d = b.next_delay();
            assert!(d >= n * MS / 2 && d <= n * MS, "attempt {i}: {d:?} outside [{n}/2, {n}] ms");
        }
        assert_eq!(b.attempts(), 8);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(10 * MS, 10_000 * MS).with_seed(1);
        for _ in 0..20 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        let d = b.next_delay();
        assert!(d >= 5 * MS && d <= 10 * MS, "{d:?}");
    }

    #[test]
    fn jitter_spreads_and_is_reproducible() {
        let draws = |seed| {
            let mut b = Backoff::new(1_000 * MS, 1_000 * MS).with_seed(seed);
            (0..32).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let a = draws(42);
        assert_eq!(a, draws(42));
        assert_ne!(a, draws(43));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 16, "jitter barely varies: {a:?}");
    }

    #[test]
    fn degenerate_policies_never_stall_or_overflow() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO).with_seed(3);
        assert!(zero.next_delay() >= MS / 2, "a zero initial delay is raised");
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX).with_seed(5);
        for _ in 0..200 {
            huge.next_delay();
        }
        assert!(huge.next_delay() > Duration::from_secs(1 << 20));
        let mut inverted = Backoff::new(500 * MS, MS).with_seed(9);
        for _ in 0..5 {
            let d = inverted.next_delay();
            assert!(d >= 250 * MS && d <= 500 * MS, "the cap is raised to the initial delay: {d:?}");
        }
    }
}
