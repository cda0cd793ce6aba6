//! `ecs-cloud`: migrate the database, or serve the cloud (API, ingest, worker, notifier).

use clap::{Parser, Subcommand};
use ecs_cloud::{app, config::Settings};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    ecs_telemetry::init_logs(cli.log_format);
    match cli.command {
        Command::Migrate { database_url } => app::migrate(&database_url).await?,
        Command::Serve { settings, migrate } => {
            if migrate {
                app::migrate(&settings.database_url).await?;
            }
            let mut running = app::spawn(*settings).await?;
            tokio::select! {
                _ = ecs_telemetry::shutdown_signal() => tracing::info!("shutdown requested"),
                _ = running.wait() => tracing::error!("a component stopped unexpectedly"),
            }
            running.stop().await;
        }
    }
    Ok(())
}
