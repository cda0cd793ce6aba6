//! Settings, read once from the environment (each with a matching `--flag`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, builder::TypedValueParser};

use crate::{
    analytics::MinGroupSize,
    model::{BreakerSettings, HttpSettings, LocalModelKind, ModelKind},
};

/// The broker the cloud connects to, as a service (not as a device).
/// `Debug` redacts the password.
#[derive(Clone, Args)]
pub struct MqttSettings {
    /// Broker address: mqtt://host[:port] (plain) or mqtts://host[:port] (TLS); default ports
    /// 1883 and 8883.
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

/// The broker's address: one type and one set of rules for every client (`ecs_mqtt_link`).
pub use ecs_mqtt_link::BrokerUrl as MqttUrl;

/// Which risk model `ecs-cloud serve` uses, and how it reaches a remote one.
#[derive(Debug, Clone, Args)]
pub struct ModelSettings {
    /// Which risk model scores applicants.
    #[arg(
        id = "model_kind",
        value_name = "KIND",
        long = "model",
        env = "ECS_MODEL",
        value_enum,
        default_value_t = ModelKind::Scorecard
    )]
    pub kind: ModelKind,
    /// Seed of the random model (reproducible runs); random when unset.
    #[arg(
        id = "model_seed",
        value_name = "SEED",
        long = "model-seed",
        env = "ECS_MODEL_SEED"
    )]
    pub seed: Option<u64>,
    /// Scorecard coefficients (JSON) for ECS_MODEL=scorecard; the built-in scorecard-v1 when
    /// unset.
    #[arg(
        id = "model_file",
        value_name = "FILE",
        long = "model-file",
        env = "ECS_MODEL_FILE"
    )]
    pub file: Option<PathBuf>,
    /// Base URL of the model service (`ecs-cloud model-server`) for ECS_MODEL=http; plain
    /// http:// (the service belongs on a private network).
    #[arg(
        id = "model_url",
        value_name = "URL",
        long = "model-url",
        env = "ECS_MODEL_URL",
        default_value = ModelSettings::DEFAULT_URL,
        value_parser = parse_model_url
    )]
    pub url: reqwest::Url,
    /// Longest wait for one call to the model service, in milliseconds.
    #[arg(
        id = "model_timeout_ms",
        value_name = "MS",
        long = "model-timeout-ms",
        env = "ECS_MODEL_TIMEOUT_MS",
        default_value_t = ModelSettings::DEFAULT_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_ms: u64,
    /// Retries of a call that failed without an answer (connect error, 502/503/504, timeout).
    #[arg(
        id = "model_retries",
        value_name = "N",
        long = "model-retries",
        env = "ECS_MODEL_RETRIES",
        default_value_t = ModelSettings::DEFAULT_RETRIES,
        value_parser = clap::value_parser!(u32).range(0..=5)
    )]
    pub retries: u32,
    /// Longest wait for a score, all attempts and backoff together, in milliseconds.
    #[arg(
        id = "model_deadline_ms",
        value_name = "MS",
        long = "model-deadline-ms",
        env = "ECS_MODEL_DEADLINE_MS",
        default_value_t = ModelSettings::DEFAULT_DEADLINE_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub deadline_ms: u64,
    /// Consecutive failed calls after which the circuit breaker opens (calls then fail fast).
    #[arg(
        id = "model_breaker_failures",
        value_name = "N",
        long = "model-breaker-failures",
        env = "ECS_MODEL_BREAKER_FAILURES",
        default_value_t = ModelSettings::DEFAULT_BREAKER_FAILURES,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub breaker_failures: u32,
    /// How long an open circuit breaker waits before one trial call, in milliseconds.
    #[arg(
        id = "model_breaker_open_ms",
        value_name = "MS",
        long = "model-breaker-open-ms",
        env = "ECS_MODEL_BREAKER_OPEN_MS",
        default_value_t = ModelSettings::DEFAULT_BREAKER_OPEN_MS
    )]
    pub breaker_open_ms: u64,
}

