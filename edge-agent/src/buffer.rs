//! Store-and-forward: readings wait on disk until the cloud says they are committed.
//!
//! Guarantees:
//! - Every appended reading gets the next per-device sequence number; `next_seq` is persisted in
//!   the same transaction as the readings, so numbers are never reused, even across restarts or
//!   a crash mid-append.
//! - The buffer never holds more than its capacity. Appending to a full buffer deletes the
//!   *oldest* readings in the same transaction (the sensor is never blocked) and adds them to a
//!   persisted dropped counter, so data loss is always visible.
//! - A reading leaves the buffer only through [`Buffer::delete_range`] (the cloud's ack) or the
//!   capacity policy above.
//! - Only readings that pass the protocol's range checks are stored, so every batch built here
//!   passes [`ReadingBatch::validate`].
//!
//! Readings are stored as columns, not as an encoded blob: the rows stay readable with the
//! `sqlite3` tool, and a change of the wire format does not invalidate what is on the phone.

use std::path::Path;

use ecs_protocol::{
    DeviceId, Emotions, Intent, MAX_READINGS_PER_BATCH, Reading, ReadingBatch, Thought,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};
use crate::sqlite::{self, Durability};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS readings (
    seq          INTEGER PRIMARY KEY,  -- the rowid: ordered scans and range deletes walk one b-tree
    taken_at_ms  INTEGER NOT NULL,
    joy INTEGER NOT NULL, trust INTEGER NOT NULL, fear INTEGER NOT NULL,
    surprise INTEGER NOT NULL, sadness INTEGER NOT NULL, disgust INTEGER NOT NULL,
    anger INTEGER NOT NULL, anticipation INTEGER NOT NULL,
    valence INTEGER NOT NULL, arousal INTEGER NOT NULL, dominance INTEGER NOT NULL,
    stress INTEGER NOT NULL, focus INTEGER NOT NULL,
    thoughts     BLOB NOT NULL           -- (intent code, confidence) byte pairs
) STRICT;
CREATE TABLE IF NOT EXISTS buffer_meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;
";

const COLUMNS: &str = "seq, taken_at_ms, joy, trust, fear, surprise, sadness, disgust, anger, \
                       anticipation, valence, arousal, dominance, stress, focus, thoughts";

const META_DEVICE_ID: &str = "device_id";
const META_NEXT_SEQ: &str = "next_seq";
const META_DROPPED: &str = "dropped_total";

/// The first sequence number a fresh buffer hands out.
pub const FIRST_SEQ: u64 = 1;

/// What one [`Buffer::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Sequence numbers given to the appended readings; `None` for an empty append.
    pub seqs: Option<(u64, u64)>,
    /// Oldest readings deleted to stay within capacity.
    pub dropped: u64,
}

/// The device's bounded, persistent queue of unacknowledged readings. Synchronous: async code
/// reaches it through the blocking pool (see `sqlite::Shared`).
pub struct Buffer {
    conn: Connection,
    device_id: DeviceId,
    capacity: u64,
    next_seq: u64,
    len: u64,
    dropped_total: u64,
}

