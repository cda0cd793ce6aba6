//! The delivery guarantees under failure: the cloud crashes mid-stream and comes back, or the
//! broker does, and still every reading each phone produced is stored exactly once.

use std::time::Duration;

use ecs_edge_agent::{Agent, AgentConfig};
use ecs_protocol::DeviceId;
use ecs_simulator::{mobile::ApiClient, stack::BrokerChoice};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reading_is_lost_or_doubled_when_the_cloud_crashes_mid_stream() {
    ecs_telemetry::install_crypto_provider();
    let (db, mut stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let phones =
        ecs_tests::streaming_phones(&stack, 2, "Person", 50.0, Duration::from_secs(1)).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The phones keep sampling and publishing while no cloud is subscribed: the broker drops
    // those batches, and only the phones' resends can bring them in.
    stack
        .crash_and_restart_cloud(Duration::from_secs(2))
        .await
        .expect("cloud restarts");
    stack
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("new cloud ready");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let resent: u64 = ecs_tests::drain_and_check_each_reading_once(&stack.pool, phones)
        .await
        .iter()
        .map(|stats| stats.batches_resent)
        .sum();
    assert!(resent > 0, "the outage should have forced resends");
    stack.stop().await;
    db.drop_now().await.unwrap();
}

/// A phone whose ack timeout is far longer than the outage does not wait it out: the first ack
/// after the cloud's return overtakes what was lost meanwhile, and that is sent again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_cloud_restart_lost_batches_are_sent_again_without_waiting_for_their_timeout() {
    const ACK_TIMEOUT: Duration = Duration::from_secs(60);
    ecs_telemetry::install_crypto_provider();
    let (db, mut stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let user = admin.create_user("Patient Person", true).await.unwrap();
    let device = admin.register_device(user.user_id, None).await.unwrap();
    let device = DeviceId::parse(device.device_id).unwrap();
    let (broker, tls) = stack.device_access(&device).unwrap();
    let mut config = AgentConfig::new(device.clone(), broker);
    config.tls = tls;
    config.db_path = stack.workdir().join("patient.db");
    config.sample_rate_hz = 50.0;
    config.batch_size = 20;
    config.flush_interval = Duration::from_millis(200);
    config.ack_timeout = ACK_TIMEOUT;
    let agent = Agent::start(config).await.expect("phone starts");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // What the phone publishes during the outage reaches no cloud and is dropped by the broker.
    stack
        .crash_and_restart_cloud(Duration::from_secs(2))
        .await
        .expect("cloud restarts");
    let back = tokio::time::Instant::now();
    stack
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("new cloud ready");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.stop_sensor();
    // Far less than the ack timeout: only an early resend can drain it in this time.
    assert!(
        agent.wait_drained(ACK_TIMEOUT / 3).await,
        "still unacknowledged {:?} after the cloud's return: {:?}",
        back.elapsed(),
        agent.stats()
    );
    let stats = agent.stats();
    assert!(stats.batches_overtaken >= 1, "{stats:?}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emotion_readings WHERE device_id = $1")
            .bind(device.as_str())
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(stored as u64, stats.readings_produced, "{stats:?}");
    eprintln!(
        "drained {:?} after the cloud came back; {} batches resent at once",
        back.elapsed(),
        stats.batches_overtaken
    );
    agent.shutdown().await.unwrap();
    stack.stop().await;
    db.drop_now().await.unwrap();
}

/// The broker dies mid-stream (every connection closed, every queued message gone) and comes
/// back after a while on the same ports: the phones buffer meanwhile, reconnect by themselves
/// and resend, and every reading is stored once, in order per device.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reading_is_lost_or_doubled_when_the_broker_restarts_mid_stream() {
    ecs_telemetry::install_crypto_provider();
    let (db, mut stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let phones =
        ecs_tests::streaming_phones(&stack, 2, "Broker person", 50.0, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.stop_broker().await.expect("the broker stops");
    let produced_while_down: u64 = phones
        .iter()
        .map(|(_, a)| a.stats().readings_produced)
        .sum();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        phones
            .iter()
            .map(|(_, a)| a.stats().readings_produced)
            .sum::<u64>()
            > produced_while_down,
        "the sensors kept producing while the broker was down"
    );
    stack.start_broker().await.expect("the broker starts again");
    stack
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the cloud is ready again");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for stats in ecs_tests::drain_and_check_each_reading_once(&stack.pool, phones).await {
        assert!(stats.reconnects >= 1, "{stats:?}");
    }
    stack.stop().await;
    db.drop_now().await.unwrap();
}