impl ModelSettings {
    pub const DEFAULT_URL: &str = "http://127.0.0.1:8090";
    pub const DEFAULT_TIMEOUT_MS: u64 = 800;
    pub const DEFAULT_RETRIES: u32 = 1;
    /// Room for two attempts at the default timeout plus a backoff.
    pub const DEFAULT_DEADLINE_MS: u64 = 2_000;
    pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
    pub const DEFAULT_BREAKER_OPEN_MS: u64 = 10_000;

    /// The HTTP model's settings.
    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            base_url: self.url.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            deadline: Duration::from_millis(self.deadline_ms),
        }
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: self.breaker_failures,
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }
}

/// The same values as the flags' defaults, for code that builds [`Settings`] by hand.
impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            kind: ModelKind::Scorecard,
            seed: None,
            file: None,
            // A constant, checked by the tests: not outside input.
            url: reqwest::Url::parse(Self::DEFAULT_URL).expect("DEFAULT_URL is a valid URL"),
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retries: Self::DEFAULT_RETRIES,
            deadline_ms: Self::DEFAULT_DEADLINE_MS,
            breaker_failures: Self::DEFAULT_BREAKER_FAILURES,
            breaker_open_ms: Self::DEFAULT_BREAKER_OPEN_MS,
        }
    }
}

fn parse_model_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    if url.scheme() != "http" || url.host_str().is_none() {
        return Err(format!("{s:?}: expected http://host:port"));
    }
    Ok(url)
}

/// Everything `ecs-cloud model-server` needs.
#[derive(Debug, Clone, Args)]
pub struct ModelServerSettings {
    /// Address the model service listens on.
    #[arg(
        id = "model_addr",
        value_name = "ADDR",
        long = "model-addr",
        env = "ECS_MODEL_ADDR",
        default_value = "0.0.0.0:8090"
    )]
    pub addr: SocketAddr,
    /// Which model it serves.
    #[arg(
        id = "model_kind",
        value_name = "KIND",
        long = "model",
        env = "ECS_MODEL",
        value_enum,
        default_value_t = LocalModelKind::Scorecard
    )]
    pub kind: LocalModelKind,
    /// Scorecard coefficients (JSON); the built-in scorecard-v1 when unset.
    #[arg(
        id = "model_file",
        value_name = "FILE",
        long = "model-file",
        env = "ECS_MODEL_FILE"
    )]
    pub file: Option<PathBuf>,
    /// Seed of the random model (reproducible runs); random when unset.
    #[arg(
        id = "model_seed",
        value_name = "SEED",
        long = "model-seed",
        env = "ECS_MODEL_SEED"
    )]
    pub seed: Option<u64>,
    /// Fault injection: share of scoring requests answered 503, 0.0-1.0.
    #[arg(
        id = "model_fail_rate",
        value_name = "RATE",
        long = "model-fail-rate",
        env = "ECS_MODEL_FAIL_RATE",
        default_value_t = 0.0,
        value_parser = parse_rate
    )]
    pub fail_rate: f64,
    /// Fault injection: delay added to every scoring request, in milliseconds.
    #[arg(
        id = "model_latency_ms",
        value_name = "MS",
        long = "model-latency-ms",
        env = "ECS_MODEL_LATENCY_MS",
        default_value_t = 0
    )]
    pub latency_ms: u64,
}

impl ModelServerSettings {
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{s} is not between 0.0 and 1.0"))
    }
}

