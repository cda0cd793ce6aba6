//! Proactive offers: the cloud offers credit by itself when a person's stream shows them calm
//! and stable for a while, with regular income and nothing open, and tells their phone.
//!
//! # The rule and its guards
//!
//! A person is a candidate when ([`ProactiveRule`]): they consent to the use of emotional data
//! (without consent their stream is not looked at); their features cover at least
//! `min_observed` and `min_readings`, and their newest reading is recent (they are streaming
//! now, not a stale row); few of their readings are under high stress, their mood does not swing
//! and financial worry is quiet; money came in during at least the policy's minimum months; they
//! have no open offer (offered and unexpired, or accepted and not yet applied); and the trigger has
//! not fired for them within `period`. The rule's thresholds are stricter than the policy's
//! distress guard, and the policy's guard is asked again: an assessment that comes back with
//! [`ReasonCode::VulnerabilityCap`] makes no offer (outcome `guarded`). An offer timed to a
//! moment of distress or excitement would exploit the person; this trigger fires only on calm.
//!
//! # Off the ingest path
//!
//! A task of its own scans, every `scan_interval`, the features of the people whose stream moved
//! recently (an index on `emotion_features.last_reading_at` keeps the scan to them). Ingest never
//! waits for it; a slow model slows only this scan; at most `batch` people are considered a scan.
//!
//! # Idempotent
//!
//! Every firing is recorded in `proactive_checks` with what came of it (offered, declined,
//! guarded), in the person's transaction ([`PersonTx`]), after checking again under the person's
//! lock that nothing was recorded within the period and no offer is open. A second firing (the
//! next scan, another replica) waits for the lock and then finds the first: at most one proactive
//! assessment per person per period, whatever the timing. Declined firings are recorded too, so a
//! person the policy declines is not re-assessed at every scan.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use ecs_protocol::NotificationKind;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use crate::{
    Error,
    error::Result,
    notify,
    offers::{Assessor, OfferRequest, Prepared},
    people::{self, PersonTx},
    policy::ReasonCode,
};

/// When the cloud makes an offer by itself. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProactiveRule {
    /// At most one proactive assessment per person within this period.
    pub period: Duration,
    /// The person's features must cover at least this long (first to newest reading).
    pub min_observed: Duration,
    pub min_readings: i64,
    /// The newest reading must be at most this old.
    pub recent: Duration,
    /// Highest share of readings under high stress (the policy's guard is at 0.5).
    pub max_stress_share: f64,
    /// Highest financial-worry intensity (the policy's guard is at 0.4).
    pub max_financial_worry: f64,
    /// Highest standard deviation of valence (−100..=100): a mood that swings is not "stable".
    pub max_valence_sd: f64,
    /// Fewest months with income in the financial window.
    pub min_months_with_inflow: i64,
}

impl Default for ProactiveRule {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(7 * 24 * 3600),
            min_observed: Duration::from_secs(30 * 60),
            min_readings: 300,
            recent: Duration::from_secs(15 * 60),
            max_stress_share: 0.2,
            max_financial_worry: 0.2,
            max_valence_sd: 25.0,
            min_months_with_inflow: 2,
        }
    }
}

/// What made the cloud assess a person by itself: the features as they were when the rule
/// fired. Stored with the check and the offer; shown to the person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProactiveSignal {
    /// The rule that fired; `calm_and_stable` is the only one.
    pub rule: String,
    /// Share of readings under high stress, 0..=1.
    pub stress_share: f64,
    /// Mean stress, 0..=100.
    pub mean_stress: f64,
    /// Standard deviation of valence, in valence units.
    pub valence_sd: f64,
    /// Financial-worry intensity, 0..=1.
    pub financial_worry: f64,
    pub readings_count: i64,
    /// Since when the stream has been observed.
    pub observed_since: DateTime<Utc>,
    pub months_with_inflow: i64,
}

/// The only rule there is, by name.
pub const CALM_AND_STABLE: &str = "calm_and_stable";

/// What came of one firing of the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// An offer was made and the person's phones notified.
    Offered(Uuid),
    /// The policy declined.
    Declined,
    /// The policy saw signs of distress: nothing offered.
    Guarded,
}

impl CheckOutcome {
    fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Offered(_) => "offered",
            CheckOutcome::Declined => "declined",
            CheckOutcome::Guarded => "guarded",
        }
    }
}

