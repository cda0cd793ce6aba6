//! The simulated phones: one rumqttc client per device, each event loop polled in a task of its
//! own, as on a real fleet where every phone has its own connection and its own timing.
//!
//! A phone reconnects by itself: after an error it waits [`RECONNECT_DELAY`] and polls again,
//! which makes rumqttc dial anew. The delay is short and fixed (no backoff, no jitter) on
//! purpose: every phone comes back at once, the worst case a broker restart can meet.
//!
//! Who is connected is counted in *rounds* ([`Phones::begin_round`]): a round is complete when
//! every phone has had a CONNACK since it began, whatever happened before. The initial
//! connection is round one; a broker restart starts another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ecs_mqtt_link::{BrokerUrl, Scheme};
use ecs_protocol::DeviceId;
use indicatif::ProgressBar;
use rumqttc::{AsyncClient, Event, EventLoop, NetworkOptions, Packet, TlsConfiguration, Transport};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// Pause between a failed connection and the next attempt.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Keep-alive a phone announces: long, as on a battery-powered device.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How long one attempt (TCP, TLS, CONNECT, CONNACK) may take before the phone gives up and
/// tries again. A phone on a mobile network waits this long too; a shorter timeout would make
/// phones queued behind a busy broker abandon handshakes it is about to do.
const CONNECT_TIMEOUT_SECS: u64 = 30;

/// How one phone reaches its broker.
pub struct PhoneSpec {
    pub id: DeviceId,
    pub addr: SocketAddr,
    /// TLS with the phone's own client certificate; plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A fleet of connected (or connecting) phones. Dropping it aborts every phone's task, which
/// closes its socket without a DISCONNECT.
pub struct Phones {
    phones: Vec<Phone>,
    tally: Arc<Tally>,
    tasks: JoinSet<()>,
}

/// What the bench holds of one phone.
pub struct Phone {
    pub id: DeviceId,
    pub client: AsyncClient,
    /// Publishes this phone may still have in flight (returned on PUBACK).
    pub window: Arc<Semaphore>,
}

impl Phones {
    /// Starts every phone at once: each task's first poll dials the broker. `window` is the
    /// number of QoS 1 publishes a phone may have unacknowledged. Round one begins now.
    pub fn start(specs: Vec<PhoneSpec>, window: usize) -> Self {
        let tally = Arc::new(Tally::new(specs.len()));
        tally.begin_round();
        let mut tasks = JoinSet::new();
        let mut phones = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let (client, eventloop) = client(&spec, window);
            let phone = Phone {
                id: spec.id,
                client,
                window: Arc::new(Semaphore::new(window)),
            };
            tasks.spawn(drive(
                index,
                eventloop,
                Arc::clone(&tally),
                Arc::clone(&phone.window),
                window,
            ));
            phones.push(phone);
        }
        Self {
            phones,
            tally,
            tasks,
        }
    }

    pub fn len(&self) -> usize {
        self.phones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }

    pub fn phones(&self) -> &[Phone] {
        &self.phones
    }

    /// Starts a new round: from now on, a phone counts as connected only after a new CONNACK.
    pub fn begin_round(&self) {
        self.tally.begin_round();
    }

    /// Phones with a CONNACK in the current round.
    pub fn connected(&self) -> usize {
        self.tally.reached.load(Ordering::Relaxed)
    }

    /// PUBACKs received by all phones so far.
    pub fn pubacks(&self) -> u64 {
        self.tally.pubacks.load(Ordering::Relaxed)
    }

    /// Connection errors seen by all phones so far (refusals, timeouts, broken connections).
    pub fn connection_errors(&self) -> u64 {
        self.tally.errors.load(Ordering::Relaxed)
    }

