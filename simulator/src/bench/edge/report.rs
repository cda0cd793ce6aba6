//! What the edge benchmark found: one flat record (the `--json` line), its targets (issue 7) and
//! the readable summary.

use serde::Serialize;

use super::append::Appended;
use super::drain::DrainFigures;
use super::steady::SteadyFigures;
use crate::bench::ingest::copy::CopyFigures;

/// Resident memory of one agent at 100 Hz, at most (12 MiB, in KiB as `/proc` counts).
pub const TARGET_RSS_KB: u64 = 12 * 1024;
/// Payload bytes per reading on the wire, at most.
pub const TARGET_BYTES_PER_READING: f64 = 12.0;
/// Readings appended to the buffer per second, at least.
pub const TARGET_APPEND_PER_S: f64 = 50_000.0;
/// Readings drained from a full buffer into Postgres per second, at least.
pub const TARGET_DRAIN_PER_S: f64 = 20_000.0;

/// Everything measured in one run.
pub struct Findings {
    pub release_build: bool,
    pub database: String,
    pub broker: &'static str,
    pub steady: SteadyFigures,
    pub append: Appended,
    pub append_reference: Appended,
    pub per_transaction: usize,
    pub drain: DrainFigures,
    pub copy: CopyFigures,
    pub drain_batch_size: usize,
    pub drain_inflight_batches: usize,
}

/// The `--json` record. Field names are a contract with whoever charts them: add, don't rename.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeReport {
    pub sample_hz: f64,
    pub agent_s: f64,
    /// The agent's resident memory at the end of the 100 Hz run (VmRSS), in KiB.
    pub rss_kb_at_100hz: u64,
    /// The most a once-a-second sample saw, and the kernel's high-water mark (VmHWM).
    pub rss_kb_max_sampled: u64,
    pub peak_rss_kb_at_100hz: u64,
    pub cpu_ms_per_1000_readings: Option<f64>,
    /// Average share of one core the agent used.
    pub cpu_cores: Option<f64>,
    pub readings_produced: u64,
    pub readings_acked: u64,
    pub readings_dropped: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub reconnects: u64,
    pub bytes_published: u64,
    /// `bytes_published` / `readings_acked`: MQTT payload bytes, resends included.
    pub bytes_per_reading: Option<f64>,
    /// The same readings as JSON, and as the agent encodes them (computed, not measured).
    pub json_bytes_per_reading: Option<f64>,
    pub encoded_bytes_per_reading: Option<f64>,
    /// How many times smaller than JSON the wire is.
    pub json_ratio: Option<f64>,
    pub append_readings: u64,
    pub append_per_transaction: usize,
    pub append_s: f64,
    pub append_per_s: f64,
    pub sqlite_insert_s: f64,
    pub sqlite_insert_per_s: f64,
    /// `append_per_s` / `sqlite_insert_per_s`.
    pub append_ratio: Option<f64>,
    pub drain_readings: u64,
    pub drain_batch_size: usize,
    pub drain_inflight_batches: usize,
    pub drain_s: f64,
    pub drain_per_s: f64,
    pub drain_batches_resent: u64,
    pub drain_peak_rss_kb: u64,
    pub drain_cpu_s: Option<f64>,
    pub copy_rows: u64,
    pub copy_s: f64,
    pub copy_rows_per_s: f64,
    /// `drain_per_s` / `copy_rows_per_s`.
    pub drain_ratio: Option<f64>,
    pub broker: &'static str,
    pub release_build: bool,
    pub database: String,
    pub targets: Targets,
}

/// The targets, each met or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// Peak resident memory (VmHWM) of the agent at 100 Hz at most 12 MiB.
    pub rss_at_100hz_at_most_12_mb: bool,
    pub bytes_per_reading_at_most_12: bool,
    pub append_at_least_50000_per_s: bool,
    pub drain_at_least_20000_per_s: bool,
}

fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    (theirs > 0.0).then(|| ours / theirs)
}

