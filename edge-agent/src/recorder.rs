//! Sensor → buffer: two tasks joined by a bounded queue.
//!
//! The sampling task only samples and enqueues; it never waits for the disk or the network.
//! The recorder task drains the queue into the buffer, many readings per transaction: every
//! append commits with `synchronous=FULL` (a sync of the WAL, see `buffer`), and lingering
//! `LINGER` before each transaction keeps that at ~10 syncs per second whatever the sample
//! rate. If the disk stalls long enough for the queue to fill, new readings are counted as lost
//! rather than blocking the sensor; at 10 Hz that takes hours.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ecs_protocol::Reading;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::agent::Counters;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::error::Error;
use crate::sensor::Sensor;
use crate::sqlite::Shared;

/// Readings waiting between the sensor and the disk.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
/// Most readings written in one transaction.
const MAX_PER_TRANSACTION: usize = 1_000;
/// How long the recorder lets readings accumulate before writing them.
const LINGER: Duration = Duration::from_millis(100);
/// Pause before retrying a failed write.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub(crate) type Sample = (i64, Reading);

/// Samples every `period` until `stop`. Missed ticks are skipped, not caught up: a burst of
/// readings stamped with the same instant would describe nothing. So `t` after the start at
/// most `t / period + 1` readings exist, and with `period` at least 1 µs (the configured rate
/// is capped) seqs never outrun the microsecond clock, which the buffer's numbering relies on.
pub(crate) async fn sample(
    mut sensor: Sensor,
    clock: Clock,
    period: Duration,
    queue: mpsc::Sender<Sample>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let reading = sensor.sample();
        counters.produced.fetch_add(1, Ordering::Relaxed);
        match queue.try_send((clock.now_ms(), reading)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let lost = counters.lost.fetch_add(1, Ordering::Relaxed) + 1;
                if lost.is_power_of_two() {
                    warn!(lost, "recorder queue full: readings lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    debug!("sensor stopped");
}

/// Moves queued readings into the buffer until the queue is closed and empty (the sampling task
/// has stopped). Publishes the highest stored seq on `recorded` after every write.
///
/// A failed write is retried with the same readings until `shutdown`; only then are they
/// counted as lost.
pub(crate) async fn record(
    mut queue: mpsc::Receiver<Sample>,
    buffer: Shared<Buffer>,
    counters: Arc<Counters>,
    recorded: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<Sample> = Vec::with_capacity(MAX_PER_TRANSACTION);
    loop {
        if pending.is_empty() {
            if queue.recv_many(&mut pending, MAX_PER_TRANSACTION).await == 0 {
                break;
            }
            tokio::time::sleep(LINGER).await;
        }
        while pending.len() < MAX_PER_TRANSACTION {
            match queue.try_recv() {
                Ok(sample) => pending.push(sample),
                Err(_) => break,
            }
        }
        let readings = std::mem::take(&mut pending);
        let count = readings.len() as u64;
        let gauges = Arc::clone(&counters);
        let written = buffer
            .call(move |b| {
                let outcome = b.append(&readings);
                // Under the buffer's lock, so the gauges never go stale.
                gauges.buffered.store(b.len(), Ordering::Relaxed);
                gauges
                    .dropped_total
                    .store(b.dropped_total(), Ordering::Relaxed);
                Ok((readings, outcome))
            })
            .await;
        match written {
            Ok((_, Ok(outcome))) => {
                counters.recorded.fetch_add(count, Ordering::Relaxed);
                if outcome.dropped > 0 {
                    counters
                        .dropped
                        .fetch_add(outcome.dropped, Ordering::Relaxed);
                    warn!(
                        dropped = outcome.dropped,
                        "buffer full: oldest readings dropped"
                    );
                }
                if let Some((_, last_seq)) = outcome.seqs {
                    recorded.send_replace(last_seq);
                }
            }
            Ok((readings, Err(Error::InvalidReading(error)))) => {
                // Retrying cannot help; the sensor's own tests make this unreachable.
                counters
                    .lost
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                error!(%error, "invalid readings discarded");
            }
            Ok((readings, Err(error))) => {
                error!(%error, readings = readings.len(), "cannot store readings; retrying");
                pending = readings;
                tokio::select! {
                    () = shutdown.cancelled() => {
                        counters.lost.fetch_add(pending.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
            Err(error) => {
                counters.lost.fetch_add(count, Ordering::Relaxed);
                error!(%error, "readings lost: the write did not complete");
            }
        }
    }
    debug!("recorder stopped");
}
