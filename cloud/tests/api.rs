//! The REST API as a client sees it: status codes, error bodies, who may do what, and the offer
//! lifecycle from request to applied limit. Real Postgres (a fresh database per test); the risk
//! model is replaced by fixed ones so that decisions are known in advance.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use ecs_cloud::offers::{ExecutionOutcome, OfferWorker};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use tower::ServiceExt;

mod common;

use common::{
    ADMIN, app,
    client::{DownModel, FixedModel, call, person},
};

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn liveness_readiness_metrics_and_openapi(pool: PgPool) {
    let up = app(&pool, Arc::new(FixedModel(0.05)), true);
    let down = app(&pool, Arc::new(FixedModel(0.05)), false);
    assert_eq!(
        call(&up, Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&up, Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let r = call(&down, Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["broker"], false);
    assert_eq!(r.body["postgres"], true);
    // Operations data is the operator's: the admin token, or nothing.
    let r = call(&up, Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(&up, Method::GET, "/metrics", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("ecs_http_requests_total") && text.contains("route=\"/readyz\""),
        "{text}"
    );
    let r = call(&up, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["paths"]["/v1/users/{user_id}/credit-offers"]["post"].is_object());
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn every_response_carries_a_request_id(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let r = call(&app, Method::GET, "/healthz", None, None).await;
    assert!(r.headers.get("x-request-id").is_some());
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn tokens_decide_who_reaches_what(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (ana, ana_token) = person(&app).await;
    let (bia, _) = person(&app).await;

    let r = call(&app, Method::GET, &format!("/v1/users/{ana}"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    assert_eq!(r.body["type"], "/problems/unauthenticated");
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{ana}"),
        Some("ecs_u_forged"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{ana}"),
            Some(&ana_token),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{ana}"),
            Some(ADMIN),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    // Ana's token does not reach Bia, nor admin-only routes.
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{bia}"),
        Some(&ana_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{bia}/credit-offers"),
        Some(&ana_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &app,
        Method::POST,
        "/v1/users",
        Some(&ana_token),
        Some(r#"{"display_name":"Eve","emotional_data_consent":true}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{ana}/transactions"),
        Some(&ana_token),
        Some(r#"{"transactions":[]}"#),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "people cannot post their own bank history"
    );
    // Bia cannot accept Ana's offer.
    let offer = call(
        &app,
        Method::POST,
        &format!("/v1/users/{ana}/credit-offers"),
        Some(&ana_token),
        None,
    )
    .await;
    let offer_id = offer.body["offer_id"].as_str().unwrap();
    let bia_token = call(
        &app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(r#"{"display_name":"Bia","emotional_data_consent":false}"#),
    )
    .await
    .body["api_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/credit-offers/{offer_id}/accept"),
        Some(&bia_token),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "someone else's offer is not confirmed to exist"
    );
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/credit-offers/{offer_id}"),
        Some(&bia_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Method, path, token, body, expected status, a fragment the error message must contain.
type Case<'a> = (
    Method,
    String,
    Option<&'a str>,
    Option<&'a str>,
    StatusCode,
    &'a str,
);

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn bad_input_is_a_4xx_that_says_what_is_wrong(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, _) = person(&app).await;
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/users".into(),
            Some(ADMIN),
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            Method::POST,
            "/v1/users".into(),
            Some(ADMIN),
            Some(r#"{"display_name":"x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "emotional_data_consent",
        ),
        (
            Method::POST,
            "/v1/users".into(),
            Some(ADMIN),
            Some(r#"{"display_name":"x","emotional_data_consent":true,"ssn":"1"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ssn",
        ),
        (
            Method::POST,
            "/v1/users".into(),
            Some(ADMIN),
            Some(r#"{"display_name":"  ","emotional_data_consent":true}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "display_name",
        ),
        (
            Method::GET,
            "/v1/users/not-a-uuid".into(),
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            Method::GET,
            format!("/v1/users/{}", uuid::Uuid::new_v4()),
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "user",
        ),
        (
            Method::GET,
            "/v1/nowhere".into(),
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            Some(ADMIN),
            Some(r#"{"transactions":[]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "1-1000",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            Some(ADMIN),
            Some(
                r#"{"transactions":[{"external_ref":"a","direction":"inflow","amount_cents":-5,"category":"salary","occurred_at":"2026-01-01T00:00:00Z"}]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "transactions[0].amount_cents",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            Some(ADMIN),
            Some(
                r#"{"transactions":[{"external_ref":"a","direction":"sideways","amount_cents":5,"category":"salary","occurred_at":"2026-01-01T00:00:00Z"}]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "direction",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            Some(ADMIN),
            Some(
                r#"{"transactions":[{"external_ref":"a","direction":"inflow","amount_cents":5,"category":"salary","occurred_at":"2999-01-01T00:00:00Z"}]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "future",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/devices"),
            Some(ADMIN),
            Some(r#"{"device_id":"has-dash"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "letters and digits",
        ),
        (
            Method::POST,
            format!("/v1/credit-offers/{}/accept", uuid::Uuid::new_v4()),
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "offer",
        ),
        // A NUL byte in a path segment: Postgres text cannot hold it; the id's type refuses it.
        (
            Method::DELETE,
            format!("/v1/users/{user}/devices/ab%00cd"),
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "path parameter",
        ),
        // 50 characters that lower-case to 100: checked as stored.
        (
            Method::POST,
            format!("/v1/users/{user}/transactions"),
            Some(ADMIN),
            Some(&*Box::leak(
                format!(
                    r#"{{"transactions":[{{"external_ref":"a","direction":"inflow","amount_cents":5,"category":"{}","occurred_at":"2026-01-01T00:00:00Z"}}]}}"#,
                    "İ".repeat(50)
                )
                .into_boxed_str(),
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
            "transactions[0].category",
        ),
        (
            Method::PATCH,
            format!("/v1/users/{user}"),
            Some(ADMIN),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/credit-offers"),
            Some(ADMIN),
            Some(r#"{"amount_cents":0}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_cents",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/credit-offers"),
            Some(ADMIN),
            Some(r#"{"amount_cents":9999,"term_months":48}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_cents",
        ),
        (
            Method::GET,
            format!("/v1/users/{user}/access-log?after=-1"),
            Some(ADMIN),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "after",
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/credit-offers"),
            Some(ADMIN),
            Some(r#"{"term_months":"long"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "term_months",
        ),
    ];
    // Not JSON at all, and far too much of it.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/users")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from("display_name=x"))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(r#"{{"transactions":[{}]}}"#, "1,".repeat(2 << 20));
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/transactions"),
        Some(ADMIN),
        Some(&huge),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Two credentials, even the same one twice: neither is taken.
    let request = Request::builder()
        .uri(format!("/v1/users/{user}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Declared too large: refused at once, before authentication and without reading a byte.
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/users/{user}/transactions"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "99999999999")
        .body(Body::from("{}"))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    for (method, path, token, body, status, says) in cases {
        let r = call(&app, method.clone(), &path, token, body).await;
        assert_eq!(r.status, status, "{method} {path} {body:?}: {:?}", r.body);
        let message = r.body["detail"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{method} {path}: message {message:?} should mention {says:?}"
        );
        assert!(
            r.body["type"].is_string(),
            "{method} {path}: JSON error body"
        );
    }
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn consent_and_device_identity_rules(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let r = call(
        &app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(r#"{"display_name":"No consent","emotional_data_consent":false}"#),
    )
    .await;
    let user = r.body["user_id"].as_str().unwrap();
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/devices"),
        Some(ADMIN),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body["detail"].as_str().unwrap().contains("consented"));

    let (ana, _) = person(&app).await;
    let body = r#"{"device_id":"phone42"}"#;
    assert_eq!(
        call(
            &app,
            Method::POST,
            &format!("/v1/users/{ana}/devices"),
            Some(ADMIN),
            Some(body)
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{ana}/devices"),
        Some(ADMIN),
        Some(body),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a device id belongs to one phone"
    );

    // Without consent, an offer is still possible, on financial data only, and says so.
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(
        r.body["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("emotional_data_not_used"))
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn transactions_are_idempotent_by_external_ref(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, _) = person(&app).await;
    let post = |body: &'static str| {
        let (app, path) = (app.clone(), format!("/v1/users/{user}/transactions"));
        async move { call(&app, Method::POST, &path, Some(ADMIN), Some(body)).await }
    };
    let first = r#"{"transactions":[{"external_ref":"rent-1","direction":"outflow","amount_cents":150000,"category":"Rent","occurred_at":"2026-01-01T00:00:00Z"}]}"#;
    assert_eq!(post(first).await.status, StatusCode::CREATED);
    // Sent again with the same values (the category's case aside: it is stored lower-cased),
    // beside a new one and a repeat of itself: duplicates, one inserted.
    let r = post(
        r#"{"transactions":[{"external_ref":"rent-1","direction":"outflow","amount_cents":150000,"category":"rent","occurred_at":"2026-01-01T00:00:00.000000Z"},
                            {"external_ref":"new-1","direction":"outflow","amount_cents":1000,"category":"groceries","occurred_at":"2026-01-02T00:00:00Z"},
                            {"external_ref":"new-1","direction":"outflow","amount_cents":1000,"category":"groceries","occurred_at":"2026-01-02T00:00:00Z"}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        (r.body["inserted"].as_u64(), r.body["duplicates"].as_u64()),
        (Some(1), Some(2))
    );
    // The same reference with another amount: refused, and nothing of its batch is stored.
    let r = post(
        r#"{"transactions":[{"external_ref":"new-2","direction":"inflow","amount_cents":5,"category":"gift","occurred_at":"2026-01-03T00:00:00Z"},
                            {"external_ref":"rent-1","direction":"outflow","amount_cents":99,"category":"rent","occurred_at":"2026-01-01T00:00:00Z"}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("transactions[1]"),
        "{:?}",
        r.body
    );
    // Two of one batch that disagree: 422 naming the second.
    let r = post(
        r#"{"transactions":[{"external_ref":"x","direction":"inflow","amount_cents":5,"category":"gift","occurred_at":"2026-01-03T00:00:00Z"},
                            {"external_ref":"x","direction":"outflow","amount_cents":5,"category":"gift","occurred_at":"2026-01-03T00:00:00Z"}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "transactions[1].external_ref");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT external_ref FROM transactions WHERE user_id = $1::uuid AND external_ref IN ('new-2', 'x')")
            .bind(&user)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn an_accepted_offer_is_applied_once_by_the_worker_and_the_phone_is_notified(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.02)), true);
    let (user, token) = person(&app).await;

    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let offer = r.body;
    assert_eq!(offer["approved"], true);
    assert_eq!(offer["status"], "offered");
    assert_eq!(offer["risk"]["probability_of_default"], 0.02);
    assert_eq!(offer["risk"]["risk_score"], 980);
    assert_eq!(offer["risk"]["model_name"], "fixed");
    assert_eq!(offer["credit_type"], "long_term");
    let limit = offer["credit_limit_cents"].as_i64().unwrap();
    assert!(limit > 0);
    assert!(offer["interest_rate_bps"].as_i64().unwrap() > 0);
    let offer_id = offer["offer_id"].as_str().unwrap();

    // No credit line yet: nothing was accepted.
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{user}/credit-limit"),
            Some(&token),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    let accept = format!("/v1/credit-offers/{offer_id}/accept");
    let r = call(&app, Method::POST, &accept, Some(&token), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "accepted");
    // The request did not apply anything.
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{user}/credit-limit"),
            Some(&token),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // Retrying the accept is harmless: one outbox event.
    assert_eq!(
        call(&app, Method::POST, &accept, Some(&token), None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1);

    let notifier = Arc::new(Notify::new());
    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: notifier.clone(),
        poll_interval: Duration::from_secs(1),
    };
    assert_eq!(
        worker.process_next().await.unwrap(),
        ExecutionOutcome::TaskCompleted
    );
    assert_eq!(
        worker.process_next().await.unwrap(),
        ExecutionOutcome::EmptyQueue
    );
    tokio::time::timeout(Duration::from_secs(1), notifier.notified())
        .await
        .expect("the notifier was woken");

    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}/credit-limit"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["credit_limit_cents"].as_i64(), Some(limit));
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/credit-offers/{offer_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "applied");
    let (kind, body): (String, Value) = sqlx::query_as("SELECT kind, body FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "offer_applied");
    assert!(body.to_string().contains(offer_id));

    // Replaying the event (a crash after commit, a second replica) changes nothing twice.
    sqlx::query("UPDATE outbox SET processed_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        worker.process_next().await.unwrap(),
        ExecutionOutcome::TaskCompleted
    );
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM credit_limit_history), (SELECT count(*) FROM notifications)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1));
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn declined_and_expired_offers_cannot_be_accepted(pool: PgPool) {
    let risky = app(&pool, Arc::new(FixedModel(0.5)), true);
    let (user, token) = person(&risky).await;
    let r = call(
        &risky,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["approved"], false);
    assert_eq!(r.body["credit_limit_cents"], 0);
    assert!(
        r.body["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("probability_of_default_too_high"))
    );
    let declined = r.body["offer_id"].as_str().unwrap().to_owned();
    let r = call(
        &risky,
        Method::POST,
        &format!("/v1/credit-offers/{declined}/accept"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let safe = app(&pool, Arc::new(FixedModel(0.05)), true);
    let r = call(
        &safe,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    let stale = r.body["offer_id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE credit_offers SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE offer_id = $1::uuid")
        .bind(&stale)
        .execute(&pool)
        .await
        .unwrap();
    let r = call(
        &safe,
        Method::POST,
        &format!("/v1/credit-offers/{stale}/accept"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body["detail"].as_str().unwrap().contains("expired"));
    let r = call(
        &safe,
        Method::GET,
        &format!("/v1/credit-offers/{stale}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "expired");
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_model_outage_is_a_503_with_retry_after_and_stores_nothing(pool: PgPool) {
    let app = app(&pool, Arc::new(DownModel), true);
    let (user, token) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    assert!(
        !r.body["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "internals stay in the log"
    );
    let offers: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_offers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(offers, 0);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn postgres_down_is_a_503_not_a_500(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    pool.close().await;
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let r = call(&app, Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_person_can_be_erased_completely(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.02)), true);
    let (user, token) = person(&app).await;
    let (other, _) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    let offer_id = r.body["offer_id"].as_str().unwrap().to_owned();
    call(
        &app,
        Method::POST,
        &format!("/v1/credit-offers/{offer_id}/accept"),
        Some(&token),
        None,
    )
    .await;
    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: Arc::new(Notify::new()),
        poll_interval: Duration::from_secs(1),
    };
    worker.process_next().await.unwrap();
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{user}/emotional-profile"),
            Some(&token),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND,
        "no readings yet, no profile"
    );

    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{user}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The token died with the person.
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{user}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for table in [
        "devices",
        "transactions",
        "risk_assessments",
        "credit_offers",
        "credit_limits",
        "credit_limit_history",
        "outbox",
        "notifications",
        "api_tokens",
    ] {
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE user_id = $1::uuid"
        )))
        .bind(&user)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(left, 0, "{table} still holds the erased person's rows");
    }
    // Nobody else was touched.
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/v1/users/{other}"),
            Some(ADMIN),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_newer_assessment_supersedes_the_open_offer(pool: PgPool) {
    let generous = app(&pool, Arc::new(FixedModel(0.02)), true);
    let (user, token) = person(&generous).await;
    let r = call(
        &generous,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    let first = r.body["offer_id"].as_str().unwrap().to_owned();
    let first_limit = r.body["credit_limit_cents"].as_i64().unwrap();

    // Things got worse: the new decision is smaller, and it is the only one that can be taken.
    let cautious = app(&pool, Arc::new(FixedModel(0.15)), true);
    let r = call(
        &cautious,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    let second = r.body["offer_id"].as_str().unwrap().to_owned();
    assert!(r.body["credit_limit_cents"].as_i64().unwrap() < first_limit);

    let r = call(
        &cautious,
        Method::GET,
        &format!("/v1/credit-offers/{first}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "superseded");
    let r = call(
        &cautious,
        Method::POST,
        &format!("/v1/credit-offers/{first}/accept"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body["detail"].as_str().unwrap().contains("newer"));
    let r = call(
        &cautious,
        Method::POST,
        &format!("/v1/credit-offers/{second}/accept"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_offers WHERE status = 'offered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(open, 0);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn concurrent_assessments_leave_exactly_one_open_offer(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    let path = format!("/v1/users/{user}/credit-offers");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, path, token) = (app.clone(), path.clone(), token.clone());
            tokio::spawn(async move {
                call(&app, Method::POST, &path, Some(&token), None)
                    .await
                    .status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_offers WHERE status = 'offered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(open, 1);
}

/// The assessment's answer is built from the row it wrote, not read back: it must be that row
/// exactly, field for field (times to the microsecond, as stored), approved or declined.
#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_answer_to_an_assessment_is_the_offer_as_stored(pool: PgPool) {
    for pd in [0.05, 0.9] {
        let app = app(&pool, Arc::new(FixedModel(pd)), true);
        let (user, token) = person(&app).await;
        let created = call(
            &app,
            Method::POST,
            &format!("/v1/users/{user}/credit-offers"),
            Some(&token),
            Some(r#"{"amount_cents":150000,"term_months":7}"#),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["approved"], pd < 0.5, "{}", created.body);
        let offer_id = created.body["offer_id"].as_str().unwrap();
        let stored = call(
            &app,
            Method::GET,
            &format!("/v1/credit-offers/{offer_id}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(stored.status, StatusCode::OK);
        let mut answered = created.body.clone();
        answered.as_object_mut().unwrap().remove("risk");
        assert_eq!(answered, stored.body);
    }
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn an_offer_past_its_expiry_reads_as_expired(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    let offer = r.body["offer_id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE credit_offers SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/credit-offers/{offer}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "expired", "before any write recorded it");
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn consent_can_be_withdrawn_and_given_again(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    sqlx::query(
        "INSERT INTO emotion_features (user_id, readings_count, ew_weight, mean_valence, valence_variance,
             mean_arousal, mean_stress, stress_share, impulsivity, purchase_intent, financial_worry,
             saving_intent, first_reading_at, last_reading_at)
         VALUES ($1::uuid, 10, 1, 5, 1, 50, 80, 0.9, 0, 0, 0.8, 0, now(), now())",
    )
    .bind(&user)
    .execute(&pool)
    .await
    .unwrap();
    let path = format!("/v1/users/{user}/consent");
    let r = call(
        &app,
        Method::PUT,
        &path,
        Some(&token),
        Some(r#"{"emotional_data_consent":false}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["emotional_data_consent"], false);
    assert!(r.body["consent_withdrawn_at"].is_string());
    // The derived profile is gone and no new phone can be registered.
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}/emotional-profile"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/devices"),
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(&token),
        None,
    )
    .await;
    assert!(
        r.body["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("emotional_data_not_used"))
    );

    let r = call(
        &app,
        Method::PUT,
        &path,
        Some(&token),
        Some(r#"{"emotional_data_consent":true}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["emotional_data_consent"], true);
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/devices"),
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_rotated_token_stops_working(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, old) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/tokens"),
        Some(&old),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let new = r.body["api_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let path = format!("/v1/users/{user}");
    assert_eq!(
        call(&app, Method::GET, &path, Some(&old), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, Method::GET, &path, Some(&new), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_phone_can_be_revoked_by_its_owner_only(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (ana, ana_token) = person(&app).await;
    let (bia, bia_token) = person(&app).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{ana}/devices"),
        Some(&ana_token),
        Some(r#"{"device_id":"anaphone"}"#),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a person cannot choose a device id"
    );
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{ana}/devices"),
        Some(ADMIN),
        Some(r#"{"device_id":"anaphone"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Bia cannot revoke Ana's phone, not even through her own path.
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{bia}/devices/anaphone"),
        Some(&bia_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{ana}/devices/anaphone"),
        Some(&bia_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{ana}/devices/anaphone"),
        Some(&ana_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let revoked: bool = sqlx::query_scalar(
        "SELECT revoked_at IS NOT NULL FROM devices WHERE device_id = 'anaphone'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(revoked);
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{ana}/devices/anaphone"),
        Some(&ana_token),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "revoking twice is harmless"
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn control_characters_are_refused_not_a_500(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let r = call(
        &app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(r#"{"display_name":"Ana\u0000","emotional_data_consent":true}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let (user, _) = person(&app).await;
    let r = call(&app, Method::POST, &format!("/v1/users/{user}/transactions"), Some(ADMIN),
        Some(r#"{"transactions":[{"external_ref":"a\u0000","direction":"inflow","amount_cents":5,"category":"salary","occurred_at":"2026-01-01T00:00:00Z"}]}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
}
