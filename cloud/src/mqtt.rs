//! The cloud's one connection to the broker, as a service: it receives every device uplink of its
//! shared-subscription group and publishes acks and notifications.
//!
//! rumqttc's [`EventLoop`] does nothing unless polled, gives up nothing on errors and retries
//! nothing by itself: polling it again after an error reconnects at once, in a hot loop. So the
//! link's [`LinkDriver`] polls it continuously, waits with exponential backoff and jitter between
//! failed attempts, and subscribes again on every ConnAck (a clean session forgets
//! subscriptions). A subscription the broker refuses, or that cannot be queued, is requested
//! again with backoff until it is granted: only then is the replica ready.
//!
//! The driver owns the connection. It is a task of the replica like any other (the caller spawns
//! it and keeps its handle); when it ends, or is aborted, the connection is dropped with it, so no
//! half-alive client keeps receiving its share of the uplinks.
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

use std::{path::Path, sync::Arc, time::Duration};

use ecs_mqtt_link::Backoff;
use ecs_protocol::topic;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::{
    Error,
    config::MqttSettings,
    error::Result,
    ingest::queue::{Intake, Pushed},
};

/// Largest MQTT packet accepted or sent: the system's one limit (rumqttc's default, 10 KiB, is
/// smaller than a full batch).
pub use ecs_protocol::MAX_PACKET_BYTES;

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

/// The cloud's connection to the broker, as seen by the rest of the replica: query its state,
/// publish through it. The connection itself lives in the [`LinkDriver`].
pub struct BrokerLink {
    client: AsyncClient,
    state: watch::Receiver<LinkState>,
    connection: watch::Receiver<Option<u64>>,
    /// Whether this is an uplink link (ready only once subscribed).
    subscribes: bool,
}

/// The task that owns the broker connection: polls the event loop until shutdown, then leaves the
/// broker gracefully. Nothing reaches the broker unless it runs; dropping or aborting it drops the
/// connection (the broker then forgets this replica's clean session and its subscription).
#[must_use = "the broker link does nothing until its driver runs"]
pub struct LinkDriver {
    eventloop: EventLoop,
    client: AsyncClient,
    role: Role,
    status: Status,
    shutdown: CancellationToken,
    span: Span,
}

/// What a link is for.
enum Role {
    /// Receives this replica's share of the uplinks (shared subscription `filter`) into ingest's
    /// queue.
    Uplinks { filter: String, inbound: Intake },
    /// Publishes acks, notifications and revocations, and subscribes to nothing: its event loop
    /// is never held up by inbound traffic, so an ack never waits behind the messages that are
    /// waiting for ingest. `done` says that the publishers have finished (shutdown then sends
    /// what they queued before leaving).
    Publisher { done: CancellationToken },
}

/// What the driver tells the rest of the replica about the connection.
struct Status {
    state: watch::Sender<LinkState>,
    /// `Some(n)` while on the n-th connection the broker accepted, `None` while disconnected.
    connection: watch::Sender<Option<u64>>,
    accepted: u64,
}

impl Status {
    fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    /// The broker accepted a (new) connection.
    fn connected(&mut self) {
        self.accepted += 1;
        self.set(LinkState::Connected);
        self.connection.send_replace(Some(self.accepted));
    }

    fn disconnected(&self) {
        self.set(LinkState::Disconnected);
        self.connection.send_replace(None);
    }

    fn is_connected(&self) -> bool {
        *self.state.borrow() != LinkState::Disconnected
    }
}

impl BrokerLink {
    /// Builds the uplink client from `settings`: the link, and the driver that must run (in a
    /// task of its own, polled continuously) for anything to happen.
    ///
    /// The broker being down is not an error (the driver keeps retrying); settings that can never
    /// work (an unreadable CA or password file, a password without a username) are. Every uplink
    /// received goes into `inbound`; when that queue is full the driver stops reading from the
    /// broker until there is room. Cancelling `shutdown` makes the driver leave the broker and end.
    pub fn new(
        settings: &MqttSettings,
        inbound: Intake,
        shutdown: CancellationToken,
    ) -> Result<(BrokerLink, LinkDriver)> {
        let role = Role::Uplinks {
            filter: topic::shared_uplinks(&settings.group),
            inbound,
        };
        Self::build(settings, &settings.client_id, role, shutdown)
    }

