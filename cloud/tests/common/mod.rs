//! What the API tests share: the app under test, built as production builds it, with the model
//! and the broker's readiness chosen by the test.

use std::{sync::Arc, time::Duration};

use axum::Router;
use ecs_cloud::{
    analytics::{Analytics, MinGroupSize},
    api::{self, AppState},
    app::metrics_handle,
    auth::Authenticator,
    model::RiskModel,
    offers::{AssessmentLimit, Assessor, Recorder},
    policy::CreditPolicy,
};
use sqlx::PgPool;

pub mod client;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub fn app(pool: &PgPool, model: Arc<dyn RiskModel>, broker_up: bool) -> Router {
    app_with_min_group(pool, model, broker_up, MinGroupSize::DEFAULT)
}

/// [`app`] with the assessments allowed per person per hour chosen by the test.
#[allow(dead_code)] // Not every test crate uses it.
pub fn app_with_assessment_limit(pool: &PgPool, model: Arc<dyn RiskModel>, max: u32) -> Router {
    build(pool, model, true, MinGroupSize::DEFAULT, max)
}

/// [`app`] with the analytics views' group size `k` chosen by the test.
pub fn app_with_min_group(
    pool: &PgPool,
    model: Arc<dyn RiskModel>,
    broker_up: bool,
    min_group: MinGroupSize,
) -> Router {
    build(pool, model, broker_up, min_group, 1_000)
}

fn build(
    pool: &PgPool,
    model: Arc<dyn RiskModel>,
    broker_up: bool,
    min_group: MinGroupSize,
    assessments_per_hour: u32,
) -> Router {
    let assessor = Arc::new(Assessor {
        pool: pool.clone(),
        model,
        policy: CreditPolicy::default(),
        offer_ttl: Duration::from_secs(3600),
        limit: AssessmentLimit {
            max: assessments_per_hour,
            period: Duration::from_secs(3600),
        },
    });
    // As production runs it: the task ends when the router (holding the recorder) is dropped.
    let (offers, offers_task) = Recorder::new(assessor.clone());
    tokio::spawn(offers_task);
    api::router(AppState {
        pool: pool.clone(),
        auth: Arc::new(Authenticator::new(ADMIN, pool.clone()).unwrap()),
        assessor,
        offers,
        broker_connected: Arc::new(move || broker_up),
        ingest_flowing: Arc::new(|| true),
        metrics: metrics_handle(),
        analytics: Analytics::new(pool.clone(), min_group),
        idempotency: ecs_cloud::idempotency::ServerKey::derive_from(ADMIN),
        keyring: Arc::new(keyring()),
    })
}

/// The master key the tests' apps use: one for the whole test binary, so apps built on the
/// same database (a test building two) open each other's data.
pub fn keyring() -> ecs_cloud::keys::Keyring {
    ecs_cloud::keys::Keyring::new(
        ecs_cloud::keys::MasterKey::parse(
            "7e57000000000000000000000000000000000000000000000000000000000001",
        )
        .unwrap(),
        vec![],
    )
}
