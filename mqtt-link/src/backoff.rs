//! Exponential backoff with "equal jitter": the n-th delay is uniform in `[d/2, d]` with
//! `d = min(initial * 2^n, max)`. The fixed half keeps a flapping peer from being hammered; the
//! random half spreads out the clients that lost it together (a fleet of phones, the cloud's
//! replicas), so they do not come back in lockstep.

use std::time::Duration;

use rand::RngExt;

/// Delays between attempts; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call is one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::nth(self.initial, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after `failures` failures, for callers that count attempts themselves.
    pub fn nth(initial: Duration, max: Duration, failures: u32) -> Duration {
        let ceiling = initial.saturating_mul(1u32 << failures.min(20)).min(max);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(ceiling_us / 2..=ceiling_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1_000));
        let first = backoff.next_delay();
        assert!((ms(50)..=ms(100)).contains(&first), "{first:?}");
        let second = backoff.next_delay();
        assert!((ms(100)..=ms(200)).contains(&second), "{second:?}");
        for _ in 0..40 {
            let capped = backoff.next_delay();
            assert!(capped <= ms(1_000), "{capped:?}");
        }
        assert!(backoff.next_delay() >= ms(500), "half of the cap is fixed");
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
        // Jittered: a hundred draws at the cap are not all the same.
        let draws: std::collections::BTreeSet<Duration> = (0..100)
            .map(|_| Backoff::nth(ms(100), ms(1_000), 10))
            .collect();
        assert!(draws.len() > 1);
        assert!(Backoff::nth(ms(100), ms(1_000), u32::MAX) <= ms(1_000));
    }
}