/// One person the scan found matching the rule.
#[derive(Debug, FromRow)]
struct Candidate {
    user_id: Uuid,
    stress_share: f64,
    mean_stress: f64,
    valence_variance: f64,
    financial_worry: f64,
    readings_count: i64,
    first_reading_at: DateTime<Utc>,
    months_with_inflow: i64,
}

impl Candidate {
    fn signal(&self) -> ProactiveSignal {
        ProactiveSignal {
            rule: CALM_AND_STABLE.to_owned(),
            stress_share: self.stress_share,
            mean_stress: self.mean_stress,
            valence_sd: self.valence_variance.max(0.0).sqrt(),
            financial_worry: self.financial_worry,
            readings_count: self.readings_count,
            observed_since: self.first_reading_at,
            months_with_inflow: self.months_with_inflow,
        }
    }
}

/// How long a candidate whose consideration failed (not for the model being down) is left out
/// of the scans, so a few people who keep failing cannot fill every scan's batch.
const DEFER_AFTER_FAILURE: Duration = Duration::from_secs(600);

/// The task that makes proactive offers.
pub struct ProactiveOffers {
    pub assessor: Arc<Assessor>,
    pub rule: ProactiveRule,
    /// Woken after a commit that created notifications.
    pub notifier: Arc<Notify>,
    pub scan_interval: Duration,
    /// Most people considered per scan.
    pub batch: i64,
    /// People left out of the scans until a time: their assessments for the hour used up, or
    /// their consideration failed. Only this replica's memory: a restart forgets, which costs
    /// one more try each.
    pub deferred: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
}