/// Everything `ecs-cloud serve` needs. `Debug` redacts the secrets (see below).
#[derive(Clone, Args)]
pub struct Settings {
    /// Postgres connection string (it may hold a password: never printed).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/ecs"
    )]
    pub database_url: String,
    /// Largest number of Postgres connections this replica opens.
    #[arg(long, env = "ECS_DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
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
    #[command(flatten)]
    pub model: ModelSettings,
    /// How many uplink messages ingest processes at once. A message holds a database connection
    /// only for its registration check (and a data key the cache lacks); its batch waits for the
    /// group committer's few connections, so this can be several times the pool: it is how many
    /// batches a group commit can gather (at most `ingest::group::MAX_GROUP`).
    #[arg(long, env = "ECS_INGEST_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub ingest_concurrency: usize,
    /// How often the offer worker polls the outbox when no NOTIFY wakes it, in milliseconds.
    #[arg(long, env = "ECS_WORKER_POLL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub worker_poll_ms: u64,
    /// How long an undelivered notification waits before it is published again, in milliseconds.
    #[arg(long, env = "ECS_NOTIFY_RESEND_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub notify_resend_ms: u64,
    /// How long an offer stays open, in hours.
    #[arg(long, env = "ECS_OFFER_TTL_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u32).range(1..=8_760))]
    pub offer_ttl_hours: u32,
    /// Days raw emotional readings are kept (the per-person features stay).
    #[arg(long, env = "ECS_READING_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(1..=3_650))]
    pub reading_retention_days: u32,
    /// Days dead letters (undecodable or invalid uplinks) are kept.
    #[arg(long, env = "ECS_DEAD_LETTER_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3_650))]
    pub dead_letter_retention_days: u32,
    /// How often the whole list of revoked devices is published to the broker again, in seconds
    /// (a restarted broker remembers none; new revocations go out at once, and the whole list
    /// also after every reconnect).
    #[arg(long, env = "ECS_REVOCATION_RESEND_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub revocation_resend_secs: u64,
    /// Smallest number of distinct people a population figure of the analytics views (and the
    /// dashboard) is computed over; smaller groups are shown as suppressed (at least 2).
    #[arg(long, env = "ECS_ANALYTICS_MIN_GROUP", default_value_t = MinGroupSize::DEFAULT)]
    pub analytics_min_group: MinGroupSize,
    /// Requests per second one person's token may make (twice that in a burst); past it, 429.
    #[arg(long, env = "ECS_API_RATE_PER_USER", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub api_rate_per_user: u32,
    /// Requests per second the admin/service token may make (twice that in a burst).
    #[arg(long, env = "ECS_API_RATE_ADMIN", default_value_t = 2_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub api_rate_admin: u32,
    /// Assessments (`POST .../credit-offers`) per person per hour; past it, 429.
    #[arg(long, env = "ECS_ASSESSMENTS_PER_HOUR", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub assessments_per_hour: u32,
    #[command(flatten)]
    pub listener: ListenerSettings,
    #[command(flatten)]
    pub proactive: ProactiveSettings,
    #[command(flatten)]
    pub keys: KeySettings,
}

/// The REST listener's bounds (`cloud::http_server`).
#[derive(Debug, Clone, Args)]
pub struct ListenerSettings {
    /// Open connections to the REST API at most; past it a new one is closed at once.
    #[arg(long = "http-max-connections", env = "ECS_HTTP_MAX_CONNECTIONS",
          default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Open connections from one IP address at most (behind a proxy every client is the
    /// proxy's address: raise it there).
    #[arg(long = "http-max-connections-per-address", env = "ECS_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
          default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_address: u32,
    /// Seconds a connection has to send a whole request head, idle keep-alive time included;
    /// then it is closed.
    #[arg(long = "http-header-timeout-secs", env = "ECS_HTTP_HEADER_TIMEOUT_SECS",
          default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3_600))]
    pub header_timeout_secs: u32,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            max_connections_per_address: 256,
            header_timeout_secs: 30,
        }
    }
}

impl ListenerSettings {
    pub fn limits(&self) -> crate::http_server::HttpLimits {
        crate::http_server::HttpLimits {
            max_connections: self.max_connections as usize,
            max_connections_per_address: self.max_connections_per_address as usize,
            header_read_timeout: Duration::from_secs(u64::from(self.header_timeout_secs)),
        }
    }
}

