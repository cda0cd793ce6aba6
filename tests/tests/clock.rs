//! A phone whose clock runs ten minutes fast: the cloud refuses its first readings (from the
//! future, dead-lettered), its acks carry the cloud's clock, and the phone corrects the times of
//! the readings after them, which are stored; the correction survives a restart.
//!
//! The phone's clock cannot be set in a test, so the fast clock is the agent's own: its buffer
//! file starts with a correction of +10 minutes, which is what a fast clock looks like to
//! everyone else.

use std::time::Duration;

use ecs_edge_agent::{Agent, AgentConfig, buffer::Buffer, status::Status};
use ecs_protocol::DeviceId;
use ecs_simulator::{mobile::ApiClient, stack::BrokerChoice};

const FAST_MS: i64 = 10 * 60 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_with_a_fast_clock_corrects_it_from_the_acks_and_its_readings_are_stored() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let user = admin.create_user("Fast clock", true).await.unwrap();
    let device = admin.register_device(user.user_id, None).await.unwrap();
    let device_id = DeviceId::parse(device.device_id).unwrap();
    let (broker, tls) = stack.device_access(&device_id).unwrap();
    let db_path = stack.workdir().join(format!("{device_id}.db"));
    Buffer::open(&db_path, &device_id, 100_000)
        .unwrap()
        .set_clock_offset_ms(FAST_MS)
        .unwrap();

    let mut config = AgentConfig::new(device_id.clone(), broker);
    config.tls = tls;
    config.db_path = db_path.clone();
    config.sample_rate_hz = 50.0;
    config.batch_size = 20;
    config.flush_interval = Duration::from_millis(200);
    let agent = Agent::start(config.clone()).await.expect("phone starts");
    assert_eq!(agent.stats().clock_offset_ms, FAST_MS);

    let started = tokio::time::Instant::now();
    while agent.stats().clock_offset_ms != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the clock was not corrected: {:?}",
            agent.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.stop_sensor();
    assert!(
        agent.wait_drained(Duration::from_secs(30)).await,
        "{:?}",
        agent.stats()
    );
    agent.shutdown().await.unwrap();

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE device_id = $1 AND reason LIKE 'implausible reading time%'",
    )
    .bind(device_id.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(refused >= 1, "the readings from the future were refused");
    let (stored, latest_ahead_ms): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                extract(epoch FROM max(recorded_at) - now())::float8 * 1000
         FROM emotion_readings WHERE device_id = $1",
    )
    .bind(device_id.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        stored >= 20,
        "readings after the correction are stored: {stored}"
    );
    let ahead = latest_ahead_ms.unwrap();
    assert!(
        ahead < 5_000.0,
        "stored readings carry the corrected time ({ahead} ms ahead of the database's clock)"
    );

    // The correction is in the file: the next run starts with it, and `status` shows it.
    assert_eq!(Status::read(&db_path).unwrap().clock_offset_ms, 0);
    let agent = Agent::start(config).await.expect("phone starts again");
    assert_eq!(agent.stats().clock_offset_ms, 0);
    agent.shutdown().await.unwrap();
    pool.close().await;
    drop(stack);
    db.drop_now().await.unwrap();
}
