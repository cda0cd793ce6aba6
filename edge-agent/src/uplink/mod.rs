//! Buffer → broker, and the cloud's answers back.
//!
//! The session task reads batches from the buffer and publishes them (QoS 1) on the device's
//! uplink topic, keeps a bounded [`window::Window`] of batches awaiting the cloud's application
//! ack, and re-sends what stays unacknowledged. MQTT's PUBACK only means the broker has the
//! message in memory, and rumqttc forgets unacknowledged QoS 1 messages when it reconnects
//! without a resumed session, so the only thing that deletes a reading is a
//! [`Downlink::AckV1`] for its range: the cloud committed it.
//!
//! On the way down it stores notifications in the inbox (de-duplicated) and answers each with a
//! receipt. A payload it cannot decode is logged and counted, never fatal.
//!
//! Nothing here blocks the sensor: the session only reads what the recorder already stored.

pub(crate) mod connection;
mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ecs_protocol::{
    Ack, DeviceId, Downlink, MAX_READINGS_PER_BATCH, Notification, NotificationReceipt,
    PackedBatch, ReadingBatch, TimedAck, Uplink, decode_downlink, encode_uplink, topic,
};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Counters;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::inbox::Inbox;
use crate::sqlite::Shared;
use connection::LinkEvent;
use window::{InFlight, Window};

/// How long a batch must have waited before a later batch's ack counts as overtaking it (see
/// `Window::overtaken`).
const OVERTAKEN_GRACE: Duration = Duration::from_millis(500);
/// The first silence after which the cloud is probed ([`Session::probe`]).
const PROBE_FIRST: Duration = Duration::from_secs(1);
/// A backlog of more than this many full window's worth of readings (`batch_size` ×
/// `inflight_batches`) is sent in batches of [`MAX_READINGS_PER_BATCH`]: a phone back after a day
/// offline catches up in a tenth of the round trips (the cloud takes one batch of a device at a
/// time, so the round trip bounds a drain), and goes back to `batch_size` once it is close.
const CATCH_UP_WINDOWS: u64 = 4;

/// How the session batches and re-sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) inflight_batches: usize,
}

/// Whether a batch shorter than the batch size may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Only full batches: more readings just arrived; a partial batch waits for the timer.
    FullOnly,
    /// Everything: the flush interval elapsed, or the connection is fresh.
    Partial,
}

