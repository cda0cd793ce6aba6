//! The broker's doors: our own accept paths for devices and services, in front of rumqttd's
//! router.
//!
//! rumqttd 0.20's servers handshake TLS inside the accept loop, one connection at a time and
//! with no deadline, on a single thread; a refused CONNECT leaves state behind that makes the
//! next CONNECT with the same client id panic under a lock and poison the listener; its limits
//! are checked only after CONNECT. So the doors are ours, and rumqttd keeps only what it is good
//! at, routing:
//!
//! * **Accept** ([`accept_devices`], [`accept_services`]) never waits on a client: it takes the
//!   TCP connection, checks the connect rates (the address's, then the listener's) and the slots
//!   for what comes next (over all and per address), and hands the connection to a task of its
//!   own on the multi-threaded runtime. A connection over a cap is closed at once.
//! * **Handshake** (devices): TLS with our rustls configuration ([`crate::tls`]), a client
//!   certificate chained to our CA and not revoked, within a deadline, a bounded number at once.
//!   The device id comes from the verified certificate.
//! * **CONNECT and session** ([`session`]): the client id must be the certificate's device id
//!   (services: username and password; a wrong one is answered only after a delay), keep-alive sane,
//!   no last will, the device's own cap of connections and reconnect rate; then the connection
//!   is registered with the router as that device's tenant, and every packet passes our exact
//!   access rules ([`acl`]) and per-device rates on its way in.
//!
//! Every refusal is logged as JSON with the peer address (and the device or client id once
//! known) and counted in [`crate::metrics`].

pub(crate) mod acl;
mod claims;
pub(crate) mod limits;
mod session;
mod wire;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttd::protocol::Login;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::credentials::ServiceCredentials;
use crate::metrics::{BrokerMetrics, HandshakeOutcome, Listener, Refused};
use crate::revocation::Denylist;
use crate::router::RouterHandle;
use crate::settings::BrokerSettings;
use crate::tls::{TlsStore, device_of_certificate};
use claims::Claims;
use limits::{AddressRates, AddressSlot, AddressSlots, DeviceLimits, DeviceRegistry, TokenBucket};
use session::Peer;

/// How long a write to a client may take before the client counts as gone: one that does not
/// read must not hold its session (and the router's buffers) for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Router registrations under way at once (each holds a blocking thread for a moment).
const LINK_BUILDS: usize = 16;
/// A device may reconnect this many times in a burst before its connect rate applies.
const DEVICE_CONNECT_BURST: f64 = 10.0;
/// How long a wrong service password waits for its answer. With logins under way capped per
/// address ([`SERVICE_LOGINS_PER_IP`]), one address guesses at most that many times a second,
/// which against the enforced password strength (about 64 bits at least) is no attack at all.
/// The right password is never delayed and never refused for others' guesses.
pub(crate) const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);
/// Service connections before their login, per address and over all.
const SERVICE_LOGINS_PER_IP: usize = 8;
const SERVICE_LOGINS: usize = 64;

/// What every connection through the doors shares.
pub(crate) struct Door {
    pub(crate) metrics: Arc<BrokerMetrics>,
    pub(crate) router: RouterHandle,
    pub(crate) tls: Arc<TlsStore>,
    pub(crate) denylist: Denylist,
    pub(crate) devices: DeviceRegistry,
    pub(crate) claims: Claims,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) probes: Probes,
    pub(crate) connect_rates: AddressRates,
    credentials: ServiceCredentials,
    connect_rate: Mutex<TokenBucket>,
    handshakes: AddressSlots,
    service_logins: AddressSlots,
    device_slots: Arc<Semaphore>,
    service_slots: Arc<Semaphore>,
    link_builds: Semaphore,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    write_timeout: Duration,
    device_message_rate: f64,
    device_byte_rate: f64,
}

