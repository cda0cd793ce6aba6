//! Population views (the operator's dashboard): mood, credit lines, decisions and the offer
//! funnel. Each figure is computed over a group of distinct people and shown only when the group
//! holds at least `k` of them ([`MinGroupSize::reveal`](super::MinGroupSize::reveal)).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Analytics, Days, Hours, round1, round3};
use crate::{error::Result, policy::ReasonCode};

/// Lower bounds of the credit-limit bands, in cents (R$ 0, 2.5k, 5k, 10k, 20k, 30k, 40k); the
/// last band has no upper bound. The policy lends between R$ 200 and R$ 50,000.
pub const LIMIT_BANDS_CENTS: [i64; 7] = [
    0, 250_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000,
];
/// Lower bounds of the interest-rate bands, in basis points (every 5 %); the last band has no
/// upper bound. The policy caps rates at 60 %.
pub const RATE_BANDS_BPS: [i64; 12] = [
    0, 500, 1_000, 1_500, 2_000, 2_500, 3_000, 3_500, 4_000, 4_500, 5_000, 5_500,
];

/// The population's mood, hour by hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyMood {
    /// `k`: buckets with fewer distinct people are suppressed.
    pub min_group_size: u32,
    pub window_hours: u32,
    /// Every hour of the window (UTC), oldest first, the current hour last.
    pub buckets: Vec<MoodHour>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MoodHour {
    /// Start of the hour (UTC), by the phones' reading times.
    pub hour: DateTime<Utc>,
    /// Fewer than `min_group_size` people had readings in this hour (possibly none): every
    /// figure below is withheld.
    pub suppressed: bool,
    /// Distinct people with readings in this hour.
    pub people: Option<i64>,
    pub readings: Option<i64>,
    /// Mean valence, −100..=100: each person's mean, averaged, so every person weighs the same
    /// however often their phone samples.
    pub valence: Option<f64>,
    /// Mean stress, 0..=100 (mean of the people's means).
    pub stress: Option<f64>,
    /// Mean arousal, 0..=100 (mean of the people's means).
    pub arousal: Option<f64>,
}

/// How many people's current credit line falls in each band.
#[derive(Debug, Serialize, ToSchema)]
pub struct Distribution {
    pub min_group_size: u32,
    /// `cents` for limits, `bps` (basis points, 1 bp = 0.01 %) for rates.
    pub unit: &'static str,
    /// Every band, lowest first.
    pub bands: Vec<Band>,
    /// Median over everyone with a credit line, in `unit`; withheld below `min_group_size`
    /// people.
    pub median: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Band {
    /// Lower bound (inclusive), in the distribution's unit.
    pub from: i64,
    /// Upper bound (exclusive); absent for the last band.
    pub to: Option<i64>,
    /// Fewer than `min_group_size` people (possibly none) are in this band.
    pub suppressed: bool,
    pub people: Option<i64>,
}

/// Decisions taken in the window: approval rate, and why offers were declined or limited.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decisions {
    pub min_group_size: u32,
    pub window_days: u32,
    /// Fewer than `min_group_size` people were assessed: the totals and the rate are withheld.
    pub suppressed: bool,
    /// Distinct people assessed.
    pub people: Option<i64>,
    /// Offers created (one per assessment).
    pub offers: Option<i64>,
    /// Share of offers approved, 0..=1.
    pub approval_rate: Option<f64>,
    /// Reason codes on declined offers: every code the policy knows, in its order.
    pub declined_reasons: Vec<ReasonCount>,
    /// Reason codes on approved offers (caps, vulnerability, long-term eligibility).
    pub approved_reasons: Vec<ReasonCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReasonCount {
    pub code: ReasonCode,
    /// Fewer than `min_group_size` people (possibly none) had an offer with this reason.
    pub suppressed: bool,
    pub people: Option<i64>,
    pub offers: Option<i64>,
}

/// Stages of an offer's way, in order; each stage's offers are a subset of the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunnelStage {
    /// The person was assessed (an offer, approved or declined, was created).
    Assessed,
    Approved,
    /// The person accepted the offer.
    Accepted,
    /// The worker applied the new credit line.
    Applied,
    /// The phone confirmed it received the "limit applied" notification.
    Notified,
}

/// The offer funnel over offers created in the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct Funnel {
    pub min_group_size: u32,
    pub window_days: u32,
    pub stages: Vec<FunnelCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunnelCount {
    pub stage: FunnelStage,
    /// Fewer than `min_group_size` people (possibly none) reached this stage.
    pub suppressed: bool,
    pub people: Option<i64>,
    pub offers: Option<i64>,
}

/// What a distribution counts: a column of `credit_limits`.
#[derive(Debug, Clone, Copy)]
enum Measure {
    Limit,
    Rate,
}

