//! End to end, as the demo runs it: the embedded broker and the cloud ([`Stack`]), people and
//! phones provisioned through the API, edge agents with their own certificates and SQLite
//! buffers streaming over mutual TLS, all in this process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ecs_cloud::model::ModelKind;
use ecs_edge_agent::{Agent, AgentConfig, AgentHandle, AgentStats};
use ecs_protocol::DeviceId;
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::lag::{LagFigures, LagPoller};
use super::usage::{CpuFigures, Memory};
use super::window::{Mark, per_second};
use crate::bench::progress::Progress;
use crate::mobile::ApiClient;
use crate::stack::{BrokerChoice, Stack, StackOptions};

/// How long the cloud gets to become ready, and the phones to connect.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long provisioning people and phones through the API may take.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the phones get to stop (they are stopped all at once).
const PHONES_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One end-to-end run.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// Names the run in progress lines and the phones' files.
    pub name: &'static str,
    pub phones: usize,
    pub sample_hz: f64,
    pub warmup: Duration,
    pub measure: Duration,
    pub batch_size: usize,
    pub flush: Duration,
    pub ack_timeout: Duration,
    pub lag_poll: Duration,
    /// Where the phones' SQLite buffers go.
    pub phone_dir: PathBuf,
}

/// What one end-to-end run measured, over its window.
#[derive(Debug, Clone)]
pub struct PipelineFigures {
    pub phones: usize,
    pub sample_hz: f64,
    pub seconds: f64,
    /// Readings the phones' sensors produced, per second.
    pub offered_per_s: f64,
    /// Rows that became visible in `emotion_readings`, per second.
    pub committed_per_s: f64,
    /// Readings the phones deleted because the cloud acked them, per second.
    pub acked_per_s: f64,
    pub lag: LagFigures,
    pub batches_sent: u64,
    pub batches_resent: u64,
    /// Readings the phones lost in the window (queue full, buffer full).
    pub readings_lost: u64,
    pub cpu: CpuFigures,
    pub memory: Memory,
}

/// Starts a stack on `database_url`, runs the phones, stops everything.
pub async fn run(
    database_url: &str,
    pool: &PgPool,
    plan: &PipelinePlan,
    progress: &Progress,
) -> anyhow::Result<PipelineFigures> {
    let stack = Stack::start(&StackOptions {
        database_url: database_url.to_owned(),
        broker: BrokerChoice::Embedded,
        model: ModelKind::Scorecard,
        model_seed: Some(7),
    })
    .await?;
    let measured = match stack.wait_ready(START_TIMEOUT).await {
        Ok(()) => measure(&stack, pool, plan, progress).await,
        Err(e) => Err(e),
    };
    stack.stop().await;
    measured
}

struct Phone {
    device: DeviceId,
    agent: AgentHandle,
}

async fn measure(
    stack: &Stack,
    pool: &PgPool,
    plan: &PipelinePlan,
    progress: &Progress,
) -> anyhow::Result<PipelineFigures> {
    let phones = tokio::time::timeout(PROVISION_TIMEOUT, start_phones(stack, plan, progress))
        .await
        .with_context(|| {
            format!("provisioning the phones took more than {PROVISION_TIMEOUT:?}")
        })??;
    let measured = stream(&phones, pool, plan, progress).await;
    stop_phones(phones).await;
    measured
}

