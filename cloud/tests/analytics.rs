//! The analytics views as the dashboard sees them: population figures appear only once a group
//! holds k people, a person's token reaches only their own view, and windows are checked at the
//! door. Real Postgres (a fresh database per test), people created through the API.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use serde_json::Value;
use sqlx::PgPool;

mod common;
mod seed;

use common::ADMIN;
use ecs_cloud::policy::ReasonCode;
use seed::{Profile, Progress, Reading, call};

const POPULATION_VIEWS: [&str; 6] = [
    "/v1/analytics/emotions/hourly",
    "/v1/analytics/credit-limits",
    "/v1/analytics/interest-rates",
    "/v1/analytics/decisions",
    "/v1/analytics/funnel",
    "/v1/analytics/ingest",
];

/// The buckets of a list that are not suppressed.
fn shown(list: &Value) -> Vec<&Value> {
    list.as_array()
        .expect("a list of buckets")
        .iter()
        .filter(|b| b["suppressed"] == false)
        .collect()
}

/// Every figure of a suppressed bucket is withheld: only its key and `suppressed` remain.
fn assert_withheld(list: &Value, key: &str) {
    for bucket in list.as_array().unwrap() {
        assert_eq!(bucket["suppressed"], true, "{bucket}");
        for (name, value) in bucket.as_object().unwrap() {
            if name != key && name != "suppressed" && name != "to" {
                assert!(
                    value.is_null(),
                    "{name} shown in a suppressed bucket: {bucket}"
                );
            }
        }
    }
}

