//! Changes about one person fired at once: accept racing a new assessment, accept racing
//! erasure, the worker racing erasure. Every answer is one the OpenAPI document lists for its
//! operation, none is a 5xx, and each accepted offer is applied exactly once. Real Postgres.

use std::sync::Arc;

use axum::{
    Router,
    http::{Method, StatusCode},
};
use ecs_cloud::{
    api::ApiDoc,
    offers::{ExecutionOutcome, OfferWorker},
};
use sqlx::PgPool;
use tokio::sync::Notify;
use utoipa::OpenApi;

mod common;

use common::{
    ADMIN, app,
    client::{FixedModel, call, person},
};

/// The statuses the contract lists for `method path_template`.
fn documented(method: &str, template: &str) -> Vec<u16> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    doc["paths"][template][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {template} is not documented"))
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

async fn assess(app: &Router, user: &str) -> (StatusCode, serde_json::Value) {
    let r = call(
        app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(ADMIN),
        None,
    )
    .await;
    (r.status, r.body)
}

async fn accept(app: &Router, offer: &str, token: &str) -> StatusCode {
    call(
        app,
        Method::POST,
        &format!("/v1/credit-offers/{offer}/accept"),
        Some(token),
        None,
    )
    .await
    .status
}

fn worker(pool: &PgPool) -> OfferWorker {
    OfferWorker {
        pool: pool.clone(),
        notifier: Arc::new(Notify::new()),
        poll_interval: std::time::Duration::from_millis(50),
    }
}

async fn drain(worker: &OfferWorker) {
    loop {
        match worker.process_next().await.unwrap() {
            ExecutionOutcome::EmptyQueue => break,
            ExecutionOutcome::TaskCompleted => {}
            ExecutionOutcome::TaskFailed => panic!("an offer failed to apply"),
        }
    }
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn accept_racing_assess_never_fails_and_applies_each_acceptance_once(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    // The person's own token would meet its rate limit within 50 rounds; the admin's does not.
    let (user, _) = person(&app).await;
    let token = ADMIN.to_owned();
    let accept_codes = documented("post", "/v1/credit-offers/{offer_id}/accept");
    let assess_codes = documented("post", "/v1/users/{user_id}/credit-offers");
    let mut accepted = 0;
    for round in 0..50 {
        let (status, offer) = assess(&app, &user).await;
        assert_eq!(status, StatusCode::CREATED, "{offer}");
        let offer_id = offer["offer_id"].as_str().unwrap().to_owned();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (app, token) = (app.clone(), token.clone());
                async move { accept(&app, &offer_id, &token).await }
            }),
            tokio::spawn({
                let (app, user) = (app.clone(), user.clone());
                async move { assess(&app, &user).await.0 }
            }),
        );
        let (accept_status, assess_status) = (a.unwrap(), b.unwrap());
        assert!(
            accept_codes.contains(&accept_status.as_u16()) && !accept_status.is_server_error(),
            "round {round}: accept answered {accept_status}"
        );
        assert!(
            assess_codes.contains(&assess_status.as_u16()) && !assess_status.is_server_error(),
            "round {round}: assess answered {assess_status}"
        );
        // Accept wins (202) or finds the offer superseded (409); nothing else.
        assert!(
            [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(&accept_status),
            "round {round}: {accept_status}"
        );
        if accept_status == StatusCode::ACCEPTED {
            accepted += 1;
        }
    }
    assert!(accepted > 0, "no acceptance won in 50 rounds");
    let worker = worker(&pool);
    drain(&worker).await;
    // Once more: replays find everything applied.
    drain(&worker).await;
    let (history, applied): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM credit_limit_history),
                (SELECT count(*) FROM credit_offers WHERE status = 'applied')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((history, applied), (accepted, accepted));
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn accept_and_the_worker_racing_erasure_never_fail(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let accept_codes = documented("post", "/v1/credit-offers/{offer_id}/accept");
    let erase_codes = documented("delete", "/v1/users/{user_id}");
    let worker = Arc::new(worker(&pool));
    for round in 0..30 {
        let (user, token) = person(&app).await;
        let (_, offer) = assess(&app, &user).await;
        let offer_id = offer["offer_id"].as_str().unwrap().to_owned();
        // Every other round an acceptance is already waiting for the worker, so the worker
        // races the erasure too.
        if round % 2 == 1 {
            assert_eq!(accept(&app, &offer_id, &token).await, StatusCode::ACCEPTED);
        }
        let (a, e, w) = tokio::join!(
            tokio::spawn({
                let (app, token, offer_id) = (app.clone(), token.clone(), offer_id.clone());
                async move { accept(&app, &offer_id, &token).await }
            }),
            tokio::spawn({
                let (app, user) = (app.clone(), user.clone());
                async move {
                    call(
                        &app,
                        Method::DELETE,
                        &format!("/v1/users/{user}"),
                        Some(ADMIN),
                        None,
                    )
                    .await
                    .status
                }
            }),
            tokio::spawn({
                let worker = worker.clone();
                async move { worker.process_next().await }
            }),
        );
        let (accept_status, erase_status) = (a.unwrap(), e.unwrap());
        assert!(
            accept_codes.contains(&accept_status.as_u16()) && !accept_status.is_server_error(),
            "round {round}: accept answered {accept_status}"
        );
        // The erasure may be refused only by the token of the erased person having gone (it is
        // the admin here), so it must succeed.
        assert_eq!(erase_status, StatusCode::NO_CONTENT, "round {round}");
        assert!(erase_codes.contains(&erase_status.as_u16()));
        let w = w.unwrap();
        assert!(
            !matches!(w, Ok(ExecutionOutcome::TaskFailed)) && w.is_ok(),
            "round {round}: the worker {w:?}"
        );
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM users WHERE user_id = $1::uuid)
                  + (SELECT count(*) FROM outbox WHERE user_id = $1::uuid)",
        )
        .bind(&user)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            left, 0,
            "round {round}: the person is gone with their events"
        );
    }
}