/// The two statements of a distribution over `credit_limits.<column>`. width_bucket numbers the
/// bands from 1 (0 would be below the first bound, which no CHECK-abiding row is).
macro_rules! distribution_sql {
    ($column:literal) => {
        (
            concat!(
                "SELECT width_bucket(",
                $column,
                "::bigint, $1::bigint[]) AS band, count(*) AS people
                 FROM credit_limits GROUP BY 1"
            ),
            concat!(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ",
                $column,
                ")::float8 FROM credit_limits"
            ),
        )
    };
}

impl Measure {
    fn statements(self) -> (&'static str, &'static str) {
        match self {
            Measure::Limit => distribution_sql!("credit_limit_cents"),
            Measure::Rate => distribution_sql!("interest_rate_bps"),
        }
    }

    fn bands_sql(self) -> &'static str {
        self.statements().0
    }

    fn median_sql(self) -> &'static str {
        self.statements().1
    }
}

#[derive(sqlx::FromRow)]
struct MoodRow {
    hour: DateTime<Utc>,
    people: i64,
    readings: i64,
    valence: Option<f64>,
    stress: Option<f64>,
    arousal: Option<f64>,
}

/// People (and offers) per funnel stage, in [`FunnelStage`] order.
#[derive(sqlx::FromRow)]
struct FunnelRow {
    assessed_people: i64,
    assessed_offers: i64,
    approved_people: i64,
    approved_offers: i64,
    accepted_people: i64,
    accepted_offers: i64,
    applied_people: i64,
    applied_offers: i64,
    notified_people: i64,
    notified_offers: i64,
}

