//! The dashboard in a real browser: headless Chromium loads `/dashboard` from the cloud's HTTP
//! server over a seeded database, with the operator's token and then with a person's, and the
//! test reads the page it drew. Every chart of the view must show data; a person's token shows
//! their own view, never the operator's. Screenshots go to a temporary directory, or to docs/
//! with `ECS_SAVE_SCREENSHOTS=1`.
//!
//! Needs Chromium (Debian's `chromium`; `.ci/run` installs it), or `ECS_CHROMIUM=<binary>`.

use std::{collections::BTreeMap, path::Path, process::Stdio, time::Duration};

use chrono::Utc;
use sqlx::PgPool;
use tokio::process::Command;

mod common;
mod seed;

use common::ADMIN;
use seed::{Person, Profile, Progress, Reading};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

const OPERATOR_CHARTS: [&str; 9] = [
    "mood",
    "limits",
    "rates",
    "reasons",
    "approved-reasons",
    "funnel",
    "ingest",
    "lag",
    "connected",
];
const PERSON_CHARTS: [&str; 3] = ["my-mood", "my-credit", "my-offers"];

fn chromium() -> String {
    if let Ok(path) = std::env::var("ECS_CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!("Chromium is needed for this test: apt-get install -y chromium (or set ECS_CHROMIUM)");
}

/// Runs headless Chromium on `url` until the page has had `budget_ms` of (virtual) time, and
/// returns what it printed (the DOM with `--dump-dom`).
async fn browse(url: &str, extra: &[String], budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BROWSER_TIMEOUT, command.output())
        .await
        .expect("Chromium did not finish in time")
        .expect("Chromium could not be started");
    assert!(
        output.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `data-points` of every element carrying `data-chart`, by chart name (`None`: never drawn).
fn charts(dom: &str) -> BTreeMap<String, Option<u64>> {
    let mut found = BTreeMap::new();
    for (start, _) in dom.match_indices("data-chart=\"") {
        let tag_start = dom[..start].rfind('<').unwrap();
        let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').unwrap()];
        let name = attribute(tag, "data-chart").unwrap();
        let points = attribute(tag, "data-points").map(|p| p.parse().unwrap());
        found.insert(name.to_owned(), points);
    }
    found
}

fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("{name}=\"");
    let start = tag.find(&needle)? + needle.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// Whether the element with this id carries the `hidden` attribute.
fn hidden(dom: &str, id: &str) -> bool {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} missing"));
    let tag_start = dom[..start].rfind('<').unwrap();
    let tag = &dom[tag_start..start + dom[start..].find('>').unwrap()];
    tag.contains(" hidden")
}

fn dump_dom() -> [String; 2] {
    ["--dump-dom".into(), "--window-size=1280,1200".into()]
}

async fn screenshot(base: &str, token: &str, file: &Path, height: u32) {
    browse(
        &format!("{base}/dashboard#token={token}"),
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size=1280,{height}"),
        ],
        8_000,
    )
    .await;
    let png = std::fs::read(file).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        file.display()
    );
}

