//! `ecs-simulator bench api`: how many credit assessments and profile reads the REST API
//! serves, and how fast, against what the same Postgres does with a comparable transaction by
//! itself (pgbench).
//!
//! One run, on a scratch database of its own ([`with_scratch`]):
//! 1. **cloud** ([`cloud`]): the embedded broker and the cloud in this process ([`BenchCloud`],
//!    as the ingest bench's cloud-only phase starts them), with the API's rate limits raised
//!    (see [`cloud::start`]).
//! 2. **seed** ([`seed`]): people created through the API with the admin token, each with three
//!    monthly salaries; each person's own API token is kept for the load.
//! 3. **pgbench** ([`pgbench`]): a locked read plus an insert, and a one-row read, on tables of
//!    their own, while the cloud is idle.
//! 4. **assess** and **read** ([`load`]): closed-loop load (each connection sends its next
//!    request when the last one answered) on `POST /v1/users/{id}/credit-offers` and
//!    `GET /v1/users/{id}`; then each again, open-loop at half the rate just measured. Each
//!    request carries the token of the person it is about, as the phone app's would: the admin
//!    is the rare caller of these routes (its reads of a person are recorded in the access
//!    trail, an insert and a commit each, by design), so admin-token load would measure the
//!    trail rather than the routes. The load's client is [`crate::bench::http1`], lean like
//!    pgbench, since it shares the cores with the cloud and Postgres.
//!
//! [`report`] holds the figures, the ratios to pgbench and the targets.

pub mod cloud;
pub mod groups;
pub mod load;
pub mod pgbench;
pub mod report;
pub mod seed;

use std::time::Duration;

use anyhow::{Context, bail};

use self::groups::GroupSizes;
use self::load::{Endpoint, LoadFigures, LoadPlan, Pacing, Target};
use self::pgbench::{PgbenchPlan, Script};
use self::report::{ApiReport, Findings, RunSettings};
use crate::bench::cloud::BenchCloud;
use crate::bench::progress::Progress;
use crate::bench::scratch::{ScratchDatabase, ScratchServer, with_scratch};

/// Postgres connections the bench itself holds at most while the cloud is up: the scratch
/// database's own (preparing pgbench's tables) and pgbench's clients come on top of the cloud's.
/// The server must allow `--db-connections` + `--connections` + a few more.
const HEADROOM_CONNECTIONS: usize = 5;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    // `--database-url`: the server the scratch database is made on.
    #[command(flatten)]
    pub server: ScratchServer,
    /// People created through the API before the load; requests go round-robin over them.
    #[arg(long, default_value_t = 1000)]
    pub people: usize,
    /// Concurrent clients, each on a keep-alive connection of its own; also pgbench's clients.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds measured in each full-rate phase, and pgbench's duration.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Seconds of load before each phase's measurement starts.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// Seconds measured in each half-rate phase.
    #[arg(long, default_value_t = 10)]
    pub half_rate_secs: u64,
    /// The cloud's Postgres pool (`db_max_connections`): as many as the load keeps busy.
    #[arg(long, default_value_t = 32)]
    pub db_connections: u32,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl ApiBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.people == 0 || self.connections == 0 || self.secs == 0 || self.half_rate_secs == 0 {
            bail!("--people, --connections, --secs and --half-rate-secs must be at least 1");
        }
        // The cloud's own bound (`ECS_DB_MAX_CONNECTIONS`).
        if !(1..=1000).contains(&self.db_connections) {
            bail!("--db-connections must be within 1..=1000");
        }
        // pgbench refuses more clients than it can open, and the server more than it allows;
        // a bound here fails before minutes of seeding rather than after.
        if self.connections > 1000 {
            bail!("--connections must be at most 1000");
        }
        Ok(())
    }

    fn load_plan(&self, endpoint: Endpoint, pacing: Pacing, measure_secs: u64) -> LoadPlan {
        LoadPlan {
            endpoint,
            connections: self.connections,
            warmup: Duration::from_secs(self.warmup_secs),
            measure: Duration::from_secs(measure_secs),
            pacing,
        }
    }
}

/// Runs the benchmark. Progress goes to stderr when it is a terminal; the figures are in the
/// report. The scratch database is dropped however the run ends (Ctrl-C included).
pub async fn run(args: &ApiBenchArgs) -> anyhow::Result<ApiReport> {
    crate::bench::warn_if_debug_build();
    args.check()?;
    with_scratch(&args.server.database_url, async |scratch, progress| {
        run_in(args, scratch, progress).await
    })
    .await
}

/// Starts the cloud, measures, and stops it whatever the phases returned.
async fn run_in(
    args: &ApiBenchArgs,
    scratch: &ScratchDatabase,
    progress: &Progress,
) -> anyhow::Result<ApiReport> {
    ensure_server_allows(scratch.url(), args).await?;
    let cloud = cloud::start(scratch.url(), args.db_connections)
        .await
        .context("starting the cloud")?;
    let measured = phases(args, scratch, &cloud, progress).await;
    cloud.stop().await;
    let measured = measured?;
    Ok(ApiReport::new(&Findings {
        release_build: !cfg!(debug_assertions),
        database: scratch.name().to_owned(),
        settings: RunSettings {
            people: args.people,
            connections: args.connections,
            db_connections: args.db_connections,
            secs: args.secs,
            warmup_secs: args.warmup_secs,
            half_rate_secs: args.half_rate_secs,
        },
        assess: measured.assess,
        assess_half: measured.assess_half,
        read: measured.read,
        read_half: measured.read_half,
        pgbench_write_tps: measured.pgbench_write_tps,
        pgbench_read_tps: measured.pgbench_read_tps,
        assess_groups: measured.assess_groups,
    }))
}

