//! The readings' day partitions (migration 0010): created ahead of the readings, dropped whole
//! once every reading in them is past retention.
//!
//! `emotion_readings` is partitioned by the UTC day a reading was taken (`recorded_at`), one
//! table `emotion_readings_pYYYYMMDD` a day, plus `emotion_readings_default` for readings no day
//! table takes. Partitions are made by the SQL function `ecs_create_reading_partition` (one
//! definition, used by the migration and here), which attaches a table made apart, so ingest is
//! never stopped by a creation; a drop needs the parent's ACCESS EXCLUSIVE lock for a moment, so
//! it waits at most [`LOCK_WAIT`] (ingest queues behind it no longer than that) and is tried
//! again at the next pass when it cannot have it.
//!
//! Every change runs under one advisory lock, so replicas maintaining at once take turns and
//! each change happens once.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
// Table names here are only ever `DayPartition::table`: a fixed prefix and eight digits.
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::error::Result;

/// Days ahead of today for which partitions exist after a pass: a cloud that cannot maintain
/// them (down, or Postgres refusing) for this long still stores every reading in its day's
/// table; after that, readings go to the default partition until it can.
pub const DAYS_AHEAD: u64 = 7;

/// How long a change waits for its locks before it gives up until the next pass.
pub const LOCK_WAIT: &str = "SET LOCAL lock_timeout = '2s'";

/// `pg_advisory_xact_lock` key for partition maintenance (ASCII "ecsparts").
const ADVISORY_KEY: i64 = 0x6563_7370_6172_7473;

/// The parent table and the prefix of its day partitions' names.
const PREFIX: &str = "emotion_readings_p";

/// A day partition: the readings taken on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayPartition(NaiveDate);

impl DayPartition {
    pub fn of(day: NaiveDate) -> DayPartition {
        DayPartition(day)
    }

    pub fn day(self) -> NaiveDate {
        self.0
    }

    /// `emotion_readings_pYYYYMMDD`: only digits after the prefix, so the name never needs
    /// quoting.
    pub fn table(self) -> String {
        format!("{PREFIX}{}", self.0.format("%Y%m%d"))
    }

    /// The partition a table name names; `None` for any other table (the default partition
    /// included).
    fn parse(table: &str) -> Option<DayPartition> {
        let digits = table.strip_prefix(PREFIX)?;
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        NaiveDate::parse_from_str(digits, "%Y%m%d")
            .ok()
            .map(DayPartition)
    }

    /// The first instant after the day: every reading in the partition is older.
    pub fn end(self) -> DateTime<Utc> {
        let next = self.0.succ_opt().unwrap_or(NaiveDate::MAX);
        next.and_time(NaiveTime::MIN).and_utc()
    }
}

/// The day partitions that exist, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<DayPartition>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'emotion_readings'::regclass",
    )
    .fetch_all(pool)
    .await?;
    let mut days: Vec<DayPartition> = tables
        .iter()
        .filter_map(|t| DayPartition::parse(t))
        .collect();
    days.sort();
    Ok(days)
}

