//! Store-and-forward: readings wait on disk until the cloud says they are committed.
//!
//! Guarantees:
//! - Every appended reading gets a per-device sequence number that no earlier reading of the
//!   device had, even if this file was lost or rolled back (limits below). It matters because
//!   the cloud's only duplicate check is the key `(device_id, seq)`: it acknowledges a reading
//!   whose seq it already holds without storing it, and the phone then deletes it. A reused seq
//!   would make a *new* reading vanish silently.
//! - The buffer never holds more than its capacity. Appending to a full buffer deletes the
//!   *oldest* readings in the same transaction (the sensor is never blocked) and adds them to a
//!   persisted dropped counter, so data loss is always visible.
//! - A reading leaves the buffer only through [`Buffer::delete_range`] (the cloud's ack) or the
//!   capacity policy above.
//! - Only readings that pass the protocol's range checks are stored, so every batch built here
//!   passes [`ReadingBatch::validate`].
//!
//! # Sequence numbers
//!
//! Each [`Buffer::open`] starts an *incarnation* of the buffer, which numbers its readings
//! consecutively from [`starting_seq`]:
//!
//! ```text
//! next_seq = max(stored next_seq, highest stored seq + 1, now in µs since the Unix epoch)
//! ```
//!
//! Two mechanisms, for two ways of losing the stored counter:
//!
//! - **The file survives.** `next_seq` is persisted in the same transaction as the readings it
//!   numbered, and that transaction commits with `synchronous=FULL`: once a reading can have
//!   been sent, the counter past it survives a crash *and* a power loss (with
//!   `synchronous=NORMAL` a power loss could roll back the last commits, counter included).
//! - **The file is gone or older than what was sent**: app data cleared, the app reinstalled
//!   with the same device id and certificate, or storage that lost synced writes. Then the
//!   clock term takes over. The agent never issues more than one seq per microsecond
//!   ([`MAX_SEQS_PER_SECOND`]; the configured sample rate is capped well below it), so an
//!   incarnation that started from the clock never gets ahead of the clock: each seq it issues is
//!   at most the wall-clock time, in µs, at which it is issued. A later incarnation starting from
//!   a later clock reading therefore starts above all of them.
//!
//! **Limit.** The clock term protects only if the clock at the new opening reads later than the
//! highest seq the lost file had issued. An incarnation that started from its own clock reading
//! `C` and issued `n` readings issued seqs up to `C + n - 1`, so the new opening is safe if the
//! wall clock has been set back, in total since `C`, by less than the time that really passed
//! since `C` minus `n` µs. In particular it is safe if the clock went back by less than the time
//! the previous incarnation ran minus `n` µs (at the 10 Hz default, `n` µs is 10 µs per second
//! run; at the 1-per-µs bound it is the whole run: the clock must not go back at all). A clock
//! already behind the stored counter when that incarnation opened (it had been set back
//! earlier) shrinks the margin by that lag. Phone clocks are network-synchronised and rarely
//! step back by more than seconds, but a user who sets the date back by days and then clears
//! the app's data defeats the rule: the cloud would absorb the new readings as duplicates until
//! the clock passes the old seqs.
//!
//! Consequences: seqs jump at every opening (by the time the agent was not running, in µs), so
//! they have gaps; batches are contiguous runs and simply end at a gap. A microsecond count fits
//! in `i64` until the year 294 000, and seqs must stay at or below `i64::MAX` (the cloud stores
//! them as `BIGINT` and validates that): [`Buffer::append`] refuses to go beyond, and a clock
//! reading beyond it (or before 1970) is ignored.
//!
//! Readings are stored as columns, not as an encoded blob: the rows stay readable with the
//! `sqlite3` tool, and a change of the wire format does not invalidate what is on the phone.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ecs_protocol::{
    DeviceId, Emotions, Intent, MAX_READINGS_PER_BATCH, Reading, ReadingBatch, Thought,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tracing::info;

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
/// When the newest reading ever appended was taken (Unix ms).
const META_LAST_TAKEN: &str = "last_taken_at_ms";
/// `running` from a run's start until it stops cleanly, then `stopped`.
const META_RUN_STATE: &str = "run_state";
/// The sensor's sampling period of the last run, in µs.
const META_PERIOD: &str = "sample_period_us";
const META_UNCLEAN_STOPS: &str = "unclean_stops_total";
const META_MISSED: &str = "missed_after_crashes_total";
/// The correction of the phone's clock learned from the cloud's acks (`clock`), in ms.
const META_CLOCK_OFFSET: &str = "clock_offset_ms";

