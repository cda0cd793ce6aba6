//! Credit offers: assess a person, accept an offer, and apply accepted offers in the background.
//!
//! Accepting never changes a credit line inside the request. It records the acceptance and an
//! outbox event in one transaction and answers 202; the [`OfferWorker`] applies the new limit later
//! (woken by LISTEN/NOTIFY, but driven by polling, because NOTIFY is lost while disconnected).
//! Applying is idempotent: an event replayed after a crash finds the offer already applied and
//! changes nothing twice (and `credit_limit_history.offer_id` is UNIQUE as a second guard).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use ecs_protocol::{CreditType, NotificationKind};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool, Row, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};
use utoipa::ToSchema;
use uuid::Uuid;

mod group;
pub use group::{Recorder, ToRecord};

use crate::{
    Error,
    auth::Principal,
    error::Result,
    features::EmotionFeatures,
    finance::FinancialFeatures,
    model::{FeatureVector, ModelError, NamedValue, RiskModel, RiskScore},
    notify,
    people::{self, PersonTx},
    policy::{CreditPolicy, Decision, Wellbeing},
    pricing::{self, LoanTerms, Quote},
    proactive::ProactiveSignal,
};

/// Postgres channel the accept path NOTIFYs and the worker LISTENs on.
pub const OUTBOX_CHANNEL: &str = "ecs_outbox";

/// Tries an event gets before it is parked (with its last error, for an operator:
/// `ecs-cloud outbox list|retry`). With the backoff doubling from 1 s, the last try comes about
/// four minutes after the first: long enough for a restart of Postgres or a deploy, short enough
/// that a broken event shows up on the operator's screen the same day instead of never.
pub const MAX_APPLY_ATTEMPTS: i32 = 8;

/// Where an offer is in its life: `offered` → `accepted` → `applied`; `declined`, `expired`
/// and `superseded` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    Offered,
    Declined,
    Accepted,
    Applied,
    Expired,
    /// Replaced by a newer assessment of the same person.
    Superseded,
}

impl OfferStatus {
    pub const ALL: [OfferStatus; 6] = [
        OfferStatus::Offered,
        OfferStatus::Declined,
        OfferStatus::Accepted,
        OfferStatus::Applied,
        OfferStatus::Expired,
        OfferStatus::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OfferStatus::Offered => "offered",
            OfferStatus::Declined => "declined",
            OfferStatus::Accepted => "accepted",
            OfferStatus::Applied => "applied",
            OfferStatus::Expired => "expired",
            OfferStatus::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

ecs_protocol::sql_text_enum!(OfferStatus);

/// Who asked for an offer: the person, through the API, or the cloud, when the person's stream
/// crossed the policy's threshold ([`crate::proactive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferOrigin {
    Requested,
    Proactive,
}

impl OfferOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            OfferOrigin::Requested => "requested",
            OfferOrigin::Proactive => "proactive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [OfferOrigin::Requested, OfferOrigin::Proactive]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

ecs_protocol::sql_text_enum!(OfferOrigin);

/// A credit offer as stored, and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CreditOffer {
    pub offer_id: Uuid,
    pub user_id: Uuid,
    /// The model evaluation behind the offer (inputs, version, contributions are stored).
    pub assessment_id: Uuid,
    pub approved: bool,
    pub status: OfferStatus,
    /// The credit line offered (0 when declined).
    pub credit_limit_cents: i64,
    /// Annual effective rate in basis points (1 bp = 0.01 %).
    pub interest_rate_bps: i32,
    pub credit_type: CreditType,
    pub term_months: i32,
    /// The amount the request asked to borrow, if it named one.
    pub requested_amount_cents: Option<i64>,
    /// The price of borrowing (the requested amount, or the whole line) over the term, as a
    /// Brazilian lender must show it; absent when declined.
    #[schema(value_type = Option<Quote>)]
    pub pricing: Option<sqlx::types::Json<Quote>>,
    /// Why the policy decided as it did (see `policy::ReasonCode`).
    pub reason_codes: Vec<String>,
    /// Asked for by the person, or made by the cloud from the person's stream.
    pub origin: OfferOrigin,
    /// For a proactive offer, the signal that made the cloud offer it.
    #[schema(value_type = Option<ProactiveSignal>)]
    pub proactive_signal: Option<sqlx::types::Json<ProactiveSignal>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// The model's result.
#[derive(Serialize, ToSchema)]
pub struct RiskView {
    /// Probability of default, 0–1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub probability_of_default: f64,
    /// 0 (certain default) to 1000 (no risk): `round(1000 × (1 − PD))`.
    #[schema(minimum = 0, maximum = 1000)]
    pub risk_score: i32,
    pub model_name: String,
    pub model_version: String,
    pub contributions: Vec<NamedValue>,
}

/// An offer as the API answers it: with the model's result when the answer created it.
#[derive(Serialize, ToSchema)]
pub struct OfferView {
    #[serde(flatten)]
    pub offer: CreditOffer,
    /// The model's result; present on the response that created the offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskView>,
}

impl OfferView {
    /// The view of a new offer, with the model's result behind it.
    fn assessed(offer: CreditOffer, score: &RiskScore) -> Self {
        let pd = score.probability_of_default;
        Self {
            offer,
            risk: Some(RiskView {
                probability_of_default: pd,
                risk_score: ((1.0 - pd) * 1000.0).round() as i32,
                model_name: score.model_name.clone(),
                model_version: score.model_version.clone(),
                contributions: score.contributions.clone(),
            }),
        }
    }
}

impl From<CreditOffer> for OfferView {
    fn from(offer: CreditOffer) -> Self {
        Self { offer, risk: None }
    }
}

/// A person's assessments counted against the allowance: `used` of the newest `$3` since `$2`
/// (so at most `$3`, whatever the person did before), and the `oldest` of them; the person is
/// `$user` (a parameter, or a column of an outer query). A literal, for `concat!`, over the
/// `(user_id, created_at DESC)` index.
macro_rules! recent_assessments {
    ($user:literal) => {
        concat!(
            "SELECT count(*) AS used, min(created_at) AS oldest FROM (
                 SELECT created_at FROM risk_assessments
                 WHERE user_id = ",
            $user,
            " AND created_at > $2
                 ORDER BY created_at DESC LIMIT $3) newest"
        )
    };
}

