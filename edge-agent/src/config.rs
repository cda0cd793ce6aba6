//! What an agent needs to know before it starts.

use std::path::PathBuf;
use std::time::Duration;

pub use ecs_mqtt_link::{BrokerUrl, Scheme};
use ecs_protocol::{DeviceId, MAX_READINGS_PER_BATCH};

use crate::buffer::MAX_SEQS_PER_SECOND;
use crate::error::{Error, Result};
use crate::sensor::Archetype;

// One seq per sample: the sampler must never issue seqs faster than the microsecond clock.
const _: () = assert!(AgentConfig::MAX_SAMPLE_RATE_HZ <= MAX_SEQS_PER_SECOND as f64);

/// Configuration of one edge agent. Build it with [`AgentConfig::new`], then adjust the public
/// fields; [`crate::Agent::start`] checks the whole value before anything runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The device's identity: MQTT client id, topic prefix and the owner of every reading.
    pub device_id: DeviceId,
    /// The SQLite file holding unacknowledged readings and the notification inbox.
    pub db_path: PathBuf,
    pub broker: BrokerUrl,
    /// Required for `mqtts://`, ignored for `mqtt://`.
    pub tls: Option<TlsFiles>,
    /// Readings per second; fractions are allowed (0.5 = one every two seconds).
    pub sample_rate_hz: f64,
    /// Seed of the simulated sensor; `None` derives one from the device id, so a device keeps
    /// its persona across restarts.
    pub sensor_seed: Option<u64>,
    /// Kind of person the sensor simulates; `None` draws every trait from the seed.
    pub sensor_archetype: Option<Archetype>,
    /// Most readings kept on disk; beyond it the oldest are dropped (and counted).
    pub buffer_capacity: u64,
    /// Most readings per uplink batch (at most [`MAX_READINGS_PER_BATCH`]).
    pub batch_size: usize,
    /// A partial batch goes out at least this often.
    pub flush_interval: Duration,
    /// A batch without an application ack after this long is sent again.
    pub ack_timeout: Duration,
    /// Most batches sent and not yet acknowledged at any time.
    pub inflight_batches: usize,
    /// Where to serve `GET /metrics` (a loopback address; port 0 picks one); `None`: no
    /// endpoint.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    pub const DEFAULT_SAMPLE_RATE_HZ: f64 = 10.0;
    pub const DEFAULT_BUFFER_CAPACITY: u64 = 1_000_000;
    pub const DEFAULT_BATCH_SIZE: usize = 100;
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_INFLIGHT_BATCHES: usize = 8;
    /// Lowest accepted sample rate (one reading every ~17 minutes).
    pub const MIN_SAMPLE_RATE_HZ: f64 = 0.001;
    /// Highest accepted sample rate: beyond it the simulation is a load generator, not a phone.
    ///
    /// It must stay at or below one reading per microsecond ([`MAX_SEQS_PER_SECOND`]): the
    /// buffer numbers a restarted or reinstalled device from the wall clock in microseconds, which
    /// is above every earlier seq only if seqs never outrun the clock (see [`crate::buffer`]).
    /// Checked at compile time below; [`AgentConfig::validate`] enforces it on the configured rate.
    pub const MAX_SAMPLE_RATE_HZ: f64 = 10_000.0;

    /// Defaults everywhere, with the database at `./ecs-edge-<device>.db`.
    pub fn new(device_id: DeviceId, broker: BrokerUrl) -> Self {
        Self {
            db_path: Self::default_db_path(&device_id),
            device_id,
            broker,
            tls: None,
            sample_rate_hz: Self::DEFAULT_SAMPLE_RATE_HZ,
            sensor_seed: None,
            sensor_archetype: None,
            buffer_capacity: Self::DEFAULT_BUFFER_CAPACITY,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            ack_timeout: Self::DEFAULT_ACK_TIMEOUT,
            inflight_batches: Self::DEFAULT_INFLIGHT_BATCHES,
            metrics_addr: None,
        }
    }

    pub fn default_db_path(device_id: &DeviceId) -> PathBuf {
        PathBuf::from(format!("./ecs-edge-{device_id}.db"))
    }

    /// The seed the sensor will use: the configured one, or a stable hash of the device id
    /// (FNV-1a, spelled out so it never changes with a library version).
    pub fn effective_seed(&self) -> u64 {
        self.sensor_seed.unwrap_or_else(|| {
            self.device_id
                .as_str()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                })
        })
    }

    /// Rejects values the agent cannot run with, naming the first one.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::InvalidConfig(what));
        // `contains` is false for NaN too. The upper bound keeps seqs behind the microsecond
        // clock (see `MAX_SAMPLE_RATE_HZ`), which the buffer's numbering relies on.
        if !(Self::MIN_SAMPLE_RATE_HZ..=Self::MAX_SAMPLE_RATE_HZ).contains(&self.sample_rate_hz) {
            return invalid(format!(
                "sample rate {} Hz is outside {}..={}",
                self.sample_rate_hz,
                Self::MIN_SAMPLE_RATE_HZ,
                Self::MAX_SAMPLE_RATE_HZ
            ));
        }
        if self.buffer_capacity == 0 {
            return invalid("buffer capacity must be at least 1 reading".into());
        }
        if self.batch_size == 0 || self.batch_size > MAX_READINGS_PER_BATCH {
            return invalid(format!(
                "batch size {} is outside 1..={MAX_READINGS_PER_BATCH}",
                self.batch_size
            ));
        }
        if self.inflight_batches == 0 {
            return invalid("the in-flight window must hold at least 1 batch".into());
        }
        if self.flush_interval.is_zero() || self.ack_timeout.is_zero() {
            return invalid("flush interval and ack timeout must be positive".into());
        }
        if let Some(addr) = self.metrics_addr {
            crate::metrics::check_addr(addr).map_err(Error::InvalidConfig)?;
        }
        if self.broker.scheme == Scheme::Mqtts && self.tls.is_none() {
            return invalid(format!(
                "{} needs a CA certificate, a device certificate and its key (--tls-ca-file, \
                 --tls-cert-file, --tls-key-file), or a plain mqtt:// broker (--mqtt-url)",
                self.broker
            ));
        }
        Ok(())
    }
}