/// The most sequence numbers the agent may hand out per second: one per microsecond. The
/// numbering rule (see the module docs and [`starting_seq`]) relies on it, so the configured
/// sample rate is capped below it (`AgentConfig::MAX_SAMPLE_RATE_HZ`, checked at compile time
/// and by `AgentConfig::validate`).
pub const MAX_SEQS_PER_SECOND: u64 = 1_000_000;

/// The lowest sequence number ever handed out: what a fresh buffer starts from if the clock
/// reads before 1970.
pub const MIN_SEQ: u64 = 1;

/// The first sequence number an incarnation of the buffer hands out, given the `next_seq` its
/// file remembers (counter and highest stored seq + 1 combined; 0 for a fresh file) and the
/// wall-clock time of the opening in microseconds since the Unix epoch:
///
/// `max(stored_next_seq, now_unix_micros, MIN_SEQ)`.
///
/// Starting at the clock puts a buffer whose file was lost above every seq an earlier
/// incarnation issued, as long as the clock has not gone backwards by more than the time that
/// incarnation ran (module docs, "Limit"). A clock reading above `i64::MAX` µs (the year
/// 294 000; seqs must stay storable as `i64`) is taken as broken and ignored.
pub fn starting_seq(stored_next_seq: u64, now_unix_micros: u64) -> u64 {
    let clock = if now_unix_micros <= i64::MAX as u64 {
        now_unix_micros
    } else {
        0
    };
    stored_next_seq.max(clock).max(MIN_SEQ)
}

/// The system clock in microseconds since the Unix epoch; 0 if it reads before 1970, which
/// [`starting_seq`] then ignores.
pub fn now_unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

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
    /// The seq this incarnation started numbering from.
    first_seq: u64,
    next_seq: u64,
    len: u64,
    dropped_total: u64,
    /// How the connection syncs its next commit (see [`Buffer::set_durability`]).
    durability: Durability,
}

impl Buffer {
    /// Opens (or creates) the buffer in `path`, numbering new readings from the system clock or
    /// the file's counter, whichever is higher (see [`Buffer::open_at`]). Fails if the file
    /// belongs to another device: its readings must never be sent under a different identity.
    pub fn open(path: &Path, device_id: &DeviceId, capacity: u64) -> Result<Self> {
        Self::open_at(path, device_id, capacity, now_unix_micros())
    }

