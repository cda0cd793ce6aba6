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

/// How hard a commit works to survive power loss. A connection starts with the level given to
/// [`open`]; [`set_durability`] changes it between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `synchronous=NORMAL`: in WAL mode a commit survives a crash of the process, but on power
    /// loss the transactions committed since the last sync (the last checkpoint, or the last
    /// `Full` commit on the file) may roll back. Only for writes whose rollback is harmless:
    /// deleting readings the cloud acknowledged (a resurrected reading is sent again, the cloud
    /// has it under the same seq and acknowledges it again). Never for a write that advances the
    /// buffer's `next_seq`: rolled back, it would hand out again seqs whose readings the cloud may
    /// already hold, and the cloud would discard the *new* readings as duplicates and
    /// acknowledge them: silent loss of any amount of new data, not just the last moments.
    Normal,
    /// `synchronous=FULL`: a commit survives power loss (the WAL is synced at every commit).
    /// Right for the inbox, because the agent tells the cloud "stored" right after the commit
    /// and the cloud then stops re-sending; and for the buffer's appends (see `buffer`).
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
    set_durability(&conn, durability)?;
    Ok(conn)
}

/// Sets how the connection's following commits are synced. SQLite applies the pragma when it is
/// prepared and refuses it inside a transaction, so call it between transactions, and never
/// through a cached statement.
pub(crate) fn set_durability(conn: &Connection, durability: Durability) -> Result<()> {
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(())
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
