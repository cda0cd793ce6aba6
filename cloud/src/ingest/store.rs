//! The batches' transaction: readings, features and the devices' liveness, committed together,
//! in five statements for a group of any size.

use std::borrow::Cow;
use std::collections::HashMap;

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

/// One batch's part of a transaction: `batch` (readings taken at `taken_at`, their thoughts
/// sealed as `thoughts`, both index-aligned) for `user_id`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ToStore<'a> {
    pub(super) device: &'a DeviceId,
    pub(super) user_id: Uuid,
    pub(super) batch: &'a ReadingBatch,
    pub(super) taken_at: &'a [DateTime<Utc>],
    pub(super) thoughts: &'a [Option<Vec<u8>>],
}

/// Stores one batch in a transaction of its own: [`store_in`] with a group of one.
pub(super) async fn store_batch(pool: &PgPool, item: ToStore<'_>) -> Result<StoreOutcome> {
    let mut tx = begin(pool).await?;
    let mut outcomes = store_in(&mut tx, &[item]).await?;
    tx.commit().await?;
    outcomes
        .pop()
        .ok_or_else(|| Error::Internal("a group of one had no outcome".into()))
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

/// The batches' work inside the caller's transaction (which commits it), in five statements
/// whatever the number of batches: lock the persons (reading their consent), read their
/// features, insert every reading, store the features folded forward, mark the devices seen. Outcomes are
/// index-aligned with `items`.
///
/// A person's batches are folded into their features in the order of `items`; the caller keeps
/// a device's batches in its order (one in flight per device).
pub(super) async fn store_in(
    tx: &mut PgConnection,
    items: &[ToStore<'_>],
) -> Result<Vec<StoreOutcome>> {
    // Consent is re-read under the person's row lock, which a withdrawal (an UPDATE of that row)
    // also takes: a batch either commits before the withdrawal (whose transaction then removes
    // the derived profile) or sees it and stores nothing. Locking the person first is also the
    // order assessments, offer applications and erasure use.
    let mut people = lock_people(tx, items).await?;
    let storing: Vec<usize> = (0..items.len())
        .filter(|&i| people.get(&items[i].user_id).is_some_and(|p| p.consent))
        .collect();
    let inserted = insert_readings(tx, items, &storing).await?;

    // Which readings were new, batch by batch (a device has one batch here, so (device, seq)
    // names a reading of exactly one of them).
    let mut is_new: Vec<Vec<bool>> = items
        .iter()
        .map(|item| vec![false; item.batch.readings.len()])
        .collect();
    let mut batch_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &storing {
        batch_of
            .entry(items[i].device.as_str())
            .or_default()
            .push(i);
    }
    let mut inserted_per_batch = vec![0usize; items.len()];
    for (device, seq) in &inserted {
        let Ok(seq) = u64::try_from(*seq) else {
            continue;
        };
        for &i in batch_of.get(device.as_str()).into_iter().flatten() {
            let first = items[i].batch.first_seq;
            let slot = seq
                .checked_sub(first)
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| is_new[i].get_mut(k));
            if let Some(slot) = slot.filter(|slot| !**slot) {
                *slot = true;
                inserted_per_batch[i] += 1;
                break;
            }
        }
    }

    let mut changed: Vec<Uuid> = Vec::new();
    for &i in &storing {
        let item = &items[i];
        let new: Vec<(DateTime<Utc>, &Reading)> = item
            .taken_at
            .iter()
            .zip(&item.batch.readings)
            .zip(&is_new[i])
            .filter(|(_, new)| **new)
            .map(|((at, reading), _)| (*at, reading))
            .collect();
        if new.is_empty() {
            continue;
        }
        let Some(person) = people.get_mut(&item.user_id) else {
            continue;
        };
        if let Some(next) = EmotionFeatures::update(person.features.as_ref(), &new) {
            person.features = Some(next);
            if !changed.contains(&item.user_id) {
                changed.push(item.user_id);
            }
        }
    }
    let folded: Vec<(Uuid, &EmotionFeatures)> = changed
        .iter()
        .filter_map(|id| people.get(id)?.features.as_ref().map(|f| (*id, f)))
        .collect();
    features::store_many(tx, &folded).await?;

    let devices: Vec<&str> = storing.iter().map(|&i| items[i].device.as_str()).collect();
    let seen = mark_seen(tx, &devices).await?;
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| match people.get(&item.user_id) {
            None => StoreOutcome::RegistrationGone,
            Some(person) if !person.consent => StoreOutcome::WithoutConsent,
            Some(_) => StoreOutcome::Stored(StoredBatch {
                inserted: inserted_per_batch[i],
                came_back_with_mail: seen
                    .get(item.device.as_str())
                    .is_some_and(|s| s.came_online && s.has_undelivered),
            }),
        })
        .collect())
}

/// A person of the group, as read under their row's lock.
struct Person {
    consent: bool,
    features: Option<EmotionFeatures>,
}