/// The columns of [`CreditOffer`], as a literal so queries stay static strings (`concat!`).
/// An open offer past its expiry reads as `expired` whether or not a write has recorded it yet.
macro_rules! offer_columns {
    () => {
        "offer_id, user_id, assessment_id, approved, \
         CASE WHEN status = 'offered' AND expires_at <= now() THEN 'expired' ELSE status END \
             AS status, \
         credit_limit_cents, interest_rate_bps, credit_type, term_months, \
         requested_amount_cents, pricing, reason_codes, origin, proactive_signal, \
         created_at, expires_at, accepted_at, applied_at"
    };
}

/// An offer together with the model result that produced it.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub offer: CreditOffer,
    pub score: RiskScore,
}

/// How many assessments a person may have per period: with a model that is not deterministic
/// (`ECS_MODEL=random`), or data that moves, re-assessing until the draw is good is gaming the
/// decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssessmentLimit {
    pub max: u32,
    pub period: Duration,
}

impl Default for AssessmentLimit {
    fn default() -> Self {
        Self {
            max: 10,
            period: Duration::from_secs(3600),
        }
    }
}

/// What the person asked for: an amount and a term, both optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfferRequest {
    pub amount_cents: Option<i64>,
    pub term_months: Option<i32>,
}

/// The reads and the model's answer for one assessment, made before any lock is taken (the
/// model may take a while; nobody waits for it).
pub struct Prepared {
    user_id: Uuid,
    request: OfferRequest,
    consent: bool,
    features: FeatureVector,
    score: RiskScore,
    decision: Decision,
    now: DateTime<Utc>,
    /// Set when the cloud, not the person, asked ([`Prepared::triggered_by`]).
    signal: Option<ProactiveSignal>,
}

