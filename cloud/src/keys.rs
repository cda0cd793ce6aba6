//! Envelope encryption of personal data, crypto-shredding and master-key rotation.
//!
//! Every person has a **data key** (32 random bytes) that seals their most identifying fields
//! (today: their name) with ChaCha20-Poly1305. The data key is stored **wrapped** by a
//! **master key** in `keystore.person_keys`, a schema with no foreign key into the data, backed
//! up apart from it. The master key never enters the database or the logs: it comes from
//! `ECS_MASTER_KEY_FILE` (or `ECS_MASTER_KEY`), and the [`Keyring`] also holds the retired
//! master keys still needed while a rotation runs.
//!
//! Erasing a person deletes their key row **first** (in the erasure's transaction): from then on
//! every sealed copy of their fields, in the live tables or in any backup of the data, is noise,
//! even when that backup is restored next to the current key store.
//!
//! Every sealed value is bound to its owner and field (the AEAD's associated data), so a sealed
//! name copied onto another person, or into another column, does not open.

use std::{path::Path, sync::Arc};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Error, error::Result};

/// Bytes of a nonce, stored in front of every sealed value.
const NONCE_BYTES: usize = 12;

/// A 256-bit ChaCha20-Poly1305 key. Never printed.
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

impl SealingKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes[..]);
        Self(bytes)
    }

    /// Seals `msg` bound to `aad` under a fresh random nonce; returns the nonce and the
    /// ciphertext with its tag.
    pub fn seal_parts(&self, aad: &[u8], msg: &[u8]) -> Result<([u8; NONCE_BYTES], Vec<u8>)> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill(&mut nonce[..]);
        let sealed = ChaCha20Poly1305::new((&self.0).into())
            .encrypt(&Nonce::from(nonce), Payload { msg, aad })
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        Ok((nonce, sealed))
    }

    /// Opens what [`SealingKey::seal_parts`] sealed with the same `aad`.
    pub fn open_parts(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE_BYTES] = nonce
            .try_into()
            .map_err(|_| Error::Internal("a sealed value has a bad nonce".into()))?;
        ChaCha20Poly1305::new((&self.0).into())
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad })
            .map_err(|_| Error::Internal("a sealed value does not open with its key".into()))
    }

    /// Seals into one value: nonce || ciphertext and tag.
    pub fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        let (nonce, sealed) = self.seal_parts(aad, msg)?;
        Ok([&nonce[..], &sealed].concat())
    }

    /// Opens one value made by [`SealingKey::seal`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return Err(Error::Internal("a sealed value is too short".into()));
        }
        let (nonce, sealed) = sealed.split_at(NONCE_BYTES);
        self.open_parts(aad, nonce, sealed)
    }
}

/// A master key and its id (the first 8 bytes of its SHA-256, in hex: names it in the key store
/// without revealing it).
#[derive(Clone, Debug)]
pub struct MasterKey {
    key: SealingKey,
    id: String,
}

