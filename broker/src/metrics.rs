//! What the broker counts, per broker instance, and its Prometheus text.
//!
//! Counters live in this struct rather than in a process-wide recorder: the demo and the tests
//! run several brokers (and a cloud) in one process, and each broker's `/metrics` must show
//! what that broker did and nothing else.
//!
//! rumqttd's own meters cannot be had here: its router sends them only when its private timer
//! event arrives, which only `rumqttd::Broker::start` schedules, and `Broker` keeps the router's
//! sender to itself (we need that sender for `LinkBuilder::tenant_id`). Every packet passes
//! through the door on its way to and from the router, so the door counts the same figures
//! (connections, subscriptions, publishes in and out) where they happen.

use ecs_telemetry::prometheus::header;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    Device,
    Service,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Device, Listener::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Device => "device",
            Listener::Service => "service",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a device's TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeOutcome {
    Ok,
    /// Not finished within the handshake deadline.
    Timeout,
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate does not chain to our CA, is malformed, or names no valid device.
    BadCertificate,
    Expired,
    Revoked,
    /// Refused before the handshake: too many handshakes in flight (over all, or from the
    /// client's address).
    OverCap,
    /// Refused before the handshake: the listener's connect rate was exceeded.
    RateLimited,
    /// The client hung up, or spoke something other than TLS.
    Aborted,
}

impl HandshakeOutcome {
    pub const ALL: [HandshakeOutcome; 9] = [
        Self::Ok,
        Self::Timeout,
        Self::NoCertificate,
        Self::BadCertificate,
        Self::Expired,
        Self::Revoked,
        Self::OverCap,
        Self::RateLimited,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::NoCertificate => "no_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::OverCap => "over_cap",
            Self::RateLimited => "rate_limited",
            Self::Aborted => "aborted",
        }
    }
}

/// Why a connection was refused or closed after the TLS handshake, by MQTT rules or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// No CONNECT within the deadline.
    ConnectTimeout,
    /// The first packet was not a valid MQTT 3.1.1 CONNECT.
    NotConnect,
    /// The client id is not allowed: not the certificate's device id (devices), or empty with
    /// a persistent session, too long or with `+ $ # /` (services).
    ClientId,
    /// Keep-alive of zero or longer than allowed.
    KeepAlive,
    /// A last will was asked for; the broker keeps none.
    LastWill,
    /// Wrong or missing service username or password.
    NotAuthorized,
    /// The device already holds its cap of connections.
    DeviceConnectionCap,
    /// The device reconnects faster than its rate.
    DeviceConnectRate,
    /// The service listener holds its cap of connections (or of logins under way, over all or
    /// from the client's address).
    ServiceConnectionCap,
    /// The device listener holds its cap of connections.
    DeviceListenerFull,
    /// The router would not take the connection.
    RouterRefused,
}

impl Refused {
    pub const ALL: [Refused; 11] = [
        Self::ConnectTimeout,
        Self::NotConnect,
        Self::ClientId,
        Self::KeepAlive,
        Self::LastWill,
        Self::NotAuthorized,
        Self::DeviceConnectionCap,
        Self::DeviceConnectRate,
        Self::ServiceConnectionCap,
        Self::DeviceListenerFull,
        Self::RouterRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectTimeout => "connect_timeout",
            Self::NotConnect => "not_connect",
            Self::ClientId => "client_id",
            Self::KeepAlive => "keep_alive",
            Self::LastWill => "last_will",
            Self::NotAuthorized => "not_authorized",
            Self::DeviceConnectionCap => "device_connection_cap",
            Self::DeviceConnectRate => "device_connect_rate",
            Self::ServiceConnectionCap => "service_connection_cap",
            Self::DeviceListenerFull => "device_listener_full",
            Self::RouterRefused => "router_refused",
        }
    }
}