/// Where the master keys come from (`cloud::keys`). Never stored in the database or logged.
#[derive(Clone, Args, Default)]
pub struct KeySettings {
    /// File holding the master key (64 hex digits: `openssl rand -hex 32`). Preferred.
    #[arg(long = "master-key-file", env = "ECS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// The master key itself (64 hex digits); prefer ECS_MASTER_KEY_FILE.
    #[arg(long = "master-key", env = "ECS_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Files of retired master keys, comma-separated: still read (data keys wrapped by them
    /// open) until `ecs-cloud keys rotate` has re-wrapped everything under the current one.
    #[arg(
        long = "retired-master-key-files",
        env = "ECS_RETIRED_MASTER_KEY_FILES",
        value_delimiter = ','
    )]
    pub retired_master_key_files: Vec<PathBuf>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySettings")
            .field("master_key_file", &self.master_key_file)
            .field("master_key", &self.master_key.as_ref().map(|_| REDACTED))
            .field("retired_master_key_files", &self.retired_master_key_files)
            .finish()
    }
}

impl KeySettings {
    /// The keyring these settings name; an error when no master key is configured.
    pub fn keyring(&self) -> crate::error::Result<crate::keys::Keyring> {
        use crate::keys::MasterKey;
        let current = match (&self.master_key_file, &self.master_key) {
            (Some(path), _) => MasterKey::from_file(path)?,
            (None, Some(text)) => MasterKey::parse(text)?,
            (None, None) => {
                return Err(crate::Error::InvalidInput(
                    "ECS_MASTER_KEY_FILE (or ECS_MASTER_KEY) must be set: 64 hex digits, \
                     e.g. openssl rand -hex 32 > master.key"
                        .into(),
                ));
            }
        };
        let retired = self
            .retired_master_key_files
            .iter()
            .map(|path| MasterKey::from_file(path))
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(crate::keys::Keyring::new(current, retired))
    }
}

/// When the cloud makes offers by itself (`cloud::proactive`); the rule's thresholds are its
/// defaults, only the timing is configurable.
#[derive(Debug, Clone, Args)]
pub struct ProactiveSettings {
    /// Make proactive offers at all.
    #[arg(long = "proactive-offers", env = "ECS_PROACTIVE_OFFERS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// At most one proactive assessment per person within this many hours.
    #[arg(long = "proactive-period-hours", env = "ECS_PROACTIVE_PERIOD_HOURS",
          default_value_t = 168, value_parser = clap::value_parser!(u32).range(1..=8_760))]
    pub period_hours: u32,
    /// A person's stream must have been observed this many minutes before a proactive offer.
    #[arg(long = "proactive-min-observed-minutes", env = "ECS_PROACTIVE_MIN_OBSERVED_MINUTES",
          default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub min_observed_minutes: u32,
    /// Seconds between two scans for candidates.
    #[arg(long = "proactive-scan-secs", env = "ECS_PROACTIVE_SCAN_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub scan_secs: u32,
}

impl Default for ProactiveSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            period_hours: 168,
            min_observed_minutes: 30,
            scan_secs: 30,
        }
    }
}

impl ProactiveSettings {
    pub fn rule(&self) -> crate::proactive::ProactiveRule {
        crate::proactive::ProactiveRule {
            period: Duration::from_secs(u64::from(self.period_hours) * 3600),
            min_observed: Duration::from_secs(u64::from(self.min_observed_minutes) * 60),
            ..Default::default()
        }
    }

    pub fn scan_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.scan_secs))
    }
}

