//! How a message reached ingest, and so where the decision about it is written.
//!
//! The decision itself is the same for all three (one code path in [`Ingest`](super::Ingest));
//! only its writes differ. A live uplink from the broker that can never be stored becomes a new
//! dead letter. A dead letter replayed by an operator that is still refused stays the *same* row,
//! its reason brought up to date: replaying never makes a second row for one payload. A dry run
//! writes nothing at all.

use std::{fmt, str::FromStr};

use ecs_protocol::{Ack, DeviceId};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;

/// The key of a `dead_letters` row. Defined here because ingest writes them; the
/// [`dead_letters`](crate::dead_letters) stage reads and replays them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type, serde::Serialize,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct DeadLetterId(i64);

impl DeadLetterId {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Not a dead letter id: ids are positive integers (`GENERATED ALWAYS AS IDENTITY`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a dead letter id is a positive integer, not {0:?}")]
pub struct DeadLetterIdError(String);

impl FromStr for DeadLetterId {
    type Err = DeadLetterIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(DeadLetterIdError(s.to_owned())),
        }
    }
}

/// Where the decision about one message is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Delivery {
    /// From the broker: a payload that can never be stored becomes a new dead letter.
    Live,
    /// An operator replays this dead letter: if it is still refused, that row stays, with the
    /// reason found now; no other row is written for it.
    Replay(DeadLetterId),
    /// Decide only, write nothing. Whether a batch would be stored is read from the readings
    /// already there; a refusal by a database constraint cannot be known without the insert.
    DryRun,
}

/// Brings dead letter `id` up to date with the `reason` it is refused for now, when `device`
/// (if the payload names one) is still registered, not revoked and its person consenting — the
/// same condition as for writing a new one. Returns the rows updated: 0 when the device is no
/// longer accepted, or the dead letter is gone (replayed meanwhile, purged, erased).
///
/// No device lock, unlike the live insert: erasure deletes the dead letter rows themselves, so
/// the row lock this UPDATE takes orders the two (whichever comes second finds the other done).
pub(super) async fn keep_again(
    pool: &PgPool,
    id: DeadLetterId,
    device: Option<&DeviceId>,
    reason: &str,
) -> Result<u64> {
    let updated = match device {
        Some(device) => {
            sqlx::query(
                "UPDATE dead_letters SET reason = $2
                 WHERE dead_letter_id = $1 AND EXISTS (
                     SELECT 1 FROM devices d JOIN users u ON u.user_id = d.user_id
                     WHERE d.device_id = $3 AND d.revoked_at IS NULL AND u.emotional_data_consent)",
            )
            .bind(id)
            .bind(reason)
            .bind(device.as_str())
            .execute(pool)
            .await?
        }
        None => {
            sqlx::query("UPDATE dead_letters SET reason = $2 WHERE dead_letter_id = $1")
                .bind(id)
                .bind(reason)
                .execute(pool)
                .await?
        }
    };
    Ok(updated.rows_affected())
}

/// How many readings of the range `ack` of `device` are stored already (a dry run's stand-in
/// for the insert's `ON CONFLICT DO NOTHING`).
pub(super) async fn already_stored(pool: &PgPool, device: &DeviceId, ack: Ack) -> Result<usize> {
    // The range passed `check_batch`, so both ends fit in a bigint.
    let present: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emotion_readings WHERE device_id = $1 AND seq BETWEEN $2 AND $3",
    )
    .bind(device.as_str())
    .bind(i64::try_from(ack.first_seq).unwrap_or(i64::MAX))
    .bind(i64::try_from(ack.up_to_seq).unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await?;
    Ok(usize::try_from(present).unwrap_or(usize::MAX))
}

/// How many of `ids` a receipt from `device` would mark delivered (a dry run's stand-in for the
/// receipt's UPDATE).
pub(super) async fn deliverable(pool: &PgPool, device: &DeviceId, ids: &[Uuid]) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications
         WHERE notification_id = ANY($1) AND device_id = $2 AND delivered_at IS NULL",
    )
    .bind(ids)
    .bind(device.as_str())
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