/// People with an accepted offer each, waiting for the worker.
async fn accepted_offers(app: &Router, n: usize) -> Vec<String> {
    let mut offers = Vec::new();
    for _ in 0..n {
        let (user, _) = person(app).await;
        let (status, offer) = assess(app, &user).await;
        assert_eq!(status, StatusCode::CREATED, "{offer}");
        let offer_id = offer["offer_id"].as_str().unwrap().to_owned();
        assert_eq!(accept(app, &offer_id, ADMIN).await, StatusCode::ACCEPTED);
        offers.push(offer_id);
    }
    offers
}

async fn applied_once(pool: &PgPool, offers: &[String]) {
    for offer in offers {
        let (history, status): (i64, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM credit_limit_history WHERE offer_id = $1::uuid),
                    (SELECT status FROM credit_offers WHERE offer_id = $1::uuid)",
        )
        .bind(offer)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((history, status.as_str()), (1, "applied"), "offer {offer}");
    }
    let notifications: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE kind = 'offer_applied'")
            .fetch_one(pool)
            .await
            .unwrap();
    // One phone per person: one notification per applied offer, never two.
    assert_eq!(notifications, offers.len() as i64);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn two_workers_racing_apply_each_offer_once(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let offers = accepted_offers(&app, 20).await;
    let (a, b) = (Arc::new(worker(&pool)), Arc::new(worker(&pool)));
    let run = |w: Arc<OfferWorker>| {
        tokio::spawn(async move {
            let mut applied = 0;
            // A worker that finds every waiting person held by the other sees an empty queue:
            // keep going until both have seen nothing twice in a row.
            let mut empty = 0;
            while empty < 2 {
                match w.process_next().await.unwrap() {
                    ExecutionOutcome::TaskCompleted => {
                        applied += 1;
                        empty = 0;
                    }
                    ExecutionOutcome::EmptyQueue => {
                        empty += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    ExecutionOutcome::TaskFailed => panic!("an offer failed to apply"),
                }
            }
            applied
        })
    };
    let (x, y) = tokio::join!(run(a), run(b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x + y >= offers.len(), "{x} + {y}");
    drain(&worker(&pool)).await;
    applied_once(&pool, &offers).await;
}

/// The worker stopped at every point of its work (its future dropped, as a killed process's
/// connection is closed): what it had done rolls back, and the next pass applies each offer once.
#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_worker_stopped_mid_work_leaves_each_offer_to_be_applied_once(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let offers = accepted_offers(&app, 8).await;
    let w = worker(&pool);
    // Growing deadlines cut the pass at different statements: after the claim, after the
    // limit, before the commit, ...
    for micros in (0..4_000).step_by(250) {
        let cut =
            tokio::time::timeout(std::time::Duration::from_micros(micros), w.process_next()).await;
        if let Ok(outcome) = cut {
            assert!(
                !matches!(outcome, Ok(ExecutionOutcome::TaskFailed)),
                "{outcome:?}"
            );
        }
    }
    drain(&w).await;
    applied_once(&pool, &offers).await;
}

/// Two acceptances of one person, the older one's event failing until after the newer one was
/// applied: the newer line stays, the older offer is recorded as overtaken, never applied.
#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn an_older_acceptance_applied_late_never_replaces_a_newer_line(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, _) = person(&app).await;
    let (_, first) = assess(&app, &user).await;
    let first = first["offer_id"].as_str().unwrap().to_owned();
    assert_eq!(accept(&app, &first, ADMIN).await, StatusCode::ACCEPTED);
    // Its event is backing off (as after failures).
    sqlx::query(
        "UPDATE outbox SET available_at = now() + interval '1 hour'
         WHERE payload->>'offer_id' = $1",
    )
    .bind(&first)
    .execute(&pool)
    .await
    .unwrap();
    let (_, second) = assess(&app, &user).await;
    let second = second["offer_id"].as_str().unwrap().to_owned();
    assert_eq!(accept(&app, &second, ADMIN).await, StatusCode::ACCEPTED);
    let worker = worker(&pool);
    drain(&worker).await;
    sqlx::query("UPDATE outbox SET available_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    drain(&worker).await;
    let line: String =
        sqlx::query_scalar("SELECT offer_id::text FROM credit_limits WHERE user_id = $1::uuid")
            .bind(&user)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(line, second, "the newer acceptance's line is in force");
    let status: String =
        sqlx::query_scalar("SELECT status FROM credit_offers WHERE offer_id = $1::uuid")
            .bind(&first)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "superseded");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE processed_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "both events processed, none failing");
}