    /// [`Buffer::open`] with the wall-clock time given: `now_unix_micros` is microseconds since
    /// the Unix epoch (0 ignores the clock). The readings appended from now on are numbered
    /// consecutively from [`starting_seq`] of the file's counter and this time.
    pub fn open_at(
        path: &Path,
        device_id: &DeviceId,
        capacity: u64,
        now_unix_micros: u64,
    ) -> Result<Self> {
        // FULL until a write says otherwise: the first writes (the device id) are rare.
        let conn = sqlite::open(path, Durability::Full)?;
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
        // The stored counter is authoritative for the file; the maximum stored seq is a
        // cross-check that costs one b-tree descent and keeps numbers unique even if the meta
        // row were lost. Nothing is written here: a seq only matters once a reading carrying it
        // is committed, and that commit persists the counter past it.
        let max_seq: Option<u64> =
            conn.query_row("SELECT MAX(seq) FROM readings", [], |r| r.get(0))?;
        let stored_next = meta_u64(&conn, META_NEXT_SEQ)?
            .unwrap_or(0)
            .max(max_seq.map_or(0, |s| s + 1));
        let first_seq = starting_seq(stored_next, now_unix_micros);
        if stored_next > now_unix_micros && now_unix_micros != 0 {
            // Harmless while this file lives, but the margin that protects a lost file shrinks.
            info!(
                stored_next_seq = stored_next,
                now_unix_micros, "the clock is behind the stored sequence; counting on from it"
            );
        }
        let len = conn.query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))?;
        let dropped_total = meta_u64(&conn, META_DROPPED)?.unwrap_or(0);
        Ok(Self {
            conn,
            device_id: device_id.clone(),
            capacity: capacity.max(1),
            first_seq,
            next_seq: first_seq,
            len,
            dropped_total,
            durability: Durability::Full,
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

        // This transaction advances `next_seq`, so it must survive power loss (see
        // `sqlite::Durability::Normal` for what a rollback would cost). The price is one sync
        // of the WAL per append. The recorder lingers ~100 ms per transaction whatever the
        // sample rate, so that is at most ~10 syncs per second, each a few milliseconds on
        // phone flash, paid on the blocking pool with a queue of hours in front of the sensor;
        // the pages written are the same as with NORMAL, only sooner.
        self.set_durability(Durability::Full)?;
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
        if let Some((taken_at_ms, _)) = readings.last() {
            set_meta(&tx, META_LAST_TAKEN, taken_at_ms)?;
        }
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
    /// every reading travels with its exact buffered time: a reading taken after the phone's
    /// clock went backwards (its time below the previous reading's, which a batch's
    /// non-decreasing offsets cannot say) starts the next batch, as does one more than
    /// `u32::MAX` ms after the base. A reading's time is therefore a fixed fact from the moment
    /// it is buffered, whatever the batch boundaries of a send or a resend: the cloud's key
    /// `(device_id, seq, recorded_at)` absorbs every resend.
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
        // A delete rolled back by a power loss only brings acknowledged readings back; they are
        // sent again under the same seqs and the cloud acknowledges them again. Not worth a
        // sync per ack (up to ~100 per second at the highest sample rate). The next append's
        // sync makes it durable anyway: the WAL is synced as a whole.
        self.set_durability(Durability::Normal)?;
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

    /// The seq this incarnation (this [`Buffer::open`]) started numbering from: the first
    /// appended reading got it. Every seq stored by earlier incarnations is below it.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Readings dropped by the capacity policy since this file was created.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sets how the next commits are synced, if that changes anything. Between transactions
    /// only.
    fn set_durability(&mut self, durability: Durability) -> Result<()> {
        if self.durability != durability {
            sqlite::set_durability(&self.conn, durability)?;
            self.durability = durability;
        }
        Ok(())
    }

    /// Moves everything from the write-ahead log into the main file and truncates the log, so
    /// a clean shutdown leaves one self-contained file.
    /// Starts a run of the agent on this file, whose sensor samples every `period`, at
    /// `now_ms`. If the previous run did not stop cleanly (SIGKILL, power loss, a panic), it is
    /// counted, with the readings its sensor produced and nobody stored: by the sensor's clock,
    /// those between the newest reading stored and now (the recorder's last unwritten moments,
    /// then all the time no agent ran).
    pub fn start_run(&mut self, period: std::time::Duration, now_ms: i64) -> Result<RunStart> {
        let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(1);
        let was_running = self
            .conn
            .query_row(
                "SELECT value FROM buffer_meta WHERE key = ?1",
                [META_RUN_STATE],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .is_some_and(|state| state == "running");
        let mut start = RunStart {
            unclean_stops_total: meta_u64(&self.conn, META_UNCLEAN_STOPS)?.unwrap_or(0),
            missed_after_crashes_total: meta_u64(&self.conn, META_MISSED)?.unwrap_or(0),
            ..RunStart::default()
        };
        let tx = self.conn.transaction()?;
        if was_running {
            start.after_unclean_stop = true;
            start.unclean_stops_total += 1;
            let last_taken = meta_u64(&tx, META_LAST_TAKEN)?;
            let same_sensor = meta_u64(&tx, META_PERIOD)? == Some(period_us);
            if let (Some(last), true) = (last_taken, same_sensor) {
                start.missed = missed_between(last, now_ms, period_us);
            }
            start.missed_after_crashes_total += start.missed;
            set_meta(&tx, META_UNCLEAN_STOPS, start.unclean_stops_total)?;
            set_meta(&tx, META_MISSED, start.missed_after_crashes_total)?;
        }
        set_meta(&tx, META_RUN_STATE, "running")?;
        set_meta(&tx, META_PERIOD, period_us)?;
        tx.commit()?;
        Ok(start)
    }

    /// The run ended with everything the sensor produced stored: the next start counts no loss.
    pub fn mark_clean_stop(&mut self) -> Result<()> {
        set_meta(&self.conn, META_RUN_STATE, "stopped")
    }

    /// The clock correction the last run learned (`clock::Clock`); 0 when none.
    pub fn clock_offset_ms(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM buffer_meta WHERE key = ?1",
                [META_CLOCK_OFFSET],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    pub fn set_clock_offset_ms(&mut self, offset_ms: i64) -> Result<()> {
        set_meta(&self.conn, META_CLOCK_OFFSET, offset_ms)
    }

    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The exact offset of a reading taken at `taken_at_ms` in a batch based at `base_ms` whose last
/// offset is `previous`; `None` when the batch cannot carry it (the time went backwards, or the
/// offset does not fit in `u32`): the reading starts the next batch.
fn offset(base_ms: i64, taken_at_ms: i64, previous: u32) -> Option<u32> {
    let offset = u32::try_from(taken_at_ms.checked_sub(base_ms)?).ok()?;
    (offset >= previous).then_some(offset)
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

/// Readings a sensor sampling every `period_us` produced after the one taken at `last_ms` and
/// before `now_ms`, by its clock: the sampling instants strictly between the two.
pub fn missed_between(last_ms: u64, now_ms: i64, period_us: u64) -> u64 {
    let Ok(now_ms) = u64::try_from(now_ms) else {
        return 0;
    };
    let elapsed_us = now_ms.saturating_sub(last_ms).saturating_mul(1_000);
    // The instants last + k·period with k ≥ 1 before now: ⌈elapsed / period⌉ − 1.
    elapsed_us.div_ceil(period_us.max(1)).saturating_sub(1)
}

/// What [`Buffer::start_run`] found of the previous run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStart {
    /// The previous run did not stop cleanly.
    pub after_unclean_stop: bool,
    /// Readings its sensor produced that were never stored (0 after a clean stop).
    pub missed: u64,
    /// Unclean stops since the file was created, this one included.
    pub unclean_stops_total: u64,
    /// Readings missed after unclean stops since the file was created.
    pub missed_after_crashes_total: u64,
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
    use super::{Buffer, MIN_SEQ, missed_between, now_unix_micros, offset, starting_seq};

    #[test]
    fn readings_missed_are_the_sampling_instants_strictly_between() {
        // Every 100 ms after the one at 1000 ms: 1100, ..., 2000 before 2050.
        assert_eq!(missed_between(1_000, 2_050, 100_000), 10);
        // The one at 2000 is the new run's own first reading.
        assert_eq!(missed_between(1_000, 2_000, 100_000), 9);
        assert_eq!(missed_between(1_000, 1_050, 100_000), 0);
        assert_eq!(
            missed_between(1_000, 900, 100_000),
            0,
            "a clock that went back"
        );
        assert_eq!(missed_between(1_000, -5, 100_000), 0);
    }

    #[test]
    fn an_unclean_stop_is_counted_at_the_next_start_with_what_its_sensor_produced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.db");
        let device = DeviceId::random();
        let period = std::time::Duration::from_millis(100);
        let mut sensor = Sensor::new(1);
        let mut buffer = Buffer::open(&path, &device, 100).unwrap();
        assert!(
            !buffer.start_run(period, 500).unwrap().after_unclean_stop,
            "a new file"
        );
        buffer.append(&[(1_000, sensor.sample())]).unwrap();
        drop(buffer); // killed: no clean stop

        let mut buffer = Buffer::open(&path, &device, 100).unwrap();
        let start = buffer.start_run(period, 2_050).unwrap();
        assert!(start.after_unclean_stop);
        assert_eq!((start.missed, start.unclean_stops_total), (10, 1));
        assert_eq!(start.missed_after_crashes_total, 10);
        buffer.append(&[(2_050, sensor.sample())]).unwrap();
        buffer.mark_clean_stop().unwrap();
        drop(buffer);

        let mut buffer = Buffer::open(&path, &device, 100).unwrap();
        let start = buffer.start_run(period, 9_000).unwrap();
        assert!(!start.after_unclean_stop, "it stopped cleanly");
        assert_eq!(
            start.missed, 0,
            "a stopped agent is not sensing: nothing is missed"
        );
        assert_eq!(
            (start.unclean_stops_total, start.missed_after_crashes_total),
            (1, 10),
            "the totals persist"
        );
        drop(buffer);

        // Another sampling rate: the old clock says nothing about the new one.
        let mut buffer = Buffer::open(&path, &device, 100).unwrap();
        let start = buffer
            .start_run(std::time::Duration::from_millis(20), 20_000)
            .unwrap();
        assert!(start.after_unclean_stop);
        assert_eq!((start.missed, start.unclean_stops_total), (0, 2));
    }
    use crate::sensor::Sensor;
    use ecs_protocol::DeviceId;

    #[test]
    fn appends_commit_with_full_sync_and_deletes_with_normal() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer =
            Buffer::open(&dir.path().join("edge.db"), &DeviceId::random(), 100).unwrap();
        let synchronous = |b: &Buffer| -> i64 {
            b.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&buffer), 2, "FULL from the start");
        let mut sensor = Sensor::new(1);
        let (first, last) = buffer
            .append(&[(0, sensor.sample()), (100, sensor.sample())])
            .unwrap()
            .seqs
            .unwrap();
        assert_eq!(synchronous(&buffer), 2);
        buffer.delete_range(first, first).unwrap();
        assert_eq!(synchronous(&buffer), 1, "NORMAL for deletes");
        buffer.append(&[(200, sensor.sample())]).unwrap();
        assert_eq!(synchronous(&buffer), 2, "FULL again for the append");
        assert_eq!(buffer.delete_range(last, last + 1).unwrap(), 2);
    }

    #[test]
    fn an_incarnation_starts_at_the_later_of_the_clock_and_the_counter() {
        const NOW: u64 = 1_700_000_000_000_000;
        assert_eq!(starting_seq(0, NOW), NOW, "fresh file: the clock");
        assert_eq!(starting_seq(42, NOW), NOW, "restart: jump to the clock");
        assert_eq!(
            starting_seq(NOW + 5, NOW),
            NOW + 5,
            "clock behind: the counter"
        );
        assert_eq!(starting_seq(0, 0), MIN_SEQ, "no clock, fresh file");
        assert_eq!(starting_seq(7, 0), 7, "no clock");
        let broken = i64::MAX as u64 + 1;
        assert_eq!(starting_seq(7, broken), 7, "a clock beyond i64 is ignored");
        assert_eq!(starting_seq(0, i64::MAX as u64), i64::MAX as u64);
        let now = now_unix_micros();
        assert!(now > NOW && now < i64::MAX as u64, "{now}");
    }

    #[test]
    fn offsets_are_exact_or_the_reading_starts_the_next_batch() {
        assert_eq!(offset(1_000, 1_000, 0), Some(0));
        assert_eq!(offset(1_000, 1_250, 100), Some(250));
        assert_eq!(offset(1_000, 1_050, 100), None, "clock went backwards");
        assert_eq!(offset(1_000, 900, 0), None, "before the base");
        assert_eq!(offset(1_000, 1_100, 100), Some(100), "the same time twice");
        assert_eq!(offset(0, i64::from(u32::MAX) + 1, 0), None);
        assert_eq!(offset(i64::MIN, i64::MAX, 0), None);
    }
}

#[cfg(test)]
mod exact_times {
    use std::collections::BTreeMap;

    use ecs_protocol::DeviceId;

    use super::Buffer;
    use crate::sensor::Sensor;

    /// Every reading's time as the cloud computes it (`base_time_ms + offset_ms`), by seq, over
    /// the batches read from `from` on with at most `max` readings each.
    fn times_sent(buffer: &Buffer, from: u64, max: usize) -> BTreeMap<u64, i64> {
        let mut times = BTreeMap::new();
        let mut next = from;
        while let Some(batch) = buffer.batch_within(next, u64::MAX, max).unwrap() {
            batch.validate().unwrap();
            for (seq, r) in (batch.first_seq..).zip(&batch.readings) {
                times.insert(seq, batch.base_time_ms + i64::from(r.offset_ms));
            }
            next = batch.last_seq() + 1;
        }
        times
    }

    #[test]
    fn a_reading_travels_with_its_buffered_time_whatever_the_batch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer =
            Buffer::open(&dir.path().join("edge.db"), &DeviceId::random(), 1_000).unwrap();
        let mut sensor = Sensor::new(7);
        // A clock that steps back twice (by 350 ms, then by 5 s), repeats a time, and jumps
        // ahead by more than a batch's offsets can say (u32::MAX ms).
        let clock = [
            1_000,
            1_100,
            1_200,
            850,
            950,
            950,
            1_050,
            -3_950,
            -3_850,
            1_000 + i64::from(u32::MAX) + 10,
            1_000 + i64::from(u32::MAX) + 20,
        ];
        let readings: Vec<_> = clock.iter().map(|&t| (t, sensor.sample())).collect();
        let (first, last) = buffer.append(&readings).unwrap().seqs.unwrap();
        let buffered: BTreeMap<u64, i64> = (first..=last).zip(clock).collect();

        for max in [1, 2, 3, 5, 100] {
            for from in first..=last {
                let sent = times_sent(&buffer, from, max);
                let expected: BTreeMap<u64, i64> =
                    buffered.range(from..).map(|(s, t)| (*s, *t)).collect();
                assert_eq!(sent, expected, "batches of {max} from seq {from}");
            }
        }
        // A batch ends where the clock stepped back, and where the offset would not fit.
        let batch = buffer.batch_within(first, u64::MAX, 100).unwrap().unwrap();
        assert_eq!(batch.readings.len(), 3);
    }
}