async fn get(app: &axum::Router, path: &str) -> Value {
    let r = call(app, Method::GET, path, Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.body
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn population_figures_appear_only_once_k_people_are_in_the_group(pool: PgPool) {
    let k = 3;
    let app = seed::app(&pool, k);
    let read_at = Utc::now() - Duration::minutes(1);
    let received_at = Utc::now();
    let profile = |readings: &[(i16, i16, i16)]| Profile {
        readings: readings
            .iter()
            .map(|&(v, s, a)| Reading::new(read_at, v, s, a))
            .collect(),
        received_at: Some(received_at),
        connected: true,
        progress: Progress::Notified,
        ..Profile::earning(500_000)
    };
    // Person one's phone samples twice as often: each person still weighs the same.
    let first = seed::person(&app, &pool, &profile(&[(10, 20, 30), (30, 40, 50)])).await;
    seed::person(&app, &pool, &profile(&[(40, 60, 70)])).await;

    // k − 1 people: nothing shows.
    let mood = get(&app, "/v1/analytics/emotions/hourly").await;
    assert_eq!(mood["min_group_size"], 3);
    assert_eq!(mood["buckets"].as_array().unwrap().len(), 24);
    assert_withheld(&mood["buckets"], "hour");
    for path in [
        "/v1/analytics/credit-limits",
        "/v1/analytics/interest-rates",
    ] {
        let d = get(&app, path).await;
        assert_withheld(&d["bands"], "from");
        assert!(d["median"].is_null(), "{d}");
    }
    let decisions = get(&app, "/v1/analytics/decisions").await;
    assert_eq!(decisions["suppressed"], true);
    for figure in ["people", "offers", "approval_rate"] {
        assert!(decisions[figure].is_null(), "{decisions}");
    }
    assert_withheld(&decisions["declined_reasons"], "code");
    assert_withheld(&decisions["approved_reasons"], "code");
    let funnel = get(&app, "/v1/analytics/funnel").await;
    assert_withheld(&funnel["stages"], "stage");
    let ingest = get(&app, "/v1/analytics/ingest").await;
    assert_withheld(&ingest["series"], "minute");
    assert_eq!(ingest["connected"]["suppressed"], true);
    assert!(ingest["connected"]["phones"].is_null());

    // The k-th person: every group they complete shows.
    seed::person(&app, &pool, &profile(&[(-30, 50, 20)])).await;

    let mood = get(&app, "/v1/analytics/emotions/hourly").await;
    let hours = shown(&mood["buckets"]);
    assert_eq!(hours.len(), 1, "{mood}");
    let hour = hours[0];
    assert_eq!(hour["people"], 3);
    assert_eq!(hour["readings"], 4);
    // Mean of each person's mean: (20 + 40 − 30) / 3, not the readings' mean (12.5).
    assert_eq!(hour["valence"], 10.0);
    assert_eq!(hour["stress"], 46.7);
    assert_eq!(hour["arousal"], 43.3);

    let line = call(
        &app,
        Method::GET,
        &format!("/v1/users/{}/credit-limit", first.user_id),
        Some(ADMIN),
    )
    .await
    .body;
    for (path, field) in [
        ("/v1/analytics/credit-limits", "credit_limit_cents"),
        ("/v1/analytics/interest-rates", "interest_rate_bps"),
    ] {
        // Everyone earns the same, so everyone is in the band of the first person's line.
        let value = line[field].as_i64().unwrap();
        let d = get(&app, path).await;
        let bands = shown(&d["bands"]);
        assert_eq!(bands.len(), 1, "{d}");
        let band = bands[0];
        assert_eq!(band["people"], 3);
        assert!(band["from"].as_i64().unwrap() <= value, "{band} {value}");
        assert!(
            band["to"].as_i64().is_none_or(|to| value < to),
            "{band} {value}"
        );
        assert_eq!(d["median"].as_f64(), Some(value as f64));
        assert_eq!(
            d["bands"].as_array().unwrap().len(),
            if field == "credit_limit_cents" { 7 } else { 12 }
        );
    }

    let decisions = get(&app, "/v1/analytics/decisions").await;
    assert_eq!(decisions["suppressed"], false);
    assert_eq!(decisions["people"], 3);
    assert_eq!(decisions["offers"], 3);
    assert_eq!(decisions["approval_rate"], 1.0);
    // Every reason code is listed, counted or not; none was declined.
    assert_eq!(
        decisions["declined_reasons"].as_array().unwrap().len(),
        ReasonCode::ALL.len()
    );
    assert_withheld(&decisions["declined_reasons"], "code");
    for reason in shown(&decisions["approved_reasons"]) {
        assert_eq!(reason["people"], 3, "{reason}");
    }

    let funnel = get(&app, "/v1/analytics/funnel").await;
    let stages: Vec<(&str, i64, i64)> = funnel["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["people"].as_i64().unwrap(),
                s["offers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("assessed", 3, 3),
            ("approved", 3, 3),
            ("accepted", 3, 3),
            ("applied", 3, 3),
            ("notified", 3, 3)
        ]
    );

    let ingest = get(&app, "/v1/analytics/ingest").await;
    let minutes = shown(&ingest["series"]);
    assert_eq!(minutes.len(), 1, "{ingest}");
    assert_eq!(minutes[0]["readings"], 4);
    assert_eq!(minutes[0]["readings_per_second"], 0.1);
    // Read a minute before they arrived.
    let lag = minutes[0]["lag_p50_ms"].as_f64().unwrap();
    assert!((59_000.0..=61_000.0).contains(&lag), "{lag}");
    let connected = &ingest["connected"];
    assert_eq!(connected["suppressed"], false);
    assert_eq!(connected["phones"], 3);
    let online = connected["median_online_secs"].as_f64().unwrap();
    assert!((590.0..=700.0).contains(&online), "{online}");
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_persons_token_reaches_only_their_own_view(pool: PgPool) {
    let app = common::app(&pool, Arc::new(seed::IncomeModel), true);
    let read_at = Utc::now() - Duration::minutes(1);
    let ana = seed::person(
        &app,
        &pool,
        &Profile {
            readings: vec![
                Reading::new(read_at, 20, 30, 40),
                Reading::new(read_at, 40, 50, 60),
            ],
            progress: Progress::Applied,
            ..Profile::earning(500_000)
        },
    )
    .await;
    let bia = seed::person(&app, &pool, &Profile::earning(300_000)).await;

    for path in POPULATION_VIEWS {
        let r = call(&app, Method::GET, path, Some(&ana.token)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {:?}", r.body);
        assert_eq!(r.body["type"], "/problems/forbidden");
        let r = call(&app, Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let bias_view = format!("/v1/users/{}/analytics", bia.user_id);
    let r = call(&app, Method::GET, &bias_view, Some(&ana.token)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);

    let r = call(&app, Method::GET, "/v1/me", Some(&ana.token)).await;
    assert_eq!(r.body["role"], "user");
    assert_eq!(r.body["user_id"], ana.user_id.to_string());
    let r = call(&app, Method::GET, "/v1/me", Some(ADMIN)).await;
    assert_eq!(r.body["role"], "admin");
    assert!(r.body.get("user_id").is_none());

    let anas_view = format!("/v1/users/{}/analytics", ana.user_id);
    let own = call(&app, Method::GET, &anas_view, Some(&ana.token)).await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    let view = own.body;
    assert_eq!(view["window_hours"], 24);
    let mood = view["mood"].as_array().unwrap();
    assert_eq!(mood.len(), 24);
    let with_readings: Vec<&Value> = mood.iter().filter(|h| h["readings"] != 0).collect();
    assert_eq!(with_readings.len(), 1);
    assert_eq!(with_readings[0]["readings"], 2);
    assert_eq!(with_readings[0]["valence"], 30.0);
    assert_eq!(with_readings[0]["stress"], 40.0);
    assert_eq!(with_readings[0]["arousal"], 50.0);
    let offers = view["offers"].as_array().unwrap();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0]["approved"], true);
    assert_eq!(offers[0]["status"], "applied");
    assert!(offers[0]["reason_codes"].is_array());
    let pd = offers[0]["probability_of_default"].as_f64().unwrap();
    assert!((pd - seed::IncomeModel::probability_of_default(5_000.0)).abs() < 1e-9);
    assert_eq!(
        view["credit_line"]["credit_limit_cents"],
        offers[0]["credit_limit_cents"]
    );
    // A person with nothing yet sees an empty view, not an error.
    let r = call(&app, Method::GET, &bias_view, Some(&bia.token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["credit_line"].is_null());
    assert_eq!(r.body["offers"], Value::Array(Vec::new()));

    // The operator may look at anyone's view; nobody's view exists for a stranger.
    assert_eq!(get(&app, &anas_view).await, view);
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{}/analytics", uuid::Uuid::new_v4()),
        Some(ADMIN),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn windows_are_checked_at_the_door(pool: PgPool) {
    let app = seed::app(&pool, 3);
    for (path, status) in [
        ("/v1/analytics/emotions/hourly?hours=1", StatusCode::OK),
        ("/v1/analytics/emotions/hourly?hours=744", StatusCode::OK),
        (
            "/v1/analytics/emotions/hourly?hours=0",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/analytics/emotions/hourly?hours=745",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/analytics/emotions/hourly?hours=-1",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/analytics/emotions/hourly?hours=a",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/analytics/emotions/hourly?hour=5",
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/analytics/decisions?days=366", StatusCode::OK),
        (
            "/v1/analytics/decisions?days=0",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/analytics/funnel?days=367",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/v1/analytics/ingest?minutes=360", StatusCode::OK),
        (
            "/v1/analytics/ingest?minutes=361",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = call(&app, Method::GET, path, Some(ADMIN)).await;
        assert_eq!(r.status, status, "{path}: {:?}", r.body);
    }
    let r = call(
        &app,
        Method::GET,
        "/v1/analytics/emotions/hourly?hours=2",
        Some(ADMIN),
    )
    .await;
    assert_eq!(r.body["buckets"].as_array().unwrap().len(), 2);
    let r = call(
        &app,
        Method::GET,
        "/v1/analytics/emotions/hourly?hours=0",
        Some(ADMIN),
    )
    .await;
    assert_eq!(r.body["type"], "/problems/validation");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("between 1 and 744")
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_openapi_document_describes_the_analytics_views(pool: PgPool) {
    let app = seed::app(&pool, 3);
    let doc = call(&app, Method::GET, "/openapi.json", None).await.body;
    for path in POPULATION_VIEWS
        .into_iter()
        .chain(["/v1/users/{user_id}/analytics", "/v1/me"])
    {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    let params = &doc["paths"]["/v1/analytics/emotions/hourly"]["get"]["parameters"];
    assert_eq!(params[0]["name"], "hours");
    assert_eq!(params[0]["in"], "query");
    for schema in [
        "HourlyMood",
        "Distribution",
        "Decisions",
        "Funnel",
        "IngestView",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}
