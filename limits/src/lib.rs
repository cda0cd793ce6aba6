//! Rate bounds shared by the broker and the cloud.
//!
//! One token bucket, and one table of buckets keyed by who is asking (an IP address at the
//! broker's door, a principal at the cloud's API), so that one client exhausting its rate never
//! spends another's. Time is always passed in, so the arithmetic is tested without clocks.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate with a burst: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. A rate of zero never refills: only the burst is ever available.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// Takes `cost` tokens if they are there.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        self.take_or_wait(cost, now).is_ok()
    }

    /// Takes `cost` tokens if they are there; otherwise says how long until they will be (a
    /// `Retry-After`). `Duration::MAX` when they never will be (a zero rate, a cost above the
    /// burst).
    pub fn take_or_wait(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        if self.rate == 0.0 || cost > self.burst {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
    }

    /// Takes `cost` tokens, going into debt if need be, and says how long the caller must wait
    /// until the debt is paid: a connection that read a burst pauses reading for that long,
    /// which is how its rate is bounded without dropping anything it already sent.
    pub fn take_with_debt(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 || self.rate == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.rate)
    }

    /// Whether the bucket would be full now (an idle entry can then be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A rate per key. Keys whose bucket has rested back to full are forgotten, so the table holds
/// only recent callers, and it never holds more than `max_keys`: past it, rested keys are
/// forgotten first, then any (a flood of new keys costs those keys their history, never the
/// table's memory).
#[derive(Debug)]
pub struct KeyedRates<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> KeyedRates<K> {
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> Self {
        Self {
            rate,
            burst,
            max_keys: max_keys.max(1),
            buckets: Mutex::default(),
        }
    }

    pub fn try_take(&self, key: &K, now: Instant) -> bool {
        self.take_or_wait(key, now).is_ok()
    }

    /// One token from `key`'s bucket, or how long until there is one.
    pub fn take_or_wait(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= self.max_keys
                && let Some(any) = buckets.keys().next().cloned()
            {
                buckets.remove(&any);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take_or_wait(1.0, now)
    }

    /// How long until `key` has a token, without taking one (`None`: it has one now).
    pub fn wait_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get_mut(key)?;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            return None;
        }
        if bucket.rate == 0.0 {
            return Some(Duration::MAX);
        }
        Some(Duration::from_secs_f64((1.0 - bucket.tokens) / bucket.rate))
    }

    /// Forgets keys whose bucket is full again.
    pub fn sweep(&self, now: Instant) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| !b.is_full(now));
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!((0..3).all(|_| bucket.try_take(1.0, start)));
        assert!(!bucket.try_take(1.0, start));
        assert!(!bucket.try_take(1.0, at(start, 50)));
        assert!(bucket.try_take(1.0, at(start, 100)));
        // Never more than the burst, however long it rested.
        let later = at(start, 60_000);
        assert!((0..3).all(|_| bucket.try_take(1.0, later)));
        assert!(!bucket.try_take(1.0, later));
    }

    #[test]
    fn a_refusal_says_how_long_to_wait() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4.0, 1.0, start);
        assert_eq!(bucket.take_or_wait(1.0, start), Ok(()));
        assert_eq!(
            bucket.take_or_wait(1.0, start),
            Err(Duration::from_millis(250))
        );
        assert_eq!(bucket.take_or_wait(1.0, at(start, 250)), Ok(()));
        let mut never = TokenBucket::new(0.0, 1.0, start);
        assert_eq!(never.take_or_wait(1.0, start), Ok(()));
        assert_eq!(never.take_or_wait(1.0, start), Err(Duration::MAX));
    }

    #[test]
    fn debt_is_paid_by_waiting() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 100.0, start);
        assert_eq!(bucket.take_with_debt(100.0, start), Duration::ZERO);
        let wait = bucket.take_with_debt(50.0, start);
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(bucket.take_with_debt(0.0, start + wait), Duration::ZERO);
    }

    #[test]
    fn each_key_has_its_own_rate() {
        let now = Instant::now();
        let rates = KeyedRates::new(1.0, 2.0, 100);
        assert!(rates.try_take(&"a", now) && rates.try_take(&"a", now));
        assert!(!rates.try_take(&"a", now));
        assert!(rates.try_take(&"b", now));
    }

    #[test]
    fn waiting_can_be_asked_without_spending() {
        let now = Instant::now();
        let rates = KeyedRates::new(2.0, 1.0, 10);
        assert_eq!(
            rates.wait_for(&"a", now),
            None,
            "an unknown key has its burst"
        );
        assert!(rates.try_take(&"a", now));
        assert_eq!(rates.wait_for(&"a", now), Some(Duration::from_millis(500)));
        assert_eq!(rates.wait_for(&"a", now), Some(Duration::from_millis(500)));
        assert_eq!(rates.wait_for(&"a", at(now, 500)), None);
    }

    #[test]
    fn the_table_never_outgrows_its_bound() {
        let now = Instant::now();
        let rates = KeyedRates::new(1.0, 1.0, 3);
        for key in 0..100 {
            assert!(rates.try_take(&key, now));
            assert!(rates.len() <= 3);
        }
        // Rested keys are forgotten.
        rates.sweep(at(now, 10_000));
        assert!(rates.is_empty());
    }
}
