//! What an operator can configure, from flags or the environment, and the checks that turn it
//! into something the broker can run with.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::pki::PkiDir;

/// The username services (the cloud) log in with when none is configured.
pub const DEFAULT_SERVICE_USERNAME: &str = "ecs-cloud";
/// Device connections held at once when none is configured.
pub const DEFAULT_MAX_DEVICE_CONNECTIONS: usize = 10_000;

/// How the broker listens, whom it lets in, and how much any one client may take.
///
/// Devices and services get separate listeners because they authenticate differently: a device
/// by its client certificate (which also confines it to its own topics), a service by username
/// and password (and then it may use every topic). The service listener therefore belongs on a
/// private network; its default is loopback.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerSettings {
    /// Address of the device listener: MQTT over TLS, client certificate required.
    #[arg(long, env = "ECS_BROKER_DEVICE_ADDR", default_value = "0.0.0.0:8883")]
    pub device_addr: SocketAddr,

    /// Address of the service listener: plain MQTT with username and password. Keep it private.
    #[arg(
        long,
        env = "ECS_BROKER_SERVICE_ADDR",
        default_value = "127.0.0.1:1884"
    )]
    pub service_addr: SocketAddr,

    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`, `/status`). It has no
    /// authentication, so only loopback addresses are accepted.
    #[arg(long, env = "ECS_BROKER_ADMIN_ADDR", default_value = "127.0.0.1:8885")]
    pub admin_addr: Option<SocketAddr>,

    /// CA certificates (PEM) that device certificates must chain to. Every certificate in the
    /// file is trusted, so a new CA can be added beside the old one while devices move over.
    #[arg(long, env = "ECS_TLS_CA_FILE")]
    pub tls_ca_file: PathBuf,

    /// The broker's TLS server certificate chain (PEM). The three TLS files are re-read when
    /// they change.
    #[arg(long, env = "ECS_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,

    /// The private key (PEM) of the server certificate.
    #[arg(long, env = "ECS_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,

    /// Username services log in with on the service listener.
    #[arg(long, env = "ECS_BROKER_SERVICE_USERNAME", default_value = DEFAULT_SERVICE_USERNAME)]
    pub service_username: String,

    /// Password services log in with (at least 16 characters and about 64 bits, outside
    /// development mode). Prefer the variable or the password file to the flag, which other
    /// users can see in the process list.
    #[arg(
        long,
        env = "ECS_BROKER_SERVICE_PASSWORD",
        hide_env_values = true,
        required_unless_present = "service_password_file",
        conflicts_with = "service_password_file"
    )]
    pub service_password: Option<Secret>,

    /// File holding the service password (a trailing newline is ignored).
    #[arg(long, env = "ECS_BROKER_SERVICE_PASSWORD_FILE")]
    pub service_password_file: Option<PathBuf>,

    /// Development mode: accept a weak service password. Never in production.
    #[arg(long, env = "ECS_BROKER_DEV_MODE")]
    pub dev_mode: bool,

    /// Most device connections held at once. Past it, new devices are turned away before their
    /// TLS handshake; services have slots of their own.
    #[arg(long, env = "ECS_BROKER_MAX_DEVICE_CONNECTIONS", default_value_t = DEFAULT_MAX_DEVICE_CONNECTIONS)]
    pub max_device_connections: usize,

    /// Most service connections held at once.
    #[arg(long, env = "ECS_BROKER_MAX_SERVICE_CONNECTIONS", default_value_t = 64)]
    pub max_service_connections: usize,

    /// Most connections one device certificate may hold at once.
    #[arg(
        long,
        env = "ECS_BROKER_MAX_CONNECTIONS_PER_DEVICE",
        default_value_t = 2
    )]
    pub max_connections_per_device: usize,

    /// Most TLS handshakes under way at once; further connections are closed at once.
    /// Unauthenticated connections hold only these slots, never a connection slot.
    #[arg(long, env = "ECS_BROKER_MAX_HANDSHAKES", default_value_t = 4_096)]
    pub max_handshakes: usize,

    /// Most TLS handshakes under way at once from one IP address, so one address cannot take
    /// every handshake slot (phones behind a carrier NAT share addresses: keep it generous).
    #[arg(long, env = "ECS_BROKER_MAX_HANDSHAKES_PER_IP", default_value_t = 256)]
    pub max_handshakes_per_ip: usize,

    /// Milliseconds a device gets to finish its TLS handshake.
    #[arg(
        long,
        env = "ECS_BROKER_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,

    /// Milliseconds a client gets, once connected (and past TLS), to send CONNECT.
    #[arg(long, env = "ECS_BROKER_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// New device connections accepted per second, over all devices (a burst of as many is
    /// allowed); past it, connections are closed before the handshake.
    #[arg(long, env = "ECS_BROKER_CONNECT_RATE", default_value_t = 2_000.0)]
    pub connect_rate: f64,

    /// New device connections accepted per second from one IP address (a burst of as many
    /// is allowed), before the listener's overall rate: one address cannot spend everyone's.
    /// Phones behind a carrier NAT share addresses: keep it generous.
    #[arg(long, env = "ECS_BROKER_CONNECT_RATE_PER_IP", default_value_t = 500.0)]
    pub connect_rate_per_ip: f64,

    /// Connection attempts per second one device may make after a burst of 10.
    #[arg(long, env = "ECS_BROKER_DEVICE_CONNECT_RATE", default_value_t = 0.5)]
    pub device_connect_rate: f64,

    /// Packets per second one device connection may send, every kind counted (after a burst of
    /// two seconds' worth); faster senders are read more slowly.
    #[arg(long, env = "ECS_BROKER_DEVICE_MESSAGE_RATE", default_value_t = 200.0)]
    pub device_message_rate: f64,

    /// Payload bytes per second one device connection may send (after a burst of two seconds'
    /// worth); faster senders are read more slowly.
    #[arg(long, env = "ECS_BROKER_DEVICE_BYTE_RATE", default_value_t = 2.0 * 1024.0 * 1024.0)]
    pub device_byte_rate: f64,
}

impl BrokerSettings {
    /// A broker for tests and the all-in-one demo: both listeners and the admin endpoint on
    /// free loopback ports, TLS from `pki`'s CA and server certificate, and `service_password`
    /// for services.
    pub fn loopback(pki: &PkiDir, service_password: Secret) -> std::io::Result<Self> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let server = pki.server_files();
        let [device, service, admin] = crate::free_local_ports::<3>()?;
        Ok(Self {
            device_addr: loopback(device),
            service_addr: loopback(service),
            admin_addr: Some(loopback(admin)),
            tls_ca_file: pki.ca_cert_path(),
            tls_cert_file: server.cert,
            tls_key_file: server.key,
            service_username: DEFAULT_SERVICE_USERNAME.to_owned(),
            service_password: Some(service_password),
            service_password_file: None,
            dev_mode: false,
            max_device_connections: DEFAULT_MAX_DEVICE_CONNECTIONS,
            max_service_connections: 64,
            max_connections_per_device: 2,
            max_handshakes: 4_096,
            max_handshakes_per_ip: 256,
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            connect_rate: 2_000.0,
            connect_rate_per_ip: 500.0,
            device_connect_rate: 0.5,
            device_message_rate: 200.0,
            device_byte_rate: 2.0 * 1024.0 * 1024.0,
        })
    }

    /// Checks everything that does not need the network, so a mistake is reported at once with
    /// the setting's name rather than as a broker that silently misbehaves.
    pub fn validate(&self) -> Result<()> {
        // Port 0 asks the system for a free port, different for each listener.
        if self.device_addr == self.service_addr && self.device_addr.port() != 0 {
            return Err(invalid(
                "service address",
                format!("{} is also the device address", self.service_addr),
            ));
        }
        if let Some(admin) = self.admin_addr {
            if !admin.ip().is_loopback() {
                return Err(invalid(
                    "admin address",
                    format!(
                        "{admin} is not a loopback address; the admin endpoint has no \
                         authentication, so it may only listen on 127.0.0.1 or ::1"
                    ),
                ));
            }
            if admin.port() != 0 && (admin == self.device_addr || admin == self.service_addr) {
                return Err(invalid(
                    "admin address",
                    format!("{admin} is already a listener address"),
                ));
            }
        }
        for (setting, value) in [
            ("max device connections", self.max_device_connections),
            ("max service connections", self.max_service_connections),
            (
                "max connections per device",
                self.max_connections_per_device,
            ),
            ("max handshakes", self.max_handshakes),
            ("max handshakes per IP", self.max_handshakes_per_ip),
        ] {
            if value == 0 {
                return Err(invalid(setting, "must be at least 1".into()));
            }
        }
        for (setting, value) in [
            ("handshake timeout", self.handshake_timeout_ms),
            ("connect timeout", self.connect_timeout_ms),
        ] {
            if value == 0 || value > 600_000 {
                return Err(invalid(setting, format!("{value} ms: must be 1..=600000")));
            }
        }
        for (setting, value) in [
            ("connect rate", self.connect_rate),
            ("connect rate per IP", self.connect_rate_per_ip),
            ("device connect rate", self.device_connect_rate),
            ("device message rate", self.device_message_rate),
            ("device byte rate", self.device_byte_rate),
        ] {
            if !value.is_finite() || value <= 0.0 {
                return Err(invalid(
                    setting,
                    format!("{value}: must be a positive number"),
                ));
            }
        }
        if self.connect_rate_per_ip > self.connect_rate {
            return Err(invalid(
                "connect rate per IP",
                format!(
                    "{} is more than the listener's connect rate ({}): one address could spend \
                     it all",
                    self.connect_rate_per_ip, self.connect_rate
                ),
            ));
        }
        if self.max_handshakes_per_ip > self.max_handshakes {
            return Err(invalid(
                "max handshakes per IP",
                format!(
                    "{} is more than max handshakes ({})",
                    self.max_handshakes_per_ip, self.max_handshakes
                ),
            ));
        }
        if self.service_username.is_empty() {
            return Err(invalid("service username", "must not be empty".into()));
        }
        let password = self.service_password()?;
        if !self.dev_mode
            && let Some(weakness) = crate::credentials::password_weakness(password.expose())
        {
            return Err(invalid(
                "service password",
                format!(
                    "{weakness} (generate one, e.g. `openssl rand -base64 32`; \
                     ECS_BROKER_DEV_MODE=true accepts a weak one for development)"
                ),
            ));
        }
        Ok(())
    }

    /// The service password, from the setting or read from the password file.
    pub fn service_password(&self) -> Result<Secret> {
        let password = match (&self.service_password, &self.service_password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "service password",
                    "set either the password or the password file, not both".into(),
                ));
            }
            (Some(password), None) => password.clone(),
            (None, Some(path)) => {
                let raw = std::fs::read_to_string(path).map_err(Error::io(path))?;
                Secret(raw.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => {
                return Err(invalid(
                    "service password",
                    "set ECS_BROKER_SERVICE_PASSWORD or ECS_BROKER_SERVICE_PASSWORD_FILE".into(),
                ));
            }
        };
        if password.expose().is_empty() {
            return Err(invalid("service password", "must not be empty".into()));
        }
        Ok(password)
    }
}

/// A value that must never reach a log: its `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

fn invalid(setting: &'static str, reason: String) -> Error {
    Error::InvalidSetting { setting, reason }
}

#[cfg(test)]
mod tests;