impl MasterKey {
    /// 64 hex digits (surrounding whitespace ignored), as `openssl rand -hex 32` writes.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            Error::InvalidInput("a master key must be 64 hex digits (openssl rand -hex 32)".into())
        };
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self::from_bytes(bytes))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidInput(format!(
                "cannot read the master key {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key: SealingKey::from_bytes(bytes),
            id,
        }
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes[..]);
        Self::from_bytes(bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as 64 hex digits, for writing a freshly made key to its file.
    pub fn to_hex(&self) -> String {
        self.key.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The master key new data keys are wrapped with, and the retired ones that may still wrap
/// some until `ecs-cloud keys rotate` has re-wrapped them.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: MasterKey,
    retired: Vec<MasterKey>,
}

/// What a data key is bound to when wrapped.
fn wrap_aad(user_id: Uuid) -> Vec<u8> {
    [b"ecs data key v1 ".as_slice(), user_id.as_bytes()].concat()
}

/// What a sealed field is bound to: its owner and its name.
fn field_aad(user_id: Uuid, field: &str) -> Vec<u8> {
    [
        b"ecs field v1 ".as_slice(),
        user_id.as_bytes(),
        field.as_bytes(),
    ]
    .concat()
}

impl Keyring {
    pub fn new(current: MasterKey, retired: Vec<MasterKey>) -> Self {
        Self { current, retired }
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Whether this keyring can open data keys wrapped by the master key `id`.
    pub fn holds(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == id)
    }

    /// Makes a data key for a new person and stores it wrapped, in the caller's transaction.
    pub async fn create_for(&self, conn: &mut PgConnection, user_id: Uuid) -> Result<DataKey> {
        let key = SealingKey::random();
        let wrapped = self.current.key.seal(&wrap_aad(user_id), &key.0)?;
        sqlx::query(
            "INSERT INTO keystore.person_keys (user_id, master_key_id, wrapped_key)
             VALUES ($1, $2, $3)",
        )
        .bind(user_id)
        .bind(&self.current.id)
        .bind(&wrapped)
        .execute(conn)
        .await?;
        Ok(DataKey { user_id, key })
    }

    /// The person's data key, or `None` when they have none (erased: their data is noise).
    pub async fn load(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
        user_id: Uuid,
    ) -> Result<Option<DataKey>> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT master_key_id, wrapped_key FROM keystore.person_keys WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(executor)
        .await?;
        row.map(|(id, wrapped)| self.unwrap(user_id, &id, &wrapped))
            .transpose()
    }

    pub(crate) fn unwrap(
        &self,
        user_id: Uuid,
        master_key_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey> {
        let master = self.find(master_key_id).ok_or_else(|| {
            Error::Internal(format!(
                "a data key is wrapped by master key {master_key_id}, which this replica does \
                 not hold (ECS_MASTER_KEY_FILE, ECS_RETIRED_MASTER_KEY_FILES)"
            ))
        })?;
        let bytes: [u8; 32] = master
            .key
            .open(&wrap_aad(user_id), wrapped)?
            .try_into()
            .map_err(|_| Error::Internal("a data key is not 32 bytes".into()))?;
        Ok(DataKey {
            user_id,
            key: SealingKey::from_bytes(bytes),
        })
    }

    /// Re-wraps, in batches of `batch`, every data key not wrapped by the current master key.
    /// Online: each batch is one short transaction, and a replica reading a key meanwhile finds
    /// it under the old master key or the new one, both of which it holds. Returns how many
    /// keys were re-wrapped.
    pub async fn rotate(&self, pool: &PgPool, batch: i64) -> Result<u64> {
        let mut rotated = 0;
        loop {
            let mut tx = pool.begin().await?;
            let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
                "SELECT user_id, master_key_id, wrapped_key FROM keystore.person_keys
                 WHERE master_key_id <> $1
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED",
            )
            .bind(&self.current.id)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(rotated);
            }
            for (user_id, id, wrapped) in rows {
                let key = self.unwrap(user_id, &id, &wrapped)?;
                let rewrapped = self.current.key.seal(&wrap_aad(user_id), &key.key.0)?;
                sqlx::query(
                    "UPDATE keystore.person_keys
                     SET master_key_id = $2, wrapped_key = $3, rotated_at = now()
                     WHERE user_id = $1",
                )
                .bind(user_id)
                .bind(&self.current.id)
                .bind(&rewrapped)
                .execute(&mut *tx)
                .await?;
                rotated += 1;
            }
            tx.commit().await?;
        }
    }

    /// Refuses a keyring that holds none of the master keys the key store's data keys are
    /// wrapped by: it would make keys for new people that no replica of this deployment could
    /// open (a master key from another deployment, or a typo'd file).
    pub async fn check_against_store(&self, pool: &PgPool) -> Result<()> {
        let census = Self::census(pool).await?;
        let total: i64 = census.iter().map(|(_, n)| n).sum();
        if total == 0 || census.iter().any(|(id, _)| self.holds(id)) {
            return Ok(());
        }
        let ids: Vec<&str> = census.iter().map(|(id, _)| id.as_str()).collect();
        Err(Error::InvalidInput(format!(
            "the master key {} (ECS_MASTER_KEY_FILE) wraps none of the {total} data keys in \
             the key store (they are wrapped by {}): is it this deployment's key?",
            self.current.id,
            ids.join(", ")
        )))
    }

    /// How many data keys each master key wraps.
    pub async fn census(pool: &PgPool) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT master_key_id, count(*) FROM keystore.person_keys
             GROUP BY master_key_id ORDER BY master_key_id",
        )
        .fetch_all(pool)
        .await?)
    }
}

