//! Wiring: one agent is four tasks around one SQLite file.
//!
//! ```text
//! sensor ──queue──> recorder ──> buffer (SQLite) <── uplink session <──events── mqtt event loop
//!                                inbox  (SQLite) <──┘        └──publish──> rumqttc ──> broker
//! ```
//!
//! Each task runs in a span named after it, carrying `device_id`. Shutdown is cooperative (a
//! cancellation token every task watches) and bounded: a task that does not stop in time is
//! aborted and reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ecs_protocol::{DeviceId, Notification};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::inbox::Inbox;
use crate::recorder;
use crate::sensor::Sensor;
use crate::sqlite::Shared;
use crate::status::StatusStore;
use crate::uplink::{Session, Settings, connection};

/// How long [`AgentHandle::shutdown`] waits for each task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often [`AgentHandle::wait_drained`] looks.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Live counters shared by the tasks; [`AgentStats`] is a snapshot of them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) produced: AtomicU64,
    pub(crate) recorded: AtomicU64,
    /// Produced but never stored (queue full, write failed at shutdown).
    pub(crate) lost: AtomicU64,
    /// Dropped by the buffer's capacity policy, by this process.
    pub(crate) dropped: AtomicU64,
    /// Dropped by the capacity policy since the buffer file was created.
    pub(crate) dropped_total: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) batches_resent: AtomicU64,
    /// Resends because a later batch was acknowledged first (included in `batches_resent`).
    pub(crate) batches_overtaken: AtomicU64,
    /// Resends of one batch to find out whether a silent cloud is back (included in
    /// `batches_resent`).
    pub(crate) probes: AtomicU64,
    /// Runs on this file that did not stop cleanly, since it was created (persisted).
    pub(crate) unclean_stops: AtomicU64,
    /// Readings produced and never stored after those unclean stops (persisted).
    pub(crate) missed_after_crashes: AtomicU64,
    pub(crate) buffered: AtomicU64,
    pub(crate) notifications: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    /// Acks that named readings not in flight (forged, or for an earlier run's batches).
    pub(crate) acks_untrusted: AtomicU64,
    /// ConnAcks received: the first connection and every reconnect.
    pub(crate) connections: AtomicU64,
    /// Payload bytes of every uplink message queued for the broker.
    pub(crate) bytes_published: AtomicU64,
    /// The correction applied to the phone's clock for new readings (`clock`), in ms.
    pub(crate) clock_offset_ms: std::sync::atomic::AtomicI64,
    /// When the last trusted ack arrived (Unix ms; 0: none yet this run).
    pub(crate) last_ack_at_ms: std::sync::atomic::AtomicI64,
    pub(crate) connected: AtomicBool,
    /// Why the last connection attempt failed, said for a person (`connection::explain`);
    /// `None` once connected.
    pub(crate) connection_problem: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn set_connection_problem(&self, problem: Option<String>) {
        // A poisoned lock still holds a whole value (each holder makes one assignment).
        *self
            .connection_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = problem;
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AgentStats {
        let c = self;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AgentStats {
            readings_produced: load(&c.produced),
            readings_acked: load(&c.acked),
            batches_sent: load(&c.batches_sent),
            batches_resent: load(&c.batches_resent),
            batches_overtaken: load(&c.batches_overtaken),
            probes: load(&c.probes),
            unclean_stops: load(&c.unclean_stops),
            readings_missed_after_crashes: load(&c.missed_after_crashes),
            readings_dropped: load(&c.dropped) + load(&c.lost),
            readings_dropped_total: load(&c.dropped_total),
            readings_buffered: load(&c.buffered),
            notifications_received: load(&c.notifications),
            decode_errors: load(&c.decode_errors),
            acks_untrusted: load(&c.acks_untrusted),
            reconnects: load(&c.connections).saturating_sub(1),
            bytes_published: load(&c.bytes_published),
            last_ack_at_ms: Some(c.last_ack_at_ms.load(Ordering::Relaxed)).filter(|&t| t > 0),
            connected: c.connected.load(Ordering::Relaxed),
            clock_offset_ms: c.clock_offset_ms.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of what an agent has done since it started (unless noted otherwise).
/// Saved by `status` as JSON: a field another version does not know reads as its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AgentStats {
    pub readings_produced: u64,
    /// Readings deleted from the buffer because the cloud acknowledged them. After a restart
    /// this includes readings an earlier run produced.
    pub readings_acked: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    /// Of `batches_resent`, those sent again at once because a later batch was acknowledged
    /// first (the cloud never got them), rather than after the ack timeout.
    pub batches_overtaken: u64,
    /// Of `batches_resent`, single batches sent again to find out whether a cloud that had gone
    /// silent is back (after 1 s of silence, then 2 s, 4 s, ... up to the ack timeout).
    pub probes: u64,
    /// Runs of the agent on this buffer file that ended without a clean stop (SIGKILL, power
    /// loss, a panic), since the file was created.
    pub unclean_stops: u64,
    /// Readings the sensor produced, by its clock, after the last one stored before each of
    /// those stops and before the next start (the recorder's last moments, at most about
    /// 100 ms of readings and one write, then the time no agent ran); since the file was
    /// created.
    pub readings_missed_after_crashes: u64,
    /// Readings this run lost before the cloud had them: the oldest dropped from a full buffer,
    /// or never stored because the disk stalled.
    pub readings_dropped: u64,
    /// Readings dropped from a full buffer since the buffer file was created (persisted).
    pub readings_dropped_total: u64,
    /// Readings on disk awaiting an ack, now.
    pub readings_buffered: u64,
    /// Distinct notifications stored in the inbox (duplicates not counted).
    pub notifications_received: u64,
    /// Downlink messages that could not be decoded (or made no sense) and were dropped.
    pub decode_errors: u64,
    /// Acks that named readings this run had not sent, or had already had acknowledged: only
    /// the part in flight was deleted (a forged ack deletes nothing unsent).
    pub acks_untrusted: u64,
    /// Times the connection to the broker was made again after the first.
    pub reconnects: u64,
    /// Payload bytes of the uplink messages sent (readings, receipts), resends included.
    pub bytes_published: u64,
    /// When the last ack this run trusted arrived (Unix ms).
    pub last_ack_at_ms: Option<i64>,
    pub connected: bool,
    /// The correction applied to the phone's clock for new readings, learned from the cloud's
    /// acks (0: none; negative: the phone's clock runs fast).
    pub clock_offset_ms: i64,
}

/// Starts agents. See [`Agent::start`].
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Opens the buffer and inbox, then starts sampling, recording and uplinking. Returns once
    /// everything runs; the broker need not be reachable (the agent buffers and keeps trying).
    ///
    /// Must be called within a tokio runtime. Fails on invalid configuration, unreadable TLS
    /// files, or a database that cannot be opened or belongs to another device.
    pub async fn start(config: AgentConfig) -> Result<AgentHandle> {
        config.validate()?;
        let device_id = config.device_id.clone();
        let settings = Settings {
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            ack_timeout: config.ack_timeout,
            inflight_batches: config.inflight_batches,
        };
        let period = Duration::from_secs_f64(1.0 / config.sample_rate_hz);
        let sensor = match config.sensor_archetype {
            Some(archetype) => Sensor::for_archetype(config.effective_seed(), archetype),
            None => Sensor::new(config.effective_seed()),
        };
        let broker = config.broker.clone();
        // Bound before anything runs: a port in use is a configuration error, said at start.
        let metrics = match config.metrics_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::InvalidConfig(format!(
                    "cannot serve metrics on {addr} (--metrics-addr, ECS_METRICS_ADDR): {e}"
                ))
            })?),
            None => None,
        };
        let metrics_addr = metrics
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()
            .map_err(|e| Error::Task(format!("the metrics listener has no address: {e}")))?;
        let (buffer, clock, run, inbox, status, (client, eventloop)) =
            tokio::task::spawn_blocking(move || {
                let path = &config.db_path;
                let file = |e| Error::buffer_file(path, e);
                let mut buffer =
                    Buffer::open(path, &config.device_id, config.buffer_capacity).map_err(file)?;
                // The readings' clock, with what earlier runs learned from the cloud; the
                // sensor's clock for counting what a crash missed is the same one.
                let clock = Clock::with_offset(buffer.clock_offset_ms()?);
                let run = buffer.start_run(period, clock.now_ms())?;
                let inbox = Inbox::open(path).map_err(file)?;
                let status = StatusStore::open(path).map_err(file)?;
                Ok::<_, Error>((
                    buffer,
                    clock,
                    run,
                    inbox,
                    status,
                    connection::client(&config)?,
                ))
            })
            .await
            .map_err(|e| Error::Task(format!("opening the agent did not finish: {e}")))??;
        if run.after_unclean_stop {
            warn!(
                missed = run.missed,
                unclean_stops_total = run.unclean_stops_total,
                "the previous run did not stop cleanly: by the sensor's clock, {} readings it \
                 produced after the last one stored were never stored",
                run.missed
            );
        }

        let counters = Arc::new(Counters::default());
        counters
            .unclean_stops
            .store(run.unclean_stops_total, Ordering::Relaxed);
        counters
            .missed_after_crashes
            .store(run.missed_after_crashes_total, Ordering::Relaxed);
        counters.buffered.store(buffer.len(), Ordering::Relaxed);
        counters
            .clock_offset_ms
            .store(clock.offset_ms(), Ordering::Relaxed);
        counters
            .dropped_total
            .store(buffer.dropped_total(), Ordering::Relaxed);
        // Every stored seq is below this run's first one (which jumps to the clock: see
        // `buffer`), so this bounds what is stored; the uplink only uses it to skip reads.
        let newest_recorded = buffer.first_seq().saturating_sub(1);
        info!(
            device_id = %device_id,
            buffered = buffer.len(),
            first_seq = buffer.first_seq(),
            "agent starting"
        );
        let buffer = Shared::new(buffer);
        let inbox = Shared::new(inbox);

        let shutdown = CancellationToken::new();
        let sensor_stop = shutdown.child_token();
        let (queue_tx, queue_rx) = mpsc::channel(recorder::QUEUE_CAPACITY);
        let (recorded_tx, recorded_rx) = watch::channel(newest_recorded);
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let session = Session::new(
            &device_id,
            client.clone(),
            buffer.clone(),
            inbox.clone(),
            Arc::clone(&counters),
            clock.clone(),
            settings,
            newest_recorded,
            shutdown.clone(),
        );

        let mut tasks = vec![
            (
                "sensor",
                tokio::spawn(
                    recorder::sample(
                        sensor,
                        clock,
                        period,
                        queue_tx,
                        Arc::clone(&counters),
                        sensor_stop.clone(),
                    )
                    .instrument(info_span!("sensor", device_id = %device_id)),
                ),
            ),
            (
                "recorder",
                tokio::spawn(
                    recorder::record(
                        queue_rx,
                        buffer.clone(),
                        Arc::clone(&counters),
                        recorded_tx,
                        shutdown.clone(),
                    )
                    .instrument(info_span!("recorder", device_id = %device_id)),
                ),
            ),
            (
                "uplink",
                tokio::spawn(
                    session
                        .run(link_rx, recorded_rx)
                        .instrument(info_span!("uplink", device_id = %device_id)),
                ),
            ),
            (
                "status",
                tokio::spawn(
                    save_status(Shared::new(status), Arc::clone(&counters), shutdown.clone())
                        .instrument(info_span!("status", device_id = %device_id)),
                ),
            ),
            (
                "mqtt",
                tokio::spawn(
                    connection::drive(
                        eventloop,
                        client,
                        broker,
                        link_tx,
                        Arc::clone(&counters),
                        shutdown.clone(),
                    )
                    .instrument(info_span!("mqtt", device_id = %device_id)),
                ),
            ),
        ];
        if let Some(listener) = metrics {
            tasks.push((
                "metrics",
                tokio::spawn(
                    crate::metrics::serve(
                        listener,
                        device_id.clone(),
                        Arc::clone(&counters),
                        shutdown.clone(),
                    )
                    .instrument(info_span!("metrics", device_id = %device_id)),
                ),
            ));
        }
        Ok(AgentHandle {
            device_id,
            counters,
            buffer,
            inbox,
            sensor_stop,
            shutdown,
            tasks,
            metrics_addr,
        })
    }
}

