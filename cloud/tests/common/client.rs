//! A client of the app under test: requests as a client sends them, and the people and models
//! most tests start from. Not every test crate uses every helper.
#![allow(dead_code)]

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use ecs_cloud::model::{FeatureVector, ModelError, RiskModel, RiskScore, ScoreFuture};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::ADMIN;

/// Always answers the same probability of default.
pub struct FixedModel(pub f64);

impl RiskModel for FixedModel {
    fn name(&self) -> &str {
        "fixed"
    }
    fn version(&self) -> &str {
        "test"
    }
    fn score<'a>(&'a self, _features: &'a FeatureVector) -> ScoreFuture<'a> {
        let score = RiskScore {
            probability_of_default: self.0,
            model_name: "fixed".into(),
            model_version: "test".into(),
            contributions: Vec::new(),
        };
        Box::pin(std::future::ready(Ok(score)))
    }
}

/// A model service that is down.
pub struct DownModel;

impl RiskModel for DownModel {
    fn name(&self) -> &str {
        "down"
    }
    fn version(&self) -> &str {
        "test"
    }
    fn score<'a>(&'a self, _features: &'a FeatureVector) -> ScoreFuture<'a> {
        Box::pin(std::future::ready(Err(ModelError::Unavailable(
            "connection refused".into(),
        ))))
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(b) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_owned())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply {
        status,
        headers,
        body,
    }
}

/// Creates a consenting user with three months of salary and a phone; returns (id, token).
pub async fn person(app: &Router) -> (String, String) {
    let r = call(
        app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(r#"{"display_name":"Ana","emotional_data_consent":true}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let user = r.body["user_id"].as_str().unwrap().to_owned();
    let token = r.body["api_token"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    let txs: Vec<Value> = (1..=3)
        .map(|m| {
            json!({
                "external_ref": format!("salary-{m}"),
                "direction": "inflow",
                "amount_cents": 500_000,
                "category": "salary",
                "occurred_at": now.checked_sub_months(chrono::Months::new(m - 1)).unwrap() - chrono::Duration::hours(1),
            })
        })
        .collect();
    let body = json!({ "transactions": txs }).to_string();
    let r = call(
        app,
        Method::POST,
        &format!("/v1/users/{user}/transactions"),
        Some(ADMIN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["inserted"], 3);
    let r = call(
        app,
        Method::POST,
        &format!("/v1/users/{user}/devices"),
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (user, token)
}

/// Asks for an offer for `user` with their token; returns the offer's id (the offer must be
/// created: 201).
pub async fn assess(app: &Router, user: &str, token: &str) -> String {
    let r = call(
        app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(token),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["offer_id"].as_str().unwrap().to_owned()
}