impl Door {
    pub(crate) fn new(
        settings: &BrokerSettings,
        service_password: &crate::settings::Secret,
        metrics: Arc<BrokerMetrics>,
        router: RouterHandle,
        tls: Arc<TlsStore>,
        denylist: Denylist,
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            metrics,
            router,
            tls,
            denylist,
            devices: DeviceRegistry::new(DeviceLimits {
                max_connections: settings.max_connections_per_device,
                connect_rate: settings.device_connect_rate,
                connect_burst: DEVICE_CONNECT_BURST,
            }),
            claims: Claims::default(),
            shutdown,
            tasks: TaskTracker::new(),
            probes: Probes::default(),
            connect_rates: AddressRates::new(
                settings.connect_rate_per_ip,
                settings.connect_rate_per_ip,
                limits::MAX_RATED_ADDRESSES,
            ),
            credentials: ServiceCredentials::new(
                settings.service_username.clone(),
                service_password,
            ),
            connect_rate: Mutex::new(TokenBucket::new(
                settings.connect_rate,
                settings.connect_rate,
                now,
            )),
            handshakes: AddressSlots::new(settings.max_handshakes, settings.max_handshakes_per_ip),
            service_logins: AddressSlots::new(SERVICE_LOGINS, SERVICE_LOGINS_PER_IP),
            device_slots: Arc::new(Semaphore::new(settings.max_device_connections)),
            service_slots: Arc::new(Semaphore::new(settings.max_service_connections)),
            link_builds: Semaphore::new(LINK_BUILDS),
            handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            write_timeout: WRITE_TIMEOUT,
            device_message_rate: settings.device_message_rate,
            device_byte_rate: settings.device_byte_rate,
        }
    }

    /// Whether `login` is the service username and password (compared in constant time).
    fn check_login(&self, login: Option<&Login>) -> bool {
        login.is_some_and(|login| {
            self.credentials
                .check(&login.username, login.password.as_bytes())
        })
    }

    /// A new device connection from `ip` within the connect rates: the address's first, so a
    /// flooding address does not spend everyone's budget.
    fn may_connect(&self, ip: std::net::IpAddr) -> Result<(), &'static str> {
        let now = Instant::now();
        if !self.connect_rates.try_take(&ip, now) {
            return Err("connect rate of this address");
        }
        let global = self
            .connect_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(1.0, now);
        if global { Ok(()) } else { Err("connect rate") }
    }

    /// A service connection's slot, once it has logged in.
    fn service_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.service_slots).try_acquire_owned().ok()
    }
}