/// Saves the counters into the agent's file every [`crate::status::SAVE_INTERVAL`] and once
/// more at shutdown, for `ecs-edge-agent status`.
async fn save_status(
    store: Shared<StatusStore>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(crate::status::SAVE_INTERVAL);
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let stats = counters.snapshot();
        if let Err(e) = store.call(move |s| s.save(&stats)).await {
            warn!(error = %e, "cannot save the agent's counters");
        }
        if last {
            break;
        }
    }
}

/// Control of a running agent. Dropping it stops the tasks without waiting for them; call
/// [`AgentHandle::shutdown`] to stop them and wait.
pub struct AgentHandle {
    device_id: DeviceId,
    counters: Arc<Counters>,
    buffer: Shared<Buffer>,
    inbox: Shared<Inbox>,
    sensor_stop: CancellationToken,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl AgentHandle {
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// Where `GET /metrics` is served (`AgentConfig::metrics_addr`, with the port chosen).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    pub fn stats(&self) -> AgentStats {
        self.counters.snapshot()
    }

    /// Why the agent cannot reach the broker, said for a person and naming the setting that
    /// would fix it when one would; `None` while connected (or before the first attempt ends).
    pub fn connection_problem(&self) -> Option<String> {
        self.counters
            .connection_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops producing readings; what is buffered keeps going up. Idempotent.
    pub fn stop_sensor(&self) {
        self.sensor_stop.cancel();
    }

    /// Waits until every reading produced so far is stored, sent, acknowledged and deleted:
    /// nothing is queued in memory and the buffer is empty. Returns `false` if that did not
    /// happen within `timeout`. Meaningful after [`AgentHandle::stop_sensor`]; while the sensor
    /// runs, "drained" lasts only until the next sample.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            while !self.is_drained() {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await
        .is_ok()
    }