impl Prepared {
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    pub fn score(&self) -> &RiskScore {
        &self.score
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Whether the person consented to emotional data when the features were read.
    pub fn consented(&self) -> bool {
        self.consent
    }

    /// Marks the assessment as the cloud's own, made because of `signal`.
    pub fn triggered_by(mut self, signal: ProactiveSignal) -> Self {
        self.signal = Some(signal);
        self
    }
}

/// Turns a person's data into an offer: features → model → policy → priced, stored offer.
pub struct Assessor {
    pub pool: PgPool,
    pub model: Arc<dyn RiskModel>,
    pub policy: CreditPolicy,
    pub offer_ttl: Duration,
    pub limit: AssessmentLimit,
}

impl Assessor {
    /// Reads the person's features and asks the model, without locking anything.
    pub async fn prepare(&self, user_id: Uuid, request: OfferRequest) -> Result<Prepared> {
        // To the microsecond, as Postgres stores it: the offer answered is the offer stored.
        let now = Utc::now().trunc_subsecs(6);
        // Every input in one statement: the person's consent, what is left of their allowance,
        // the financial window and, only with consent, the emotional features. Emotional data
        // is read only with consent (LGPD Art. 11): the join itself is conditioned on it, so
        // without it no emotional value leaves the database, the model sees neutral values and
        // the decision says emotional data was not used.
        let row = sqlx::query(concat!(
            "SELECT u.emotional_data_consent, recent.used, recent.oldest, finance.*, ",
            crate::features::emotion_feature_columns!(),
            " FROM users u
             CROSS JOIN LATERAL (",
            recent_assessments!("$1"),
            ") recent
             CROSS JOIN LATERAL (",
            crate::finance::financial_window!("$1", "$4", "$5", "$6"),
            ") finance
             LEFT JOIN emotion_features ef
                 ON ef.user_id = u.user_id AND u.emotional_data_consent
             WHERE u.user_id = $1"
        ))
        .bind(user_id)
        .bind(self.window_start(now)?)
        .bind(i64::from(self.limit.max))
        .bind(now)
        .bind(&crate::finance::DISCRETIONARY[..])
        .bind(crate::finance::WINDOW_DAYS)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound("user"))?;
        let consent: bool = row.try_get("emotional_data_consent")?;
        self.within_allowance(row.try_get("used")?, row.try_get("oldest")?, now)?;
        let finance = FinancialFeatures::from_row(&row)?;
        let emotions = match row.try_get::<Option<i64>, _>("readings_count")? {
            Some(_) => Some(EmotionFeatures::from_row(&row)?),
            None => None,
        };
        let features = feature_vector(&finance, emotions.as_ref());
        let score = self.model.score(&features).await.map_err(|e| match e {
            ModelError::Unavailable(reason) => {
                warn!(%reason, "risk model unavailable");
                Error::Unavailable("risk model")
            }
            other => Error::Internal(other.to_string()),
        })?;
        if !(0.0..=1.0).contains(&score.probability_of_default) {
            return Err(Error::Internal(format!(
                "model {} returned probability {}",
                score.model_name, score.probability_of_default
            )));
        }
        let wellbeing = emotions.as_ref().map(|e| Wellbeing {
            stress_share: e.stress_share,
            financial_worry: e.financial_worry,
        });
        let decision = self.policy.decide_for(
            score.probability_of_default,
            &finance,
            wellbeing,
            request.amount_cents,
            request.term_months,
        );
        Ok(Prepared {
            user_id,
            request,
            consent,
            features,
            score,
            decision,
            now,
            signal: None,
        })
    }

    /// Stores the assessment and its offer in the person's transaction: the person's open
    /// offer is superseded, so the newest decision is the only one that can be accepted.
    pub async fn record(&self, tx: &mut PersonTx, prepared: &Prepared) -> Result<CreditOffer> {
        let user_id = tx.user_id();
        if prepared.user_id != user_id {
            return Err(Error::Internal(
                "an assessment recorded in another person's transaction".into(),
            ));
        }
        if tx.consents_to_emotional_data() != prepared.consent {
            return Err(consent_changed());
        }
        let offer = self.offer_for(prepared)?;
        let checked_at = Utc::now();
        let allowance = self
            .supersede_within_allowance(tx.conn(), &[user_id], checked_at)
            .await?;
        let (used, oldest) = allowance.first().map_or((0, None), |a| (a.used, a.oldest));
        self.within_allowance(used, oldest, checked_at)?;
        insert_offers(tx.conn(), &[(&offer, prepared)]).await?;
        created(&offer, prepared);
        Ok(offer)
    }

    /// The offer `prepared` decided on, as it will be stored: new ids, priced when approved,
    /// its times in whole microseconds (as Postgres stores them, so the answer is the row).
    fn offer_for(&self, prepared: &Prepared) -> Result<CreditOffer> {
        let Prepared {
            user_id,
            request,
            decision,
            now,
            signal,
            ..
        } = prepared;
        let pricing = if decision.approved {
            let terms = LoanTerms::new(
                decision.principal_cents,
                u32::try_from(decision.term_months).unwrap_or(0),
                decision.interest_rate_bps,
                now.date_naive(),
            )
            .map_err(|e| Error::Internal(format!("pricing an approved offer: {e}")))?;
            Some(sqlx::types::Json(pricing::quote(&terms)))
        } else {
            None
        };
        let expires_at = (*now
            + chrono::Duration::from_std(self.offer_ttl)
                .map_err(|e| Error::Internal(format!("offer ttl: {e}")))?)
        .trunc_subsecs(6);
        Ok(CreditOffer {
            offer_id: Uuid::new_v4(),
            user_id: *user_id,
            assessment_id: Uuid::new_v4(),
            approved: decision.approved,
            status: if decision.approved {
                OfferStatus::Offered
            } else {
                OfferStatus::Declined
            },
            credit_limit_cents: decision.credit_limit_cents,
            interest_rate_bps: decision.interest_rate_bps,
            credit_type: decision.credit_type,
            term_months: decision.term_months,
            requested_amount_cents: request.amount_cents,
            pricing,
            reason_codes: decision
                .reasons
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            origin: if signal.is_some() {
                OfferOrigin::Proactive
            } else {
                OfferOrigin::Requested
            },
            proactive_signal: signal.clone().map(sqlx::types::Json),
            created_at: *now,
            expires_at,
            accepted_at: None,
            applied_at: None,
        })
    }

    /// Under the people's locks, for each of `people` (distinct): the allowance again, now
    /// authoritative (concurrent requests cannot both slip under it), and the person's open
    /// offer superseded only if the allowance holds. One statement for all of them.
    async fn supersede_within_allowance(
        &self,
        conn: &mut sqlx::PgConnection,
        people: &[Uuid],
        checked_at: DateTime<Utc>,
    ) -> Result<Vec<Allowance>> {
        Ok(sqlx::query_as(concat!(
            "WITH recent AS (
                 SELECT p.user_id, r.used, r.oldest FROM unnest($1::uuid[]) AS p(user_id)
                 CROSS JOIN LATERAL (",
            recent_assessments!("p.user_id"),
            ") r
             ), superseded AS (
                 UPDATE credit_offers o
                 SET status = CASE WHEN o.expires_at <= now() THEN 'expired' ELSE 'superseded' END
                 FROM recent
                 WHERE o.user_id = recent.user_id AND o.status = 'offered' AND recent.used < $3
                 RETURNING 1)
             SELECT user_id, used, oldest FROM recent, (SELECT count(*) FROM superseded) s"
        ))
        .bind(people)
        .bind(self.window_start(checked_at)?)
        .bind(i64::from(self.limit.max))
        .fetch_all(conn)
        .await?)
    }

    /// Where the allowance's period starts, for an assessment at `now`.
    fn window_start(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let period = chrono::Duration::from_std(self.limit.period)
            .map_err(|e| Error::Internal(format!("assessment period: {e}")))?;
        Ok(now - period)
    }

    /// Refuses an assessment past the person's allowance for the period, given the
    /// [`recent_assessments!`] of the person: `used` of them, the oldest at `oldest`. Asked
    /// without the lock before the model is (so a refused request costs no model call), and
    /// again under it, where it is authoritative. Assessments are stamped by this process's
    /// clock, so the window is measured by it too.
    fn within_allowance(
        &self,
        used: i64,
        oldest: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if used < i64::from(self.limit.max) {
            return Ok(());
        }
        let period = chrono::Duration::from_std(self.limit.period)
            .map_err(|e| Error::Internal(format!("assessment period: {e}")))?;
        let frees_at = oldest.unwrap_or(now) + period;
        let wait = (frees_at - now).to_std().unwrap_or(Duration::from_secs(1));
        Err(Error::RateLimited {
            what: "this person's assessments for the period are used up",
            retry_after: wait,
        })
    }
}

/// What [`Assessor::supersede_within_allowance`] found of a person's allowance.
#[derive(Debug, FromRow)]
struct Allowance {
    user_id: Uuid,
    used: i64,
    oldest: Option<DateTime<Utc>>,
}

fn consent_changed() -> Error {
    Error::Conflict("the person's consent changed during the assessment; assess again".into())
}

/// Each assessment and its offer, in one statement (one round trip) for any number of them:
/// an offer's foreign key to its assessment is checked at the end of the statement, when both
/// exist. Nothing is read back: the answer is the row as written (its times are whole
/// microseconds, as stored), and reading it back would cost the database a JSONB encode of the
/// pricing and us its parse.
async fn insert_offers(
    conn: &mut sqlx::PgConnection,
    rows: &[(&CreditOffer, &Prepared)],
) -> Result<()> {
    use sqlx::types::Json;
    let offer_ids: Vec<Uuid> = rows.iter().map(|(o, _)| o.offer_id).collect();
    let user_ids: Vec<Uuid> = rows.iter().map(|(o, _)| o.user_id).collect();
    let assessment_ids: Vec<Uuid> = rows.iter().map(|(o, _)| o.assessment_id).collect();
    let approved: Vec<bool> = rows.iter().map(|(o, _)| o.approved).collect();
    let statuses: Vec<&str> = rows.iter().map(|(o, _)| o.status.as_str()).collect();
    let limits: Vec<i64> = rows.iter().map(|(o, _)| o.credit_limit_cents).collect();
    let rates: Vec<i32> = rows.iter().map(|(o, _)| o.interest_rate_bps).collect();
    let types: Vec<&str> = rows.iter().map(|(o, _)| o.credit_type.as_str()).collect();
    let terms: Vec<i32> = rows.iter().map(|(o, _)| o.term_months).collect();
    // A text[] per row: unnest cannot take an array of arrays of different lengths.
    let reasons: Vec<Json<&Vec<String>>> =
        rows.iter().map(|(o, _)| Json(&o.reason_codes)).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|(o, _)| o.created_at).collect();
    let expires: Vec<DateTime<Utc>> = rows.iter().map(|(o, _)| o.expires_at).collect();
    let amounts: Vec<Option<i64>> = rows.iter().map(|(o, _)| o.requested_amount_cents).collect();
    let pricing: Vec<Option<&Json<Quote>>> = rows.iter().map(|(o, _)| o.pricing.as_ref()).collect();
    let origins: Vec<&str> = rows.iter().map(|(o, _)| o.origin.as_str()).collect();
    let signals: Vec<Option<&Json<ProactiveSignal>>> = rows
        .iter()
        .map(|(o, _)| o.proactive_signal.as_ref())
        .collect();
    let model_names: Vec<&str> = rows
        .iter()
        .map(|(_, p)| p.score.model_name.as_str())
        .collect();
    let model_versions: Vec<&str> = rows
        .iter()
        .map(|(_, p)| p.score.model_version.as_str())
        .collect();
    let pds: Vec<f64> = rows
        .iter()
        .map(|(_, p)| p.score.probability_of_default)
        .collect();
    let features: Vec<Json<&FeatureVector>> = rows.iter().map(|(_, p)| Json(&p.features)).collect();
    let contributions: Vec<Json<&Vec<NamedValue>>> = rows
        .iter()
        .map(|(_, p)| Json(&p.score.contributions))
        .collect();
    sqlx::query(
        "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bool[], $5::text[],
                 $6::int8[], $7::int4[], $8::text[], $9::int4[], $10::jsonb[],
                 $11::timestamptz[], $12::timestamptz[], $13::int8[], $14::jsonb[],
                 $15::text[], $16::text[], $17::float8[], $18::jsonb[], $19::jsonb[],
                 $20::text[], $21::jsonb[])
             AS r(offer_id, user_id, assessment_id, approved, status,
                 credit_limit_cents, interest_rate_bps, credit_type, term_months, reason_codes,
                 created_at, expires_at, requested_amount_cents, pricing,
                 model_name, model_version, probability_of_default, features, contributions,
                 origin, proactive_signal)
         ), assessment AS (
             INSERT INTO risk_assessments (assessment_id, user_id, model_name, model_version,
                 probability_of_default, features, contributions, created_at)
             SELECT assessment_id, user_id, model_name, model_version,
                 probability_of_default, features, contributions, created_at FROM r)
         INSERT INTO credit_offers (offer_id, user_id, assessment_id, approved, status,
             credit_limit_cents, interest_rate_bps, credit_type, term_months, reason_codes,
             created_at, expires_at, requested_amount_cents, pricing, origin, proactive_signal)
         SELECT offer_id, user_id, assessment_id, approved, status,
             credit_limit_cents, interest_rate_bps, credit_type, term_months,
             ARRAY(SELECT jsonb_array_elements_text(reason_codes)),
             created_at, expires_at, requested_amount_cents, pricing, origin, proactive_signal
         FROM r",
    )
    .bind(&offer_ids)
    .bind(&user_ids)
    .bind(&assessment_ids)
    .bind(&approved)
    .bind(&statuses)
    .bind(&limits)
    .bind(&rates)
    .bind(&types)
    .bind(&terms)
    .bind(&reasons)
    .bind(&created)
    .bind(&expires)
    .bind(&amounts)
    .bind(&pricing)
    .bind(&model_names)
    .bind(&model_versions)
    .bind(&pds)
    .bind(&features)
    .bind(&contributions)
    .bind(&origins)
    .bind(&signals)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts and logs an offer that was just written.
