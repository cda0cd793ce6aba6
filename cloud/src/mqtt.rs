//! The cloud's one connection to the broker, as a service: it receives every device uplink of its
//! shared-subscription group and publishes acks and notifications.
//!
//! rumqttc's [`EventLoop`] does nothing unless polled, gives up nothing on errors and retries
//! nothing by itself: polling it again after an error reconnects at once, in a hot loop. So the
//! link polls it in its own task, waits with exponential backoff and jitter between failed
//! attempts, and subscribes again on every ConnAck (a clean session forgets subscriptions).
//!
//! Delivery guarantees come from the application, not from MQTT: rumqttc acknowledges an incoming
//! QoS 1 publish (PUBACK) as soon as it reads it, and a clean session drops whatever was queued
//! when the connection broke. A message lost here — in the queue to ingest, or not yet processed
//! at a crash — was never acked by the cloud, so the device sends it again. The link only has to
//! be honest about backpressure: when ingest's queue is full it stops reading from the broker.
//!
//! Only plain MQTT 3.1.1 is used (shared subscriptions are the `$share/<group>/<filter>`
//! convention that Mosquitto, EMQX, HiveMQ and rumqttd all accept), so the same code runs against
//! the embedded broker and any other.

use std::{fs, path::Path, sync::Arc, time::Duration};

use ecs_protocol::{MAX_MESSAGE_BYTES, topic};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{Error, config::MqttSettings, error::Result};

/// Largest MQTT packet accepted or sent: the largest protocol message plus room for the topic
/// and the fixed header. rumqttc's default (10 KiB) is smaller than a full batch.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 4096;

/// Room in rumqttc's request queue (publishes and subscribes waiting for the event loop).
const REQUEST_QUEUE: usize = 1_024;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// On shutdown, how long the link keeps the connection open for acks that ingest is still
/// publishing for messages in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful DISCONNECT may take before the connection is simply dropped.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Where the link stands. `Subscribed` is the state in which this replica receives uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Disconnected,
    Connected,
    Subscribed,
}

/// A running connection to the broker. Cheap to query from any task; the connection itself lives
/// in a background task that ends when the shutdown token is cancelled.
pub struct BrokerLink {
    client: AsyncClient,
    state: watch::Receiver<LinkState>,
}

impl BrokerLink {
    /// Builds the client from `settings` and starts polling it in the background.
    ///
    /// Returns at once: the broker being down is not an error (the link keeps retrying); settings
    /// that can never work (an unreadable CA or password file, a password without a username)
    /// are. Every uplink received goes into `inbound`; when that queue is full the link stops
    /// reading from the broker until there is room.
    pub async fn start(
        settings: &MqttSettings,
        inbound: mpsc::Sender<Inbound>,
        shutdown: CancellationToken,
    ) -> Result<BrokerLink> {
        let options = mqtt_options(settings)?;
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (state_tx, state) = watch::channel(LinkState::Disconnected);
        let filter = topic::shared_uplinks(&settings.group);
        let span = info_span!("mqtt_link", client_id = %settings.client_id, url = %settings.url);
        tokio::spawn(
            drive(
                eventloop,
                client.clone(),
                filter,
                inbound,
                state_tx,
                shutdown,
            )
            .instrument(span),
        );
        Ok(BrokerLink { client, state })
    }

    /// A handle for publishing through this connection. Publishing only queues the message; while
    /// disconnected, queued messages may be dropped at the reconnect (clean session), so every
    /// publisher must be prepared to publish again (acks are re-earned by resends, notifications
    /// are re-published until a receipt arrives).
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// Whether the broker has accepted the connection (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        matches!(
            *self.state.borrow(),
            LinkState::Connected | LinkState::Subscribed
        )
    }

    /// Whether the broker has also confirmed the uplink subscription: this replica is receiving.
    pub fn is_subscribed(&self) -> bool {
        *self.state.borrow() == LinkState::Subscribed
    }

    /// Waits until the link is connected *and* subscribed, so that an uplink published from now on
    /// reaches this replica's group. `Unavailable` after `timeout`, or when the link has stopped.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut state = self.state.clone();
        match tokio::time::timeout(timeout, state.wait_for(|s| *s == LinkState::Subscribed)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Error::Unavailable("broker")),
        }
    }
}

