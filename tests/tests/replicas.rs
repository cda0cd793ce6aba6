//! Two `ecs-cloud` replicas on one broker and one database: the broker's shared subscription
//! splits the phones' batches between them, and what they stored together is exactly what the
//! phones produced, each reading once; then one replica is killed mid-stream and the other
//! takes the whole stream, still with nothing lost and nothing twice.
//!
//! Which replica stored which batch is not observed (both run in this process and share its
//! metrics recorder): the split is the broker's, and the test proves the union.

use std::time::Duration;

use ecs_simulator::stack::BrokerChoice;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_store_the_union_of_the_stream_once_and_one_survives_the_other() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let second = stack
        .spawn_replica()
        .await
        .expect("a second replica starts");

    let phones =
        ecs_tests::streaming_phones(&stack, 4, "Replica person", 100.0, Duration::from_secs(2))
            .await;

    // Both replicas take batches for a while, then the second dies as in a crash: what it had
    // taken and not acked comes back through the phones' resends, to the first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    ecs_tests::drain_and_check_each_reading_once(&pool, phones).await;
    pool.close().await;
    drop(stack);
    db.drop_now().await.unwrap();
}