fn created(offer: &CreditOffer, prepared: &Prepared) {
    let origin = offer.origin.as_str();
    metrics::counter!("ecs_offers_created_total",
        "approved" => offer.approved.to_string(), "origin" => origin)
    .increment(1);
    info!(user_id = %offer.user_id, offer_id = %offer.offer_id, approved = offer.approved, origin,
        pd = prepared.score.probability_of_default, "offer created");
}

/// The model's inputs: financial features always, emotional ones when consented (neutral
/// otherwise, so the vector's layout never changes).
pub fn feature_vector(
    finance: &FinancialFeatures,
    emotions: Option<&EmotionFeatures>,
) -> FeatureVector {
    let mut values = finance.as_named_vector();
    match emotions {
        Some(e) => values.extend(e.as_named_vector()),
        None => values.extend(EmotionFeatures::neutral_named_vector()),
    }
    FeatureVector::new(values)
}

pub async fn find(pool: &PgPool, offer_id: Uuid) -> Result<CreditOffer> {
    find_in(pool, offer_id, false)
        .await?
        .ok_or(Error::NotFound("offer"))
}

async fn find_in(
    executor: impl sqlx::PgExecutor<'_>,
    offer_id: Uuid,
    for_update: bool,
) -> Result<Option<CreditOffer>> {
    let query = if for_update {
        concat!(
            "SELECT ",
            offer_columns!(),
            " FROM credit_offers WHERE offer_id = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            offer_columns!(),
            " FROM credit_offers WHERE offer_id = $1"
        )
    };
    Ok(sqlx::query_as(query)
        .bind(offer_id)
        .fetch_optional(executor)
        .await?)
}