impl EdgeReport {
    pub fn new(f: &Findings) -> Self {
        let s = &f.steady;
        let per_acked =
            |bytes: u64| (s.readings_acked > 0).then(|| bytes as f64 / s.readings_acked as f64);
        let bytes_per_reading = per_acked(s.bytes_published);
        let json_bytes_per_reading = s.encoded.json_per_reading();
        let cpu_ms_per_1000_readings = s
            .cpu_s
            .filter(|_| s.readings_produced > 0)
            .map(|cpu| cpu * 1000.0 / (s.readings_produced as f64 / 1000.0));
        let targets = Targets {
            rss_at_100hz_at_most_12_mb: s.rss_kb_peak > 0 && s.rss_kb_peak <= TARGET_RSS_KB,
            bytes_per_reading_at_most_12: bytes_per_reading
                .is_some_and(|b| b <= TARGET_BYTES_PER_READING),
            append_at_least_50000_per_s: f.append.per_s() >= TARGET_APPEND_PER_S,
            drain_at_least_20000_per_s: f.drain.per_s >= TARGET_DRAIN_PER_S,
        };
        Self {
            sample_hz: s.sample_hz,
            agent_s: s.seconds,
            rss_kb_at_100hz: s.rss_kb_end,
            rss_kb_max_sampled: s.rss_kb_max_sampled,
            peak_rss_kb_at_100hz: s.rss_kb_peak,
            cpu_ms_per_1000_readings,
            cpu_cores: s.cpu_s.and_then(|cpu| ratio(cpu, s.seconds)),
            readings_produced: s.readings_produced,
            readings_acked: s.readings_acked,
            readings_dropped: s.readings_dropped,
            batches_sent: s.batches_sent,
            batches_resent: s.batches_resent,
            reconnects: s.reconnects,
            bytes_published: s.bytes_published,
            bytes_per_reading,
            json_bytes_per_reading,
            encoded_bytes_per_reading: s.encoded.packed_per_reading(),
            json_ratio: bytes_per_reading
                .zip(json_bytes_per_reading)
                .and_then(|(wire, json)| ratio(json, wire)),
            append_readings: f.append.rows(),
            append_per_transaction: f.per_transaction,
            append_s: f.append.seconds,
            append_per_s: f.append.per_s(),
            sqlite_insert_s: f.append_reference.seconds,
            sqlite_insert_per_s: f.append_reference.per_s(),
            append_ratio: ratio(f.append.per_s(), f.append_reference.per_s()),
            drain_readings: f.drain.readings,
            drain_batch_size: f.drain_batch_size,
            drain_inflight_batches: f.drain_inflight_batches,
            drain_s: f.drain.seconds,
            drain_per_s: f.drain.per_s,
            drain_batches_resent: f.drain.batches_resent,
            drain_peak_rss_kb: f.drain.rss_kb_peak,
            drain_cpu_s: f.drain.cpu_s,
            copy_rows: f.copy.rows,
            copy_s: f.copy.seconds,
            copy_rows_per_s: f.copy.rows_per_s,
            drain_ratio: ratio(f.drain.per_s, f.copy.rows_per_s),
            broker: f.broker,
            release_build: f.release_build,
            database: f.database.clone(),
            targets,
        }
    }