    /// Builds the publishing client: a second connection (client id `<client_id>-out`) for
    /// acks, notifications and revocations. On shutdown it leaves the broker once `done` is
    /// cancelled (the publishers have finished), after sending what they queued.
    pub fn publisher(
        settings: &MqttSettings,
        done: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(BrokerLink, LinkDriver)> {
        let client_id = format!("{}-out", settings.client_id);
        Self::build(settings, &client_id, Role::Publisher { done }, shutdown)
    }

    fn build(
        settings: &MqttSettings,
        client_id: &str,
        role: Role,
        shutdown: CancellationToken,
    ) -> Result<(BrokerLink, LinkDriver)> {
        let options = mqtt_options(settings, client_id)?;
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (state_tx, state) = watch::channel(LinkState::Disconnected);
        let (connection_tx, connection) = watch::channel(None);
        let driver = LinkDriver {
            eventloop,
            client: client.clone(),
            role,
            status: Status {
                state: state_tx,
                connection: connection_tx,
                accepted: 0,
            },
            shutdown,
            span: info_span!("mqtt_link", client_id = %client_id, url = %settings.url),
        };
        let link = BrokerLink {
            subscribes: matches!(driver.role, Role::Uplinks { .. }),
            client,
            state,
            connection,
        };
        Ok((link, driver))
    }

    /// A handle for publishing through this connection. Publishing only queues the message; while
    /// disconnected, queued messages may be dropped at the reconnect (clean session), so every
    /// publisher must be prepared to publish again (acks are re-earned by resends, notifications
    /// are re-published until a receipt arrives).
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// Which connection the link is on: `Some(n)` while on the n-th connection the broker accepted
    /// (counted from 1 for this link), `None` while disconnected. A new `n` is a reconnect: a
    /// publisher whose messages the broker keeps only in memory (the revocation list) publishes
    /// them again when it sees one. Once the driver is gone the sender is too (`changed` fails).
    pub fn connection(&self) -> watch::Receiver<Option<u64>> {
        self.connection.clone()
    }

    /// Where the link stands; `Disconnected` once the driver is gone, whatever it last said.
    fn current(&self) -> LinkState {
        if self.state.has_changed().is_err() {
            return LinkState::Disconnected;
        }
        *self.state.borrow()
    }

    /// Whether the broker has accepted the connection.
    pub fn is_connected(&self) -> bool {
        matches!(self.current(), LinkState::Connected | LinkState::Subscribed)
    }

    /// Whether the broker has also granted the uplink subscription: this replica is receiving
    /// uplinks. This is the uplink link's part of readiness (`/readyz`).
    pub fn is_subscribed(&self) -> bool {
        self.current() == LinkState::Subscribed
    }

    /// Whether the link does its job now: an uplink link is subscribed, a publisher connected.
    pub fn is_ready(&self) -> bool {
        match self.current() {
            LinkState::Subscribed => true,
            LinkState::Connected => !self.subscribes,
            LinkState::Disconnected => false,
        }
    }

    /// Waits until the link is ready ([`Self::is_ready`]): for an uplink link, connected *and*
    /// subscribed, so that an uplink published from now on reaches this replica's group.
    /// `Unavailable` after `timeout`, or when the driver has ended.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut state = self.state.clone();
        let subscribes = self.subscribes;
        let ready = move |s: &LinkState| match s {
            LinkState::Subscribed => true,
            LinkState::Connected => !subscribes,
            LinkState::Disconnected => false,
        };
        match tokio::time::timeout(timeout, state.wait_for(ready)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Error::Unavailable("broker")),
        }
    }
}

impl LinkDriver {
    /// Runs the connection until shutdown (or until ingest stops taking messages), then leaves
    /// the broker: stops receiving, lets ingest's last acks out, disconnects.
    pub async fn run(self) {
        let LinkDriver {
            eventloop,
            client,
            role,
            status,
            shutdown,
            span,
        } = self;
        // When the next subscription request is due (`None`: none is, because the link is
        // subscribed, not connected, or subscribes to nothing). The event loop's side sets it,
        // the subscriber acts on it.
        let (plan_tx, plan_rx) = watch::channel(None);
        let filter = match &role {
            Role::Uplinks { filter, .. } => Some(filter.clone()),
            Role::Publisher { .. } => None,
        };
        let subscriber = keep_subscription(client.clone(), filter.clone(), plan_rx);
        let waker = wake_on_shutdown(client.clone(), filter, &role, shutdown.clone());
        let connection = drive(eventloop, client, role, status, plan_tx, shutdown);
        // One task, two futures: the subscriber may wait for room in the request queue, which
        // only the event loop drains, so it must not run inside the event loop's iteration. It
        // never ends by itself; it is dropped when the connection ends.
        async {
            tokio::select! {
                biased;
                () = connection => {}
                () = subscriber => {}
                () = waker => {}
            }
        }
        .instrument(span)
        .await;
    }
}