const REDACTED: &str = "[redacted]";

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &REDACTED)
            .field("db_max_connections", &self.db_max_connections)
            .field("http_addr", &self.http_addr)
            .field("admin_token", &self.admin_token.as_ref().map(|_| REDACTED))
            .field("admin_token_file", &self.admin_token_file)
            .field("mqtt", &self.mqtt)
            .field("model", &self.model)
            .field("ingest_concurrency", &self.ingest_concurrency)
            .field("worker_poll_ms", &self.worker_poll_ms)
            .field("notify_resend_ms", &self.notify_resend_ms)
            .field("offer_ttl_hours", &self.offer_ttl_hours)
            .field("reading_retention_days", &self.reading_retention_days)
            .field(
                "dead_letter_retention_days",
                &self.dead_letter_retention_days,
            )
            .field("revocation_resend_secs", &self.revocation_resend_secs)
            .field("analytics_min_group", &self.analytics_min_group)
            .field("api_rate_per_user", &self.api_rate_per_user)
            .field("api_rate_admin", &self.api_rate_admin)
            .field("assessments_per_hour", &self.assessments_per_hour)
            .field("listener", &self.listener)
            .field("proactive", &self.proactive)
            .field("keys", &self.keys)
            .finish()
    }
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("client_id", &self.client_id)
            .field("group", &self.group)
            .finish()
    }
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

    pub fn revocation_resend(&self) -> Duration {
        Duration::from_secs(self.revocation_resend_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--database-url",
            "postgres://u:db-secret@h/db",
            "--admin-token",
            "admin-secret-0123456789",
            "--mqtt-password",
            "mqtt-secret",
            "--master-key",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.settings);
        for secret in [
            "db-secret",
            "admin-secret",
            "mqtt-secret",
            "00112233445566778899",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn nonsensical_intervals_are_refused() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        for args in [
            ["x", "--offer-ttl-hours", "0"],
            ["x", "--worker-poll-ms", "0"],
            ["x", "--ingest-concurrency", "0"],
            ["x", "--db-max-connections", "0"],
            ["x", "--revocation-resend-secs", "0"],
            ["x", "--analytics-min-group", "1"],
        ] {
            assert!(
                <Cli as clap::Parser>::try_parse_from(args).is_err(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn the_analytics_group_size_defaults_to_ten() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["x"]).unwrap();
        assert_eq!(parsed.settings.analytics_min_group, MinGroupSize::DEFAULT);
        let parsed =
            <Cli as clap::Parser>::try_parse_from(["x", "--analytics-min-group", "3"]).unwrap();
        assert_eq!(parsed.settings.analytics_min_group.get(), 3);
    }

    #[test]
    fn the_mqtt_url_is_the_shared_broker_url() {
        // The rules are `ecs_mqtt_link`'s, tested there; the flag takes them.
        let url: MqttUrl = "mqtts://broker.example".parse().unwrap();
        assert_eq!(url.to_string(), "mqtts://broker.example:8883");
        assert!("mqtt://x:0".parse::<MqttUrl>().is_err());
    }

    #[derive(clap::Parser, Debug)]
    struct Serve {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn serve_settings_have_distinct_flags() {
        use clap::CommandFactory;
        Serve::command().debug_assert();
    }

    #[derive(clap::Parser, Debug)]
    struct ServeModel {
        #[command(flatten)]
        model: ModelSettings,
    }

    #[derive(clap::Parser, Debug)]
    struct ServeModelServer {
        #[command(flatten)]
        server: ModelServerSettings,
    }

    #[test]
    fn model_settings_default_to_what_the_flags_default_to() {
        use clap::Parser;
        let parsed = ServeModel::try_parse_from(["serve"]).unwrap();
        assert_eq!(
            format!("{:?}", parsed.model),
            format!("{:?}", ModelSettings::default())
        );
        let http = parsed.model.http();
        assert_eq!(http.timeout, Duration::from_millis(800));
        assert_eq!(http.retries, 1);
        let breaker = parsed.model.breaker();
        assert_eq!(breaker.failure_threshold, 5);
        assert_eq!(breaker.open_for, Duration::from_secs(10));
    }

    #[test]
    fn model_settings_refuse_nonsense() {
        use clap::Parser;
        for args in [
            &["serve", "--model-url", "ftp://x:1"][..],
            &["serve", "--model-url", "not a url"],
            &["serve", "--model-timeout-ms", "0"],
            &["serve", "--model-retries", "50"],
            &["serve", "--model-breaker-failures", "0"],
            &["serve", "--model", "oracle"],
        ] {
            assert!(ServeModel::try_parse_from(args).is_err(), "{args:?}");
        }
        for args in [
            &["model-server", "--model-fail-rate", "1.5"][..],
            &["model-server", "--model-fail-rate", "lots"],
            &["model-server", "--model", "http"],
        ] {
            assert!(ServeModelServer::try_parse_from(args).is_err(), "{args:?}");
        }
        let s = ServeModelServer::try_parse_from(["model-server", "--model-fail-rate", "0.25"])
            .unwrap();
        assert_eq!(s.server.fail_rate, 0.25);
        assert_eq!(s.server.kind, LocalModelKind::Scorecard);
    }
}
