//! People: creating a person, their profile, consent, tokens, and erasure (LGPD Art. 18).
//!
//! Every change here runs in a [`PersonTx`] (see [`lock`]): the person's row is locked first.

pub mod lock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

pub use lock::{ConsentBy, NewPersonRow, PeopleTx, PersonTx, retry};

use crate::{
    Error,
    auth::{Secret, issue_user_token},
    error::Result,
    features::EmotionFeatures,
    keys::Keyring,
};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// 1..=`max` characters and no control characters: Postgres text cannot hold NUL (it would be a
/// 500), and the others have no place in a name or a reference.
pub fn is_clean_text(value: &str, max: usize) -> bool {
    let len = value.chars().count();
    (1..=max).contains(&len) && !value.chars().any(char::is_control)
}

/// How a person wants to be called: 1–200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self> {
        // U+FEFF counts as a space, as in the schema's `\s` (ECMAScript), though Unicode does
        // not call it white space.
        let blank = raw.chars().all(|c| c.is_whitespace() || c == '\u{feff}');
        if !is_clean_text(raw, MAX_DISPLAY_NAME_CHARS) || blank {
            return Err(Error::invalid(
                "display_name",
                format!(
                    "must be 1-{MAX_DISPLAY_NAME_CHARS} characters, not only spaces, without control characters"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Serialize, ToSchema)]
pub struct PersonCreated {
    pub user_id: Uuid,
    /// The person's own API token. Shown only now; only its hash is stored.
    #[schema(value_type = String)]
    pub api_token: Secret,
    pub emotional_data_consent: bool,
    pub created_at: DateTime<Utc>,
}

/// Creates the person and their first API token in `tx` (begun by [`PersonTx::insert`]).
pub async fn create(tx: &mut PersonTx) -> Result<PersonCreated> {
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT created_at FROM users WHERE user_id = $1")
            .bind(tx.user_id())
            .fetch_one(tx.conn())
            .await?;
    let user_id = tx.user_id();
    let api_token = issue_user_token(tx.conn(), user_id).await?;
    Ok(PersonCreated {
        user_id,
        api_token,
        emotional_data_consent: tx.consents_to_emotional_data(),
        created_at,
    })
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct PersonView {
    pub user_id: Uuid,
    pub display_name: String,
    pub emotional_data_consent: bool,
    pub created_at: DateTime<Utc>,
    pub device_count: i64,
    pub reading_count: i64,
}

/// The profile as stored: the name still sealed.
#[derive(sqlx::FromRow)]
struct StoredPerson {
    user_id: Uuid,
    display_name: Option<String>,
    display_name_sealed: Option<Vec<u8>>,
    emotional_data_consent: bool,
    created_at: DateTime<Utc>,
    device_count: i64,
    reading_count: i64,
    master_key_id: Option<String>,
    wrapped_key: Option<Vec<u8>>,
}

/// A person's profile: one indexed read (the data key comes with it), the name opened here.
pub async fn view(pool: &PgPool, keyring: &Keyring, user_id: Uuid) -> Result<PersonView> {
    let stored: StoredPerson = sqlx::query_as(
        "SELECT u.user_id, u.display_name, u.display_name_sealed, u.emotional_data_consent,
                u.created_at,
                (SELECT count(*) FROM devices d WHERE d.user_id = u.user_id) AS device_count,
                COALESCE((SELECT readings_count FROM emotion_features f WHERE f.user_id = u.user_id), 0)
                    AS reading_count,
                k.master_key_id, k.wrapped_key
         FROM users u LEFT JOIN keystore.person_keys k ON k.user_id = u.user_id
         WHERE u.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound("user"))?;
    let display_name = match (stored.display_name, stored.display_name_sealed) {
        // Stored before encryption existed, and not sealed yet (the cloud seals those at start).
        (Some(name), _) => name,
        (None, Some(sealed)) => {
            let key = match (stored.master_key_id, stored.wrapped_key) {
                (Some(id), Some(wrapped)) => keyring.unwrap(user_id, &id, &wrapped)?,
                _ => return Err(Error::Internal("a sealed name without a data key".into())),
            };
            key.open_text(crate::keys::NAME_FIELD, &sealed)?
        }
        (None, None) => return Err(Error::Internal("a person without a name".into())),
    };
    Ok(PersonView {
        user_id: stored.user_id,
        display_name,
        emotional_data_consent: stored.emotional_data_consent,
        created_at: stored.created_at,
        device_count: stored.device_count,
        reading_count: stored.reading_count,
    })
}

/// Rolling emotional features, exponentially weighted by recency.
#[derive(Serialize, ToSchema)]
pub struct EmotionalProfile {
    pub user_id: Uuid,
    #[serde(flatten)]
    pub features: EmotionFeatures,
}

/// What the system has concluded from a person's emotional data.
pub async fn emotional_profile(pool: &PgPool, user_id: Uuid) -> Result<EmotionalProfile> {
    let features = crate::features::load(pool, user_id)
        .await?
        .ok_or(Error::NotFound("emotional profile"))?;
    Ok(EmotionalProfile { user_id, features })
}

/// Readings deleted per statement by [`erase_readings`].
const ERASE_CHUNK: i64 = 10_000;

/// The first part of an erasure: the person's readings (months of them, millions of rows),
/// deleted in statements of [`ERASE_CHUNK`] rows, each its own short transaction and none
/// holding the person's row. [`erase`] then removes the rest under the person's lock; were it
/// to delete every reading itself, that lock (and ingest's batches waiting on it for that
/// person) would last as long as the whole cascade. Readings stored meanwhile are the few that
/// cascade. Returns how many it deleted.
pub async fn erase_readings(pool: &PgPool, user_id: Uuid) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM emotion_readings WHERE (device_id, seq, recorded_at) IN (
                 SELECT device_id, seq, recorded_at FROM emotion_readings
                 WHERE user_id = $1 LIMIT $2)",
        )
        .bind(user_id)
        .bind(ERASE_CHUNK)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if n < ERASE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// Erases the person and everything about them. Every personal table references `users`
/// ON DELETE CASCADE; dead letters are linked by device only, so they go first.
pub async fn erase(tx: &mut PersonTx) -> Result<()> {
    let user_id = tx.user_id();
    // The key first: from this statement on, every sealed copy of their data, here or in any
    // backup, is noise (see `keys`).
    crate::keys::shred(tx.conn(), user_id).await?;
    // Holding the devices keeps ingest from writing a dead letter for them between the two
    // deletes below.
    sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "DELETE FROM dead_letters WHERE device_id IN (SELECT device_id FROM devices WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(tx.conn())
    .await?;
    sqlx::query("DELETE FROM users WHERE user_id = $1")
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    tracing::info!(%user_id, "user erased");
    Ok(())
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct ConsentView {
    pub user_id: Uuid,
    pub emotional_data_consent: bool,
    pub consent_recorded_at: Option<DateTime<Utc>>,
    pub consent_withdrawn_at: Option<DateTime<Utc>>,
}

/// Gives or withdraws consent. Withdrawing removes the derived emotional profile in the same
/// transaction, so no later decision can use it.
pub async fn set_consent(tx: &mut PersonTx, consent: bool, by: ConsentBy) -> Result<ConsentView> {
    let user_id = tx.user_id();
    if consent != tx.consents_to_emotional_data() {
        record_consent(tx.conn(), user_id, consent, by).await?;
    }
    let view: ConsentView = sqlx::query_as(
        "UPDATE users SET
             emotional_data_consent = $2,
             consent_recorded_at = CASE WHEN $2 AND NOT emotional_data_consent THEN now()
                                        ELSE consent_recorded_at END,
             consent_withdrawn_at = CASE WHEN NOT $2 AND emotional_data_consent THEN now()
                                         ELSE consent_withdrawn_at END
         WHERE user_id = $1
         RETURNING user_id, emotional_data_consent, consent_recorded_at, consent_withdrawn_at",
    )
    .bind(user_id)
    .bind(consent)
    .fetch_one(tx.conn())
    .await?;
    if !consent {
        sqlx::query("DELETE FROM emotion_features WHERE user_id = $1")
            .bind(user_id)
            .execute(tx.conn())
            .await?;
    }
    tracing::info!(%user_id, consent, "consent recorded");
    Ok(view)
}

/// Appends a grant or withdrawal to the person's consent history.
pub async fn record_consent(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    granted: bool,
    by: ConsentBy,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO consent_events (user_id, purpose, granted, recorded_by)
         VALUES ($1, 'emotional_data', $2, $3)",
    )
    .bind(user_id)
    .bind(granted)
    .bind(by.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    pub user_id: Uuid,
    /// The new token. Shown only now; every earlier token of the person no longer works.
    #[schema(value_type = String)]
    pub api_token: Secret,
}

/// Revokes every token of the person and issues a new one.
pub async fn rotate_token(tx: &mut PersonTx) -> Result<TokenIssued> {
    let user_id = tx.user_id();
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(tx.conn())
    .await?;
    let api_token = issue_user_token(tx.conn(), user_id).await?;
    tracing::info!(%user_id, "API token rotated");
    Ok(TokenIssued { user_id, api_token })
}

#[cfg(test)]
mod erasure_tests {
    use super::*;
    use crate::ingest::fixtures::user_with_device;

    async fn readings_of(pool: &PgPool, user_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM emotion_readings WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn months_of_readings_go_in_chunks_and_then_the_person(pool: PgPool) {
        let (user, device) = user_with_device(&pool).await;
        let (other, other_device) = user_with_device(&pool).await;
        for (user_id, device, n) in [(user, &device, 25_000), (other, &other_device, 10)] {
            sqlx::query(
                "INSERT INTO emotion_readings (device_id, seq, user_id, recorded_at, joy, trust,
                     fear, surprise, sadness, disgust, anger, anticipation, valence, arousal,
                     dominance, stress, focus)
                 SELECT $1, s, $2, now() - make_interval(secs => s), 0, 0, 0, 0, 0, 0, 0, 0,
                        0, 0, 0, 0, 0
                 FROM generate_series(1, $3) AS s",
            )
            .bind(device.as_str())
            .bind(user_id)
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        }
        assert_eq!(erase_readings(&pool, user).await.unwrap(), 25_000);
        assert_eq!(readings_of(&pool, user).await, 0);
        let mut tx = PersonTx::lock(&pool, user).await.unwrap();
        erase(&mut tx).await.unwrap();
        tx.finish().await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE user_id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(readings_of(&pool, other).await, 10, "nobody else's");
        assert_eq!(
            erase_readings(&pool, user).await.unwrap(),
            0,
            "nothing twice"
        );
    }
}
