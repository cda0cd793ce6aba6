//! `ecs-cloud`: migrate the database, serve the cloud (API, ingest, worker, notifier), serve
//! the risk model on its own (`model-server`, the remote end of `ECS_MODEL=http`), or look at and
//! replay what ingest could never store (`dead-letters`).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Parser, Subcommand};
use ecs_cloud::{
    app,
    config::{ModelServerSettings, Settings},
    dead_letters::{self, DeadLetterId, Filter, MAX_LIST, Mode, ReasonCode, Selection},
    model::server,
    outbox,
};
use ecs_protocol::DeviceId;
use ecs_telemetry::{LogFormat, LogTarget};
use sqlx::{
    Connection as _, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

#[derive(Parser)]
#[command(
    name = "ecs-cloud",
    version,
    about = "Empathic Credit System: cloud service"
)]
struct Cli {
    /// Log format on stdout.
    #[arg(long, env = "ECS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and apply pending schema migrations.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
    /// Run the cloud: REST API, MQTT ingest, offer worker and notifier.
    Serve {
        #[command(flatten)]
        settings: Box<Settings>,
        /// Apply migrations before serving (convenient for single-replica setups).
        #[arg(long, env = "ECS_MIGRATE_ON_START")]
        migrate: bool,
    },
    /// Run the risk model service: a local model (the scorecard by default) at POST /v1/score,
    /// with fault injection for chaos tests and demos.
    ModelServer {
        #[command(flatten)]
        settings: ModelServerSettings,
    },
    /// Look at and replay what ingest could never store (the `dead_letters` table). Output on
    /// stdout; logs (warnings and up, unless RUST_LOG says otherwise) on stderr.
    DeadLetters {
        #[command(flatten)]
        database: Database,
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Look at the offer worker's queue (accepted offers waiting to be applied, failing, or
    /// parked after their tries) and put parked events back.
    Outbox {
        #[command(flatten)]
        database: Database,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The master keys that wrap people's data keys: make one, see which wrap how many, re-wrap
    /// everything under the current one (online) so a retired key can be dropped.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new random master key (64 hex digits) to a file only its owner can read.
    Generate {
        /// Where to write it; refused when the file exists.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// How many data keys each master key wraps, and whether this configuration holds it.
    Status {
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        keys: ecs_cloud::config::KeySettings,
    },
    /// Re-wrap every data key under the current master key (ECS_MASTER_KEY_FILE), reading the
    /// old ones with ECS_RETIRED_MASTER_KEY_FILES. Safe while the cloud runs (which must hold
    /// both keys meanwhile); when `status` shows none left under a retired key, drop it.
    Rotate {
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        keys: ecs_cloud::config::KeySettings,
    },
}

/// Where an operator's command finds Postgres.
#[derive(clap::Args)]
struct Database {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ecs",
        global = true
    )]
    database_url: String,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Unprocessed events, oldest first: waiting, failing (with the last error) or parked.
    List {
        /// Only parked events.
        #[arg(long)]
        parked: bool,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=outbox::MAX_LIST))]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put parked events back in the queue with a fresh allowance of tries.
    #[command(group(ArgGroup::new("selection").required(true).args(["ids", "all"])))]
    Retry {
        /// These events.
        ids: Vec<uuid::Uuid>,
        /// Every parked event.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Newest first: id, received time, device, reason code and text, payload size.
    List {
        /// Only this kind of refusal.
        #[arg(long, value_enum)]
        reason: Option<ReasonCode>,
        /// Only this device's.
        #[arg(long)]
        device: Option<DeviceId>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LIST)))]
        limit: u16,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter, with its payload decoded (or a hex dump of its start).
    Show {
        id: DeadLetterId,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run dead letters through live ingest's decision again: what is valid now is stored
    /// (once) and its dead letter deleted; what is still refused stays. Prints counts per outcome.
    #[command(group(ArgGroup::new("selection").required(true).args(["ids", "reason", "all"])))]
    Replay {
        /// These dead letters.
        ids: Vec<DeadLetterId>,
        /// Every dead letter of this kind.
        #[arg(long, value_enum)]
        reason: Option<ReasonCode>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Decide, and write nothing (a refusal by a database constraint shows only on a real
        /// replay).
        #[arg(long)]
        dry_run: bool,
        /// The master keys: a replayed reading's thoughts are sealed with its person's data key.
        #[command(flatten)]
        keys: ecs_cloud::config::KeySettings,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        // An operator's command prints its answer on stdout: logs must not mix into it.
        Command::DeadLetters { .. } | Command::Outbox { .. } | Command::Keys { .. } => {
            ecs_telemetry::init_logs_with(cli.log_format, LogTarget::Stderr, "warn")
        }
        _ => ecs_telemetry::init_logs(cli.log_format),
    }
    ecs_telemetry::log_panics();
    match cli.command {
        Command::DeadLetters {
            database: Database { database_url },
            command,
        } => {
            operator(&database_url, async |pool| {
                dead_letters_command(pool, command).await
            })
            .await
        }
        Command::Outbox {
            database: Database { database_url },
            command,
        } => {
            operator(&database_url, async |pool| {
                outbox_command(pool, command).await
            })
            .await
        }
        Command::Keys { command } => keys_command(command).await?,
        Command::Migrate {
            database: Database { database_url },
        } => app::migrate(&database_url).await?,
        Command::Serve { settings, migrate } => {
            if migrate {
                app::migrate(&settings.database_url).await?;
            }
            let mut running = app::spawn(*settings).await?;
            let stopped = tokio::select! {
                _ = ecs_telemetry::shutdown_signal() => {
                    tracing::info!("shutdown requested");
                    None
                }
                stopped = running.wait() => {
                    tracing::error!(component = stopped.component, panic = stopped.panic.as_deref(),
                        "a component stopped unexpectedly; stopping the others");
                    Some(stopped)
                }
            };
            running.stop().await;
            // A replica missing a part must not look like one that was asked to stop: the exit
            // status tells the supervisor (Compose, Kubernetes) to restart it.
            if let Some(stopped) = stopped {
                return Err(stopped.into());
            }
        }
        Command::ModelServer { settings } => {
            let mut running = server::spawn(&settings).await?;
            let unexpected = tokio::select! {
                _ = ecs_telemetry::shutdown_signal() => {
                    tracing::info!("shutdown requested");
                    false
                }
                _ = running.wait() => {
                    tracing::error!("the model server stopped unexpectedly");
                    true
                }
            };
            running.stop().await;
            if unexpected {
                anyhow::bail!("the model server stopped unexpectedly");
            }
        }
    }
    Ok(())
}

/// Runs an operator's command on a pool of its own. An operator's mistake or an unreachable
/// database is not a bug: one line on stderr and exit status 1, without the backtrace anyhow
/// adds under RUST_BACKTRACE.
async fn operator(database_url: &str, command: impl AsyncFnOnce(&PgPool) -> anyhow::Result<()>) {
    let result = match connect(database_url).await {
        Ok(pool) => {
            let result = command(&pool).await;
            pool.close().await;
            result
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn keys_command(command: KeysCommand) -> anyhow::Result<()> {
    use ecs_cloud::keys::{Keyring, MasterKey};
    match command {
        KeysCommand::Generate { out } => {
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let key = MasterKey::random();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            options.mode(0o600);
            let mut file = options
                .open(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            writeln!(file, "{}", key.to_hex())?;
            println!("master key {} written to {}", key.id(), out.display());
        }
        KeysCommand::Status {
            database: Database { database_url },
            keys,
        } => {
            let keyring = keys.keyring()?;
            operator(&database_url, async |pool| {
                for (id, count) in Keyring::census(pool).await? {
                    let held = if id == keyring.current().id() {
                        "current"
                    } else if keyring.holds(&id) {
                        "retired, held"
                    } else {
                        "NOT HELD by this configuration"
                    };
                    println!("{id}  {count:>10} data key(s)  {held}");
                }
                Ok(())
            })
            .await;
        }
        KeysCommand::Rotate {
            database: Database { database_url },
            keys,
        } => {
            let keyring = keys.keyring()?;
            operator(&database_url, async |pool| {
                let n = keyring.rotate(pool, 500).await?;
                println!(
                    "{n} data key(s) re-wrapped under master key {}",
                    keyring.current().id()
                );
                Ok(())
            })
            .await;
        }
    }
    Ok(())
}

async fn outbox_command(pool: &PgPool, command: OutboxCommand) -> anyhow::Result<()> {
    let output = match command {
        OutboxCommand::List {
            parked,
            limit,
            json,
        } => {
            let filter = if parked {
                outbox::Filter::Parked
            } else {
                outbox::Filter::Pending
            };
            let events = outbox::list(pool, filter, limit).await?;
            if json {
                outbox::json_lines(&events)
            } else {
                outbox::table(&events)
            }
        }
        OutboxCommand::Retry { ids, all } => {
            let selection = if all {
                outbox::Selection::AllParked
            } else {
                outbox::Selection::Ids(ids)
            };
            let n = outbox::retry(pool, &selection).await?;
            format!("{n} parked event(s) put back in the queue\n")
        }
    };
    print!("{output}");
    Ok(())
}

async fn dead_letters_command(pool: &PgPool, command: DeadLettersCommand) -> anyhow::Result<()> {
    let output = match command {
        DeadLettersCommand::List {
            reason,
            device,
            limit,
            json,
        } => {
            let filter = Filter {
                reason,
                device,
                limit,
            };
            let letters = dead_letters::list(pool, &filter).await?;
            if json {
                dead_letters::json_lines(&letters)
            } else {
                dead_letters::table(&letters)
            }
        }
        DeadLettersCommand::Show { id, json } => {
            let Some(letter) = dead_letters::get(pool, id).await? else {
                bail!("no dead letter with id {id}");
            };
            if json {
                dead_letters::details_json(&letter)
            } else {
                dead_letters::details(&letter)
            }
        }
        DeadLettersCommand::Replay {
            ids,
            reason,
            all,
            dry_run,
            keys,
        } => {
            let selection = match (reason, all) {
                (Some(code), _) => Selection::Reason(code),
                (None, true) => Selection::All,
                (None, false) => Selection::Ids(ids),
            };
            let mode = if dry_run { Mode::DryRun } else { Mode::Replay };
            // A dry run seals nothing (it stores nothing), so it needs no master key.
            let keys = match mode {
                Mode::DryRun => ecs_cloud::keys::KeyCache::ephemeral(),
                Mode::Replay => {
                    let keyring = keys.keyring()?;
                    keyring.check_against_store(pool).await?;
                    ecs_cloud::keys::KeyCache::new(std::sync::Arc::new(keyring))
                }
            };
            let report = dead_letters::replay(pool, &keys, &selection, mode).await?;
            print!("{}", dead_letters::replay_report(&report));
            if report.stopped.is_some() {
                bail!("the replay stopped before its end");
            }
            return Ok(());
        }
    };
    print!("{output}");
    Ok(())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool for an operator's command, or one line saying that Postgres cannot be reached at
/// DATABASE_URL (shown without its password).
async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|e| anyhow!("DATABASE_URL is not a Postgres connection string: {e}"))?;
    let shown = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let unreachable = |why: &dyn std::fmt::Display| {
        anyhow!("cannot reach Postgres at DATABASE_URL ({shown}): {why}")
    };
    // One connection first: a pool reports every failure as "timed out", this one says why
    // (refused, authentication, no such database).
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(probe)) => drop(probe.close().await),
        Ok(Err(e)) => return Err(unreachable(&e)),
        Err(_) => return Err(unreachable(&"no answer within 5 s")),
    }
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| unreachable(&e))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// clap checks flags for clashes only when they are parsed; check them all here instead.
    #[test]
    fn every_subcommand_has_well_formed_flags() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn dead_letters_replay_takes_exactly_one_selection_and_list_a_bounded_limit() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([["ecs-cloud", "dead-letters"].as_slice(), args].concat())
        };
        assert!(parse(&["replay", "1", "2", "--dry-run"]).is_ok());
        assert!(parse(&["replay", "--all"]).is_ok());
        assert!(parse(&["replay", "--reason", "implausible_time"]).is_ok());
        assert!(parse(&["replay"]).is_err(), "nothing selected");
        assert!(parse(&["replay", "1", "--all"]).is_err(), "two selections");
        assert!(parse(&["replay", "0"]).is_err(), "ids are positive");
        assert!(parse(&["list", "--limit", "1000"]).is_ok());
        assert!(parse(&["list", "--limit", "1001"]).is_err());
        assert!(parse(&["list", "--reason", "nonsense"]).is_err());
        assert!(parse(&["list", "--device", "not a device"]).is_err());
    }

    #[tokio::test]
    async fn dead_letters_with_postgres_unreachable_is_one_line_naming_database_url() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = connect("postgres://ops:secret@127.0.0.1:1/ecs")
            .await
            .expect_err("nothing listens on port 1");
        // What `main` prints: the message and its causes (a backtrace too, only when
        // RUST_BACKTRACE asks for one).
        let shown = format!("{err:#}");
        assert_eq!(
            err.chain().count(),
            1,
            "no causes below the message: {shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("DATABASE_URL"), "{shown}");
        assert!(shown.contains("127.0.0.1:1/ecs"), "{shown}");
        assert!(
            shown.contains("refused"),
            "the cause, not a pool timeout: {shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
}