impl ProactiveOffers {
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            period_hours = self.rule.period.as_secs() / 3600,
            scan_secs = self.scan_interval.as_secs(),
            "proactive offers started"
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.scan_interval) => {}
            }
            // A scan interrupted by shutdown leaves nothing half done: each person is one
            // transaction, and an assessment prepared but not recorded is simply not there.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                scanned = self.scan_once() => if let Err(e) = scanned {
                    warn!(error = %e, "proactive scan failed; trying again at the next one");
                }
            }
        }
        info!("proactive offers stopped");
    }

    /// One scan: finds the candidates and considers each. Returns what came of each firing.
    pub async fn scan_once(&self) -> Result<Vec<(Uuid, CheckOutcome)>> {
        let candidates = self.candidates(&self.still_deferred()).await?;
        let mut fired = Vec::new();
        for candidate in candidates {
            let user_id = candidate.user_id;
            let span = info_span!("proactive_offer", %user_id);
            match self.consider(candidate).instrument(span.clone()).await {
                Ok(Some(outcome)) => {
                    metrics::counter!("ecs_proactive_checks_total", "outcome" => outcome.as_str())
                        .increment(1);
                    fired.push((user_id, outcome));
                }
                Ok(None) => {}
                // The model being down fails every candidate alike: stop, try at the next scan.
                Err(e @ Error::Unavailable(_)) => return Err(e),
                Err(Error::RateLimited { retry_after, .. }) => self.defer(user_id, retry_after),
                Err(e) => {
                    span.in_scope(|| warn!(error = %e, "proactive offer not made"));
                    self.defer(user_id, DEFER_AFTER_FAILURE);
                }
            }
        }
        Ok(fired)
    }

    fn defer(&self, user_id: Uuid, for_how_long: Duration) {
        if let Ok(mut deferred) = self.deferred.lock() {
            deferred.insert(user_id, std::time::Instant::now() + for_how_long);
        }
    }

    /// The people still deferred, forgetting those whose time has come.
    fn still_deferred(&self) -> Vec<Uuid> {
        let now = std::time::Instant::now();
        match self.deferred.lock() {
            Ok(mut deferred) => {
                deferred.retain(|_, until| *until > now);
                deferred.keys().copied().collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// The people matching the rule now, longest-observed first, but for `deferred`.
    async fn candidates(&self, deferred: &[Uuid]) -> Result<Vec<Candidate>> {
        let rule = &self.rule;
        let secs = |d: Duration| d.as_secs_f64();
        Ok(sqlx::query_as(
            "SELECT f.user_id, f.stress_share, f.mean_stress, f.valence_variance,
                    f.financial_worry, f.readings_count, f.first_reading_at, inflow.months
                        AS months_with_inflow
             FROM emotion_features f
             JOIN users u ON u.user_id = f.user_id
             CROSS JOIN LATERAL (
                 SELECT count(DISTINCT date_trunc('month', t.occurred_at)) AS months
                 FROM transactions t
                 WHERE t.user_id = f.user_id AND t.direction = 'inflow'
                   AND t.occurred_at > now() - make_interval(days => $10)
                   AND t.occurred_at <= now()) inflow
             WHERE f.last_reading_at > now() - make_interval(secs => $1)
               AND u.emotional_data_consent
               AND f.last_reading_at - f.first_reading_at >= make_interval(secs => $2)
               AND f.readings_count >= $3
               AND f.stress_share <= $4
               AND f.financial_worry <= $5
               AND f.valence_variance <= $6 * $6
               AND inflow.months >= $7
               AND f.user_id <> ALL($11)
               AND NOT EXISTS (
                   SELECT 1 FROM proactive_checks c
                   WHERE c.user_id = f.user_id AND c.created_at > now() - make_interval(secs => $8))
               AND NOT EXISTS (
                   SELECT 1 FROM credit_offers o
                   WHERE o.user_id = f.user_id
                     AND (o.status = 'accepted'
                          OR (o.status = 'offered' AND o.expires_at > now())))
             ORDER BY f.first_reading_at
             LIMIT $9",
        )
        .bind(secs(rule.recent))
        .bind(secs(rule.min_observed))
        .bind(rule.min_readings)
        .bind(rule.max_stress_share)
        .bind(rule.max_financial_worry)
        .bind(rule.max_valence_sd)
        .bind(rule.min_months_with_inflow)
        .bind(secs(rule.period))
        .bind(self.batch)
        .bind(crate::finance::WINDOW_DAYS)
        .bind(deferred)
        .fetch_all(&self.assessor.pool)
        .await?)
    }

    /// Assesses one candidate (outside any lock: the model may be slow) and records what came
    /// of it under the person's lock. `None`: nothing fired (the person changed meanwhile).
    async fn consider(&self, candidate: Candidate) -> Result<Option<CheckOutcome>> {
        let user_id = candidate.user_id;
        let signal = candidate.signal();
        let prepared = match self
            .assessor
            .prepare(user_id, OfferRequest::default())
            .await
        {
            Ok(prepared) => prepared.triggered_by(signal.clone()),
            // Erased: nothing to do. (Their allowance used up: `scan_once` defers them.)
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Withdrawn between the scan and the read: their stream may not be used.
        if !prepared.consented() {
            return Ok(None);
        }
        let prepared = &prepared;
        let signal = &signal;
        let outcome = people::retry(|| async move {
            let mut tx = match PersonTx::lock(&self.assessor.pool, user_id).await {
                Ok(tx) => tx,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if !still_eligible(&mut tx, &self.rule).await? {
                tx.discard();
                return Ok(None);
            }
            let outcome = record(&self.assessor, &mut tx, prepared, signal).await?;
            tx.finish().await?;
            Ok(outcome)
        })
        .await?;
        match outcome {
            Some(CheckOutcome::Offered(offer_id)) => {
                self.notifier.notify_one();
                info!(%offer_id, "proactive offer made");
            }
            Some(other) => info!(outcome = other.as_str(), "proactive check recorded"),
            None => {}
        }
        Ok(outcome)
    }
}

/// Under the person's lock: consent still given, no firing within the period, no open offer.
async fn still_eligible(tx: &mut PersonTx, rule: &ProactiveRule) -> Result<bool> {
    if !tx.consents_to_emotional_data() {
        return Ok(false);
    }
    let user_id = tx.user_id();
    let blocked: bool = sqlx::query_scalar(
        "SELECT EXISTS (
                 SELECT 1 FROM proactive_checks
                 WHERE user_id = $1 AND created_at > now() - make_interval(secs => $2))
             OR EXISTS (
                 SELECT 1 FROM credit_offers
                 WHERE user_id = $1
                   AND (status = 'accepted' OR (status = 'offered' AND expires_at > now())))",
    )
    .bind(user_id)
    .bind(rule.period.as_secs_f64())
    .fetch_one(tx.conn())
    .await?;
    Ok(!blocked)
}

/// Records the firing, and the offer and its notifications when the policy approved without
/// seeing distress.
async fn record(
    assessor: &Assessor,
    tx: &mut PersonTx,
    prepared: &Prepared,
    signal: &ProactiveSignal,
) -> Result<Option<CheckOutcome>> {
    let decision = prepared.decision();
    let outcome = if decision.reasons.contains(&ReasonCode::VulnerabilityCap) {
        CheckOutcome::Guarded
    } else if !decision.approved {
        CheckOutcome::Declined
    } else {
        // Consent changed or the allowance ran out under the lock: an error, so the scan defers
        // the person instead of assessing them again at the next one.
        let offer = assessor.record(tx, prepared).await?;
        let expires_at_ms = offer.expires_at.timestamp_millis();
        notify::create_for_user(
            tx.conn(),
            offer.user_id,
            offer.offer_id,
            &NotificationKind::OfferMade {
                offer_id: offer.offer_id,
                credit_limit_cents: offer.credit_limit_cents,
                interest_rate_bps: offer.interest_rate_bps,
                credit_type: offer.credit_type,
                expires_at_ms,
            },
        )
        .await?;
        CheckOutcome::Offered(offer.offer_id)
    };
    let reasons: Vec<&str> = decision.reasons.iter().map(|r| r.as_str()).collect();
    let offer_id = match outcome {
        CheckOutcome::Offered(id) => Some(id),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO proactive_checks (check_id, user_id, signal, outcome, offer_id,
             probability_of_default, reason_codes)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::new_v4())
    .bind(tx.user_id())
    .bind(sqlx::types::Json(signal))
    .bind(outcome.as_str())
    .bind(offer_id)
    .bind(prepared.score().probability_of_default)
    .bind(&reasons)
    .execute(tx.conn())
    .await?;
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use ecs_protocol::{DeviceId, ReadingBatch, topic};
    use sqlx::PgPool;

    use super::*;
    use crate::{
        ingest::{Ingest, fixtures},
        model::{FeatureVector, RiskModel, RiskScore, ScoreFuture, scorecard::Scorecard},
        offers::{AssessmentLimit, OfferOrigin, OfferStatus},
        policy::CreditPolicy,
    };

    /// A model that always answers `pd`.
    struct Fixed(f64);

    impl RiskModel for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn score<'a>(&'a self, _: &'a FeatureVector) -> ScoreFuture<'a> {
            let pd = self.0;
            Box::pin(async move {
                Ok(RiskScore {
                    probability_of_default: pd,
                    model_name: "fixed".into(),
                    model_version: "1".into(),
                    contributions: vec![],
                })
            })
        }
    }

    fn trigger(pool: &PgPool, model: Arc<dyn RiskModel>, rule: ProactiveRule) -> ProactiveOffers {
        ProactiveOffers {
            assessor: Arc::new(Assessor {
                pool: pool.clone(),
                model,
                policy: CreditPolicy::default(),
                offer_ttl: Duration::from_secs(3600),
                limit: AssessmentLimit::default(),
            }),
            rule,
            notifier: Arc::new(Notify::new()),
            scan_interval: Duration::from_millis(50),
            batch: 100,
            deferred: Default::default(),
        }
    }

    fn scorecard() -> Arc<dyn RiskModel> {
        Arc::new(Scorecard::built_in().unwrap())
    }

    /// A person with a phone and three months of salary.
    async fn salaried(pool: &PgPool, consent: bool) -> (Uuid, DeviceId) {
        let (user_id, device) = fixtures::user_with_device(pool).await;
        sqlx::query("UPDATE users SET emotional_data_consent = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(consent)
            .execute(pool)
            .await
            .unwrap();
        for month in 0..3 {
            sqlx::query(
                "INSERT INTO transactions (transaction_id, user_id, external_ref, direction,
                     amount_cents, category, occurred_at)
                 VALUES (gen_random_uuid(), $1, $2, 'inflow', 800000, 'salary',
                     now() - make_interval(months => $3) - interval '1 hour')",
            )
            .bind(user_id)
            .bind(format!("salary-{month}"))
            // A calendar month apart, so three salaries are always in three months (30 days
            // apart, two of them fell in one 31-day month on some dates: a test that failed on
            // 2 December).
            .bind(month)
            .execute(pool)
            .await
            .unwrap();
        }
        (user_id, device)
    }

    /// Streams `minutes` of readings (ten a minute) at `stress`, the first one
    /// `starts_minutes_ago`, through ingest as a phone would.
    async fn stream(
        pool: &PgPool,
        device: &DeviceId,
        first_seq: u64,
        starts_minutes_ago: i64,
        minutes: i64,
        stress: u8,
    ) {
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let start = Utc::now() - TimeDelta::minutes(starts_minutes_ago);
        for m in 0..minutes {
            let batch = ReadingBatch {
                device_id: device.clone(),
                first_seq: first_seq + 10 * m as u64,
                base_time_ms: (start + TimeDelta::minutes(m)).timestamp_millis(),
                readings: (0..10)
                    .map(|i| fixtures::reading(i * 100, 30, stress))
                    .collect(),
            };
            ingest
                .handle(&topic::uplink(device), &fixtures::encode(batch))
                .await
                .unwrap();
        }
    }

    async fn checks(pool: &PgPool, user_id: Uuid) -> Vec<String> {
        sqlx::query_scalar("SELECT outcome FROM proactive_checks WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_stream_that_turns_calm_for_long_enough_gets_one_offer_and_its_phone_is_told(
        pool: PgPool,
    ) {
        let (user_id, device) = salaried(&pool, true).await;
        let proactive = trigger(&pool, scorecard(), ProactiveRule::default());

        // Calm, but observed for 10 minutes only: not yet "for a while".
        stream(&pool, &device, 0, 45, 10, 10).await;
        assert!(proactive.scan_once().await.unwrap().is_empty());
        assert!(checks(&pool, user_id).await.is_empty());

        // Calm for 45 minutes: the threshold is crossed.
        stream(&pool, &device, 100, 35, 35, 10).await;
        let fired = proactive.scan_once().await.unwrap();
        let [(who, CheckOutcome::Offered(offer_id))] = fired[..] else {
            panic!("expected one offer, got {fired:?}");
        };
        assert_eq!(who, user_id);
        let offer = crate::offers::find(&pool, offer_id).await.unwrap();
        assert_eq!(offer.origin, OfferOrigin::Proactive);
        assert_eq!(offer.status, OfferStatus::Offered);
        let signal = offer.proactive_signal.expect("the signal is kept").0;
        assert_eq!(signal.rule, CALM_AND_STABLE);
        assert_eq!(signal.readings_count, 450);
        assert!(signal.stress_share < 0.01, "{signal:?}");
        assert_eq!(signal.months_with_inflow, 3);
        let told: Vec<(String, String)> =
            sqlx::query_as("SELECT device_id, kind FROM notifications WHERE offer_id = $1")
                .bind(offer_id)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            told,
            vec![(device.as_str().to_owned(), "offer_made".to_owned())]
        );

        // Still calm: no second offer, neither while the first is open nor after it is gone,
        // within the period.
        stream(&pool, &device, 1_000, 5, 5, 10).await;
        assert!(proactive.scan_once().await.unwrap().is_empty());
        sqlx::query(
            "UPDATE credit_offers SET created_at = now() - interval '2 hours',
                 expires_at = now() - interval '1 hour'
             WHERE offer_id = $1",
        )
        .bind(offer_id)
        .execute(&pool)
        .await
        .unwrap();
        assert!(proactive.scan_once().await.unwrap().is_empty());
        assert_eq!(checks(&pool, user_id).await, vec!["offered"]);

        // Once the period has passed, the trigger may fire again.
        sqlx::query("UPDATE proactive_checks SET created_at = now() - interval '8 days'")
            .execute(&pool)
            .await
            .unwrap();
        let fired = proactive.scan_once().await.unwrap();
        assert!(
            matches!(fired[..], [(_, CheckOutcome::Offered(_))]),
            "{fired:?}"
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_distressed_stream_gets_no_offer_even_when_the_rule_is_loosened(pool: PgPool) {
        let (user_id, device) = salaried(&pool, true).await;
        stream(&pool, &device, 0, 45, 45, 90).await;
        let strict = trigger(&pool, scorecard(), ProactiveRule::default());
        assert!(strict.scan_once().await.unwrap().is_empty());
        assert!(checks(&pool, user_id).await.is_empty());

        // A rule that would let distress through still meets the policy's guard.
        let loose = trigger(
            &pool,
            scorecard(),
            ProactiveRule {
                max_stress_share: 1.0,
                ..Default::default()
            },
        );
        let fired = loose.scan_once().await.unwrap();
        assert_eq!(fired, vec![(user_id, CheckOutcome::Guarded)]);
        let offers: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_offers")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(offers, 0, "nothing is offered to a person in distress");
        // Recorded once: the next scan in the period does not assess them again.
        assert!(loose.scan_once().await.unwrap().is_empty());
        assert_eq!(checks(&pool, user_id).await, vec!["guarded"]);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn without_consent_the_stream_is_not_looked_at(pool: PgPool) {
        let (user_id, device) = salaried(&pool, false).await;
        stream(&pool, &device, 0, 45, 45, 10).await;
        let proactive = trigger(&pool, scorecard(), ProactiveRule::default());
        assert!(proactive.scan_once().await.unwrap().is_empty());
        assert!(checks(&pool, user_id).await.is_empty());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_declined_person_is_recorded_once_and_not_reassessed(pool: PgPool) {
        let (user_id, device) = salaried(&pool, true).await;
        stream(&pool, &device, 0, 45, 45, 10).await;
        let proactive = trigger(&pool, Arc::new(Fixed(0.9)), ProactiveRule::default());
        assert_eq!(
            proactive.scan_once().await.unwrap(),
            vec![(user_id, CheckOutcome::Declined)]
        );
        assert!(proactive.scan_once().await.unwrap().is_empty());
        assert_eq!(checks(&pool, user_id).await, vec!["declined"]);
        let offers: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_offers")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            offers, 0,
            "a declined proactive check shows the person nothing"
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_person_who_cannot_be_assessed_now_does_not_hold_up_the_others(pool: PgPool) {
        // Observed longest, so first in every scan of one.
        let (stuck, stuck_device) = salaried(&pool, true).await;
        stream(&pool, &stuck_device, 0, 50, 50, 10).await;
        let (other, other_device) = salaried(&pool, true).await;
        stream(&pool, &other_device, 0, 45, 45, 10).await;
        // The first person used this hour's one assessment.
        sqlx::query(
            "INSERT INTO risk_assessments (assessment_id, user_id, model_name, model_version,
                 probability_of_default, features, contributions)
             VALUES (gen_random_uuid(), $1, 'test', '1', 0.05, '{}', '[]')",
        )
        .bind(stuck)
        .execute(&pool)
        .await
        .unwrap();
        let mut proactive = trigger(&pool, scorecard(), ProactiveRule::default());
        proactive.batch = 1;
        let assessor = Arc::get_mut(&mut proactive.assessor).unwrap();
        assessor.limit = AssessmentLimit {
            max: 1,
            period: Duration::from_secs(3600),
        };

        assert!(proactive.scan_once().await.unwrap().is_empty());
        let fired = proactive.scan_once().await.unwrap();
        assert!(
            matches!(fired[..], [(who, CheckOutcome::Offered(_))] if who == other),
            "{fired:?}"
        );
        assert!(checks(&pool, stuck).await.is_empty());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn two_replicas_scanning_at_once_make_one_offer(pool: PgPool) {
        let (user_id, device) = salaried(&pool, true).await;
        stream(&pool, &device, 0, 45, 45, 10).await;
        let a = trigger(&pool, scorecard(), ProactiveRule::default());
        let b = trigger(&pool, scorecard(), ProactiveRule::default());
        for _ in 0..5 {
            let (x, y) = tokio::join!(a.scan_once(), b.scan_once());
            let _ = (x.unwrap(), y.unwrap());
        }
        assert_eq!(checks(&pool, user_id).await, vec!["offered"]);
        let offers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM credit_offers WHERE origin = 'proactive'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(offers, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_task_stops_on_shutdown_in_the_middle_of_its_work(pool: PgPool) {
        let (_, device) = salaried(&pool, true).await;
        stream(&pool, &device, 0, 45, 45, 10).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            trigger(&pool, scorecard(), ProactiveRule::default()).run(shutdown.clone()),
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .unwrap();
        // Whatever the scan got to is whole: an offer has its check, or neither exists.
        let (offers, checks): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM credit_offers), (SELECT count(*) FROM proactive_checks)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(offers, checks);
    }
}