impl Analytics {
    /// Mean valence, stress and arousal of the population for each hour of the window.
    pub async fn hourly_mood(&self, window: Hours) -> Result<HourlyMood> {
        let rows: Vec<MoodRow> = sqlx::query_as(
            "WITH hours AS (
                 SELECT generate_series(
                     date_trunc('hour', now(), 'UTC') - make_interval(hours => $1 - 1),
                     date_trunc('hour', now(), 'UTC'),
                     interval '1 hour') AS hour
             ), per_person AS (
                 SELECT date_trunc('hour', recorded_at, 'UTC') AS hour, user_id,
                        count(*) AS readings, avg(valence) AS valence, avg(stress) AS stress,
                        avg(arousal) AS arousal
                 FROM emotion_readings
                 WHERE recorded_at >= date_trunc('hour', now(), 'UTC') - make_interval(hours => $1 - 1)
                 GROUP BY 1, 2
             )
             SELECT h.hour, count(p.user_id) AS people,
                    COALESCE(sum(p.readings), 0)::bigint AS readings,
                    avg(p.valence)::float8 AS valence, avg(p.stress)::float8 AS stress,
                    avg(p.arousal)::float8 AS arousal
             FROM hours h LEFT JOIN per_person p USING (hour)
             GROUP BY h.hour ORDER BY h.hour",
        )
        .bind(window.sql())
        .fetch_all(&self.pool)
        .await?;
        let k = self.min_group;
        let buckets = rows
            .into_iter()
            .map(|r| {
                let shown = k.admits(r.people);
                MoodHour {
                    hour: r.hour,
                    suppressed: !shown,
                    people: k.reveal(r.people, r.people),
                    readings: k.reveal(r.people, r.readings),
                    valence: k.reveal(r.people, r.valence).flatten().map(round1),
                    stress: k.reveal(r.people, r.stress).flatten().map(round1),
                    arousal: k.reveal(r.people, r.arousal).flatten().map(round1),
                }
            })
            .collect();
        Ok(HourlyMood {
            min_group_size: k.get(),
            window_hours: window.get(),
            buckets,
        })
    }

    /// Current credit limits, in bands of [`LIMIT_BANDS_CENTS`].
    pub async fn credit_limits(&self) -> Result<Distribution> {
        self.distribution(Measure::Limit).await
    }

    /// Interest rates of the current credit lines, in bands of [`RATE_BANDS_BPS`].
    pub async fn interest_rates(&self) -> Result<Distribution> {
        self.distribution(Measure::Rate).await
    }

    async fn distribution(&self, measure: Measure) -> Result<Distribution> {
        let (lower_bounds, unit) = match measure {
            Measure::Limit => (&LIMIT_BANDS_CENTS[..], "cents"),
            Measure::Rate => (&RATE_BANDS_BPS[..], "bps"),
        };
        let counts: Vec<(i32, i64)> = sqlx::query_as(measure.bands_sql())
            .bind(lower_bounds)
            .fetch_all(&self.pool)
            .await?;
        let (people, median): (i64, Option<f64>) = sqlx::query_as(measure.median_sql())
            .fetch_one(&self.pool)
            .await?;
        let k = self.min_group;
        let bands = lower_bounds
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let in_band = counts
                    .iter()
                    .find(|(band, _)| usize::try_from(*band) == Ok(i + 1))
                    .map_or(0, |(_, n)| *n);
                Band {
                    from,
                    to: lower_bounds.get(i + 1).copied(),
                    suppressed: !k.admits(in_band),
                    people: k.reveal(in_band, in_band),
                }
            })
            .collect();
        Ok(Distribution {
            min_group_size: k.get(),
            unit,
            bands,
            median: k.reveal(people, median).flatten(),
        })
    }

    /// Approval rate and reason codes of the offers created in the window.
    pub async fn decisions(&self, window: Days) -> Result<Decisions> {
        let (people, offers, approved): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(DISTINCT user_id), count(*), count(*) FILTER (WHERE approved)
             FROM credit_offers WHERE created_at > now() - make_interval(days => $1)",
        )
        .bind(window.sql())
        .fetch_one(&self.pool)
        .await?;
        let reasons: Vec<(String, bool, i64, i64)> = sqlx::query_as(
            "SELECT r.code, o.approved, count(DISTINCT o.user_id), count(*)
             FROM credit_offers o CROSS JOIN LATERAL unnest(o.reason_codes) AS r(code)
             WHERE o.created_at > now() - make_interval(days => $1)
             GROUP BY 1, 2",
        )
        .bind(window.sql())
        .fetch_all(&self.pool)
        .await?;
        let k = self.min_group;
        let count_of = |approved: bool| {
            ReasonCode::ALL
                .iter()
                .map(|&code| {
                    let (people, offers) = reasons
                        .iter()
                        .find(|(c, a, _, _)| c == code.as_str() && *a == approved)
                        .map_or((0, 0), |(_, _, p, o)| (*p, *o));
                    ReasonCount {
                        code,
                        suppressed: !k.admits(people),
                        people: k.reveal(people, people),
                        offers: k.reveal(people, offers),
                    }
                })
                .collect()
        };
        Ok(Decisions {
            min_group_size: k.get(),
            window_days: window.get(),
            suppressed: !k.admits(people),
            people: k.reveal(people, people),
            offers: k.reveal(people, offers),
            approval_rate: k
                .reveal(people, offers)
                .filter(|&n| n > 0)
                .map(|n| round3(approved as f64 / n as f64)),
            declined_reasons: count_of(false),
            approved_reasons: count_of(true),
        })
    }

    /// How far the offers created in the window got: assessed → approved → accepted → applied →
    /// notified (the phone's receipt of the "applied" notification).
    pub async fn funnel(&self, window: Days) -> Result<Funnel> {
        let row: FunnelRow = sqlx::query_as(
            "WITH o AS (
                 SELECT o.user_id, o.approved, o.accepted_at IS NOT NULL AS accepted,
                        o.applied_at IS NOT NULL AS applied,
                        EXISTS (SELECT 1 FROM notifications n
                                WHERE n.offer_id = o.offer_id AND n.kind = 'offer_applied'
                                  AND n.delivered_at IS NOT NULL) AS notified
                 FROM credit_offers o
                 WHERE o.created_at > now() - make_interval(days => $1)
             )
             SELECT count(DISTINCT user_id) AS assessed_people, count(*) AS assessed_offers,
                    count(DISTINCT user_id) FILTER (WHERE approved) AS approved_people,
                    count(*) FILTER (WHERE approved) AS approved_offers,
                    count(DISTINCT user_id) FILTER (WHERE accepted) AS accepted_people,
                    count(*) FILTER (WHERE accepted) AS accepted_offers,
                    count(DISTINCT user_id) FILTER (WHERE applied) AS applied_people,
                    count(*) FILTER (WHERE applied) AS applied_offers,
                    count(DISTINCT user_id) FILTER (WHERE notified) AS notified_people,
                    count(*) FILTER (WHERE notified) AS notified_offers
             FROM o",
        )
        .bind(window.sql())
        .fetch_one(&self.pool)
        .await?;
        let k = self.min_group;
        let stage = |stage, people: i64, offers: i64| FunnelCount {
            stage,
            suppressed: !k.admits(people),
            people: k.reveal(people, people),
            offers: k.reveal(people, offers),
        };
        Ok(Funnel {
            min_group_size: k.get(),
            window_days: window.get(),
            stages: vec![
                stage(
                    FunnelStage::Assessed,
                    row.assessed_people,
                    row.assessed_offers,
                ),
                stage(
                    FunnelStage::Approved,
                    row.approved_people,
                    row.approved_offers,
                ),
                stage(
                    FunnelStage::Accepted,
                    row.accepted_people,
                    row.accepted_offers,
                ),
                stage(FunnelStage::Applied, row.applied_people, row.applied_offers),
                stage(
                    FunnelStage::Notified,
                    row.notified_people,
                    row.notified_offers,
                ),
            ],
        })
    }
}
