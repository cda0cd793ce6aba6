//! The walking skeleton's story, end to end, against real Postgres and real brokers: phones
//! stream emotions, every reading is stored exactly once, offers are made and accepted, and the
//! phones hear that their new limit is in force.

use std::time::Duration;

use ecs_cloud::model::ModelKind;
use ecs_simulator::{
    demo::{self, DemoOptions, DemoReport},
    stack::{BrokerChoice, StackOptions},
};
use ecs_tests::ScratchDatabase;

async fn run_story(broker: BrokerChoice) -> (DemoReport, Vec<(String, i64, i64, i64)>) {
    ecs_telemetry::install_crypto_provider();
    let db = ScratchDatabase::create()
        .await
        .expect("Postgres reachable at DATABASE_URL");
    let options = DemoOptions {
        stack: StackOptions {
            database_url: db.url.clone(),
            broker,
            model: ModelKind::Scorecard,
            model_seed: None,
        },
        devices: 3,
        duration: Duration::from_secs(3),
        sample_rate_hz: 20.0,
        seed: 7,
        settle_timeout: Duration::from_secs(60),
    };
    let report = demo::run(&options, &mut |line| eprintln!("{line}"))
        .await
        .expect("the story runs");

    // Per device: stored count and the seq range. Exactly once and without gaps means
    // count == max - min + 1 and count == what the phone produced in total.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let per_device: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT device_id, count(*), min(seq), max(seq) FROM emotion_readings GROUP BY device_id",
    )
    .fetch_all(&pool)
    .await
    .expect("query readings");
    pool.close().await;
    db.drop_now().await.expect("drop scratch database");
    (report, per_device)
}

fn assert_story(report: &DemoReport, per_device: &[(String, i64, i64, i64)]) {
    assert!(report.ok, "problems: {:?}", report.problems);
    assert!(report.readings_produced > 0);
    assert_eq!(report.readings_stored, report.readings_produced);
    assert_eq!(report.readings_dropped_on_phone, 0);
    assert_eq!(report.offers_created, 3);
    assert!(
        report.offers_accepted > 0,
        "seed 7 approves at least one person"
    );
    assert_eq!(report.offers_applied, report.offers_accepted);
    assert!(report.notifications_received >= report.offers_accepted);

    assert_eq!(per_device.len(), 3);
    let total: i64 = per_device.iter().map(|d| d.1).sum();
    assert_eq!(total as u64, report.readings_produced);
    for (device, count, min, max) in per_device {
        assert_eq!(
            *count,
            max - min + 1,
            "device {device} has gaps or duplicates"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_over_the_embedded_broker_with_mutual_tls() {
    let (report, per_device) = run_story(BrokerChoice::Embedded).await;
    assert_story(&report, &per_device);
}

/// The same story through Mosquitto, a third-party broker, in plain MQTT 3.1.1: proof that
/// neither the phones nor the cloud depend on anything rumqttd-specific.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_over_mosquitto() {
    let (report, per_device) =
        run_story(BrokerChoice::External("mqtt://127.0.0.1:1883".into())).await;
    assert_story(&report, &per_device);
}
