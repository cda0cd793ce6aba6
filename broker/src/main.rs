//! `ecs-broker`: run the MQTT broker, or manage the certificate authority it trusts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ecs_broker::{BrokerSettings, CertFiles, PkiDir, RunningBroker};
use ecs_protocol::DeviceId;
use ecs_telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "ecs-broker", version, about)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "ECS_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Json,
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(BrokerSettings),
    /// Manage the certificate authority devices and the broker trust.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a new CA and a broker server certificate. Refuses to replace an existing CA.
    Init {
        #[command(flatten)]
        dir: PkiDirArg,
        #[command(flatten)]
        server_names: ServerNamesArg,
    },
    /// Issue a new broker server certificate (renewal, or other names), replacing the old one.
    IssueServer {
        #[command(flatten)]
        dir: PkiDirArg,
        #[command(flatten)]
        server_names: ServerNamesArg,
    },
    /// Issue a client certificate for one device and print where it was written.
    IssueDevice {
        #[command(flatten)]
        dir: PkiDirArg,
        /// The device's id (1–32 ASCII letters or digits).
        #[arg(long)]
        device_id: DeviceId,
    },
}

#[derive(Debug, clap::Args)]
struct PkiDirArg {
    /// Directory of the PKI (ca.pem, ca.key, server.pem, server.key, devices/).
    #[arg(long = "dir", env = "ECS_PKI_DIR", value_name = "DIR")]
    path: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ServerNamesArg {
    /// A DNS name or IP address clients use to reach the broker (repeat, or comma-separate).
    #[arg(
        long = "server-name",
        env = "ECS_BROKER_SERVER_NAMES",
        value_name = "NAME",
        value_delimiter = ',',
        default_values = ["localhost", "127.0.0.1", "broker"]
    )]
    names: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    ecs_telemetry::init_logs(cli.log_format);

    match cli.command {
        Command::Serve(settings) => {
            let result = serve(settings).await;
            // Also into the log, where an operator watching the service looks.
            if let Err(error) = &result {
                tracing::error!(error = format!("{error:#}"), "ecs-broker stopped");
            }
            result
        }
        Command::Pki(PkiCommand::Init { dir, server_names }) => {
            let pki = PkiDir::init(&dir.path, &server_names.names)
                .with_context(|| format!("creating a PKI in {}", dir.path.display()))?;
            println!("CA certificate:     {}", pki.ca_cert_path().display());
            println!("CA key:             {}", pki.ca_key_path().display());
            print_files("server", &pki.server_files());
            Ok(())
        }
        Command::Pki(PkiCommand::IssueServer { dir, server_names }) => {
            let files = PkiDir::new(dir.path).issue_server_files(&server_names.names)?;
            print_files("server", &files);
            Ok(())
        }
        Command::Pki(PkiCommand::IssueDevice { dir, device_id }) => {
            let files = PkiDir::new(dir.path).issue_device_files(&device_id)?;
            print_files("device", &files);
            Ok(())
        }
    }
}

fn print_files(whose: &str, files: &CertFiles) {
    println!("{whose} certificate: {}", files.cert.display());
    println!("{whose} key:         {}", files.key.display());
}

/// Runs until a signal (a clean exit) or until the broker fails (an error exit).
async fn serve(settings: BrokerSettings) -> anyhow::Result<()> {
    let broker = RunningBroker::start(&settings).context("starting the broker")?;
    tracing::info!(
        device_addr = %settings.device_addr,
        service_addr = %settings.service_addr,
        console_addr = settings.console_addr.map(tracing::field::display),
        max_connections = settings.max_connections,
        "broker listening"
    );

    // `wait` blocks for as long as the broker runs, so it gets a plain thread: a blocking task
    // would keep the tokio runtime from shutting down after a signal.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("broker-watch".to_owned())
        .spawn(move || stopped_tx.send(broker.wait()))
        .context("starting the broker watcher")?;

    tokio::select! {
        () = ecs_telemetry::shutdown_signal() => {
            // rumqttd cannot drain or stop; leaving the process is the shutdown.
            tracing::info!("shutting down");
            Ok(())
        }
        stopped = stopped_rx => match stopped {
            Ok(error) => Err(error).context("the broker failed"),
            Err(_) => anyhow::bail!("the broker watcher ended without a reason"),
        },
    }
}
