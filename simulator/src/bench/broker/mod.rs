//! `ecs-simulator bench broker`: the broker as a separate process under a fleet of phones.
//!
//! One run, in this order:
//! 1. **connect all**: N phones dial at once over mutual TLS, each with its own certificate;
//!    the clock stops at the last CONNACK (`connect_all_s`, `handshakes_per_s`). The broker's
//!    resident memory before and after gives `rss_bytes_per_connection`.
//! 2. **publish**: phones publish QoS 1 uplinks at full speed, a bounded number in flight each
//!    and (by default) a bounded number in transit overall; a service subscriber receives them
//!    through the shared uplink subscription (`messages_per_s`, delivery latency percentiles).
//! 3. **reconnect storm**: the broker is killed and started again on the same ports; the clock
//!    runs from the kill until every phone has a CONNACK again (`reconnect_storm_s`).
//! 4. **reference**: Mosquitto, already running, on its plain port: connect all (plain TCP) and
//!    the same publish phase, for `messages_ratio`.
//!
//! Code map: [`child`] (the broker process), [`credentials`] (certificates and TLS
//! configurations), [`phones`] (the fleet and its reconnect loop), [`publish`] (publishers,
//! subscriber, payload stamps), [`report`] (figures, targets, summary).

pub mod child;
pub mod credentials;
pub mod phones;
pub mod publish;
pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ecs_broker::{DEFAULT_SERVICE_USERNAME, PkiDir, Secret};
use ecs_protocol::DeviceId;
use rand::RngExt;

use self::child::{BrokerChild, BrokerLaunch};
use self::phones::{PhoneSpec, Phones};
use self::publish::{PublishFigures, PublishPlan, SubscriberLogin};
use self::report::{BrokerReport, ConnectFigures, Findings, Memory, StormFigures};
use crate::bench::{open_files, progress::Progress};

