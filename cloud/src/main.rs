//! `ecs-cloud`: migrate the database, serve the cloud (API, ingest, worker, notifier), or serve
//! the risk model on its own (`model-server`, the remote end of `ECS_MODEL=http`).

use clap::{Parser, Subcommand};
use ecs_cloud::{
    app,
    config::{ModelServerSettings, Settings},
    model::server,
};
use ecs_telemetry::LogFormat;

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
        /// Postgres connection string.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/ecs"
        )]
        database_url: String,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    ecs_telemetry::init_logs(cli.log_format);
    ecs_telemetry::log_panics();
    match cli.command {
        Command::Migrate { database_url } => app::migrate(&database_url).await?,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks flags for clashes only when they are parsed; check them all here instead.
    #[test]
    fn every_subcommand_has_well_formed_flags() {
        super::Cli::command().debug_assert();
    }
}
