//! A person's phones: registering one (the sensor's way in) and revoking it.
//!
//! Both run in the person's transaction ([`PersonTx`]): the consent they depend on and the count
//! of devices they bound cannot change underneath them.

use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, topic};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{Error, error::Result, people::PersonTx};

/// Phones one person may have registered and not revoked: a person's own token cannot create
/// devices (each a certificate identity, a topic pair, a row per reading) without bound.
pub const MAX_ACTIVE_DEVICES_PER_PERSON: i64 = 5;

#[derive(Serialize, ToSchema)]
pub struct DeviceRegistered {
    #[schema(pattern = "^[A-Za-z0-9]{1,32}$")]
    pub device_id: String,
    pub user_id: uuid::Uuid,
    pub registered_at: DateTime<Utc>,
    /// Where the device publishes readings.
    pub uplink_topic: String,
    /// Where the device receives acks and notifications.
    pub downlink_topic: String,
}

/// Registers `device_id` for the person. Requires consent to emotional data.
pub async fn register(tx: &mut PersonTx, device_id: DeviceId) -> Result<DeviceRegistered> {
    let user_id = tx.user_id();
    if !tx.consents_to_emotional_data() {
        return Err(Error::Conflict(
            "the person has not consented to emotional data; a sensor cannot be registered".into(),
        ));
    }
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(tx.conn())
    .await?;
    if active >= MAX_ACTIVE_DEVICES_PER_PERSON {
        return Err(Error::Conflict(format!(
            "the person already has {MAX_ACTIVE_DEVICES_PER_PERSON} active devices; revoke one first"
        )));
    }
    let registered_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO devices (device_id, user_id) VALUES ($1, $2)
         ON CONFLICT (device_id) DO NOTHING RETURNING registered_at",
    )
    .bind(device_id.as_str())
    .bind(user_id)
    .fetch_optional(tx.conn())
    .await?;
    let registered_at = registered_at
        .ok_or_else(|| Error::Conflict(format!("device {device_id} is already registered")))?;
    tracing::info!(%user_id, %device_id, "device registered");
    Ok(DeviceRegistered {
        uplink_topic: topic::uplink(&device_id),
        downlink_topic: topic::downlink(&device_id),
        device_id: device_id.to_string(),
        user_id,
        registered_at,
    })
}

/// Revokes one of the person's devices: ingest accepts nothing more from it, no notification
/// goes to it, and the revocation publisher tells the broker to cut it off.
pub async fn revoke(tx: &mut PersonTx, device_id: &DeviceId) -> Result<()> {
    let user_id = tx.user_id();
    let revoked = sqlx::query(
        "UPDATE devices SET revoked_at = COALESCE(revoked_at, now())
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id)
    .bind(device_id.as_str())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if revoked == 0 {
        return Err(Error::NotFound("device"));
    }
    tracing::info!(%user_id, %device_id, "device revoked");
    Ok(())
}
