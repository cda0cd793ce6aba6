//! What a person can see of how their data is held and used: their consent history (append-only,
//! LGPD Art. 8 §2), the trail of every read of their data by the admin/service token (Art. 37),
//! and an export of everything the system holds about them (Art. 18 II and V).
//!
//! Encryption at rest and crypto-shredding are [`crate::keys`].

pub mod export;
pub mod thoughts;
pub mod trail;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::Result;

/// One grant or withdrawal of consent.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ConsentEvent {
    pub event_id: i64,
    /// What the consent is for; `emotional_data` (LGPD Art. 11) is the only purpose so far.
    pub purpose: String,
    pub granted: bool,
    /// `self` (the person's own token), `admin`, or `migration` (reconstructed from the state
    /// before the history began).
    pub recorded_by: String,
    pub recorded_at: DateTime<Utc>,
}

/// One read of the person's data by the admin/service token.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AccessRecord {
    pub access_id: i64,
    /// Who read: `admin` (the service token; the only principal that reads other people's data).
    pub principal: String,
    /// What was read: method and route template.
    pub resource: String,
    /// The request's `x-request-id`, to find it in the logs.
    pub request_id: Option<String>,
    pub accessed_at: DateTime<Utc>,
}

/// Most records one page of the history or the trail holds.
pub const PAGE: i64 = 500;

/// The person's consent history, oldest first, after `after` (an `event_id`).
pub async fn consent_history(
    pool: &PgPool,
    user_id: Uuid,
    after: i64,
) -> Result<Vec<ConsentEvent>> {
    Ok(sqlx::query_as(
        "SELECT event_id, purpose, granted, recorded_by, recorded_at FROM consent_events
         WHERE user_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
    )
    .bind(user_id)
    .bind(after)
    .bind(PAGE)
    .fetch_all(pool)
    .await?)
}

/// The reads of the person's data, oldest first, after `after` (an `access_id`).
pub async fn access_log(pool: &PgPool, user_id: Uuid, after: i64) -> Result<Vec<AccessRecord>> {
    Ok(sqlx::query_as(
        "SELECT access_id, principal, resource, request_id, accessed_at FROM data_access_log
         WHERE user_id = $1 AND access_id > $2 ORDER BY access_id LIMIT $3",
    )
    .bind(user_id)
    .bind(after)
    .bind(PAGE)
    .fetch_all(pool)
    .await?)
}
