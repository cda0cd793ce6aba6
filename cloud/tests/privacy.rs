//! Privacy in code, proven against real Postgres: names sealed at rest, a backup restored after
//! an erasure opens nothing of the erased person, master-key rotation, the export, the consent
//! history and the access trail.

use std::{collections::BTreeSet, process::Command, sync::Arc};

use axum::http::{Method, StatusCode};
use ecs_cloud::{
    ingest::{Ingest, Outcome},
    keys::{KeyCache, Keyring, MasterKey},
    offers::OfferWorker,
    people,
    privacy::{export, thoughts},
};
use ecs_protocol::{
    DeviceId, Emotions, Intent, Reading, ReadingBatch, Thought, Uplink, encode_uplink, topic,
};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

mod common;

use common::{
    ADMIN, app,
    client::{FixedModel, assess, call, person},
    keyring,
};

/// Gives the person a phone and streams two readings through ingest, both with thoughts (a
/// purchase intent at 80 % and a money worry at 65 %, then a saving intent at 90 %); returns the
/// phone's id.
async fn stream_thoughts(pool: &PgPool, user_id: Uuid) -> DeviceId {
    let device = DeviceId::random();
    sqlx::query("INSERT INTO devices (device_id, user_id) VALUES ($1, $2)")
        .bind(device.as_str())
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
    let reading = |offset_ms, thoughts: &[(Intent, u8)]| Reading {
        offset_ms,
        emotions: Emotions::default(),
        valence: 10,
        arousal: 40,
        dominance: 50,
        stress: 20,
        focus: 60,
        thoughts: thoughts
            .iter()
            .map(|&(intent, confidence)| Thought { intent, confidence })
            .collect(),
    };
    let batch = ReadingBatch {
        device_id: device.clone(),
        first_seq: 0,
        base_time_ms: (chrono::Utc::now() - chrono::TimeDelta::minutes(1)).timestamp_millis(),
        readings: vec![
            reading(
                0,
                &[(Intent::PurchaseIntent, 80), (Intent::FinancialWorry, 65)],
            ),
            reading(1_000, &[(Intent::SavingIntent, 90)]),
        ],
    };
    let payload = encode_uplink(&Uplink::ReadingBatchV1(batch)).unwrap();
    let outcome = Ingest::new(pool.clone(), KeyCache::new(Arc::new(keyring())))
        .handle(&topic::uplink(&device), &payload)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Stored { inserted: 2, .. }),
        "{outcome:?}"
    );
    device
}

