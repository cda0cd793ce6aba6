//! A credit request while the model service is down, through the real API, the real HTTP model
//! client and the real model server: once the circuit breaker is open, the API answers 503 at
//! once instead of waiting on the model, and the model server sees nothing.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use ecs_cloud::model::{
    Breaker, BreakerSettings, BreakerState, HttpModel, HttpSettings, RiskModel, Scorecard,
    server::{self, Faults},
};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

mod common;

use common::ADMIN;

fn app(pool: &PgPool, model: Arc<dyn RiskModel>) -> Router {
    common::app(pool, model, true)
}

async fn post(app: &Router, path: &str, body: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn with_the_breaker_open_a_credit_request_is_a_fast_503(pool: PgPool) {
    let model_server = server::start(
        Arc::new(Scorecard::built_in().unwrap()),
        "127.0.0.1:0".parse().unwrap(),
        Faults::new(1.0, Duration::ZERO),
    )
    .await
    .unwrap();
    let breaker = Arc::new(Breaker::new(
        HttpModel::new(HttpSettings {
            base_url: model_server.base_url().parse().unwrap(),
            timeout: Duration::from_millis(500),
            retries: 0,
            deadline: Duration::from_millis(500),
        })
        .unwrap(),
        BreakerSettings {
            failure_threshold: 2,
            open_for: Duration::from_secs(60),
        },
    ));
    let app = app(&pool, breaker.clone());
    let (status, _, body) = post(
        &app,
        "/v1/users",
        r#"{"display_name":"Ana","emotional_data_consent":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let offers = format!(
        "/v1/users/{}/credit-offers",
        body["user_id"].as_str().unwrap()
    );

    // The model service fails: each request is a 503, and the second opens the breaker.
    for _ in 0..2 {
        let (status, headers, _) = post(&app, &offers, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.get(header::RETRY_AFTER).is_some());
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(model_server.requests_seen(), 2);

    // Now the service is also slow; the API does not wait for it.
    model_server.faults().set_latency(Duration::from_secs(5));
    let started = Instant::now();
    let (status, headers, body) = post(&app, &offers, "").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get(header::RETRY_AFTER).is_some());
    assert_eq!(body["type"], "/problems/unavailable");
    assert!(
        !body["detail"].as_str().unwrap().contains("circuit"),
        "internals stay in the log"
    );
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}; the model would take 5 s"
    );
    assert_eq!(model_server.requests_seen(), 2, "the breaker sent nothing");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_offers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    model_server.stop().await;
}