/// Creates a consenting person per phone through the API, registers the phone as that person
/// (as the demo does), issues its certificate and starts its agent.
async fn start_phones(
    stack: &Stack,
    plan: &PipelinePlan,
    progress: &Progress,
) -> anyhow::Result<Vec<Phone>> {
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token)?;
    let bar = progress.counter(&format!("{} phones", plan.name), plan.phones as u64);
    let mut phones = Vec::with_capacity(plan.phones);
    for i in 0..plan.phones {
        let user = admin
            .create_user(&format!("Bench person {}", i + 1), true)
            .await?;
        let device = admin
            .with_token(&user.api_token)
            .register_device(user.user_id, None)
            .await?;
        let device = DeviceId::parse(device.device_id).context("the API gave a bad device id")?;
        let (broker, tls) = stack.device_access(&device)?;
        let mut config = AgentConfig::new(device.clone(), broker);
        config.tls = tls;
        config.db_path = plan
            .phone_dir
            .join(format!("{}-phone-{i}.db", plan.name.replace(' ', "-")));
        config.sample_rate_hz = plan.sample_hz;
        config.sensor_seed = Some(i as u64);
        config.batch_size = plan.batch_size;
        config.flush_interval = plan.flush;
        config.ack_timeout = plan.ack_timeout;
        let agent = Agent::start(config)
            .await
            .with_context(|| format!("starting phone {}", i + 1))?;
        phones.push(Phone { device, agent });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !phones.iter().all(|p| p.agent.stats().connected) {
        if tokio::time::Instant::now() > deadline {
            let connected = phones.iter().filter(|p| p.agent.stats().connected).count();
            bail!(
                "only {connected} of {} phones connected within {START_TIMEOUT:?}",
                phones.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(phones)
}

/// The phones' counters summed.
fn totals(phones: &[Phone]) -> AgentStats {
    phones
        .iter()
        .map(|p| p.agent.stats())
        .fold(AgentStats::default(), |sum, s| AgentStats {
            readings_produced: sum.readings_produced + s.readings_produced,
            readings_acked: sum.readings_acked + s.readings_acked,
            batches_sent: sum.batches_sent + s.batches_sent,
            batches_resent: sum.batches_resent + s.batches_resent,
            readings_dropped: sum.readings_dropped + s.readings_dropped,
            ..sum
        })
}

/// Warm-up, then the window: counts at both edges, the lag poller in between.
async fn stream(
    phones: &[Phone],
    pool: &PgPool,
    plan: &PipelinePlan,
    progress: &Progress,
) -> anyhow::Result<PipelineFigures> {
    let bar = progress.timer(plan.name);
    bar.set_message(format!(
        "{} phones at {:.0} Hz: warming up",
        phones.len(),
        plan.sample_hz
    ));
    tokio::time::sleep(plan.warmup).await;
    let devices = phones.iter().map(|p| p.device.to_string()).collect();
    let poller = LagPoller::start(pool.clone(), devices, plan.lag_poll);
    let phones_before = totals(phones);
    let start = Mark::take(pool).await?;
    bar.set_message("measuring");
    tokio::time::sleep(plan.measure).await;
    let phones_after = totals(phones);
    let end = Mark::take(pool).await?;
    let memory = Memory::now();
    let lag = poller.finish().await?;
    bar.finish_and_clear();
    let window = end.since(&start);
    // The phones' counters are read next to the counts: the same window, to a few ms.
    let delta = |f: fn(&AgentStats) -> u64| f(&phones_after).saturating_sub(f(&phones_before));
    Ok(PipelineFigures {
        phones: phones.len(),
        sample_hz: plan.sample_hz,
        seconds: window.seconds,
        offered_per_s: per_second(delta(|s| s.readings_produced), window.seconds),
        committed_per_s: window.committed_per_s,
        acked_per_s: per_second(delta(|s| s.readings_acked), window.seconds),
        lag,
        batches_sent: delta(|s| s.batches_sent),
        batches_resent: delta(|s| s.batches_resent),
        readings_lost: delta(|s| s.readings_dropped),
        cpu: window.cpu,
        memory,
    })
}

/// Stops every phone at once; what they still buffer is not needed.
async fn stop_phones(phones: Vec<Phone>) {
    let mut stopping = JoinSet::new();
    for phone in phones {
        stopping.spawn(async move {
            if let Err(e) = phone.agent.shutdown().await {
                tracing::warn!(device_id = %phone.device, error = %e, "a bench phone did not stop cleanly");
            }
        });
    }
    let all = async { while stopping.join_next().await.is_some() {} };
    if tokio::time::timeout(PHONES_STOP_TIMEOUT, all)
        .await
        .is_err()
    {
        tracing::warn!("bench phones still stopping after {PHONES_STOP_TIMEOUT:?}; abandoned");
    }
}
