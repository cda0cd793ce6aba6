//! Retention: raw emotional readings and dead letters are kept for a window, then deleted; and
//! the readings' day partitions are made ahead of the readings that will fill them.
//!
//! Raw readings are sensitive personal data (LGPD Art. 11) needed only until they are folded into
//! the person's features and available for a while for support and audit; the features
//! themselves (one row a person, another table) stay. Readings go a whole day at a time: a day's
//! partition is dropped once its last reading is past the window, so a reading is kept between
//! `readings_days` and `readings_days` + 1 days, and deleting never leaves dead rows behind
//! (`partitions`). The few readings in the default partition (no day table took them) and the
//! dead letters are deleted in bounded chunks, so that no statement holds long locks or bloats
//! one transaction. Several replicas can run a pass at once harmlessly.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{error::Result, ingest::MAX_READING_AGE, partitions};

/// Rows deleted per statement.
const CHUNK: i64 = 10_000;
/// How often a pass runs.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// What to keep, in days.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub readings_days: u32,
    pub dead_letters_days: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Readings deleted: those of the dropped partitions and those deleted from the default one.
    pub readings: u64,
    /// Day partitions dropped.
    pub partitions_dropped: u64,
    /// Day partitions created ahead.
    pub partitions_created: u64,
    pub dead_letters: u64,
    /// Idempotency keys past their retention (`idempotency::RETENTION_HOURS`).
    pub idempotency_keys: u64,
}

