//! The remote risk model as the cloud sees it: the HTTP client against the real model server
//! (in-process, on an ephemeral port), with the circuit breaker in front. Fault injection on the
//! server makes the outages; the server's request count shows what the breaker let through.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use ecs_cloud::{
    finance::FinancialFeatures,
    model::{
        Breaker, BreakerSettings, BreakerState, FeatureVector, HttpModel, HttpSettings, ModelError,
        RiskModel, Scorecard,
        server::{self, Faults, RunningModelServer},
    },
    offers::feature_vector,
};

/// The scorecard served on a free loopback port, with the given faults.
async fn model_server(faults: Faults) -> RunningModelServer {
    let model = Arc::new(Scorecard::built_in().unwrap());
    server::start(model, "127.0.0.1:0".parse().unwrap(), faults)
        .await
        .unwrap()
}

fn client(base_url: &str, timeout_ms: u64, retries: u32, deadline_ms: u64) -> HttpModel {
    HttpModel::new(HttpSettings {
        base_url: base_url.parse().unwrap(),
        timeout: Duration::from_millis(timeout_ms),
        retries,
        deadline: Duration::from_millis(deadline_ms),
    })
    .unwrap()
}

fn applicant() -> FeatureVector {
    feature_vector(
        &FinancialFeatures {
            inflow_cents: 1_500_000,
            outflow_cents: 1_100_000,
            transaction_count: 40,
            months_with_inflow: 3,
            discretionary_outflow_cents: 200_000,
        },
        None,
    )
}

fn is_unavailable(result: &Result<impl std::fmt::Debug, ModelError>, says: &str) -> bool {
    matches!(result, Err(ModelError::Unavailable(reason)) if reason.contains(says))
}

#[tokio::test]
async fn the_remote_model_answers_what_the_scorecard_answers() {
    let server = model_server(Faults::default()).await;
    let remote = client(&server.base_url(), 2_000, 0, 2_000);
    let local = Scorecard::built_in().unwrap();
    let features = applicant();
    let over_http = remote.score(&features).await.unwrap();
    let in_process = local.score(&features).await.unwrap();
    assert_eq!(over_http, in_process);
    assert_eq!(over_http.model_name, "scorecard");
    assert_eq!(server.requests_seen(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_4xx_with_our_error_body() {
    let server = model_server(Faults::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/score", server.base_url());
    let mut wrong_schema = applicant();
    wrong_schema.schema = "ecs-features/0".into();
    let mut missing = applicant();
    missing.values.pop();
    let cases = [
        ("{not json".to_owned(), 400, ""),
        (r#"{"schema":"ecs-features/1"}"#.to_owned(), 422, "values"),
        (
            serde_json::to_string(&wrong_schema).unwrap(),
            422,
            "ecs-features/0",
        ),
        (
            serde_json::to_string(&missing).unwrap(),
            422,
            "saving_intent",
        ),
    ];
    for (body, status, says) in cases {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(error["type"].is_string(), "{body}: {error}");
        let message = error["detail"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{body}: {message} should say {says}"
        );
    }
    let health: serde_json::Value = http
        .get(format!("{}/healthz", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["model_name"], "scorecard");
    server.stop().await;
}

#[tokio::test]
async fn an_outage_opens_the_breaker_which_then_spares_the_server_until_a_trial_succeeds() {
    let server = model_server(Faults::new(1.0, Duration::ZERO)).await;
    let open_for = Duration::from_millis(300);
    let breaker = Breaker::new(
        client(&server.base_url(), 1_000, 1, 3_000),
        BreakerSettings {
            failure_threshold: 3,
            open_for,
        },
    );
    for _ in 0..3 {
        assert!(is_unavailable(&breaker.score(&applicant()).await, "503"));
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        server.requests_seen(),
        6,
        "each failed call is one attempt and one retry"
    );

    let started = Instant::now();
    for _ in 0..20 {
        assert!(is_unavailable(
            &breaker.score(&applicant()).await,
            "circuit open"
        ));
    }
    assert!(started.elapsed() < open_for, "fails fast");
    assert_eq!(server.requests_seen(), 6, "no request while open");

    server.faults().set_fail_rate(0.0);
    tokio::time::sleep(open_for + Duration::from_millis(50)).await;
    let score = breaker.score(&applicant()).await.unwrap();
    assert_eq!(score.model_name, "scorecard");
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(server.requests_seen(), 7, "one trial");
    server.stop().await;
}

#[tokio::test]
async fn a_slow_model_is_unavailable_within_the_deadline() {
    let server = model_server(Faults::new(0.0, Duration::from_millis(1_500))).await;
    let deadline = Duration::from_millis(500);
    let remote = client(&server.base_url(), 200, 1, deadline.as_millis() as u64);
    let started = Instant::now();
    let result = remote.score(&applicant()).await;
    let took = started.elapsed();
    assert!(is_unavailable(&result, "no answer within"), "{result:?}");
    assert!(
        took < deadline + Duration::from_millis(100),
        "took {took:?}"
    );
    assert_eq!(server.requests_seen(), 2, "the timeout was retried once");
    server.stop().await;
}

#[tokio::test]
async fn nobody_listening_is_unavailable() {
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let remote = client(&format!("http://127.0.0.1:{port}"), 500, 1, 1_000);
    let result = remote.score(&applicant()).await;
    assert!(
        is_unavailable(&result, "attempt 2 of at most 2"),
        "{result:?}"
    );
}

/// A server that answers every request with `status` and `body`.
async fn fake_server(status: StatusCode, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/score", post(move || async move { (status, body) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn an_answer_that_is_not_a_valid_score_is_an_invalid_score() {
    for body in [
        "<html>hello</html>",
        r#"{"probability_of_default":1.5,"model_name":"x","model_version":"1","contributions":[]}"#,
        r#"{"probability_of_default":0.1}"#,
    ] {
        let addr = fake_server(StatusCode::OK, body).await;
        let remote = client(&format!("http://{addr}"), 1_000, 1, 2_000);
        let result = remote.score(&applicant()).await;
        assert!(
            matches!(result, Err(ModelError::InvalidScore(_))),
            "{body}: {result:?}"
        );
    }
    let addr = fake_server(StatusCode::INTERNAL_SERVER_ERROR, "boom").await;
    let remote = client(&format!("http://{addr}"), 1_000, 1, 2_000);
    let result = remote.score(&applicant()).await;
    assert!(is_unavailable(&result, "500"), "{result:?}");
}