fn mqtt_options(settings: &MqttSettings, client_id: &str) -> Result<MqttOptions> {
    let url = &settings.url;
    let mut options = ecs_mqtt_link::options(client_id, url, KEEP_ALIVE);
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
    if url.scheme == ecs_mqtt_link::Scheme::Mqtts {
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

/// A rustls client configuration trusting exactly the CAs in `ca_file` (services log in with a
/// password, not a certificate).
fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>> {
    ecs_mqtt_link::tls::client_config(ca_file, None).map_err(|e| {
        Error::InvalidInput(format!(
            "the broker's CA certificate (ECS_MQTT_CA_FILE): {e}"
        ))
    })
}

/// The event loop's side of the link: polls it until shutdown, then leaves the broker.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    role: Role,
    mut status: Status,
    plan: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut refusals = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    loop {
        // Never dropped half-way: rumqttc's `poll` takes a request (an ack) off its queue and
        // then awaits the write, so cancelling it there would lose that request. Shutdown is
        // noticed between polls; `wake_on_shutdown` makes the next poll return.
        let event = eventloop.poll().await;
        if shutdown.is_cancelled() {
            break;
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // poll() turns a refused ConnAck into an error, so this one is a success.
                backoff.reset();
                status.connected();
                if matches!(role, Role::Uplinks { .. }) {
                    plan.send_replace(Some(Instant::now()));
                }
                info!("connected to the broker");
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let Role::Uplinks { filter, .. } = &role else {
                    continue;
                };
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    refusals.reset();
                    plan.send_replace(None);
                    status.set(LinkState::Subscribed);
                    info!(%filter, "subscribed to device uplinks");
                } else {
                    // Often an ACL, fixed by an operator while this keeps asking (without
                    // hammering the broker). Readiness stays false meanwhile.
                    let delay = refusals.next_delay();
                    status.set(LinkState::Connected);
                    plan.send_replace(Some(Instant::now() + delay));
                    error!(%filter, retry_in_ms = delay.as_millis() as u64,
                        "the broker refused the uplink subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Role::Uplinks { inbound, .. } = &role else {
                    debug!(topic = %publish.topic, "a publisher link got a message; ignored");
                    continue;
                };
                let message = Inbound {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                };
                // Awaiting here is the backpressure: while ingest's queue is full, nothing more
                // is read from the broker (which then holds or drops messages by its own limits;
                // devices resend what is never acked). Acks do not wait for it: they leave on
                // the publisher link.
                let pushed = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    pushed = inbound.push(message) => pushed,
                };
                match pushed {
                    Ok(Pushed::Queued) => {}
                    Ok(Pushed::Shed) => debug!("a device over its queue share: message shed"),
                    Err(_) => {
                        warn!("ingest has stopped taking messages; leaving the broker");
                        break;
                    }
                }
            }
            Ok(event) => debug!(?event, "mqtt event"),
            Err(e) => {
                status.disconnected();
                plan.send_replace(None);
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    plan.send_replace(None);
    if status.is_connected() {
        leave(&mut eventloop, &client, &role).await;
    }
    status.disconnected();
    info!("broker link stopped");
}

/// Makes the event loop's next poll return once shutdown begins, with the first request of
/// leaving: an uplink link unsubscribes at once; a publisher, once the publishers are done,
/// disconnects (after everything they queued). Never ends by itself: it is dropped with the
/// connection.
fn wake_on_shutdown(
    client: AsyncClient,
    filter: Option<String>,
    role: &Role,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let done = match role {
        Role::Publisher { done } => Some(done.clone()),
        Role::Uplinks { .. } => None,
    };
    async move {
        shutdown.cancelled().await;
        match (&filter, done) {
            (Some(filter), _) => {
                let _ = client.try_unsubscribe(filter.as_str());
            }
            (None, Some(done)) => {
                // Bounded like the rest of leaving: a publisher that never finishes does not
                // keep the link.
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, done.cancelled()).await;
                let _ = client.try_disconnect();
            }
            (None, None) => {}
        }
        std::future::pending::<()>().await
    }
}

/// The subscription's side of the link: queues a subscription request whenever `plan` says one
/// is due. A request that cannot be queued is tried again with backoff; what the broker answers
/// is the event loop's business, which sets the next plan (none when granted, a later one when
/// refused). Never ends: it is dropped with the connection.
async fn keep_subscription(
    client: AsyncClient,
    filter: Option<String>,
    mut plan: watch::Receiver<Option<Instant>>,
) {
    let Some(filter) = filter else {
        // A publisher subscribes to nothing.
        return std::future::pending().await;
    };
    let mut failures = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    loop {
        let due = *plan.borrow_and_update();
        let request = async {
            let Some(at) = due else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at).await;
            loop {
                match client.subscribe(filter.as_str(), QoS::AtLeastOnce).await {
                    Ok(()) => {
                        failures.reset();
                        debug!(%filter, "uplink subscription requested");
                        // The answer arrives as a SubAck, and with it the next plan.
                        return std::future::pending().await;
                    }
                    Err(e) => {
                        let delay = failures.next_delay();
                        warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                            "could not queue the uplink subscription");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        };
        tokio::select! {
            changed = plan.changed() => {
                if changed.is_err() {
                    // The connection has ended; so has the need for a subscription.
                    return std::future::pending().await;
                }
            }
            () = request => {}
        }
    }
}

/// Leaves the broker in order. An uplink link stops receiving (the group's other replicas take
/// over) and keeps the connection until ingest has let go of its queue; a publisher keeps it
/// until the publishers are done, so the acks for the messages ingest still held go out. Then
/// DISCONNECT, which rumqttc sends after everything queued before it. Messages that arrive
/// meanwhile are not processed; their devices resend them.
async fn leave(eventloop: &mut EventLoop, client: &AsyncClient, role: &Role) {
    let done = async {
        match role {
            Role::Uplinks { filter, inbound } => {
                let _ = client.try_unsubscribe(filter);
                inbound.closed().await;
            }
            Role::Publisher { done } => done.cancelled().await,
        }
    };
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        tokio::pin!(done);
        loop {
            tokio::select! {
                () = &mut done => break,
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

/// A plain MQTT client for tests: plays a device (or any other party) against a test broker.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use tokio::sync::mpsc;

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

    /// Joins `group` and checks that it receives every uplink published to the group from now on,
    /// i.e. no other (half-dead) member is left in the group to take a share of them.
    pub(crate) async fn assert_only_subscriber_of(group: &str) {
        let mut member = TestClient::connect(Some(&topic::shared_uplinks(group))).await;
        let phone = TestClient::connect(None).await;
        let devices: Vec<ecs_protocol::DeviceId> =
            (0..6).map(|_| ecs_protocol::DeviceId::random()).collect();
        for device in &devices {
            phone
                .client
                .publish(topic::uplink(device), QoS::AtLeastOnce, false, vec![1])
                .await
                .unwrap();
        }
        let mut missing: Vec<String> = devices.iter().map(topic::uplink).collect();
        while !missing.is_empty() {
            let Some(m) = member.next_within(Duration::from_secs(2)).await else {
                panic!("uplinks went to another member of the group: {missing:?}");
            };
            missing.retain(|t| *t != m.topic);
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
    fn settings_that_can_never_work_are_refused_up_front() {
        let mut s = settings("g");
        s.password = Some("secret".into());
        assert!(matches!(mqtt_options(&s, "c"), Err(Error::InvalidInput(_))));

        let mut s = settings("g");
        s.url = "mqtts://127.0.0.1:8883".parse().unwrap();
        assert!(matches!(mqtt_options(&s, "c"), Err(Error::InvalidInput(_))));

        let dir = std::env::temp_dir().join(format!("ecs-ca-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "not a certificate").unwrap();
        s.ca_file = Some(dir.clone());
        let refused = mqtt_options(&s, "c");
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(refused, Err(Error::InvalidInput(_))));
    }

    #[tokio::test]
    async fn the_link_receives_device_uplinks_through_the_shared_subscription() {
        let group = format!("test{}", uuid::Uuid::new_v4().simple());
        let (tx, mut rx) = crate::ingest::queue::channel();
        let shutdown = CancellationToken::new();
        let (link, driver) = BrokerLink::new(&settings(&group), tx, shutdown.clone()).unwrap();
        assert!(!link.is_connected() && !link.is_subscribed());
        let driving = tokio::spawn(driver.run());
        link.wait_ready(WAIT).await.unwrap();
        assert!(link.is_connected() && link.is_subscribed());
        assert_eq!(*link.connection().borrow(), Some(1));

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
                let m = rx.next().await.expect("link stopped").message.clone();
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
        tokio::time::timeout(WAIT, driving)
            .await
            .expect("link did not stop")
            .unwrap();
        assert!(!link.is_connected() && !link.is_subscribed());
        assert_eq!(*link.connection().borrow(), None);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_not_fatal() {
        let (tx, _rx) = crate::ingest::queue::channel();
        let shutdown = CancellationToken::new();
        let mut s = settings("g");
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        s.url = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
        let (link, driver) = BrokerLink::new(&s, tx, shutdown.clone()).unwrap();
        let driving = tokio::spawn(driver.run());
        assert!(matches!(
            link.wait_ready(Duration::from_millis(500)).await,
            Err(Error::Unavailable(_))
        ));
        assert!(!link.is_connected());
        assert!(!driving.is_finished(), "the link gave up");
        shutdown.cancel();
        tokio::time::timeout(WAIT, driving).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refused_subscription_is_asked_for_again_until_granted() {
        let broker = FakeBroker::start(2).await;
        let (tx, _rx) = crate::ingest::queue::channel();
        let shutdown = CancellationToken::new();
        let mut s = settings("g");
        s.url = format!("mqtt://127.0.0.1:{}", broker.port).parse().unwrap();
        let (link, driver) = BrokerLink::new(&s, tx, shutdown.clone()).unwrap();
        let driving = tokio::spawn(driver.run());

        // Refused: connected, but not ready.
        tokio::time::timeout(WAIT, async {
            while broker.subscriptions() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the link never subscribed");
        assert!(link.is_connected());
        assert!(!link.is_subscribed());

        // Asked again (with backoff) until the third request is granted.
        link.wait_ready(WAIT).await.unwrap();
        assert_eq!(broker.subscriptions(), 3);
        assert!(link.is_subscribed());
        shutdown.cancel();
        tokio::time::timeout(WAIT, driving).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_aborted_driver_drops_the_connection_and_its_share_of_uplinks() {
        let group = format!("test{}", uuid::Uuid::new_v4().simple());
        let (tx, _rx) = crate::ingest::queue::channel();
        let (link, driver) =
            BrokerLink::new(&settings(&group), tx, CancellationToken::new()).unwrap();
        let driving = tokio::spawn(driver.run());
        link.wait_ready(WAIT).await.unwrap();

        driving.abort();
        assert!(driving.await.unwrap_err().is_cancelled());
        assert!(!link.is_connected() && !link.is_subscribed());
        assert_only_subscriber_of(&group).await;
    }

    /// Just enough of an MQTT 3.1.1 broker for one client: accepts the connection, refuses the
    /// first `refusals` SUBSCRIBEs and grants the rest, answers pings and unsubscribes.
    struct FakeBroker {
        port: u16,
        subscriptions: Arc<std::sync::atomic::AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeBroker {
        async fn start(refusals: usize) -> FakeBroker {
            use std::sync::atomic::{AtomicUsize, Ordering};
            use tokio::io::{AsyncReadExt, AsyncWriteExt};

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let subscriptions = Arc::new(AtomicUsize::new(0));
            let seen = subscriptions.clone();
            let task = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                loop {
                    let Ok(first) = socket.read_u8().await else {
                        return;
                    };
                    let mut length = 0usize;
                    for shift in (0..4).map(|i| 7 * i) {
                        let byte = socket.read_u8().await.unwrap();
                        length |= usize::from(byte & 0x7f) << shift;
                        if byte & 0x80 == 0 {
                            break;
                        }
                    }
                    let mut body = vec![0u8; length];
                    socket.read_exact(&mut body).await.unwrap();
                    let reply: Vec<u8> = match first >> 4 {
                        1 => vec![0x20, 2, 0, 0], // CONNECT → CONNACK, accepted
                        8 => {
                            // SUBSCRIBE → SUBACK for its packet id
                            let n = seen.fetch_add(1, Ordering::SeqCst);
                            let code = if n < refusals { 0x80 } else { 0x01 };
                            vec![0x90, 3, body[0], body[1], code]
                        }
                        10 => vec![0xb0, 2, body[0], body[1]], // UNSUBSCRIBE → UNSUBACK
                        12 => vec![0xd0, 0],                   // PINGREQ → PINGRESP
                        14 => return,                          // DISCONNECT
                        _ => continue,
                    };
                    socket.write_all(&reply).await.unwrap();
                }
            });
            FakeBroker {
                port,
                subscriptions,
                task,
            }
        }

        fn subscriptions(&self) -> usize {
            self.subscriptions.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for FakeBroker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}
