//! `ecs-edge-agent status` and `inbox`: a running agent's file, read by the binary while the
//! agent writes to it.

mod support;

use std::process::Command;
use std::time::Duration;

use ecs_edge_agent::Agent;
use ecs_protocol::{CreditType, DeviceId, Downlink, Notification, NotificationKind};
use serde_json::Value;
use support::{TestCloud, agent_config, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn edge_agent(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_inbox_read_a_running_agent_s_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, true).await;
    let agent = Agent::start(agent_config(&device, &db)).await.unwrap();
    cloud.next_batch(WAIT).await;
    let offers: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    for offer_id in &offers {
        cloud
            .send(&Downlink::NotificationV1(Notification {
                notification_id: Uuid::new_v4(),
                created_at_ms: 1_700_000_000_000,
                kind: NotificationKind::OfferApplied {
                    offer_id: *offer_id,
                    credit_limit_cents: 250_000,
                    interest_rate_bps: 2_490,
                    credit_type: CreditType::LongTerm,
                },
            }))
            .await;
        // One at a time, so their order of arrival is known.
        let before = agent.stats().notifications_received;
        eventually(WAIT, "the notification stored", || {
            agent.stats().notifications_received > before
        })
        .await;
    }
    eventually(WAIT, "readings acknowledged", || {
        agent.stats().readings_acked >= 20
    })
    .await;
    // The counters are saved every 2 s.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // While the agent runs and writes.
    let status: Value =
        serde_json::from_str(&edge_agent(&["status", "--db", &db_arg, "--json"])).unwrap();
    assert_eq!(status["device_id"], device.as_str());
    let saved = &status["last_run"];
    assert_eq!(saved["connected"], true);
    assert!(saved["readings_acked"].as_u64().unwrap() >= 20, "{status}");
    assert!(saved["batches_sent"].as_u64().unwrap() >= 1);
    assert!(saved["bytes_published"].as_u64().unwrap() > 0);
    assert!(saved["last_ack_at_ms"].as_i64().is_some());
    assert_eq!(saved["reconnects"], 0);
    assert!(status["buffered"].as_u64().is_some());
    let text = edge_agent(&["status", "--db", &db_arg]);
    assert!(
        text.contains("buffered (unacked)") && text.contains("last ack"),
        "{text}"
    );

    let lines: Vec<Value> = edge_agent(&["inbox", "--db", &db_arg, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let listed: Vec<String> = lines
        .iter()
        .map(|l| l["offer_id"].as_str().unwrap().to_owned())
        .collect();
    // Newest first.
    assert_eq!(listed, vec![offers[1].to_string(), offers[0].to_string()]);
    assert_eq!(lines[0]["kind"], "offer_applied");
    let table = edge_agent(&["inbox", "--db", &db_arg, "--limit", "1"]);
    assert_eq!(table.lines().count(), 1);

    agent.shutdown().await.unwrap();
    // After the agent stopped: the last counters it saved are there.
    let stopped: Value =
        serde_json::from_str(&edge_agent(&["status", "--db", &db_arg, "--json"])).unwrap();
    assert!(
        stopped["last_run"]["readings_acked"].as_u64().unwrap()
            >= saved["readings_acked"].as_u64().unwrap(),
        "{stopped}"
    );

    // A file that is not there is an error, not an empty status.
    let missing = Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
        .args(["status", "--db", "/nonexistent/edge.db"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// `GET /metrics` on the agent's own endpoint: one raw HTTP/1.1 exchange.
async fn scrape(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_counters_and_stops_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, true).await;
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(config).await.unwrap();
    let addr = agent.metrics_addr().expect("an endpoint was asked for");
    assert_ne!(addr.port(), 0);
    cloud.next_batch(WAIT).await;
    eventually(WAIT, "readings acknowledged", || {
        agent.stats().readings_acked > 0
    })
    .await;

    let response = scrape(addr, "/metrics").await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{device_id=\"{device}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    };
    assert!(value("ecs_agent_readings_acked_total") > 0.0);
    assert!(value("ecs_agent_readings_produced_total") >= value("ecs_agent_readings_acked_total"));
    assert_eq!(value("ecs_agent_connected"), 1.0);
    assert!(value("ecs_agent_bytes_published_total") > 0.0);
    let other = scrape(addr, "/").await.unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");

    agent.shutdown().await.unwrap();
    assert!(
        scrape(addr, "/metrics").await.is_err(),
        "still served after shutdown"
    );
}

#[tokio::test]
async fn a_metrics_address_in_use_or_not_on_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.metrics_addr = Some(taken.local_addr().unwrap());
    let refused = Agent::start(config.clone()).await.expect_err("refused");
    assert!(refused.to_string().contains("--metrics-addr"), "{refused}");
    config.metrics_addr = Some("0.0.0.0:0".parse().unwrap());
    let refused = Agent::start(config).await.expect_err("refused");
    assert!(refused.to_string().contains("loopback"), "{refused}");
}
