//! The bounds that keep one client from taking what belongs to all: token buckets for rates,
//! and the registry that counts each device's connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ecs_limits::KeyedRates;
pub(crate) use ecs_limits::TokenBucket;
use ecs_protocol::DeviceId;
use tokio_util::sync::CancellationToken;

/// Slots for something every connection needs for a while (a TLS handshake, a login): at most
/// `total` at once, and at most `per_address` from one IP address, so one address cannot take
/// them all.
#[derive(Debug, Clone)]
pub(crate) struct AddressSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_address: usize,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One slot taken; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    _total: tokio::sync::OwnedSemaphorePermit,
    ip: IpAddr,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefusal {
    Total,
    Address,
}

impl AddressSlots {
    pub(crate) fn new(total: usize, per_address: usize) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            per_address,
            by_address: Arc::default(),
        }
    }

    pub(crate) fn try_take(&self, ip: IpAddr) -> Result<AddressSlot, SlotRefusal> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = by_address.entry(ip).or_insert(0);
        if *count >= self.per_address {
            return Err(SlotRefusal::Address);
        }
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| SlotRefusal::Total)?;
        *count += 1;
        Ok(AddressSlot {
            _total: total,
            ip,
            by_address: Arc::clone(&self.by_address),
        })
    }

    /// Slots in use now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_address.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_address.remove(&self.ip);
            }
        }
    }
}

/// A connect rate per IP address, in front of the listener's overall one: an address that
/// connects faster than its rate is refused without spending the others' budget.
pub(crate) type AddressRates = KeyedRates<IpAddr>;

/// Addresses remembered at most; past it, rested ones are forgotten first, then any.
pub(crate) const MAX_RATED_ADDRESSES: usize = 65_536;

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
    use std::time::Duration;

    #[tokio::test]
    async fn address_slots_cap_each_address_and_the_total() {
        let slots = AddressSlots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = slots.try_take(a).unwrap();
        let _a2 = slots.try_take(a).unwrap();
        assert_eq!(slots.try_take(a).unwrap_err(), SlotRefusal::Address);
        let _b1 = slots.try_take(b).unwrap();
        assert_eq!(slots.try_take(b).unwrap_err(), SlotRefusal::Total);
        drop(a1);
        slots.try_take(b).unwrap();
        assert_eq!(slots.in_use(), 2);
    }

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
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
