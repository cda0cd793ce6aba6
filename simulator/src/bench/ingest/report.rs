//! What the ingest benchmark found: one flat record (the `--json` line) and the readable
//! summary, with the targets the figures are held against.

use serde::Serialize;

use super::cloud_only::CloudOnlyFigures;
use super::copy::CopyFigures;
use super::pipeline::PipelineFigures;

/// End to end, at least this fraction of a plain COPY's rows per second.
pub const TARGET_END_TO_END_RATIO: f64 = 0.5;
/// The cloud alone, at least this fraction of a plain COPY's rows per second.
pub const TARGET_CLOUD_ONLY_RATIO: f64 = 0.8;
/// Sensor-to-commit p99 at half the maximum rate, under this.
pub const TARGET_LAG_P99_MS: f64 = 1000.0;

/// Everything measured in one run.
pub struct Findings {
    pub release_build: bool,
    pub database: String,
    pub batch_size: usize,
    pub flush_ms: u64,
    pub ack_timeout_ms: u64,
    /// The phones offered more than the pipeline takes.
    pub full: PipelineFigures,
    /// The phones offered half of what `full` committed.
    pub half: PipelineFigures,
    pub cloud: CloudOnlyFigures,
    pub copy: CopyFigures,
}

/// The `--json` record. Field names are a contract with whoever charts them: add, don't rename.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub phones: usize,
    pub sample_hz: f64,
    pub batch_size: usize,
    pub flush_ms: u64,
    pub ack_timeout_ms: u64,
    pub measured_s: f64,
    pub pipeline_offered_per_s: f64,
    pub pipeline_readings_per_s: f64,
    pub pipeline_acked_per_s: f64,
    /// Sensor-to-commit lag, upper bound (seen by a poll; see `lag_poll_ms`).
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
    /// Sensor to the start of the inserting transaction: a lower bound of the lag.
    pub insert_lag_p50_ms: Option<f64>,
    pub insert_lag_p99_ms: Option<f64>,
    pub lag_samples: usize,
    pub lag_poll_ms: Option<f64>,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub readings_lost_on_phones: u64,
    pub cpu_process_cores: Option<f64>,
    pub cpu_postgres_cores: Option<f64>,
    pub cpu_machine_cores: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub half_rate_sample_hz: f64,
    pub half_rate_offered_per_s: f64,
    pub half_rate_readings_per_s: f64,
    pub half_rate_acked_per_s: f64,
    pub half_rate_lag_p50_ms: Option<f64>,
    pub half_rate_lag_p99_ms: Option<f64>,
    pub half_rate_lag_max_ms: Option<f64>,
    pub half_rate_insert_lag_p50_ms: Option<f64>,
    pub half_rate_insert_lag_p99_ms: Option<f64>,
    pub half_rate_lag_samples: usize,
    pub half_rate_batches_resent: u64,
    pub half_rate_cpu_process_cores: Option<f64>,
    pub half_rate_cpu_postgres_cores: Option<f64>,
    pub half_rate_cpu_machine_cores: Option<f64>,
    pub half_rate_rss_bytes: Option<u64>,
    pub cloud_only_devices: usize,
    pub cloud_only_in_flight: usize,
    pub cloud_only_readings_per_s: f64,
    pub cloud_only_acked_per_s: f64,
    pub cloud_only_published_batches: u64,
    pub cloud_only_unacked_batches: u64,
    /// The generator ran out of batches: `cloud_only_readings_per_s` is a lower bound.
    pub cloud_only_pool_exhausted: bool,
    pub cloud_only_cpu_process_cores: Option<f64>,
    pub cloud_only_cpu_postgres_cores: Option<f64>,
    pub cloud_only_cpu_machine_cores: Option<f64>,
    pub cloud_only_rss_bytes: Option<u64>,
    pub copy_rows: u64,
    pub copy_bytes: usize,
    pub copy_s: f64,
    pub copy_rows_per_s: f64,
    pub copy_cpu_process_cores: Option<f64>,
    pub copy_cpu_postgres_cores: Option<f64>,
    pub copy_cpu_machine_cores: Option<f64>,
    pub ratio_end_to_end: Option<f64>,
    pub ratio_cloud_only: Option<f64>,
    pub release_build: bool,
    pub database: String,
    pub targets: Targets,
}

/// The targets, each met or not.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    /// Readings committed end to end at least 0.5x a plain COPY's rows per second.
    pub end_to_end_at_least_half_of_copy: bool,
    /// The cloud alone at least 0.8x a plain COPY's rows per second.
    pub cloud_only_at_least_0_8_of_copy: bool,
    /// p99 sensor-to-commit lag (upper bound) under 1 s at half the maximum rate.
    pub half_rate_lag_p99_under_1_s: bool,
}