/// PEM files for mutual TLS: the CA that signed the broker's certificate, and this device's
/// certificate (chain) and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> BrokerUrl {
        s.parse().unwrap()
    }

    #[test]
    fn seed_derives_stably_from_the_device() {
        let device = DeviceId::parse("phone1").unwrap();
        let config = AgentConfig::new(device.clone(), url("mqtt://localhost"));
        let again = AgentConfig::new(device, url("mqtt://localhost"));
        assert_eq!(config.effective_seed(), again.effective_seed());
        let other = AgentConfig::new(DeviceId::parse("phone2").unwrap(), url("mqtt://x"));
        assert_ne!(config.effective_seed(), other.effective_seed());
    }

    #[test]
    fn unusable_sample_rates_are_rejected() {
        for hz in [0.0, -1.0, 1e-300, f64::NAN, f64::INFINITY, 1e6] {
            let mut config = AgentConfig::new(DeviceId::random(), url("mqtt://localhost"));
            config.sample_rate_hz = hz;
            assert!(config.validate().is_err(), "{hz} Hz was accepted");
        }
    }

    #[test]
    fn the_sample_rate_never_outruns_one_seq_per_microsecond() {
        let limit = MAX_SEQS_PER_SECOND as f64;
        assert!(AgentConfig::MAX_SAMPLE_RATE_HZ <= limit);
        let with_rate = |hz| {
            let mut config = AgentConfig::new(DeviceId::random(), url("mqtt://localhost"));
            config.sample_rate_hz = hz;
            config.validate()
        };
        assert!(with_rate(AgentConfig::MAX_SAMPLE_RATE_HZ).is_ok());
        assert!(with_rate(AgentConfig::DEFAULT_SAMPLE_RATE_HZ).is_ok());
        for hz in [
            AgentConfig::MAX_SAMPLE_RATE_HZ * 1.000_001,
            limit,
            limit + 1.0,
            f64::MAX,
        ] {
            assert!(
                matches!(with_rate(hz), Err(Error::InvalidConfig(_))),
                "{hz} Hz was accepted"
            );
        }
    }

    #[test]
    fn mqtts_without_tls_files_is_rejected() {
        let config = AgentConfig::new(DeviceId::random(), url("mqtts://localhost"));
        assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
    }
}
