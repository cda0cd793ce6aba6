//! The whole system in one process, on free loopback ports: certificate authority, broker,
//! cloud. The demo and the end-to-end tests stand on it.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use ecs_broker::{BrokerSettings, PkiDir, RunningBroker, Secret};
use ecs_cloud::{
    app::{self, RunningApp},
    config::{ModelSettings, MqttSettings, MqttUrl, Settings},
    model::ModelKind,
};
use ecs_edge_agent::{BrokerUrl, TlsFiles};
use ecs_protocol::DeviceId;
use rand::RngExt;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tempfile::TempDir;

/// Which broker the stack runs on.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// Our own: rumqttd embedded, devices over mutual TLS, the cloud with a password.
    Embedded,
    /// A third-party broker already running (e.g. Mosquitto at `mqtt://127.0.0.1:1883`),
    /// spoken to in plain MQTT 3.1.1 by devices and cloud alike.
    External(String),
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub database_url: String,
    pub broker: BrokerChoice,
    pub model: ModelKind,
    /// Seed of the random model, when that is the one in use.
    pub model_seed: Option<u64>,
}

/// A running system. Dropping it leaves the embedded broker thread behind (rumqttd cannot be
/// stopped), which ends with the process.
pub struct Stack {
    pub api_base: String,
    pub admin_token: String,
    /// A pool of our own, for looking into the database whatever the cloud is doing.
    pub pool: PgPool,
    cloud: Option<RunningApp>,
    cloud_settings: Settings,
    device_broker: BrokerUrl,
    pki: Option<PkiDir>,
    /// The embedded broker's settings (to start it again on the same ports) and the broker
    /// while it runs; `None` on an external broker.
    broker_settings: Option<BrokerSettings>,
    broker: Option<RunningBroker>,
    workdir: TempDir,
}

/// 48 random hex digits, for passwords and tokens made on the spot.
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An embedded broker on free loopback ports, with a certificate authority of its own and a
/// fresh password for the service listener.
pub(crate) struct EmbeddedBroker {
    pub pki: PkiDir,
    pub broker: RunningBroker,
    /// What it was started with: the same ports, certificates and password again.
    pub settings: BrokerSettings,
    /// The service listener's login.
    pub username: String,
    pub password: String,
}

