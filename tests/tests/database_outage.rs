//! Postgres goes away mid-stream, as in a restart: every connection of the cloud is closed and
//! new ones are refused for a few seconds. Ingest acks nothing it did not commit, `/readyz`
//! says the database is gone while it is, ingest resumes by itself when it is back, and every
//! reading the phones produced is stored once.
//!
//! The outage is the scratch database's alone (`ALTER DATABASE … ALLOW_CONNECTIONS false` and
//! every backend terminated): restarting the server would cut off the tests running beside this
//! one.

use std::time::Duration;

use ecs_edge_agent::{Agent, AgentConfig};
use ecs_protocol::DeviceId;
use ecs_simulator::{mobile::ApiClient, stack::BrokerChoice};

async fn readiness(api_base: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{api_base}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_survives_a_database_outage_and_readyz_tells_the_truth() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let mut phones = Vec::new();
    for i in 0..2 {
        let user = admin
            .create_user(&format!("Outage person {i}"), true)
            .await
            .unwrap();
        let device = admin.register_device(user.user_id, None).await.unwrap();
        let device_id = DeviceId::parse(device.device_id).unwrap();
        let (broker, tls) = stack.device_access(&device_id).unwrap();
        let mut config = AgentConfig::new(device_id.clone(), broker);
        config.tls = tls;
        config.db_path = stack.workdir().join(format!("{device_id}.db"));
        config.sample_rate_hz = 50.0;
        config.batch_size = 20;
        config.flush_interval = Duration::from_millis(200);
        config.ack_timeout = Duration::from_secs(2);
        phones.push((device_id, Agent::start(config).await.expect("phone starts")));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    db.begin_outage().await.expect("the outage begins");
    let acked_at_outage: u64 = phones.iter().map(|(_, a)| a.stats().readings_acked).sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = readiness(&stack.api_base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["postgres"], false, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Nothing committed meanwhile, so (but for batches committed just before the cut, whose
    // acks may still have been on their way) nothing acked.
    let acked_during: u64 = phones.iter().map(|(_, a)| a.stats().readings_acked).sum();
    assert!(
        acked_during - acked_at_outage <= 2 * 8 * 20,
        "acked {} readings while the database was gone",
        acked_during - acked_at_outage
    );
    db.end_outage().await.expect("the outage ends");

    let back = tokio::time::Instant::now();
    loop {
        let (status, body) = readiness(&stack.api_base).await;
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "not ready 30 s after the database came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (_, agent) in &phones {
        agent.stop_sensor();
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for (device, agent) in &phones {
        assert!(
            agent.wait_drained(Duration::from_secs(60)).await,
            "phone {device} still holds unacknowledged readings: {:?}",
            agent.stats()
        );
        let stats = agent.stats();
        let (stored, distinct): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT seq) FROM emotion_readings WHERE device_id = $1",
        )
        .bind(device.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(stored, distinct, "phone {device}: a reading stored twice");
        assert_eq!(stats.readings_dropped, 0, "{stats:?}");
        assert_eq!(
            stored as u64, stats.readings_produced,
            "phone {device}: {stats:?}"
        );
    }
    for (_, agent) in phones {
        agent.shutdown().await.unwrap();
    }
    pool.close().await;
    drop(stack);
    db.drop_now().await.unwrap();
}
