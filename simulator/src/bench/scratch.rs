//! The run's own database: created fresh on the server DATABASE_URL names, migrated, dropped at
//! the end, so figures never depend on what an earlier run (or anyone else) left in the tables.
//! [`with_scratch`] runs a benchmark on one and drops it however the run ends.

use std::time::Duration;

use anyhow::anyhow;
use rand::RngExt;
use reqwest::Url;
use sqlx::{
    AssertSqlSafe, Connection,
    postgres::{PgConnectOptions, PgConnection},
};

use crate::bench::progress::Progress;

/// How long connecting to Postgres, or one administrative statement, may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of every scratch database, so a leftover one (a killed run) is easy to recognise.
pub const PREFIX: &str = "ecs_bench_";

/// The Postgres server a benchmark makes its scratch database on (`--database-url`).
#[derive(Debug, Clone, clap::Args)]
pub struct ScratchServer {
    /// Postgres server to run on. The bench creates a scratch database there
    /// (`ecs_bench_<random>`), migrates it and drops it at the end.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
}

/// Creates a scratch database on the server of `database_url`, runs `bench` on it until it
/// returns or Ctrl-C (SIGINT or SIGTERM) comes, and drops the database either way. Progress
/// goes to stderr when it is a terminal.
///
/// A failure to drop the database is a warning on stderr when `bench` succeeded, and part of
/// the error when it failed; an error of `bench` says whether the database was dropped.
pub async fn with_scratch<T>(
    database_url: &str,
    bench: impl AsyncFnOnce(&ScratchDatabase, &Progress) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let scratch = ScratchDatabase::create(database_url).await?;
    let progress = Progress::for_stderr();
    progress.note(&format!("scratch database {}", scratch.name()));
    let outcome = tokio::select! {
        outcome = bench(&scratch, &progress) => outcome,
        () = ecs_telemetry::shutdown_signal() => Err(anyhow!("interrupted")),
    };
    let name = scratch.name().to_owned();
    let dropped = scratch.drop_now().await;
    match (outcome, dropped) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(value), Err(e)) => {
            eprintln!("warning: {e}");
            Ok(value)
        }
        (Err(e), Ok(())) => Err(e.context(format!("the scratch database {name} was dropped"))),
        (Err(e), Err(dropping)) => Err(e.context(dropping.to_string())),
    }
}

/// A scratch database that exists until [`ScratchDatabase::drop_now`].
pub struct ScratchDatabase {
    /// The database DATABASE_URL names, from which the scratch one is created and dropped.
    admin: PgConnectOptions,
    shown: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates `ecs_bench_<16 hex digits>` on the server of `database_url` and migrates it.
    /// When the server cannot be reached, the error is one line naming DATABASE_URL.
    pub async fn create(database_url: &str) -> anyhow::Result<Self> {
        let shown = shown_url(database_url)?;
        let admin: PgConnectOptions = database_url.parse().map_err(|e| {
            anyhow!("DATABASE_URL ({shown}) is not a Postgres connection string: {e}")
        })?;
        let name = format!("{PREFIX}{:016x}", rand::rng().random::<u64>());
        let scratch = Self {
            url: with_database(database_url, &name)?,
            admin,
            shown,
            name,
        };
        // `name` is our own prefix and lowercase hex: nothing to quote, nothing to inject.
        scratch
            .administer(format!("CREATE DATABASE {}", scratch.name))
            .await?;
        if let Err(e) = ecs_cloud::app::migrate(&scratch.url).await {
            let name = scratch.name.clone();
            let _ = scratch.drop_now().await;
            return Err(anyhow!("migrating the scratch database {name}: {e}"));
        }
        Ok(scratch)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string of the scratch database (DATABASE_URL with its name).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, ending whatever connections are still open to it.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.administer(statement).await.map_err(|e| {
            anyhow!(
                "could not drop the scratch database {} ({e:#}); drop it by hand",
                self.name
            )
        })
    }

    /// Runs `statement` on a connection of its own to the DATABASE_URL database: one connection
    /// attempt (a refused one fails at once), everything bounded by [`ADMIN_TIMEOUT`].
    async fn administer(&self, statement: String) -> anyhow::Result<()> {
        let shown = &self.shown;
        let mut conn = tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect_with(&self.admin))
            .await
            .map_err(|_| {
                anyhow!(
                    "Postgres at DATABASE_URL ({shown}) did not answer within {ADMIN_TIMEOUT:?}"
                )
            })?
            // A message of its own, without a chain of causes: one line.
            .map_err(|e| anyhow!("cannot reach Postgres at DATABASE_URL ({shown}): {e}"))?;
        let done = tokio::time::timeout(
            ADMIN_TIMEOUT,
            sqlx::query(AssertSqlSafe(statement.clone())).execute(&mut conn),
        )
        .await;
        let _ = conn.close().await;
        match done {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("{statement} on {shown}: {e}")),
            Err(_) => Err(anyhow!("{statement} took more than {ADMIN_TIMEOUT:?}")),
        }
    }
}

/// `database_url` naming database `name` instead of its own (query parameters kept).
pub fn with_database(database_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(database_url).map_err(|e| {
        anyhow!("DATABASE_URL must be a postgres:// URL to derive the scratch database's from: {e}")
    })?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// `database_url` without its password, for messages.
pub fn shown_url(database_url: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(database_url)
        .map_err(|e| anyhow!("DATABASE_URL is not a postgres:// URL: {e}"))?;
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, and this one has one.
        let _ = url.set_password(Some("***"));
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_url_is_the_server_url_with_another_database() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "ecs_bench_ab"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:5432/ecs_bench_ab"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5433/x?sslmode=disable", "ecs_bench_ab").unwrap(),
            "postgres://u:p@db:5433/ecs_bench_ab?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@db", "ecs_bench_ab").unwrap(),
            "postgres://u@db/ecs_bench_ab"
        );
        assert!(with_database("host=db user=u", "ecs_bench_ab").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        let shown = shown_url("postgres://ops:secret@127.0.0.1:1/ecs").unwrap();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("127.0.0.1:1/ecs"), "{shown}");
    }

    #[tokio::test]
    async fn postgres_unreachable_is_one_line_naming_database_url() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = match ScratchDatabase::create("postgres://ops:secret@127.0.0.1:1/ecs").await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(e) => e,
        };
        let shown = format!("{err:#}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("DATABASE_URL"), "{shown}");
        assert!(shown.contains("127.0.0.1:1/ecs"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
