//! The analysis: every figure computed with SQL over what the cloud stored, beside the
//! counterfactuals of [`super::counterfactual`] and the labels.
//!
//! The archetype labels exist only in this analysis's session (temporary tables on its own
//! connection); the cloud's tables never hold them.

use anyhow::Context;
use ecs_cloud::{
    features::{EmotionFeatures, HIGH_STRESS},
    finance::DISCRETIONARY,
    keys::KeyCache,
    policy::{CreditPolicy, ReasonCode},
    privacy::thoughts,
};
use ecs_edge_agent::sensor::Archetype;
use ecs_protocol::Intent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::findings::{
    ArchetypeFigures, ArchetypeSeries, Contribution, CreditFindings, GuardFindings, HourFigures,
    PersonPoint, SpendingFindings, round,
};
use super::population::Plan;

/// The emotional names of the model's feature vector (the cloud's own list).
fn emotional_features() -> Vec<&'static str> {
    EmotionFeatures::neutral_named_vector()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The readings of the stretch with their thoughts opened, in a temporary table of this
/// session (`readings_opened`) that the other queries read: the cloud stores each reading's
/// thoughts sealed with its person's data key, and this analysis holds the run's keys.
pub async fn open_thoughts(
    conn: &mut PgConnection,
    keys: &KeyCache,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TEMP TABLE readings_opened AS
         SELECT user_id, device_id, seq, recorded_at, valence, arousal, stress, intents
         FROM emotion_readings",
    )
    .execute(&mut *conn)
    .await?;
    let sealed: Vec<(Uuid, String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT user_id, device_id, seq, thoughts_sealed FROM emotion_readings
         WHERE thoughts_sealed IS NOT NULL
         ORDER BY user_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (mut devices, mut seqs, mut intents) = (Vec::new(), Vec::new(), Vec::new());
    let mut key = None;
    for (user_id, device_id, seq, blob) in sealed {
        if key
            .as_ref()
            .is_none_or(|k: &ecs_cloud::keys::DataKey| k.user_id() != user_id)
        {
            key = keys.key_for(pool, user_id).await?;
        }
        let key = key
            .as_ref()
            .context("a person of the run has no data key")?;
        let opened = thoughts::open(key, &device_id, seq, &blob)?;
        // One array literal per reading: UNNEST cannot take an array of arrays of uneven length.
        let codes: Vec<String> = opened.intents.iter().map(i16::to_string).collect();
        intents.push(format!("{{{}}}", codes.join(",")));
        devices.push(device_id);
        seqs.push(seq);
    }
    sqlx::query(
        "UPDATE readings_opened r SET intents = s.intents::smallint[]
         FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS s(device_id, seq, intents)
         WHERE r.device_id = s.device_id AND r.seq = s.seq",
    )
    .bind(&devices)
    .bind(&seqs)
    .bind(&intents)
    .execute(&mut *conn)
    .await?;
    sqlx::query("ANALYZE readings_opened")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Per-person figures over what the cloud stored, in a temporary table the other queries read.
pub async fn tabulate(conn: &mut PgConnection, plan: &Plan) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TEMP TABLE person_figures AS
         WITH readings AS (
             SELECT r.user_id,
                    avg(r.stress)::float8 AS mean_stress,
                    avg(r.valence)::float8 AS mean_valence,
                    avg((r.stress >= $3)::int)::float8 AS high_stress_share,
                    avg(($4 = ANY(r.intents))::int)::float8 AS purchase_intent_share,
                    avg(($5 = ANY(r.intents))::int)::float8 AS financial_worry_share,
                    avg(($6 = ANY(r.intents))::int)::float8 AS saving_intent_share
             FROM readings_opened r
             WHERE r.recorded_at >= $1 AND r.recorded_at < $2
             GROUP BY r.user_id),
         money AS (
             SELECT t.user_id,
                    COALESCE(sum(amount_cents) FILTER (WHERE direction = 'inflow'), 0)::float8
                        AS inflow,
                    COALESCE(sum(amount_cents) FILTER (WHERE direction = 'outflow'), 0)::float8
                        AS outflow,
                    COALESCE(sum(amount_cents) FILTER (
                        WHERE direction = 'outflow' AND category = ANY($7)), 0)::float8
                        AS discretionary,
                    COALESCE(sum(amount_cents) FILTER (
                        WHERE direction = 'outflow' AND category <> 'rent'), 0)::float8
                        AS spending,
                    COALESCE(sum(amount_cents) FILTER (
                        WHERE direction = 'outflow' AND category = ANY($7)
                          AND occurred_at >= $1 AND occurred_at < $2), 0)::float8
                        AS discretionary_in_stretch
             FROM transactions t
             WHERE t.occurred_at > $2 - interval '90 days' AND t.occurred_at <= $2
             GROUP BY t.user_id),
         periods AS (
             SELECT c.user_id, p,
                    COALESCE((SELECT sum(amount_cents) FROM transactions t
                              WHERE t.user_id = c.user_id AND t.direction = 'inflow'
                                AND t.occurred_at <= $2 - p * interval '30 days'
                                AND t.occurred_at > $2 - (p + 1) * interval '30 days'), 0)::float8
                        AS income
             FROM counterfactual c, generate_series(0, 2) AS p),
         income AS (
             SELECT user_id,
                    CASE WHEN avg(income) > 0 THEN stddev_pop(income) / avg(income) ELSE 0 END
                        AS income_cv,
                    avg(income) AS monthly_income
             FROM periods GROUP BY user_id)
         SELECT c.user_id, c.ordinal, c.archetype, r.mean_stress, r.mean_valence,
                r.high_stress_share, r.purchase_intent_share, r.financial_worry_share,
                r.saving_intent_share, m.inflow, m.outflow, m.discretionary, m.spending,
                m.discretionary_in_stretch, i.income_cv, i.monthly_income,
                m.outflow / NULLIF(m.inflow, 0) AS outflow_to_inflow,
                m.discretionary_in_stretch / NULLIF(i.monthly_income, 0)
                    AS discretionary_of_income
         FROM counterfactual c
         JOIN readings r USING (user_id)
         JOIN money m USING (user_id)
         JOIN income i USING (user_id)",
    )
    .bind(plan.start())
    .bind(plan.end)
    .bind(i16::from(HIGH_STRESS))
    .bind(Intent::PurchaseIntent.code())
    .bind(Intent::FinancialWorry.code())
    .bind(Intent::SavingIntent.code())
    .bind(&DISCRETIONARY[..])
    .execute(conn)
    .await?;
    Ok(())
}