impl Buffer {
    /// Opens (or creates) the buffer in `path`. Fails if the file belongs to another device:
    /// its readings must never be sent under a different identity.
    pub fn open(path: &Path, device_id: &DeviceId, capacity: u64) -> Result<Self> {
        let conn = sqlite::open(path, Durability::Normal)?;
        conn.execute_batch(SCHEMA)?;
        let stored: Option<String> = conn
            .query_row(
                "SELECT value FROM buffer_meta WHERE key = ?1",
                [META_DEVICE_ID],
                |row| row.get(0),
            )
            .optional()?;
        match stored {
            None => {
                set_meta(&conn, META_DEVICE_ID, device_id.as_str())?;
            }
            Some(stored) if stored != device_id.as_str() => {
                return Err(Error::DeviceMismatch {
                    stored,
                    configured: device_id.clone(),
                });
            }
            Some(_) => {}
        }
        // `next_seq` is authoritative; the maximum stored seq is a cross-check that costs one
        // b-tree descent and keeps numbers unique even if the meta row were lost.
        let max_seq: Option<u64> =
            conn.query_row("SELECT MAX(seq) FROM readings", [], |r| r.get(0))?;
        let next_seq = meta_u64(&conn, META_NEXT_SEQ)?
            .unwrap_or(FIRST_SEQ)
            .max(max_seq.map_or(FIRST_SEQ, |s| s + 1));
        let len = conn.query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))?;
        let dropped_total = meta_u64(&conn, META_DROPPED)?.unwrap_or(0);
        Ok(Self {
            conn,
            device_id: device_id.clone(),
            capacity: capacity.max(1),
            next_seq,
            len,
            dropped_total,
        })
    }

    /// Stores readings taken at the given Unix times (ms), in one transaction, numbering them
    /// consecutively. Each reading's `offset_ms` is ignored: the time is the first element.
    /// If the buffer overflows, the oldest readings are deleted and counted.
    pub fn append(&mut self, readings: &[(i64, Reading)]) -> Result<AppendOutcome> {
        if readings.is_empty() {
            return Ok(AppendOutcome::default());
        }
        check_readings(&self.device_id, readings)?;
        let first = self.next_seq;
        let next = first
            .checked_add(readings.len() as u64)
            .filter(|next| *next <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidConfig("sequence numbers exhausted".into()))?;

        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO readings ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?;
            for ((taken_at_ms, r), seq) in readings.iter().zip(first..) {
                let e = &r.emotions;
                insert.execute(params![
                    seq,
                    taken_at_ms,
                    e.joy,
                    e.trust,
                    e.fear,
                    e.surprise,
                    e.sadness,
                    e.disgust,
                    e.anger,
                    e.anticipation,
                    r.valence,
                    r.arousal,
                    r.dominance,
                    r.stress,
                    r.focus,
                    encode_thoughts(&r.thoughts),
                ])?;
            }
        }
        set_meta(&tx, META_NEXT_SEQ, next)?;
        let overflow = (self.len + readings.len() as u64).saturating_sub(self.capacity);
        let dropped = if overflow > 0 {
            let deleted = tx.execute(
                "DELETE FROM readings WHERE seq IN \
                 (SELECT seq FROM readings ORDER BY seq LIMIT ?1)",
                [overflow],
            )? as u64;
            set_meta(&tx, META_DROPPED, self.dropped_total + deleted)?;
            deleted
        } else {
            0
        };
        tx.commit()?;

        self.next_seq = next;
        self.len = self.len + readings.len() as u64 - dropped;
        self.dropped_total += dropped;
        Ok(AppendOutcome {
            seqs: Some((first, next - 1)),
            dropped,
        })
    }

    /// The first contiguous run of at most `max` readings with seq greater than `after_seq`
    /// (from the oldest when `None`), or `None` when there is nothing to send.
    ///
    /// The run stops at the first missing seq (a range already acknowledged), because a batch
    /// numbers its readings `first_seq + i`. Its `base_time_ms` is the first reading's time and
    /// offsets never decrease: a reading taken after the clock went backwards gets the previous
    /// offset. A reading more than `u32::MAX` ms after the base starts the next batch instead.
    pub fn next_batch(&self, after_seq: Option<u64>, max: usize) -> Result<Option<ReadingBatch>> {
        match after_seq {
            None => self.batch_within(0, u64::MAX, max),
            Some(after) => match after.checked_add(1) {
                Some(from) => self.batch_within(from, u64::MAX, max),
                None => Ok(None),
            },
        }
    }

    /// Like [`Buffer::next_batch`], but only from readings with `first_seq..=last_seq`: what is
    /// left of a batch sent earlier, to send it again.
    pub fn batch_within(
        &self,
        first_seq: u64,
        last_seq: u64,
        max: usize,
    ) -> Result<Option<ReadingBatch>> {
        let max = max.min(MAX_READINGS_PER_BATCH);
        let (Ok(from), up_to) = (i64::try_from(first_seq), clamp_seq(last_seq)) else {
            return Ok(None);
        };
        if max == 0 || from > up_to {
            return Ok(None);
        }
        let mut select = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM readings WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3"
        ))?;
        let mut rows = select.query(params![from, up_to, max])?;
        let mut batch: Option<ReadingBatch> = None;
        while let Some(row) = rows.next()? {
            let seq: u64 = row.get(0)?;
            let taken_at_ms: i64 = row.get(1)?;
            let reading = decode_reading(row, seq)?;
            let Some(batch) = batch.as_mut() else {
                batch = Some(ReadingBatch {
                    device_id: self.device_id.clone(),
                    first_seq: seq,
                    base_time_ms: taken_at_ms,
                    readings: vec![reading],
                });
                continue;
            };
            if seq != batch.first_seq + batch.readings.len() as u64 {
                break;
            }
            let previous = batch.readings.last().map_or(0, |r| r.offset_ms);
            let Some(offset_ms) = offset(batch.base_time_ms, taken_at_ms, previous) else {
                break;
            };
            batch.readings.push(Reading {
                offset_ms,
                ..reading
            });
        }
        Ok(batch)
    }

    /// Forgets readings `first_seq..=last_seq` (the cloud committed them). Returns how many
    /// were still here: a repeated or stale ack deletes nothing and is harmless.
    pub fn delete_range(&mut self, first_seq: u64, last_seq: u64) -> Result<u64> {
        let (Ok(from), up_to) = (i64::try_from(first_seq), clamp_seq(last_seq)) else {
            return Ok(0);
        };
        if from > up_to {
            return Ok(0);
        }
        let deleted = self.conn.execute(
            "DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2",
            [from, up_to],
        )? as u64;
        self.len = self.len.saturating_sub(deleted);
        Ok(deleted)
    }

    /// Readings stored now.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The seq the next appended reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Readings dropped by the capacity policy since this file was created.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Moves everything from the write-ahead log into the main file and truncates the log, so
    /// a clean shutdown leaves one self-contained file.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The offset of a reading taken at `taken_at_ms` in a batch based at `base_ms`, never below