impl EmbeddedBroker {
    /// Creates the certificate authority in `pki_dir` and starts the broker.
    pub async fn start(pki_dir: PathBuf) -> anyhow::Result<Self> {
        let pki = PkiDir::init(pki_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("creating the certificate authority")?;
        let password = random_secret();
        let settings = BrokerSettings::loopback(&pki, Secret::new(password.clone()))
            .context("finding free ports for the broker")?;
        let username = settings.service_username.clone();
        let broker = start_broker(settings.clone()).await?;
        Ok(Self {
            pki,
            broker,
            settings,
            username,
            password,
        })
    }

    /// How the cloud logs in to this broker.
    pub fn cloud_login(&self) -> MqttSettings {
        embedded_broker_login(&self.broker, self.username.clone(), self.password.clone())
    }
}

/// Starts a broker off the async threads (it binds and loads certificates synchronously).
async fn start_broker(settings: BrokerSettings) -> anyhow::Result<RunningBroker> {
    tokio::task::spawn_blocking(move || RunningBroker::start(&settings))
        .await
        .context("starting the broker")?
        .context("starting the broker")
}

/// Polls `{base_url}/readyz` until the cloud reports ready (Postgres and broker reachable), for
/// at most `timeout`.
pub(crate) async fn wait_ready(base_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("{base_url}/readyz");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ready = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the cloud did not become ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the cloud logs in to an embedded broker's service listener.
fn embedded_broker_login(
    broker: &RunningBroker,
    username: String,
    password: String,
) -> MqttSettings {
    MqttSettings {
        url: MqttUrl {
            scheme: ecs_mqtt_link::Scheme::Mqtt,
            host: "127.0.0.1".into(),
            port: broker.service_addr().port(),
        },
        username: Some(username),
        password: Some(password),
        password_file: None,
        ca_file: None,
        client_id: format!("ecs-cloud-{}", DeviceId::random()),
        group: "ecs-cloud".into(),
    }
}

/// The settings of an in-process cloud (the demo, the tests, the benchmarks): a free HTTP port,
/// a small pool, short worker and notifier intervals, everything else the defaults.
pub(crate) fn cloud_settings(
    database_url: &str,
    admin_token: String,
    mqtt: MqttSettings,
    model: ModelSettings,
) -> anyhow::Result<Settings> {
    Ok(Settings {
        database_url: database_url.to_owned(),
        db_max_connections: 10,
        http_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(admin_token),
        admin_token_file: None,
        mqtt,
        model,
        // The cloud's default: batches enough for a group commit to gather.
        ingest_concurrency: 32,
        worker_poll_ms: 500,
        notify_resend_ms: 2_000,
        offer_ttl_hours: 72,
        reading_retention_days: 90,
        dead_letter_retention_days: 30,
        revocation_resend_secs: 30,
        analytics_min_group: ecs_cloud::analytics::MinGroupSize::DEFAULT,
        api_rate_per_user: 20,
        // The demo's driver (and the benchmarks) act through the admin token for every phone.
        api_rate_admin: 100_000,
        assessments_per_hour: 10,
        // A master key of the run's own: what it seals dies with the run.
        keys: ecs_cloud::config::KeySettings {
            master_key: Some(ecs_cloud::keys::MasterKey::random().to_hex()),
            ..Default::default()
        },
        listener: ecs_cloud::config::ListenerSettings::default(),
        // Scans often, so a demo long enough (30 minutes of calm) sees proactive offers.
        proactive: ecs_cloud::config::ProactiveSettings {
            scan_secs: 5,
            ..Default::default()
        },
    })
}

impl Stack {
    pub async fn start(options: &StackOptions) -> anyhow::Result<Self> {
        app::migrate(&options.database_url)
            .await
            .with_context(|| "preparing the database (is Postgres reachable at DATABASE_URL?)")?;
        let workdir = tempfile::tempdir().context("creating a working directory")?;
        let admin_token = random_secret();

        let (mqtt, device_broker, pki, broker) = match &options.broker {
            BrokerChoice::Embedded => {
                let embedded = EmbeddedBroker::start(workdir.path().join("pki")).await?;
                let mqtt = embedded.cloud_login();
                let device_broker: BrokerUrl =
                    format!("mqtts://127.0.0.1:{}", embedded.broker.device_addr().port())
                        .parse()?;
                (
                    mqtt,
                    device_broker,
                    Some(embedded.pki),
                    Some((embedded.settings, embedded.broker)),
                )
            }
            BrokerChoice::External(url) => {
                let mqtt = MqttSettings {
                    url: url.parse()?,
                    username: None,
                    password: None,
                    password_file: None,
                    ca_file: None,
                    client_id: format!("ecs-cloud-{}", DeviceId::random()),
                    // A group of our own, so other clouds on a shared broker don't take our
                    // messages.
                    group: format!("ecs-{}", DeviceId::random()),
                };
                (mqtt, url.parse()?, None, None)
            }
        };

        let model = ModelSettings {
            kind: options.model,
            seed: options.model_seed,
            ..ModelSettings::default()
        };
        let settings = cloud_settings(&options.database_url, admin_token.clone(), mqtt, model)?;
        let cloud = app::spawn(settings.clone())
            .await
            .context("starting the cloud")?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&options.database_url)
            .await?;
        Ok(Self {
            api_base: format!("http://{}", cloud.http_addr),
            admin_token,
            pool,
            cloud: Some(cloud),
            cloud_settings: settings,
            device_broker,
            pki,
            broker_settings: broker.as_ref().map(|(settings, _)| settings.clone()),
            broker: broker.map(|(_, broker)| broker),
            workdir,
        })
    }

    /// Everything an edge agent needs to reach the broker as `device`: the URL, and for the
    /// embedded broker a freshly issued client certificate.
    pub fn device_access(
        &self,
        device: &DeviceId,
    ) -> anyhow::Result<(BrokerUrl, Option<TlsFiles>)> {
        let tls = match &self.pki {
            Some(pki) => {
                let files = pki
                    .issue_device_files(device)
                    .with_context(|| format!("issuing a certificate for device {device}"))?;
                Some(TlsFiles {
                    ca_file: pki.ca_cert_path(),
                    cert_file: files.cert,
                    key_file: files.key,
                })
            }
            None => None,
        };
        Ok((self.device_broker.clone(), tls))
    }

    /// A directory that lives as long as the stack (phones' SQLite files go here).
    pub fn workdir(&self) -> PathBuf {
        self.workdir.path().to_owned()
    }

    /// Waits until the cloud reports ready (Postgres and broker reachable).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_ready(&self.api_base, timeout).await
    }

