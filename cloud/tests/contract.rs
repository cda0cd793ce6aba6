//! The API's contract with its clients: every kind of problem answered as problem+json with its
//! documented `type` and status; `Idempotency-Key` replays the first answer and creates nothing
//! twice, even for two requests at once; rate limits answer 429 with `Retry-After`. Real
//! Postgres (a fresh database per test).

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use ecs_cloud::{api::ApiDoc, error::ProblemType};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;
use utoipa::OpenApi;

mod common;

use common::{
    ADMIN, app, app_with_assessment_limit,
    client::{DownModel, FixedModel, call, person},
};

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A request with any headers, body as given (`content_type` None: no header at all).
async fn send(
    app: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Raw {
    let mut request = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Raw {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// What is expected, which app, and the request.
type Case<'a> = (
    ProblemType,
    &'a Router,
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
    Vec<u8>,
);

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_problem(r: &Raw, kind: ProblemType, what: &str) {
    assert_eq!(r.status, kind.status(), "{what}: {:?}", r.body);
    assert_eq!(
        r.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    assert_eq!(r.body["type"], kind.uri(), "{what}: {:?}", r.body);
    assert_eq!(r.body["status"], kind.status().as_u16(), "{what}");
    assert_eq!(r.body["title"], kind.title(), "{what}");
    assert!(
        r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}"
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn every_problem_answers_problem_json_with_its_documented_type(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let down = app_with_assessment_limit(&pool, Arc::new(DownModel), 1_000);
    let (user, token) = person(&app).await;
    let admin = bearer(ADMIN);
    let mine = bearer(&token);
    let (other, _) = person(&app).await;
    let json = Some("application/json");
    let cases: Vec<Case> = vec![
        (
            ProblemType::BadRequest,
            &app,
            Method::POST,
            "/v1/users".into(),
            vec![("authorization", &admin)],
            json,
            b"{nope".to_vec(),
        ),
        (
            ProblemType::BadRequest,
            &app,
            Method::GET,
            "/v1/users/not-a-uuid".into(),
            vec![("authorization", &admin)],
            None,
            vec![],
        ),
        (
            ProblemType::Unauthenticated,
            &app,
            Method::GET,
            format!("/v1/users/{user}"),
            vec![],
            None,
            vec![],
        ),
        (
            ProblemType::Unauthenticated,
            &app,
            Method::GET,
            format!("/v1/users/{user}"),
            vec![("authorization", "Bearer ecs_u_forged")],
            None,
            vec![],
        ),
        (
            ProblemType::Forbidden,
            &app,
            Method::GET,
            format!("/v1/users/{other}"),
            vec![("authorization", &mine)],
            None,
            vec![],
        ),
        (
            ProblemType::Forbidden,
            &app,
            Method::GET,
            "/metrics".into(),
            vec![("authorization", &mine)],
            None,
            vec![],
        ),
        (
            ProblemType::NotFound,
            &app,
            Method::GET,
            format!("/v1/users/{}", uuid::Uuid::new_v4()),
            vec![("authorization", &admin)],
            None,
            vec![],
        ),
        (
            ProblemType::NotFound,
            &app,
            Method::GET,
            "/nowhere".into(),
            vec![],
            None,
            vec![],
        ),
        (
            ProblemType::MethodNotAllowed,
            &app,
            Method::PUT,
            "/v1/users".into(),
            vec![("authorization", &admin)],
            None,
            vec![],
        ),
        (
            ProblemType::Conflict,
            &app,
            Method::POST,
            format!("/v1/users/{user}/devices"),
            vec![("authorization", &admin)],
            json,
            format!(r#"{{"device_id":"{}"}}"#, "Dup1").into_bytes(),
        ),
        (
            ProblemType::PayloadTooLarge,
            &app,
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            vec![("authorization", &admin)],
            json,
            vec![b' '; (1 << 20) + 1],
        ),
        (
            ProblemType::UnsupportedMediaType,
            &app,
            Method::POST,
            "/v1/users".into(),
            vec![("authorization", &admin)],
            Some("text/plain"),
            b"{}".to_vec(),
        ),
        (
            ProblemType::Validation,
            &app,
            Method::POST,
            "/v1/users".into(),
            vec![("authorization", &admin)],
            json,
            br#"{"display_name":"","emotional_data_consent":true}"#.to_vec(),
        ),
        (
            ProblemType::Validation,
            &app,
            Method::POST,
            format!("/v1/users/{user}/credit-offers"),
            vec![("authorization", &admin), ("idempotency-key", "short")],
            None,
            vec![],
        ),
        (
            ProblemType::Unavailable,
            &down,
            Method::POST,
            format!("/v1/users/{user}/credit-offers"),
            vec![("authorization", &admin)],
            None,
            vec![],
        ),
    ];
    // A `null` body is no body, as documented; the auth scheme is case-insensitive.
    let lower = format!("bearer {ADMIN}");
    let r = send(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        &[("authorization", &lower)],
        json,
        b"null".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The device the conflict case collides with.
    let r = send(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/devices"),
        &[("authorization", &admin)],
        json,
        br#"{"device_id":"Dup1"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for (kind, app, method, path, headers, ct, body) in cases {
        let what = format!("{method} {path}");
        let r = send(app, method, &path, &headers, ct, body).await;
        assert_problem(&r, kind, &what);
    }
    let r = send(
        &app,
        Method::GET,
        &format!("/v1/users/{user}"),
        &[],
        None,
        vec![],
    )
    .await;
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    let r = send(
        &down,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        &[("authorization", &admin)],
        None,
        vec![],
    )
    .await;
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Each problem type documents itself.
    for kind in ProblemType::ALL {
        let r = send(&app, Method::GET, &kind.uri(), &[], None, vec![]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", kind.uri());
        assert_eq!(r.body["status"], kind.status().as_u16());
    }
}

#[test]
fn the_openapi_document_states_parameters_and_limits() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    declared.contains(&name),
                    "{method} {path} does not declare its path parameter {name}"
                );
            }
            if op.get("security").is_some() {
                for status in ["401", "429"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
    let name = &doc["components"]["schemas"]["CreateUser"]["properties"]["display_name"];
    assert_eq!(name["maxLength"], 200);
    let amount = &doc["components"]["schemas"]["NewTransaction"]["properties"]["amount_cents"];
    assert_eq!(amount["minimum"], 1);
    for path in [
        "/v1/users",
        "/v1/users/{user_id}/devices",
        "/v1/users/{user_id}/transactions",
        "/v1/users/{user_id}/credit-offers",
    ] {
        let key = doc["paths"][path]["post"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
            .unwrap_or_else(|| panic!("POST {path} does not state its Idempotency-Key"));
        assert_eq!(key["in"], "header");
        assert_eq!(key["schema"]["maxLength"], 255, "{key}");
    }
}

fn key_header(key: &str) -> (&'static str, &str) {
    ("idempotency-key", key)
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_same_create_twice_with_one_key_creates_one_thing(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let admin = bearer(ADMIN);
    let json = Some("application/json");
    let body = br#"{"display_name":"Ana","emotional_data_consent":true}"#.to_vec();
    let key = "2f0b7a8e-4c1d-4e8f-9b6a-0c3d5e7f9a1b";
    let h = [("authorization", admin.as_str()), key_header(key)];
    let first = send(&app, Method::POST, "/v1/users", &h, json, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(&app, Method::POST, "/v1/users", &h, json, body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(
        again.body, first.body,
        "the replay is the first answer, token included"
    );
    assert_eq!(again.headers["idempotency-replayed"], "true");
    let people: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(people, 1);
    // The stored answer holds the token only sealed.
    let token = first.body["api_token"].as_str().unwrap();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT sealed_answer FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!stored.windows(token.len()).any(|w| w == token.as_bytes()));

    // The same key with another body is refused, and creates nothing.
    let other = br#"{"display_name":"Bia","emotional_data_consent":true}"#.to_vec();
    let r = send(&app, Method::POST, "/v1/users", &h, json, other).await;
    assert_problem(&r, ProblemType::IdempotencyKeyReused, "reused key");
    // Another caller's same key is another key.
    let user = first.body["user_id"].as_str().unwrap();
    let mine = bearer(token);
    let devices = format!("/v1/users/{user}/devices");
    let r = send(
        &app,
        Method::POST,
        &devices,
        &[("authorization", &mine), key_header(key)],
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Two assessments at once with one key: one offer, both answers the same.
    let offers = format!("/v1/users/{user}/credit-offers");
    let key2 = "0e7c0b8f-2d4a-4f5b-8c6d-9e0f1a2b3c4d";
    let h2: Vec<(&str, &str)> = vec![("authorization", &mine), key_header(key2)];
    let (a, b) = tokio::join!(
        send(&app, Method::POST, &offers, &h2, None, vec![]),
        send(&app, Method::POST, &offers, &h2, None, vec![]),
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{:?} {:?}",
        a.body,
        b.body
    );
    assert_eq!(a.body, b.body);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_offers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    // Erasure takes the person's stored answers with them.
    let r = send(
        &app,
        Method::DELETE,
        &format!("/v1/users/{user}"),
        &[("authorization", &admin)],
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// A stranger's accept is answered at once, without waiting on (or revealing) the owner's lock.
#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn someone_elses_offer_is_not_found_at_once_even_while_its_owner_is_busy(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (owner, _) = person(&app).await;
    let (_, stranger) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{owner}/credit-offers"),
        Some(ADMIN),
        None,
    )
    .await;
    let offer = r.body["offer_id"].as_str().unwrap().to_owned();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE user_id = $1::uuid FOR UPDATE")
        .bind(&owner)
        .execute(&mut *holder)
        .await
        .unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        call(
            &app,
            Method::POST,
            &format!("/v1/credit-offers/{offer}/accept"),
            Some(&stranger),
            None,
        ),
    )
    .await
    .expect("answered without waiting for the owner's lock");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    holder.rollback().await.unwrap();
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_token_past_its_rate_and_a_person_past_their_assessments_get_429(pool: PgPool) {
    let app = app_with_assessment_limit(&pool, Arc::new(FixedModel(0.05)), 2);
    let (user, token) = person(&app).await;
    let mine = bearer(&token);
    let offers = format!("/v1/users/{user}/credit-offers");
    for _ in 0..2 {
        let r = send(
            &app,
            Method::POST,
            &offers,
            &[("authorization", &mine)],
            None,
            vec![],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = send(
        &app,
        Method::POST,
        &offers,
        &[("authorization", &mine)],
        None,
        vec![],
    )
    .await;
    assert_problem(&r, ProblemType::RateLimited, "third assessment");
    let wait: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (3000..=3600).contains(&wait),
        "the allowance frees within the hour: {wait}"
    );
    // Refused before the model is asked: with the model down the answer is still 429.
    let down = app_with_assessment_limit(&pool, Arc::new(DownModel), 2);
    let r = send(
        &down,
        Method::POST,
        &offers,
        &[("authorization", &mine)],
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    // The admin token is no way around it: the allowance is the person's.
    let r = send(
        &app,
        Method::POST,
        &offers,
        &[("authorization", &bearer(ADMIN))],
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    // The person's token spends its burst (40) and then waits; another person is unaffected.
    let (other, other_token) = person(&app).await;
    let mut limited = None;
    for _ in 0..60 {
        let r = send(
            &app,
            Method::GET,
            &format!("/v1/users/{user}"),
            &[("authorization", &mine)],
            None,
            vec![],
        )
        .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("60 requests at once exceed a person's burst");
    assert_problem(&r, ProblemType::RateLimited, "token rate");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{other}"),
        Some(&other_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}