/// Enough people in every group (k = 3): nine approved and notified, with phones connected and
/// readings in the last hours, three declined for having no income.
async fn population(app: &axum::Router, pool: &PgPool) -> Vec<Person> {
    let now = Utc::now();
    let mut approved = Vec::new();
    // Three salaries, three people each: three bands of limits and of rates.
    let salaries = [400_000_i64, 700_000, 1_200_000]
        .into_iter()
        .flat_map(|s| [s; 3]);
    for (n, salary) in salaries.enumerate() {
        let i = n as i16 % 4;
        let readings = (0..6_i16)
            .map(|h| {
                Reading::new(
                    now - chrono::Duration::hours(i64::from(h)) - chrono::Duration::minutes(2),
                    5 * h - 10 * i + 10,
                    30 + 8 * i + 3 * h,
                    40 + 5 * h,
                )
            })
            .collect();
        let profile = Profile {
            readings,
            // Three phones' batches arrive in each of three minutes.
            received_at: Some(now - chrono::Duration::minutes(4 * (n as i64 / 3))),
            connected: true,
            progress: Progress::Notified,
            ..Profile::earning(salary)
        };
        approved.push(seed::person(app, pool, &profile).await);
    }
    for _ in 0..3 {
        let profile = Profile {
            progress: Progress::Assessed,
            ..Profile::earning(0)
        };
        seed::person(app, pool, &profile).await;
    }
    approved
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_dashboard_draws_every_chart_for_the_operator_and_the_persons_own_view(pool: PgPool) {
    let app = seed::app(&pool, 3);
    let people = population(&app, &pool).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dom = browse(
        &format!("{base}/dashboard#token={ADMIN}"),
        &dump_dom(),
        6_000,
    )
    .await;
    assert!(!hidden(&dom, "operator"), "the operator view is hidden");
    assert!(hidden(&dom, "person"));
    let drawn = charts(&dom);
    for chart in OPERATOR_CHARTS {
        let points = drawn.get(chart).copied().flatten();
        assert!(
            points.is_some_and(|n| n > 0),
            "operator chart {chart} shows no data ({points:?}); charts: {drawn:?}"
        );
    }
    assert!(dom.contains("Population figures are shown only for groups of at least 3 people"));

    let ana = &people[0];
    let dom = browse(
        &format!("{base}/dashboard#token={}", ana.token),
        &dump_dom(),
        6_000,
    )
    .await;
    assert!(!hidden(&dom, "person"), "the person's view is hidden");
    assert!(
        hidden(&dom, "operator"),
        "a person's token shows the operator view"
    );
    let drawn = charts(&dom);
    for chart in PERSON_CHARTS {
        let points = drawn.get(chart).copied().flatten();
        assert!(
            points.is_some_and(|n| n > 0),
            "personal chart {chart} shows no data ({points:?}); charts: {drawn:?}"
        );
    }
    // The operator's charts were never drawn with a person's token.
    for chart in OPERATOR_CHARTS {
        assert_eq!(drawn.get(chart).copied().flatten(), None, "{chart}");
    }

    // A token that is no one's is sent back to the sign-in form.
    let dom = browse(
        &format!("{base}/dashboard#token=ecs_u_nobody"),
        &dump_dom(),
        4_000,
    )
    .await;
    assert!(!hidden(&dom, "login"));
    assert!(dom.contains("That token was not accepted."));

    let keep = std::env::var("ECS_SAVE_SCREENSHOTS").is_ok_and(|v| v == "1");
    let scratch = tempfile::tempdir().unwrap();
    let dir = if keep {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
    } else {
        scratch.path().to_owned()
    };
    screenshot(&base, ADMIN, &dir.join("dashboard-operator.png"), 1480).await;
    screenshot(&base, &ana.token, &dir.join("dashboard-person.png"), 820).await;
    server.abort();
}

/// `/docs` in a browser that can reach nothing but the cloud: every other host name fails to
/// resolve, so the page works only if everything it needs is served by the cloud itself.
#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_api_docs_load_with_no_network_and_list_the_credit_offer_operation(pool: PgPool) {
    let app = seed::app(&pool, 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let offline = [
        "--dump-dom".to_owned(),
        "--window-size=1280,1200".to_owned(),
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
        "--proxy-server=http://127.0.0.1:9".to_owned(),
        "--proxy-bypass-list=<-loopback>;127.0.0.1".to_owned(),
    ];
    let dom = browse(&format!("{base}/docs"), &offline, 8_000).await;
    // Swagger UI rendered the document it fetched from this server: the operations are there.
    assert!(
        dom.contains("/v1/users/{user_id}/credit-offers"),
        "the docs page did not list the credit-offer operation: {}",
        &dom[..dom.len().min(2_000)]
    );
    assert!(dom.contains("Empathic Credit System API"));
    assert!(
        dom.contains("opblock"),
        "operations are drawn as Swagger UI blocks"
    );
    server.abort();
}
