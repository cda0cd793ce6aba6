//! The agent's state, as `ecs-edge-agent status` shows it: read from the agent's SQLite file,
//! safe while the agent runs.
//!
//! What the file holds by itself (the readings waiting, the oldest one's age, the dropped total)
//! is read from the buffer's tables. What only the running process knows (sent, acked,
//! reconnects, bytes, the last ack) it writes into `agent_status` every [`SAVE_INTERVAL`] and when
//! it stops, so a snapshot is at most that old; `saved_at` says when. Reading opens the file
//! read-only: WAL lets it read while the agent writes, and it never takes the agent's locks
//! for longer than one statement.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::agent::AgentStats;
use crate::error::{Error, Result};
use crate::sqlite::{self, Durability};

/// How often the running agent saves its counters.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agent_status (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    saved_at_ms INTEGER NOT NULL,
    stats       TEXT NOT NULL      -- AgentStats as JSON
) STRICT;
";

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where the running agent saves its counters.
pub(crate) struct StatusStore {
    conn: Connection,
}

impl StatusStore {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        // Losing the last snapshot to a power cut is harmless: the next one replaces it.
        let conn = sqlite::open(path, Durability::Normal)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    pub(crate) fn save(&mut self, stats: &AgentStats) -> Result<()> {
        let json = serde_json::to_string(stats)
            .map_err(|e| Error::CorruptRow(format!("cannot encode the agent's counters: {e}")))?;
        self.conn.execute(
            "INSERT INTO agent_status (id, saved_at_ms, stats) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET saved_at_ms = excluded.saved_at_ms, \
             stats = excluded.stats",
            params![unix_ms(), json],
        )?;
        Ok(())
    }
}

/// The agent's state, from its file.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The device the file belongs to.
    pub device_id: Option<String>,
    /// Readings stored and not yet acknowledged by the cloud.
    pub buffered: u64,
    /// When the oldest of them was taken (Unix ms), and how long ago.
    pub oldest_unacked_at_ms: Option<i64>,
    pub oldest_unacked_age_secs: Option<f64>,
    /// Readings dropped from a full buffer since the file was created.
    pub dropped_total: u64,
    /// Runs on the file that did not stop cleanly, counted when the next one starts.
    pub unclean_stops_total: u64,
    /// Readings the sensor produced and nobody stored after those stops (see
    /// [`AgentStats::readings_missed_after_crashes`]).
    pub missed_after_crashes_total: u64,
    /// The correction of the phone's clock learned from the cloud, in ms (0: none).
    pub clock_offset_ms: i64,
    /// `running` (an agent runs on the file now, or the last one did not stop cleanly),
    /// `stopped` (it stopped cleanly), or nothing (no agent has run on it).
    pub run_state: Option<String>,
    /// The counters the agent last saved (its current run, or the last one), and when.
    pub last_run: Option<AgentStats>,
    pub saved_at_ms: Option<i64>,
}

