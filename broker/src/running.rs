//! Starting the broker, knowing whether it still runs, and stopping it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::door::{self, Door};
use crate::error::{Error, Result};
use crate::metrics::BrokerMetrics;
use crate::revocation::{self, Denylist};
use crate::router::RouterHandle;
use crate::settings::BrokerSettings;
use crate::tls::{TlsFiles, TlsStore};

/// Kept for callers that waited for readiness: the listeners are bound before
/// [`RunningBroker::start`] returns, so nothing waits this long any more.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the TLS files are checked for changes.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// How often idle device entries (connect-rate state) are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long [`RunningBroker::stop`] waits for connections to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Router links beyond the listeners' caps: the broker's own revocation link.
const INTERNAL_LINKS: usize = 1;

/// A broker running on its own threads in this process: a multi-threaded runtime for the doors
/// and the admin endpoint, and rumqttd's router thread.
///
/// Dropping the handle, or [`RunningBroker::stop`], closes the listeners and every connection.
/// rumqttd's router thread cannot be stopped: it stays, idle, until the process exits.
///
/// Nothing the broker holds survives it: sessions, subscriptions and undelivered messages live
/// only in memory (see the `router` module for the limits).
#[derive(Debug)]
pub struct RunningBroker {
    device_addr: SocketAddr,
    service_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<BrokerMetrics>,
    denylist: Denylist,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<String>>,
}

impl RunningBroker {
    /// Validates `settings`, loads the TLS files, binds every listener and starts the broker.
    /// When it returns, the listeners accept connections.
    pub fn start(settings: &BrokerSettings) -> Result<Self> {
        settings.validate()?;
        let password = settings.service_password()?;
        let denylist = Denylist::default();
        let tls = Arc::new(TlsStore::load(
            TlsFiles {
                ca: settings.tls_ca_file.clone(),
                cert: settings.tls_cert_file.clone(),
                key: settings.tls_key_file.clone(),
            },
            denylist.clone(),
        )?);
        let bind = |addr: SocketAddr| {
            let listener =
                TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| Error::Bind { addr, source })?;
            Ok::<_, Error>(listener)
        };
        let device = bind(settings.device_addr)?;
        let service = bind(settings.service_addr)?;
        let admin = settings.admin_addr.map(bind).transpose()?;
        let local = |l: &TcpListener, asked: SocketAddr| {
            l.local_addr().map_err(|source| Error::Bind {
                addr: asked,
                source,
            })
        };
        let device_addr = connectable(local(&device, settings.device_addr)?);
        let service_addr = connectable(local(&service, settings.service_addr)?);
        let admin_addr = match (&admin, settings.admin_addr) {
            (Some(l), Some(asked)) => Some(local(l, asked)?),
            _ => None,
        };

