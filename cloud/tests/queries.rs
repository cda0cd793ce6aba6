//! The example queries of docs/QUERIES.md, read from the file and run against a seeded database:
//! each must run as written and return the rows its heading promises. A query added to the file
//! without expectations here fails the test, and so does one that the schema no longer runs.

use std::collections::BTreeMap;

use axum::http::Method;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

mod common;
mod seed;

use common::ADMIN;
use seed::{Person, Profile, Progress, Reading, call};

const FINANCIAL_WORRY: i16 = 2;
const PURCHASE_INTENT: i16 = 1;

/// The ```sql blocks of docs/QUERIES.md, by the heading above each.
struct Queries {
    unrun: BTreeMap<String, String>,
}

impl Queries {
    fn read() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/QUERIES.md");
        let text = std::fs::read_to_string(path).expect("docs/QUERIES.md is readable");
        let mut unrun = BTreeMap::new();
        let (mut heading, mut block): (Option<String>, Option<String>) = (None, None);
        for line in text.lines() {
            if let Some(sql) = block.as_mut() {
                if line.trim_end() == "```" {
                    let heading = heading.clone().expect("a query block under a heading");
                    let sql = block.take().unwrap();
                    let previous = unrun.insert(heading.clone(), sql);
                    assert!(previous.is_none(), "two queries under {heading:?}");
                } else {
                    sql.push_str(line);
                    sql.push('\n');
                }
            } else if let Some(title) = line.strip_prefix("## ") {
                heading = Some(title.trim().to_owned());
            } else if line.trim_end() == "```sql" {
                block = Some(String::new());
            }
        }
        assert!(block.is_none(), "an unclosed ```sql block");
        assert!(
            unrun.len() >= 5,
            "docs/QUERIES.md has {} queries",
            unrun.len()
        );
        Self { unrun }
    }

    /// Runs the query under `heading` with `params`, as written and then as JSON rows (each row
    /// an object by column name, in the query's order).
    async fn run(&mut self, pool: &PgPool, heading: &str, params: &[Param]) -> Vec<Value> {
        let sql = self
            .unrun
            .remove(heading)
            .unwrap_or_else(|| panic!("no query under {heading:?} in docs/QUERIES.md"));
        let as_written = bind(sqlx::query(AssertSqlSafe(sql.clone())), params)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{heading:?} fails: {e}\n{sql}"));
        let body = sql.trim_end().trim_end_matches(';');
        let wrapped = format!("SELECT to_jsonb(q) FROM ({body}) AS q");
        let rows: Vec<Value> = bind_scalar(sqlx::query_scalar(AssertSqlSafe(wrapped)), params)
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), as_written.len(), "{heading:?}");
        rows
    }

    fn assert_all_run(self) {
        assert!(
            self.unrun.is_empty(),
            "queries in docs/QUERIES.md without expectations here: {:?}",
            self.unrun.keys().collect::<Vec<_>>()
        );
    }
}

enum Param {
    Person(Uuid),
    Int(i32),
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
type PgScalar<'q> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, Value, sqlx::postgres::PgArguments>;

fn bind<'q>(mut query: PgQuery<'q>, params: &[Param]) -> PgQuery<'q> {
    for p in params {
        query = match p {
            Param::Person(id) => query.bind(*id),
            Param::Int(n) => query.bind(*n),
        };
    }
    query
}

fn bind_scalar<'q>(mut query: PgScalar<'q>, params: &[Param]) -> PgScalar<'q> {
    for p in params {
        query = match p {
            Param::Person(id) => query.bind(*id),
            Param::Int(n) => query.bind(*n),
        };
    }
    query
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