impl Status {
    /// Reads the status from the agent's file, without writing to it.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::InvalidConfig(format!(
                "{} does not exist (is --db the agent's file?)",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let table_exists = |name: &str| -> Result<bool> {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        };
        let meta = |key: &str| -> Result<Option<rusqlite::types::Value>> {
            if !table_exists("buffer_meta")? {
                return Ok(None);
            }
            Ok(conn
                .query_row("SELECT value FROM buffer_meta WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let device_id = match meta("device_id")? {
            Some(rusqlite::types::Value::Text(id)) => Some(id),
            _ => None,
        };
        let count = |key: &str| -> Result<u64> {
            Ok(match meta(key)? {
                Some(rusqlite::types::Value::Integer(n)) => u64::try_from(n).unwrap_or(0),
                _ => 0,
            })
        };
        let dropped_total = count("dropped_total")?;
        let unclean_stops_total = count("unclean_stops_total")?;
        let missed_after_crashes_total = count("missed_after_crashes_total")?;
        let clock_offset_ms = match meta("clock_offset_ms")? {
            Some(rusqlite::types::Value::Integer(n)) => n,
            _ => 0,
        };
        let run_state = match meta("run_state")? {
            Some(rusqlite::types::Value::Text(state)) => Some(state),
            _ => None,
        };
        let (buffered, oldest): (u64, Option<i64>) = if table_exists("readings")? {
            conn.query_row("SELECT count(*), min(taken_at_ms) FROM readings", [], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?))
            })?
        } else {
            (0, None)
        };
        let (last_run, saved_at_ms) = if table_exists("agent_status")? {
            let row: Option<(i64, String)> = conn
                .query_row(
                    "SELECT saved_at_ms, stats FROM agent_status WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                Some((at, json)) => (
                    Some(serde_json::from_str(&json).map_err(|e| {
                        Error::CorruptRow(format!("the saved counters do not parse: {e}"))
                    })?),
                    Some(at),
                ),
                None => (None, None),
            }
        } else {
            (None, None)
        };
        let now = unix_ms();
        Ok(Self {
            device_id,
            buffered,
            oldest_unacked_at_ms: oldest,
            oldest_unacked_age_secs: oldest.map(|t| (now - t).max(0) as f64 / 1000.0),
            dropped_total,
            unclean_stops_total,
            missed_after_crashes_total,
            clock_offset_ms,
            run_state,
            last_run,
            saved_at_ms,
        })
    }

    /// The status for a person, one fact a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<24}{v}\n"));
        line(
            "device",
            self.device_id.clone().unwrap_or_else(|| "?".into()),
        );
        line("buffered (unacked)", self.buffered.to_string());
        line(
            "oldest unacked",
            self.oldest_unacked_age_secs
                .map_or("–".into(), |s| format!("{s:.1} s ago")),
        );
        line("dropped (all time)", self.dropped_total.to_string());
        line(
            "unclean stops",
            format!(
                "{} (all time; {} readings the sensor produced were never stored after them)",
                self.unclean_stops_total, self.missed_after_crashes_total
            ),
        );
        line(
            "clock correction",
            match self.clock_offset_ms {
                0 => "none (the phone's clock agrees with the cloud's)".into(),
                ms => format!("{ms:+} ms (learned from the cloud's acks)"),
            },
        );
        line(
            "last run",
            match self.run_state.as_deref() {
                Some("running") => "running, or did not stop cleanly".into(),
                Some("stopped") => "stopped cleanly".into(),
                Some(other) => other.to_owned(),
                None => "–".into(),
            },
        );
        match (&self.last_run, self.saved_at_ms) {
            (Some(s), Some(at)) => {
                let age = (unix_ms() - at).max(0) as f64 / 1000.0;
                line(
                    "counters saved",
                    format!("{age:.1} s ago (this run, or the last one)"),
                );
                line("connected", s.connected.to_string());
                line("produced", s.readings_produced.to_string());
                line(
                    "batches sent",
                    format!(
                        "{} ({} resent: {} at once after a later ack, {} probing a silent cloud)",
                        s.batches_sent, s.batches_resent, s.batches_overtaken, s.probes
                    ),
                );
                line("readings acked", s.readings_acked.to_string());
                line("dropped (this run)", s.readings_dropped.to_string());
                line("reconnects", s.reconnects.to_string());
                line("bytes published", s.bytes_published.to_string());
                line(
                    "last ack",
                    s.last_ack_at_ms.map_or("–".into(), |t| {
                        format!("{:.1} s ago", (unix_ms() - t).max(0) as f64 / 1000.0)
                    }),
                );
                line("acks not trusted", s.acks_untrusted.to_string());
                line("notifications", s.notifications_received.to_string());
            }
            _ => line(
                "counters",
                "never saved (the agent has not run on this file)".into(),
            ),
        }
        out
    }
}