impl IngestReport {
    pub fn new(f: &Findings) -> Self {
        let ratio = |rate: f64| (f.copy.rows_per_s > 0.0).then(|| rate / f.copy.rows_per_s);
        let ratio_end_to_end = ratio(f.full.committed_per_s);
        let ratio_cloud_only = ratio(f.cloud.committed_per_s);
        let (full, half) = (&f.full, &f.half);
        let targets = Targets {
            end_to_end_at_least_half_of_copy: ratio_end_to_end
                .is_some_and(|r| r >= TARGET_END_TO_END_RATIO),
            cloud_only_at_least_0_8_of_copy: ratio_cloud_only
                .is_some_and(|r| r >= TARGET_CLOUD_ONLY_RATIO),
            half_rate_lag_p99_under_1_s: half
                .lag
                .visible
                .is_some_and(|l| l.p99_ms < TARGET_LAG_P99_MS),
        };
        Self {
            phones: full.phones,
            sample_hz: full.sample_hz,
            batch_size: f.batch_size,
            flush_ms: f.flush_ms,
            ack_timeout_ms: f.ack_timeout_ms,
            measured_s: full.seconds,
            pipeline_offered_per_s: full.offered_per_s,
            pipeline_readings_per_s: full.committed_per_s,
            pipeline_acked_per_s: full.acked_per_s,
            lag_p50_ms: full.lag.visible.map(|l| l.p50_ms),
            lag_p99_ms: full.lag.visible.map(|l| l.p99_ms),
            lag_max_ms: full.lag.visible.map(|l| l.max_ms),
            insert_lag_p50_ms: full.lag.insert.map(|l| l.p50_ms),
            insert_lag_p99_ms: full.lag.insert.map(|l| l.p99_ms),
            lag_samples: full.lag.visible.map_or(0, |l| l.samples),
            lag_poll_ms: full.lag.poll_period_ms,
            batches_sent: full.batches_sent,
            batches_resent: full.batches_resent,
            readings_lost_on_phones: full.readings_lost,
            cpu_process_cores: full.cpu.process_cores,
            cpu_postgres_cores: full.cpu.postgres_cores,
            cpu_machine_cores: full.cpu.machine_cores,
            rss_bytes: full.memory.rss_bytes,
            peak_rss_bytes: full.memory.peak_rss_bytes,
            half_rate_sample_hz: half.sample_hz,
            half_rate_offered_per_s: half.offered_per_s,
            half_rate_readings_per_s: half.committed_per_s,
            half_rate_acked_per_s: half.acked_per_s,
            half_rate_lag_p50_ms: half.lag.visible.map(|l| l.p50_ms),
            half_rate_lag_p99_ms: half.lag.visible.map(|l| l.p99_ms),
            half_rate_lag_max_ms: half.lag.visible.map(|l| l.max_ms),
            half_rate_insert_lag_p50_ms: half.lag.insert.map(|l| l.p50_ms),
            half_rate_insert_lag_p99_ms: half.lag.insert.map(|l| l.p99_ms),
            half_rate_lag_samples: half.lag.visible.map_or(0, |l| l.samples),
            half_rate_batches_resent: half.batches_resent,
            half_rate_cpu_process_cores: half.cpu.process_cores,
            half_rate_cpu_postgres_cores: half.cpu.postgres_cores,
            half_rate_cpu_machine_cores: half.cpu.machine_cores,
            half_rate_rss_bytes: half.memory.rss_bytes,
            cloud_only_devices: f.cloud.devices,
            cloud_only_in_flight: f.cloud.in_flight,
            cloud_only_readings_per_s: f.cloud.committed_per_s,
            cloud_only_acked_per_s: f.cloud.acked_per_s,
            cloud_only_published_batches: f.cloud.published_batches,
            cloud_only_unacked_batches: f.cloud.unacked_batches,
            cloud_only_pool_exhausted: f.cloud.exhausted,
            cloud_only_cpu_process_cores: f.cloud.cpu.process_cores,
            cloud_only_cpu_postgres_cores: f.cloud.cpu.postgres_cores,
            cloud_only_cpu_machine_cores: f.cloud.cpu.machine_cores,
            cloud_only_rss_bytes: f.cloud.memory.rss_bytes,
            copy_rows: f.copy.rows,
            copy_bytes: f.copy.bytes,
            copy_s: f.copy.seconds,
            copy_rows_per_s: f.copy.rows_per_s,
            copy_cpu_process_cores: f.copy.cpu.process_cores,
            copy_cpu_postgres_cores: f.copy.cpu.postgres_cores,
            copy_cpu_machine_cores: f.copy.cpu.machine_cores,
            ratio_end_to_end,
            ratio_cloud_only,
            release_build: f.release_build,
            database: f.database.clone(),
            targets,
        }
    }

