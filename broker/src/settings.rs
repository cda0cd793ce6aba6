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
/// Connections (devices and services together) the broker accepts when none is configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How the broker listens and whom it lets in.
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

    /// CA certificate (PEM) that device certificates must chain to. Only its first certificate
    /// is used.
    #[arg(long, env = "ECS_TLS_CA_FILE")]
    pub tls_ca_file: PathBuf,

    /// The broker's TLS server certificate chain (PEM).
    #[arg(long, env = "ECS_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,

    /// The private key (PEM) of the server certificate.
    #[arg(long, env = "ECS_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,

    /// Username services log in with on the service listener.
    #[arg(long, env = "ECS_BROKER_SERVICE_USERNAME", default_value = DEFAULT_SERVICE_USERNAME)]
    pub service_username: String,

    /// Password services log in with. Prefer the variable or the password file to the flag,
    /// which other users can see in the process list.
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

    /// Most connections, devices and services together, held at once. Further clients get no
    /// CONNACK.
    #[arg(long, env = "ECS_BROKER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Address for rumqttd's HTTP console (router state, for debugging). It has no
    /// authentication, so only loopback addresses are accepted. Off when unset. Some of its
    /// endpoints print to stdout, outside the JSON log format.
    #[arg(long, env = "ECS_BROKER_CONSOLE_ADDR")]
    pub console_addr: Option<SocketAddr>,
}

impl BrokerSettings {
    /// A broker for tests and the all-in-one demo: both listeners on free loopback ports, TLS
    /// from `pki`'s CA and server certificate, and `service_password` for services.
    pub fn loopback(pki: &PkiDir, service_password: Secret) -> std::io::Result<Self> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let server = pki.server_files();
        Ok(Self {
            device_addr: loopback(crate::free_local_port()?),
            service_addr: loopback(crate::free_local_port()?),
            tls_ca_file: pki.ca_cert_path(),
            tls_cert_file: server.cert,
            tls_key_file: server.key,
            service_username: DEFAULT_SERVICE_USERNAME.to_owned(),
            service_password: Some(service_password),
            service_password_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            console_addr: None,
        })
    }

    /// Checks everything that does not need the network, so a mistake is reported at once with
    /// the setting's name rather than as a broker that silently misbehaves.
    pub fn validate(&self) -> Result<()> {
        check_port("device address", self.device_addr)?;
        check_port("service address", self.service_addr)?;
        if self.device_addr == self.service_addr {
            return Err(invalid(
                "service address",
                format!("{} is also the device address", self.service_addr),
            ));
        }
        if let Some(console) = self.console_addr {
            check_port("console address", console)?;
            if !console.ip().is_loopback() {
                return Err(invalid(
                    "console address",
                    format!(
                        "{console} is not a loopback address; the rumqttd console has no \
                         authentication, so it may only listen on 127.0.0.1 or ::1"
                    ),
                ));
            }
            if console == self.device_addr || console == self.service_addr {
                return Err(invalid(
                    "console address",
                    format!("{console} is already a listener address"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("max connections", "must be at least 1".into()));
        }
        if self.service_username.is_empty() {
            return Err(invalid("service username", "must not be empty".into()));
        }
        self.service_password().map(drop)
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

/// rumqttd would bind port 0 to some port it never reports, so nobody could connect.
fn check_port(setting: &'static str, addr: SocketAddr) -> Result<()> {
    if addr.port() == 0 {
        return Err(invalid(
            setting,
            format!("{addr}: port 0 is not supported; pick a port (tests: free_local_port())"),
        ));
    }
    Ok(())
}

fn invalid(setting: &'static str, reason: String) -> Error {
    Error::InvalidSetting { setting, reason }
}

#[cfg(test)]
mod tests;
