//! Starting the embedded rumqttd and knowing whether it still runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::rumqttd_config;
use crate::error::{Error, Result};
use crate::settings::BrokerSettings;
use crate::tls::check_device_tls;

/// How long [`RunningBroker::start`] waits for the listeners to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A rumqttd broker running on its own threads in this process.
///
/// rumqttd 0.20 offers no way to stop a broker: neither dropping this handle nor anything else
/// ends it before the process exits. Tests and the demo therefore start each broker on fresh
/// ports and let it die with the process; `ecs-broker serve` exits the process on a signal.
///
/// Nothing the broker holds survives it: sessions, subscriptions and undelivered messages live
/// only in memory (see the `config` module for the limits).
#[derive(Debug)]
pub struct RunningBroker {
    device_addr: SocketAddr,
    service_addr: SocketAddr,
    console_addr: Option<SocketAddr>,
    thread: JoinHandle<String>,
}

impl RunningBroker {
    /// Validates `settings`, starts the broker and returns once every listener accepts TCP
    /// connections (at most [`READY_TIMEOUT`]).
    ///
    /// This blocks the calling thread for that time (usually a few milliseconds); from async
    /// code, call it inside `tokio::task::spawn_blocking` if that matters.
    ///
    /// Readiness is observed by connecting to each listener and hanging up, which rumqttd logs
    /// as one failed connection per listener.
    pub fn start(settings: &BrokerSettings) -> Result<Self> {
        settings.validate()?;
        check_device_tls(settings)?;
        let listeners: Vec<SocketAddr> = [settings.device_addr, settings.service_addr]
            .into_iter()
            .chain(settings.console_addr)
            .collect();
        // rumqttd logs a failed bind and carries on without that listener; catch the usual
        // cause (the port is taken) here, where it can still be reported.
        for addr in &listeners {
            TcpListener::bind(addr).map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
        }

        let config = rumqttd_config(settings, settings.service_password()?);
        let thread = thread::Builder::new()
            .name("rumqttd".to_owned())
            .spawn(move || {
                // `Broker::new` starts the router thread; `start` starts one thread per listener
                // and blocks until all of them have ended, which only an error makes happen.
                let mut broker = rumqttd::Broker::new(config);
                match broker.start() {
                    Ok(()) => "every listener stopped; see the log for why".to_owned(),
                    Err(e) => e.to_string(),
                }
            })
            .map_err(Error::Spawn)?;

        let mut broker = Self {
            device_addr: connectable(settings.device_addr),
            service_addr: connectable(settings.service_addr),
            console_addr: settings.console_addr,
            thread,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        for addr in listeners.into_iter().map(connectable) {
            broker = broker.wait_until_accepting(addr, deadline)?;
        }
        Ok(broker)
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

    /// Where rumqttd's console listens, when enabled.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// False once the broker's main thread has ended, which means its listeners are gone.
    ///
    /// rumqttd's router runs on another thread this handle cannot watch; it ends only by a
    /// panic, which the log shows.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Blocks until the broker stops, which happens only when it fails, and says why.
    pub fn wait(self) -> Error {
        stop_reason(self.thread)
    }

    fn wait_until_accepting(self, addr: SocketAddr, deadline: Instant) -> Result<Self> {
        loop {
            if !self.is_running() {
                return Err(self.wait());
            }
            if TcpStream::connect_timeout(&addr, PROBE_CONNECT_TIMEOUT).is_ok() {
                return Ok(self);
            }
            if Instant::now() >= deadline {
                // The broker thread is left behind: rumqttd cannot be stopped.
                return Err(Error::NotReady {
                    addr,
                    waited: READY_TIMEOUT,
                });
            }
            thread::sleep(PROBE_INTERVAL);
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