fn mqtt_options(settings: &MqttSettings) -> Result<MqttOptions> {
    let url = &settings.url;
    let mut options = MqttOptions::new(settings.client_id.clone(), url.host.clone(), url.port);
    options
        .set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let password = settings
        .password()
        .map_err(|e| Error::InvalidInput(format!("cannot read the broker password file: {e}")))?;
    match (&settings.username, password) {
        (Some(username), password) => {
            options.set_credentials(username.clone(), password.unwrap_or_default());
        }
        (None, Some(_)) => {
            return Err(Error::InvalidInput(
                "a broker password is set but no username (ECS_MQTT_USERNAME)".into(),
            ));
        }
        (None, None) => {}
    }
    if url.tls {
        let ca_file = settings.ca_file.as_deref().ok_or_else(|| {
            Error::InvalidInput(
                "mqtts:// needs the broker's CA certificate (ECS_MQTT_CA_FILE)".into(),
            )
        })?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(ca_file)?,
        )));
    }
    Ok(options)
}

/// A rustls client configuration trusting exactly the CAs in `ca_file`.
///
/// The ring provider is named explicitly rather than taken from the process default, so the link
/// works whether or not the binary installed one (and cannot pick up a second provider).
fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let invalid = |what: String| Error::InvalidInput(format!("{}: {what}", ca_file.display()));
    let pem = fs::read(ca_file).map_err(|e| invalid(format!("cannot read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The link's task: polls the event loop until shutdown, then leaves the broker gracefully.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    inbound: mpsc::Sender<Inbound>,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // poll() turns a refused ConnAck into an error, so this one is a success.
                backoff.reset();
                state.send_replace(LinkState::Connected);
                info!("connected to the broker");
                // Subscribing from another task: the request queue may be full of publishes
                // made while disconnected, and only this task drains it.
                let (client, filter) = (client.clone(), filter.clone());
                tokio::spawn(
                    async move {
                        if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                            warn!(error = %e, "could not queue the uplink subscription");
                        }
                    }
                    .in_current_span(),
                );
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    state.send_replace(LinkState::Subscribed);
                    info!(%filter, "subscribed to device uplinks");
                } else {
                    // Usually an ACL: retrying would not help. Readiness stays false.
                    error!(%filter, "the broker refused the uplink subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Inbound {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                };
                // Awaiting here is the backpressure: while ingest is behind, nothing more is
                // read from the broker (which then holds or drops messages by its own limits;
                // devices resend what is never acked).
                let sent = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    sent = inbound.send(message) => sent,
                };
                if sent.is_err() {
                    warn!("ingest has stopped taking messages; leaving the broker");
                    break;
                }
            }
            Ok(event) => debug!(?event, "mqtt event"),
            Err(e) => {
                state.send_replace(LinkState::Disconnected);
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let connected = *state.borrow() != LinkState::Disconnected;
    if connected {
        leave(&mut eventloop, &client, &filter, &inbound).await;
    }
    state.send_replace(LinkState::Disconnected);
    info!("broker link stopped");
}

/// Leaves the broker in order: stop receiving (the group's other replicas take over), keep the
/// connection while ingest publishes acks for the messages it still holds, then DISCONNECT.
/// Messages that arrive meanwhile are not processed; their devices resend them.
async fn leave(
    eventloop: &mut EventLoop,
    client: &AsyncClient,
    filter: &str,
    inbound: &mpsc::Sender<Inbound>,
) {
    let _ = client.try_unsubscribe(filter);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        loop {
            tokio::select! {
                _ = inbound.closed() => break,
                event = eventloop.poll() => if event.is_err() { return },
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("ingest did not finish within the drain timeout");
    }
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with "equal jitter": the n-th delay is uniformly random in
/// `[c/2, c]` with `c = min(INITIAL * 2^n, MAX)`. The fixed half keeps a flapping broker from
/// being hammered; the random half keeps replicas that lost the broker together from
/// reconnecting in lockstep.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_INITIAL
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random_range(0.0..=1.0))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A plain MQTT client for tests: plays a device (or any other party) against a test broker.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The broker tests run against; see the crate's test notes.
    pub(crate) const TEST_BROKER: (&str, u16) = ("127.0.0.1", 1883);
    /// Upper bound for every wait in a test.
    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    pub(crate) struct TestClient {
        pub client: AsyncClient,
        pub received: mpsc::Receiver<Inbound>,
        shutdown: CancellationToken,
    }

    impl TestClient {
        /// Connects and, when `subscribe_to` is given, returns only once the broker confirmed
        /// that subscription.
        pub(crate) async fn connect(subscribe_to: Option<&str>) -> TestClient {
            let id = format!("ecs-test-{}", uuid::Uuid::new_v4().simple());
            let mut options = MqttOptions::new(id, TEST_BROKER.0, TEST_BROKER.1);
            options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            let (tx, received) = mpsc::channel(64);
            let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let subscription = subscribe_to.map(str::to_owned);
            let subscriber = client.clone();
            tokio::spawn(async move {
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => break,
                        event = eventloop.poll() => event,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(filter) = &subscription {
                                let _ = subscriber.try_subscribe(filter, QoS::AtLeastOnce);
                            } else if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx
                                .send(Inbound {
                                    topic: p.topic,
                                    payload: p.payload.to_vec(),
                                })
                                .await;
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
            tokio::time::timeout(WAIT, subscribed)
                .await
                .expect("test client did not connect to the test broker")
                .expect("test client task ended");
            TestClient {
                client,
                received,
                shutdown,
            }
        }

        /// The next message, or `None` when nothing arrives within `within`.
        pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Inbound> {
            tokio::time::timeout(within, self.received.recv())
                .await
                .ok()
                .flatten()
        }
    }

    impl Drop for TestClient {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    pub(crate) fn settings(group: &str) -> MqttSettings {
        MqttSettings {
            url: format!("mqtt://{}:{}", TEST_BROKER.0, TEST_BROKER.1)
                .parse()
                .expect("valid test url"),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_id: format!("ecs-cloud-test-{}", uuid::Uuid::new_v4().simple()),
            group: group.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use ecs_protocol::DeviceId;

    use super::{testing::*, *};

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_INITIAL / 2 && delays[0] <= BACKOFF_INITIAL);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[19] >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL);
    }

    #[test]
    fn settings_that_can_never_work_are_refused_up_front() {
        let mut s = settings("g");
        s.password = Some("secret".into());
        assert!(matches!(mqtt_options(&s), Err(Error::InvalidInput(_))));

        let mut s = settings("g");
        s.url = "mqtts://127.0.0.1:8883".parse().unwrap();
        assert!(matches!(mqtt_options(&s), Err(Error::InvalidInput(_))));

        let dir = std::env::temp_dir().join(format!("ecs-ca-{}", uuid::Uuid::new_v4()));
        fs::write(&dir, "not a certificate").unwrap();
        s.ca_file = Some(dir.clone());
        let refused = mqtt_options(&s);
        fs::remove_file(&dir).unwrap();
        assert!(matches!(refused, Err(Error::InvalidInput(_))));
    }

    #[tokio::test]
    async fn the_link_receives_device_uplinks_through_the_shared_subscription() {
        let group = format!("test{}", uuid::Uuid::new_v4().simple());
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let link = BrokerLink::start(&settings(&group), tx, shutdown.clone())
            .await
            .unwrap();
        link.wait_ready(WAIT).await.unwrap();
        assert!(link.is_connected() && link.is_subscribed());

        let device = DeviceId::random();
        let phone = TestClient::connect(None).await;
        let payload = vec![7u8; 20_000]; // above rumqttc's default packet limit
        phone
            .client
            .publish(
                topic::uplink(&device),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();

        // Other tests' devices share the broker: skip their uplinks.
        let received = tokio::time::timeout(WAIT, async {
            loop {
                let m = rx.recv().await.expect("link stopped");
                if m.topic == topic::uplink(&device) {
                    return m;
                }
            }
        })
        .await
        .expect("uplink not received");
        assert_eq!(received.payload, payload);

        shutdown.cancel();
        drop(rx);
        let mut state = link.state.clone();
        tokio::time::timeout(WAIT, state.wait_for(|s| *s == LinkState::Disconnected))
            .await
            .expect("link did not stop")
            .unwrap();
        assert!(!link.is_connected());
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_not_fatal() {
        let (tx, _rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let mut s = settings("g");
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        s.url = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
        let link = BrokerLink::start(&s, tx, shutdown.clone()).await.unwrap();
        assert!(matches!(
            link.wait_ready(Duration::from_millis(500)).await,
            Err(Error::Unavailable(_))
        ));
        assert!(!link.is_connected());
        shutdown.cancel();
    }
}
