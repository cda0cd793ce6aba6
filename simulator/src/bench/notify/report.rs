//! The notify benchmark's figures, its targets and how they print.

use serde::Serialize;

use super::accepts::Measured;
use super::reference::Reference;
use crate::bench::latency::LatencySummary;

/// Median accept-to-phone latency to stay under, in milliseconds (issue 8).
pub const TARGET_P50_MS: f64 = 20.0;
/// 99th-percentile accept-to-phone latency to stay under, in milliseconds.
pub const TARGET_P99_MS: f64 = 100.0;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunSettings {
    pub people: usize,
    pub accepts: usize,
    /// Accepts per second within a round.
    pub rate: f64,
    pub release_build: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub p50_under_20_ms: bool,
    pub p99_under_100_ms: bool,
    pub none_lost: bool,
}

/// Everything the run measured; serialised as the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyReport {
    pub settings: RunSettings,
    pub accepts: usize,
    pub notifications_received: usize,
    pub notifications_lost: usize,
    pub accept_to_notify_p50_ms: Option<f64>,
    pub accept_to_notify_p99_ms: Option<f64>,
    pub accept_to_notify_max_ms: Option<f64>,
    /// Where the time goes, each from the accept's request sent: answered, the worker's
    /// transaction begun, the notification claimed for publishing.
    pub accept_answered: Option<LatencySummary>,
    pub limit_applying: Option<LatencySummary>,
    pub notification_publishing: Option<LatencySummary>,
    pub mosquitto_messages: usize,
    pub mosquitto_delivered: usize,
    pub mosquitto_p50_ms: Option<f64>,
    pub mosquitto_p99_ms: Option<f64>,
    /// How many Mosquitto hops an accept-to-phone trip costs, at the median.
    pub ratio_p50_to_mosquitto: Option<f64>,
    pub targets: Targets,
}

impl NotifyReport {
    pub fn new(settings: RunSettings, measured: &Measured, reference: Reference) -> Self {
        let p50 = measured.latency.map(|l| l.p50_ms);
        let p99 = measured.latency.map(|l| l.p99_ms);
        let ref_p50 = reference.latency.map(|l| l.p50_ms);
        Self {
            settings,
            accepts: measured.accepts,
            notifications_received: measured.notified,
            notifications_lost: measured.lost,
            accept_to_notify_p50_ms: p50,
            accept_to_notify_p99_ms: p99,
            accept_to_notify_max_ms: measured.latency.map(|l| l.max_ms),
            accept_answered: measured.stages.answered,
            limit_applying: measured.stages.applying,
            notification_publishing: measured.stages.publishing,
            mosquitto_messages: reference.messages,
            mosquitto_delivered: reference.delivered,
            mosquitto_p50_ms: ref_p50,
            mosquitto_p99_ms: reference.latency.map(|l| l.p99_ms),
            ratio_p50_to_mosquitto: p50
                .zip(ref_p50)
                .and_then(|(ours, theirs)| (theirs > 0.0).then(|| ours / theirs)),
            targets: Targets {
                p50_under_20_ms: p50.is_some_and(|p| p < TARGET_P50_MS),
                p99_under_100_ms: p99.is_some_and(|p| p < TARGET_P99_MS),
                none_lost: measured.lost == 0 && measured.notified == measured.accepts,
            },
        }
    }

    /// The readable summary, one line each.
    pub fn summary(&self) -> Vec<String> {
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        vec![
            format!(
                "Notify benchmark: {} build, {} people with phones online, {} accepts at {}/s",
                if self.settings.release_build {
                    "release"
                } else {
                    "DEBUG"
                },
                self.settings.people,
                self.settings.accepts,
                self.settings.rate
            ),
            format!(
                "  accept → phone: p50 {}, p99 {}, max {}; {} received, {} lost",
                ms(self.accept_to_notify_p50_ms),
                ms(self.accept_to_notify_p99_ms),
                ms(self.accept_to_notify_max_ms),
                self.notifications_received,
                self.notifications_lost
            ),
            format!(
                "  from the request sent (p50 / p99): answered {}, worker began applying {}, \
                 notification claimed for publishing {}",
                stage(self.accept_answered),
                stage(self.limit_applying),
                stage(self.notification_publishing)
            ),
            format!(
                "  Mosquitto, one QoS 1 hop at the same rate: p50 {}, p99 {} ({} of {} delivered); \
                 ratio of the medians {}",
                ms(self.mosquitto_p50_ms),
                ms(self.mosquitto_p99_ms),
                self.mosquitto_delivered,
                self.mosquitto_messages,
                self.ratio_p50_to_mosquitto
                    .map_or("–".to_owned(), |r| format!("{r:.1}x"))
            ),
            format!(
                "Targets: p50 under {TARGET_P50_MS} ms: {}; p99 under {TARGET_P99_MS} ms: {}; \
                 none lost: {}",
                met(self.targets.p50_under_20_ms),
                met(self.targets.p99_under_100_ms),
                met(self.targets.none_lost)
            ),
        ]
    }
}

fn stage(s: Option<LatencySummary>) -> String {
    s.map_or("–".to_owned(), |s| {
        format!("{:.1} / {:.1} ms", s.p50_ms, s.p99_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50_ms: f64, p99_ms: f64) -> Option<LatencySummary> {
        Some(LatencySummary {
            samples: 10,
            p50_ms,
            p99_ms,
            max_ms: p99_ms,
        })
    }

    fn report(measured: Measured) -> NotifyReport {
        NotifyReport::new(
            RunSettings {
                people: 2,
                accepts: 10,
                rate: 5.0,
                release_build: true,
            },
            &measured,
            Reference {
                messages: 10,
                delivered: 10,
                latency: summary(0.5, 1.0),
            },
        )
    }

    #[test]
    fn targets_follow_the_figures_and_a_loss_misses_one() {
        let fast = report(Measured {
            accepts: 10,
            notified: 10,
            lost: 0,
            latency: summary(8.0, 40.0),
            stages: Default::default(),
        });
        assert_eq!(
            fast.targets,
            Targets {
                p50_under_20_ms: true,
                p99_under_100_ms: true,
                none_lost: true
            }
        );
        assert_eq!(fast.ratio_p50_to_mosquitto, Some(16.0));

        let lossy = report(Measured {
            accepts: 10,
            notified: 9,
            lost: 1,
            latency: summary(25.0, 150.0),
            stages: Default::default(),
        });
        assert_eq!(
            lossy.targets,
            Targets {
                p50_under_20_ms: false,
                p99_under_100_ms: false,
                none_lost: false
            }
        );
        let json = serde_json::to_value(&lossy).unwrap();
        for field in [
            "accepts",
            "accept_to_notify_p50_ms",
            "accept_to_notify_p99_ms",
            "notifications_lost",
        ] {
            assert!(json.get(field).is_some(), "the JSON line lacks {field}");
        }
    }

    #[test]
    fn nothing_measured_meets_no_target() {
        let empty = report(Measured {
            accepts: 10,
            notified: 0,
            lost: 10,
            latency: None,
            stages: Default::default(),
        });
        assert!(!empty.targets.p50_under_20_ms && !empty.targets.p99_under_100_ms);
        assert_eq!(empty.accept_to_notify_p50_ms, None);
    }
}