/// Archetype names in [`Archetype::ALL`] order, for `ORDER BY array_position`.
fn order() -> Vec<&'static str> {
    Archetype::ALL.iter().map(|a| a.as_str()).collect()
}

#[derive(sqlx::FromRow)]
struct ArchetypeRow {
    archetype: String,
    people: i64,
    mean_stress: f64,
    mean_valence: f64,
    high_stress_share: f64,
    purchase_intent_share: f64,
    financial_worry_share: f64,
    saving_intent_share: f64,
    outflow_to_inflow: f64,
    discretionary_share: f64,
    income_cv: f64,
    mean_pd: f64,
    mean_pd_without_emotions: f64,
    approved_share: f64,
    approved_share_without_emotions: f64,
    mean_limit: f64,
    mean_limit_without_emotions: f64,
    mean_limit_without_guard: f64,
    vulnerability_capped: i64,
}

pub async fn archetypes(conn: &mut PgConnection) -> anyhow::Result<Vec<ArchetypeFigures>> {
    let rows: Vec<ArchetypeRow> = sqlx::query_as(
        "SELECT p.archetype, count(*) AS people,
                avg(p.mean_stress) AS mean_stress, avg(p.mean_valence) AS mean_valence,
                avg(p.high_stress_share) AS high_stress_share,
                avg(p.purchase_intent_share) AS purchase_intent_share,
                avg(p.financial_worry_share) AS financial_worry_share,
                avg(p.saving_intent_share) AS saving_intent_share,
                avg(p.outflow_to_inflow) AS outflow_to_inflow,
                avg(p.discretionary / NULLIF(p.spending, 0)) AS discretionary_share,
                avg(p.income_cv) AS income_cv,
                avg(a.probability_of_default) AS mean_pd,
                avg(c.pd_neutral) AS mean_pd_without_emotions,
                avg(o.approved::int)::float8 AS approved_share,
                avg(c.approved_neutral::int)::float8 AS approved_share_without_emotions,
                avg(o.credit_limit_cents)::float8 / 100 AS mean_limit,
                avg(c.limit_neutral)::float8 / 100 AS mean_limit_without_emotions,
                avg(c.limit_unguarded)::float8 / 100 AS mean_limit_without_guard,
                count(*) FILTER (WHERE $2 = ANY(o.reason_codes)) AS vulnerability_capped
         FROM person_figures p
         JOIN counterfactual c USING (user_id)
         JOIN credit_offers o ON o.user_id = p.user_id
         JOIN risk_assessments a ON a.assessment_id = o.assessment_id
         GROUP BY p.archetype
         ORDER BY array_position($1, p.archetype)",
    )
    .bind(order())
    .bind(ReasonCode::VulnerabilityCap.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ArchetypeFigures {
            archetype: r.archetype,
            people: r.people,
            mean_stress: round(r.mean_stress),
            mean_valence: round(r.mean_valence),
            high_stress_share: round(r.high_stress_share),
            purchase_intent_share: round(r.purchase_intent_share),
            financial_worry_share: round(r.financial_worry_share),
            saving_intent_share: round(r.saving_intent_share),
            outflow_to_inflow: round(r.outflow_to_inflow),
            discretionary_share: round(r.discretionary_share),
            income_cv: round(r.income_cv),
            mean_pd: round(r.mean_pd),
            mean_pd_without_emotions: round(r.mean_pd_without_emotions),
            approved_share: round(r.approved_share),
            approved_share_without_emotions: round(r.approved_share_without_emotions),
            mean_limit_brl: round(r.mean_limit),
            mean_limit_without_emotions_brl: round(r.mean_limit_without_emotions),
            mean_limit_without_guard_brl: round(r.mean_limit_without_guard),
            vulnerability_capped: r.vulnerability_capped,
        })
        .collect())
}

