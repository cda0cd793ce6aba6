//! What the broker benchmark found: one flat record (the `--json` line) and the readable
//! summary, with the targets the figures are held against.

use std::time::Duration;

use serde::Serialize;

use super::publish::PublishFigures;

/// All phones connected at once.
pub const TARGET_DEVICES: usize = 10_000;
/// The whole fleet back after a broker restart within this time.
pub const TARGET_STORM: Duration = Duration::from_secs(30);

/// How a fleet got connected.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFigures {
    pub devices: usize,
    pub connected: usize,
    /// Until the last CONNACK; `None` when not all came within the timeout.
    pub all_within: Option<Duration>,
}

impl ConnectFigures {
    fn seconds(&self) -> Option<f64> {
        self.all_within.map(|d| d.as_secs_f64())
    }

    fn per_second(&self) -> Option<f64> {
        self.seconds()
            .filter(|s| *s > 0.0)
            .map(|s| self.devices as f64 / s)
    }
}

/// Resident memory of the broker process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub idle_bytes: u64,
    pub connected_bytes: u64,
    pub connections: usize,
}

impl Memory {
    fn per_connection(&self) -> Option<f64> {
        (self.connections > 0).then(|| {
            self.connected_bytes.saturating_sub(self.idle_bytes) as f64 / self.connections as f64
        })
    }
}

/// The broker restart and the phones' return.
#[derive(Debug, Clone, Copy)]
pub struct StormFigures {
    /// From the kill until the new broker accepted TCP.
    pub restart: Duration,
    pub reconnect: ConnectFigures,
}

/// Everything measured in one run.
pub struct Findings {
    pub release_build: bool,
    pub inflight_per_publisher: usize,
    pub in_transit: Option<usize>,
    pub publish_secs: u64,
    pub connect: ConnectFigures,
    pub memory: Memory,
    pub publish: PublishFigures,
    pub storm: StormFigures,
    pub connection_errors: u64,
    pub mosquitto_addr: String,
    pub mosquitto_connect: ConnectFigures,
    pub mosquitto_publish: PublishFigures,
}

/// The `--json` record. Field names are a contract with whoever charts them: add, don't rename.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    pub devices: usize,
    pub devices_connected: usize,
    pub connect_all_s: Option<f64>,
    pub handshakes_per_s: Option<f64>,
    pub rss_idle_bytes: u64,
    pub rss_connected_bytes: u64,
    pub rss_bytes_per_connection: Option<f64>,
    pub publishers: usize,
    pub inflight_per_publisher: usize,
    /// Messages in transit allowed over all phones; `None`: unbounded.
    pub in_transit: Option<usize>,
    pub payload_bytes: usize,
    pub publish_secs: u64,
    pub messages_per_s: f64,
    pub acked_per_s: f64,
    pub p50_delivery_ms: Option<f64>,
    pub p99_delivery_ms: Option<f64>,
    pub max_delivery_ms: Option<f64>,
    pub broker_restart_s: f64,
    pub devices_reconnected: usize,
    pub reconnect_storm_s: Option<f64>,
    pub connection_errors: u64,
    pub mosquitto_addr: String,
    pub mosquitto_devices: usize,
    pub mosquitto_devices_connected: usize,
    pub mosquitto_connect_all_s: Option<f64>,
    pub mosquitto_handshakes_per_s: Option<f64>,
    pub mosquitto_publishers: usize,
    pub mosquitto_messages_per_s: f64,
    pub mosquitto_acked_per_s: f64,
    pub mosquitto_p50_delivery_ms: Option<f64>,
    pub mosquitto_p99_delivery_ms: Option<f64>,
    pub messages_ratio: Option<f64>,
    pub release_build: bool,
    pub targets: Targets,
}

/// The targets, each met or not.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    /// 10 000 phones (at least) connected at once.
    pub ten_thousand_connected: bool,
    /// The whole fleet back within 30 s of a broker restart.
    pub storm_under_30_s: bool,
    /// Delivered messages per second at least Mosquitto's.
    pub throughput_at_least_mosquitto: bool,
}

