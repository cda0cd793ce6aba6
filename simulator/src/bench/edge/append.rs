//! Appending to the phone's buffer: the edge agent's own [`Buffer`] (`Buffer::append`, one
//! transaction per call, committed with `synchronous=FULL` as the recorder's are), in
//! transactions of up to [`MAX_PER_TRANSACTION`] like the recorder's, against a plain SQLite
//! `INSERT` of the same rows in transactions of the same size into a table of the same shape,
//! in the same directory, with the same journal mode and sync setting.
//!
//! The buffer it fills is the one the drain phase then empties into the cloud.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use ecs_edge_agent::buffer::Buffer;
use ecs_edge_agent::sensor::Sensor;
use ecs_protocol::{DeviceId, Reading};
use indicatif::ProgressBar;
use rusqlite::{Connection, params};

use crate::bench::ingest::window::per_second;

/// Most readings the agent's recorder writes in one transaction (`edge-agent/src/recorder.rs`).
pub const MAX_PER_TRANSACTION: usize = 1_000;
/// Time between two readings: a 100 Hz sensor.
pub const READING_SPACING_MS: i64 = 10;

/// The readings of the agent's table (`edge-agent/src/buffer.rs`), column for column: the
/// reference writes the same rows into the same shape.
const REFERENCE_SCHEMA: &str = "
CREATE TABLE readings (
    seq          INTEGER PRIMARY KEY,
    taken_at_ms  INTEGER NOT NULL,
    joy INTEGER NOT NULL, trust INTEGER NOT NULL, fear INTEGER NOT NULL,
    surprise INTEGER NOT NULL, sadness INTEGER NOT NULL, disgust INTEGER NOT NULL,
    anger INTEGER NOT NULL, anticipation INTEGER NOT NULL,
    valence INTEGER NOT NULL, arousal INTEGER NOT NULL, dominance INTEGER NOT NULL,
    stress INTEGER NOT NULL, focus INTEGER NOT NULL,
    thoughts     BLOB NOT NULL
) STRICT;
";

const REFERENCE_INSERT: &str = "INSERT INTO readings (seq, taken_at_ms, joy, trust, fear, \
     surprise, sadness, disgust, anger, anticipation, valence, arousal, dominance, stress, focus, \
     thoughts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// `count` readings of the agent's simulated sensor (seeded by `seed`), [`READING_SPACING_MS`]
/// apart, the last one taken at `end_ms` (Unix ms), with their times as `Buffer::append`
/// takes them.
pub fn readings(seed: u64, count: usize, end_ms: i64) -> Vec<(i64, Reading)> {
    let mut sensor = Sensor::new(seed);
    let start_ms = end_ms - (count as i64 - 1).max(0) * READING_SPACING_MS;
    (0..count as i64)
        .map(|i| (start_ms + i * READING_SPACING_MS, sensor.sample()))
        .collect()
}

/// What one side of the append phase did.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// The seqs the rows were given, first and last (consecutive).
    pub first_seq: u64,
    pub last_seq: u64,
    pub seconds: f64,
}

impl Appended {
    pub fn rows(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }

    pub fn per_s(&self) -> f64 {
        per_second(self.rows(), self.seconds)
    }
}

/// Appends `rows` to a fresh buffer in `path` for `device`, `per_transaction` at a time, and
/// times it. The buffer is closed afterwards, its readings on disk.
pub fn fill_buffer(
    path: &Path,
    device: &DeviceId,
    capacity: u64,
    rows: &[(i64, Reading)],
    per_transaction: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Appended> {
    if rows.is_empty() || per_transaction == 0 {
        bail!("nothing to append");
    }
    let mut buffer = Buffer::open(path, device, capacity)
        .with_context(|| format!("opening the buffer {}", path.display()))?;
    let mut seqs: Option<(u64, u64)> = None;
    let started = Instant::now();
    for chunk in rows.chunks(per_transaction) {
        let outcome = buffer.append(chunk).context("appending to the buffer")?;
        if outcome.dropped > 0 {
            bail!(
                "the buffer dropped {} readings: capacity too small",
                outcome.dropped
            );
        }
        let (first, last) = outcome.seqs.context("an append gave no seqs")?;
        seqs = Some(match seqs {
            None => (first, last),
            Some((start, previous)) if first == previous + 1 => (start, last),
            Some((_, previous)) => {
                bail!("the buffer numbered {first} after {previous}: not consecutive")
            }
        });
        bar.inc(chunk.len() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (first_seq, last_seq) = seqs.context("nothing was appended")?;
    Ok(Appended {
        first_seq,
        last_seq,
        seconds,
    })
}

/// The reference: the same rows with the same seqs, by a prepared `INSERT` per row, in
/// transactions of `per_transaction`, into a fresh table of the buffer's shape in `path`
/// (WAL, `synchronous=FULL`, as the buffer's appends), timed the same way.
pub fn plain_inserts(
    path: &Path,
    rows: &[(i64, Reading)],
    first_seq: u64,
    per_transaction: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Appended> {
    if rows.is_empty() || per_transaction == 0 {
        bail!("nothing to insert");
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("opening the reference database {}", path.display()))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("{} cannot use write-ahead logging", path.display());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(REFERENCE_SCHEMA)?;
    let started = Instant::now();
    for (index, chunk) in rows.chunks(per_transaction).enumerate() {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(REFERENCE_INSERT)?;
            let first = first_seq + (index * per_transaction) as u64;
            for ((taken_at_ms, r), seq) in chunk.iter().zip(first..) {
                let e = &r.emotions;
                let thoughts: Vec<u8> = r
                    .thoughts
                    .iter()
                    .flat_map(|t| [t.intent.code() as u8, t.confidence])
                    .collect();
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
                    thoughts,
                ])?;
            }
        }
        tx.commit()?;
        bar.inc(chunk.len() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Appended {
        first_seq,
        last_seq: first_seq + rows.len() as u64 - 1,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_the_sensors_stream_ending_at_the_given_time() {
        let rows = readings(7, 5, 1_800_000_000_000);
        let times: Vec<i64> = rows.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            [
                1_799_999_999_960,
                1_799_999_999_970,
                1_799_999_999_980,
                1_799_999_999_990,
                1_800_000_000_000
            ]
        );
        let mut sensor = Sensor::new(7);
        for (_, r) in &rows {
            assert_eq!(*r, sensor.sample(), "the same seed gives the same stream");
        }
        assert!(readings(7, 0, 0).is_empty());
    }

    #[test]
    fn the_reference_table_has_the_buffers_columns_and_takes_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows = readings(3, 2_500, 1_800_000_000_000);
        let bar = ProgressBar::hidden();
        let filled = fill_buffer(
            &dir.path().join("buffer.db"),
            &DeviceId::parse("phone1").unwrap(),
            10_000,
            &rows,
            MAX_PER_TRANSACTION,
            &bar,
        )
        .unwrap();
        assert_eq!(filled.rows(), 2_500);
        let reference_path = dir.path().join("reference.db");
        let reference =
            plain_inserts(&reference_path, &rows, filled.first_seq, 1_000, &bar).unwrap();
        assert_eq!(
            (reference.first_seq, reference.last_seq),
            (filled.first_seq, filled.last_seq)
        );
        let columns = |path: &Path| -> Vec<(String, String)> {
            let conn = Connection::open(path).unwrap();
            let mut q = conn
                .prepare("SELECT name, type FROM pragma_table_info('readings') ORDER BY cid")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            columns(&dir.path().join("buffer.db")),
            columns(&reference_path)
        );
        let count: i64 = Connection::open(&reference_path)
            .unwrap()
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2_500);
    }
}
