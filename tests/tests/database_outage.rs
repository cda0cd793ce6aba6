//! Postgres goes away mid-stream, as in a restart: every connection of the cloud is closed and
//! new ones are refused for a few seconds. Ingest acks nothing it did not commit, `/readyz`
//! says the database is gone while it is, ingest resumes by itself when it is back, and every
//! reading the phones produced is stored once.
//!
//! The outage is the scratch database's alone (`ALTER DATABASE … ALLOW_CONNECTIONS false` and
//! every backend terminated): restarting the server would cut off the tests running beside this
//! one.

use std::time::Duration;

use ecs_simulator::stack::BrokerChoice;

async fn readiness(api_base: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{api_base}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_survives_a_database_outage_and_readyz_tells_the_truth() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let phones =
        ecs_tests::streaming_phones(&stack, 2, "Outage person", 50.0, Duration::from_secs(2)).await;
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
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    ecs_tests::drain_and_check_each_reading_once(&pool, phones).await;
    pool.close().await;
    drop(stack);
    db.drop_now().await.unwrap();
}