/// The thoughts of the person's readings as stored: in the clear (legacy columns) and sealed.
async fn stored_thoughts(pool: &PgPool, user_id: Uuid) -> Vec<(String, i64, Vec<i16>, Vec<u8>)> {
    sqlx::query_as(
        "SELECT device_id, seq, intents, thoughts_sealed FROM emotion_readings
         WHERE user_id = $1 ORDER BY seq",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn create(app: &axum::Router, name: &str) -> (Uuid, String) {
    let body = serde_json::json!({ "display_name": name, "emotional_data_consent": true });
    let r = call(
        app,
        Method::POST,
        "/v1/users",
        Some(ADMIN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (
        r.body["user_id"].as_str().unwrap().parse().unwrap(),
        r.body["api_token"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_name_is_stored_sealed_and_read_back_opened(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let name = "Joana Plaintext-Sentinel";
    let (user_id, token) = create(&app, name).await;

    let (clear, sealed): (Option<String>, Vec<u8>) =
        sqlx::query_as("SELECT display_name, display_name_sealed FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(clear, None);
    let needle = name.as_bytes();
    assert!(
        !sealed.windows(needle.len()).any(|w| w == needle),
        "the sealed column holds the name in the clear"
    );
    // Nowhere else either: no text column of any table holds it.
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users u WHERE u::text LIKE '%Plaintext-Sentinel%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!found);

    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["display_name"], name);

    // Bound to its owner: the same sealed bytes under someone else's id do not open.
    let (other, _) = create(&app, "Other").await;
    sqlx::query("UPDATE users SET display_name_sealed = $2 WHERE user_id = $1")
        .bind(other)
        .bind(&sealed)
        .execute(&pool)
        .await
        .unwrap();
    assert!(people::view(&pool, &keyring(), other).await.is_err());
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn names_stored_before_encryption_are_sealed_at_start(pool: PgPool) {
    let user_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO users (user_id, display_name, emotional_data_consent) VALUES ($1, 'Old Row', false)",
    )
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    let keys = keyring();
    assert_eq!(
        ecs_cloud::keys::seal_legacy_names(&pool, &keys)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ecs_cloud::keys::seal_legacy_names(&pool, &keys)
            .await
            .unwrap(),
        0
    );
    let clear: Option<String> =
        sqlx::query_scalar("SELECT display_name FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(clear, None);
    assert_eq!(
        people::view(&pool, &keys, user_id)
            .await
            .unwrap()
            .display_name,
        "Old Row"
    );
}

/// Runs a command, panicking with its stderr when it fails.
fn run(command: &mut Command) -> Vec<u8> {
    let out = command.output().expect("pg_dump and psql are installed");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn thoughts_are_stored_sealed_and_exported_opened(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user_id, token) = create(&app, "Thinking Person").await;
    stream_thoughts(&pool, user_id).await;

    // Read the table directly: nothing in the clear, and each sealed value opens only as the
    // thoughts of its own reading, with its owner's key.
    let rows = stored_thoughts(&pool, user_id).await;
    assert_eq!(rows.len(), 2);
    let key = keyring().load(&pool, user_id).await.unwrap().unwrap();
    let (stranger, _) = create(&app, "Someone Else").await;
    let strangers_key = keyring().load(&pool, stranger).await.unwrap().unwrap();
    for (device, seq, clear, sealed) in &rows {
        assert!(clear.is_empty(), "intents in the clear: {clear:?}");
        assert!(thoughts::open(&key, device, *seq, sealed).is_ok());
        assert!(thoughts::open(&key, device, seq + 1, sealed).is_err());
        assert!(thoughts::open(&strangers_key, device, *seq, sealed).is_err());
    }
    let first = thoughts::open(&key, &rows[0].0, 0, &rows[0].3).unwrap();
    assert_eq!(
        (first.intents, first.confidences),
        (vec![1, 2], vec![80, 65])
    );

    // The person's export shows them as the sensor sent them.
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user_id}/export"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let readings = r.body["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0]["intents"], serde_json::json!([1, 2]));
    assert_eq!(
        readings[0]["intent_confidence"],
        serde_json::json!([80, 65])
    );
    assert_eq!(readings[1]["intents"], serde_json::json!([3]));
    assert_eq!(readings[1]["intent_confidence"], serde_json::json!([90]));
    assert!(
        readings[0].get("thoughts_sealed").is_none(),
        "{}",
        readings[0]
    );
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn thoughts_stored_before_sealing_are_sealed_in_the_background(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user_id, _) = create(&app, "Legacy Person").await;
    let device = stream_thoughts(&pool, user_id).await;
    // As a reading written before migration 0008 was: its thoughts in the clear.
    sqlx::query(
        "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
             surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
             stress, focus, intents, intent_confidence)
         SELECT $1, s, $2, now(), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, '{4,5}', '{70,30}'
         FROM generate_series(10, 1209) AS s",
    )
    .bind(device.as_str())
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    let keys = KeyCache::new(Arc::new(keyring()));
    let left = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM emotion_readings WHERE cardinality(intents) > 0",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // Cut mid-work (as a replica stopping) again and again, each pass given a little longer:
    // a cut loses at most the batch in its transaction, and a later pass goes on from there. A
    // pass right after a cut may find the cut transaction's rows still locked (its rollback is
    // sent later) and end early without them: passes go on until none is left.
    let (mut cuts, mut passes) = (0, 0);
    while left().await > 0 {
        passes += 1;
        assert!(passes < 1_000, "never finished");
        let budget = std::time::Duration::from_millis(2 * (passes + 1));
        if tokio::time::timeout(budget, thoughts::seal_legacy(&pool, &keys))
            .await
            .is_err()
        {
            cuts += 1;
        }
    }
    assert!(cuts > 0, "never cut: make the work longer");
    let again = thoughts::seal_legacy(&pool, &keys).await.unwrap();
    assert_eq!(again, thoughts::LegacySealing::default(), "idempotent");
    let key = keyring().load(&pool, user_id).await.unwrap().unwrap();
    let rows = stored_thoughts(&pool, user_id).await;
    assert_eq!(rows.len(), 1_202);
    for (device, seq, clear, sealed) in rows.iter().skip(2) {
        assert!(clear.is_empty());
        let opened = thoughts::open(&key, device, *seq, sealed).unwrap();
        assert_eq!(
            (opened.intents, opened.confidences),
            (vec![4, 5], vec![70, 30])
        );
    }
}

/// A person as an older version stored them: a name in the clear, no data key, and `n`
/// readings with thoughts in the clear.
async fn legacy_person(pool: &PgPool, n: i64) -> Uuid {
    let user_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
         VALUES ($1, 'Old Row', true, now())",
    )
    .bind(user_id)
    .execute(pool)
    .await
    .unwrap();
    let device = DeviceId::random();
    sqlx::query("INSERT INTO devices (device_id, user_id) VALUES ($1, $2)")
        .bind(device.as_str())
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
             surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
             stress, focus, intents, intent_confidence)
         SELECT $1, s, $2, now(), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, '{2}', '{60}'
         FROM generate_series(1, $3) AS s",
    )
    .bind(device.as_str())
    .bind(user_id)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    user_id
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn legacy_sealing_never_makes_an_erasure_wait(pool: PgPool) {
    let user_id = legacy_person(&pool, 50).await;
    // The erasure holds the person's row first (as `PersonTx` does)...
    let mut erasure = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *erasure)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *erasure)
        .await
        .unwrap();
    // ...while the sealer wants to make the person a key, which needs that row.
    let keys = KeyCache::new(Arc::new(keyring()));
    let sealing = tokio::spawn({
        let (pool, keys) = (pool.clone(), keys.clone());
        async move { thoughts::seal_legacy(&pool, &keys).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The cascade reaches the readings: the sealer holds none of them while it waits.
    sqlx::query("DELETE FROM users WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *erasure)
        .await
        .expect("the erasure is not made to wait for the readings");
    erasure.commit().await.unwrap();
    let done = sealing.await.unwrap().unwrap();
    assert_eq!(done.sealed, 0, "nothing left of the person to seal");
    assert!(keyring().load(&pool, user_id).await.unwrap().is_none());
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn legacy_sealing_works_on_one_connection_and_passes_over_a_key_it_cannot_open(pool: PgPool) {
    let unopenable = legacy_person(&pool, 3).await;
    let others = [
        legacy_person(&pool, 700).await,
        legacy_person(&pool, 2).await,
    ];
    // A key wrapped by a master key this replica does not hold (retired too early).
    sqlx::query(
        "INSERT INTO keystore.person_keys (user_id, master_key_id, wrapped_key)
         VALUES ($1, 'retired-and-gone', decode(repeat('00', 60), 'hex'))",
    )
    .bind(unopenable)
    .execute(&pool)
    .await
    .unwrap();
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let keys = KeyCache::new(Arc::new(keyring()));
    let done = thoughts::seal_legacy(&one, &keys).await.unwrap();
    assert_eq!(
        done,
        thoughts::LegacySealing {
            sealed: 702,
            people_skipped: 1
        }
    );
    for user_id in others {
        let key = keyring().load(&pool, user_id).await.unwrap().unwrap();
        for (device, seq, clear, sealed) in stored_thoughts(&pool, user_id).await {
            assert!(clear.is_empty());
            let opened = thoughts::open(&key, &device, seq, &sealed).unwrap();
            assert_eq!((opened.intents, opened.confidences), (vec![2], vec![60]));
        }
    }
    let still_clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emotion_readings WHERE user_id = $1 AND cardinality(intents) > 0",
    )
    .bind(unopenable)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(still_clear, 3, "left as they were, for the next pass");
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn a_backup_restored_after_an_erasure_opens_nothing_of_the_erased_person(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (erased, _) = create(&app, "Erased Person").await;
    let (kept, _) = create(&app, "Kept Person").await;
    stream_thoughts(&pool, erased).await;
    stream_thoughts(&pool, kept).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url_of = |db: &str| {
        let (base, _) = server.rsplit_once('/').unwrap();
        format!("{base}/{db}")
    };

    // The data's backup, taken before the erasure (the key store is backed up on its own).
    let dump = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("pg_dump")
        .args(["--no-owner", "--exclude-schema=keystore", "--file"])
        .arg(dump.path())
        .arg(url_of(&database)));
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{erased}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Restored after it, next to the current key store.
    let restored = format!("ecs_restore_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url_of("postgres")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {restored}")))
        .execute(&mut admin)
        .await
        .unwrap();
    run(Command::new("psql")
        .args(["--quiet", "--set", "ON_ERROR_STOP=1", "--file"])
        .arg(dump.path())
        .arg(url_of(&restored)));
    let keystore = run(Command::new("pg_dump")
        .args(["--no-owner", "--schema=keystore"])
        .arg(url_of(&database)));
    let keystore_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keystore_file.path(), keystore).unwrap();
    run(Command::new("psql")
        .args(["--quiet", "--set", "ON_ERROR_STOP=1", "--file"])
        .arg(keystore_file.path())
        .arg(url_of(&restored)));

    let restored_pool = PgPool::connect(&url_of(&restored)).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&restored_pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the backup holds the erased person's row");
    let keys = keyring();
    assert_eq!(
        people::view(&restored_pool, &keys, kept)
            .await
            .unwrap()
            .display_name,
        "Kept Person"
    );
    assert!(
        keys.load(&restored_pool, erased).await.unwrap().is_none(),
        "the erased person's data key is gone"
    );
    assert!(people::view(&restored_pool, &keys, erased).await.is_err());
    // Their readings are in the backup too, with their thoughts sealed under the shredded key;
    // everyone else's open.
    let erased_rows = stored_thoughts(&restored_pool, erased).await;
    assert_eq!(
        erased_rows.len(),
        2,
        "the backup holds the erased person's readings"
    );
    assert!(erased_rows.iter().all(|(_, _, clear, _)| clear.is_empty()));
    let kept_key = keys.load(&restored_pool, kept).await.unwrap().unwrap();
    for (device, seq, _, sealed) in stored_thoughts(&restored_pool, kept).await {
        thoughts::open(&kept_key, &device, seq, &sealed).unwrap();
    }
    restored_pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {restored} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn rotation_rewraps_every_key_and_the_old_master_key_is_no_longer_needed(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let mut people_ids = Vec::new();
    for i in 0..7 {
        people_ids.push(create(&app, &format!("Person {i}")).await.0);
    }
    let old = keyring();
    let new_key = MasterKey::random();
    let during = Keyring::new(new_key.clone(), vec![old.current().clone()]);
    // Everything opens before, and during (a replica holding both keys).
    for id in &people_ids {
        people::view(&pool, &old, *id).await.unwrap();
        people::view(&pool, &during, *id).await.unwrap();
    }
    assert_eq!(during.rotate(&pool, 3).await.unwrap(), 7);
    assert_eq!(during.rotate(&pool, 3).await.unwrap(), 0, "idempotent");
    let census = Keyring::census(&pool).await.unwrap();
    assert_eq!(census, vec![(new_key.id().to_owned(), 7)]);
    // After: the new key alone opens everything; the old one alone opens nothing.
    let after = Keyring::new(new_key, vec![]);
    for (i, id) in people_ids.iter().enumerate() {
        let view = people::view(&pool, &after, *id).await.unwrap();
        assert_eq!(view.display_name, format!("Person {i}"));
        assert!(people::view(&pool, &old, *id).await.is_err());
    }
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_export_holds_every_kind_of_row_the_person_has(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    let user_id: Uuid = user.parse().unwrap();
    // An offer, accepted and applied (assessment, offer, outbox, credit line, history,
    // notification), a reading, a proactive check, a dead letter of their phone, an admin read.
    let offer = assess(&app, &user, &token).await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/credit-offers/{offer}/accept"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: Arc::new(tokio::sync::Notify::new()),
        poll_interval: std::time::Duration::from_secs(1),
    };
    worker.process_next().await.unwrap();
    let device: String = sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
             surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
             stress, focus)
         VALUES ($1, 0, $2, now(), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)",
    )
    .bind(&device)
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO proactive_checks (check_id, user_id, signal, outcome, probability_of_default)
         VALUES (gen_random_uuid(), $1, '{}', 'declined', 0.3)",
    )
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (topic, device_id, reason, payload) VALUES ('t', $1, 'r', '\\x01')",
    )
    .bind(&device)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO emotion_features (user_id, readings_count, ew_weight, mean_valence,
             valence_variance, mean_arousal, mean_stress, stress_share, impulsivity,
             purchase_intent, financial_worry, saving_intent, first_reading_at, last_reading_at)
         VALUES ($1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, now(), now())
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (lookup_sha256, user_id, request_sha256, status, nonce, sealed_answer)
         VALUES (sha256('k'), $1, sha256('r'), 201, '\\x00', '\\x00')",
    )
    .bind(user_id)
    .execute(&pool)
    .await
    .unwrap();
    call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}"),
        Some(ADMIN),
        None,
    )
    .await;

    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}/export"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let doc = r.body;
    assert_eq!(doc["format"], "ecs-export-v1");
    assert_eq!(doc["profile"]["display_name"], "Ana");
    for (section, _, _) in export::SECTIONS {
        let rows = doc[*section]
            .as_array()
            .unwrap_or_else(|| panic!("{section} is not a list: {doc}"));
        assert!(!rows.is_empty(), "the export's {section} is empty");
    }
    assert_eq!(doc["readings"].as_array().unwrap().len(), 1);
    assert_eq!(doc["readings"][0]["stress"], 12, "{}", doc["readings"]);
    // No secret leaves: token digests and sealed answers are not in it.
    let text = doc.to_string();
    assert!(!text.contains("token_sha256") && !text.contains("sealed_answer"));

    // Every table about a person is a section or has its reason not to be one.
    let covered: BTreeSet<&str> = export::SECTIONS
        .iter()
        .map(|(_, table, _)| *table)
        .chain(export::NOT_EXPORTED.iter().map(|(table, _)| *table))
        .collect();
    let personal: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT table_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND column_name IN ('user_id', 'device_id')
           AND table_name NOT IN (SELECT table_name FROM information_schema.views)
           -- A partition's rows are its parent's (emotion_readings by day).
           AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in personal {
        assert!(
            covered.contains(table.as_str()),
            "table {table} holds data about people but is not in the export \
             (add a section in cloud::privacy::export, or say why not in NOT_EXPORTED)"
        );
    }

    // Someone else's export is not theirs to take; the admin's read of it is on the trail.
    let (_, stranger) = create(&app, "Stranger").await;
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}/export"),
        Some(&stranger),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{}/export", Uuid::new_v4()),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn the_consent_history_is_append_only_and_the_person_sees_it(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user_id, token) = create(&app, "Bea").await;
    let consent = |value: bool| format!(r#"{{"emotional_data_consent":{value}}}"#);
    let path = format!("/v1/users/{user_id}/consent");
    call(
        &app,
        Method::PUT,
        &path,
        Some(&token),
        Some(&consent(false)),
    )
    .await;
    call(
        &app,
        Method::PUT,
        &path,
        Some(&token),
        Some(&consent(false)),
    )
    .await;
    call(&app, Method::PUT, &path, Some(ADMIN), Some(&consent(true))).await;

    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user_id}/consent-history"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let events: Vec<(bool, String)> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["granted"].as_bool().unwrap(),
                e["recorded_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Given at creation (by the admin), withdrawn by the person (once: the repeat changed
    // nothing), given again by the admin.
    assert_eq!(
        events,
        vec![
            (true, "admin".into()),
            (false, "self".into()),
            (true, "admin".into())
        ]
    );
    assert!(
        r.body
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["purpose"] == "emotional_data")
    );

    for statement in [
        "UPDATE consent_events SET granted = NOT granted",
        "DELETE FROM consent_events",
    ] {
        let refused = sqlx::query(statement).execute(&pool).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    // Erasure takes the history with the person.
    let r = call(
        &app,
        Method::DELETE,
        &format!("/v1/users/{user_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[sqlx::test(migrator = "ecs_cloud::MIGRATOR")]
async fn every_admin_read_of_a_person_is_on_their_access_trail(pool: PgPool) {
    let app = app(&pool, Arc::new(FixedModel(0.05)), true);
    let (user, token) = person(&app).await;
    let offer = assess(&app, &user, &token).await;

    // The person's own reads are not listed; the admin's are, with the route read.
    call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}"),
        Some(&token),
        None,
    )
    .await;
    for path in [
        format!("/v1/users/{user}"),
        format!("/v1/users/{user}/emotional-profile"),
        format!("/v1/credit-offers/{offer}"),
        format!("/v1/users/{user}/notifications"),
    ] {
        call(&app, Method::GET, &path, Some(ADMIN), None).await;
    }
    // A HEAD is served by the GET handler: a read too. Minting the person's token is recorded:
    // that token reads as the person.
    call(
        &app,
        Method::HEAD,
        &format!("/v1/users/{user}"),
        Some(ADMIN),
        None,
    )
    .await;
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/tokens"),
        Some(ADMIN),
        None,
    )
    .await;
    let token = r.body["api_token"].as_str().unwrap().to_owned();
    // An assessment's answer and an accepted offer disclose the person's data too.
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/users/{user}/credit-offers"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let second = r.body["offer_id"].as_str().unwrap().to_owned();
    let r = call(
        &app,
        Method::POST,
        &format!("/v1/credit-offers/{second}/accept"),
        Some(ADMIN),
        None,
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let r = call(
        &app,
        Method::GET,
        &format!("/v1/users/{user}/access-log"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let resources: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        vec![
            "GET /v1/users/{user_id}",
            "GET /v1/users/{user_id}/emotional-profile",
            "GET /v1/credit-offers/{offer_id}",
            "GET /v1/users/{user_id}/notifications",
            "HEAD /v1/users/{user_id}",
            "POST /v1/users/{user_id}/tokens",
            "POST /v1/users/{user_id}/credit-offers",
            "POST /v1/credit-offers/{offer_id}/accept",
        ]
    );
    let first: &Value = &r.body[0];
    assert_eq!(first["principal"], "admin");
    assert!(first["accessed_at"].is_string());

    // The trail is append-only too.
    assert!(
        sqlx::query("DELETE FROM data_access_log")
            .execute(&pool)
            .await
            .is_err()
    );
}