pub async fn spending(conn: &mut PgConnection, plan: &Plan) -> anyhow::Result<SpendingFindings> {
    let correlations = "corr(purchase_intent_share, discretionary_of_income) AS intent,
                        corr(mean_stress, outflow_to_inflow) AS stress";
    let (intent, stress): (Option<f64>, Option<f64>) = sqlx::query_as(sqlx::AssertSqlSafe(
        format!("SELECT {correlations} FROM person_figures"),
    ))
    .fetch_one(&mut *conn)
    .await?;
    // Within an archetype the built-in differences between kinds of people cannot drive it.
    let (intent_within, stress_within): (Option<f64>, Option<f64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT avg(intent), avg(stress) FROM (
                 SELECT {correlations} FROM person_figures GROUP BY archetype) w"
        )))
        .fetch_one(&mut *conn)
        .await?;
    // Every person-hour of the stretch: was there a purchase intent in it or the hour before,
    // and how many discretionary purchases happened in it.
    let rates: Vec<(bool, i64, i64)> = sqlx::query_as(
        "WITH hours AS (
             SELECT p.user_id, h
             FROM person_figures p,
                  generate_series($1::timestamptz, $2::timestamptz - interval '1 hour',
                                  interval '1 hour') AS h),
         intent_hours AS (
             SELECT DISTINCT user_id, date_trunc('hour', recorded_at) AS h
             FROM readings_opened
             WHERE $3 = ANY(intents) AND recorded_at >= $1 AND recorded_at < $2),
         flagged AS (
             SELECT user_id, h FROM intent_hours
             UNION
             SELECT user_id, h + interval '1 hour' FROM intent_hours),
         bought AS (
             SELECT user_id, date_trunc('hour', occurred_at) AS h, count(*) AS n
             FROM transactions
             WHERE direction = 'outflow' AND category = ANY($4)
               AND occurred_at >= $1 AND occurred_at < $2
             GROUP BY 1, 2)
         SELECT f.user_id IS NOT NULL AS after_intent,
                count(*) AS hours,
                COALESCE(sum(b.n), 0)::bigint AS purchases
         FROM hours
         LEFT JOIN flagged f USING (user_id, h)
         LEFT JOIN bought b USING (user_id, h)
         GROUP BY 1",
    )
    .bind(plan.start())
    .bind(plan.end)
    .bind(Intent::PurchaseIntent.code())
    .bind(&DISCRETIONARY[..])
    .fetch_all(&mut *conn)
    .await?;
    let rate = |after: bool| {
        rates
            .iter()
            .find(|r| r.0 == after)
            .map_or(0.0, |&(_, hours, purchases)| {
                purchases as f64 / hours.max(1) as f64
            })
    };
    Ok(SpendingFindings {
        corr_purchase_intent_vs_discretionary: round(intent.unwrap_or(0.0)),
        corr_purchase_intent_vs_discretionary_within: round(intent_within.unwrap_or(0.0)),
        corr_stress_vs_outflow_ratio: round(stress.unwrap_or(0.0)),
        corr_stress_vs_outflow_ratio_within: round(stress_within.unwrap_or(0.0)),
        purchases_per_hour_after_intent: round(rate(true)),
        purchases_per_hour_otherwise: round(rate(false)),
    })
}

