//! A seeded population for the analytics, query and dashboard tests: people created through the
//! API with their salaries, phones and offers, and the phone's side of the story (readings,
//! connection times, notification receipts) written where ingest and the notifier would write
//! it.
//!
//! The risk model decides by income alone ([`IncomeModel`]), so each person's probability of
//! default, limit and rate follow from their salary and the tests can say in advance what the
//! figures must be.

// Several test binaries include this module, and each uses a part of it.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{Method, StatusCode},
};
use chrono::{DateTime, Utc};
use ecs_cloud::{
    analytics::MinGroupSize,
    model::{FeatureVector, RiskModel, RiskScore, ScoreFuture},
    offers::{ExecutionOutcome, OfferWorker},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::common::{ADMIN, app_with_min_group};

/// `PD = 0.3 · e^(−monthly inflow / R$ 4,000)`: R$ 1,000 a month is 23 %, R$ 5,000 is 8.6 %,
/// R$ 10,000 is 2.5 %; no income is 30 % (declined).
pub struct IncomeModel;

impl IncomeModel {
    pub fn probability_of_default(monthly_inflow_brl: f64) -> f64 {
        0.3 * (-monthly_inflow_brl / 4_000.0).exp()
    }
}

impl RiskModel for IncomeModel {
    fn name(&self) -> &str {
        "income"
    }
    fn version(&self) -> &str {
        "test"
    }
    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        let inflow = features.get("monthly_inflow_brl").unwrap_or(0.0);
        Box::pin(std::future::ready(Ok(RiskScore {
            probability_of_default: Self::probability_of_default(inflow),
            model_name: "income".into(),
            model_version: "test".into(),
            contributions: Vec::new(),
        })))
    }
}

/// The API as production builds it, deciding with [`IncomeModel`], with group size `k`.
pub fn app(pool: &PgPool, k: u32) -> Router {
    app_with_min_group(
        pool,
        Arc::new(IncomeModel),
        true,
        MinGroupSize::new(k).unwrap(),
    )
}

/// [`app`] with the default group size (10), the one production and the docs use.
pub fn default_app(pool: &PgPool) -> Router {
    crate::common::app(pool, Arc::new(IncomeModel), true)
}

pub use crate::common::client::Reply;

pub async fn call(app: &Router, method: Method, path: &str, token: Option<&str>) -> Reply {
    call_with(app, method, path, token, None).await
}

pub async fn call_with(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let body = body.map(|b| b.to_string());
    crate::common::client::call(app, method, path, token, body.as_deref()).await
}

/// One sensor reading as the phone sent it.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: DateTime<Utc>,
    pub valence: i16,
    pub stress: i16,
    pub arousal: i16,
    /// A "thought" (protocol `Intent::code`) and its confidence.
    pub intent: Option<(i16, i16)>,
}

impl Reading {
    pub fn new(at: DateTime<Utc>, valence: i16, stress: i16, arousal: i16) -> Self {
        Self {
            at,
            valence,
            stress,
            arousal,
            intent: None,
        }
    }

    pub fn thinking(mut self, intent: i16, confidence: i16) -> Self {
        self.intent = Some((intent, confidence));
        self
    }
}

/// How far a person's offer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// No assessment.
    None,
    /// Assessed (approved or declined, as the model and the policy say), not accepted.
    Assessed,
    /// Accepted; the worker has not run.
    Accepted,
    /// Applied by the worker; the phone has not confirmed the notification.
    Applied,
    /// Applied, and the phone confirmed the notification.
    Notified,
}

/// Who a seeded person is.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Paid on the 5th of each of the last three months; 0 for no income.
    pub monthly_salary_cents: i64,
    pub readings: Vec<Reading>,
    /// When their phone's readings reached the cloud (`received_at`); `None`: at the reading's
    /// own time.
    pub received_at: Option<DateTime<Utc>>,
    /// Their phone is connected now (seen by ingest a moment ago, online for ten minutes).
    pub connected: bool,
    pub progress: Progress,
}

