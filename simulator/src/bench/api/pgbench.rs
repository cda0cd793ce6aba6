//! The references: what the same Postgres server does by itself with the transactions closest
//! to the API's, measured by pgbench with as many clients as the load has connections.
//!
//! * **write**: one row read under its lock and one insert, in a transaction: the shape of an
//!   assessment (the person locked, an offer written), without the API around it.
//! * **read**: one row read by primary key: the shape of a profile read.
//!
//! Both work on tables of their own in the scratch database (`bench_people`, `bench_events`),
//! so they neither touch nor depend on the cloud's schema.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sqlx::{Connection, Row, postgres::PgConnection};

use crate::bench::scratch::shown_url;

/// The pgbench of the Debian packages; `PGBENCH` names another.
const PGBENCH: &str = "/usr/bin/pgbench";
/// pgbench's worker threads: one per core of the machines the bench is made for. pgbench
/// refuses more threads than clients.
const THREADS: usize = 2;
/// Time pgbench gets beyond its `-T`, to connect its clients and finish.
const GRACE: Duration = Duration::from_secs(60);

/// How pgbench is run.
#[derive(Debug, Clone)]
pub struct PgbenchPlan {
    /// Concurrent clients (`-c`): the load's connections.
    pub clients: usize,
    /// Duration (`-T`).
    pub secs: u64,
    /// Rows of `bench_people`, the range of `:id`.
    pub people: usize,
}

/// Which transaction pgbench repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Write,
    Read,
}

impl Script {
    pub fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
        }
    }

    /// The script file's text; `:people` is defined on pgbench's command line.
    fn text(self) -> &'static str {
        match self {
            Self::Write => {
                "\\set id random(1, :people)\n\
                 BEGIN;\n\
                 SELECT n FROM bench_people WHERE id = :id FOR UPDATE;\n\
                 INSERT INTO bench_events(person) VALUES (:id);\n\
                 END;\n"
            }
            Self::Read => {
                "\\set id random(1, :people)\n\
                 SELECT n FROM bench_people WHERE id = :id;\n"
            }
        }
    }
}

/// `max_connections` of the server, to check that the cloud's pool and pgbench's clients fit.
pub async fn max_connections(url: &str) -> anyhow::Result<usize> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to the scratch database")?;
    let row = sqlx::query("SELECT current_setting('max_connections')::int AS n")
        .fetch_one(&mut conn)
        .await
        .context("reading max_connections")?;
    let _ = conn.close().await;
    let n: i32 = row.try_get("n").context("reading max_connections")?;
    usize::try_from(n).context("max_connections is negative")
}

/// Creates and fills pgbench's tables: `people` rows, then statistics, so that the planner
/// sees an indexed lookup from the first transaction on.
pub async fn prepare(url: &str, people: usize) -> anyhow::Result<()> {
    let people = i32::try_from(people).context("--people is too large for pgbench's table")?;
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to the scratch database")?;
    let statements = [
        "CREATE TABLE bench_people (id int PRIMARY KEY, n int NOT NULL)",
        "CREATE TABLE bench_events (id bigserial PRIMARY KEY, person int NOT NULL, \
         at timestamptz NOT NULL DEFAULT now())",
    ];
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .with_context(|| statement.to_owned())?;
    }
    sqlx::query("INSERT INTO bench_people (id, n) SELECT g, g FROM generate_series(1, $1) g")
        .bind(people)
        .execute(&mut conn)
        .await
        .context("filling bench_people")?;
    sqlx::query("ANALYZE bench_people")
        .execute(&mut conn)
        .await
        .context("ANALYZE bench_people")?;
    let _ = conn.close().await;
    Ok(())
}

