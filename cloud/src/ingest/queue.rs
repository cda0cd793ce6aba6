//! The queue between the broker link and ingest: per device, fair, bounded, and never a cycle.
//!
//! * **Per device, in order, one at a time.** Each device has its own FIFO; ingest takes the next
//!   message of the device whose turn it is (round robin over devices with work), and never two
//!   of one device at once, so a device's batches are folded into its person's features in the
//!   order they were sent, and one device's burst cannot take every ingest slot.
//! * **Bounded per device.** A device with [`PER_DEVICE`] messages waiting has its next ones
//!   shed: not stored, not acked, counted (`ecs_ingest_shed_total`); the phone resends them after
//!   its ack timeout, when the queue has room again. A flood costs the flooder, not the fleet.
//! * **Bounded over all, with backpressure.** When [`TOTAL`] messages wait, the broker link stops
//!   reading until there is room (the broker holds the rest). That wait never blocks an ack:
//!   acks leave on a connection of their own.
//! * **A stall is visible.** [`Intake::stalled`] says when messages wait and none has been taken
//!   for a while, which `/readyz` reports.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ecs_protocol::topic;
use tokio::sync::Notify;

use crate::mqtt::Inbound;

/// Messages one device may have waiting.
pub const PER_DEVICE: usize = 64;
/// Messages waiting over all devices before the broker link stops reading.
pub const TOTAL: usize = 4_096;

/// Devices are keyed by their uplink topic's device id; messages on other topics (which ingest
/// dead-letters) share one key, and so one bounded queue.
type Key = String;
const FOREIGN: &str = "";

#[derive(Debug, Default)]
struct State {
    queues: HashMap<Key, VecDeque<(Instant, Inbound)>>,
    /// Devices with waiting messages and none in flight, in turn order.
    ready: VecDeque<Key>,
    /// Devices with a message in ingest now.
    in_flight: std::collections::HashSet<Key>,
    total: usize,
    /// The last time ingest took a message, or the queue went from empty to not.
    progress: Option<Instant>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// A message became available (for `Dispatch::next`).
    work: Notify,
    /// Room became available (for `Intake::push`).
    room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counts and queues are behind this lock; they stay consistent through a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The broker link's side: where uplinks go in.
#[derive(Debug, Clone)]
pub struct Intake(Arc<Shared>);

/// Ingest's side: where uplinks come out, a device at a time.
#[derive(Debug)]
pub struct Dispatch(Arc<Shared>);

/// One message taken by ingest. Its device gets its next turn when this is dropped.
#[derive(Debug)]
pub struct Taken {
    pub message: Inbound,
    /// How long it waited in the queue.
    pub waited: Duration,
    key: Key,
    shared: Arc<Shared>,
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.in_flight.remove(&self.key);
        if state.queues.get(&self.key).is_some_and(|q| !q.is_empty()) {
            state.ready.push_back(self.key.clone());
            drop(state);
            self.shared.work.notify_one();
        }
    }
}

/// What happened to a message offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Its device already had [`PER_DEVICE`] waiting: dropped, the device will resend.
    Shed,
}

/// Ingest has stopped taking messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ingest has stopped taking messages")]
pub struct Closed;

/// A new queue: the link's end and ingest's end.
pub fn channel() -> (Intake, Dispatch) {
    let shared = Arc::new(Shared::default());
    (Intake(Arc::clone(&shared)), Dispatch(shared))
}

impl Intake {
    /// Queues `message` under its device, waiting while the whole queue is full.
    pub async fn push(&self, message: Inbound) -> Result<Pushed, Closed> {
        let key = topic::device_of_uplink(&message.topic)
            .map(|d| d.as_str().to_owned())
            .unwrap_or_else(|| FOREIGN.to_owned());
        loop {
            let room = self.0.room.notified();
            {
                let mut state = self.0.lock();
                if state.closed {
                    return Err(Closed);
                }
                let waiting = state.queues.get(&key).map_or(0, VecDeque::len);
                if waiting >= PER_DEVICE {
                    drop(state);
                    metrics::counter!("ecs_ingest_shed_total", "reason" => "device_queue_full")
                        .increment(1);
                    return Ok(Pushed::Shed);
                }
                if state.total < TOTAL {
                    let now = Instant::now();
                    if state.total == 0 {
                        state.progress = Some(now);
                    }
                    state.total += 1;
                    state
                        .queues
                        .entry(key.clone())
                        .or_default()
                        .push_back((now, message));
                    let fresh = waiting == 0 && !state.in_flight.contains(&key);
                    if fresh {
                        state.ready.push_back(key);
                    }
                    metrics::gauge!("ecs_ingest_queue_depth").set(state.total as f64);
                    drop(state);
                    if fresh {
                        self.0.work.notify_one();
                    }
                    return Ok(Pushed::Queued);
                }
            }
            room.await;
        }
    }