/// The next TCP connection, or `None` at shutdown. An accept error (out of file descriptors,
/// mostly) pauses the loop instead of letting it spin.
async fn next_connection(
    door: &Door,
    listener: &TcpListener,
    which: Listener,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = door.shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    tracing::error!(%error, listener = which.as_str(), "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Accepts device connections until shutdown.
pub(crate) async fn accept_devices(door: Arc<Door>, listener: TcpListener) {
    door.metrics.accepting(Listener::Device, true);
    while let Some((stream, addr)) = next_connection(&door, &listener, Listener::Device).await {
        if door.probes.arrived(addr) {
            continue;
        }
        let refuse = |outcome: HandshakeOutcome, why: &str| {
            door.metrics.handshake(outcome);
            tracing::warn!(peer = %addr, outcome = outcome.as_str(), why, "device connection refused before the handshake");
        };
        if let Err(why) = door.may_connect(addr.ip()) {
            refuse(HandshakeOutcome::RateLimited, why);
            continue;
        }
        // Unauthenticated connections hold only a handshake slot; a connection slot is
        // taken once the certificate says which device it is.
        let handshake = match door.handshakes.try_take(addr.ip()) {
            Ok(slot) => slot,
            Err(limits::SlotRefusal::Total) => {
                refuse(HandshakeOutcome::OverCap, "handshakes in flight");
                continue;
            }
            Err(limits::SlotRefusal::Address) => {
                refuse(
                    HandshakeOutcome::OverCap,
                    "handshakes in flight from this address",
                );
                continue;
            }
        };
        let door = Arc::clone(&door);
        let tasks = door.tasks.clone();
        tasks.spawn(async move {
            let Some((tls, device)) = handshake_device(&door, stream, addr, handshake).await else {
                return;
            };
            let Ok(_slot) = Arc::clone(&door.device_slots).try_acquire_owned() else {
                door.metrics.refused(Listener::Device, Refused::DeviceListenerFull);
                tracing::warn!(peer = %addr, device_id = %device, "device connection refused: the device listener is full");
                return;
            };
            let registration = match door.devices.register(&device, Instant::now()) {
                Ok(registration) => registration,
                Err(refusal) => {
                    let reason = match refusal {
                        limits::Refusal::TooManyConnections => Refused::DeviceConnectionCap,
                        limits::Refusal::RateLimited => Refused::DeviceConnectRate,
                    };
                    door.metrics.refused(Listener::Device, reason);
                    tracing::warn!(peer = %addr, device_id = %device, reason = reason.as_str(), "device connection refused");
                    return;
                }
            };
            // Revoked between its handshake and its registration: a revocation closes the
            // registered connections, and this one registered after the list grew.
            if door.denylist.contains(&device) {
                door.metrics.handshake(HandshakeOutcome::Revoked);
                tracing::warn!(peer = %addr, device_id = %device, "device connection refused: revoked");
                return;
            }
            let span = tracing::info_span!("device_session", peer = %addr, device_id = %device);
            session::run(door, tls, addr, Peer::Device(device, registration))
                .instrument(span)
                .await;
        });
    }
    door.metrics.accepting(Listener::Device, false);
}

/// The TLS handshake of one device, within the deadline; the stream and the verified device.
async fn handshake_device(
    door: &Door,
    stream: TcpStream,
    addr: SocketAddr,
    slot: AddressSlot,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    ecs_protocol::DeviceId,
)> {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    door.metrics.handshakes_in_flight(1);
    let acceptor = tokio_rustls::TlsAcceptor::from(door.tls.config());
    let accept = acceptor
        .accept(stream)
        .instrument(tracing::info_span!("device_handshake", peer = %addr));
    let result = tokio::select! {
        () = door.shutdown.cancelled() => None,
        r = tokio::time::timeout(door.handshake_timeout, accept) => Some(r),
    };
    door.metrics.handshakes_in_flight(-1);
    drop(slot);
    let outcome = match result? {
        Err(_) => Err(HandshakeOutcome::Timeout),
        Ok(Err(error)) => Err(classify(&error)),
        Ok(Ok(tls)) => {
            let device = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(device_of_certificate);
            match device {
                Some(device) => Ok((tls, device)),
                // The verifier already refuses these; a second check costs nothing.
                None => Err(HandshakeOutcome::BadCertificate),
            }
        }
    };
    match outcome {
        Ok((tls, device)) => {
            door.metrics.handshake(HandshakeOutcome::Ok);
            door.metrics.handshake_took(started.elapsed());
            Some((tls, device))
        }
        Err(outcome) => {
            door.metrics.handshake(outcome);
            if matches!(outcome, HandshakeOutcome::Aborted) {
                tracing::debug!(peer = %addr, outcome = outcome.as_str(), "device TLS handshake aborted");
            } else {
                tracing::warn!(peer = %addr, outcome = outcome.as_str(), "device TLS handshake failed");
            }
            None
        }
    }
}

/// Names a failed handshake by what an operator would fix.
fn classify(error: &std::io::Error) -> HandshakeOutcome {
    use rustls::{CertificateError, Error as Tls};
    match error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
        Some(Tls::NoCertificatesPresented) => HandshakeOutcome::NoCertificate,
        Some(Tls::InvalidCertificate(CertificateError::Revoked)) => HandshakeOutcome::Revoked,
        Some(Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => HandshakeOutcome::Expired,
        Some(Tls::InvalidCertificate(_)) => HandshakeOutcome::BadCertificate,
        Some(_) | None => HandshakeOutcome::Aborted,
    }
}

/// Accepts service connections until shutdown: plain TCP, then CONNECT with a password.
pub(crate) async fn accept_services(door: Arc<Door>, listener: TcpListener) {
    door.metrics.accepting(Listener::Service, true);
    while let Some((stream, addr)) = next_connection(&door, &listener, Listener::Service).await {
        // Before its login a connection holds only a login slot, capped per address: idle
        // sockets from one address cannot fill the listener.
        let Ok(login) = door.service_logins.try_take(addr.ip()) else {
            door.metrics
                .refused(Listener::Service, Refused::ServiceConnectionCap);
            tracing::warn!(peer = %addr, "service connection refused: too many logins under way");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = Arc::clone(&door);
        let tasks = door.tasks.clone();
        tasks.spawn(async move {
            let span = tracing::info_span!("service_session", peer = %addr);
            session::run(door, stream, addr, Peer::Service { login: Some(login) })
                .instrument(span)
                .await;
        });
    }
    door.metrics.accepting(Listener::Service, false);
}

/// Liveness probes of the device listener: the admin endpoint connects from a known address
/// and waits for the accept loop to see it, which proves the loop is accepting.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    expected: Mutex<HashSet<SocketAddr>>,
    seen: Notify,
}

impl Probes {
    /// True when `addr` is a probe's: it is marked seen and not served.
    fn arrived(&self, addr: SocketAddr) -> bool {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        let probe = expected.remove(&addr);
        if probe {
            self.seen.notify_waiters();
        }
        probe
    }

    /// Connects to `device_addr` and waits until the accept loop has taken the connection.
    pub(crate) async fn probe(&self, device_addr: SocketAddr, wait: Duration) -> bool {
        let socket = match device_addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let Ok(socket) = socket else { return false };
        let local = SocketAddr::new(device_addr.ip(), 0);
        if socket.bind(local).is_err() {
            return false;
        }
        let Ok(local) = socket.local_addr() else {
            return false;
        };
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(local);
        let check = async {
            let _stream = socket.connect(device_addr).await.ok()?;
            loop {
                let seen = self.seen.notified();
                if !self
                    .expected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&local)
                {
                    return Some(());
                }
                seen.await;
            }
        };
        let ok = tokio::time::timeout(wait, check)
            .await
            .ok()
            .flatten()
            .is_some();
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&local);
        ok
    }
}
