//! The thoughts of a reading (its intents and their confidences), sealed with the person's data
//! key before they reach the database.
//!
//! A reading's `thoughts_sealed` holds `(code, confidence)` byte pairs, sealed as the field
//! [`FIELD`] of the row `(device_id, seq)`: a sealed value copied onto another reading, or
//! another person's, does not open. A reading without thoughts stores `NULL`: that a moment had
//! thoughts, and how many (the ciphertext's length), stays visible; which ones and how sure the
//! sensor was do not. Features are computed at ingest from the readings in memory, so nothing
//! the system runs needs them in the clear; a person reads them in their export.
//!
//! Readings stored before sealing existed have their thoughts in the `intents` and
//! `intent_confidence` columns; [`seal_legacy`] moves them into `thoughts_sealed` in the
//! background.

use ecs_protocol::{DeviceId, Thought};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Error,
    error::Result,
    keys::{DataKey, KeyCache},
};

/// The field name a reading's thoughts are sealed under.
pub const FIELD: &str = "thoughts";

/// The row a reading's thoughts are bound to.
fn row(device_id: &str, seq: i64) -> Vec<u8> {
    // The seq is always the last 8 bytes, so (device, seq) pairs cannot collide.
    [device_id.as_bytes(), &seq.to_be_bytes()].concat()
}

/// The sealed thoughts of the reading `seq` of `device`; `None` when it has none.
pub fn seal(
    key: &DataKey,
    device: &DeviceId,
    seq: i64,
    thoughts: &[Thought],
) -> Result<Option<Vec<u8>>> {
    if thoughts.is_empty() {
        return Ok(None);
    }
    let plain: Vec<u8> = thoughts
        .iter()
        .flat_map(|t| [code_byte(t.intent.code()), t.confidence])
        .collect();
    key.seal_row(FIELD, &row(device.as_str(), seq), &plain)
        .map(Some)
}

/// One reading's thoughts as stored in the clear: intent codes and confidences, index-aligned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Opened {
    pub intents: Vec<i16>,
    pub confidences: Vec<i16>,
}

/// Opens what [`seal`] sealed for the reading `seq` of `device_id`.
pub fn open(key: &DataKey, device_id: &str, seq: i64, sealed: &[u8]) -> Result<Opened> {
    let plain = key.open_row(FIELD, &row(device_id, seq), sealed)?;
    if plain.len() % 2 != 0 {
        return Err(Error::Internal(format!(
            "the sealed thoughts of reading {seq} of {device_id} are not pairs"
        )));
    }
    let mut opened = Opened::default();
    for pair in plain.chunks_exact(2) {
        opened.intents.push(i16::from(pair[0]));
        opened.confidences.push(i16::from(pair[1]));
    }
    Ok(opened)
}

/// The stored codes are 1..=5 ([`ecs_protocol::Intent::code`]); a byte holds them.
fn code_byte(code: i16) -> u8 {
    u8::try_from(code).unwrap_or(u8::MAX)
}

/// The sealed thoughts of every reading of `readings` (numbered from `first_seq`), index-aligned;
/// `Ok(None)` when the person is gone (erased since their registration was read).
pub async fn seal_batch<'a>(
    keys: &KeyCache,
    pool: &PgPool,
    user_id: Uuid,
    device: &DeviceId,
    first_seq: i64,
    readings: impl ExactSizeIterator<Item = &'a [Thought]>,
) -> Result<Option<Vec<Option<Vec<u8>>>>> {
    let mut sealed = Vec::with_capacity(readings.len());
    let mut key = None;
    for (seq, thoughts) in (first_seq..).zip(readings) {
        if thoughts.is_empty() {
            sealed.push(None);
            continue;
        }
        if key.is_none() {
            match keys.key_for(pool, user_id).await? {
                Some(found) => key = Some(found),
                None => return Ok(None),
            }
        }
        let key = key
            .as_ref()
            .ok_or_else(|| Error::Internal("no key".into()))?;
        sealed.push(seal(key, device, seq, thoughts)?);
    }
    Ok(Some(sealed))
}

/// A reading whose thoughts are still in the clear.
#[derive(sqlx::FromRow)]
struct LegacyRow {
    device_id: String,
    seq: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    intents: Vec<i16>,
    intent_confidence: Vec<i16>,
}