/// The payload of an `offer_accepted` outbox event.
#[derive(Debug, Serialize, Deserialize)]
struct OfferAccepted {
    offer_id: Uuid,
}

/// Accepts an offer on behalf of `principal`: records the acceptance and an outbox event in the
/// owner's person transaction. Accepting an already accepted (or applied) offer is a no-op that
/// reports its state, so a client may safely retry.
pub async fn accept(pool: &PgPool, principal: Principal, offer_id: Uuid) -> Result<CreditOffer> {
    // Who owns it, read without a lock and checked before one is taken: a stranger's request
    // must neither wait on nor reveal someone else's lock. An offer never changes owner.
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM credit_offers WHERE offer_id = $1")
            .bind(offer_id)
            .fetch_optional(pool)
            .await?;
    // Someone else's offer is "not found", not "forbidden": ids are not to be probed.
    let owner = owner
        .filter(|owner| principal.ensure_can_access(*owner).is_ok())
        .ok_or(Error::NotFound("offer"))?;
    let accepted = people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, owner).await.map_err(|e| match e {
            // Erased in between.
            Error::NotFound(_) => Error::NotFound("offer"),
            e => e,
        })?;
        let outcome = accept_in(&mut tx, offer_id).await?;
        tx.finish().await?;
        Ok(outcome)
    })
    .await?;
    match accepted {
        Acceptance::Accepted(offer) => Ok(*offer),
        // Recorded as expired (committed above); the answer is still the conflict.
        Acceptance::Expired => Err(Error::Conflict("the offer has expired".into())),
    }
}