impl Profile {
    pub fn earning(monthly_salary_cents: i64) -> Self {
        Self {
            monthly_salary_cents,
            readings: Vec::new(),
            received_at: None,
            connected: false,
            progress: Progress::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Person {
    pub user_id: Uuid,
    pub token: String,
    pub device_id: String,
}

/// Creates a consenting person with a phone, through the API, and writes what their phone and
/// the worker would have written; their offer goes as far as `profile.progress`.
pub async fn person(app: &Router, pool: &PgPool, profile: &Profile) -> Person {
    let r = call_with(
        app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(json!({"display_name": "Seeded", "emotional_data_consent": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let user_id: Uuid = r.body["user_id"].as_str().unwrap().parse().unwrap();
    let token = r.body["api_token"].as_str().unwrap().to_owned();
    let r = call_with(
        app,
        Method::POST,
        &format!("/v1/users/{user_id}/devices"),
        Some(&token),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let device_id = r.body["device_id"].as_str().unwrap().to_owned();
    let person = Person {
        user_id,
        token,
        device_id,
    };
    if profile.monthly_salary_cents > 0 {
        salaries(app, &person, profile.monthly_salary_cents).await;
    }
    readings(pool, &person, &profile.readings, profile.received_at).await;
    if profile.connected {
        sqlx::query(
            "UPDATE devices SET last_seen_at = now(), online_since = now() - interval '10 minutes'
             WHERE device_id = $1",
        )
        .bind(&person.device_id)
        .execute(pool)
        .await
        .unwrap();
    }
    advance(app, pool, &person, profile.progress).await;
    person
}

async fn salaries(app: &Router, person: &Person, monthly_cents: i64) {
    let now = Utc::now();
    let txs: Vec<Value> = (1..=3)
        .map(|m| {
            json!({
                "external_ref": format!("salary-{m}"),
                "direction": "inflow",
                "amount_cents": monthly_cents,
                "category": "salary",
                "occurred_at": now.checked_sub_months(chrono::Months::new(m - 1)).unwrap() - chrono::Duration::hours(1),
            })
        })
        .collect();
    let r = call_with(
        app,
        Method::POST,
        &format!("/v1/users/{}/transactions", person.user_id),
        Some(ADMIN),
        Some(json!({ "transactions": txs })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// What ingest stores for a batch (the other emotions at a neutral 50).
async fn readings(
    pool: &PgPool,
    person: &Person,
    readings: &[Reading],
    received_at: Option<DateTime<Utc>>,
) {
    // Thoughts sealed with the person's data key, as ingest stores them.
    let key = crate::common::keyring()
        .load(pool, person.user_id)
        .await
        .unwrap()
        .expect("a person registered through the API has a data key");
    let device = ecs_protocol::DeviceId::parse(person.device_id.clone()).unwrap();
    for (seq, r) in readings.iter().enumerate() {
        let thoughts: Vec<ecs_protocol::Thought> = r
            .intent
            .into_iter()
            .map(|(code, confidence)| ecs_protocol::Thought {
                intent: ecs_protocol::Intent::from_code(code).unwrap(),
                confidence: u8::try_from(confidence).unwrap(),
            })
            .collect();
        let sealed =
            ecs_cloud::privacy::thoughts::seal(&key, &device, seq as i64, &thoughts).unwrap();
        sqlx::query(
            "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, received_at,
                 joy, trust, fear, surprise, sadness, disgust, anger, anticipation,
                 valence, arousal, dominance, stress, focus, thoughts_sealed)
             VALUES ($1, $2, $3, $4, $5, 50, 50, 50, 50, 50, 50, 50, 50, $6, $7, 50, $8, 50, $9)",
        )
        .bind(&person.device_id)
        .bind(seq as i64)
        .bind(person.user_id)
        .bind(r.at)
        .bind(received_at.unwrap_or(r.at))
        .bind(r.valence)
        .bind(r.arousal)
        .bind(r.stress)
        .bind(&sealed)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn advance(app: &Router, pool: &PgPool, person: &Person, progress: Progress) {
    if progress == Progress::None {
        return;
    }
    let r = call(
        app,
        Method::POST,
        &format!("/v1/users/{}/credit-offers", person.user_id),
        Some(&person.token),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let offer_id = r.body["offer_id"].as_str().unwrap().to_owned();
    if progress == Progress::Assessed || r.body["approved"] != true {
        return;
    }
    let r = call(
        app,
        Method::POST,
        &format!("/v1/credit-offers/{offer_id}/accept"),
        Some(&person.token),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    if progress == Progress::Accepted {
        return;
    }
    run_worker(pool).await;
    if progress == Progress::Notified {
        // The phone's receipt, as the notifier records it.
        sqlx::query("UPDATE notifications SET delivered_at = now() WHERE offer_id = $1::uuid")
            .bind(&offer_id)
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Applies every accepted offer waiting in the outbox.
pub async fn run_worker(pool: &PgPool) {
    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: Arc::new(Notify::new()),
        poll_interval: Duration::from_secs(1),
    };
    while worker.process_next().await.unwrap() == ExecutionOutcome::TaskCompleted {}
}