struct Measured {
    assess: LoadFigures,
    assess_half: Option<LoadFigures>,
    read: LoadFigures,
    read_half: Option<LoadFigures>,
    pgbench_write_tps: f64,
    pgbench_read_tps: f64,
    assess_groups: GroupSizes,
}

async fn phases(
    args: &ApiBenchArgs,
    scratch: &ScratchDatabase,
    cloud: &BenchCloud,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    let people = seed::people(cloud, args.people, args.connections, progress)
        .await
        .context("seeding people through the API")?;
    let target = Target::new(cloud, people);

    // pgbench first, while the cloud is idle and before the load has grown its tables.
    let plan = PgbenchPlan {
        clients: args.connections,
        secs: args.secs,
        people: args.people,
    };
    pgbench::prepare(scratch.url(), args.people)
        .await
        .context("preparing pgbench's tables")?;
    let workdir = tempfile::Builder::new()
        .prefix("ecs-bench-api-")
        .tempdir()
        .context("creating a directory for pgbench's scripts")?;
    let dir = workdir.path();
    let pgbench_write_tps = reference(scratch.url(), &plan, Script::Write, dir, progress).await?;
    let pgbench_read_tps = reference(scratch.url(), &plan, Script::Read, dir, progress).await?;

    let before = groups::snapshot();
    let (assess, assess_half) = full_and_half(args, &target, Endpoint::Assess, progress).await?;
    let assess_groups = GroupSizes::between(&before, &groups::snapshot());
    let (read, read_half) = full_and_half(args, &target, Endpoint::Read, progress).await?;
    Ok(Measured {
        assess,
        assess_half,
        read,
        read_half,
        pgbench_write_tps,
        pgbench_read_tps,
        assess_groups,
    })
}

/// One pgbench run, with a spinner while it lasts.
async fn reference(
    url: &str,
    plan: &PgbenchPlan,
    script: Script,
    dir: &std::path::Path,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let bar = progress.timer("pgbench");
    bar.set_message(format!("{}, {} clients", script.name(), plan.clients));
    let tps = pgbench::run(url, plan, script, dir)
        .await
        .with_context(|| format!("pgbench, {}", script.name()));
    bar.finish_and_clear();
    let tps = tps?;
    progress.note(&format!("pgbench {}: {tps:.0} tps", script.name()));
    Ok(tps)
}

/// The closed-loop maximum, then open-loop at half of it; no half-rate run when nothing
/// succeeded at full rate (there is no rate to halve).
async fn full_and_half(
    args: &ApiBenchArgs,
    target: &Target,
    endpoint: Endpoint,
    progress: &Progress,
) -> anyhow::Result<(LoadFigures, Option<LoadFigures>)> {
    let full = load::run(
        target,
        &args.load_plan(endpoint, Pacing::Closed, args.secs),
        progress,
    )
    .await
    .with_context(|| format!("the {} run", endpoint.name()))?;
    progress.note(&full.line());
    let half_rate = full.ok_per_s / 2.0;
    if half_rate <= 0.0 {
        progress.note(&format!(
            "{}: nothing succeeded, no half-rate run",
            endpoint.name()
        ));
        return Ok((full, None));
    }
    let plan = args.load_plan(
        endpoint,
        Pacing::Open { per_s: half_rate },
        args.half_rate_secs,
    );
    let half = load::run(target, &plan, progress)
        .await
        .with_context(|| format!("the {} half-rate run", endpoint.name()))?;
    progress.note(&half.line());
    Ok((full, Some(half)))
}

/// Fails before the cloud starts when the server cannot take the cloud's pool and pgbench's clients
/// (they are not open at once, but the cloud's pool stays open during pgbench).
async fn ensure_server_allows(url: &str, args: &ApiBenchArgs) -> anyhow::Result<()> {
    let allowed = pgbench::max_connections(url).await?;
    let needed = args.db_connections as usize + args.connections + HEADROOM_CONNECTIONS;
    if needed > allowed {
        bail!(
            "the Postgres server allows {allowed} connections; the cloud's {} and pgbench's {} \
             (with {HEADROOM_CONNECTIONS} to spare) need {needed}: lower --db-connections or \
             --connections",
            args.db_connections,
            args.connections
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<ApiBenchArgs> {
        let args: ApiBenchArgs = crate::bench::parse_args(args)?;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn the_defaults_are_the_briefs_load() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.people, args.connections, args.secs), (1000, 32, 20));
        assert_eq!((args.warmup_secs, args.db_connections), (3, 32));
        assert!(!args.json);
    }

    #[test]
    fn unusable_settings_are_refused_before_anything_starts() {
        for bad in [
            &["--people", "0"][..],
            &["--connections", "0"],
            &["--connections", "1001"],
            &["--secs", "0"],
            &["--half-rate-secs", "0"],
            &["--db-connections", "0"],
            &["--db-connections", "1001"],
            &["--people", "-1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_short_run_is_accepted() {
        let args = parse(&[
            "--people",
            "200",
            "--secs",
            "5",
            "--warmup-secs",
            "1",
            "--json",
        ])
        .unwrap();
        assert_eq!((args.people, args.secs, args.warmup_secs), (200, 5, 1));
        assert!(args.json);
    }
}