async fn credit_limit(app: &axum::Router, person: &Person) -> i64 {
    let r = call(
        app,
        Method::GET,
        &format!("/v1/users/{}/credit-limit", person.user_id),
        Some(ADMIN),
    )
    .await;
    r.body["credit_limit_cents"].as_i64().unwrap()
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_documented_queries_return_what_they_promise(pool: PgPool) {
    // The default group size, the one the documented population queries write out (10).
    let app = seed::default_app(&pool);
    let now = Utc::now();
    let crowd_hour = now - Duration::hours(3);

    // Ten people earning R$ 5,000 a month, with credit lines, all read in one hour (valences
    // 0, 10, …, 90); two earning R$ 10,000, with larger lines.
    let mut crowd = Vec::new();
    for i in 0..10_i16 {
        let profile = Profile {
            readings: vec![Reading::new(crowd_hour, 10 * i, 50, 40)],
            progress: Progress::Applied,
            ..Profile::earning(500_000)
        };
        crowd.push(seed::person(&app, &pool, &profile).await);
    }
    for _ in 0..2 {
        let profile = Profile {
            progress: Progress::Applied,
            ..Profile::earning(1_000_000)
        };
        seed::person(&app, &pool, &profile).await;
    }
    // Bob earns too little for the smallest line; Cid earns nothing.
    let bob = seed::person(
        &app,
        &pool,
        &Profile {
            progress: Progress::Assessed,
            ..Profile::earning(80_000)
        },
    )
    .await;
    let cid = seed::person(
        &app,
        &pool,
        &Profile {
            progress: Progress::Assessed,
            ..Profile::earning(0)
        },
    )
    .await;
    // Ana, last: her accepted offer waits for the worker.
    let ana_hour = now - Duration::hours(2);
    let ana = seed::person(
        &app,
        &pool,
        &Profile {
            readings: vec![
                Reading::new(now - Duration::days(8), -40, 90, 80),
                Reading::new(now - Duration::days(4), 0, 20, 50).thinking(PURCHASE_INTENT, 30),
                Reading::new(now - Duration::days(3), -20, 30, 40).thinking(FINANCIAL_WORRY, 70),
                Reading::new(now - Duration::days(2), -35, 80, 75),
                Reading::new(ana_hour, 10, 40, 30),
                Reading::new(ana_hour, 30, 60, 50),
            ],
            progress: Progress::Accepted,
            ..Profile::earning(300_000)
        },
    )
    .await;

    let mut queries = Queries::read();

    let rows = queries
        .run(
            &pool,
            "A person's mood, hour by hour, over the last day",
            &[Param::Person(ana.user_id)],
        )
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["valence"], json!(20.0));
    assert_eq!(rows[0]["stress"], json!(50.0));
    assert_eq!(rows[0]["readings"], 2);

    let rows = queries
        .run(
            &pool,
            "A person's emotional events in the last week",
            &[Param::Person(ana.user_id)],
        )
        .await;
    let events: Vec<(i64, Value)> = rows
        .iter()
        .map(|r| (r["stress"].as_i64().unwrap(), r["had_thoughts"].clone()))
        .collect();
    // The wish to buy four days ago, the worry three days ago (both sealed: only that there
    // was a thought shows) and the stress two days ago; not the stress of eight days ago, not
    // the calm hours of today.
    assert_eq!(
        events,
        [(20, json!(true)), (30, json!(true)), (80, json!(false))],
        "{rows:?}"
    );
    assert!(time(&rows[0]["recorded_at"]) < time(&rows[1]["recorded_at"]));
    assert!(time(&rows[1]["recorded_at"]) < time(&rows[2]["recorded_at"]));

    let rows = queries
        .run(
            &pool,
            "High-risk customers by score threshold",
            &[Param::Int(800)],
        )
        .await;
    let risky: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_owned(),
                r["risk_score"].as_i64().unwrap(),
            )
        })
        .collect();
    // PD 30 % (no income) and 24.6 % (R$ 800); Ana's 14.2 % scores 858.
    assert_eq!(
        risky,
        [
            (cid.user_id.to_string(), 700),
            (bob.user_id.to_string(), 754)
        ]
    );

    let rows = queries
        .run(&pool, "The credit-limit distribution", &[])
        .await;
    // The crowd's band; the two larger lines are a band of two, left out.
    let limit = credit_limit(&app, &crowd[0]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["band"], limit / 500_000 + 1);
    assert_eq!(rows[0]["people"], 10);
    assert_eq!(rows[0]["from_brl"], limit / 100);
    assert_eq!(rows[0]["to_brl"], limit / 100);

    let rows = queries
        .run(
            &pool,
            "Why offers were declined, over the last 30 days",
            &[],
        )
        .await;
    let reasons: Vec<(&str, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                r["offers"].as_i64().unwrap(),
                r["people"].as_i64().unwrap(),
            )
        })
        .collect();
    // Seeded readings are not folded into features, so no decision used emotional data.
    assert_eq!(
        reasons,
        [
            ("emotional_data_not_used", 2, 2),
            ("limit_below_minimum", 1, 1),
            ("probability_of_default_too_high", 1, 1),
        ]
    );

    let rows = queries.run(&pool, "The worker's backlog", &[]).await;
    let anas_offer: Uuid =
        sqlx::query_scalar("SELECT offer_id FROM credit_offers WHERE user_id = $1")
            .bind(ana.user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["offer_id"], anas_offer.to_string());
    assert_eq!(rows[0]["attempts"], 0);
    assert!(rows[0]["last_error"].is_null());

    let rows = queries
        .run(&pool, "The population's hourly mood", &[])
        .await;
    // The crowd's hour only: Ana's hour has one person.
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["people"], 10);
    assert_eq!(rows[0]["valence"], json!(45.0));
    assert_eq!(rows[0]["stress"], json!(50.0));
    assert_eq!(rows[0]["arousal"], json!(40.0));

    queries.assert_all_run();
}
