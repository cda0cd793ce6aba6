//! What the API benchmark found: one flat record (the `--json` line) and the readable summary,
//! with the targets the figures are held against.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::cloud::RAISED_LIMIT;
use super::groups::GroupSizes;
use super::load::LoadFigures;

/// Each endpoint, at least this fraction of pgbench's transactions per second.
pub const TARGET_RATIO: f64 = 0.5;
/// p99 latency at half the maximum rate, under this.
pub const TARGET_HALF_RATE_P99_MS: f64 = 10.0;

/// The settings a run was measured under (`ApiBenchArgs`' figures).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunSettings {
    pub people: usize,
    pub connections: usize,
    pub db_connections: u32,
    pub secs: u64,
    pub warmup_secs: u64,
    pub half_rate_secs: u64,
}

/// Everything measured in one run.
pub struct Findings {
    pub release_build: bool,
    pub database: String,
    pub settings: RunSettings,
    pub assess: LoadFigures,
    /// `None` when no assessment succeeded at full rate.
    pub assess_half: Option<LoadFigures>,
    pub read: LoadFigures,
    pub read_half: Option<LoadFigures>,
    pub pgbench_write_tps: f64,
    pub pgbench_read_tps: f64,
    /// The cloud's group sizes during the assess runs (full and half rate, warm-ups included).
    pub assess_groups: GroupSizes,
}

/// The `--json` record. Field names are a contract with whoever charts them: add, don't rename.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    #[serde(flatten)]
    pub settings: RunSettings,
    /// What `api_rate_admin`, `api_rate_per_user` and `assessments_per_hour` were raised to, so
    /// that the load is not refused; their checks still run on every request.
    pub raised_limits: u32,
    /// The `assess_*` fields.
    #[serde(flatten)]
    pub assess: EndpointReport,
    /// The `read_*` fields.
    #[serde(flatten)]
    pub read: EndpointReport,
    pub pgbench_write_tps: f64,
    pub pgbench_read_tps: f64,
    /// `assess_rps` / `pgbench_write_tps`.
    pub ratio_assess: Option<f64>,
    /// `read_rps` / `pgbench_read_tps`.
    pub ratio_read: Option<f64>,
    /// `assess_record_group_mean`: how many assessments shared a transaction.
    #[serde(flatten)]
    pub assess_groups: GroupSizes,
    /// Requests of all four phases answered with another status than expected, or not at all.
    pub errors: u64,
    /// Of `errors`, the requests that got no answer.
    pub transport_errors: u64,
    pub release_build: bool,
    pub database: String,
    pub targets: Targets,
}

/// One endpoint's figures, at full and at half rate. In the `--json` record each field is named
/// after the endpoint (`assess_p99_ms`, `read_half_rate_rps`, ...).
#[derive(Debug, Clone)]
pub struct EndpointReport {
    /// [`Endpoint::name`](super::load::Endpoint::name): the prefix of the fields.
    pub endpoint: &'static str,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub samples: usize,
    pub statuses: BTreeMap<u16, u64>,
    pub half_rate_target_rps: Option<f64>,
    pub half_rate_rps: Option<f64>,
    pub half_rate_p50_ms: Option<f64>,
    pub half_rate_p99_ms: Option<f64>,
    pub half_rate_max_ms: Option<f64>,
}

impl EndpointReport {
    /// The figures of the full-rate run and, when there was one, the half-rate run.
    pub fn new(full: &LoadFigures, half: Option<&LoadFigures>) -> Self {
        let half_latency = half.and_then(|h| h.latency);
        Self {
            endpoint: full.endpoint.name(),
            rps: full.ok_per_s,
            p50_ms: full.latency.map(|l| l.p50_ms),
            p99_ms: full.latency.map(|l| l.p99_ms),
            max_ms: full.latency.map(|l| l.max_ms),
            samples: full.latency.map_or(0, |l| l.samples),
            statuses: full.statuses.clone(),
            half_rate_target_rps: half.and_then(|h| h.target_per_s),
            half_rate_rps: half.map(|h| h.ok_per_s),
            half_rate_p50_ms: half_latency.map(|l| l.p50_ms),
            half_rate_p99_ms: half_latency.map(|l| l.p99_ms),
            half_rate_max_ms: half_latency.map(|l| l.max_ms),
        }
    }
}