    /// The readable summary, one line each.
    pub fn summary(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        let ratio = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{r:.2}x"));
        vec![
            format!(
                "Ingest benchmark: {} build, scratch database {}, batches of {} readings, {:.1} s \
                 measured per phase",
                if self.release_build {
                    "release"
                } else {
                    "DEBUG"
                },
                self.database,
                self.batch_size,
                self.measured_s
            ),
            format!(
                "  end to end    {} phones at {} Hz offered {}/s: {} committed/s ({} acked/s), \
                 {} of {} batches resent",
                self.phones,
                self.sample_hz,
                count(self.pipeline_offered_per_s),
                count(self.pipeline_readings_per_s),
                count(self.pipeline_acked_per_s),
                self.batches_resent,
                self.batches_sent
            ),
            lag_line(
                self.lag_p50_ms,
                self.lag_p99_ms,
                self.insert_lag_p50_ms,
                self.insert_lag_p99_ms,
                self.lag_poll_ms,
            ),
            cost_line(
                self.cpu_process_cores,
                self.cpu_postgres_cores,
                self.cpu_machine_cores,
                self.rss_bytes,
            ),
            format!(
                "  half rate     {} phones at {:.1} Hz offered {}/s: {} committed/s ({} acked/s)",
                self.phones,
                self.half_rate_sample_hz,
                count(self.half_rate_offered_per_s),
                count(self.half_rate_readings_per_s),
                count(self.half_rate_acked_per_s)
            ),
            lag_line(
                self.half_rate_lag_p50_ms,
                self.half_rate_lag_p99_ms,
                self.half_rate_insert_lag_p50_ms,
                self.half_rate_insert_lag_p99_ms,
                None,
            ),
            cost_line(
                self.half_rate_cpu_process_cores,
                self.half_rate_cpu_postgres_cores,
                self.half_rate_cpu_machine_cores,
                self.half_rate_rss_bytes,
            ),
            format!(
                "  cloud only    {} devices, {} batches in flight each: {} committed/s ({} acked/s){}",
                self.cloud_only_devices,
                self.cloud_only_in_flight,
                count(self.cloud_only_readings_per_s),
                count(self.cloud_only_acked_per_s),
                if self.cloud_only_pool_exhausted {
                    "; the generator ran out of batches, a lower bound"
                } else {
                    ""
                }
            ),
            cost_line(
                self.cloud_only_cpu_process_cores,
                self.cloud_only_cpu_postgres_cores,
                self.cloud_only_cpu_machine_cores,
                self.cloud_only_rss_bytes,
            ),
            format!(
                "  COPY          {} rows in {:.2} s: {} rows/s",
                self.copy_rows,
                self.copy_s,
                count(self.copy_rows_per_s)
            ),
            cost_line(
                self.copy_cpu_process_cores,
                self.copy_cpu_postgres_cores,
                self.copy_cpu_machine_cores,
                None,
            ),
            format!(
                "  ratios        end to end {} of COPY, cloud only {} of COPY",
                ratio(self.ratio_end_to_end),
                ratio(self.ratio_cloud_only)
            ),
            format!(
                "Targets: end to end at least {TARGET_END_TO_END_RATIO}x COPY: {}; cloud only at \
                 least {TARGET_CLOUD_ONLY_RATIO}x COPY: {}; p99 lag under {} s at half rate: {}",
                met(self.targets.end_to_end_at_least_half_of_copy),
                met(self.targets.cloud_only_at_least_0_8_of_copy),
                TARGET_LAG_P99_MS / 1000.0,
                met(self.targets.half_rate_lag_p99_under_1_s)
            ),
        ]
    }
}

fn count(rate: f64) -> String {
    format!("{rate:.0}")
}

fn lag_line(
    p50: Option<f64>,
    p99: Option<f64>,
    insert_p50: Option<f64>,
    insert_p99: Option<f64>,
    poll: Option<f64>,
) -> String {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} ms"));
    format!(
        "                sensor to commit p50 {} p99 {} (seen by polls{}); to insert start p50 {} p99 {}",
        ms(p50),
        ms(p99),
        poll.map_or(String::new(), |p| format!(" every {p:.0} ms")),
        ms(insert_p50),
        ms(insert_p99)
    )
}

