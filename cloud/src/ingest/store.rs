//! The batch's one transaction: readings, features and the device's liveness, committed together.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, Reading, ReadingBatch};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::DEVICE_RETURN_GAP;
use crate::{
    Error,
    error::Result,
    features::{self, EmotionFeatures},
};

/// How long a batch waits for its person's row before giving up (SQLSTATE 55P03, a transient
/// error: not acked, not dead-lettered).
const PERSON_LOCK_WAIT: &str = "SET LOCAL lock_timeout = '2s'";

/// Stores `batch` (readings taken at `taken_at`, their thoughts sealed as `thoughts`, both
/// index-aligned) for `user_id` and folds the readings that were new into the person's
/// features, all in one transaction.
pub(super) async fn store_batch(
    pool: &PgPool,
    device: &DeviceId,
    user_id: Uuid,
    batch: &ReadingBatch,
    taken_at: &[DateTime<Utc>],
    thoughts: &[Option<Vec<u8>>],
) -> Result<StoreOutcome> {
    let mut tx = begin(pool).await?;
    let outcome = store_in(&mut tx, device, user_id, batch, taken_at, thoughts).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// A transaction for batches, with the bounded wait on a person's row.
pub(super) async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    // A person whose row is held (a long erasure, a slow assessment) costs only their own
    // phones: this batch gives up after the wait, unacked, and its device resends it later,
    // instead of holding an ingest slot for as long as the other transaction lasts.
    sqlx::query(PERSON_LOCK_WAIT).execute(&mut *tx).await?;
    Ok(tx)
}

/// The batch's work inside the caller's transaction (which commits it, alone or with others).
pub(super) async fn store_in(
    tx: &mut PgConnection,
    device: &DeviceId,
    user_id: Uuid,
    batch: &ReadingBatch,
    taken_at: &[DateTime<Utc>],
    thoughts: &[Option<Vec<u8>>],
) -> Result<StoreOutcome> {
    // Consent is re-read under the person's row lock, which a withdrawal (an UPDATE of that row)
    // also takes: a batch either commits before the withdrawal (whose transaction then removes
    // the derived profile) or sees it and stores nothing. Locking the person first is also the
    // order assessments, offer applications and erasure use.
    let consent: Option<bool> = sqlx::query_scalar(
        "SELECT emotional_data_consent FROM users WHERE user_id = $1 FOR NO KEY UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    match consent {
        Some(true) => {}
        Some(false) => return Ok(StoreOutcome::WithoutConsent),
        None => return Ok(StoreOutcome::RegistrationGone),
    }
    let inserted = insert_readings(tx, device, user_id, batch, taken_at, thoughts).await?;
    if !inserted.is_empty() {
        let mut is_new = vec![false; batch.readings.len()];
        for seq in &inserted {
            let index = u64::try_from(*seq)
                .ok()
                .and_then(|s| s.checked_sub(batch.first_seq))
                .and_then(|i| usize::try_from(i).ok());
            if let Some(slot) = index.and_then(|i| is_new.get_mut(i)) {
                *slot = true;
            }
        }
        let new: Vec<(DateTime<Utc>, &Reading)> = taken_at
            .iter()
            .zip(&batch.readings)
            .zip(&is_new)
            .filter(|(_, new)| **new)
            .map(|((at, reading), _)| (*at, reading))
            .collect();
        let previous = features::load_for_update(tx, user_id).await?;
        if let Some(next) = EmotionFeatures::update(previous.as_ref(), &new) {
            features::store(tx, user_id, &next).await?;
        }
    }
    let seen = mark_seen(tx, device).await?;
    Ok(StoreOutcome::Stored(StoredBatch {
        inserted: inserted.len(),
        came_back_with_mail: seen.is_some_and(|s| s.came_online && s.has_undelivered),
    }))
}

/// What [`store_batch`] found once it held the person's row.
pub(super) enum StoreOutcome {
    Stored(StoredBatch),
    /// Consent was withdrawn after the registration check: nothing was stored.
    WithoutConsent,
    /// The person was erased after the registration check: nothing was stored.
    RegistrationGone,
}

/// What the batch's transaction did.
pub(super) struct StoredBatch {
    /// Readings that were new; the rest of the batch was stored before.
    pub(super) inserted: usize,
    /// The device came back online (see [`DEVICE_RETURN_GAP`]) with notifications waiting.
    pub(super) came_back_with_mail: bool,
}

/// SQLSTATE 23503 (foreign key violation): the device or its person is gone — erased between the
/// registration check and this transaction. Every row a batch writes (readings, features)
/// references them, so no other foreign key can fail.
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// The batch's transaction failed because the device or its person no longer exists: the batch
/// is not accepted (nothing kept, no ack), exactly as if the device had never been registered.
pub(super) fn registration_gone(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some(FOREIGN_KEY_VIOLATION)
}

/// SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation) other than
/// [`registration_gone`]: the database refuses this content and will refuse it again on every
/// resend, so retrying is pointless.
pub(super) fn refused_by_database(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|code| {
        (code.starts_with("22") || code.starts_with("23")) && code != FOREIGN_KEY_VIOLATION
    })
}

fn sqlstate(e: &sqlx::Error) -> Option<Cow<'_, str>> {
    match e {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    }
}

/// Inserts the whole batch in one statement and returns the sequence numbers that were new.
///
/// Each column travels as one array parameter and `UNNEST` zips them back into rows; a
/// reading's thoughts travel already sealed (`privacy::thoughts`), one `bytea` each (NULL for
/// none).
async fn insert_readings(
    conn: &mut PgConnection,
    device: &DeviceId,
    user_id: Uuid,
    batch: &ReadingBatch,
    taken_at: &[DateTime<Utc>],
    thoughts: &[Option<Vec<u8>>],
) -> Result<Vec<i64>> {
    let first_seq = i64::try_from(batch.first_seq)
        .map_err(|_| Error::Internal("validated batch has first_seq above i64::MAX".into()))?;
    let n = batch.readings.len();
    let mut seq = Vec::with_capacity(n);
    let mut emotions: [Vec<i16>; 8] = Default::default();
    let [
        mut valence,
        mut arousal,
        mut dominance,
        mut stress,
        mut focus,
    ]: [Vec<i16>; 5] = Default::default();
    for (index, reading) in (0i64..).zip(&batch.readings) {
        seq.push(first_seq + index);
        for (column, value) in emotions.iter_mut().zip(reading.emotions.as_array()) {
            column.push(i16::from(value));
        }
        valence.push(i16::from(reading.valence));
        arousal.push(i16::from(reading.arousal));
        dominance.push(i16::from(reading.dominance));
        stress.push(i16::from(reading.stress));
        focus.push(i16::from(reading.focus));
    }
    let [
        joy,
        trust,
        fear,
        surprise,
        sadness,
        disgust,
        anger,
        anticipation,
    ] = &emotions;
    let inserted = sqlx::query_scalar(
        "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at,
             joy, trust, fear, surprise, sadness, disgust, anger, anticipation,
             valence, arousal, dominance, stress, focus, thoughts_sealed)
         SELECT $1, r.seq, $2, r.recorded_at,
             r.joy, r.trust, r.fear, r.surprise, r.sadness, r.disgust, r.anger, r.anticipation,
             r.valence, r.arousal, r.dominance, r.stress, r.focus,
             r.thoughts_sealed
         FROM UNNEST($3::bigint[], $4::timestamptz[],
             $5::smallint[], $6::smallint[], $7::smallint[], $8::smallint[],
             $9::smallint[], $10::smallint[], $11::smallint[], $12::smallint[],
             $13::smallint[], $14::smallint[], $15::smallint[], $16::smallint[], $17::smallint[],
             $18::bytea[])
             AS r(seq, recorded_at, joy, trust, fear, surprise, sadness, disgust, anger,
                  anticipation, valence, arousal, dominance, stress, focus, thoughts_sealed)
         ON CONFLICT (device_id, seq, recorded_at) DO NOTHING
         RETURNING seq",
    )
    .bind(device.as_str())
    .bind(user_id)
    .bind(&seq)
    .bind(taken_at)
    .bind(joy)
    .bind(trust)
    .bind(fear)
    .bind(surprise)
    .bind(sadness)
    .bind(disgust)
    .bind(anger)
    .bind(anticipation)
    .bind(&valence)
    .bind(&arousal)
    .bind(&dominance)
    .bind(&stress)
    .bind(&focus)
    .bind(thoughts)
    .fetch_all(conn)
    .await?;
    Ok(inserted)
}

#[derive(sqlx::FromRow)]
struct Seen {
    came_online: bool,
    has_undelivered: bool,
}

/// Records that the device is alive. A batch after more than [`DEVICE_RETURN_GAP`] of silence
/// opens a new `online_since`; the notifier re-publishes anything published before it.
async fn mark_seen(conn: &mut PgConnection, device: &DeviceId) -> Result<Option<Seen>> {
    let seen = sqlx::query_as(
        "UPDATE devices SET
             online_since = CASE
                 WHEN online_since IS NULL OR last_seen_at IS NULL
                      OR last_seen_at < now() - make_interval(secs => $2)
                 THEN now() ELSE online_since END,
             last_seen_at = now()
         WHERE device_id = $1
         RETURNING online_since = now() AS came_online,
             EXISTS (SELECT 1 FROM notifications n
                     WHERE n.device_id = $1 AND n.delivered_at IS NULL) AS has_undelivered",
    )
    .bind(device.as_str())
    .bind(DEVICE_RETURN_GAP.as_seconds_f64())
    .fetch_optional(conn)
    .await?;
    Ok(seen)
}
