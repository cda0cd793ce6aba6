//! `ecs-edge-agent`: one simulated phone. Runs until SIGINT or SIGTERM, then stops gracefully:
//! what the sensor produced is stored, unacknowledged readings stay on disk for the next start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ecs_edge_agent::{Agent, AgentConfig, AgentHandle, BrokerUrl, TlsFiles, sensor::Archetype};
use ecs_protocol::DeviceId;
use ecs_telemetry::LogFormat;
use tracing::info;

/// The phone-side agent of the Empathic Credit System: a simulated brain sensor whose readings
/// are buffered in SQLite and sent over MQTT until the cloud acknowledges them.
///
/// Without a subcommand it runs the agent; `status` and `inbox` read a (running or stopped)
/// agent's file.
#[derive(Debug, Parser)]
#[command(name = "ecs-edge-agent", version, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Inspect>,

    /// This device's id (1–32 ASCII letters or digits); also the MQTT client id.
    #[arg(long, env = "ECS_DEVICE_ID", required = true)]
    device_id: Option<DeviceId>,

    /// Broker address: mqtts://host:port (TLS with client certificate) or mqtt://host:port.
    #[arg(long, env = "ECS_MQTT_URL", default_value = "mqtts://127.0.0.1:8883")]
    mqtt_url: BrokerUrl,

    /// PEM file with the CA certificate that signed the broker's certificate.
    #[arg(long, env = "ECS_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,

    /// PEM file with this device's certificate (chain).
    #[arg(long, env = "ECS_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,

    /// PEM file with this device's private key.
    #[arg(long, env = "ECS_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,

    /// SQLite file for the reading buffer and the notification inbox
    /// [default: ./ecs-edge-<device>.db].
    #[arg(long, env = "ECS_EDGE_DB")]
    db: Option<PathBuf>,

    /// Sensor readings per second.
    #[arg(long, env = "ECS_SAMPLE_HZ", default_value_t = AgentConfig::DEFAULT_SAMPLE_RATE_HZ)]
    sample_hz: f64,

    /// Seed of the simulated sensor [default: derived from the device id].
    #[arg(long, env = "ECS_SENSOR_SEED")]
    sensor_seed: Option<u64>,

    /// Kind of person the simulated sensor is (calm-saver, anxious-worrier, …) [default:
    /// every trait drawn from the seed].
    #[arg(long, env = "ECS_SENSOR_ARCHETYPE", value_enum)]
    sensor_archetype: Option<Archetype>,

    /// Most readings kept on disk; when full, the oldest are dropped (and counted).
    #[arg(long, env = "ECS_BUFFER_CAPACITY", default_value_t = AgentConfig::DEFAULT_BUFFER_CAPACITY)]
    buffer_capacity: u64,

    /// Most readings per uplink batch.
    #[arg(long, env = "ECS_BATCH_SIZE", default_value_t = AgentConfig::DEFAULT_BATCH_SIZE)]
    batch_size: usize,

    /// A partial batch is sent at least this often (milliseconds).
    #[arg(long, env = "ECS_FLUSH_INTERVAL_MS", default_value_t = 1_000)]
    flush_interval_ms: u64,

    /// A batch without an application ack after this long is sent again (milliseconds).
    #[arg(long, env = "ECS_ACK_TIMEOUT_MS", default_value_t = 10_000)]
    ack_timeout_ms: u64,

    /// Most batches awaiting an ack at any time.
    #[arg(long, env = "ECS_INFLIGHT_BATCHES", default_value_t = AgentConfig::DEFAULT_INFLIGHT_BATCHES)]
    inflight_batches: usize,

    /// Serve the agent's counters as Prometheus text on `GET /metrics` at this loopback
    /// address (e.g. 127.0.0.1:9464) [default: no endpoint].
    #[arg(long, env = "ECS_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// How often to log the agent's counters (seconds).
    #[arg(long, env = "ECS_STATS_INTERVAL_SECS", default_value_t = 30)]
    stats_interval_secs: u64,

    /// Log format: one JSON object per line, or human-readable.
    #[arg(long, env = "ECS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

