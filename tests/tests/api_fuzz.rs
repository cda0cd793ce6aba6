//! The OpenAPI document is the contract: schemathesis (from PyPI) generates requests from
//! `/openapi.json` alone, valid and invalid, and sends them to the whole system running on a
//! fresh database. It must find no 5xx, no status the document does not list for the operation,
//! no body or header that does not match the document's schema, and no wrong content type.
//!
//! The fuzzer is given a seeded person, phone and offer (`schemathesis.toml` parameters), so the
//! operations about a person reach their real logic instead of answering 404 for random ids; a
//! second person is the one `DELETE /v1/users/{user_id}` erases.
//!
//! Needs schemathesis on the PATH (`pip install schemathesis`; `.ci/run` installs it), or
//! `ECS_SCHEMATHESIS=<binary>`.

use std::{process::Stdio, time::Duration};

use ecs_simulator::stack::BrokerChoice;
use ecs_tests::ready_stack;
use serde_json::{Value, json};
use tokio::process::Command;

/// What the run checks: every check that holds for any API, none that needs knowledge the
/// document cannot carry (e.g. "a schema-valid body is always accepted": a transaction dated
/// next year is schema-valid and rightly refused).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
     response_schema_conformance,response_headers_conformance";
/// Examples per operation: enough to reach every branch of the validation, quick enough for CI.
const EXAMPLES_PER_OPERATION: &str = "40";
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

fn schemathesis() -> String {
    if let Ok(path) = std::env::var("ECS_SCHEMATHESIS") {
        return path;
    }
    for name in ["st", "schemathesis"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!(
        "schemathesis is needed for this test: pip install schemathesis (or set ECS_SCHEMATHESIS)"
    );
}

/// The ids the fuzzer is given.
struct Seeded {
    user_id: String,
    erasable_user_id: String,
    device_id: &'static str,
    offer_id: String,
}

async fn post(client: &reqwest::Client, url: String, admin: &str, body: Value) -> Value {
    let response = client
        .post(&url)
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn seed(base: &str, admin: &str) -> Seeded {
    let client = reqwest::Client::new();
    let mut users = Vec::new();
    for name in ["Fuzz", "Erasable"] {
        let user = post(
            &client,
            format!("{base}/v1/users"),
            admin,
            json!({"display_name": name, "emotional_data_consent": true}),
        )
        .await;
        users.push(user["user_id"].as_str().unwrap().to_owned());
    }
    let user = &users[0];
    let now = chrono::Utc::now();
    let salaries: Vec<Value> = (1..=3)
        .map(|m| {
            json!({"external_ref": format!("salary-{m}"), "direction": "inflow",
                   "amount_cents": 500_000, "category": "salary",
                   "occurred_at": now.checked_sub_months(chrono::Months::new(m - 1)).unwrap() - chrono::Duration::hours(1)})
        })
        .collect();
    post(
        &client,
        format!("{base}/v1/users/{user}/transactions"),
        admin,
        json!({ "transactions": salaries }),
    )
    .await;
    let device_id = "FuzzPhone1";
    post(
        &client,
        format!("{base}/v1/users/{user}/devices"),
        admin,
        json!({ "device_id": device_id }),
    )
    .await;
    let offer = post(
        &client,
        format!("{base}/v1/users/{user}/credit-offers"),
        admin,
        json!({}),
    )
    .await;
    Seeded {
        user_id: user.clone(),
        erasable_user_id: users[1].clone(),
        device_id,
        offer_id: offer["offer_id"].as_str().unwrap().to_owned(),
    }
}

/// The seeded ids as fixed parameter values; the erasure gets its own person.
fn config(seeded: &Seeded) -> String {
    format!(
        r#"[parameters]
"path.user_id" = "{user}"
"path.offer_id" = "{offer}"
"path.device_id" = "{device}"

[[operations]]
include-path = "/v1/users/{{user_id}}"
include-method = "DELETE"
parameters = {{ "path.user_id" = "{erasable}" }}
"#,
        user = seeded.user_id,
        offer = seeded.offer_id,
        device = seeded.device_id,
        erasable = seeded.erasable_user_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_driven_fuzzer_finds_no_server_error_and_no_mismatch() {
    let binary = schemathesis();
    let (_db, stack) = ready_stack(BrokerChoice::Embedded).await;
    let base = stack.api_base.trim_end_matches('/').to_owned();
    let seeded = seed(&base, &stack.admin_token).await;
    let reports = tempfile::tempdir().unwrap();
    let config_file = reports.path().join("schemathesis.toml");
    std::fs::write(&config_file, config(&seeded)).unwrap();
    let mut command = Command::new(&binary);
    command
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--checks", CHECKS])
        .args(["--max-examples", EXAMPLES_PER_OPERATION])
        // Reproducible: the same examples every run, so a failure in CI fails here too.
        .args(["--seed", "20261201"])
        // One worker: CPython 3.11's ast.parse is not thread-safe, and hypothesis calls it to
        // describe strategies ("AST constructor recursion depth mismatch" with two).
        .args(["--workers", "1"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", stack.admin_token),
        ])
        .args(["--report-dir", &reports.path().display().to_string()])
        .env("NO_COLOR", "1")
        // Its cache (of earlier failures, replayed first) stays with this run, not the tree.
        .current_dir(reports.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .expect("schemathesis did not finish in time")
        .expect("schemathesis could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A run that tested nothing would also succeed.
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "schemathesis ran no operation:\n{stdout}"
    );
    eprintln!("{stdout}");
}