/// A device packet our access rules do not allow; the connection is closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// A publish anywhere but the device's own uplink topic.
    PublishTopic,
    /// A subscription to anything but the device's own downlink topic.
    SubscribeFilter,
    /// QoS 2, which the protocol does not use.
    Qos,
    /// A retained publish: it would pin memory in the broker for good.
    Retain,
    /// A payload over the protocol's message limit.
    PayloadSize,
    /// A packet that has no place in a session (a second CONNECT, QoS 2 flow packets).
    Packet,
    /// Bytes that do not parse as MQTT, or a packet over the size limit.
    Malformed,
}

impl Violation {
    pub const ALL: [Violation; 7] = [
        Self::PublishTopic,
        Self::SubscribeFilter,
        Self::Qos,
        Self::Retain,
        Self::PayloadSize,
        Self::Packet,
        Self::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PublishTopic => "publish_topic",
            Self::SubscribeFilter => "subscribe_filter",
            Self::Qos => "qos",
            Self::Retain => "retain",
            Self::PayloadSize => "payload_size",
            Self::Packet => "packet",
            Self::Malformed => "malformed",
        }
    }
}

/// Upper bounds of the handshake duration histogram, in seconds.
const HANDSHAKE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; HANDSHAKE_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, to stay an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(HANDSHAKE_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }
}

/// Traffic counters of one live connection, for the top talkers.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

#[derive(Debug)]
struct LiveSession {
    listener: Listener,
    client: String,
    peer: String,
    since: SystemTime,
    traffic: Arc<Traffic>,
}

/// Everything one broker counts.
#[derive(Debug)]
pub struct BrokerMetrics {
    started: Instant,
    connections: [AtomicI64; 2],
    connections_total: [AtomicU64; 2],
    subscriptions: [AtomicI64; 2],
    messages_in: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
    messages_out: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    handshakes: [AtomicU64; HandshakeOutcome::ALL.len()],
    handshakes_in_flight: AtomicI64,
    handshake_seconds: Histogram,
    refused: [[AtomicU64; Refused::ALL.len()]; 2],
    violations: [AtomicU64; Violation::ALL.len()],
    revoked_devices: AtomicI64,
    revocation_disconnects: AtomicU64,
    accepting: [AtomicI64; 2],
    sessions: Mutex<HashMap<u64, LiveSession>>,
    next_session: AtomicU64,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            connections: Default::default(),
            connections_total: Default::default(),
            subscriptions: Default::default(),
            messages_in: Default::default(),
            bytes_in: Default::default(),
            messages_out: Default::default(),
            bytes_out: Default::default(),
            handshakes: Default::default(),
            handshakes_in_flight: AtomicI64::new(0),
            handshake_seconds: Histogram::default(),
            refused: Default::default(),
            violations: Default::default(),
            revoked_devices: AtomicI64::new(0),
            revocation_disconnects: AtomicU64::new(0),
            accepting: Default::default(),
            sessions: Mutex::default(),
            next_session: AtomicU64::new(0),
        }
    }
}

fn index_of<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter().position(|v| v == value).unwrap_or(0)
}

/// A live connection as the metrics see it; dropping it removes it from the gauges.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    metrics: Arc<BrokerMetrics>,
    id: u64,
    listener: Listener,
    pub(crate) traffic: Arc<Traffic>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.listener.index()].fetch_sub(1, Relaxed);
        self.metrics.lock_sessions().remove(&self.id);
    }
}

impl BrokerMetrics {
    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn handshake(&self, outcome: HandshakeOutcome) {
        self.handshakes[index_of(&HandshakeOutcome::ALL, &outcome)].fetch_add(1, Relaxed);
    }

    pub(crate) fn handshake_took(&self, took: Duration) {
        self.handshake_seconds.observe(took);
    }

    pub(crate) fn handshakes_in_flight(&self, delta: i64) {
        self.handshakes_in_flight.fetch_add(delta, Relaxed);
    }