    /// The readable summary, one line each.
    pub fn summary(&self) -> Vec<String> {
        let num =
            |v: Option<f64>, unit: &str| v.map_or("–".to_owned(), |v| format!("{v:.2}{unit}"));
        let times = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}x"));
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        let t = &self.targets;
        vec![
            format!(
                "Edge benchmark: {} build, one ecs-edge-agent process, {}",
                if self.release_build {
                    "release"
                } else {
                    "DEBUG"
                },
                self.broker
            ),
            format!(
                "  {} Hz for {:.0} s: resident {} KiB at the end ({} KiB peak), CPU {} per 1 000 \
                 readings ({} of a core); {} produced, {} acked, {} dropped, {} batches ({} resent)",
                self.sample_hz,
                self.agent_s,
                self.rss_kb_at_100hz,
                self.peak_rss_kb_at_100hz,
                num(self.cpu_ms_per_1000_readings, " ms"),
                num(self.cpu_cores, ""),
                self.readings_produced,
                self.readings_acked,
                self.readings_dropped,
                self.batches_sent,
                self.batches_resent
            ),
            format!(
                "  on the wire: {} bytes a reading ({} published); the same readings as JSON {} \
                 ({} smaller on the wire); encoded offline {}",
                num(self.bytes_per_reading, ""),
                self.bytes_published,
                num(self.json_bytes_per_reading, ""),
                times(self.json_ratio),
                num(self.encoded_bytes_per_reading, "")
            ),
            format!(
                "  append: {} readings in transactions of {}: {:.0}/s in {:.2} s; plain SQLite \
                 INSERT {:.0}/s in {:.2} s; ratio {}",
                self.append_readings,
                self.append_per_transaction,
                self.append_per_s,
                self.append_s,
                self.sqlite_insert_per_s,
                self.sqlite_insert_s,
                times(self.append_ratio)
            ),
            format!(
                "  drain: {} readings into Postgres through the cloud in {:.1} s: {:.0}/s \
                 (batches of {}, {} in flight, {} resent); COPY of the same rows {:.0}/s; ratio {}",
                self.drain_readings,
                self.drain_s,
                self.drain_per_s,
                self.drain_batch_size,
                self.drain_inflight_batches,
                self.drain_batches_resent,
                self.copy_rows_per_s,
                times(self.drain_ratio)
            ),
            format!(
                "Targets: ≤ 12 MiB resident at 100 Hz (peak): {}; ≤ {TARGET_BYTES_PER_READING} bytes \
                 a reading: {}; ≥ {TARGET_APPEND_PER_S} appended/s: {}; ≥ {TARGET_DRAIN_PER_S} \
                 drained/s: {}",
                met(t.rss_at_100hz_at_most_12_mb),
                met(t.bytes_per_reading_at_most_12),
                met(t.append_at_least_50000_per_s),
                met(t.drain_at_least_20000_per_s)
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::edge::wire::Encoded;
    use crate::bench::ingest::usage::CpuFigures;

    fn findings(peak_kb: u64, bytes_published: u64, append_s: f64, drain_s: f64) -> Findings {
        Findings {
            release_build: true,
            database: "ecs_bench_x".into(),
            broker: "embedded broker, mutual TLS",
            steady: SteadyFigures {
                sample_hz: 100.0,
                seconds: 60.0,
                rss_kb_end: peak_kb - 100,
                rss_kb_max_sampled: peak_kb - 50,
                rss_kb_peak: peak_kb,
                cpu_s: Some(1.2),
                readings_produced: 6_000,
                readings_acked: 5_000,
                readings_dropped: 0,
                batches_sent: 50,
                batches_resent: 0,
                bytes_published,
                reconnects: 0,
                encoded: Encoded {
                    readings: 5_000,
                    json_bytes: 1_000_000,
                    packed_bytes: 50_000,
                },
            },
            append: Appended {
                first_seq: 1,
                last_seq: 1_000_000,
                seconds: append_s,
            },
            append_reference: Appended {
                first_seq: 1,
                last_seq: 1_000_000,
                seconds: 10.0,
            },
            per_transaction: 1_000,
            drain: DrainFigures {
                readings: 1_000_000,
                seconds: drain_s,
                per_s: 1_000_000.0 / drain_s,
                rss_kb_peak: 20_000,
                cpu_s: None,
                batches_sent: 10_000,
                batches_resent: 0,
                bytes_published: 10_000_000,
            },
            copy: CopyFigures {
                rows: 1_000_000,
                bytes: 1,
                seconds: 20.0,
                rows_per_s: 50_000.0,
                cpu: CpuFigures::default(),
            },
            drain_batch_size: 100,
            drain_inflight_batches: 8,
        }
    }

    #[test]
    fn the_figures_and_ratios_follow_from_the_measurements() {
        let report = EdgeReport::new(&findings(10_000, 50_000, 20.0, 40.0));
        assert_eq!(report.bytes_per_reading, Some(10.0));
        assert_eq!(report.json_bytes_per_reading, Some(200.0));
        assert_eq!(report.json_ratio, Some(20.0));
        // 1.2 s of CPU over 6 000 readings.
        assert!((report.cpu_ms_per_1000_readings.unwrap() - 200.0).abs() < 1e-9);
        assert!((report.cpu_cores.unwrap() - 0.02).abs() < 1e-12);
        assert_eq!(report.append_per_s, 50_000.0);
        assert_eq!(report.append_ratio, Some(0.5));
        assert_eq!(report.drain_per_s, 25_000.0);
        assert_eq!(report.drain_ratio, Some(0.5));
        assert_eq!(
            report.targets,
            Targets {
                rss_at_100hz_at_most_12_mb: true,
                bytes_per_reading_at_most_12: true,
                append_at_least_50000_per_s: true,
                drain_at_least_20000_per_s: true,
            }
        );
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "rss_kb_at_100hz",
            "bytes_per_reading",
            "json_bytes_per_reading",
            "append_per_s",
            "drain_per_s",
            "targets",
        ] {
            assert!(json.get(field).is_some(), "the JSON line lacks {field}");
        }
    }

    #[test]
    fn each_target_is_missed_on_its_own_figure() {
        let report = EdgeReport::new(&findings(12 * 1024 + 1, 65_000, 25.0, 60.0));
        assert_eq!(
            report.targets,
            Targets {
                rss_at_100hz_at_most_12_mb: false,
                bytes_per_reading_at_most_12: false,
                append_at_least_50000_per_s: false,
                drain_at_least_20000_per_s: false,
            }
        );
        // Exactly at the memory bound is within it.
        let at_bound = EdgeReport::new(&findings(12 * 1024, 50_000, 20.0, 40.0));
        assert!(at_bound.targets.rss_at_100hz_at_most_12_mb);
        assert_eq!(report.summary().len(), 6);
        assert!(report.summary()[5].contains("MISSED"));
    }

    #[test]
    fn nothing_acked_gives_no_bytes_figure_and_misses_it() {
        let mut f = findings(10_000, 0, 20.0, 40.0);
        f.steady.readings_acked = 0;
        f.steady.encoded = Encoded {
            readings: 0,
            json_bytes: 0,
            packed_bytes: 0,
        };
        let report = EdgeReport::new(&f);
        assert_eq!(report.bytes_per_reading, None);
        assert_eq!(report.json_ratio, None);
        assert!(!report.targets.bytes_per_reading_at_most_12);
    }
}
