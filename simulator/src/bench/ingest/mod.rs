//! `ecs-simulator bench ingest`: how fast readings get from phones into Postgres, against how
//! fast Postgres takes the same rows by itself.
//!
//! One run, on a scratch database of its own ([`with_scratch`]), `emotion_readings` emptied before
//! each phase:
//! 1. **end to end** ([`pipeline`]): phones in this process as the demo runs them, offered more
//!    than the pipeline takes; readings committed and acked per second, sensor-to-commit lag
//!    ([`lag`]), CPU and memory ([`usage`]).
//! 2. **half rate**: the same with fresh phones offering half of what step 1 committed, for
//!    the lag target.
//! 3. **cloud only** ([`cloud_only`]): broker and cloud fed pre-encoded batches ([`uplinks`])
//!    by a load generator ([`generator`]) that goes as fast as the cloud acks.
//! 4. **COPY** ([`copy`]): the rows of step 3, written by one plain COPY.
//!
//! [`report`] holds the figures, the ratios to COPY and the targets.

pub mod cloud_only;
pub mod copy;
pub mod generator;
pub mod lag;
pub mod pipeline;
pub mod report;
pub mod uplinks;
pub mod usage;
pub mod window;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ecs_edge_agent::AgentConfig;
use ecs_protocol::MAX_READINGS_PER_BATCH;
use sqlx::{PgPool, postgres::PgPoolOptions};

use self::cloud_only::CloudOnlyPlan;
use self::pipeline::PipelinePlan;
use self::report::{Findings, IngestReport};
use crate::bench::scratch::{ScratchDatabase, ScratchServer, with_scratch};
use crate::bench::{open_files, progress::Progress};

/// Descriptors per phone: its TLS socket, the broker's end of it, its SQLite file with WAL and
/// shared memory, with room to spare.
const FILES_PER_PHONE: u64 = 8;

#[derive(Debug, Clone, clap::Args)]
pub struct IngestBenchArgs {
    // `--database-url`: the server the scratch database is made on.
    #[command(flatten)]
    pub server: ScratchServer,
    /// Phones end to end, and devices the load generator publishes for.
    #[arg(long, default_value_t = 100)]
    pub phones: usize,
    /// Each phone's sample rate in the end-to-end run: more than the pipeline takes.
    #[arg(long, default_value_t = 1500.0)]
    pub sample_hz: f64,
    /// Seconds measured in each phase, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Seconds of load before each phase's measurement starts.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Readings per uplink batch, for the phones and the load generator.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// A phone sends a partial batch at least this often, in ms (the demo's value).
    #[arg(long, default_value_t = 500)]
    pub flush_ms: u64,
    /// A phone sends a batch again when no ack came within this, in ms (the agent's default).
    #[arg(long, default_value_t = 10_000)]
    pub ack_timeout_ms: u64,
    /// Batches per device the load generator keeps published and not yet acked.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// How often the lag is polled, in ms: the resolution of the sensor-to-commit figures.
    #[arg(long, default_value_t = 100)]
    pub lag_poll_ms: u64,
    /// Where the phones' SQLite buffers and the certificates go (in a fresh directory removed
    /// afterwards). Default: /dev/shm when it exists, so the phones' disks are not the
    /// database's; else the system's temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl IngestBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.phones == 0 || self.secs == 0 || self.in_flight == 0 || self.lag_poll_ms == 0 {
            bail!("--phones, --secs, --in-flight and --lag-poll-ms must be at least 1");
        }
        if !(1..=MAX_READINGS_PER_BATCH).contains(&self.batch_size) {
            bail!("--batch-size must be within 1..={MAX_READINGS_PER_BATCH}");
        }
        let rates = AgentConfig::MIN_SAMPLE_RATE_HZ..=AgentConfig::MAX_SAMPLE_RATE_HZ;
        if !rates.contains(&self.sample_hz) {
            bail!(
                "--sample-hz must be within {}..={}",
                rates.start(),
                rates.end()
            );
        }
        if self.flush_ms == 0 || self.ack_timeout_ms == 0 {
            bail!("--flush-ms and --ack-timeout-ms must be at least 1");
        }
        Ok(())
    }

    fn pipeline_plan(&self, name: &'static str, sample_hz: f64, phone_dir: &Path) -> PipelinePlan {
        PipelinePlan {
            name,
            phones: self.phones,
            sample_hz,
            warmup: Duration::from_secs(self.warmup_secs),
            measure: Duration::from_secs(self.secs),
            batch_size: self.batch_size,
            flush: Duration::from_millis(self.flush_ms),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            lag_poll: Duration::from_millis(self.lag_poll_ms),
            phone_dir: phone_dir.to_owned(),
        }
    }
}

