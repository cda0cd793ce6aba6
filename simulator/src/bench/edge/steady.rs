//! One agent at 100 Hz for a minute: the `ecs-edge-agent` process against the stack's embedded
//! broker (mutual TLS) and cloud, its memory sampled every second, its CPU time and counters
//! read when it stops.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ecs_edge_agent::AgentConfig;
use ecs_protocol::DeviceId;
use serde::Serialize;

use super::agent::{AgentChild, Usage};
use super::wire::{self, Encoded};
use crate::bench::ingest::usage::clock_ticks_per_second;
use crate::bench::progress::Progress;

/// How often the agent's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the phase found.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SteadyFigures {
    pub sample_hz: f64,
    pub seconds: f64,
    /// Resident memory at the end of the run, the most seen by a sample, and the kernel's
    /// high-water mark (VmHWM) over the whole run, in KiB.
    pub rss_kb_end: u64,
    pub rss_kb_max_sampled: u64,
    pub rss_kb_peak: u64,
    /// The agent's user + system CPU time from its start to SIGTERM.
    pub cpu_s: Option<f64>,
    pub readings_produced: u64,
    pub readings_acked: u64,
    pub readings_dropped: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub bytes_published: u64,
    pub reconnects: u64,
    /// The acked readings again, from the same seed, as JSON and as the agent encodes them.
    pub encoded: Encoded,
}

/// Runs `config` (the phone, its sensor seeded) for `secs` from `binary`, logging to `log`.
pub async fn run(
    binary: &Path,
    config: &AgentConfig,
    seed: u64,
    secs: u64,
    log: &Path,
    progress: &Progress,
) -> anyhow::Result<SteadyFigures> {
    let mut config = config.clone();
    config.sensor_seed = Some(seed);
    let mut agent = AgentChild::start(binary, &config, log)?;
    let bar = progress.counter(&format!("{} Hz agent", config.sample_rate_hz), secs);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let mut last = Usage::default();
    let mut max_rss = 0;
    for _ in 0..=secs {
        ticks.tick().await;
        last = agent.usage().context("sampling the agent")?;
        max_rss = max_rss.max(last.rss_kb);
        bar.set_position(started.elapsed().as_secs().min(secs));
        bar.set_message(format!("{} KiB resident", last.rss_kb));
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = agent.stop().await?;
    bar.finish_and_clear();
    let cpu_s = clock_ticks_per_second().map(|per_s| last.cpu_ticks as f64 / per_s);
    let period_ms = (1000.0 / config.sample_rate_hz).round() as u32;
    let device: &DeviceId = &config.device_id;
    let (batch_size, acked) = (config.batch_size, stats.readings_acked);
    let device = device.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let now_ms = chrono::Utc::now().timestamp_millis();
        wire::encode(
            &device,
            seed,
            acked,
            batch_size,
            period_ms,
            ecs_edge_agent::buffer::now_unix_micros(),
            now_ms,
        )
    })
    .await
    .context("the encoding task failed")??;
    Ok(SteadyFigures {
        sample_hz: config.sample_rate_hz,
        seconds,
        rss_kb_end: last.rss_kb,
        rss_kb_max_sampled: max_rss,
        rss_kb_peak: last.hwm_kb,
        cpu_s,
        readings_produced: stats.readings_produced,
        readings_acked: stats.readings_acked,
        readings_dropped: stats.readings_dropped,
        batches_sent: stats.batches_sent,
        batches_resent: stats.batches_resent,
        bytes_published: stats.bytes_published,
        reconnects: stats.reconnects,
        encoded,
    })
}