/// What accepting did, when it did not fail.
enum Acceptance {
    /// Accepted now, or earlier (accepted or applied).
    Accepted(Box<CreditOffer>),
    /// Past its expiry: recorded as expired, to be answered as a conflict.
    Expired,
}

async fn accept_in(tx: &mut PersonTx, offer_id: Uuid) -> Result<Acceptance> {
    let offer = find_in(tx.conn(), offer_id, true)
        .await?
        .filter(|o| o.user_id == tx.user_id())
        .ok_or(Error::NotFound("offer"))?;
    match offer.status {
        OfferStatus::Accepted | OfferStatus::Applied => {
            return Ok(Acceptance::Accepted(Box::new(offer)));
        }
        OfferStatus::Declined => return Err(Error::Conflict("the offer was declined".into())),
        OfferStatus::Superseded => {
            return Err(Error::Conflict(
                "the offer was replaced by a newer assessment".into(),
            ));
        }
        OfferStatus::Expired => {
            // Record what reads already show.
            sqlx::query(
                "UPDATE credit_offers SET status = 'expired' WHERE offer_id = $1 AND status = 'offered'",
            )
            .bind(offer_id)
            .execute(tx.conn())
            .await?;
            return Ok(Acceptance::Expired);
        }
        OfferStatus::Offered => {}
    }
    let accepted: CreditOffer = sqlx::query_as(concat!(
        "UPDATE credit_offers SET status = 'accepted', accepted_at = now()
         WHERE offer_id = $1 RETURNING ",
        offer_columns!(),
        ""
    ))
    .bind(offer_id)
    .fetch_one(tx.conn())
    .await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, kind, user_id, payload) VALUES ($1, 'offer_accepted', $2, $3)",
    )
    .bind(Uuid::new_v4())
    .bind(accepted.user_id)
    .bind(sqlx::types::Json(OfferAccepted { offer_id }))
    .execute(tx.conn())
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(tx.conn())
        .await?;
    metrics::counter!("ecs_offers_accepted_total").increment(1);
    info!(user_id = %accepted.user_id, %offer_id, "offer accepted");
    Ok(Acceptance::Accepted(Box::new(accepted)))
}