/// Locks the rows of the group's persons, in `user_id` order (the order every other group
/// takes them in, so two groups never wait on each other in a cycle) and reads their consent;
/// then, in a statement of its own, their features. A person missing from the map was erased.
///
/// Two statements, not one join: under READ COMMITTED a statement that waited for a row lock
/// re-reads the locked row but not the rows it joined, so a join would hand the second of two
/// concurrent batches of one person the features as they were before the first committed (or
/// none), and its fold would overwrite the first's (found by
/// `ingest::tests::two_phones_of_one_person_feed_one_feature_row`). The second statement takes
/// a snapshot after every lock is held, so it sees every commit before ours.
async fn lock_people(
    conn: &mut PgConnection,
    items: &[ToStore<'_>],
) -> Result<HashMap<Uuid, Person>> {
    let mut ids: Vec<Uuid> = items.iter().map(|item| item.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let consents: Vec<(Uuid, bool)> = sqlx::query_as(
        "SELECT user_id, emotional_data_consent FROM users
         WHERE user_id = ANY($1)
         ORDER BY user_id
         FOR NO KEY UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut people: HashMap<Uuid, Person> = consents
        .into_iter()
        .map(|(user_id, consent)| {
            (
                user_id,
                Person {
                    consent,
                    features: None,
                },
            )
        })
        .collect();
    for (user_id, features) in features::load_many(conn, &ids).await? {
        if let Some(person) = people.get_mut(&user_id) {
            person.features = Some(features);
        }
    }
    Ok(people)
}

/// What [`store_in`] found once it held the person's row.
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

/// Inserts the readings of the batches `which` (indexes into `items`) in one statement and
/// returns the `(device_id, seq)` of those that were new.
///
/// Each column travels as one array parameter and `UNNEST` zips them back into rows; a
/// reading's thoughts travel already sealed (`privacy::thoughts`), one `bytea` each (NULL for
/// none).
async fn insert_readings(
    conn: &mut PgConnection,
    items: &[ToStore<'_>],
    which: &[usize],
) -> Result<Vec<(String, i64)>> {
    let n: usize = which.iter().map(|&i| items[i].batch.readings.len()).sum();
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut device_ids: Vec<&str> = Vec::with_capacity(n);
    let mut user_ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut taken_at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut thoughts: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut emotions: [Vec<i16>; 8] = Default::default();
    let [
        mut valence,
        mut arousal,
        mut dominance,
        mut stress,
        mut focus,
    ]: [Vec<i16>; 5] = Default::default();
    for &i in which {
        let item = &items[i];
        let first_seq = i64::try_from(item.batch.first_seq)
            .map_err(|_| Error::Internal("validated batch has first_seq above i64::MAX".into()))?;
        for (index, reading) in (0i64..).zip(&item.batch.readings) {
            device_ids.push(item.device.as_str());
            user_ids.push(item.user_id);
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
        taken_at.extend_from_slice(item.taken_at);
        thoughts.extend(item.thoughts.iter().map(|t| t.as_deref()));
    }
    if taken_at.len() != n || thoughts.len() != n {
        return Err(Error::Internal(
            "a batch's times or thoughts are not aligned with its readings".into(),
        ));
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
    let inserted = sqlx::query_as(
        "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at,
             joy, trust, fear, surprise, sadness, disgust, anger, anticipation,
             valence, arousal, dominance, stress, focus, thoughts_sealed)
         SELECT r.device_id, r.seq, r.user_id, r.recorded_at,
             r.joy, r.trust, r.fear, r.surprise, r.sadness, r.disgust, r.anger, r.anticipation,
             r.valence, r.arousal, r.dominance, r.stress, r.focus,
             r.thoughts_sealed
         FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::timestamptz[],
             $5::smallint[], $6::smallint[], $7::smallint[], $8::smallint[],
             $9::smallint[], $10::smallint[], $11::smallint[], $12::smallint[],
             $13::smallint[], $14::smallint[], $15::smallint[], $16::smallint[], $17::smallint[],
             $18::bytea[])
             AS r(device_id, user_id, seq, recorded_at, joy, trust, fear, surprise, sadness,
                  disgust, anger, anticipation, valence, arousal, dominance, stress, focus,
                  thoughts_sealed)
         ON CONFLICT (device_id, seq, recorded_at) DO NOTHING
         RETURNING device_id, seq",
    )
    .bind(&device_ids)
    .bind(&user_ids)
    .bind(&seq)
    .bind(&taken_at)
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
    .bind(&thoughts)
    .fetch_all(conn)
    .await?;
    Ok(inserted)
}

#[derive(sqlx::FromRow)]
struct Seen {
    device_id: String,
    came_online: bool,
    has_undelivered: bool,
}

/// Records that the devices are alive. A batch after more than [`DEVICE_RETURN_GAP`] of
/// silence opens a new `online_since`; the notifier re-publishes anything published before it.
async fn mark_seen(conn: &mut PgConnection, devices: &[&str]) -> Result<HashMap<String, Seen>> {
    if devices.is_empty() {
        return Ok(HashMap::new());
    }
    let seen: Vec<Seen> = sqlx::query_as(
        "UPDATE devices d SET
             online_since = CASE
                 WHEN d.online_since IS NULL OR d.last_seen_at IS NULL
                      OR d.last_seen_at < now() - make_interval(secs => $2)
                 THEN now() ELSE d.online_since END,
             last_seen_at = now()
         FROM (SELECT DISTINCT device_id FROM UNNEST($1::text[]) AS u(device_id)) s
         WHERE d.device_id = s.device_id
         RETURNING d.device_id, d.online_since = now() AS came_online,
             EXISTS (SELECT 1 FROM notifications n
                     WHERE n.device_id = d.device_id AND n.delivered_at IS NULL)
                 AS has_undelivered",
    )
    .bind(devices)
    .bind(DEVICE_RETURN_GAP.as_seconds_f64())
    .fetch_all(conn)
    .await?;
    Ok(seen.into_iter().map(|s| (s.device_id.clone(), s)).collect())
}
