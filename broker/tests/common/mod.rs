//! A real broker on ephemeral ports with a fresh PKI, and MQTT clients that talk to it the way
//! edge agents and the cloud do. Every wait is bounded, so a broken broker fails a test instead
//! of hanging it.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ecs_broker::{BrokerSettings, MAX_PACKET_BYTES, PkiDir, RunningBroker, Secret};
use ecs_protocol::DeviceId;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_secs(1);

pub const SERVICE_PASSWORD: &str = "test-service-password";

pub struct TestBroker {
    pub pki: PkiDir,
    pub settings: BrokerSettings,
    pub broker: RunningBroker,
    pub _dir: tempfile::TempDir,
}

impl TestBroker {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A broker whose settings `adjust` changed first (smaller caps, faster timeouts).
    pub fn start_with(adjust: impl FnOnce(&mut BrokerSettings)) -> Self {
        ecs_telemetry::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temporary directory");
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let pki = PkiDir::init(dir.path(), &names).expect("PKI");
        let mut settings =
            BrokerSettings::loopback(&pki, Secret::new(SERVICE_PASSWORD)).expect("free ports");
        adjust(&mut settings);
        let broker = RunningBroker::start(&settings).expect("broker starts");
        Self {
            pki,
            settings,
            broker,
            _dir: dir,
        }
    }

    /// Connects a device with a certificate freshly issued for `id`, with a clean session.
    pub async fn device(&self, id: &DeviceId) -> Result<Client, ConnectionError> {
        Client::connect(self.device_options_for(id)).await
    }

    /// MQTT options for device `id`, with a certificate freshly issued for it.
    pub fn device_options_for(&self, id: &DeviceId) -> MqttOptions {
        let files = self.pki.issue_device_files(id).expect("device certificate");
        let tls = tls_config(&self.pki.ca_cert_path(), Some((&files.cert, &files.key)));
        self.device_options(id.as_str(), tls)
    }

    /// MQTT options with `id`'s certificate but another client id.
    pub fn device_options_with_client_id(&self, id: &DeviceId, client_id: &str) -> MqttOptions {
        let files = self.pki.issue_device_files(id).expect("device certificate");
        let tls = tls_config(&self.pki.ca_cert_path(), Some((&files.cert, &files.key)));
        self.device_options(client_id, tls)
    }

    /// MQTT options for the device listener with the given TLS configuration.
    pub fn device_options(&self, client_id: &str, tls: rustls::ClientConfig) -> MqttOptions {
        let mut options = options(client_id, self.broker.device_addr());
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        options
    }

    /// The admin endpoint's `path`, as text.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        let addr = self.broker.admin_addr().expect("admin endpoint");
        let response = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("admin endpoint answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("admin body"))
    }

    /// Certificate files issued for `id` by this broker's CA.
    pub fn device_files(&self, id: &DeviceId) -> ecs_broker::CertFiles {
        self.pki.issue_device_files(id).expect("device certificate")
    }

    /// Connects a service with `password` on the service listener.
    pub async fn service(
        &self,
        client_id: &str,
        password: &str,
    ) -> Result<Client, ConnectionError> {
        let mut options = options(client_id, self.broker.service_addr());
        options.set_credentials(self.settings.service_username.clone(), password);
        Client::connect(options).await
    }
}

fn options(client_id: &str, addr: SocketAddr) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    // rumqttc's default limit is 10 KiB, far below a full protocol message.
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options
}

/// Waits (bounded) until `condition` holds, checking every 20 ms.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rustls client configuration trusting `ca`, presenting the certificate and key if given.
pub fn tls_config(ca: &Path, client_cert: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("CA certificate"))
        .expect("CA certificate is acceptable");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key match")
        }
    }
}

/// A connected MQTT client whose event loop runs in a task, so the test reads events at its
/// own pace. The loop stops at the first connection error: these tests want to see a refusal
/// or a disconnection, not rumqttc's silent reconnects.
pub struct Client {
    pub mqtt: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
}

impl Client {
    /// Connects and waits for the broker's CONNACK; the error is why it did not come.
    pub async fn connect(options: MqttOptions) -> Result<Client, ConnectionError> {
        let (mqtt, mut event_loop) = AsyncClient::new(options, 16);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = event_loop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        let mut client = Client { mqtt, events };
        match client.next_event(PATIENCE).await {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(client),
            Some(Ok(other)) => panic!("expected CONNACK first, got {other:?}"),
            Some(Err(error)) => Err(error),
            None => panic!("no CONNACK and no error within {PATIENCE:?}"),
        }
    }

    /// The next event, or `None` when none came within `wait` (or the loop has ended).
    pub async fn next_event(&mut self, wait: Duration) -> Option<Result<Event, ConnectionError>> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.mqtt
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        self.expect(PATIENCE, "SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await;
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
        self.expect(PATIENCE, "PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }

    /// The next message the broker delivers, within [`PATIENCE`].
    pub async fn next_publish(&mut self) -> Publish {
        match self
            .expect(PATIENCE, "PUBLISH", |p| matches!(p, Packet::Publish(_)))
            .await
        {
            Packet::Publish(publish) => publish,
            _ => unreachable!("matched a PUBLISH"),
        }
    }

    /// Asserts that no message is delivered for [`QUIET`].
    pub async fn expect_no_publish(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                None => return,
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    panic!("unexpected message on {}", p.topic)
                }
                Some(_) => continue,
            }
        }
    }

    /// Waits until the broker closes the connection.
    pub async fn expect_disconnected(&mut self) -> ConnectionError {
        loop {
            match self.next_event(PATIENCE).await {
                Some(Err(error)) => return error,
                Some(Ok(_)) => continue,
                None => panic!("still connected after {PATIENCE:?}"),
            }
        }
    }

    async fn expect(
        &mut self,
        wait: Duration,
        what: &str,
        wanted: impl Fn(&Packet) -> bool,
    ) -> Packet {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Ok(Event::Incoming(packet))) if wanted(&packet) => return packet,
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("connection failed while waiting for {what}: {error}"),
                None => panic!("no {what} within {wait:?}"),
            }
        }
    }
}