impl Serialize for EndpointReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let key = |field: &str| format!("{}_{field}", self.endpoint);
        let mut map = serializer.serialize_map(Some(11))?;
        map.serialize_entry(&key("rps"), &self.rps)?;
        map.serialize_entry(&key("p50_ms"), &self.p50_ms)?;
        map.serialize_entry(&key("p99_ms"), &self.p99_ms)?;
        map.serialize_entry(&key("max_ms"), &self.max_ms)?;
        map.serialize_entry(&key("samples"), &self.samples)?;
        map.serialize_entry(&key("statuses"), &self.statuses)?;
        map.serialize_entry(&key("half_rate_target_rps"), &self.half_rate_target_rps)?;
        map.serialize_entry(&key("half_rate_rps"), &self.half_rate_rps)?;
        map.serialize_entry(&key("half_rate_p50_ms"), &self.half_rate_p50_ms)?;
        map.serialize_entry(&key("half_rate_p99_ms"), &self.half_rate_p99_ms)?;
        map.serialize_entry(&key("half_rate_max_ms"), &self.half_rate_max_ms)?;
        map.end()
    }
}

/// The targets, each met or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// Assessments per second at least 0.5x pgbench's locked-read-and-insert tps.
    pub assess_at_least_half_of_pgbench: bool,
    /// Reads per second at least 0.5x pgbench's one-row-read tps.
    pub read_at_least_half_of_pgbench: bool,
    /// Assessments' p99 under 10 ms at half their maximum rate.
    pub assess_half_rate_p99_under_10_ms: bool,
    /// Reads' p99 under 10 ms at half their maximum rate.
    pub read_half_rate_p99_under_10_ms: bool,
}

/// `rate` / `reference`, when the reference measured anything.
pub fn ratio(rate: f64, reference: f64) -> Option<f64> {
    (reference > 0.0 && reference.is_finite()).then(|| rate / reference)
}

/// The ratio target: missed when there is no ratio.
pub fn ratio_met(ratio: Option<f64>) -> bool {
    ratio.is_some_and(|r| r >= TARGET_RATIO)
}

/// The latency target: missed when there was no half-rate run or it has no samples.
pub fn half_rate_met(p99_ms: Option<f64>) -> bool {
    p99_ms.is_some_and(|p| p < TARGET_HALF_RATE_P99_MS)
}

impl ApiReport {
    pub fn new(f: &Findings) -> Self {
        let assess = EndpointReport::new(&f.assess, f.assess_half.as_ref());
        let read = EndpointReport::new(&f.read, f.read_half.as_ref());
        let ratio_assess = ratio(assess.rps, f.pgbench_write_tps);
        let ratio_read = ratio(read.rps, f.pgbench_read_tps);
        let phases = [
            Some(&f.assess),
            f.assess_half.as_ref(),
            Some(&f.read),
            f.read_half.as_ref(),
        ];
        let targets = Targets {
            assess_at_least_half_of_pgbench: ratio_met(ratio_assess),
            read_at_least_half_of_pgbench: ratio_met(ratio_read),
            assess_half_rate_p99_under_10_ms: half_rate_met(assess.half_rate_p99_ms),
            read_half_rate_p99_under_10_ms: half_rate_met(read.half_rate_p99_ms),
        };
        Self {
            settings: f.settings,
            raised_limits: RAISED_LIMIT,
            assess,
            read,
            pgbench_write_tps: f.pgbench_write_tps,
            pgbench_read_tps: f.pgbench_read_tps,
            ratio_assess,
            ratio_read,
            assess_groups: f.assess_groups,
            errors: phases.iter().flatten().map(|p| p.errors()).sum(),
            transport_errors: phases.iter().flatten().map(|p| p.transport_errors).sum(),
            release_build: f.release_build,
            database: f.database.clone(),
            targets,
        }
    }

