//! Settings, read once from the environment (each with a matching `--flag`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::model::ModelKind;

/// The broker the cloud connects to, as a service (not as a device).
#[derive(Debug, Clone, Args)]
pub struct MqttSettings {
    /// Broker address: mqtt://host:port (plain) or mqtts://host:port (TLS).
    #[arg(
        long = "mqtt-url",
        env = "ECS_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1884"
    )]
    pub url: MqttUrl,
    /// Username for the broker's service listener.
    #[arg(long = "mqtt-username", env = "ECS_MQTT_USERNAME")]
    pub username: Option<String>,
    /// Password for the broker's service listener (prefer ECS_MQTT_PASSWORD_FILE).
    #[arg(
        long = "mqtt-password",
        env = "ECS_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// File holding the broker password.
    #[arg(long = "mqtt-password-file", env = "ECS_MQTT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the broker's certificate, for mqtts://.
    #[arg(long = "mqtt-ca-file", env = "ECS_MQTT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// MQTT client id of this replica; must be unique per replica.
    #[arg(long = "mqtt-client-id", env = "ECS_MQTT_CLIENT_ID", default_value_t = default_client_id())]
    pub client_id: String,
    /// Shared-subscription group: replicas in one group split the device uplinks between them.
    #[arg(
        long = "mqtt-group",
        env = "ECS_MQTT_GROUP",
        default_value = "ecs-cloud"
    )]
    pub group: String,
}

fn default_client_id() -> String {
    format!("ecs-cloud-{}", uuid::Uuid::new_v4().simple())
}

impl MqttSettings {
    /// The password, from the file when one is named, else from the variable.
    pub fn password(&self) -> std::io::Result<Option<String>> {
        match &self.password_file {
            Some(path) => Ok(Some(std::fs::read_to_string(path)?.trim_end().to_owned())),
            None => Ok(self.password.clone()),
        }
    }
}

/// `mqtt://host:port` or `mqtts://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for MqttUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "{s:?}: expected mqtt://host:port or mqtts://host:port"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: missing :port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: port {port:?} is not a number 0-65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: missing host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Everything `ecs-cloud serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ecs"
    )]
    pub database_url: String,
    /// Largest number of Postgres connections this replica opens.
    #[arg(long, env = "ECS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Address the REST API listens on.
    #[arg(long, env = "ECS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Bearer token with full (admin/service) rights. Prefer ECS_ADMIN_TOKEN_FILE.
    #[arg(long, env = "ECS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "ECS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub mqtt: MqttSettings,
    /// Which risk model scores applicants.
    #[arg(long, env = "ECS_MODEL", value_enum, default_value_t = ModelKind::Random)]
    pub model: ModelKind,
    /// Seed of the random model (reproducible runs); random when unset.
    #[arg(long, env = "ECS_MODEL_SEED")]
    pub model_seed: Option<u64>,
    /// How many uplink messages ingest processes at once.
    #[arg(long, env = "ECS_INGEST_CONCURRENCY", default_value_t = 8)]
    pub ingest_concurrency: usize,
    /// How often the offer worker polls the outbox when no NOTIFY wakes it, in milliseconds.
    #[arg(long, env = "ECS_WORKER_POLL_MS", default_value_t = 1_000)]
    pub worker_poll_ms: u64,
    /// How long an undelivered notification waits before it is published again, in milliseconds.
    #[arg(long, env = "ECS_NOTIFY_RESEND_MS", default_value_t = 10_000)]
    pub notify_resend_ms: u64,
    /// How long an offer stays open, in hours.
    #[arg(long, env = "ECS_OFFER_TTL_HOURS", default_value_t = 72)]
    pub offer_ttl_hours: u32,
}

impl Settings {
    /// The admin token, from the file when one is named, else from the variable.
    pub fn admin_token(&self) -> std::io::Result<Option<String>> {
        match &self.admin_token_file {
            Some(path) => Ok(Some(std::fs::read_to_string(path)?.trim_end().to_owned())),
            None => Ok(self.admin_token.clone()),
        }
    }

    pub fn worker_poll(&self) -> Duration {
        Duration::from_millis(self.worker_poll_ms)
    }

    pub fn notify_resend(&self) -> Duration {
        Duration::from_millis(self.notify_resend_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse_scheme_host_and_port() {
        let url: MqttUrl = "mqtts://broker.example:8883".parse().unwrap();
        assert_eq!(
            url,
            MqttUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8883
            }
        );
        assert!(!"mqtt://127.0.0.1:1884".parse::<MqttUrl>().unwrap().tls);
        assert_eq!("mqtt://[::1]:1884".parse::<MqttUrl>().unwrap().host, "::1");
        assert!("http://x:1".parse::<MqttUrl>().is_err());
        assert!("mqtt://x".parse::<MqttUrl>().is_err());
        assert!("mqtt://x:99999".parse::<MqttUrl>().is_err());
        assert!("mqtt://:1884".parse::<MqttUrl>().is_err());
    }
}
