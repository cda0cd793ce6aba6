//! The bounds that keep one client from taking what belongs to all: token buckets for rates,
//! and the registry that counts each device's connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ecs_protocol::DeviceId;
use tokio_util::sync::CancellationToken;

/// A rate with a burst: `rate` tokens per second, at most `burst` saved up.
///
/// Time is passed in, so the arithmetic is tested without clocks.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. A rate of zero never refills: only the burst is ever available.
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Self {
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
    pub(crate) fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Takes `cost` tokens, going into debt if need be, and says how long the caller must wait
    /// until the debt is paid: a connection that read a burst pauses reading for that long,
    /// which is how its rate is bounded without dropping anything it already sent.
    pub(crate) fn take_with_debt(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 || self.rate == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.rate)
    }

    /// The tokens there now.
    pub(crate) fn peek(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Whether the bucket would be full now (an idle entry can then be forgotten).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// How many connections each device may hold and how often it may connect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceLimits {
    pub(crate) max_connections: usize,
    /// Connection attempts per second, per device, after a burst of `connect_burst`.
    pub(crate) connect_rate: f64,
    pub(crate) connect_burst: f64,
}

/// Why a device could not register a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The device already holds its maximum of connections.
    TooManyConnections,
    /// The device connects more often than its rate allows.
    RateLimited,
}

#[derive(Debug)]
struct DeviceEntry {
    /// One token per live connection: cancelling it closes that connection.
    connections: Vec<(u64, CancellationToken)>,
    connects: TokenBucket,
}

#[derive(Debug, Default)]
struct RegistryState {
    devices: HashMap<DeviceId, DeviceEntry>,
    next_id: u64,
}

/// Every device connection the door holds, by device: the per-device caps are checked here, and
/// revocation closes a device's connections through it.
///
/// Entries exist only for devices with a valid certificate (an attacker cannot invent them), and
/// an entry without connections is forgotten once its connect bucket has refilled.
#[derive(Debug, Clone)]
pub(crate) struct DeviceRegistry {
    limits: DeviceLimits,
    state: Arc<Mutex<RegistryState>>,
}

/// A registered connection; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Registration {
    device: DeviceId,
    id: u64,
    closed: CancellationToken,
    registry: DeviceRegistry,
}

impl Registration {
    /// Cancelled when the connection must close (its device was revoked).
    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if let Some(entry) = state.devices.get_mut(&self.device) {
            entry.connections.retain(|(id, _)| *id != self.id);
        }
    }
}

impl DeviceRegistry {
    pub(crate) fn new(limits: DeviceLimits) -> Self {
        Self {
            limits,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        // A panic while holding this lock leaves only counts behind, which stay consistent:
        // carry on rather than poison every later connection.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection of `device`, or says why it may not have one.
    pub(crate) fn register(
        &self,
        device: &DeviceId,
        now: Instant,
    ) -> Result<Registration, Refusal> {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        let limits = self.limits;
        let entry = state
            .devices
            .entry(device.clone())
            .or_insert_with(|| DeviceEntry {
                connections: Vec::new(),
                connects: TokenBucket::new(limits.connect_rate, limits.connect_burst, now),
            });
        if !entry.connects.try_take(1.0, now) {
            return Err(Refusal::RateLimited);
        }
        if entry.connections.len() >= limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let closed = CancellationToken::new();
        entry.connections.push((id, closed.clone()));
        drop(state);
        Ok(Registration {
            device: device.clone(),
            id,
            closed,
            registry: self.clone(),
        })
    }

    /// Closes every connection of `device`; returns how many there were.
    pub(crate) fn close_device(&self, device: &DeviceId) -> usize {
        let state = self.lock();
        state.devices.get(device).map_or(0, |entry| {
            entry.connections.iter().for_each(|(_, c)| c.cancel());
            entry.connections.len()
        })
    }

    /// Connections held now, over all devices.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.lock()
            .devices
            .values()
            .map(|e| e.connections.len())
            .sum()
    }

    /// Forgets devices with no connection and a full connect bucket.
    pub(crate) fn sweep(&self, now: Instant) {
        self.lock()
            .devices
            .retain(|_, e| !e.connections.is_empty() || !e.connects.is_full(now));
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
    fn debt_is_paid_by_waiting() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 100.0, start);
        assert_eq!(bucket.take_with_debt(100.0, start), Duration::ZERO);
        let wait = bucket.take_with_debt(50.0, start);
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(bucket.take_with_debt(0.0, start + wait), Duration::ZERO);
    }

    fn registry(max_connections: usize) -> DeviceRegistry {
        DeviceRegistry::new(DeviceLimits {
            max_connections,
            connect_rate: 1.0,
            connect_burst: 5.0,
        })
    }

    #[test]
    fn a_device_holds_at_most_its_cap_and_gets_slots_back() {
        let registry = registry(2);
        let device = DeviceId::parse("phone1").unwrap();
        let now = Instant::now();
        let first = registry.register(&device, now).unwrap();
        let _second = registry.register(&device, now).unwrap();
        assert_eq!(
            registry.register(&device, now).unwrap_err(),
            Refusal::TooManyConnections
        );
        // Another device is not affected.
        let other = DeviceId::parse("phone2").unwrap();
        let _other = registry.register(&other, now).unwrap();
        drop(first);
        let _third = registry.register(&device, now).unwrap();
        assert_eq!(registry.connections(), 3);
    }

    #[test]
    fn reconnecting_too_often_is_refused() {
        let registry = registry(100);
        let device = DeviceId::parse("phone1").unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            drop(registry.register(&device, now).unwrap());
        }
        assert_eq!(
            registry.register(&device, now).unwrap_err(),
            Refusal::RateLimited
        );
        registry.register(&device, at(now, 1_000)).unwrap();
    }

    #[test]
    fn closing_a_device_cancels_its_connections_only() {
        let registry = registry(2);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let now = Instant::now();
        let ra = registry.register(&a, now).unwrap();
        let rb = registry.register(&b, now).unwrap();
        assert_eq!(registry.close_device(&a), 1);
        assert!(ra.closed().is_cancelled());
        assert!(!rb.closed().is_cancelled());
    }

    #[test]
    fn idle_devices_are_forgotten_once_rested() {
        let registry = registry(2);
        let device = DeviceId::parse("phone1").unwrap();
        let now = Instant::now();
        drop(registry.register(&device, now).unwrap());
        registry.sweep(now);
        assert_eq!(registry.lock().devices.len(), 1, "still owes its connect");
        registry.sweep(at(now, 10_000));
        assert!(registry.lock().devices.is_empty());
    }
}