/// Destroys the person's data key, in the erasure's transaction: what it sealed, wherever it
/// was copied, can no longer be read.
pub async fn shred(conn: &mut PgConnection, user_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM keystore.person_keys WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// One person's data key, unwrapped. Cloned only into [`KeyCache`].
#[derive(Clone)]
pub struct DataKey {
    user_id: Uuid,
    key: SealingKey,
}

impl DataKey {
    /// Whose key this is.
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    pub fn seal_text(&self, field: &str, text: &str) -> Result<Vec<u8>> {
        self.key
            .seal(&field_aad(self.user_id, field), text.as_bytes())
    }

    pub fn open_text(&self, field: &str, sealed: &[u8]) -> Result<String> {
        let bytes = self.key.open(&field_aad(self.user_id, field), sealed)?;
        String::from_utf8(bytes)
            .map_err(|_| Error::Internal(format!("sealed {field} is not UTF-8")))
    }

    /// Seals `msg` as `field` of the row `row` (its key, e.g. a reading's device and seq), so
    /// the sealed value opens only as that field of that row of this person.
    pub fn seal_row(&self, field: &str, row: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        self.key.seal(&row_aad(self.user_id, field, row), msg)
    }

    pub fn open_row(&self, field: &str, row: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        self.key.open(&row_aad(self.user_id, field, row), sealed)
    }
}

/// What a sealed field of a row is bound to: its owner, its name and the row's key. Its own
/// prefix (no row field opens as a whole-person field) and lengths in front of the name and the
/// row, so no two (field, row) pairs give the same bytes.
fn row_aad(user_id: Uuid, field: &str, row: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(17 + 16 + 16 + field.len() + row.len());
    aad.extend_from_slice(b"ecs row field v1 ");
    aad.extend_from_slice(user_id.as_bytes());
    for part in [field.as_bytes(), row] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Most data keys a [`KeyCache`] holds (about 64 bytes each).
const KEY_CACHE_CAPACITY: usize = 16_384;
/// How long a [`KeyCache`] keeps a key: the longest an erased person's key stays in a replica's
/// memory after the key store destroyed it.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

type CachedKeys = std::collections::HashMap<Uuid, (DataKey, std::time::Instant)>;

/// The data keys of the people whose phones stream, unwrapped once instead of once per batch.
///
/// A key enters the cache only once it is committed: one made for a batch is made in a
/// transaction of its own (never in the batch's, which may roll back after the key sealed
/// something). A key stays usable after a rotation (which re-wraps the same key); after an
/// erasure it is not needed again, since the person's batches are refused before their
/// readings are stored, and it is forgotten [`KEY_CACHE_TTL`] after it was read (no replica
/// keeps a shredded key in memory longer). Bounded: when full it is emptied and refills from
/// the key store.
#[derive(Clone, Debug)]
pub struct KeyCache {
    keyring: SharedKeyring,
    keys: Arc<std::sync::Mutex<CachedKeys>>,
}

impl KeyCache {
    pub fn new(keyring: SharedKeyring) -> Self {
        Self {
            keyring,
            keys: Arc::default(),
        }
    }

    /// A cache over a random master key made once per process and held by nothing else: for
    /// tests and scratch runs, whose sealed data is read back (if at all) by the same process.
    pub fn ephemeral() -> Self {
        static PROCESS: std::sync::OnceLock<KeyCache> = std::sync::OnceLock::new();
        PROCESS
            .get_or_init(|| Self::new(Arc::new(Keyring::new(MasterKey::random(), Vec::new()))))
            .clone()
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The person's data key, made now if they have none; `None` when they have none and are
    /// gone (a key read less than [`KEY_CACHE_TTL`] ago is answered from memory, even if the
    /// person was erased since).
    pub async fn key_for(&self, pool: &PgPool, user_id: Uuid) -> Result<Option<DataKey>> {
        {
            let mut keys = self.lock();
            match keys.get(&user_id) {
                Some((key, read_at)) if read_at.elapsed() < KEY_CACHE_TTL => {
                    return Ok(Some(key.clone()));
                }
                Some(_) => {
                    keys.remove(&user_id);
                }
                None => {}
            }
        }
        let key = match self.keyring.load(pool, user_id).await? {
            Some(key) => key,
            None => {
                // Under the person's row lock, which registration, erasure and the sealing of
                // names in the clear also take: no second key, and none for an erased person.
                let mut tx = pool.begin().await?;
                let alive: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE")
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if alive.is_none() {
                    return Ok(None);
                }
                let key = match self.keyring.load(&mut *tx, user_id).await? {
                    Some(key) => key,
                    None => self.keyring.create_for(&mut tx, user_id).await?,
                };
                tx.commit().await?;
                key
            }
        };
        let mut keys = self.lock();
        if keys.len() >= KEY_CACHE_CAPACITY {
            keys.clear();
        }
        keys.insert(user_id, (key.clone(), std::time::Instant::now()));
        Ok(Some(key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedKeys> {
        // Each holder makes one call on the map: a panic cannot leave it half-changed.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Seals, at start, the names stored in the clear before encryption existed (and gives their
/// owners a data key). Idempotent and safe with several replicas starting at once: each row is
/// taken under its person's lock. Returns how many were sealed.
pub async fn seal_legacy_names(pool: &PgPool, keyring: &Keyring) -> Result<u64> {
    let mut sealed = 0;
    loop {
        let mut tx = pool.begin().await?;
        // By the partial index `users_name_in_clear_idx`: each step finds the next row at once.
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT user_id, display_name FROM users WHERE display_name IS NOT NULL
             ORDER BY user_id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, name)) = row else {
            tx.commit().await?;
            return Ok(sealed);
        };
        let key = match keyring.load(&mut *tx, user_id).await? {
            Some(key) => key,
            None => keyring.create_for(&mut tx, user_id).await?,
        };
        sqlx::query(
            "UPDATE users SET display_name = NULL, display_name_sealed = $2 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(key.seal_text(NAME_FIELD, &name)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sealed += 1;
    }
}

/// The field name the display name is sealed under.
pub const NAME_FIELD: &str = "display_name";

/// A keyring shared by the API and the background tasks.
pub type SharedKeyring = Arc<Keyring>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn person(pool: &PgPool) -> Uuid {
        let user_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
             VALUES ($1, 'Legacy', true, now())",
        )
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
        user_id
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn racing_batches_of_a_person_without_a_key_get_one_key(pool: PgPool) {
        let user_id = person(&pool).await;
        let keys = KeyCache::new(Arc::new(Keyring::new(MasterKey::random(), Vec::new())));
        // Two caches (two replicas) and one, all at once.
        let other = KeyCache::new(keys.keyring.clone());
        let (a, b, c) = tokio::join!(
            keys.key_for(&pool, user_id),
            other.key_for(&pool, user_id),
            keys.key_for(&pool, user_id),
        );
        let sealed = a.unwrap().unwrap().seal_text("f", "x").unwrap();
        for key in [b.unwrap().unwrap(), c.unwrap().unwrap()] {
            assert_eq!(key.open_text("f", &sealed).unwrap(), "x");
        }
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM keystore.person_keys WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_master_key_that_wraps_nothing_in_the_store_is_refused(pool: PgPool) {
        let ours = MasterKey::random();
        let foreign = Keyring::new(MasterKey::random(), Vec::new());
        assert!(
            foreign.check_against_store(&pool).await.is_ok(),
            "empty store"
        );
        let keys = KeyCache::new(Arc::new(Keyring::new(ours.clone(), Vec::new())));
        keys.key_for(&pool, person(&pool).await).await.unwrap();
        let refused = foreign.check_against_store(&pool).await.unwrap_err();
        assert!(
            refused.to_string().contains("ECS_MASTER_KEY_FILE"),
            "{refused}"
        );
        // A new key with ours still held (a rotation under way) is fine.
        let rotating = Keyring::new(MasterKey::random(), vec![ours]);
        assert!(rotating.check_against_store(&pool).await.is_ok());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn no_key_is_made_for_a_person_who_is_gone(pool: PgPool) {
        let keys = KeyCache::ephemeral();
        assert!(keys.key_for(&pool, Uuid::new_v4()).await.unwrap().is_none());
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM keystore.person_keys")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, 0);
    }

    #[test]
    fn a_row_field_opens_only_as_that_field_of_that_row_of_that_person() {
        let key = |user_id| DataKey {
            user_id,
            key: SealingKey::from_bytes([7; 32]),
        };
        let (ana, bia) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = key(ana)
            .seal_row("thoughts", b"phone1\x00", b"\x01\x50")
            .unwrap();
        assert_eq!(
            key(ana)
                .open_row("thoughts", b"phone1\x00", &sealed)
                .unwrap(),
            b"\x01\x50"
        );
        assert!(
            key(ana)
                .open_row("thoughts", b"phone1\x01", &sealed)
                .is_err()
        );
        assert!(key(ana).open_row("name", b"phone1\x00", &sealed).is_err());
        assert!(
            key(bia)
                .open_row("thoughts", b"phone1\x00", &sealed)
                .is_err()
        );
        // The lengths are part of what it is bound to: no (field, row) pair collides.
        assert!(
            key(ana)
                .open_row("thought", b"sphone1\x00", &sealed)
                .is_err()
        );
        assert!(
            key(ana).open_text("thoughts", &sealed).is_err(),
            "a row field opens as a whole-person field"
        );
    }
}