#[derive(sqlx::FromRow)]
struct HourRow {
    hour: i32,
    mean_stress: f64,
    mean_valence: f64,
    mean_arousal: f64,
    purchase_intent_share: f64,
    financial_worry_share: f64,
    discretionary_purchases: i64,
}

/// Hours of the day in UTC, which the simulation takes as the people's local time.
pub async fn hours(
    conn: &mut PgConnection,
    plan: &Plan,
) -> anyhow::Result<(Vec<HourFigures>, Vec<ArchetypeSeries>)> {
    let rows: Vec<HourRow> = sqlx::query_as(
        "WITH readings AS (
             SELECT extract(hour FROM r.recorded_at AT TIME ZONE 'UTC')::int AS hour,
                    avg(r.stress)::float8 AS mean_stress,
                    avg(r.valence)::float8 AS mean_valence,
                    avg(r.arousal)::float8 AS mean_arousal,
                    avg(($3 = ANY(r.intents))::int)::float8 AS purchase_intent_share,
                    avg(($4 = ANY(r.intents))::int)::float8 AS financial_worry_share
             FROM readings_opened r
             WHERE r.recorded_at >= $1 AND r.recorded_at < $2
             GROUP BY 1),
         bought AS (
             SELECT extract(hour FROM occurred_at AT TIME ZONE 'UTC')::int AS hour,
                    count(*) AS n
             FROM transactions
             WHERE direction = 'outflow' AND category = ANY($5)
               AND occurred_at >= $1 AND occurred_at < $2
             GROUP BY 1)
         SELECT r.*, COALESCE(b.n, 0) AS discretionary_purchases
         FROM readings r LEFT JOIN bought b USING (hour)
         ORDER BY hour",
    )
    .bind(plan.start())
    .bind(plan.end)
    .bind(Intent::PurchaseIntent.code())
    .bind(Intent::FinancialWorry.code())
    .bind(&DISCRETIONARY[..])
    .fetch_all(&mut *conn)
    .await?;
    let hours = rows
        .into_iter()
        .map(|r| HourFigures {
            hour: r.hour,
            mean_stress: round(r.mean_stress),
            mean_valence: round(r.mean_valence),
            mean_arousal: round(r.mean_arousal),
            purchase_intent_share: round(r.purchase_intent_share),
            financial_worry_share: round(r.financial_worry_share),
            discretionary_purchases: r.discretionary_purchases,
        })
        .collect();
    let series: Vec<(String, Vec<f64>)> = sqlx::query_as(
        "SELECT archetype, array_agg(stress ORDER BY hour) FROM (
             SELECT p.archetype, extract(hour FROM r.recorded_at AT TIME ZONE 'UTC')::int AS hour,
                    avg(r.stress)::float8 AS stress
             FROM readings_opened r JOIN person_figures p USING (user_id)
             WHERE r.recorded_at >= $1 AND r.recorded_at < $2
             GROUP BY 1, 2) s
         GROUP BY archetype
         ORDER BY array_position($3, archetype)",
    )
    .bind(plan.start())
    .bind(plan.end)
    .bind(order())
    .fetch_all(&mut *conn)
    .await?;
    let stress_by_hour = series
        .into_iter()
        .map(|(archetype, values)| ArchetypeSeries {
            archetype,
            values: values.into_iter().map(round).collect(),
        })
        .collect();
    Ok((hours, stress_by_hour))
}