fn cost_line(
    process: Option<f64>,
    postgres: Option<f64>,
    machine: Option<f64>,
    rss: Option<u64>,
) -> String {
    let cores = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    format!(
        "                CPU cores: {} this process, {} Postgres, {} the whole machine{}",
        cores(process),
        cores(postgres),
        cores(machine),
        rss.map_or(String::new(), |b| format!(
            "; RSS {:.0} MiB",
            b as f64 / (1024.0 * 1024.0)
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::ingest::lag::LagFigures;
    use crate::bench::ingest::usage::{CpuFigures, Memory};
    use crate::bench::latency::LatencySummary;

    fn pipeline(committed: f64, p99_ms: f64) -> PipelineFigures {
        PipelineFigures {
            phones: 100,
            sample_hz: 1500.0,
            seconds: 10.0,
            offered_per_s: 90_000.0,
            committed_per_s: committed,
            acked_per_s: committed,
            lag: LagFigures {
                visible: Some(LatencySummary {
                    samples: 1000,
                    p50_ms: p99_ms / 2.0,
                    p99_ms,
                    max_ms: p99_ms * 2.0,
                }),
                insert: None,
                polls: 100,
                poll_period_ms: Some(100.0),
            },
            batches_sent: 1000,
            batches_resent: 0,
            readings_lost: 0,
            cpu: CpuFigures::default(),
            memory: Memory::default(),
        }
    }

    fn findings() -> Findings {
        Findings {
            release_build: true,
            database: "ecs_bench_0".into(),
            batch_size: 100,
            flush_ms: 500,
            ack_timeout_ms: 10_000,
            full: pipeline(60_000.0, 3000.0),
            half: pipeline(30_000.0, 400.0),
            cloud: CloudOnlyFigures {
                devices: 100,
                in_flight: 4,
                seconds: 10.0,
                committed_per_s: 90_000.0,
                acked_per_s: 90_000.0,
                committed_total: 1_000_000,
                published_batches: 10_000,
                unacked_batches: 0,
                exhausted: false,
                cpu: CpuFigures::default(),
                memory: Memory::default(),
            },
            copy: CopyFigures {
                rows: 1_000_000,
                bytes: 100 << 20,
                seconds: 10.0,
                rows_per_s: 100_000.0,
                cpu: CpuFigures::default(),
            },
        }
    }

    #[test]
    fn the_json_line_has_every_field_the_charts_read() {
        let json = serde_json::to_value(IngestReport::new(&findings())).unwrap();
        for field in [
            "pipeline_readings_per_s",
            "cloud_only_readings_per_s",
            "copy_rows_per_s",
            "ratio_end_to_end",
            "ratio_cloud_only",
            "lag_p99_ms",
            "lag_p50_ms",
            "cpu_process_cores",
            "rss_bytes",
            "half_rate_lag_p99_ms",
            "half_rate_readings_per_s",
            "targets",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["ratio_end_to_end"], 0.6);
        assert_eq!(json["ratio_cloud_only"], 0.9);
        assert_eq!(json["lag_p99_ms"], 3000.0);
        assert_eq!(json["half_rate_lag_p99_ms"], 400.0);
    }

    #[test]
    fn targets_follow_the_figures() {
        let mut f = findings();
        let report = IngestReport::new(&f);
        assert!(report.targets.end_to_end_at_least_half_of_copy);
        assert!(report.targets.cloud_only_at_least_0_8_of_copy);
        assert!(report.targets.half_rate_lag_p99_under_1_s);

        f.full.committed_per_s = 40_000.0;
        f.cloud.committed_per_s = 79_000.0;
        f.half = pipeline(20_000.0, 1000.0);
        let report = IngestReport::new(&f);
        assert!(!report.targets.end_to_end_at_least_half_of_copy);
        assert!(!report.targets.cloud_only_at_least_0_8_of_copy);
        assert!(
            !report.targets.half_rate_lag_p99_under_1_s,
            "1 s is not under 1 s"
        );

        // No lag samples, no COPY figure: nothing is met, and the summary still prints.
        f.half.lag.visible = None;
        f.copy.rows_per_s = 0.0;
        let report = IngestReport::new(&f);
        assert_eq!(report.ratio_end_to_end, None);
        assert!(!report.targets.end_to_end_at_least_half_of_copy);
        assert!(!report.targets.half_rate_lag_p99_under_1_s);
        assert_eq!(report.summary().len(), 13);
    }
}