impl BrokerReport {
    pub fn new(f: &Findings) -> Self {
        let ratio = (f.mosquitto_publish.messages_per_s > 0.0)
            .then(|| f.publish.messages_per_s / f.mosquitto_publish.messages_per_s);
        let storm_s = f.storm.reconnect.seconds();
        let targets = Targets {
            ten_thousand_connected: f.connect.devices >= TARGET_DEVICES
                && f.connect.connected == f.connect.devices,
            storm_under_30_s: f.storm.reconnect.devices >= TARGET_DEVICES
                && storm_s.is_some_and(|s| s < TARGET_STORM.as_secs_f64()),
            throughput_at_least_mosquitto: ratio.is_some_and(|r| r >= 1.0),
        };
        let latency = f.publish.latency;
        let mosquitto_latency = f.mosquitto_publish.latency;
        Self {
            devices: f.connect.devices,
            devices_connected: f.connect.connected,
            connect_all_s: f.connect.seconds(),
            handshakes_per_s: f.connect.per_second(),
            rss_idle_bytes: f.memory.idle_bytes,
            rss_connected_bytes: f.memory.connected_bytes,
            rss_bytes_per_connection: f.memory.per_connection(),
            publishers: f.publish.publishers,
            inflight_per_publisher: f.inflight_per_publisher,
            in_transit: f.in_transit,
            payload_bytes: super::publish::PAYLOAD_BYTES,
            publish_secs: f.publish_secs,
            messages_per_s: f.publish.messages_per_s,
            acked_per_s: f.publish.acked_per_s,
            p50_delivery_ms: latency.map(|l| l.p50_ms),
            p99_delivery_ms: latency.map(|l| l.p99_ms),
            max_delivery_ms: latency.map(|l| l.max_ms),
            broker_restart_s: f.storm.restart.as_secs_f64(),
            devices_reconnected: f.storm.reconnect.connected,
            reconnect_storm_s: storm_s,
            connection_errors: f.connection_errors,
            mosquitto_addr: f.mosquitto_addr.clone(),
            mosquitto_devices: f.mosquitto_connect.devices,
            mosquitto_devices_connected: f.mosquitto_connect.connected,
            mosquitto_connect_all_s: f.mosquitto_connect.seconds(),
            mosquitto_handshakes_per_s: f.mosquitto_connect.per_second(),
            mosquitto_publishers: f.mosquitto_publish.publishers,
            mosquitto_messages_per_s: f.mosquitto_publish.messages_per_s,
            mosquitto_acked_per_s: f.mosquitto_publish.acked_per_s,
            mosquitto_p50_delivery_ms: mosquitto_latency.map(|l| l.p50_ms),
            mosquitto_p99_delivery_ms: mosquitto_latency.map(|l| l.p99_ms),
            messages_ratio: ratio,
            release_build: f.release_build,
            targets,
        }
    }

    /// The readable summary, one line each.
    pub fn summary(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        vec![
            format!(
                "Broker benchmark: {} phones over mutual TLS, {} build, against Mosquitto at {}",
                self.devices,
                if self.release_build {
                    "release"
                } else {
                    "DEBUG"
                },
                self.mosquitto_addr
            ),
            connect_line(
                "connect all",
                self.devices_connected,
                self.devices,
                self.connect_all_s,
            ),
            format!(
                "  memory        broker RSS {} idle, {} connected: {} per connection",
                mib(self.rss_idle_bytes as f64),
                mib(self.rss_connected_bytes as f64),
                self.rss_bytes_per_connection
                    .map_or("n/a".to_owned(), |b| format!("{:.1} KiB", b / 1024.0))
            ),
            format!(
                "  pacing        {} in flight per phone until PUBACK; {}; {}-byte payloads, {} s",
                self.inflight_per_publisher,
                self.in_transit
                    .map_or("no bound on messages in transit".to_owned(), |n| {
                        format!("at most {n} messages in transit (sent, not yet received) overall")
                    }),
                self.payload_bytes,
                self.publish_secs
            ),
            publish_line(
                "publish",
                self.publishers,
                self.messages_per_s,
                self.acked_per_s,
                self.p50_delivery_ms,
                self.p99_delivery_ms,
            ),
            format!(
                "  storm         broker killed and restarted (listening after {:.2} s); {}",
                self.broker_restart_s,
                match self.reconnect_storm_s {
                    Some(s) => format!("all {} phones back after {s:.2} s", self.devices),
                    None => format!(
                        "only {}/{} phones back within the timeout",
                        self.devices_reconnected, self.devices
                    ),
                }
            ),
            connect_line(
                "mosquitto con.",
                self.mosquitto_devices_connected,
                self.mosquitto_devices,
                self.mosquitto_connect_all_s,
            ) + " (plain TCP)",
            publish_line(
                "mosquitto pub.",
                self.mosquitto_publishers,
                self.mosquitto_messages_per_s,
                self.mosquitto_acked_per_s,
                self.mosquitto_p50_delivery_ms,
                self.mosquitto_p99_delivery_ms,
            ),
            format!(
                "  ratio         {} of Mosquitto's delivered messages per second",
                self.messages_ratio
                    .map_or("n/a".to_owned(), |r| format!("{r:.2}x"))
            ),
            format!(
                "Targets: {TARGET_DEVICES} phones connected at once: {}; reconnect storm under {} s: \
                 {}; throughput at least Mosquitto's: {}",
                met(self.targets.ten_thousand_connected),
                TARGET_STORM.as_secs(),
                met(self.targets.storm_under_30_s),
                met(self.targets.throughput_at_least_mosquitto)
            ),
        ]
    }
}