/// `previous`; `None` when it does not fit in `u32`.
fn offset(base_ms: i64, taken_at_ms: i64, previous: u32) -> Option<u32> {
    let delta = taken_at_ms.saturating_sub(base_ms);
    if delta <= i64::from(previous) {
        Some(previous)
    } else {
        u32::try_from(delta).ok()
    }
}

/// SQLite integers are `i64`; larger sequence numbers cannot exist in the table.
fn clamp_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Runs the protocol's checks on readings before they are stored, chunked to what one batch
/// may hold. Offsets are zeroed: times are stored separately and checked when batched.
fn check_readings(device_id: &DeviceId, readings: &[(i64, Reading)]) -> Result<()> {
    for chunk in readings.chunks(MAX_READINGS_PER_BATCH) {
        let probe = ReadingBatch {
            device_id: device_id.clone(),
            first_seq: 0,
            base_time_ms: 0,
            readings: chunk
                .iter()
                .map(|(_, r)| Reading {
                    offset_ms: 0,
                    ..r.clone()
                })
                .collect(),
        };
        probe.validate()?;
    }
    Ok(())
}

fn encode_thoughts(thoughts: &[Thought]) -> Vec<u8> {
    thoughts
        .iter()
        // Intent codes are 1..=5, so the narrowing is lossless.
        .flat_map(|t| [t.intent.code() as u8, t.confidence])
        .collect()
}

fn decode_reading(row: &Row<'_>, seq: u64) -> Result<Reading> {
    let blob: Vec<u8> = row.get(15)?;
    let (pairs, rest) = blob.as_chunks::<2>();
    if !rest.is_empty() {
        return Err(Error::CorruptRow(format!(
            "reading {seq}: odd thoughts blob"
        )));
    }
    let thoughts = pairs
        .iter()
        .map(|[code, confidence]| {
            Intent::from_code(i16::from(*code))
                .map(|intent| Thought {
                    intent,
                    confidence: *confidence,
                })
                .ok_or_else(|| Error::CorruptRow(format!("reading {seq}: intent code {code}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Reading {
        offset_ms: 0,
        emotions: Emotions {
            joy: row.get(2)?,
            trust: row.get(3)?,
            fear: row.get(4)?,
            surprise: row.get(5)?,
            sadness: row.get(6)?,
            disgust: row.get(7)?,
            anger: row.get(8)?,
            anticipation: row.get(9)?,
        },
        valence: row.get(10)?,
        arousal: row.get(11)?,
        dominance: row.get(12)?,
        stress: row.get(13)?,
        focus: row.get(14)?,
        thoughts,
    })
}

fn meta_u64(conn: &Connection, key: &str) -> Result<Option<u64>> {
    Ok(conn
        .query_row("SELECT value FROM buffer_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.execute(
        "INSERT INTO buffer_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::offset;

    #[test]
    fn offsets_never_go_backwards_and_never_overflow() {
        assert_eq!(offset(1_000, 1_000, 0), Some(0));
        assert_eq!(offset(1_000, 1_250, 100), Some(250));
        assert_eq!(offset(1_000, 900, 100), Some(100), "clock went backwards");
        assert_eq!(
            offset(1_000, 1_050, 100),
            Some(100),
            "behind the previous one"
        );
        assert_eq!(offset(0, i64::from(u32::MAX) + 1, 0), None);
        assert_eq!(offset(i64::MIN, i64::MAX, 0), None);
    }
}