pub(crate) struct Session {
    uplink_topic: String,
    downlink_topic: String,
    client: AsyncClient,
    buffer: Shared<Buffer>,
    inbox: Shared<Inbox>,
    counters: Arc<Counters>,
    /// The readings' clock, corrected from the cloud's acks ([`crate::clock`]).
    clock: Clock,
    settings: Settings,
    window: Window,
    /// Our view of the link, from [`LinkEvent`]s. Nothing is published while it is down: it
    /// would be dropped at the next ConnAck anyway.
    connected: bool,
    /// Highest seq the recorder has stored, to skip buffer reads that cannot fill a batch.
    newest_recorded: u64,
    /// When the cloud was last heard (a trusted ack) or last probed; see [`Session::probe`].
    quiet_since: Instant,
    /// How long a silence lasts before the next probe; doubles with each probe.
    probe_delay: Duration,
    cancel: CancellationToken,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device_id: &DeviceId,
        client: AsyncClient,
        buffer: Shared<Buffer>,
        inbox: Shared<Inbox>,
        counters: Arc<Counters>,
        clock: Clock,
        settings: Settings,
        newest_recorded: u64,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            uplink_topic: topic::uplink(device_id),
            downlink_topic: topic::downlink(device_id),
            client,
            buffer,
            inbox,
            counters,
            clock,
            window: Window::new(settings.inflight_batches),
            settings,
            connected: false,
            newest_recorded,
            quiet_since: Instant::now(),
            probe_delay: PROBE_FIRST,
            cancel,
        }
    }

    /// When to probe a cloud that has gone silent: `None` while connected and nothing waits, or
    /// once the probes have backed off to the ack timeout (which then resends everything).
    fn probe_deadline(&self) -> Option<Instant> {
        if !self.connected || self.probe_delay >= self.settings.ack_timeout {
            return None;
        }
        let waiting = self.window.longest_waiting()?;
        Some(waiting.sent_at.max(self.quiet_since) + self.probe_delay)
    }

    /// The cloud has said nothing for a while, batches wait: it may have restarted, and what was
    /// published while none was subscribed is gone. Sends the longest-waiting batch again, one
    /// only: if the cloud is back its ack overtakes the rest, which then go at once
    /// ([`Window::overtaken`]). The probes back off (1 s, 2 s, 4 s, ... up to the ack timeout),
    /// so a cloud that is only slow gets a handful of duplicates, never a flood.
    async fn probe(&mut self) -> Result<()> {
        let now = Instant::now();
        self.quiet_since = now;
        self.probe_delay = (self.probe_delay * 2).min(self.settings.ack_timeout);
        let Some(batch) = self.window.longest_waiting() else {
            return Ok(());
        };
        debug!(
            first_seq = batch.first_seq,
            last_seq = batch.last_seq,
            "the cloud is silent; probing"
        );
        self.counters.probes.fetch_add(1, Ordering::Relaxed);
        self.resend(batch).await
    }

    /// Runs until `cancel` or until the connection task is gone. A failed step (say, a
    /// database error) is logged and retried by the next timer or event, never fatal.
    pub(crate) async fn run(
        mut self,
        mut link: mpsc::UnboundedReceiver<LinkEvent>,
        mut recorded: watch::Receiver<u64>,
    ) {
        let mut flush = tokio::time::interval(self.settings.flush_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut recorder_running = true;
        loop {
            let deadline = if self.connected {
                self.window.next_deadline(self.settings.ack_timeout)
            } else {
                None
            };
            let probe = self.probe_deadline();
            let step = tokio::select! {
                () = self.cancel.cancelled() => break,
                event = link.recv() => match event {
                    Some(event) => self.on_link_event(event).await,
                    None => break,
                },
                _ = flush.tick() => self.send_new(Flush::Partial).await,
                changed = recorded.changed(), if recorder_running => match changed {
                    Ok(()) => {
                        self.newest_recorded = *recorded.borrow_and_update();
                        self.send_new(Flush::FullOnly).await
                    }
                    Err(_) => {
                        recorder_running = false;
                        Ok(())
                    }
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => self.resend_expired().await,
                () = tokio::time::sleep_until(probe.unwrap_or_else(Instant::now)),
                    if probe.is_some() => self.probe().await,
            };
            match step {
                Ok(()) => {}
                Err(Error::LinkClosed) => break,
                Err(error) => warn!(%error, "uplink step failed; retrying on the next tick"),
            }
        }
        debug!(in_flight = self.window.len(), "uplink stopped");
    }

    async fn on_link_event(&mut self, event: LinkEvent) -> Result<()> {
        match event {
            LinkEvent::Connected => {
                self.connected = true;
                self.quiet_since = Instant::now();
                self.probe_delay = PROBE_FIRST;
                // Clean session: the subscription is gone. Ordered before the re-sends on the
                // same connection, so acks for them find us subscribed.
                self.client
                    .subscribe(self.downlink_topic.clone(), QoS::AtLeastOnce)
                    .await
                    .map_err(|_| Error::LinkClosed)?;
                for batch in self.window.all() {
                    self.resend(batch).await?;
                }
                self.send_new(Flush::Partial).await
            }
            LinkEvent::Disconnected => {
                self.connected = false;
                Ok(())
            }
            LinkEvent::Message { topic, payload } => self.on_message(&topic, &payload).await,
        }
    }

    /// Sends new batches (after everything in flight) while the window has room.
    async fn send_new(&mut self, flush: Flush) -> Result<()> {
        let max = self.batch_limit();
        while self.connected && self.window.has_room() {
            let after = self.window.sent_up_to();
            let cannot_fill =
                after.is_some_and(|after| self.newest_recorded.saturating_sub(after) < max as u64);
            if flush == Flush::FullOnly && cannot_fill {
                break;
            }
            let Some(batch) = self.buffer.call(move |b| b.next_batch(after, max)).await? else {
                break;
            };
            if flush == Flush::FullOnly && batch.readings.len() < max {
                break;
            }
            let (first_seq, last_seq) = (batch.first_seq, batch.last_seq());
            self.publish(&batch_message(batch)).await?;
            self.window.push(first_seq, last_seq, Instant::now());
            self.counters.batches_sent.fetch_add(1, Ordering::Relaxed);
            debug!(first_seq, last_seq, "batch sent");
        }
        Ok(())
    }

    /// The most readings a new batch may hold: `batch_size`, or [`MAX_READINGS_PER_BATCH`] while
    /// catching up on a backlog (see [`CATCH_UP_WINDOWS`]).
    fn batch_limit(&self) -> usize {
        let normal = self.settings.batch_size;
        let window = (normal as u64).saturating_mul(self.settings.inflight_batches as u64);
        let buffered = self.counters.buffered.load(Ordering::Relaxed);
        if buffered > window.saturating_mul(CATCH_UP_WINDOWS) {
            normal.max(MAX_READINGS_PER_BATCH)
        } else {
            normal
        }
    }

    async fn resend_expired(&mut self) -> Result<()> {
        for batch in self
            .window
            .expired(Instant::now(), self.settings.ack_timeout)
        {
            debug!(
                first_seq = batch.first_seq,
                last_seq = batch.last_seq,
                "no ack in time"
            );
            self.resend(batch).await?;
        }
        Ok(())
    }

    /// Sends what is left of an in-flight batch again, reading it afresh from the buffer.
    async fn resend(&mut self, sent: InFlight) -> Result<()> {
        let (first, last) = (sent.first_seq, sent.last_seq);
        // Restart the batch's timer before trying: if reading or publishing fails, the next
        // attempt comes a full ack timeout later instead of in a tight loop.
        let now = Instant::now();
        self.window.resent(first, Some((first, last)), now);
        let batch = self
            .buffer
            .call(move |b| b.batch_within(first, last, MAX_READINGS_PER_BATCH))
            .await?;
        let Some(batch) = batch else {
            // Every reading of it was dropped by the capacity policy meanwhile.
            self.window.resent(first, None, now);
            return Ok(());
        };
        let (first_seq, last_seq) = (batch.first_seq, batch.last_seq());
        if last_seq != last {
            // Not reachable while the window's invariant holds; if it ever breaks, start over
            // from the oldest buffered reading. Duplicates are absorbed by the cloud.
            warn!(
                first,
                last, "in-flight range has a hole; re-sending everything"
            );
            self.window.clear();
            return Ok(());
        }
        self.publish(&batch_message(batch)).await?;
        self.window.resent(first, Some((first_seq, last_seq)), now);
        self.counters.batches_resent.fetch_add(1, Ordering::Relaxed);
        debug!(first_seq, last_seq, "batch re-sent");
        Ok(())
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        if topic != self.downlink_topic {
            warn!(topic, "message on an unexpected topic ignored");
            return Ok(());
        }
        match decode_downlink(payload) {
            Ok(Downlink::AckV1(ack)) => self.on_ack(ack).await.map(drop),
            Ok(Downlink::AckV2(TimedAck {
                ack,
                server_time_ms,
            })) => {
                let arrived_ms = crate::clock::phone_ms();
                // Only an ack that answered something this run sent says anything about the
                // cloud's clock: a forged one must not move the readings' times.
                if self.on_ack(ack).await? {
                    self.learn_clock(server_time_ms, arrived_ms).await?;
                }
                Ok(())
            }
            Ok(Downlink::NotificationV1(notification)) => self.on_notification(notification).await,
            Err(error) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%error, bytes = payload.len(), "undecodable downlink message dropped");
                Ok(())
            }
        }
    }

    /// The cloud committed `first_seq..=up_to_seq`: delete what of that range this run sent and
    /// has not had acknowledged, nothing else. An ack naming anything else (forged by another
    /// client holding the service password, or for a batch an earlier run sent) deletes nothing
    /// beyond that and is counted: what it names is sent again in its turn, and the cloud's key
    /// absorbs the duplicates.
    ///
    /// Returns whether the ack answered a batch in flight (so was trusted, at least in part).
    async fn on_ack(&mut self, ack: Ack) -> Result<bool> {
        let Ack {
            first_seq,
            up_to_seq,
        } = ack;
        if first_seq > up_to_seq {
            self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            warn!(first_seq, up_to_seq, "inverted ack range ignored");
            return Ok(false);
        }
        let trusted = self.window.in_flight_within(first_seq, up_to_seq);
        // In u128: an ack may name 0..=u64::MAX.
        let covered: u128 = trusted.iter().map(|(a, b)| u128::from(b - a) + 1).sum();
        if covered < u128::from(up_to_seq - first_seq) + 1 {
            self.counters.acks_untrusted.fetch_add(1, Ordering::Relaxed);
            debug!(
                first_seq,
                up_to_seq,
                ?trusted,
                "ack names readings not in flight; only those in flight are deleted"
            );
        }
        if trusted.is_empty() {
            return Ok(false);
        }
        let answered = self.window.latest_send_within(first_seq, up_to_seq);
        self.quiet_since = Instant::now();
        self.probe_delay = PROBE_FIRST;
        let counters = Arc::clone(&self.counters);
        let deleted = self
            .buffer
            .call(move |b| {
                let mut deleted = 0;
                for (first, last) in trusted {
                    deleted += b.delete_range(first, last)?;
                }
                // Under the buffer's lock, and the count before the gauge: whoever sees the
                // buffer empty (`wait_drained`) also sees every deleted reading counted.
                counters.acked.fetch_add(deleted, Ordering::SeqCst);
                counters.buffered.store(b.len(), Ordering::SeqCst);
                Ok(deleted)
            })
            .await?;
        self.counters
            .last_ack_at_ms
            .store(crate::status::unix_ms(), Ordering::Relaxed);
        self.window.acknowledge(first_seq, up_to_seq);
        debug!(first_seq, up_to_seq, deleted, "ack");
        // A later send answered first: what was sent before it is lost (after a cloud restart,
        // everything published while no cloud was subscribed). Send it again now rather than
        // after its ack timeout.
        if let Some(answered) = answered {
            let grace = OVERTAKEN_GRACE.min(self.settings.ack_timeout);
            for batch in self.window.overtaken(answered, Instant::now(), grace) {
                debug!(
                    first_seq = batch.first_seq,
                    last_seq = batch.last_seq,
                    "overtaken by a later ack"
                );
                self.counters
                    .batches_overtaken
                    .fetch_add(1, Ordering::Relaxed);
                self.resend(batch).await?;
            }
        }
        self.send_new(Flush::FullOnly).await?;
        Ok(true)
    }

    /// An ack that answered this run's batch carried the cloud's clock: corrects the readings'
    /// clock when it is off, and keeps the correction in the buffer file for the next run.
    async fn learn_clock(&mut self, server_time_ms: i64, arrived_ms: i64) -> Result<()> {
        let Some(offset_ms) = self.clock.observe(server_time_ms, arrived_ms) else {
            return Ok(());
        };
        self.counters
            .clock_offset_ms
            .store(offset_ms, Ordering::Relaxed);
        warn!(
            offset_ms,
            "the phone's clock is off from the cloud's; new readings get the corrected time"
        );
        self.buffer
            .call(move |b| b.set_clock_offset_ms(offset_ms))
            .await
    }

    /// Stores the notification (once), then tells the cloud it is stored. The receipt goes out
    /// for duplicates too: a duplicate means our previous receipt was lost.
    async fn on_notification(&mut self, notification: Notification) -> Result<()> {
        let id = notification.notification_id;
        let kind = notification.kind.name();
        let new = self.inbox.call(move |i| i.insert(&notification)).await?;
        if new {
            self.counters.notifications.fetch_add(1, Ordering::Relaxed);
            info!(notification_id = %id, kind, "notification stored");
        } else {
            debug!(notification_id = %id, "duplicate notification");
        }
        let receipt = NotificationReceipt {
            notification_ids: vec![id],
        };
        self.publish(&Uplink::NotificationReceiptV1(receipt)).await
    }

    /// Queues a message for the event loop. rumqttc's `publish` returns once queued, which is
    /// all we want: delivery is confirmed by the cloud's ack, not by PUBACK.
    async fn publish(&self, message: &Uplink) -> Result<()> {
        let bytes = encode_uplink(message)?;
        self.counters
            .bytes_published
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let topic = self.uplink_topic.clone();
        tokio::select! {
            () = self.cancel.cancelled() => Err(Error::LinkClosed),
            queued = self.client.publish(topic, QoS::AtLeastOnce, false, bytes) => {
                queued.map_err(|_| Error::LinkClosed)
            }
        }
    }
}

/// A batch as it goes on the wire: delta-coded (`ReadingBatchV3`: V2's body, about half the
/// bytes of V1, and the version whose acks carry the cloud's clock). A batch the packing refuses
/// (nothing the buffer makes should be) goes as V1, for the cloud to judge and dead-letter.
fn batch_message(batch: ReadingBatch) -> Uplink {
    match PackedBatch::pack(&batch) {
        Ok(packed) => Uplink::ReadingBatchV3(packed),
        Err(e) => {
            warn!(error = %e, first_seq = batch.first_seq, "batch not packable; sent as V1");
            Uplink::ReadingBatchV1(batch)
        }
    }
}
