//! `ecs-simulator bench edge`: what the phone-side agent costs and how fast its buffer moves,
//! against plain SQLite, plain JSON and a plain COPY (issue 7).
//!
//! One run, on a scratch database of its own ([`with_scratch`]), with the demo's system in this
//! process ([`Stack`]: the embedded broker, devices over mutual TLS, and the cloud), two people
//! provisioned through the API with a phone each, and the agent as a process of its own (the
//! `ecs-edge-agent` binary next to this one, [`agent`]):
//! 1. **100 Hz** ([`steady`]): one agent sampling at `--sample-hz` for `--agent-secs`; its
//!    resident memory (VmRSS every second, VmHWM at the end) and CPU time from `/proc`, its
//!    counters from its SQLite file when it stops; bytes on the wire = the MQTT payload bytes it
//!    published / readings acked, against the same readings as JSON ([`wire`]).
//! 2. **append** ([`append`]): `--readings` readings into a fresh buffer file through the
//!    agent library's `Buffer::append`, `--per-transaction` at a time as the recorder writes,
//!    against plain SQLite `INSERT`s of the same rows in transactions of the same size.
//! 3. **drain** ([`drain`]): the agent started on that full buffer, its sensor almost still,
//!    timed until Postgres holds every one of the readings; then a plain COPY of the same rows.
//!
//! [`report`] holds the figures, the ratios and the targets.

pub mod agent;
pub mod append;
pub mod drain;
pub mod report;
pub mod steady;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ecs_edge_agent::AgentConfig;
use ecs_protocol::MAX_READINGS_PER_BATCH;
use sqlx::postgres::PgPoolOptions;

use self::report::{EdgeReport, Findings};
use crate::bench::ingest::uplinks::BenchDevice;
use crate::bench::progress::Progress;
use crate::bench::scratch::{ScratchDatabase, ScratchServer, with_scratch};
use crate::bench::sibling;
use crate::people;
use crate::stack::{Stack, with_ready_stack};

/// Seeds of the two phones' sensors, so a run's readings (and their JSON) are reproducible.
const STEADY_SEED: u64 = 100;
const DRAIN_SEED: u64 = 1_000_000;
/// Room in the drained buffer beyond the filled readings, for what its sensor still samples:
/// a full buffer would drop the oldest, and the drain would never complete.
const CAPACITY_HEADROOM: u64 = 10_000;
/// How the stack's devices reach its broker, for the report.
const BROKER: &str = "the stack's embedded broker, the agent over mutual TLS";

#[derive(Debug, Clone, clap::Args)]
pub struct EdgeBenchArgs {
    // `--database-url`: the server the scratch database is made on.
    #[command(flatten)]
    pub server: ScratchServer,
    /// Seconds the 100 Hz agent runs.
    #[arg(long, default_value_t = 60)]
    pub agent_secs: u64,
    /// The agent's sample rate in the first phase.
    #[arg(long, default_value_t = 100.0)]
    pub sample_hz: f64,
    /// Readings appended to the buffer, then drained from it into the cloud.
    #[arg(long, default_value_t = 1_000_000)]
    pub readings: usize,
    /// Readings per append transaction (the recorder writes up to 1 000).
    #[arg(long, default_value_t = append::MAX_PER_TRANSACTION)]
    pub per_transaction: usize,
    /// The draining agent's readings per uplink batch (the agent's default).
    #[arg(long, default_value_t = AgentConfig::DEFAULT_BATCH_SIZE)]
    pub drain_batch_size: usize,
    /// The draining agent's batches awaiting an ack at once (the agent's default).
    #[arg(long, default_value_t = AgentConfig::DEFAULT_INFLIGHT_BATCHES)]
    pub drain_inflight: usize,
    /// Longest the drain may take before the run fails.
    #[arg(long, default_value_t = 900)]
    pub drain_timeout_secs: u64,
    /// Where the agents' SQLite files, the reference's and the logs go (in a fresh directory
    /// removed afterwards). Default: the system's temporary directory, on disk, since the
    /// append rate is the disk's as much as SQLite's.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The agent binary [default: ecs-edge-agent next to this executable].
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl EdgeBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.agent_secs == 0 || self.readings == 0 || self.drain_timeout_secs == 0 {
            bail!("--agent-secs, --readings and --drain-timeout-secs must be at least 1");
        }
        if !(1..=MAX_READINGS_PER_BATCH).contains(&self.per_transaction) {
            bail!("--per-transaction must be within 1..={MAX_READINGS_PER_BATCH}");
        }
        if !(1..=MAX_READINGS_PER_BATCH).contains(&self.drain_batch_size) {
            bail!("--drain-batch-size must be within 1..={MAX_READINGS_PER_BATCH}");
        }
        if self.drain_inflight == 0 {
            bail!("--drain-inflight must be at least 1");
        }
        // At most 1 000 Hz: the wire figure remakes the readings at whole milliseconds apart.
        if !(AgentConfig::MIN_SAMPLE_RATE_HZ..=1_000.0).contains(&self.sample_hz) {
            bail!(
                "--sample-hz must be within {}..=1000",
                AgentConfig::MIN_SAMPLE_RATE_HZ
            );
        }
        Ok(())
    }
}