/// Phones connected to Mosquitto at most. Its open-file limit here is 20 000, and it has other
/// clients; 10 000 keeps the reference equal to our default fleet.
const MOSQUITTO_MAX_PHONES: usize = 10_000;
/// Time for the broker to finish allocating for its new connections before its memory is read.
const MEMORY_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerBenchArgs {
    /// Phones connected at once.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Phones publishing in the publish phase (default: all of them).
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Seconds of publishing measured (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub publish_secs: u64,
    /// QoS 1 publishes a phone may have unacknowledged at once.
    #[arg(long, default_value_t = 2)]
    pub inflight: usize,
    /// Messages published but not yet received by the subscriber, over all phones; 0 for no
    /// bound (the phones then overrun the subscriber: a measure of overload, not of speed).
    /// The default stays within Mosquitto's default queue of 1000 messages per client.
    #[arg(long, default_value_t = 1000)]
    pub in_transit: usize,
    /// Longest wait, per phase, for every phone to be connected.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Mosquitto's plain MQTT listener (anonymous), the reference.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mosquitto_addr: SocketAddr,
    /// Where the PKI and the broker's log are made (in a fresh directory removed afterwards,
    /// kept when the run fails). Default: /dev/shm when it exists (no disk syncs for 20 000
    /// certificate files), else the system's temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark. Progress (bars, each phase's outcome) goes to stderr when it is a
/// terminal; the figures are in the report.
pub async fn run(args: &BrokerBenchArgs) -> anyhow::Result<BrokerReport> {
    crate::bench::warn_if_debug_build();
    if args.devices == 0 || args.inflight == 0 || args.publish_secs == 0 {
        bail!("--devices, --inflight and --publish-secs must be at least 1");
    }
    open_files::ensure(args.devices as u64 + open_files::HEADROOM)?;
    // The comparison is part of the result: without Mosquitto, fail before the long part.
    check_reachable(args.mosquitto_addr).await?;
    let binary = BrokerLaunch::locate_binary()?;

    let base = args.work_dir.clone().unwrap_or_else(default_work_dir);
    let workdir = tempfile::Builder::new()
        .prefix("ecs-bench-broker-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a working directory in {}", base.display()))?;
    match run_in(args, binary, workdir.path()).await {
        Ok(report) => Ok(report),
        Err(error) => {
            let kept = workdir.keep();
            Err(error.context(format!(
                "the broker's log and PKI are kept in {}",
                kept.display()
            )))
        }
    }
}

/// What every phase of one run shares.
struct Conditions {
    progress: Progress,
    timeout: Duration,
    inflight: usize,
    publishers: usize,
    publish: Duration,
    in_transit: Option<usize>,
    /// Identifies this run's payloads (and its Mosquitto subscription group).
    run: u64,
}

impl Conditions {
    fn plan(&self, publishers: usize) -> PublishPlan {
        PublishPlan {
            publishers,
            duration: self.publish,
            in_transit: self.in_transit,
            run: self.run,
        }
    }
}

/// What our broker did.
struct Ours {
    connect: ConnectFigures,
    memory: Memory,
    publish: PublishFigures,
    storm: StormFigures,
    connection_errors: u64,
}

/// What Mosquitto did.
struct Reference {
    connect: ConnectFigures,
    publish: PublishFigures,
}

async fn run_in(
    args: &BrokerBenchArgs,
    binary: PathBuf,
    workdir: &Path,
) -> anyhow::Result<BrokerReport> {
    let conditions = Conditions {
        progress: Progress::for_stderr(),
        timeout: Duration::from_secs(args.timeout_secs),
        inflight: args.inflight,
        publishers: args.publishers.unwrap_or(args.devices).min(args.devices),
        publish: Duration::from_secs(args.publish_secs),
        in_transit: (args.in_transit > 0).then_some(args.in_transit),
        run: rand::rng().random::<u64>(),
    };
    let ours = measure_ours(&conditions, args.devices, binary, workdir).await?;
    let reference = measure_mosquitto(&conditions, args.devices, args.mosquitto_addr)
        .await
        .with_context(|| format!("measuring Mosquitto at {}", args.mosquitto_addr))?;
    Ok(BrokerReport::new(&Findings {
        release_build: !cfg!(debug_assertions),
        inflight_per_publisher: conditions.inflight,
        in_transit: conditions.in_transit,
        publish_secs: args.publish_secs,
        connect: ours.connect,
        memory: ours.memory,
        publish: ours.publish,
        storm: ours.storm,
        connection_errors: ours.connection_errors,
        mosquitto_addr: args.mosquitto_addr.to_string(),
        mosquitto_connect: reference.connect,
        mosquitto_publish: reference.publish,
    }))
}

/// Phases 1 to 3 on our broker, which is gone when this returns.
async fn measure_ours(
    conditions: &Conditions,
    devices: usize,
    binary: PathBuf,
    workdir: &Path,
) -> anyhow::Result<Ours> {
    let progress = &conditions.progress;
    // Identities first: issuing 10 000 certificates takes a while and is not the broker's work.
    let pki = PkiDir::init(
        workdir.join("pki"),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .context("creating the bench's certificate authority")?;
    let bar = progress.counter("certificates", devices as u64);
    let issued = {
        let (pki, bar) = (pki.clone(), bar.clone());
        tokio::task::spawn_blocking(move || credentials::issue(&pki, devices, &bar))
            .await
            .context("the certificate task failed")??
    };
    bar.finish_and_clear();

    let password = Secret::new(crate::stack::random_secret());
    let launch = BrokerLaunch::on_free_ports(
        binary,
        pki,
        password.clone(),
        devices,
        workdir.join("broker.log"),
    )?;
    let mut broker = BrokerChild::start(launch).await?;
    let idle_bytes = broker.rss_bytes()?;

    // 1. Connect all.
    let device_addr = broker.launch().device_addr;
    let specs = issued
        .into_iter()
        .map(|c| PhoneSpec {
            id: c.id,
            addr: device_addr,
            tls: Some(c.tls),
        })
        .collect();
    let (phones, connect) = connect_all(specs, conditions, "connect all").await;
    tokio::time::sleep(MEMORY_SETTLE).await;
    let memory = Memory {
        idle_bytes,
        connected_bytes: broker.rss_bytes()?,
        connections: connect.connected,
    };

    // 2. Publish.
    let login = SubscriberLogin {
        addr: broker.launch().service_addr,
        credentials: Some((DEFAULT_SERVICE_USERNAME.to_owned(), password)),
        filter: ecs_protocol::topic::shared_uplinks("bench"),
    };
    let publish = publish_phase(
        &phones,
        &login,
        conditions.plan(conditions.publishers),
        progress,
    )
    .await?;
    progress.note(&publish_said("publish", &publish));

    // 3. Reconnect storm.
    let bar = progress.counter("reconnect storm", phones.len() as u64);
    broker.kill().await?;
    // Only now: the old broker is gone, so no CONNACK of the old round can still arrive.
    phones.begin_round();
    let killed = Instant::now();
    broker.start_again().await?;
    let restart = killed.elapsed();
    let all_within = phones
        .wait_all_connected(killed, conditions.timeout, &bar)
        .await;
    bar.finish_and_clear();
    let storm = StormFigures {
        restart,
        reconnect: ConnectFigures {
            devices: phones.len(),
            connected: phones.connected(),
            all_within,
        },
    };
    progress.note(&connect_said("reconnect storm", &storm.reconnect));
    let connection_errors = phones.connection_errors();
    phones.shut_down().await;
    // The reference gets the machine to itself.
    broker.kill().await?;
    Ok(Ours {
        connect,
        memory,
        publish,
        storm,
        connection_errors,
    })
}

/// Phase 4: the same fleet (up to [`MOSQUITTO_MAX_PHONES`]) and publish phase on Mosquitto's
/// plain port, anonymous.
async fn measure_mosquitto(
    conditions: &Conditions,
    devices: usize,
    addr: SocketAddr,
) -> anyhow::Result<Reference> {
    let specs = (0..devices.min(MOSQUITTO_MAX_PHONES))
        .map(|_| PhoneSpec {
            id: DeviceId::random(),
            addr,
            tls: None,
        })
        .collect();
    let (phones, connect) = connect_all(specs, conditions, "mosquitto connect").await;
    let login = SubscriberLogin {
        addr,
        credentials: None,
        // A group of this run's own: a shared Mosquitto may have other subscribers in "bench".
        filter: ecs_protocol::topic::shared_uplinks(&format!("bench{:x}", conditions.run)),
    };
    let plan = conditions.plan(conditions.publishers.min(phones.len()));
    let publish = publish_phase(&phones, &login, plan, &conditions.progress).await?;
    conditions
        .progress
        .note(&publish_said("mosquitto publish", &publish));
    phones.shut_down().await;
    Ok(Reference { connect, publish })
}

/// Starts every phone at once and waits for all their CONNACKs (or the timeout).
async fn connect_all(
    specs: Vec<PhoneSpec>,
    conditions: &Conditions,
    what: &str,
) -> (Phones, ConnectFigures) {
    let bar = conditions.progress.counter(what, specs.len() as u64);
    let started = Instant::now();
    let phones = Phones::start(specs, conditions.inflight);
    let all_within = phones
        .wait_all_connected(started, conditions.timeout, &bar)
        .await;
    bar.finish_and_clear();
    let figures = ConnectFigures {
        devices: phones.len(),
        connected: phones.connected(),
        all_within,
    };
    conditions.progress.note(&connect_said(what, &figures));
    (phones, figures)
}

async fn publish_phase(
    phones: &Phones,
    login: &SubscriberLogin,
    plan: PublishPlan,
    progress: &Progress,
) -> anyhow::Result<PublishFigures> {
    let bar = progress.timer("publish");
    bar.set_message("warming up");
    let figures = publish::run(phones, login, plan, &bar).await;
    bar.finish_and_clear();
    figures
}

fn connect_said(what: &str, figures: &ConnectFigures) -> String {
    match figures.all_within {
        Some(d) => format!(
            "{what}: {} phones connected in {:.2} s (all dialled at once)",
            figures.devices,
            d.as_secs_f64()
        ),
        None => format!(
            "{what}: only {}/{} phones connected within the timeout",
            figures.connected, figures.devices
        ),
    }
}

fn publish_said(what: &str, figures: &PublishFigures) -> String {
    format!(
        "{what}: {} publishers, {:.0} messages/s delivered",
        figures.publishers, figures.messages_per_s
    )
}

async fn check_reachable(addr: SocketAddr) -> anyhow::Result<()> {
    let connected =
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await;
    match connected {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!(
            "Mosquitto is not reachable at {addr} ({e}); the benchmark compares the broker with \
             it: start it (mosquitto -d -p 1883) or point --mosquitto-addr at one"
        ),
        Err(_) => bail!(
            "Mosquitto at {addr} did not accept a connection within 3 s; the benchmark compares \
             the broker with it"
        ),
    }
}

fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}
