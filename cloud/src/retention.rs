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
}
