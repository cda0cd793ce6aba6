//! The cloud alone: the embedded broker and the cloud (`ecs_cloud::app::spawn`, with the
//! settings the demo's stack uses), fed pre-encoded batches by the [`generator`] on the
//! service listener, so neither phones nor TLS share the machine with it.
//!
//! [`generator`]: super::generator

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use ecs_broker::{BrokerSettings, PkiDir, RunningBroker, Secret};
use ecs_cloud::{
    app::{self, RunningApp},
    config::{ModelSettings, Settings},
    model::ModelKind,
};
use sqlx::PgPool;

use super::generator::{Generator, Login, Totals};
use super::uplinks::{self, Uplinks};
use super::usage::{CpuFigures, Memory};
use super::window::{Mark, per_second};
use crate::bench::progress::Progress;
use crate::stack::random_secret;

/// Readings per second the batch pool is made for: far above what one cloud commits here, so
/// the generator never runs out (if it does, the report says so).
const POOL_READINGS_PER_S: f64 = 100_000.0;
/// How long the cloud gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker gets to stop.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

    let pki = PkiDir::init(
        workdir.join("cloud-only-pki"),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .context("creating the certificate authority")?;
    let password = random_secret();
    let settings = BrokerSettings::loopback(&pki, Secret::new(password.clone()))
        .context("finding free ports for the broker")?;
    let username = settings.service_username.clone();
    let broker = tokio::task::spawn_blocking(move || RunningBroker::start(&settings))
        .await
        .context("starting the broker")??;
    let login = Login {
        addr: broker.service_addr(),
        username,
        password: Secret::new(password.clone()),
    };
    let cloud = app::spawn(cloud_settings(database_url, &broker, &login, password)?)
        .await
        .context("starting the cloud")?;
    let measured = match wait_ready(&cloud).await {
        Ok(()) => measure(pool, plan, login, Arc::clone(&uplinks), progress).await,
        Err(e) => Err(e),
    };
    cloud.stop().await;
    let stopped = tokio::time::timeout(
        BROKER_STOP_TIMEOUT,
        tokio::task::spawn_blocking(move || broker.stop()),
    )
    .await;
    if stopped.is_err() {
        tracing::warn!("the cloud-only broker did not stop within {BROKER_STOP_TIMEOUT:?}");
    }
    Ok((measured?, uplinks))
}

/// The settings `Stack::start` gives the demo's cloud, on this broker.
fn cloud_settings(
    database_url: &str,
    broker: &RunningBroker,
    login: &Login,
    password: String,
) -> anyhow::Result<Settings> {
    let mqtt = crate::stack::embedded_broker_login(broker, login.username.clone(), password);
    let model = ModelSettings {
        kind: ModelKind::Scorecard,
        seed: Some(7),
        ..ModelSettings::default()
    };
    crate::stack::cloud_settings(database_url, random_secret(), mqtt, model)
}

async fn wait_ready(cloud: &RunningApp) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{}/readyz", cloud.http_addr);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let ready = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the cloud did not become ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(
    pool: &PgPool,
    plan: &CloudOnlyPlan,
    login: Login,
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