impl Retention {
    /// Readings taken before this are past the window.
    fn readings_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - TimeDelta::days(i64::from(self.readings_days))
    }

    /// One pass at `now` (the database's clock decides for the rows deleted one by one): drops
    /// the day partitions past the window, deletes what else is past it, and creates the day
    /// partitions from the oldest day ingest still accepts (or the window's start, if later) to
    /// [`partitions::DAYS_AHEAD`] ahead.
    pub async fn purge(&self, pool: &PgPool) -> Result<Purged> {
        let now = Utc::now();
        let cutoff = self.readings_cutoff(now);
        let mut purged = Purged::default();
        for dropped in partitions::drop_older_than(pool, cutoff).await? {
            purged.partitions_dropped += 1;
            purged.readings += dropped.readings;
        }
        let from = (now - MAX_READING_AGE).max(cutoff).date_naive();
        purged.partitions_created = partitions::ensure(pool, from, now).await?.len() as u64;
        loop {
            let n = sqlx::query(
                "DELETE FROM emotion_readings_default WHERE ctid = ANY (ARRAY(
                     SELECT ctid FROM emotion_readings_default
                     WHERE recorded_at < now() - make_interval(days => $1)
                     LIMIT $2))",
            )
            .bind(i32::try_from(self.readings_days).unwrap_or(i32::MAX))
            .bind(CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
            purged.readings += n;
            if n < CHUNK as u64 {
                break;
            }
        }
        loop {
            let n = sqlx::query(
                "DELETE FROM dead_letters WHERE dead_letter_id IN (
                     SELECT dead_letter_id FROM dead_letters
                     WHERE received_at < now() - make_interval(days => $1)
                     LIMIT $2)",
            )
            .bind(i32::try_from(self.dead_letters_days).unwrap_or(i32::MAX))
            .bind(CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
            purged.dead_letters += n;
            if n < CHUNK as u64 {
                break;
            }
        }
        purged.idempotency_keys = crate::idempotency::purge(pool).await?;
        metrics::counter!("ecs_retention_readings_deleted_total").increment(purged.readings);
        metrics::counter!("ecs_retention_partitions_dropped_total")
            .increment(purged.partitions_dropped);
        metrics::counter!("ecs_retention_dead_letters_deleted_total")
            .increment(purged.dead_letters);
        Ok(purged)
    }

    /// Purges at start and then every [`INTERVAL`] until `shutdown`. A failed pass (Postgres
    /// down) is logged and retried at the next interval.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match self.purge(&pool).await {
                Ok(p) if p != Purged::default() => {
                    info!(
                        readings = p.readings,
                        partitions_dropped = p.partitions_dropped,
                        partitions_created = p.partitions_created,
                        dead_letters = p.dead_letters,
                        "retention purge"
                    )
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention purge failed; retrying next interval"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn old_readings_and_dead_letters_go_recent_ones_stay(pool: PgPool) {
        let user = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
             VALUES ($1, 'Ana', true, now())",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO devices (device_id, user_id) VALUES ('phone1', $1)")
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        // Readings 0..100 days old, one a day; dead letters likewise.
        sqlx::query(
            "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
                 surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
                 stress, focus)
             SELECT 'phone1', d, $1, now() - make_interval(days => d), 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0
             FROM generate_series(0, 99) AS d",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO dead_letters (received_at, topic, reason, payload)
             SELECT now() - make_interval(days => d), 't', 'r', '\\x00'
             FROM generate_series(0, 99) AS d",
        )
        .execute(&pool)
        .await
        .unwrap();

        let retention = Retention {
            readings_days: 90,
            dead_letters_days: 30,
        };
        let purged = retention.purge(&pool).await.unwrap();
        // Ages 91..=99 (and the one exactly at the boundary, a hair older than 90 days).
        assert_eq!(purged.readings, 10);
        assert_eq!(purged.dead_letters, 70);
        let oldest: i64 = sqlx::query_scalar("SELECT max(seq) FROM emotion_readings")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(oldest, 89);
        assert_eq!(retention.purge(&pool).await.unwrap(), Purged::default());
    }

    /// A reading of `device` taken `age` ago, inserted directly (any partition, or the default).
    async fn reading_aged(pool: &PgPool, user: uuid::Uuid, device: &str, seq: i64, age: TimeDelta) {
        sqlx::query(
            "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
                 surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
                 stress, focus)
             VALUES ($1, $2, $3, now() - $4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
        )
        .bind(device)
        .bind(seq)
        .bind(user)
        .bind(age)
        .execute(pool)
        .await
        .unwrap();
    }

    async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    async fn features_of(pool: &PgPool, user: uuid::Uuid) -> String {
        sqlx::query_scalar("SELECT row_to_json(f)::text FROM emotion_features f WHERE user_id = $1")
            .bind(user)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn whole_days_go_and_the_features_and_everything_else_stay(pool: PgPool) {
        use crate::ingest::fixtures::{batch, encode, user_with_device};
        let (user, device) = user_with_device(&pool).await;
        let ingest = crate::ingest::Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        ingest
            .handle(
                &ecs_protocol::topic::uplink(&device),
                &encode(batch(&device, 1, 50)),
            )
            .await
            .unwrap();
        let features = features_of(&pool, user).await;
        let now = Utc::now();
        partitions::ensure(&pool, (now - TimeDelta::days(12)).date_naive(), now)
            .await
            .unwrap();
        // One reading a day, 1..=12 days old (each in its day's partition), one 40 days old
        // (older than any partition: the default one).
        for days in 1..=12 {
            reading_aged(
                &pool,
                user,
                device.as_str(),
                1_000 + days,
                TimeDelta::days(days),
            )
            .await;
        }
        reading_aged(&pool, user, device.as_str(), 2_000, TimeDelta::days(40)).await;
        let before = partitions::list(&pool).await.unwrap();

        let retention = Retention {
            readings_days: 5,
            dead_letters_days: 30,
        };
        let purged = retention.purge(&pool).await.unwrap();

        let cutoff = now - TimeDelta::days(5);
        let after = partitions::list(&pool).await.unwrap();
        assert!(after.iter().all(|p| p.end() > cutoff), "{after:?}");
        let gone: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
        assert!(
            gone.iter().all(|p| p.end() <= cutoff),
            "only days wholly past the window are dropped: {gone:?}"
        );
        assert_eq!(purged.partitions_dropped, gone.len() as u64);
        // Readings 7..=12 days old are in dropped days; the 6-day-old one is too unless its
        // day ends after the cutoff (a reading is kept up to a day longer than the window);
        // the 40-day-old one is deleted from the default partition.
        let left: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM emotion_readings WHERE seq >= 1000 ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert!(
            left.starts_with(&[1_001, 1_002, 1_003, 1_004, 1_005]),
            "{left:?}"
        );
        assert!(left.len() <= 6 && !left.contains(&2_000), "{left:?}");
        assert_eq!(purged.readings, 13 - left.len() as u64);
        assert_eq!(
            scalar(
                &pool,
                "SELECT count(*) FROM emotion_readings WHERE seq < 1000"
            )
            .await,
            50
        );
        assert_eq!(
            features_of(&pool, user).await,
            features,
            "the features are untouched"
        );
        assert_eq!(scalar(&pool, "SELECT count(*) FROM users").await, 1);
        assert_eq!(
            scalar(&pool, "SELECT count(*) FROM emotion_readings_default").await,
            0
        );
        // A week ahead exists, and a second pass has nothing to do.
        let last = after.last().unwrap().day();
        assert!(last >= (now + TimeDelta::days(partitions::DAYS_AHEAD as i64)).date_naive());
        assert_eq!(retention.purge(&pool).await.unwrap(), Purged::default());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_day_is_dropped_while_ingest_runs_and_ingest_never_notices(pool: PgPool) {
        use crate::ingest::{
            Outcome,
            fixtures::{batch, encode, user_with_device},
        };
        let (user, device) = user_with_device(&pool).await;
        let now = Utc::now();
        partitions::ensure(&pool, (now - TimeDelta::days(30)).date_naive(), now)
            .await
            .unwrap();
        for days in 2..=30 {
            reading_aged(
                &pool,
                user,
                device.as_str(),
                1_000_000 + days,
                TimeDelta::days(days),
            )
            .await;
        }
        let stop = CancellationToken::new();
        let ingesting = tokio::spawn({
            let (pool, device, stop) = (pool.clone(), device.clone(), stop.clone());
            async move {
                let ingest = crate::ingest::Ingest::new(pool, crate::keys::KeyCache::ephemeral());
                let topic = ecs_protocol::topic::uplink(&device);
                let mut batches = 0u64;
                while !stop.is_cancelled() || batches < 5 {
                    let outcome = ingest
                        .handle(&topic, &encode(batch(&device, batches * 10, 10)))
                        .await
                        .expect("ingest goes on while days are dropped");
                    assert!(
                        matches!(outcome, Outcome::Stored { inserted: 10, .. }),
                        "{outcome:?}"
                    );
                    batches += 1;
                }
                batches
            }
        });
        let retention = Retention {
            readings_days: 1,
            dead_letters_days: 30,
        };
        let purged = retention.purge(&pool).await.unwrap();
        stop.cancel();
        let batches = ingesting.await.unwrap();

        assert!(purged.partitions_dropped >= 28, "{purged:?}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT count(*) FROM emotion_readings WHERE seq >= 1000000"
            )
            .await,
            0
        );
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM emotion_readings WHERE device_id = $1 AND seq < 1000000",
        )
        .bind(device.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(stored, batches as i64 * 10, "every batch stored once");
        let counted: i64 =
            sqlx::query_scalar("SELECT readings_count FROM emotion_features WHERE user_id = $1")
                .bind(user)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            counted,
            batches as i64 * 10,
            "and folded into the features once"
        );
    }
}