    /// Waits until every phone has a CONNACK in the current round, at most `timeout` after
    /// `since`, and returns when the last one came (counted from `since`); `None` if some
    /// never did.
    pub async fn wait_all_connected(
        &self,
        since: Instant,
        timeout: Duration,
        bar: &ProgressBar,
    ) -> Option<Duration> {
        let deadline = tokio::time::Instant::from_std(since + timeout);
        loop {
            let completed = self.tally.completed.notified();
            bar.set_position(self.connected() as u64);
            if let Some(at) = self.tally.completed_at() {
                bar.set_position(self.len() as u64);
                return Some(at.saturating_duration_since(since));
            }
            tokio::select! {
                () = completed => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Stops every phone and waits until their sockets are closed, so the descriptors are free
    /// for what comes next.
    pub async fn shut_down(mut self) {
        self.tasks.shutdown().await;
    }
}

/// The MQTT options of a phone: client id = device id, clean session (a phone keeps what must
/// survive itself, as the edge agent does), long keep-alive, packets sized like the broker's.
fn client(spec: &PhoneSpec, window: usize) -> (AsyncClient, EventLoop) {
    let scheme = if spec.tls.is_some() {
        Scheme::Mqtts
    } else {
        Scheme::Mqtt
    };
    let url = BrokerUrl::at(scheme, spec.addr);
    let mut options = ecs_mqtt_link::options(spec.id.as_str(), &url, KEEP_ALIVE);
    options
        // rumqttc's own in-flight bound stays above the phone's window, so a publish handed to
        // the event loop goes out at once and its timestamp is the time it was sent.
        .set_inflight(u16::try_from(window + 1).unwrap_or(u16::MAX));
    if let Some(tls) = &spec.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(options, window + 8);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Polls one phone's event loop for as long as the task lives.
async fn drive(
    index: usize,
    mut eventloop: EventLoop,
    tally: Arc<Tally>,
    window: Arc<Semaphore>,
    window_size: usize,
) {
    loop {
        match eventloop.poll().await {
            // rumqttc turns a refused CONNECT into an error, so a CONNACK is a success.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session starts with nothing in flight: publishes that were never
                // acknowledged are gone and so must their permits be. Publishes still queued
                // towards the event loop may make the window one or two larger for a moment.
                let lost = window_size.saturating_sub(window.available_permits());
                window.add_permits(lost);
                tally.connected(index);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                window.add_permits(1);
                tally.pubacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Who has a CONNACK in the current round, shared by the phones' tasks and the bench.
struct Tally {
    phones: usize,
    round: AtomicU32,
    /// Per phone, the round of its latest CONNACK.
    last_round: Vec<AtomicU32>,
    /// Phones whose latest CONNACK is in the current round.
    reached: AtomicUsize,
    /// When `reached` became `phones` in the current round.
    completed_at: Mutex<Option<Instant>>,
    completed: Notify,
    pubacks: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn new(phones: usize) -> Self {
        Self {
            phones,
            round: AtomicU32::new(0),
            last_round: (0..phones).map(|_| AtomicU32::new(0)).collect(),
            reached: AtomicUsize::new(0),
            completed_at: Mutex::new(None),
            completed: Notify::new(),
            pubacks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Resets the count, then moves to the next round. A CONNACK racing with this call may be
    /// counted in the new round; the bench begins a round only when no CONNACK can be on its
    /// way (before the first dial, after the broker is dead).
    fn begin_round(&self) {
        self.reached.store(0, Ordering::SeqCst);
        *self
            .completed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.round.fetch_add(1, Ordering::SeqCst);
    }

    fn connected(&self, index: usize) {
        let round = self.round.load(Ordering::SeqCst);
        let Some(slot) = self.last_round.get(index) else {
            return;
        };
        if slot.swap(round, Ordering::SeqCst) == round {
            return; // Already counted in this round (a reconnect within it).
        }
        if self.reached.fetch_add(1, Ordering::SeqCst) + 1 == self.phones {
            *self
                .completed_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.completed.notify_waiters();
        }
    }

    fn completed_at(&self) -> Option<Instant> {
        *self
            .completed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_completes_when_every_phone_has_connected_in_it() {
        let tally = Tally::new(2);
        tally.begin_round();
        tally.connected(0);
        tally.connected(0);
        assert_eq!(tally.reached.load(Ordering::SeqCst), 1);
        assert!(tally.completed_at().is_none());
        tally.connected(1);
        assert!(tally.completed_at().is_some());

        // After a restart, the earlier CONNACKs no longer count.
        tally.begin_round();
        assert!(tally.completed_at().is_none());
        tally.connected(1);
        assert_eq!(tally.reached.load(Ordering::SeqCst), 1);
        tally.connected(0);
        assert!(tally.completed_at().is_some());
    }
}