/// A person's current credit line.
#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CurrentCreditLine {
    pub user_id: Uuid,
    pub credit_limit_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: CreditType,
    pub offer_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

/// The person's current line; `NotFound` until an offer has been applied.
pub async fn credit_line(pool: &PgPool, user_id: Uuid) -> Result<CurrentCreditLine> {
    sqlx::query_as(
        "SELECT user_id, credit_limit_cents, interest_rate_bps, credit_type, offer_id, updated_at
         FROM credit_limits WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound("credit limit"))
}

/// What one pass of the worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// The outbox was empty.
    EmptyQueue,
    /// An event was processed (the offer applied, or found already applied).
    TaskCompleted,
    /// An event failed and was rescheduled with backoff.
    TaskFailed,
}

/// Applies accepted offers from the outbox.
pub struct OfferWorker {
    pub pool: PgPool,
    /// Woken after a commit that created notifications.
    pub notifier: Arc<Notify>,
    pub poll_interval: Duration,
}

impl OfferWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        // Owned by the worker: aborted with it, whether it ends or is aborted itself.
        let _listener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            listen(self.pool.clone(), wake.clone(), shutdown.clone())
                .instrument(info_span!("outbox_listener")),
        ));
        loop {
            if let Err(e) = crate::outbox::export_gauges(&self.pool).await {
                warn!(error = %e, "cannot measure the outbox");
            }
            loop {
                match self.process_next().await {
                    Ok(ExecutionOutcome::TaskCompleted) => continue,
                    Ok(ExecutionOutcome::EmptyQueue | ExecutionOutcome::TaskFailed) => break,
                    Err(e) => {
                        warn!(error = %e, "outbox unavailable");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        info!("offer worker stopped");
    }

    /// Takes one due event (skipping those another replica holds), applies it and marks it
    /// processed, all in one transaction.
    pub async fn process_next(&self) -> Result<ExecutionOutcome> {
        let mut tx = self.pool.begin().await?;
        // The person first, as everywhere (`people::lock`): the person of the oldest due event
        // whose person nobody else holds (another replica applying, an assessment, an
        // erasure). Their event second: nobody locks a person's events without the person.
        let person: Option<(Uuid, bool)> = sqlx::query_as(
            "SELECT u.user_id, u.emotional_data_consent
             FROM outbox o JOIN users u ON u.user_id = o.user_id
             WHERE o.processed_at IS NULL AND o.parked_at IS NULL AND o.available_at <= now()
             ORDER BY o.available_at
             LIMIT 1
             FOR UPDATE OF u SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, consent)) = person else {
            return Ok(ExecutionOutcome::EmptyQueue);
        };
        let mut tx = PersonTx::locked(tx, user_id, consent);
        let event: Option<(Uuid, sqlx::types::Json<OfferAccepted>, i32, DateTime<Utc>)> =
            sqlx::query_as(
                "SELECT event_id, payload, attempts, created_at FROM outbox
             WHERE user_id = $1 AND processed_at IS NULL AND parked_at IS NULL
               AND available_at <= now()
             ORDER BY available_at
             LIMIT 1
             FOR UPDATE",
            )
            .bind(user_id)
            .fetch_optional(tx.conn())
            .await?;
        let Some((event_id, payload, attempts, created_at)) = event else {
            // Processed by another replica between the two statements.
            return Ok(ExecutionOutcome::TaskCompleted);
        };
        let offer_id = payload.0.offer_id;
        let span = info_span!("apply_offer", %event_id, %offer_id, %user_id);
        match apply(&mut tx, offer_id).instrument(span.clone()).await {
            Ok(applied) => {
                sqlx::query(
                    "UPDATE outbox SET processed_at = now(), attempts = attempts + 1 WHERE event_id = $1",
                )
                .bind(event_id)
                .execute(tx.conn())
                .await?;
                tx.finish().await?;
                if applied {
                    metrics::counter!("ecs_offers_applied_total").increment(1);
                    // From the acceptance (the event's creation) to the limit in place.
                    let waited = (Utc::now() - created_at).to_std().unwrap_or_default();
                    metrics::histogram!("ecs_offer_apply_latency_seconds")
                        .record(waited.as_secs_f64());
                    self.notifier.notify_one();
                }
                Ok(ExecutionOutcome::TaskCompleted)
            }
            Err(e) => {
                drop(tx);
                let backoff_secs = 2_i64.saturating_pow(attempts.clamp(0, 10) as u32);
                let park = attempts + 1 >= MAX_APPLY_ATTEMPTS;
                span.in_scope(|| {
                    if park {
                        error!(error = %e, attempts = attempts + 1, "applying offer failed; event parked");
                    } else {
                        warn!(error = %e, attempts, backoff_secs, "applying offer failed");
                    }
                });
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                         available_at = now() + make_interval(secs => $3),
                         parked_at = CASE WHEN $4 THEN now() END
                     WHERE event_id = $1 AND processed_at IS NULL",
                )
                .bind(event_id)
                .bind(e.to_string())
                .bind(backoff_secs as f64)
                .bind(park)
                .execute(&self.pool)
                .await?;
                metrics::counter!("ecs_outbox_failures_total").increment(1);
                if park {
                    metrics::counter!("ecs_outbox_parked_total").increment(1);
                }
                Ok(ExecutionOutcome::TaskFailed)
            }
        }
    }
}