/// Most legacy readings sealed in one transaction.
const LEGACY_BATCH: i64 = 500;
/// Most people looked up per round of [`seal_legacy`].
const LEGACY_PEOPLE: i64 = 64;

/// What a pass of [`seal_legacy`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LegacySealing {
    /// Readings sealed.
    pub sealed: u64,
    /// People whose readings were left in the clear because their data key could not be had
    /// (a master key this replica does not hold); the next pass tries again.
    pub people_skipped: u64,
}

/// Seals the thoughts of readings stored in the clear before sealing existed (or by a replica
/// of an older version during a rolling upgrade), a person at a time, [`LEGACY_BATCH`]
/// readings per transaction.
///
/// The person's key is had first, with no lock held (making one takes the person's row, which
/// an erasure holds while its cascade waits for the readings); then their readings are locked
/// and sealed, waiting on nothing else. So it follows the person-first lock order, and needs one
/// connection at a time. Rows another transaction holds are skipped (`SKIP LOCKED`): the pass
/// ends when nothing is left that it could take, which is not always nothing left (the cloud
/// runs it again every few minutes).
pub async fn seal_legacy(pool: &PgPool, keys: &KeyCache) -> Result<LegacySealing> {
    let mut done = LegacySealing::default();
    let mut skipped: Vec<Uuid> = Vec::new();
    loop {
        // By the partial index `emotion_readings_thoughts_in_clear_idx`.
        let people: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM emotion_readings
             WHERE cardinality(intents) > 0 AND user_id <> ALL($1)
             LIMIT $2",
        )
        .bind(&skipped)
        .bind(LEGACY_PEOPLE)
        .fetch_all(pool)
        .await?;
        if people.is_empty() {
            done.people_skipped = skipped.len() as u64;
            return Ok(done);
        }
        let mut progress = false;
        for user_id in people {
            let key = match keys.key_for(pool, user_id).await {
                Ok(Some(key)) => key,
                // Erased meanwhile: the cascade removes the readings.
                Ok(None) => continue,
                Err(error) => {
                    // Once per pass, not once per person: a database of an earlier demo can
                    // hold many people whose master key is gone.
                    if skipped.is_empty() {
                        tracing::warn!(%user_id, %error, "cannot have a person's data key: their thoughts stay in the clear (the pass goes on with the others)");
                    }
                    skipped.push(user_id);
                    continue;
                }
            };
            loop {
                let sealed = seal_some(pool, &key).await?;
                done.sealed += sealed;
                progress |= sealed > 0;
                if sealed < LEGACY_BATCH as u64 {
                    break;
                }
            }
        }
        if !progress {
            // Everything left is held by other transactions (another replica sealing it).
            done.people_skipped = skipped.len() as u64;
            return Ok(done);
        }
    }
}

/// Seals up to [`LEGACY_BATCH`] of the person's readings in the clear, in one transaction.
async fn seal_some(pool: &PgPool, key: &DataKey) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<LegacyRow> = sqlx::query_as(
        "SELECT device_id, seq, recorded_at, intents, intent_confidence FROM emotion_readings
         WHERE user_id = $1 AND cardinality(intents) > 0
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(key.user_id())
    .bind(LEGACY_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut devices = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    let mut blobs = Vec::with_capacity(rows.len());
    for row in rows {
        let plain: Vec<u8> = row
            .intents
            .iter()
            .zip(&row.intent_confidence)
            .flat_map(|(code, confidence)| {
                [
                    code_byte(*code),
                    u8::try_from(*confidence).unwrap_or(u8::MAX),
                ]
            })
            .collect();
        blobs.push(key.seal_row(FIELD, &self::row(&row.device_id, row.seq), &plain)?);
        devices.push(row.device_id);
        seqs.push(row.seq);
        times.push(row.recorded_at);
    }
    let sealed = sqlx::query(
        "UPDATE emotion_readings r
         SET thoughts_sealed = s.sealed, intents = '{}', intent_confidence = '{}'
         FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[], $4::bytea[])
             AS s(device_id, seq, recorded_at, sealed)
         WHERE (r.device_id, r.seq, r.recorded_at) = (s.device_id, s.seq, s.recorded_at)",
    )
    .bind(&devices)
    .bind(&seqs)
    .bind(&times)
    .bind(&blobs)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(sealed)
}
