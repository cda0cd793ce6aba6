//! Two `ecs-cloud` replicas on one broker and one database: the broker's shared subscription
//! splits the phones' batches between them, and what they stored together is exactly what the
//! phones produced, each reading once; then one replica is killed mid-stream and the other
//! takes the whole stream, still with nothing lost and nothing twice.
//!
//! Which replica stored which batch is not observed (both run in this process and share its
//! metrics recorder): the split is the broker's, and the test proves the union.

use std::time::Duration;

use ecs_edge_agent::{Agent, AgentConfig};
use ecs_protocol::DeviceId;
use ecs_simulator::{mobile::ApiClient, stack::BrokerChoice};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_store_the_union_of_the_stream_once_and_one_survives_the_other() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let second = stack
        .spawn_replica()
        .await
        .expect("a second replica starts");

    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let mut phones = Vec::new();
    for i in 0..4 {
        let user = admin
            .create_user(&format!("Replica person {i}"), true)
            .await
            .unwrap();
        let device = admin.register_device(user.user_id, None).await.unwrap();
        let device_id = DeviceId::parse(device.device_id).unwrap();
        let (broker, tls) = stack.device_access(&device_id).unwrap();
        let mut config = AgentConfig::new(device_id.clone(), broker);
        config.tls = tls;
        config.db_path = stack.workdir().join(format!("{device_id}.db"));
        config.sample_rate_hz = 100.0;
        config.batch_size = 20;
        config.flush_interval = Duration::from_millis(100);
        config.ack_timeout = Duration::from_secs(2);
        phones.push((device_id, Agent::start(config).await.expect("phone starts")));
    }

    // Both replicas take batches for a while, then the second dies as in a crash: what it had
    // taken and not acked comes back through the phones' resends, to the first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
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
        // Every reading the phone produced and did not drop is stored, once.
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