/// Applies one accepted offer inside the owner's person transaction. Returns false when it was
/// already applied.
async fn apply(tx: &mut PersonTx, offer_id: Uuid) -> Result<bool> {
    let offer = find_in(tx.conn(), offer_id, true)
        .await?
        .filter(|o| o.user_id == tx.user_id())
        .ok_or(Error::NotFound("offer"))?;
    match offer.status {
        OfferStatus::Applied => return Ok(false),
        // Accepted, then overtaken by a later acceptance already in force (see below).
        OfferStatus::Superseded if offer.accepted_at.is_some() => return Ok(false),
        OfferStatus::Accepted => {}
        other => {
            return Err(Error::Internal(format!(
                "offer is {}; only accepted offers can be applied",
                other.as_str()
            )));
        }
    }
    // The line in force, and when the offer behind it was accepted.
    let current: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT l.credit_limit_cents, o.accepted_at
         FROM credit_limits l JOIN credit_offers o ON o.offer_id = l.offer_id
         WHERE l.user_id = $1",
    )
    .bind(offer.user_id)
    .fetch_optional(tx.conn())
    .await?;
    let previous = current.map(|(limit, _)| limit);
    // The person's latest acceptance is their decision: an older one whose event failed and
    // was retried after a newer one applied must not put the older terms back.
    if let Some((_, Some(current_accepted))) = current
        && offer
            .accepted_at
            .is_some_and(|accepted| accepted < current_accepted)
    {
        sqlx::query("UPDATE credit_offers SET status = 'superseded' WHERE offer_id = $1")
            .bind(offer.offer_id)
            .execute(tx.conn())
            .await?;
        info!(user_id = %offer.user_id, "accepted offer overtaken by a later acceptance; not applied");
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO credit_limits (user_id, credit_limit_cents, interest_rate_bps, credit_type, offer_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (user_id) DO UPDATE SET
             credit_limit_cents = EXCLUDED.credit_limit_cents,
             interest_rate_bps = EXCLUDED.interest_rate_bps,
             credit_type = EXCLUDED.credit_type,
             offer_id = EXCLUDED.offer_id,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(offer.user_id)
    .bind(offer.credit_limit_cents)
    .bind(offer.interest_rate_bps)
    .bind(offer.credit_type)
    .bind(offer.offer_id)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "INSERT INTO credit_limit_history (user_id, offer_id, previous_limit_cents, new_limit_cents, interest_rate_bps)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (offer_id) DO NOTHING",
    )
    .bind(offer.user_id)
    .bind(offer.offer_id)
    .bind(previous)
    .bind(offer.credit_limit_cents)
    .bind(offer.interest_rate_bps)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "UPDATE credit_offers SET status = 'applied', applied_at = now() WHERE offer_id = $1",
    )
    .bind(offer.offer_id)
    .execute(tx.conn())
    .await?;
    let credit_type = offer.credit_type;
    notify::create_for_user(
        tx.conn(),
        offer.user_id,
        offer.offer_id,
        &NotificationKind::OfferApplied {
            offer_id: offer.offer_id,
            credit_limit_cents: offer.credit_limit_cents,
            interest_rate_bps: offer.interest_rate_bps,
            credit_type,
        },
    )
    .await?;
    info!(user_id = %offer.user_id, limit_cents = offer.credit_limit_cents, "credit limit applied");
    Ok(true)
}

/// Wakes the worker on NOTIFY. Best effort: when the listener is down, polling still drives the
/// worker, so this only retries with a pause.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN; relying on polling");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(OUTBOX_CHANNEL).await {
            warn!(error = %e, "cannot LISTEN; relying on polling");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "LISTEN connection lost");
                        // Whatever was notified meanwhile is found by the next poll.
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}