/// Looking into an agent's file, safe while the agent runs (it is opened read-only).
#[derive(Debug, clap::Subcommand)]
enum Inspect {
    /// Readings waiting for an ack and the oldest one's age, what was dropped, and the counters
    /// the agent last saved (sent, acked, reconnects, bytes, last ack; saved every 2 s).
    Status {
        /// The agent's SQLite file.
        #[arg(long, env = "ECS_EDGE_DB")]
        db: PathBuf,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The notifications the phone received, newest first.
    Inbox {
        /// The agent's SQLite file.
        #[arg(long, env = "ECS_EDGE_DB")]
        db: PathBuf,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Prints what `command` asks for on stdout.
fn inspect(command: Inspect) -> anyhow::Result<()> {
    match command {
        Inspect::Status { db, json } => {
            let status = ecs_edge_agent::status::Status::read(&db)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        Inspect::Inbox { db, limit, json } => {
            let received = ecs_edge_agent::inbox::read_only(&db)?;
            for r in received.iter().rev().take(limit) {
                let n = &r.notification;
                if json {
                    let line = serde_json::json!({
                        "notification_id": n.notification_id,
                        "received_at_ms": r.received_at_ms,
                        "created_at_ms": n.created_at_ms,
                        "kind": n.kind.name(),
                        "offer_id": n.kind.offer_id(),
                        "notification": serde_json::to_value(&n.kind)?,
                    });
                    println!("{line}");
                } else {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let ago = (now - r.received_at_ms).max(0) as f64 / 1000.0;
                    println!(
                        "{ago:>10.1} s ago  {:<14} offer {}  {:?}",
                        n.kind.name(),
                        n.kind.offer_id(),
                        n.kind
                    );
                }
            }
        }
    }
    Ok(())
}

impl Cli {
    fn config(&self) -> anyhow::Result<AgentConfig> {
        let device_id = self
            .device_id
            .clone()
            .context("--device-id (ECS_DEVICE_ID) is required to run the agent")?;
        let tls = match (&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            (None, None, None) => None,
            _ => bail!("ECS_TLS_CA_FILE, ECS_TLS_CERT_FILE and ECS_TLS_KEY_FILE go together"),
        };
        let mut config = AgentConfig::new(device_id, self.mqtt_url.clone());
        if let Some(db) = &self.db {
            config.db_path = db.clone();
        }
        config.tls = tls;
        config.sample_rate_hz = self.sample_hz;
        config.sensor_seed = self.sensor_seed;
        config.sensor_archetype = self.sensor_archetype;
        config.buffer_capacity = self.buffer_capacity;
        config.batch_size = self.batch_size;
        config.flush_interval = Duration::from_millis(self.flush_interval_ms);
        config.ack_timeout = Duration::from_millis(self.ack_timeout_ms);
        config.inflight_batches = self.inflight_batches;
        config.metrics_addr = self.metrics_addr;
        config.validate()?;
        Ok(config)
    }
}

/// A failure is one line on stderr, saying what is wrong and which flag or variable fixes it,
/// and a non-zero exit.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The top error only: ours carry their cause in their own message.
            eprintln!("ecs-edge-agent: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return inspect(command);
    }
    ecs_telemetry::install_crypto_provider();
    ecs_telemetry::init_logs(cli.log_format);
    let config = cli.config()?;
    info!(
        device_id = %config.device_id,
        broker = %config.broker,
        db = %config.db_path.display(),
        metrics = ?config.metrics_addr,
        "starting edge agent"
    );
    let agent = Agent::start(config).await?;

    let period = Duration::from_secs(cli.stats_interval_secs.max(1));
    let mut stats = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let signal = ecs_telemetry::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            _ = stats.tick() => log_stats(&agent),
        }
    }
    info!("signal received, shutting down");
    agent
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("unclean shutdown: {e}"))?;
    Ok(())
}

fn log_stats(agent: &AgentHandle) {
    let s = agent.stats();
    info!(
        device_id = %agent.device_id(),
        connected = s.connected,
        readings_produced = s.readings_produced,
        readings_acked = s.readings_acked,
        readings_buffered = s.readings_buffered,
        readings_dropped = s.readings_dropped,
        readings_dropped_total = s.readings_dropped_total,
        batches_sent = s.batches_sent,
        batches_resent = s.batches_resent,
        batches_overtaken = s.batches_overtaken,
        probes = s.probes,
        notifications_received = s.notifications_received,
        decode_errors = s.decode_errors,
        acks_untrusted = s.acks_untrusted,
        "agent stats"
    );
}