    fn is_drained(&self) -> bool {
        let c = &*self.counters;
        // Counters first, gauge last: a reading recorded in between shows up in the gauge.
        let produced = c.produced.load(Ordering::SeqCst);
        let settled = c.recorded.load(Ordering::SeqCst) + c.lost.load(Ordering::SeqCst);
        produced == settled && c.buffered.load(Ordering::SeqCst) == 0
    }

    /// Every notification in the inbox, in arrival order.
    pub async fn notifications(&self) -> Result<Vec<Notification>> {
        self.inbox.call(|inbox| inbox.list()).await
    }

    /// Every notification in the inbox with the time it arrived, in arrival order.
    pub async fn received_notifications(&self) -> Result<Vec<crate::inbox::Received>> {
        self.inbox.call(|inbox| inbox.received()).await
    }

    /// Stops the sensor, stores what it already produced, disconnects from the broker, and
    /// checkpoints the database so the file is self-contained. Unacknowledged readings stay in
    /// the buffer for the next start.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        let mut failure = None;
        for (name, mut task) in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(Error::Task(format!("{name} task failed: {e}"))),
                Err(_) => {
                    task.abort();
                    failure = Some(Error::Task(format!(
                        "{name} task did not stop within {SHUTDOWN_GRACE:?}"
                    )));
                }
            }
        }
        if failure.is_none() {
            // Every task stopped in time: what the sensor produced is stored.
            self.buffer.call(|b| b.mark_clean_stop()).await?;
        }
        self.buffer.call(|b| b.checkpoint()).await?;
        info!(device_id = %self.device_id, stats = ?self.stats(), "agent stopped");
        failure.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("device_id", &self.device_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