        let metrics = Arc::new(BrokerMetrics::default());
        let shutdown = CancellationToken::new();
        let router = RouterHandle::start(
            settings.max_device_connections + settings.max_service_connections + INTERNAL_LINKS,
        );
        let door = Arc::new(Door::new(
            settings,
            &password,
            Arc::clone(&metrics),
            router,
            Arc::clone(&tls),
            denylist.clone(),
            shutdown.clone(),
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("ecs-broker")
            .enable_all()
            .build()
            .map_err(Error::Spawn)?;
        let (door_for_thread, denylist_for_thread, stop) =
            (Arc::clone(&door), denylist.clone(), shutdown.clone());
        let thread = thread::Builder::new()
            .name("ecs-broker-main".to_owned())
            .spawn(move || {
                runtime.block_on(run(
                    door_for_thread,
                    denylist_for_thread,
                    Listeners {
                        device,
                        service,
                        admin,
                        device_addr,
                    },
                    stop,
                ))
            })
            .map_err(Error::Spawn)?;
        Ok(Self {
            device_addr,
            service_addr,
            admin_addr,
            metrics,
            denylist,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Where devices connect (TLS with a client certificate), as reachable from this machine:
    /// a wildcard listen address (`0.0.0.0`, `::`) is given as loopback.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// Where services connect (plain MQTT with username and password), as reachable from this
    /// machine.
    pub fn service_addr(&self) -> SocketAddr {
        self.service_addr
    }

    /// Where the admin endpoint listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// What this broker has counted.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.metrics
    }

    /// The devices this broker refuses.
    pub fn denylist(&self) -> &Denylist {
        &self.denylist
    }

    /// Cancelling this token stops the broker, as [`Self::stop`] does, without waiting; pair it
    /// with [`Self::wait`] on another thread.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// False once the broker has stopped.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Blocks until the broker stops, which happens only when it fails or is stopped, and says
    /// why.
    pub fn wait(mut self) -> Error {
        match self.thread.take() {
            Some(thread) => stop_reason(thread),
            None => Error::BrokerStopped("already stopped".into()),
        }
    }

    /// Closes the listeners and every connection, and waits (a bounded time) until they are
    /// closed.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Listeners {
    device: TcpListener,
    service: TcpListener,
    admin: Option<TcpListener>,
    device_addr: SocketAddr,
}

/// The broker's tasks until shutdown, or until one of them ends by itself (which it must not):
/// then the broker stops and says which.
async fn run(
    door: Arc<Door>,
    denylist: Denylist,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> String {
    let tokio_listener = |l: TcpListener| tokio::net::TcpListener::from_std(l);
    let (device, service) = match (
        tokio_listener(listeners.device),
        tokio_listener(listeners.service),
    ) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) | (_, Err(e)) => return format!("cannot use the listeners: {e}"),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(named(
        "device_door",
        door::accept_devices(Arc::clone(&door), device),
    ));
    tasks.spawn(named(
        "service_door",
        door::accept_services(Arc::clone(&door), service),
    ));
    if let Some(admin) = listeners.admin {
        match tokio_listener(admin) {
            Ok(admin) => {
                tasks.spawn(named(
                    "admin_http",
                    crate::admin::serve(
                        admin,
                        Arc::clone(&door),
                        listeners.device_addr,
                        shutdown.clone(),
                    ),
                ));
            }
            Err(e) => return format!("cannot use the admin listener: {e}"),
        }
    }
    tasks.spawn(named(
        "tls_reload",
        reload_tls(Arc::clone(&door), shutdown.clone()),
    ));
    tasks.spawn(named(
        "device_sweep",
        sweep_devices(Arc::clone(&door), shutdown.clone()),
    ));
    {
        let (door, denylist, shutdown) = (Arc::clone(&door), denylist.clone(), shutdown.clone());
        tasks.spawn(named("revocations", async move {
            let follow = tokio::task::spawn_blocking(move || {
                revocation::follow(
                    &door.router,
                    &denylist,
                    &door.devices,
                    &door.metrics,
                    &shutdown,
                )
            });
            match follow.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "revocation link failed"),
                Err(error) => tracing::error!(%error, "revocation link panicked"),
            }
        }));
    }
    tracing::info!(device_addr = %listeners.device_addr, "broker running");

    let reason = tokio::select! {
        () = shutdown.cancelled() => "stopped".to_owned(),
        ended = tasks.join_next() => match ended {
            Some(Ok(name)) => format!("the {name} task ended"),
            Some(Err(e)) => format!("a broker task panicked: {e}"),
            None => "no task was running".to_owned(),
        },
    };
    shutdown.cancel();
    door.tasks.close();
    if tokio::time::timeout(STOP_TIMEOUT, door.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {STOP_TIMEOUT:?}; leaving them");
    }
    let _ = tokio::time::timeout(STOP_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    reason
}

/// A task that reports its name when it ends.
async fn named(name: &'static str, task: impl Future<Output = ()>) -> &'static str {
    task.instrument(tracing::info_span!("broker_task", task = name))
        .await;
    name
}

use tracing::Instrument as _;

async fn reload_tls(door: Arc<Door>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TLS_RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match door.tls.reload_if_changed() {
            Ok(true) => tracing::info!("device TLS files changed: configuration reloaded"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "device TLS files changed but cannot be used; keeping the previous configuration")
            }
        }
    }
}

async fn sweep_devices(door: Arc<Door>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                door.devices.sweep(now);
                door.connect_rates.sweep(now);
            }
        }
    }
}

fn stop_reason(thread: JoinHandle<String>) -> Error {
    let reason = match thread.join() {
        Ok(reason) => reason,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            format!("the broker thread panicked: {message}")
        }
    };
    Error::BrokerStopped(reason)
}

/// The address a local client dials to reach a listener bound to `listen`.
fn connectable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_dialled_on_loopback() {
        let dial = |s: &str| connectable(s.parse().unwrap()).to_string();
        assert_eq!(dial("0.0.0.0:8883"), "127.0.0.1:8883");
        assert_eq!(dial("[::]:8883"), "[::1]:8883");
        assert_eq!(dial("10.0.0.5:1884"), "10.0.0.5:1884");
    }
}