    /// Resolves once ingest has stopped taking messages.
    pub async fn closed(&self) {
        loop {
            let room = self.0.room.notified();
            if self.0.lock().closed {
                return;
            }
            room.await;
        }
    }

    /// Messages waiting now.
    pub fn depth(&self) -> usize {
        self.0.lock().total
    }

    /// True when messages wait and ingest has taken none for `threshold`: ingest is stuck
    /// (Postgres hanging, every slot blocked), whatever the link says.
    pub fn stalled(&self, threshold: Duration) -> bool {
        let state = self.0.lock();
        state.total > 0 && state.progress.is_some_and(|p| p.elapsed() > threshold)
    }
}

impl Dispatch {
    /// The next message in turn; `None` once the link's side is gone and nothing waits.
    pub async fn next(&mut self) -> Option<Taken> {
        loop {
            let work = self.0.work.notified();
            {
                let mut state = self.0.lock();
                while let Some(key) = state.ready.pop_front() {
                    let Some(queue) = state.queues.get_mut(&key) else {
                        continue;
                    };
                    let Some((queued_at, message)) = queue.pop_front() else {
                        continue;
                    };
                    if queue.is_empty() {
                        state.queues.remove(&key);
                    }
                    state.total -= 1;
                    state.in_flight.insert(key.clone());
                    let now = Instant::now();
                    state.progress = Some(now);
                    metrics::gauge!("ecs_ingest_queue_depth").set(state.total as f64);
                    drop(state);
                    self.0.room.notify_waiters();
                    return Some(Taken {
                        message,
                        waited: now.saturating_duration_since(queued_at),
                        key,
                        shared: Arc::clone(&self.0),
                    });
                }
                if Arc::strong_count(&self.0) == 1 && state.total == 0 {
                    return None;
                }
            }
            work.await;
        }
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecs_protocol::DeviceId;

    fn message(device: &str, n: u8) -> Inbound {
        Inbound {
            topic: topic::uplink(&DeviceId::parse(device).unwrap()),
            payload: vec![n],
        }
    }

    #[tokio::test]
    async fn devices_take_turns_and_keep_their_order() {
        let (intake, mut dispatch) = channel();
        for n in 0..3 {
            intake.push(message("flood", n)).await.unwrap();
        }
        intake.push(message("calm", 9)).await.unwrap();

        let first = dispatch.next().await.unwrap();
        let second = dispatch.next().await.unwrap();
        assert_eq!(first.message.payload, vec![0]);
        // The flooder's second message waits for its first: the calm device goes next.
        assert_eq!(second.message.payload, vec![9]);
        drop(first);
        let third = dispatch.next().await.unwrap();
        assert_eq!(
            third.message.payload,
            vec![1],
            "the flooder's order is kept"
        );
    }

    #[tokio::test]
    async fn a_device_over_its_share_is_shed_and_others_still_get_in() {
        let (intake, _dispatch) = channel();
        for n in 0..PER_DEVICE {
            let pushed = intake.push(message("flood", n as u8)).await.unwrap();
            assert_eq!(pushed, Pushed::Queued);
        }
        assert_eq!(
            intake.push(message("flood", 0)).await.unwrap(),
            Pushed::Shed
        );
        assert_eq!(
            intake.push(message("calm", 0)).await.unwrap(),
            Pushed::Queued
        );
        assert_eq!(intake.depth(), PER_DEVICE + 1);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_link_until_ingest_takes_one() {
        let (intake, mut dispatch) = channel();
        let devices = TOTAL / PER_DEVICE;
        for d in 0..devices {
            for n in 0..PER_DEVICE {
                intake
                    .push(message(&format!("d{d}"), n as u8))
                    .await
                    .unwrap();
            }
        }
        let waiting = tokio::spawn({
            let intake = intake.clone();
            async move { intake.push(message("late", 1)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the push waits for room");
        drop(dispatch.next().await.unwrap());
        assert_eq!(waiting.await.unwrap().unwrap(), Pushed::Queued);
    }

    #[tokio::test]
    async fn a_stall_is_seen_and_a_closed_ingest_is_told() {
        let (intake, dispatch) = channel();
        intake.push(message("a", 1)).await.unwrap();
        assert!(!intake.stalled(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(intake.stalled(Duration::from_millis(1)));
        drop(dispatch);
        intake.closed().await;
        assert_eq!(intake.push(message("a", 2)).await, Err(Closed));
    }
}