/// Runs the benchmark. The scratch database and the working directory are removed however the
/// run ends (Ctrl-C included); the agents are killed with it.
pub async fn run(args: &EdgeBenchArgs) -> anyhow::Result<EdgeReport> {
    crate::bench::warn_if_debug_build();
    args.check()?;
    let binary = match &args.agent_binary {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => bail!("--agent-binary {} is not a file", path.display()),
        None => sibling::locate(agent::BINARY, agent::PACKAGE)?,
    };
    let base = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let workdir = tempfile::Builder::new()
        .prefix("ecs-bench-edge-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a working directory in {}", base.display()))?;
    with_scratch(&args.server.database_url, async |scratch, progress| {
        run_in(args, &binary, scratch, workdir.path(), progress).await
    })
    .await
}

async fn run_in(
    args: &EdgeBenchArgs,
    binary: &Path,
    scratch: &ScratchDatabase,
    workdir: &Path,
    progress: &Progress,
) -> anyhow::Result<EdgeReport> {
    let mut findings = with_ready_stack(scratch.url(), async |stack| {
        phases(args, binary, stack, scratch.url(), workdir, progress).await
    })
    .await?;
    findings.database = scratch.name().to_owned();
    Ok(EdgeReport::new(&findings))
}

async fn phases(
    args: &EdgeBenchArgs,
    binary: &Path,
    stack: &Stack,
    url: &str,
    workdir: &Path,
    progress: &Progress,
) -> anyhow::Result<Findings> {
    // The bench's own connections: the drain's polls and the COPY.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to the scratch database")?;

    // 1. One agent at 100 Hz.
    let steady_phone = people::provision(stack, "Edge bench, 100 Hz", 0, 0).await?;
    let mut config = steady_phone.phone;
    config.sample_rate_hz = args.sample_hz;
    config.db_path = workdir.join("agent-steady.db");
    let steady = steady::run(
        binary,
        &config,
        STEADY_SEED,
        args.agent_secs,
        &workdir.join("agent-steady.log"),
        progress,
    )
    .await
    .context("the 100 Hz run")?;
    progress.note(&format!(
        "100 Hz: {} KiB resident at the end, {} readings acked",
        steady.rss_kb_end, steady.readings_acked
    ));

    // 2. Appends, into the buffer the drain empties.
    let drain_phone = people::provision(stack, "Edge bench, drain", 0, 0).await?;
    let count = args.readings;
    let rows = Arc::new(
        tokio::task::spawn_blocking(move || {
            append::readings(DRAIN_SEED, count, chrono::Utc::now().timestamp_millis())
        })
        .await
        .context("the sensor task failed")?,
    );
    let buffer_path = workdir.join("agent-drain.db");
    let capacity = count as u64 + CAPACITY_HEADROOM;
    let per_transaction = args.per_transaction;
    let appended = {
        let (rows, path, device) = (
            Arc::clone(&rows),
            buffer_path.clone(),
            drain_phone.device.clone(),
        );
        let bar = progress.counter("append", count as u64);
        tokio::task::spawn_blocking(move || {
            append::fill_buffer(&path, &device, capacity, &rows, per_transaction, &bar)
        })
        .await
        .context("the append task failed")??
    };
    let reference = {
        let rows = Arc::clone(&rows);
        let path = workdir.join("reference.db");
        let bar = progress.counter("sqlite insert", count as u64);
        let first_seq = appended.first_seq;
        tokio::task::spawn_blocking(move || {
            let done = append::plain_inserts(&path, &rows, first_seq, per_transaction, &bar);
            // Its disk space is not needed again.
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            done
        })
        .await
        .context("the reference insert task failed")??
    };
    progress.note(&format!(
        "append: {:.0}/s, plain SQLite {:.0}/s",
        appended.per_s(),
        reference.per_s()
    ));

    // 3. The drain, then the COPY of the same rows.
    let mut config = drain_phone.phone;
    config.db_path = buffer_path;
    config.sample_rate_hz = AgentConfig::MIN_SAMPLE_RATE_HZ;
    config.buffer_capacity = capacity;
    config.batch_size = args.drain_batch_size;
    config.inflight_batches = args.drain_inflight;
    let drained = drain::run(
        binary,
        &config,
        &pool,
        (appended.first_seq, appended.last_seq),
        Duration::from_secs(args.drain_timeout_secs),
        &workdir.join("agent-drain.log"),
        progress,
    )
    .await
    .context("the drain")?;
    progress.note(&format!("drain: {:.0}/s", drained.per_s));
    let bar = progress.timer("COPY");
    let device = BenchDevice {
        id: drain_phone.device,
        user_id: drain_phone.user_id,
    };
    let copy = drain::copy_reference(&pool, device, appended.first_seq, &rows).await;
    bar.finish_and_clear();
    pool.close().await;
    let copy = copy.context("the COPY")?;

    Ok(Findings {
        release_build: !cfg!(debug_assertions),
        database: String::new(),
        broker: BROKER,
        steady,
        append: appended,
        append_reference: reference,
        per_transaction,
        drain: drained,
        copy,
        drain_batch_size: args.drain_batch_size,
        drain_inflight_batches: args.drain_inflight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<EdgeBenchArgs> {
        let args: EdgeBenchArgs = crate::bench::parse_args(args)?;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn the_defaults_are_the_issues_load() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.agent_secs, args.sample_hz), (60, 100.0));
        assert_eq!((args.readings, args.per_transaction), (1_000_000, 1_000));
        assert_eq!((args.drain_batch_size, args.drain_inflight), (100, 8));
    }

    #[test]
    fn unusable_settings_are_refused_before_anything_starts() {
        for bad in [
            &["--agent-secs", "0"][..],
            &["--readings", "0"],
            &["--per-transaction", "0"],
            &["--per-transaction", "1001"],
            &["--drain-batch-size", "1001"],
            &["--drain-inflight", "0"],
            &["--sample-hz", "0"],
            &["--sample-hz", "5000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