    /// The readable summary, one line each: a header, a small table, the targets.
    pub fn summary(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut lines = vec![
            format!(
                "API benchmark: {} build, scratch database {}, {} people, {} connections, \
                 {} s measured ({} s warm-up), half rate {} s, cloud pool {} connections",
                if self.release_build {
                    "release"
                } else {
                    "DEBUG"
                },
                self.database,
                self.settings.people,
                self.settings.connections,
                self.settings.secs,
                self.settings.warmup_secs,
                self.settings.half_rate_secs,
                self.settings.db_connections
            ),
            format!(
                "  API rate limits raised to {} (admin, per person, assessments per hour) so the \
                 load is not refused; their checks still run on every request",
                self.raised_limits
            ),
            format!(
                "  {:<8} {:>10} {:>10} {:>10} {:>10} {:>14} {:>12} {:>8}",
                "", "req/s", "p50", "p99", "max", "half-rate p99", "pgbench tps", "ratio"
            ),
        ];
        lines.push(row(&self.assess, self.pgbench_write_tps, self.ratio_assess));
        lines.push(row(&self.read, self.pgbench_read_tps, self.ratio_read));
        lines.push(format!(
            "  half rate offered {} assessments/s (served {}), {} reads/s (served {})",
            rate(self.assess.half_rate_target_rps),
            rate(self.assess.half_rate_rps),
            rate(self.read.half_rate_target_rps),
            rate(self.read.half_rate_rps)
        ));
        lines.push(format!(
            "  errors: {} (no answer: {}); assess statuses {}, read statuses {}",
            self.errors,
            self.transport_errors,
            statuses(&self.assess.statuses),
            statuses(&self.read.statuses)
        ));
        let mean = |m: Option<f64>| m.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
        lines.push(format!(
            "  assessments per group commit during the assess runs (full and half rate): {}",
            mean(self.assess_groups.assess_record_group_mean)
        ));
        lines.push(format!(
            "Targets: assess at least {TARGET_RATIO}x pgbench write: {}; read at least \
             {TARGET_RATIO}x pgbench read: {}; p99 under {TARGET_HALF_RATE_P99_MS} ms at half \
             rate: assess {}, read {}",
            met(self.targets.assess_at_least_half_of_pgbench),
            met(self.targets.read_at_least_half_of_pgbench),
            met(self.targets.assess_half_rate_p99_under_10_ms),
            met(self.targets.read_half_rate_p99_under_10_ms)
        ));
        lines
    }
}

/// One endpoint's line of the summary's table.
fn row(e: &EndpointReport, pgbench_tps: f64, ratio: Option<f64>) -> String {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2} ms"));
    format!(
        "  {:<8} {:>10.0} {:>10} {:>10} {:>10} {:>14} {:>12.0} {:>8}",
        e.endpoint,
        e.rps,
        ms(e.p50_ms),
        ms(e.p99_ms),
        ms(e.max_ms),
        ms(e.half_rate_p99_ms),
        pgbench_tps,
        ratio.map_or("n/a".to_owned(), |r| format!("{r:.2}x"))
    )
}

fn rate(r: Option<f64>) -> String {
    r.map_or("n/a".to_owned(), |r| format!("{r:.0}"))
}

