//! The person's row as the lock that orders every change about a person.
//!
//! Assessments, credit-line changes, token rotation, consent changes, erasure and ingest's batch
//! transactions all take the person's `users` row first (then, where needed, their devices or
//! offers). One lock, always first, means they serialise per person and never wait on each other
//! in opposite orders.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Error, error::Result};

/// Locks the person's row for the rest of the transaction; `NotFound` when there is no such
/// person.
pub async fn lock(conn: &mut PgConnection, user_id: Uuid) -> Result<()> {
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    exists.map(drop).ok_or(Error::NotFound("user"))
}
