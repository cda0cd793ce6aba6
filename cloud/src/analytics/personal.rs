//! A person's own view: their mood by hour, their offers with the reasons, their credit line.
//! It is their own data, so nothing is suppressed; who may ask is the API's to check.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Analytics, Hours};
use crate::{Error, error::Result};

/// How many of the person's most recent offers the view lists.
pub const RECENT_OFFERS: i64 = 20;

#[derive(Debug, Serialize, ToSchema)]
pub struct PersonalView {
    pub user_id: Uuid,
    pub window_hours: u32,
    /// Every hour of the window (UTC), oldest first; hours without readings have no figures.
    pub mood: Vec<PersonalMoodHour>,
    /// The person's most recent offers (at most 20), newest first.
    pub offers: Vec<OfferSummary>,
    /// The credit line in force, if an offer has been applied.
    pub credit_line: Option<CreditLine>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PersonalMoodHour {
    pub hour: DateTime<Utc>,
    pub readings: i64,
    /// Mean valence, −100..=100.
    pub valence: Option<f64>,
    /// Mean stress, 0..=100.
    pub stress: Option<f64>,
    /// Mean arousal, 0..=100.
    pub arousal: Option<f64>,
}

/// One decision about the person, with what it stood on (LGPD Art. 20).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct OfferSummary {
    pub offer_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub approved: bool,
    /// offered, declined, accepted, applied, expired or superseded.
    pub status: String,
    pub credit_limit_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: String,
    pub term_months: i32,
    /// Why the policy decided as it did.
    pub reason_codes: Vec<String>,
    /// `requested` (by the person) or `proactive` (made by the cloud from their stream).
    pub origin: String,
    /// For a proactive offer, the signal that made the cloud offer it.
    #[schema(value_type = Option<crate::proactive::ProactiveSignal>)]
    pub proactive_signal: Option<sqlx::types::Json<crate::proactive::ProactiveSignal>>,
    /// The model's probability of default behind the decision, 0..=1.
    pub probability_of_default: f64,
    pub model_name: String,
    pub model_version: String,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct CreditLine {
    pub credit_limit_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: String,
    pub offer_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

impl Analytics {
    /// The person's own view, or `NotFound` when there is no such person.
    pub async fn person(&self, user_id: Uuid, window: Hours) -> Result<PersonalView> {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        exists.ok_or(Error::NotFound("user"))?;
        let mood: Vec<PersonalMoodHour> = sqlx::query_as(
            "WITH hours AS (
                 SELECT generate_series(
                     date_trunc('hour', now(), 'UTC') - make_interval(hours => $2 - 1),
                     date_trunc('hour', now(), 'UTC'),
                     interval '1 hour') AS hour
             ), mine AS (
                 SELECT date_trunc('hour', recorded_at, 'UTC') AS hour, valence, stress, arousal
                 FROM emotion_readings
                 WHERE user_id = $1
                   AND recorded_at >= date_trunc('hour', now(), 'UTC') - make_interval(hours => $2 - 1)
             )
             SELECT h.hour, count(m.hour) AS readings,
                    round(avg(m.valence), 1)::float8 AS valence,
                    round(avg(m.stress), 1)::float8 AS stress,
                    round(avg(m.arousal), 1)::float8 AS arousal
             FROM hours h LEFT JOIN mine m USING (hour)
             GROUP BY h.hour ORDER BY h.hour",
        )
        .bind(user_id)
        .bind(window.sql())
        .fetch_all(&self.pool)
        .await?;
        let offers: Vec<OfferSummary> = sqlx::query_as(
            "SELECT o.offer_id, o.created_at, o.approved,
                    CASE WHEN o.status = 'offered' AND o.expires_at <= now() THEN 'expired'
                         ELSE o.status END AS status,
                    o.credit_limit_cents, o.interest_rate_bps, o.credit_type, o.term_months,
                    o.reason_codes, o.origin, o.proactive_signal, a.probability_of_default, a.model_name, a.model_version
             FROM credit_offers o JOIN risk_assessments a USING (assessment_id)
             WHERE o.user_id = $1
             ORDER BY o.created_at DESC, o.offer_id
             LIMIT $2",
        )
        .bind(user_id)
        .bind(RECENT_OFFERS)
        .fetch_all(&self.pool)
        .await?;
        let credit_line: Option<CreditLine> = sqlx::query_as(
            "SELECT credit_limit_cents, interest_rate_bps, credit_type, offer_id, updated_at
             FROM credit_limits WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(PersonalView {
            user_id,
            window_hours: window.get(),
            mood,
            offers,
            credit_line,
        })
    }
}