fn statuses(counts: &BTreeMap<u16, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::api::load::Endpoint;
    use crate::bench::latency::Latencies;

    fn phase(
        endpoint: Endpoint,
        ok_per_s: f64,
        p99_ms: u64,
        statuses: &[(u16, u64)],
    ) -> LoadFigures {
        let mut latencies = Latencies::default();
        for ms in [1, 2, p99_ms] {
            latencies.record(Duration::from_millis(ms));
        }
        LoadFigures {
            endpoint,
            connections: 32,
            target_per_s: None,
            seconds: 5.0,
            ok: (ok_per_s * 5.0) as u64,
            ok_per_s,
            statuses: statuses.iter().copied().collect(),
            transport_errors: 0,
            latency: latencies.summary(),
        }
    }

    fn findings() -> Findings {
        let mut assess_half = phase(Endpoint::Assess, 500.0, 8, &[(201, 2500)]);
        assess_half.target_per_s = Some(500.0);
        let mut read_half = phase(Endpoint::Read, 2000.0, 12, &[(200, 10_000)]);
        read_half.target_per_s = Some(2000.0);
        Findings {
            release_build: true,
            database: "ecs_bench_00".into(),
            settings: RunSettings {
                people: 200,
                connections: 32,
                db_connections: 32,
                secs: 5,
                warmup_secs: 1,
                half_rate_secs: 10,
            },
            assess: phase(Endpoint::Assess, 1000.0, 20, &[(201, 5000), (500, 2)]),
            assess_half: Some(assess_half),
            read: phase(Endpoint::Read, 4000.0, 9, &[(200, 20_000)]),
            read_half: Some(read_half),
            pgbench_write_tps: 1500.0,
            pgbench_read_tps: 10_000.0,
            assess_groups: GroupSizes {
                assess_record_group_mean: Some(6.5),
            },
        }
    }

    #[test]
    fn ratios_divide_by_the_reference_when_there_is_one() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(50.0, 0.0), None);
        assert_eq!(ratio(50.0, f64::NAN), None);
        assert!(ratio_met(Some(0.5)));
        assert!(!ratio_met(Some(0.49)));
        assert!(!ratio_met(None));
    }

    #[test]
    fn the_latency_target_is_strictly_under_10_ms_and_missed_without_samples() {
        assert!(half_rate_met(Some(9.99)));
        assert!(!half_rate_met(Some(10.0)));
        assert!(!half_rate_met(None));
    }

    #[test]
    fn each_target_is_judged_on_its_own_figures() {
        let report = ApiReport::new(&findings());
        assert_eq!(report.ratio_assess, Some(1000.0 / 1500.0));
        assert_eq!(report.ratio_read, Some(0.4));
        assert_eq!(
            report.targets,
            Targets {
                assess_at_least_half_of_pgbench: true,
                read_at_least_half_of_pgbench: false,
                assess_half_rate_p99_under_10_ms: true,
                read_half_rate_p99_under_10_ms: false,
            }
        );
        assert_eq!(report.errors, 2);
    }

    #[test]
    fn no_half_rate_run_misses_its_target_and_shows_as_null() {
        let mut f = findings();
        f.assess_half = None;
        let report = ApiReport::new(&f);
        assert!(!report.targets.assess_half_rate_p99_under_10_ms);
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["assess_half_rate_p99_ms"].is_null());
    }

    #[test]
    fn the_json_has_the_briefs_fields() {
        let json = serde_json::to_value(ApiReport::new(&findings())).unwrap();
        for field in [
            "assess_rps",
            "assess_p99_ms",
            "assess_half_rate_p99_ms",
            "read_rps",
            "read_p99_ms",
            "read_half_rate_p99_ms",
            "pgbench_write_tps",
            "pgbench_read_tps",
            "ratio_assess",
            "ratio_read",
            "errors",
            "connections",
            "secs",
            "people",
        ] {
            assert!(json.get(field).is_some(), "{field} is missing");
        }
        assert_eq!(json["assess_statuses"]["500"], 2);
        assert_eq!(json["assess_record_group_mean"], 6.5);
        // Flat, each endpoint's figures under its own prefix, as many fields as ever.
        for endpoint in ["assess", "read"] {
            for field in [
                "rps",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "samples",
                "statuses",
                "half_rate_target_rps",
                "half_rate_rps",
                "half_rate_p50_ms",
                "half_rate_p99_ms",
                "half_rate_max_ms",
            ] {
                let key = format!("{endpoint}_{field}");
                assert!(json.get(&key).is_some(), "{key} is missing");
            }
        }
        assert_eq!(json.as_object().unwrap().len(), 39);
    }

    #[test]
    fn the_summary_marks_each_target() {
        let summary = ApiReport::new(&findings()).summary().join("\n");
        assert!(
            summary.contains("read at least 0.5x pgbench read: MISSED"),
            "{summary}"
        );
        assert!(
            summary.contains("assess at least 0.5x pgbench write: met"),
            "{summary}"
        );
        assert!(summary.contains("raised to 1000000"), "{summary}");
    }
}