/// Makes sure a partition exists for every day from `from` to `now`'s day + [`DAYS_AHEAD`];
/// returns the ones it created.
pub async fn ensure(
    pool: &PgPool,
    from: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<DayPartition>> {
    let last = now
        .date_naive()
        .checked_add_days(Days::new(DAYS_AHEAD))
        .unwrap_or(NaiveDate::MAX);
    let existing = list(pool).await?;
    let mut created = Vec::new();
    let mut day = from;
    while day <= last {
        let partition = DayPartition(day);
        if !existing.contains(&partition) {
            let mut tx = locked(pool).await?;
            let made: bool = sqlx::query_scalar("SELECT ecs_create_reading_partition($1)")
                .bind(day)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            if made {
                created.push(partition);
            }
        }
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    Ok(created)
}

/// A dropped partition and the readings it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub partition: DayPartition,
    pub readings: u64,
}

/// Drops every day partition whose readings are all older than `cutoff`; touches no other
/// table.
pub async fn drop_older_than(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Vec<Dropped>> {
    let mut dropped = Vec::new();
    for partition in list(pool).await? {
        if partition.end() > cutoff {
            break;
        }
        let table = partition.table();
        // Counted before the drop and outside its lock: nothing writes to a day past retention
        // (ingest refuses readings older than `ingest::MAX_READING_AGE`), and a count under the
        // parent's exclusive lock would hold ingest up for as long as it scans.
        let readings: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await?;
        let mut tx = locked(pool).await?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        dropped.push(Dropped {
            partition,
            readings: u64::try_from(readings).unwrap_or(0),
        });
    }
    Ok(dropped)
}

/// A transaction holding the maintenance lock, with a bounded wait on table locks.
async fn locked(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_WAIT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADVISORY_KEY)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let p = DayPartition::of(day);
        assert_eq!(p.table(), "emotion_readings_p20261201");
        assert_eq!(DayPartition::parse(&p.table()), Some(p));
        for other in [
            "emotion_readings_default",
            "emotion_readings_p2026120",
            "emotion_readings_p20261301",
            "emotion_readings_p2026120x",
            "emotion_readings_p202612011",
            "users",
        ] {
            assert_eq!(DayPartition::parse(other), None, "{other}");
        }
        assert_eq!(p.end().to_rfc3339(), "2026-12-02T00:00:00+00:00");
    }

    /// An installation from before migration 0010 (readings of the last 50 days, one with its
    /// thoughts still in the clear) upgrades with every row where it was, each in its day's
    /// partition, and ingest's key still absorbs a resend.
    #[sqlx::test(migrations = false)]
    async fn the_upgrade_keeps_every_reading_and_puts_each_in_its_day(pool: PgPool) {
        crate::MIGRATOR.run_to(9, &pool).await.unwrap();
        sqlx::query(
            "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
             VALUES ('00000000-0000-0000-0000-00000000000a', 'Ana', true, now())",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO devices (device_id, user_id)
             VALUES ('phone1', '00000000-0000-0000-0000-00000000000a')",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
                 surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
                 stress, focus, intents, intent_confidence)
             SELECT 'phone1', d, '00000000-0000-0000-0000-00000000000a',
                    now() - make_interval(days => d), d, 0, 0, 0, 0, 0, 0, 0, -d, 0, 0, 0, 0,
                    CASE WHEN d = 7 THEN '{1}'::smallint[] ELSE '{}' END,
                    CASE WHEN d = 7 THEN '{80}'::smallint[] ELSE '{}' END
             FROM generate_series(0, 49) AS d",
        )
        .execute(&pool)
        .await
        .unwrap();
        let before: Vec<(i64, i16, i16)> =
            sqlx::query_as("SELECT seq, joy, valence FROM emotion_readings ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();

        crate::MIGRATOR.run(&pool).await.unwrap();

        let after: Vec<(i64, i16, i16)> =
            sqlx::query_as("SELECT seq, joy, valence FROM emotion_readings ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(after, before);
        let misplaced: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM emotion_readings
             WHERE tableoid::regclass::text
                   <> 'emotion_readings_p' || to_char(recorded_at AT TIME ZONE 'UTC', 'YYYYMMDD')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(misplaced, 0, "every reading in its day's partition");
        let clear: Vec<i16> = sqlx::query_scalar(
            "SELECT intent_confidence[1] FROM emotion_readings WHERE cardinality(intents) > 0",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            clear,
            [80],
            "thoughts in the clear stay for the background sealer"
        );
        // The same reading again (a resend: same device, seq and time) is absorbed.
        let again = sqlx::query(
            "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust, fear,
                 surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance,
                 stress, focus)
             SELECT device_id, seq, user_id, recorded_at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
             FROM emotion_readings WHERE seq = 3
             ON CONFLICT (device_id, seq, recorded_at) DO NOTHING",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(again.rows_affected(), 0);
        let days = list(&pool).await.unwrap();
        let today = Utc::now().date_naive();
        assert!(
            days.first().unwrap().day() <= today - Days::new(49),
            "{days:?}"
        );
        assert!(days.last().unwrap().day() >= today.succ_opt().unwrap());
    }
}
