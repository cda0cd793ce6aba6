//! Credit assessments through the cloud's own [`Assessor`] (features as ingest folded them, the
//! scorecard, the policy with its distress guard), and what each offer would have been with one
//! input changed, through the same model and policy functions: without the person's emotional
//! data (the neutral values a person without consent gets), and without the distress guard.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use ecs_cloud::{
    features,
    finance::FinancialFeatures,
    model::{RiskModel, Scorecard},
    offers::{self, AssessmentLimit, Assessor, OfferRequest},
    people::PersonTx,
    policy::{CreditPolicy, Wellbeing},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::population::Person;

/// Assesses every person as the API would (one offer each, stored), then computes, with the
/// same model and policy, what the offer would have been without emotional data and without the
/// distress guard; the counterfactuals go to a temporary table beside the labels.
pub async fn assess(
    pool: &PgPool,
    people: &[Person],
    conn: &mut PgConnection,
) -> anyhow::Result<()> {
    let model: Arc<dyn RiskModel> = Arc::new(Scorecard::built_in()?);
    let policy = CreditPolicy::default();
    let unguarded = CreditPolicy {
        stress_share_threshold: f64::INFINITY,
        financial_worry_threshold: f64::INFINITY,
        ..CreditPolicy::default()
    };
    let assessor = Assessor {
        pool: pool.clone(),
        model: model.clone(),
        policy: policy.clone(),
        offer_ttl: Duration::from_secs(24 * 3600),
        limit: AssessmentLimit::default(),
    };
    let mut rows = Counterfactuals::default();
    for (ordinal, person) in people.iter().enumerate() {
        let prepared = assessor
            .prepare(person.user_id, OfferRequest::default())
            .await?;
        let mut tx = PersonTx::lock(pool, person.user_id).await?;
        let offer = assessor.record(&mut tx, &prepared).await?;
        tx.finish().await?;

        // The same reads the assessment made (nothing has changed since).
        let finance = FinancialFeatures::load(pool, person.user_id, Utc::now()).await?;
        let emotions = features::load(pool, person.user_id)
            .await?
            .context("a simulated person without emotional features")?;
        let wellbeing = Wellbeing {
            stress_share: emotions.stress_share,
            financial_worry: emotions.financial_worry,
        };
        let pd = prepared.score().probability_of_default;
        let recomputed = policy.decide(pd, &finance, Some(wellbeing));
        let neutral = model
            .score(&offers::feature_vector(&finance, None))
            .await
            .map_err(|e| anyhow::anyhow!("scoring without emotions: {e}"))?;
        let without_emotions = policy.decide(neutral.probability_of_default, &finance, None);
        let without_guard = unguarded.decide(pd, &finance, Some(wellbeing));
        rows.user_id.push(person.user_id);
        rows.ordinal.push(i32::try_from(ordinal)?);
        rows.archetype.push(person.archetype.as_str());
        rows.recomputed_limit.push(recomputed.credit_limit_cents);
        rows.offered_limit.push(offer.credit_limit_cents);
        rows.pd_neutral.push(neutral.probability_of_default);
        rows.approved_neutral.push(without_emotions.approved);
        rows.limit_neutral.push(without_emotions.credit_limit_cents);
        rows.approved_unguarded.push(without_guard.approved);
        rows.limit_unguarded.push(without_guard.credit_limit_cents);
    }
    rows.store(conn).await
}

/// The per-person results of [`assess`], column by column (for one UNNEST insert).
#[derive(Default)]
struct Counterfactuals {
    user_id: Vec<Uuid>,
    /// The person's place in the simulation, for a stable order.
    ordinal: Vec<i32>,
    archetype: Vec<&'static str>,
    offered_limit: Vec<i64>,
    recomputed_limit: Vec<i64>,
    pd_neutral: Vec<f64>,
    approved_neutral: Vec<bool>,
    limit_neutral: Vec<i64>,
    approved_unguarded: Vec<bool>,
    limit_unguarded: Vec<i64>,
}

impl Counterfactuals {
    async fn store(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query(
            "CREATE TEMP TABLE counterfactual AS
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[],
                                  $5::float8[], $6::bool[], $7::bigint[], $8::bool[], $9::bigint[],
                                  $10::int[])
                 AS c(user_id, archetype, offered_limit, recomputed_limit, pd_neutral,
                      approved_neutral, limit_neutral, approved_unguarded, limit_unguarded,
                      ordinal)",
        )
        .bind(&self.user_id)
        .bind(&self.archetype)
        .bind(&self.offered_limit)
        .bind(&self.recomputed_limit)
        .bind(&self.pd_neutral)
        .bind(&self.approved_neutral)
        .bind(&self.limit_neutral)
        .bind(&self.approved_unguarded)
        .bind(&self.limit_unguarded)
        .bind(&self.ordinal)
        .execute(conn)
        .await?;
        Ok(())
    }
}
