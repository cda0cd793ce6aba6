//! Notifications from the cloud, kept on the phone.
//!
//! The cloud delivers a notification at least once: it re-sends until the phone sends a
//! receipt, and a receipt can be lost. The inbox therefore de-duplicates by
//! `notification_id`, and commits with `synchronous=FULL` because the receipt that follows a
//! commit makes the cloud stop re-sending: what it acknowledges must survive power loss.
//!
//! Each notification is stored as its versioned wire envelope ([`Downlink::NotificationV1`]), so
//! a later protocol version can still read what an older agent stored.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ecs_protocol::{Downlink, Notification, decode_downlink, encode_downlink};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::sqlite::{self, Durability};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    notification_id BLOB PRIMARY KEY,  -- 16-byte UUID
    received_at_ms  INTEGER NOT NULL,
    message         BLOB NOT NULL      -- postcard Downlink::NotificationV1
) STRICT;
";

/// A notification as the inbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub notification: Notification,
    /// When it first arrived, by the phone's clock (Unix milliseconds).
    pub received_at_ms: i64,
}

/// The device's notification inbox, in the agent's database file.
pub struct Inbox {
    conn: Connection,
}

impl Inbox {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = sqlite::open(path, Durability::Full)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Stores a notification unless one with the same id is already here. Returns whether it
    /// was new. Either way, once this returns `Ok` the notification is durably stored.
    pub fn insert(&mut self, notification: &Notification) -> Result<bool> {
        let message = encode_downlink(&Downlink::NotificationV1(notification.clone()))?;
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let inserted = self.conn.execute(
            "INSERT INTO inbox (notification_id, received_at_ms, message) VALUES (?1, ?2, ?3) \
             ON CONFLICT (notification_id) DO NOTHING",
            params![
                notification.notification_id.as_bytes().as_slice(),
                received_at_ms,
                message
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Every stored notification, in the order they first arrived.
    pub fn list(&self) -> Result<Vec<Notification>> {
        Ok(self
            .received()?
            .into_iter()
            .map(|r| r.notification)
            .collect())
    }

    /// Every stored notification with the time it first arrived, in arrival order.
    pub fn received(&self) -> Result<Vec<Received>> {
        received(&self.conn)
    }

    /// Notifications stored.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))?)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The inbox of the agent's file at `path`, read without writing (safe while the agent runs),
/// in arrival order; empty when the agent never stored a notification there.
pub fn read_only(path: &Path) -> Result<Vec<Received>> {
    if !path.exists() {
        return Err(Error::InvalidConfig(format!(
            "{} does not exist (is --db the agent's file?)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'inbox'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(Vec::new());
    }
    received(&conn)
}

fn received(conn: &Connection) -> Result<Vec<Received>> {
    let mut select = conn.prepare_cached(
        "SELECT notification_id, received_at_ms, message FROM inbox ORDER BY rowid",
    )?;
    let mut rows = select.query([])?;
    let mut received = Vec::new();
    while let Some(row) = rows.next()? {
        let received_at_ms: i64 = row.get(1)?;
        let message: Vec<u8> = row.get(2)?;
        match decode_downlink(&message) {
            Ok(Downlink::NotificationV1(notification)) => received.push(Received {
                notification,
                received_at_ms,
            }),
            Ok(other) => {
                return Err(Error::CorruptRow(format!(
                    "inbox holds a {other:?} instead of a notification"
                )));
            }
            Err(e) => {
                let id: Vec<u8> = row.get(0)?;
                return Err(Error::CorruptRow(format!("inbox entry {id:02x?}: {e}")));
            }
        }
    }
    Ok(received)
}