    pub(crate) fn refused(&self, listener: Listener, reason: Refused) {
        self.refused[listener.index()][index_of(&Refused::ALL, &reason)].fetch_add(1, Relaxed);
    }

    pub(crate) fn violation(&self, violation: Violation) {
        self.violations[index_of(&Violation::ALL, &violation)].fetch_add(1, Relaxed);
    }

    pub(crate) fn subscriptions(&self, listener: Listener, delta: i64) {
        self.subscriptions[listener.index()].fetch_add(delta, Relaxed);
    }

    pub(crate) fn message_in(&self, listener: Listener, traffic: &Traffic, bytes: usize) {
        let bytes = bytes as u64;
        self.messages_in[listener.index()].fetch_add(1, Relaxed);
        self.bytes_in[listener.index()].fetch_add(bytes, Relaxed);
        traffic.messages_in.fetch_add(1, Relaxed);
        traffic.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn message_out(&self, listener: Listener, traffic: &Traffic, bytes: usize) {
        let bytes = bytes as u64;
        self.messages_out[listener.index()].fetch_add(1, Relaxed);
        self.bytes_out[listener.index()].fetch_add(bytes, Relaxed);
        traffic.messages_out.fetch_add(1, Relaxed);
        traffic.bytes_out.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn revoked_devices(&self, count: usize) {
        self.revoked_devices
            .store(i64::try_from(count).unwrap_or(i64::MAX), Relaxed);
    }

    pub(crate) fn revocation_disconnects(&self, count: usize) {
        self.revocation_disconnects.fetch_add(count as u64, Relaxed);
    }

    pub(crate) fn accepting(&self, listener: Listener, accepting: bool) {
        self.accepting[listener.index()].store(i64::from(accepting), Relaxed);
    }

    /// Registers a connection that passed CONNECT.
    pub(crate) fn session(
        self: &Arc<Self>,
        listener: Listener,
        client: &str,
        peer: std::net::SocketAddr,
    ) -> SessionGuard {
        self.connections[listener.index()].fetch_add(1, Relaxed);
        self.connections_total[listener.index()].fetch_add(1, Relaxed);
        let id = self.next_session.fetch_add(1, Relaxed);
        let traffic = Arc::new(Traffic::default());
        self.lock_sessions().insert(
            id,
            LiveSession {
                listener,
                client: client.to_owned(),
                peer: peer.to_string(),
                since: SystemTime::now(),
                traffic: Arc::clone(&traffic),
            },
        );
        SessionGuard {
            metrics: Arc::clone(self),
            id,
            listener,
            traffic,
        }
    }

    /// Connections held now through `listener`.
    pub fn connections(&self, listener: Listener) -> i64 {
        self.connections[listener.index()].load(Relaxed)
    }

    /// Handshakes that ended with `outcome` so far.
    pub fn handshakes(&self, outcome: HandshakeOutcome) -> u64 {
        self.handshakes[index_of(&HandshakeOutcome::ALL, &outcome)].load(Relaxed)
    }

    /// Connections refused for `reason` so far.
    pub fn refusals(&self, listener: Listener, reason: Refused) -> u64 {
        self.refused[listener.index()][index_of(&Refused::ALL, &reason)].load(Relaxed)
    }

    /// Access-rule violations of `kind` so far.
    pub fn violations(&self, kind: Violation) -> u64 {
        self.violations[index_of(&Violation::ALL, &kind)].load(Relaxed)
    }

    /// Messages received through `listener` so far.
    pub fn messages_in(&self, listener: Listener) -> u64 {
        self.messages_in[listener.index()].load(Relaxed)
    }

    /// Messages delivered through `listener` so far.
    pub fn messages_out(&self, listener: Listener) -> u64 {
        self.messages_out[listener.index()].load(Relaxed)
    }

    /// The Prometheus text exposition of everything above.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let per_listener = |out: &mut String,
                            name: &str,
                            kind: &str,
                            help: &str,
                            get: &dyn Fn(usize) -> String| {
            header(out, name, kind, help);
            for listener in Listener::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\"}} {}",
                    listener.as_str(),
                    get(listener.index())
                );
            }
        };
        per_listener(
            &mut out,
            "ecs_broker_connections",
            "gauge",
            "Connections held (past CONNECT).",
            &|i| self.connections[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_connections_total",
            "counter",
            "Connections accepted (past CONNECT).",
            &|i| self.connections_total[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_subscriptions",
            "gauge",
            "Subscription filters held by live connections.",
            &|i| self.subscriptions[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_messages_in_total",
            "counter",
            "PUBLISH packets received from clients.",
            &|i| self.messages_in[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_bytes_in_total",
            "counter",
            "Payload bytes received from clients.",
            &|i| self.bytes_in[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_messages_out_total",
            "counter",
            "PUBLISH packets delivered to clients.",
            &|i| self.messages_out[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_bytes_out_total",
            "counter",
            "Payload bytes delivered to clients.",
            &|i| self.bytes_out[i].load(Relaxed).to_string(),
        );
        per_listener(
            &mut out,
            "ecs_broker_listener_up",
            "gauge",
            "1 while the listener's accept loop runs.",
            &|i| self.accepting[i].load(Relaxed).to_string(),
        );

        header(
            &mut out,
            "ecs_broker_handshakes_total",
            "counter",
            "Device TLS handshakes by outcome.",
        );
        for outcome in HandshakeOutcome::ALL {
            let _ = writeln!(
                out,
                "ecs_broker_handshakes_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                self.handshakes(outcome)
            );
        }
        header(
            &mut out,
            "ecs_broker_handshakes_in_flight",
            "gauge",
            "Device TLS handshakes under way.",
        );
        let _ = writeln!(
            out,
            "ecs_broker_handshakes_in_flight {}",
            self.handshakes_in_flight.load(Relaxed)
        );

        let h = &self.handshake_seconds;
        header(
            &mut out,
            "ecs_broker_handshake_duration_seconds",
            "histogram",
            "Duration of successful device TLS handshakes.",
        );
        for (bucket, bound) in h.buckets.iter().zip(HANDSHAKE_BUCKETS) {
            let _ = writeln!(
                out,
                "ecs_broker_handshake_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(
            out,
            "ecs_broker_handshake_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "ecs_broker_handshake_duration_seconds_sum {}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "ecs_broker_handshake_duration_seconds_count {count}");

        header(
            &mut out,
            "ecs_broker_refused_total",
            "counter",
            "Connections refused or closed at CONNECT, by listener and reason.",
        );
        for listener in Listener::ALL {
            for reason in Refused::ALL {
                let _ = writeln!(
                    out,
                    "ecs_broker_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    listener.as_str(),
                    reason.as_str(),
                    self.refusals(listener, reason)
                );
            }
        }
        header(
            &mut out,
            "ecs_broker_acl_violations_total",
            "counter",
            "Device packets against the access rules (each closes its connection).",
        );
        for kind in Violation::ALL {
            let _ = writeln!(
                out,
                "ecs_broker_acl_violations_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.violations(kind)
            );
        }
        header(
            &mut out,
            "ecs_broker_revoked_devices",
            "gauge",
            "Devices on the revocation list.",
        );
        let _ = writeln!(
            out,
            "ecs_broker_revoked_devices {}",
            self.revoked_devices.load(Relaxed)
        );
        header(
            &mut out,
            "ecs_broker_revocation_disconnects_total",
            "counter",
            "Connections closed because their device was revoked.",
        );
        let _ = writeln!(
            out,
            "ecs_broker_revocation_disconnects_total {}",
            self.revocation_disconnects.load(Relaxed)
        );
        header(
            &mut out,
            "ecs_broker_uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
        );
        let _ = writeln!(
            out,
            "ecs_broker_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        out
    }

    /// A snapshot for `ecs-broker status`: the totals and the `top` connections by bytes in.
    pub fn status(&self, top: usize) -> Status {
        let mut talkers: Vec<Talker> = self
            .lock_sessions()
            .values()
            .map(|s| Talker {
                listener: s.listener,
                client: s.client.clone(),
                peer: s.peer.clone(),
                connected_for_s: s.since.elapsed().map_or(0, |d| d.as_secs()),
                messages_in: s.traffic.messages_in.load(Relaxed),
                bytes_in: s.traffic.bytes_in.load(Relaxed),
                messages_out: s.traffic.messages_out.load(Relaxed),
                bytes_out: s.traffic.bytes_out.load(Relaxed),
            })
            .collect();
        talkers.sort_by(|a, b| {
            b.bytes_in
                .cmp(&a.bytes_in)
                .then(b.messages_in.cmp(&a.messages_in))
        });
        talkers.truncate(top);
        let listeners = Listener::ALL
            .iter()
            .map(|l| ListenerStatus {
                listener: *l,
                up: self.accepting[l.index()].load(Relaxed) == 1,
                connections: self.connections(*l),
                messages_in: self.messages_in(*l),
                bytes_in: self.bytes_in[l.index()].load(Relaxed),
                messages_out: self.messages_out(*l),
                bytes_out: self.bytes_out[l.index()].load(Relaxed),
                refused: Refused::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), self.refusals(*l, *r)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
            })
            .collect();
        Status {
            uptime_s: self.started.elapsed().as_secs(),
            listeners,
            handshakes: HandshakeOutcome::ALL
                .iter()
                .map(|o| (o.as_str().to_owned(), self.handshakes(*o)))
                .collect(),
            handshakes_in_flight: self.handshakes_in_flight.load(Relaxed),
            acl_violations: Violation::ALL
                .iter()
                .map(|v| (v.as_str().to_owned(), self.violations(*v)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            revoked_devices: self.revoked_devices.load(Relaxed),
            top_talkers: talkers,
        }
    }
}

/// The broker's state as `GET /status` serves it (JSON).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    pub uptime_s: u64,
    pub listeners: Vec<ListenerStatus>,
    pub handshakes: Vec<(String, u64)>,
    pub handshakes_in_flight: i64,
    pub acl_violations: Vec<(String, u64)>,
    pub revoked_devices: i64,
    pub top_talkers: Vec<Talker>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ListenerStatus {
    pub listener: Listener,
    pub up: bool,
    pub connections: i64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub refused: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Talker {
    pub listener: Listener,
    pub client: String,
    pub peer: String,
    pub connected_for_s: u64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_every_outcome_and_counts() {
        let metrics = Arc::new(BrokerMetrics::default());
        metrics.handshake(HandshakeOutcome::Timeout);
        metrics.handshake(HandshakeOutcome::Timeout);
        metrics.refused(Listener::Service, Refused::NotAuthorized);
        metrics.handshake_took(Duration::from_millis(3));
        let session = metrics.session(Listener::Device, "phone1", "127.0.0.1:5".parse().unwrap());
        metrics.message_in(Listener::Device, &session.traffic, 100);
        let text = metrics.render();
        assert!(
            text.contains("ecs_broker_handshakes_total{outcome=\"timeout\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "ecs_broker_refused_total{listener=\"service\",reason=\"not_authorized\"} 1"
        ));
        assert!(text.contains("ecs_broker_connections{listener=\"device\"} 1"));
        assert!(text.contains("ecs_broker_bytes_in_total{listener=\"device\"} 100"));
        assert!(text.contains("ecs_broker_handshake_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("ecs_broker_handshake_duration_seconds_bucket{le=\"0.001\"} 0"));
        let status = metrics.status(10);
        assert_eq!(status.top_talkers[0].client, "phone1");
        drop(session);
        assert_eq!(metrics.connections(Listener::Device), 0);
        assert!(metrics.status(10).top_talkers.is_empty());
    }
}
