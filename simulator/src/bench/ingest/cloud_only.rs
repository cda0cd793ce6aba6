//! The cloud alone: the embedded broker and the cloud ([`BenchCloud`], with the settings the
//! demo's stack uses), fed pre-encoded batches by the [`generator`] on the broker's service
//! listener, so neither phones nor TLS share the machine with it.
//!
//! [`generator`]: super::generator

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use sqlx::PgPool;

use super::generator::{Generator, Totals};
use super::uplinks::{self, Uplinks};
use super::usage::{CpuFigures, Memory};
use super::window::{Mark, per_second};
use crate::bench::cloud::{BenchCloud, ServiceLogin};
use crate::bench::progress::Progress;

/// Readings per second the batch pool is made for: far above what one cloud commits here, so
/// the generator never runs out (if it does, the report says so).
const POOL_READINGS_PER_S: f64 = 100_000.0;

#[derive(Debug, Clone)]
pub struct CloudOnlyPlan {
    pub devices: usize,
    pub batch_size: usize,
    /// Batches per device published and not yet acked.
    pub in_flight: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

#[derive(Debug, Clone)]
pub struct CloudOnlyFigures {
    pub devices: usize,
    pub in_flight: usize,
    pub seconds: f64,
    /// Rows that became visible in `emotion_readings`, per second.
    pub committed_per_s: f64,
    /// Readings acked by the cloud to the generator, per second.
    pub acked_per_s: f64,
    /// Rows in the table at the end of the phase (warm-up included): what the COPY repeats.
    pub committed_total: u64,
    pub published_batches: u64,
    pub unacked_batches: u64,
    /// The generator ran out of batches: the rate is a lower bound.
    pub exhausted: bool,
    pub cpu: CpuFigures,
    pub memory: Memory,
}

/// Registers the devices, makes their batches, starts broker and cloud, measures, stops them.
/// Returns the batches too, for the COPY.
pub async fn run(
    database_url: &str,
    pool: &PgPool,
    plan: &CloudOnlyPlan,
    workdir: &Path,
    progress: &Progress,
) -> anyhow::Result<(CloudOnlyFigures, Arc<Uplinks>)> {
    let devices = uplinks::register(pool, plan.devices).await?;
    let seconds = (plan.warmup + plan.measure).as_secs_f64();
    let per_device = POOL_READINGS_PER_S * seconds / (plan.batch_size * plan.devices) as f64;
    let batches = (per_device.ceil() as usize).max(plan.in_flight + 1);
    progress.note(&format!(
        "cloud only: encoding {} batches of {} readings",
        batches * plan.devices,
        plan.batch_size
    ));
    let batch_size = plan.batch_size;
    let uplinks = tokio::task::spawn_blocking(move || {
        Uplinks::generate(devices, batches, batch_size, Utc::now())
    })
    .await
    .context("the encoding task failed")??;
    let uplinks = Arc::new(uplinks);

    let cloud = BenchCloud::start(database_url, workdir, |_| {}).await?;
    let measured = measure(
        pool,
        plan,
        cloud.service.clone(),
        Arc::clone(&uplinks),
        progress,
    )
    .await;
    cloud.stop().await;
    Ok((measured?, uplinks))
}

async fn measure(
    pool: &PgPool,
    plan: &CloudOnlyPlan,
    login: ServiceLogin,
    uplinks: Arc<Uplinks>,
    progress: &Progress,
) -> anyhow::Result<CloudOnlyFigures> {
    let bar = progress.timer("cloud only");
    bar.set_message(format!(
        "{} devices, {} batches in flight each: warming up",
        plan.devices, plan.in_flight
    ));
    let generator = Generator::start(login, uplinks, plan.in_flight).await?;
    let totals = Arc::clone(&generator.totals);
    tokio::time::sleep(plan.warmup).await;
    let acked_before = totals.acked_readings.load(Ordering::Relaxed);
    let start = Mark::take(pool).await?;
    bar.set_message("measuring");
    tokio::time::sleep(plan.measure).await;
    let acked_after = totals.acked_readings.load(Ordering::Relaxed);
    let end = Mark::take(pool).await?;
    let memory = Memory::now();
    let exhausted = totals.exhausted.load(Ordering::Relaxed);
    let stopped = generator.stop().await;
    bar.finish_and_clear();
    stopped.context("the load generator failed")?;
    // Batches still being committed when the generator stopped land after the end mark; the
    // COPY repeats what the table holds once they are in.
    let committed_total = settle(pool).await?;
    let window = end.since(&start);
    Ok(CloudOnlyFigures {
        devices: plan.devices,
        in_flight: plan.in_flight,
        seconds: window.seconds,
        committed_per_s: window.committed_per_s,
        acked_per_s: per_second(acked_after.saturating_sub(acked_before), window.seconds),
        committed_total,
        published_batches: load(&totals, |t| &t.published_batches),
        unacked_batches: load(&totals, |t| &t.unacked_batches),
        exhausted,
        cpu: window.cpu,
        memory,
    })
}

fn load(totals: &Totals, counter: fn(&Totals) -> &std::sync::atomic::AtomicU64) -> u64 {
    counter(totals).load(Ordering::Relaxed)
}

/// The row count once it stops growing (at most a few seconds after the generator stopped).
async fn settle(pool: &PgPool) -> anyhow::Result<u64> {
    let mut last = super::window::committed(pool).await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = super::window::committed(pool).await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}
