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
    Serve(Box<BrokerSettings>),
    /// Show a running broker's connections, rates, refusals and top talkers, refreshed.
    Status {
        /// The broker's admin address.
        #[arg(long, env = "ECS_BROKER_ADMIN_ADDR", default_value = "127.0.0.1:8885")]
        admin_addr: std::net::SocketAddr,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Print one view (no rates) and exit.
        #[arg(long)]
        once: bool,
        /// Print the raw status as JSON and exit.
        #[arg(long)]
        json: bool,
    },
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    ecs_telemetry::init_logs(cli.log_format);
    ecs_telemetry::log_panics();

    match cli.command {
        Command::Serve(settings) => {
            let result = serve(*settings).await;
            // Also into the log, where an operator watching the service looks.
            if let Err(error) = &result {
                tracing::error!(error = format!("{error:#}"), "ecs-broker stopped");
            }
            result
        }
        Command::Status {
            admin_addr,
            interval,
            once,
            json,
        } => status(admin_addr, interval, once, json).await,
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
    let broker = tokio::task::spawn_blocking(move || RunningBroker::start(&settings))
        .await
        .context("starting the broker")?
        .context("starting the broker")?;
    tracing::info!(
        device_addr = %broker.device_addr(),
        service_addr = %broker.service_addr(),
        admin_addr = broker.admin_addr().map(tracing::field::display),
        "broker listening"
    );
    // `wait` blocks for as long as the broker runs, so it gets a plain thread.
    let shutdown = broker.shutdown_token();
    let (stopped_tx, mut stopped_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("broker-watch".to_owned())
        .spawn(move || stopped_tx.send(broker.wait()))
        .context("starting the broker watcher")?;
    tokio::select! {
        () = ecs_telemetry::shutdown_signal() => {
            tracing::info!("shutting down: closing the listeners and every connection");
            shutdown.cancel();
            // The watcher hears the broker end (bounded by the broker's own stop timeout).
            let _ = (&mut stopped_rx).await;
            Ok(())
        }
        stopped = &mut stopped_rx => match stopped {
            Ok(error) => Err(error).context("the broker failed"),
            Err(_) => anyhow::bail!("the broker watcher ended without a reason"),
        },
    }
}

async fn status(
    admin_addr: std::net::SocketAddr,
    interval: u64,
    once: bool,
    json: bool,
) -> anyhow::Result<()> {
    let first = ecs_broker::status::fetch(admin_addr)
        .await
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&first)?);
        return Ok(());
    }
    if once {
        print!("{}", ecs_broker::status::render(&first, None));
        return Ok(());
    }
    let interval = std::time::Duration::from_secs(interval.max(1));
    let mut before = (first, std::time::Instant::now());
    loop {
        tokio::select! {
            () = ecs_telemetry::shutdown_signal() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        let now = ecs_broker::status::fetch(admin_addr)
            .await
            .map_err(anyhow::Error::msg)?;
        let elapsed = before.1.elapsed();
        // Clear the screen and draw the view again.
        print!(
            "\x1b[2J\x1b[H{}",
            ecs_broker::status::render(&now, Some((&before.0, elapsed)))
        );
        before = (now, std::time::Instant::now());
    }
}