/// Runs pgbench with `script` (written to `dir`) on the database `url`; returns its tps
/// without the initial connection time.
pub async fn run(url: &str, plan: &PgbenchPlan, script: Script, dir: &Path) -> anyhow::Result<f64> {
    let file = dir.join(format!("{}.sql", script.name()));
    std::fs::write(&file, script.text()).with_context(|| format!("writing {}", file.display()))?;
    let program = std::env::var_os("PGBENCH").unwrap_or_else(|| PGBENCH.into());
    let mut command = tokio::process::Command::new(&program);
    command
        .args(arguments(plan, &file))
        // A connection URI as the database name: pgbench takes it as libpq does, password and
        // parameters included, so it reaches the server exactly as the cloud does.
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Interrupted or timed out, the bench must not leave pgbench hammering the server.
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", Path::new(&program).display()))?;
    let limit = Duration::from_secs(plan.secs) + GRACE;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("pgbench did not finish within {limit:?}"))?
        .context("waiting for pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // pgbench's messages can quote the connection string: hide its password.
        let shown = shown_url(url).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&output.stderr).replace(url, &shown);
        bail!(
            "pgbench exited with {} on {shown}: {}",
            output.status,
            stderr.trim()
        );
    }
    parse_tps(&stdout).ok_or_else(|| anyhow!("no tps line in pgbench's output:\n{stdout}"))
}

/// pgbench's arguments before the database: no vacuum of its own tables (`-n`, they are not
/// there), prepared statements as the cloud's sqlx uses.
fn arguments(plan: &PgbenchPlan, script: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        "-M".into(),
        "prepared".into(),
        "-c".into(),
        plan.clients.to_string(),
        "-j".into(),
        THREADS.min(plan.clients).to_string(),
        "-T".into(),
        plan.secs.to_string(),
        "-D".into(),
        format!("people={}", plan.people),
        "-f".into(),
        script.display().to_string(),
    ]
}

/// The rate from pgbench's summary: `tps = N (without initial connection time)` (pgbench 14
/// and later), or `tps = N (excluding connections establishing)` (before 14).
pub fn parse_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("tps = ")?;
        let (number, note) = rest.split_once(' ')?;
        let wanted = note.contains("without initial connection time")
            || note.contains("excluding connections establishing");
        if !wanted {
            return None;
        }
        number.parse::<f64>().ok().filter(|tps| tps.is_finite())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgbench 15's output for a custom script.
    const PGBENCH_15: &str = "\
transaction type: /tmp/write.sql
scaling factor: 1
query mode: prepared
number of clients: 32
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 3.877 ms
initial connection time = 31.445 ms
tps = 8253.901234 (without initial connection time)
";

    /// pgbench 13's: two tps lines, the one with connections included first.
    const PGBENCH_13: &str = "\
latency average = 4.012 ms
tps = 7900.5 (including connections establishing)
tps = 7975.25 (excluding connections establishing)
";

    #[test]
    fn the_tps_without_connection_time_is_read() {
        assert_eq!(parse_tps(PGBENCH_15), Some(8253.901234));
        assert_eq!(parse_tps(PGBENCH_13), Some(7975.25));
    }

    #[test]
    fn output_without_a_usable_tps_line_is_none() {
        assert_eq!(parse_tps(""), None);
        assert_eq!(parse_tps("latency average = 3.877 ms\n"), None);
        assert_eq!(
            parse_tps("tps = 10.0 (including connections establishing)\n"),
            None
        );
        assert_eq!(
            parse_tps("tps = lots (without initial connection time)\n"),
            None
        );
    }

    #[test]
    fn pgbench_gets_the_loads_clients_and_no_more_threads_than_clients() {
        let plan = PgbenchPlan {
            clients: 32,
            secs: 20,
            people: 1000,
        };
        let args = arguments(&plan, Path::new("/tmp/w.sql")).join(" ");
        assert_eq!(
            args,
            "-n -M prepared -c 32 -j 2 -T 20 -D people=1000 -f /tmp/w.sql"
        );
        let one = PgbenchPlan { clients: 1, ..plan };
        assert!(
            arguments(&one, Path::new("/tmp/w.sql"))
                .join(" ")
                .contains("-c 1 -j 1 ")
        );
    }

    #[test]
    fn the_scripts_are_the_briefs_transactions() {
        let write = Script::Write.text();
        assert!(write.starts_with("\\set id random(1, :people)\n"));
        assert!(write.contains("FOR UPDATE;"));
        assert!(write.contains("INSERT INTO bench_events(person) VALUES (:id);"));
        let read = Script::Read.text();
        assert_eq!(read.lines().count(), 2);
        assert!(!read.contains("FOR UPDATE"));
    }
}
