//! Opening the agent's one SQLite file.
//!
//! The buffer and the inbox live in the same file but each holds its own connection, so a slow
//! inbox write never waits behind the buffer's lock (and vice versa). WAL lets those connections
//! read while another writes; `busy_timeout` makes the rare write-write overlap wait instead of
//! failing.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// How hard a commit works to survive power loss.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Durability {
    /// `synchronous=NORMAL`: in WAL mode a commit survives a crash of the process but the last
    /// transactions may roll back on power loss. Right for readings: tens per second, and the
    /// worst case is losing the last moments of a sensor stream.
    Normal,
    /// `synchronous=FULL`: a commit survives power loss. Right for the inbox, because the agent
    /// tells the cloud "stored" right after the commit and the cloud then stops re-sending.
    Full,
}

pub(crate) fn open(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::InvalidConfig(format!(
            "{} cannot use write-ahead logging (journal mode is {mode})",
            path.display()
        )));
    }
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// A store used from async tasks. SQLite calls block, so every call runs on tokio's blocking
/// pool and the async workers stay free; the mutex serialises calls on the one connection.
pub(crate) struct Shared<S>(Arc<Mutex<S>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S: Send + 'static> Shared<S> {
    pub(crate) fn new(store: S) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            // A panic inside an earlier call poisons the lock; SQLite rolled back whatever
            // transaction was open, so the store itself is still consistent.
            let mut guard = store.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(format!("database call did not finish: {e}")))?
    }
}