    /// Kills the cloud (every task aborted at once, as in a crash: batches may be committed but
    /// not acked, or still queued), waits `downtime` with no cloud at all, and starts a new
    /// replica on the same database and broker (on a new HTTP port). Whatever the phones publish
    /// meanwhile reaches no subscriber and is dropped by the broker; only their resends can bring
    /// it in.
    pub async fn crash_and_restart_cloud(&mut self, downtime: Duration) -> anyhow::Result<()> {
        if let Some(old) = self.cloud.take() {
            old.kill().await;
        }
        tokio::time::sleep(downtime).await;
        let mut settings = self.cloud_settings.clone();
        settings.mqtt.client_id = format!("ecs-cloud-{}", DeviceId::random());
        let cloud = app::spawn(settings)
            .await
            .context("starting the new cloud")?;
        self.api_base = format!("http://{}", cloud.http_addr);
        self.cloud = Some(cloud);
        Ok(())
    }

    /// Starts another replica of the cloud on the same database and broker (its own HTTP port and
    /// MQTT client id, the same shared-subscription group, so the broker splits the phones'
    /// batches between the replicas). The caller owns it: `kill` or `shutdown` it.
    pub async fn spawn_replica(&self) -> anyhow::Result<RunningApp> {
        let mut settings = self.cloud_settings.clone();
        settings.mqtt.client_id = format!("ecs-cloud-{}", DeviceId::random());
        app::spawn(settings)
            .await
            .context("starting another replica")
    }

    /// Stops the embedded broker: every connection closes (phones and cloud alike) and
    /// whatever it held in memory (sessions, queued messages) is gone, as in a broker crash.
    pub async fn stop_broker(&mut self) -> anyhow::Result<()> {
        let broker = self
            .broker
            .take()
            .context("no embedded broker is running")?;
        tokio::task::spawn_blocking(move || broker.stop())
            .await
            .context("stopping the broker")
    }

    /// Starts the embedded broker again, on the same ports with the same certificates and
    /// password, after [`Stack::stop_broker`]. Clients reconnect by themselves.
    pub async fn start_broker(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.broker.is_none(), "the broker is already running");
        let settings = self
            .broker_settings
            .clone()
            .context("the stack runs on an external broker")?;
        // The ports were the old broker's a moment ago; the kernel may take a moment to let go.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match start_broker(settings.clone()).await {
                Ok(broker) => {
                    self.broker = Some(broker);
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "broker not restarted yet; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(cloud) = self.cloud.take() {
            cloud.stop().await;
        }
        self.pool.close().await;
    }
}

/// Runs `work` against the demo's whole system (embedded broker, built-in scorecard) started on
/// `database_url` and ready, then stops the system, whatever `work` answered: how the benches
/// that need a running system measure it.
pub async fn with_ready_stack<T>(
    database_url: &str,
    work: impl AsyncFnOnce(&Stack) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stack = Stack::start(&StackOptions {
        database_url: database_url.to_owned(),
        broker: BrokerChoice::Embedded,
        model: ecs_cloud::model::ModelKind::Scorecard,
        model_seed: None,
    })
    .await
    .context("starting the system")?;
    let outcome = async {
        stack.wait_ready(Duration::from_secs(30)).await?;
        work(&stack).await
    }
    .await;
    stack.stop().await;
    outcome
}