/// Runs the benchmark. Progress goes to stderr when it is a terminal; the figures are in the
/// report. The scratch database is dropped however the run ends (Ctrl-C included).
pub async fn run(args: &IngestBenchArgs) -> anyhow::Result<IngestReport> {
    crate::bench::warn_if_debug_build();
    args.check()?;
    open_files::ensure(args.phones as u64 * FILES_PER_PHONE + open_files::HEADROOM)?;
    let base = args.work_dir.clone().unwrap_or_else(default_work_dir);
    let workdir = tempfile::Builder::new()
        .prefix("ecs-bench-ingest-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a working directory in {}", base.display()))?;
    with_scratch(&args.server.database_url, async |scratch, progress| {
        run_in(args, scratch, workdir.path(), progress).await
    })
    .await
}

async fn run_in(
    args: &IngestBenchArgs,
    scratch: &ScratchDatabase,
    workdir: &Path,
    progress: &Progress,
) -> anyhow::Result<IngestReport> {
    // The bench's own connections: counts, lag polls, TRUNCATE, registration and the COPY.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(10))
        .connect(scratch.url())
        .await
        .context("connecting to the scratch database")?;
    let measured = phases(args, scratch.url(), &pool, workdir, progress).await;
    pool.close().await;
    let (full, half, cloud, copy) = measured?;
    Ok(IngestReport::new(&Findings {
        release_build: !cfg!(debug_assertions),
        database: scratch.name().to_owned(),
        batch_size: args.batch_size,
        flush_ms: args.flush_ms,
        ack_timeout_ms: args.ack_timeout_ms,
        full,
        half,
        cloud,
        copy,
    }))
}

type Phases = (
    pipeline::PipelineFigures,
    pipeline::PipelineFigures,
    cloud_only::CloudOnlyFigures,
    copy::CopyFigures,
);

async fn phases(
    args: &IngestBenchArgs,
    url: &str,
    pool: &PgPool,
    workdir: &Path,
    progress: &Progress,
) -> anyhow::Result<Phases> {
    let full = pipeline::run(
        url,
        pool,
        &args.pipeline_plan("end to end", args.sample_hz, workdir),
        progress,
    )
    .await
    .context("the end-to-end run")?;
    progress.note(&format!(
        "end to end: {:.0} readings/s offered, {:.0} committed/s",
        full.offered_per_s, full.committed_per_s
    ));
    if full.committed_per_s <= 0.0 {
        bail!("the end-to-end run committed nothing: no maximum rate to halve");
    }

    window::truncate_readings(pool).await?;
    let half_hz = (full.committed_per_s / 2.0 / args.phones as f64).clamp(
        AgentConfig::MIN_SAMPLE_RATE_HZ,
        AgentConfig::MAX_SAMPLE_RATE_HZ,
    );
    let half = pipeline::run(
        url,
        pool,
        &args.pipeline_plan("half rate", half_hz, workdir),
        progress,
    )
    .await
    .context("the half-rate run")?;
    progress.note(&format!(
        "half rate: {:.0} readings/s offered, {:.0} committed/s",
        half.offered_per_s, half.committed_per_s
    ));

    window::truncate_readings(pool).await?;
    let plan = CloudOnlyPlan {
        devices: args.phones,
        batch_size: args.batch_size,
        in_flight: args.in_flight,
        warmup: Duration::from_secs(args.warmup_secs),
        measure: Duration::from_secs(args.secs),
    };
    let (cloud, uplinks) = cloud_only::run(url, pool, &plan, workdir, progress)
        .await
        .context("the cloud-only run")?;
    progress.note(&format!(
        "cloud only: {:.0} committed/s",
        cloud.committed_per_s
    ));

    window::truncate_readings(pool).await?;
    let copy = copy::run(pool, uplinks, cloud.committed_total)
        .await
        .context("the COPY")?;
    Ok((full, half, cloud, copy))
}

fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<IngestBenchArgs> {
        let args: IngestBenchArgs = crate::bench::parse_args(args)?;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn the_defaults_are_the_briefs_load() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.phones, args.sample_hz, args.secs), (100, 1500.0, 10));
        assert_eq!(args.batch_size, 100);
    }

    #[test]
    fn unusable_settings_are_refused_before_anything_starts() {
        for bad in [
            &["--phones", "0"][..],
            &["--secs", "0"],
            &["--batch-size", "0"],
            &["--batch-size", "1001"],
            &["--sample-hz", "0"],
            &["--sample-hz", "20000"],
            &["--in-flight", "0"],
            &["--flush-ms", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
