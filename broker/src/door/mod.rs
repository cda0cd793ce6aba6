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
//!   TCP connection, checks the listener's caps and connect rate, and hands the connection to a
//!   task of its own on the multi-threaded runtime. A connection over a cap is closed at once.
//! * **Handshake** (devices): TLS with our rustls configuration ([`crate::tls`]), a client
//!   certificate chained to our CA and not revoked, within a deadline, a bounded number at once.
//!   The device id comes from the verified certificate.
//! * **CONNECT and session** ([`session`]): the client id must be the certificate's device id
//!   (services: username and password, with guessing throttled per address), keep-alive sane,
//!   no last will, the device's own cap of connections and reconnect rate; then the connection
//!   is registered with the router as that device's tenant, and every packet passes our exact
//!   access rules ([`acl`]) and per-device rates on its way in.
//!
//! Every refusal is logged as JSON with the peer address (and the device or client id once
//! known) and counted in [`crate::metrics`].

pub(crate) mod acl;
pub(crate) mod limits;
mod session;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttd::protocol::Login;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::credentials::{GuessThrottle, ServiceCredentials};
use crate::metrics::{BrokerMetrics, HandshakeOutcome, Listener, Refused};
use crate::router::RouterHandle;
use crate::settings::BrokerSettings;
use crate::tls::{TlsStore, device_of_certificate};
use limits::{DeviceLimits, DeviceRegistry, TokenBucket};
use session::Peer;

/// How long a write to a client may take before the client counts as gone: one that does not
/// read must not hold its session (and the router's buffers) for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Router registrations under way at once (each holds a blocking thread for a moment).
const LINK_BUILDS: usize = 16;
/// A device may reconnect this many times in a burst before its connect rate applies.
const DEVICE_CONNECT_BURST: f64 = 10.0;

/// What every connection through the doors shares.
pub(crate) struct Door {
    pub(crate) metrics: Arc<BrokerMetrics>,
    pub(crate) router: RouterHandle,
    pub(crate) tls: Arc<TlsStore>,
    pub(crate) devices: DeviceRegistry,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) probes: Probes,
    credentials: ServiceCredentials,
    guesses: GuessThrottle,
    connect_rate: Mutex<TokenBucket>,
    handshakes: Arc<Semaphore>,
    handshakes_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_handshakes_per_ip: usize,
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
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            metrics,
            router,
            tls,
            devices: DeviceRegistry::new(DeviceLimits {
                max_connections: settings.max_connections_per_device,
                connect_rate: settings.device_connect_rate,
                connect_burst: DEVICE_CONNECT_BURST,
            }),
            shutdown,
            tasks: TaskTracker::new(),
            probes: Probes::default(),
            credentials: ServiceCredentials::new(
                settings.service_username.clone(),
                service_password,
            ),
            guesses: GuessThrottle::default(),
            connect_rate: Mutex::new(TokenBucket::new(
                settings.connect_rate,
                settings.connect_rate,
                now,
            )),
            handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
            handshakes_by_ip: Arc::default(),
            max_handshakes_per_ip: settings.max_handshakes_per_ip,
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

    /// Checks a service's login; the refusal to count when it fails.
    fn check_login(&self, addr: SocketAddr, login: Option<&Login>) -> Result<(), Refused> {
        let now = Instant::now();
        // A throttled address is refused before its password is looked at, so it learns
        // nothing from the answer.
        if !self.guesses.may_try(addr.ip(), now) {
            return Err(Refused::GuessThrottled);
        }
        let accepted = login.is_some_and(|login| {
            self.credentials
                .check(&login.username, login.password.as_bytes())
        });
        if accepted {
            Ok(())
        } else {
            self.guesses.failed(addr.ip(), now);
            Err(Refused::NotAuthorized)
        }
    }

    /// A handshake slot for a connection from `ip`: one of the listener's, and one of the
    /// address's, so one address cannot take every slot.
    fn handshake_slot(&self, ip: IpAddr) -> Result<HandshakeSlot, &'static str> {
        let global = Arc::clone(&self.handshakes)
            .try_acquire_owned()
            .map_err(|_| "handshakes in flight")?;
        let mut by_ip = self
            .handshakes_by_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.max_handshakes_per_ip {
            return Err("handshakes in flight from this address");
        }
        *count += 1;
        Ok(HandshakeSlot {
            _global: global,
            ip,
            by_ip: Arc::clone(&self.handshakes_by_ip),
        })
    }

    fn take_connect_token(&self) -> bool {
        self.connect_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(1.0, Instant::now())
    }
}

/// A handshake under way: its slot in the listener's cap and in its address's.
struct HandshakeSlot {
    _global: tokio::sync::OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts device connections until shutdown.
pub(crate) async fn accept_devices(door: Arc<Door>, listener: TcpListener) {
    door.metrics.accepting(Listener::Device, true);
    loop {
        let (stream, addr) = tokio::select! {
            () = door.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, mostly: pause instead of spinning.
                    tracing::error!(%error, "device listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if door.probes.arrived(addr) {
            continue;
        }
        let refuse = |outcome: HandshakeOutcome, why: &str| {
            door.metrics.handshake(outcome);
            tracing::warn!(peer = %addr, outcome = outcome.as_str(), why, "device connection refused before the handshake");
        };
        if !door.take_connect_token() {
            refuse(HandshakeOutcome::RateLimited, "connect rate");
            continue;
        }
        // Unauthenticated connections hold only a handshake slot; a connection slot is
        // taken once the certificate says which device it is.
        let handshake = match door.handshake_slot(addr.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(HandshakeOutcome::OverCap, why);
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
    permit: HandshakeSlot,
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
    drop(permit);
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
            let level_warn = !matches!(outcome, HandshakeOutcome::Aborted);
            if level_warn {
                tracing::warn!(peer = %addr, outcome = outcome.as_str(), "device TLS handshake failed");
            } else {
                tracing::debug!(peer = %addr, outcome = outcome.as_str(), "device TLS handshake aborted");
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
        Some(_) => HandshakeOutcome::Aborted,
        None => HandshakeOutcome::Aborted,
    }
}

/// Accepts service connections until shutdown: plain TCP, then CONNECT with a password.
pub(crate) async fn accept_services(door: Arc<Door>, listener: TcpListener) {
    door.metrics.accepting(Listener::Service, true);
    loop {
        let (stream, addr) = tokio::select! {
            () = door.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::error!(%error, "service listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&door.service_slots).try_acquire_owned() else {
            door.metrics
                .refused(Listener::Service, Refused::ServiceConnectionCap);
            tracing::warn!(peer = %addr, "service connection refused: the service listener is full");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = Arc::clone(&door);
        let tasks = door.tasks.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let span = tracing::info_span!("service_session", peer = %addr);
            session::run(door, stream, addr, Peer::Service)
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