pub async fn credit(conn: &mut PgConnection) -> anyhow::Result<CreditFindings> {
    let rows: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT p.archetype, c->>'name', avg((c->>'value')::float8)
         FROM person_figures p
         JOIN risk_assessments a USING (user_id),
              jsonb_array_elements(a.contributions) AS c
         WHERE c->>'name' = ANY($2)
         GROUP BY 1, 2
         ORDER BY array_position($1, p.archetype), array_position($2, c->>'name')",
    )
    .bind(order())
    .bind(emotional_features())
    .fetch_all(&mut *conn)
    .await?;
    let (recomputed_equal, people): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE o.credit_limit_cents = c.recomputed_limit
                                   AND c.offered_limit = o.credit_limit_cents),
                count(*)
         FROM counterfactual c JOIN credit_offers o USING (user_id)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(CreditFindings {
        emotional_contributions: rows
            .into_iter()
            .map(|(archetype, feature, value)| Contribution {
                archetype,
                feature,
                mean_log_odds: round(value),
            })
            .collect(),
        recomputed_equal,
        people,
    })
}

pub async fn guard(conn: &mut PgConnection) -> anyhow::Result<GuardFindings> {
    let policy = CreditPolicy::default();
    let (people_capped, by_stress_share, by_financial_worry, withheld_cents, declined_by_guard): (
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE $1 = ANY(o.reason_codes)),
                count(*) FILTER (WHERE $1 = ANY(o.reason_codes) AND f.stress_share >= $2),
                count(*) FILTER (WHERE $1 = ANY(o.reason_codes) AND f.financial_worry >= $3),
                COALESCE(sum(c.limit_unguarded - o.credit_limit_cents)
                    FILTER (WHERE $1 = ANY(o.reason_codes)), 0)::bigint,
                count(*) FILTER (WHERE c.approved_unguarded AND NOT o.approved)
         FROM counterfactual c
         JOIN credit_offers o USING (user_id)
         JOIN emotion_features f USING (user_id)",
    )
    .bind(ReasonCode::VulnerabilityCap.as_str())
    .bind(policy.stress_share_threshold)
    .bind(policy.financial_worry_threshold)
    .fetch_one(&mut *conn)
    .await?;
    Ok(GuardFindings {
        people_capped,
        by_stress_share,
        by_financial_worry,
        limit_withheld_brl: round(withheld_cents as f64 / 100.0),
        declined_by_guard,
    })
}

#[derive(sqlx::FromRow)]
struct PersonRow {
    archetype: String,
    mean_stress: f64,
    purchase_intent_share: f64,
    discretionary_of_income: Option<f64>,
    outflow_to_inflow: Option<f64>,
}

pub async fn people(conn: &mut PgConnection) -> anyhow::Result<Vec<PersonPoint>> {
    let rows: Vec<PersonRow> = sqlx::query_as(
        "SELECT archetype, mean_stress, purchase_intent_share, discretionary_of_income,
                outflow_to_inflow
         FROM person_figures
         ORDER BY ordinal",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PersonPoint {
            archetype: r.archetype,
            mean_stress: round(r.mean_stress),
            purchase_intent_share: round(r.purchase_intent_share),
            discretionary_of_income: round(r.discretionary_of_income.unwrap_or(0.0)),
            outflow_to_inflow: round(r.outflow_to_inflow.unwrap_or(0.0)),
        })
        .collect())
}

/// Counts of what the cloud stored for the population.
pub async fn stored(conn: &mut PgConnection) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM emotion_readings r JOIN counterfactual c USING (user_id)),
                (SELECT count(*) FROM transactions t JOIN counterfactual c USING (user_id))",
    )
    .fetch_one(conn)
    .await?)
}