fn connect_line(what: &str, connected: usize, devices: usize, seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s > 0.0 => format!(
            "  {what:<13} {devices} phones, all started at once, all CONNACKed in {s:.2} s \
             ({:.0} connections/s)",
            devices as f64 / s
        ),
        _ => format!("  {what:<13} only {connected}/{devices} phones connected within the timeout"),
    }
}

fn publish_line(
    what: &str,
    publishers: usize,
    delivered: f64,
    acked: f64,
    p50: Option<f64>,
    p99: Option<f64>,
) -> String {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"));
    format!(
        "  {what:<13} {publishers} phones publishing QoS 1: {delivered:.0} msg/s delivered \
         ({acked:.0} msg/s acked), delivery p50 {} p99 {}",
        ms(p50),
        ms(p99)
    )
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::latency::LatencySummary;

    fn findings() -> Findings {
        let fleet = |devices, seconds| ConnectFigures {
            devices,
            connected: devices,
            all_within: Some(Duration::from_secs(seconds)),
        };
        let publish = |rate| PublishFigures {
            publishers: 100,
            delivered: 1000,
            messages_per_s: rate,
            acked_per_s: rate,
            latency: Some(LatencySummary {
                samples: 1000,
                p50_ms: 2.0,
                p99_ms: 9.0,
                max_ms: 12.0,
            }),
        };
        Findings {
            release_build: true,
            inflight_per_publisher: 2,
            in_transit: Some(1000),
            publish_secs: 10,
            connect: fleet(10_000, 20),
            memory: Memory {
                idle_bytes: 10 << 20,
                connected_bytes: (10 << 20) + 10_000 * 2048,
                connections: 10_000,
            },
            publish: publish(30_000.0),
            storm: StormFigures {
                restart: Duration::from_millis(50),
                reconnect: fleet(10_000, 25),
            },
            connection_errors: 3,
            mosquitto_addr: "127.0.0.1:1883".into(),
            mosquitto_connect: fleet(10_000, 2),
            mosquitto_publish: publish(20_000.0),
        }
    }

    #[test]
    fn the_json_line_has_every_field_the_charts_read() {
        let json = serde_json::to_value(BrokerReport::new(&findings())).unwrap();
        for field in [
            "devices",
            "devices_connected",
            "connect_all_s",
            "handshakes_per_s",
            "reconnect_storm_s",
            "messages_per_s",
            "mosquitto_messages_per_s",
            "messages_ratio",
            "p99_delivery_ms",
            "p50_delivery_ms",
            "rss_bytes_per_connection",
            "mosquitto_connect_all_s",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["devices"], 10_000);
        assert_eq!(json["handshakes_per_s"], 500.0);
        assert_eq!(json["messages_ratio"], 1.5);
        assert_eq!(json["rss_bytes_per_connection"], 2048.0);
    }

    #[test]
    fn targets_follow_the_figures() {
        let mut f = findings();
        let report = BrokerReport::new(&f);
        assert!(report.targets.ten_thousand_connected);
        assert!(report.targets.storm_under_30_s);
        assert!(report.targets.throughput_at_least_mosquitto);

        f.storm.reconnect.all_within = None;
        f.storm.reconnect.connected = 9_000;
        f.connect.devices = 1_000;
        f.connect.connected = 1_000;
        f.mosquitto_publish.messages_per_s = 60_000.0;
        let report = BrokerReport::new(&f);
        assert!(
            !report.targets.ten_thousand_connected,
            "1 000 phones prove nothing for 10 000"
        );
        assert!(!report.targets.storm_under_30_s);
        assert_eq!(report.reconnect_storm_s, None);
        assert!(!report.targets.throughput_at_least_mosquitto);
        // A line for every phase, and none of them panics on missing figures.
        assert_eq!(report.summary().len(), 10);
    }
}
