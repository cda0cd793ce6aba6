//! `Idempotency-Key` on the POSTs that create: a retried request returns the first answer
//! instead of creating a second thing.
//!
//! The key is recorded in the same transaction as what the request created, together with the
//! answer, so "created" and "remembered" commit or vanish together: there is no window in which
//! a thing exists but its key does not (a crash after the commit replays; a crash before it
//! re-runs). Two requests with one key at once: the second's insert of the key waits for the
//! first's transaction, then finds the key and replays the first's answer, rolling back its own
//! work.
//!
//! Stored answers can hold a secret (a new person's API token), so they are sealed with
//! ChaCha20-Poly1305 under a key derived from the client's Idempotency-Key, which is never
//! stored: the table holds a digest to look the key up by and ciphertext only the client's key
//! opens. Both are HMAC-SHA-256 under a [`ServerKey`] that lives outside the database (derived
//! from the admin token), so a dump of the table alone cannot be searched for weak keys offline.
//! Keys are scoped to the caller (the same key from two tokens is two keys), kept for
//! [`RETENTION_HOURS`], and erased with the person.
//!
//! Consequences worth knowing: a replay after the person was erased finds nothing and runs
//! again (a new person, for `POST /v1/users`); a replay of `POST /v1/users` after the person's
//! token was rotated answers the first (now revoked) token; rotating the admin token forgets
//! every stored answer.

use axum::{
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use uuid::Uuid;

use crate::{
    Error,
    auth::Principal,
    error::Result,
    keys::SealingKey,
    people::{PeopleTx, PersonTx},
};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";
/// Shortest key: the key is what seals the stored answer, so it must not be guessable.
pub const MIN_KEY_LEN: usize = 16;
pub const MAX_KEY_LEN: usize = 255;
/// How long a key is remembered.
pub const RETENTION_HOURS: i32 = 24;

/// A client's `Idempotency-Key`: 16–255 visible ASCII characters (a UUID is the usual choice).
#[derive(Clone)]
pub struct IdempotencyKey(String);

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let ok = (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&raw.len())
            && raw.iter().all(|b| (0x21..=0x7e).contains(b));
        if !ok {
            return Err(Error::invalid(
                "Idempotency-Key",
                format!("must be {MIN_KEY_LEN}-{MAX_KEY_LEN} visible ASCII characters"),
            ));
        }
        // Checked ASCII above.
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }
}

/// The header as the OpenAPI document states it (never constructed: only its description is
/// used).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct KeyHeader {
    /// Makes a retry safe: the same key and body answer the first response; the same key with
    /// another body is 422.
    #[serde(rename = "Idempotency-Key")]
    #[param(min_length = 16, max_length = 255, pattern = "^[\\x21-\\x7E]+$")]
    idempotency_key: Option<String>,
}

/// The header, when the request has one.
pub struct MaybeKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(first) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(Error::invalid("Idempotency-Key", "send the header once"));
        }
        IdempotencyKey::parse(first.as_bytes()).map(|k| Self(Some(k)))
    }
}

/// The server's own key for deriving lookups and sealing keys: never stored with the data.
#[derive(Clone)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// Derived from a secret the server already keeps out of the database (the admin token).
    pub fn derive_from(secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"ecs idempotency server key v1\0");
        h.update(secret.as_bytes());
        Self(h.finalize().into())
    }
}

/// One keyed request: where its answer is looked up, what it must match, how it is sealed.
pub struct Once {
    lookup: [u8; 32],
    seal: [u8; 32],
    fingerprint: [u8; 32],
}

impl Once {
    /// `path` and `body` are what must match on a replay: the same key for another resource or
    /// another body is refused.
    pub fn new(
        server: &ServerKey,
        principal: Principal,
        key: &IdempotencyKey,
        path: &str,
        body: &impl Serialize,
    ) -> Self {
        let scope = match principal {
            Principal::Admin => "admin".to_owned(),
            Principal::User(id) => id.to_string(),
        };
        let derive = |purpose: &str| -> [u8; 32] {
            // Any key length is valid for HMAC.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&server.0)
                .expect("HMAC takes keys of any length");
            for part in [purpose, scope.as_str(), key.0.as_str()] {
                mac.update(&(part.len() as u64).to_be_bytes());
                mac.update(part.as_bytes());
            }
            mac.finalize().into_bytes().into()
        };
        let mut h = Sha256::new();
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update(serde_json::to_vec(body).unwrap_or_default());
        Self {
            lookup: derive("ecs idempotency lookup v1"),
            seal: derive("ecs idempotency seal v1"),
            fingerprint: h.finalize().into(),
        }
    }

    fn seal(&self, body: &[u8]) -> Result<([u8; 12], Vec<u8>)> {
        SealingKey::from_bytes(self.seal).seal_parts(&self.lookup, body)
    }

    fn open(&self, nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        SealingKey::from_bytes(self.seal).open_parts(&self.lookup, nonce, sealed)
    }
}

/// A create's answer: the status and JSON body, first-hand or replayed.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub replayed: bool,
}

impl Answer {
    pub(crate) fn fresh(status: StatusCode, value: &impl Serialize) -> Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::Internal(format!("cannot serialise an answer: {e}")))?;
        Ok(Self {
            status,
            body,
            replayed: false,
        })
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.replayed {
            headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }
}

type StoredRow = (Vec<u8>, i16, Vec<u8>, Vec<u8>);
/// A [`StoredRow`] with the lookup it was found by, first.
type FoundRow = (Vec<u8>, Vec<u8>, i16, Vec<u8>, Vec<u8>);

async fn find(conn: impl sqlx::PgExecutor<'_>, once: &Once) -> Result<Option<StoredRow>> {
    Ok(sqlx::query_as(
        "SELECT request_sha256, status, nonce, sealed_answer FROM idempotency_keys
         WHERE lookup_sha256 = $1 AND created_at > now() - make_interval(hours => $2)",
    )
    .bind(&once.lookup[..])
    .bind(RETENTION_HOURS)
    .fetch_optional(conn)
    .await?)
}

fn replay_of(once: &Once, row: StoredRow) -> Result<Answer> {
    let (fingerprint, status, nonce, sealed) = row;
    if fingerprint != once.fingerprint {
        return Err(Error::IdempotencyKeyReused);
    }
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| Error::Internal(format!("a stored answer has status {status}")))?;
    Ok(Answer {
        status,
        body: once.open(&nonce, &sealed)?,
        replayed: true,
    })
}

/// Before any work: the stored answer, when a first request with this key has finished (so a
/// replay costs no model call and no lock).
pub async fn replay(once: Option<&Once>, pool: &sqlx::PgPool) -> Result<Option<Answer>> {
    let Some(once) = once else { return Ok(None) };
    find(pool, once)
        .await?
        .map(|row| replay_of(once, row))
        .transpose()
}

/// Inside the person's transaction, before the work: claims the key (waiting for a concurrent
/// first request with it to commit or roll back). `Some` is that request's answer, to replay:
/// this transaction is then marked to roll back, so nothing done in it stays. `None`: go on with
/// the work, then [`record`] its answer.
pub async fn claim(once: Option<&Once>, tx: &mut PersonTx) -> Result<Option<Answer>> {
    let Some(once) = once else { return Ok(None) };
    // A placeholder row, completed by `record` in the same transaction: nobody ever sees it
    // incomplete. A stale row (past retention, not yet purged) is taken over.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (lookup_sha256, user_id, request_sha256, status, nonce, sealed_answer)
         VALUES ($1, $2, $3, 0, '', '')
         ON CONFLICT (lookup_sha256) DO UPDATE SET
             user_id = EXCLUDED.user_id, request_sha256 = EXCLUDED.request_sha256,
             status = 0, nonce = '', sealed_answer = '', created_at = now()
         WHERE idempotency_keys.created_at <= now() - make_interval(hours => $4)",
    )
    .bind(&once.lookup[..])
    .bind(tx.user_id())
    .bind(&once.fingerprint[..])
    .bind(RETENTION_HOURS)
    .execute(tx.conn())
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }
    tx.discard();
    let row = find(tx.conn(), once)
        .await?
        .ok_or_else(|| Error::Internal("an idempotency key is taken but cannot be read".into()))?;
    replay_of(once, row).map(Some)
}

/// The answer to `value`, stored with the key claimed by [`claim`] in the same transaction.
pub async fn record<T: Serialize>(
    once: Option<&Once>,
    tx: &mut PersonTx,
    status: StatusCode,
    value: &T,
) -> Result<Answer> {
    let answer = Answer::fresh(status, value)?;
    let Some(once) = once else { return Ok(answer) };
    let (nonce, sealed) = once.seal(&answer.body)?;
    sqlx::query(
        "UPDATE idempotency_keys SET status = $2, nonce = $3, sealed_answer = $4
         WHERE lookup_sha256 = $1",
    )
    .bind(&once.lookup[..])
    .bind(i16::try_from(status.as_u16()).unwrap_or(i16::MAX))
    .bind(&nonce[..])
    .bind(&sealed)
    .execute(tx.conn())
    .await?;
    Ok(answer)
}

/// [`claim`] for the keyed items of a group, in one statement: `claims[i]` is an item's key and
/// its person. Index-aligned: `None`, the key is claimed (go on with the item's work, then
/// [`record_many`]); `Some`, the first request's answer to replay, or its refusal (the key
/// reused for another request). A replayed item has written nothing, so nothing needs undoing.
pub async fn claim_many(
    tx: &mut PeopleTx,
    claims: &[(&Once, Uuid)],
) -> Result<Vec<Option<Result<Answer>>>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let lookups: Vec<&[u8]> = claims.iter().map(|(o, _)| &o.lookup[..]).collect();
    let people: Vec<Uuid> = claims.iter().map(|(_, u)| *u).collect();
    let fingerprints: Vec<&[u8]> = claims.iter().map(|(o, _)| &o.fingerprint[..]).collect();
    let claimed: Vec<Vec<u8>> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (lookup_sha256, user_id, request_sha256, status, nonce, sealed_answer)
         SELECT l, u, r, 0, '', '' FROM unnest($1::bytea[], $2::uuid[], $3::bytea[]) AS k(l, u, r)
         ON CONFLICT (lookup_sha256) DO UPDATE SET
             user_id = EXCLUDED.user_id, request_sha256 = EXCLUDED.request_sha256,
             status = 0, nonce = '', sealed_answer = '', created_at = now()
         WHERE idempotency_keys.created_at <= now() - make_interval(hours => $4)
         RETURNING lookup_sha256",
    )
    .bind(&lookups)
    .bind(&people)
    .bind(&fingerprints)
    .bind(RETENTION_HOURS)
    .fetch_all(tx.conn())
    .await?;
    let taken: Vec<&[u8]> = lookups
        .iter()
        .copied()
        .filter(|l| !claimed.iter().any(|c| c == l))
        .collect();
    // Each with the lookup it was found by.
    let stored: Vec<(Vec<u8>, StoredRow)> = if taken.is_empty() {
        Vec::new()
    } else {
        let rows: Vec<(Vec<u8>, StoredRow)> = sqlx::query_as::<_, FoundRow>(
            "SELECT lookup_sha256, request_sha256, status, nonce, sealed_answer
             FROM idempotency_keys WHERE lookup_sha256 = ANY($1)",
        )
        .bind(&taken)
        .fetch_all(tx.conn())
        .await?
        .into_iter()
        .map(|(lookup, fingerprint, status, nonce, sealed)| {
            (lookup, (fingerprint, status, nonce, sealed))
        })
        .collect();
        rows
    };
    Ok(claims
        .iter()
        .map(|(once, _)| {
            if claimed.iter().any(|c| c[..] == once.lookup[..]) {
                return None;
            }
            let found = stored
                .iter()
                .find(|(lookup, _)| lookup[..] == once.lookup[..]);
            Some(match found {
                Some((_, row)) => replay_of(once, row.clone()),
                None => Err(Error::Internal(
                    "an idempotency key is taken but cannot be read".into(),
                )),
            })
        })
        .collect())
}

/// Lets go of keys [`claim_many`] claimed for requests that then failed: in a transaction of
/// their own they would have rolled back, and the key with them, so a retry runs again.
pub async fn release_many(tx: &mut PeopleTx, claimed: &[&Once]) -> Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    let lookups: Vec<&[u8]> = claimed.iter().map(|o| &o.lookup[..]).collect();
    sqlx::query("DELETE FROM idempotency_keys WHERE lookup_sha256 = ANY($1) AND status = 0")
        .bind(&lookups)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// [`record`] for a group, in one statement: each answer stored with the key [`claim_many`]
/// claimed for it.
pub async fn record_many(tx: &mut PeopleTx, answers: &[(&Once, &Answer)]) -> Result<()> {
    if answers.is_empty() {
        return Ok(());
    }
    let mut lookups: Vec<&[u8]> = Vec::with_capacity(answers.len());
    let mut statuses: Vec<i16> = Vec::with_capacity(answers.len());
    let mut nonces: Vec<Vec<u8>> = Vec::with_capacity(answers.len());
    let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(answers.len());
    for (once, answer) in answers {
        let (nonce, ciphertext) = once.seal(&answer.body)?;
        lookups.push(&once.lookup[..]);
        statuses.push(i16::try_from(answer.status.as_u16()).unwrap_or(i16::MAX));
        nonces.push(nonce.to_vec());
        sealed.push(ciphertext);
    }
    sqlx::query(
        "UPDATE idempotency_keys k SET status = v.s, nonce = v.n, sealed_answer = v.a
         FROM unnest($1::bytea[], $2::int2[], $3::bytea[], $4::bytea[]) AS v(l, s, n, a)
         WHERE k.lookup_sha256 = v.l",
    )
    .bind(&lookups)
    .bind(&statuses)
    .bind(&nonces)
    .bind(&sealed)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Inside the person's transaction: the first request's answer when `once` was answered before
/// (and the transaction marked to roll back), else `work` — evaluated only then — answered with
/// `status` and recorded with the key, in the same transaction. `tx` is `&mut PersonTx`.
macro_rules! answer_once {
    ($once:expr, $tx:expr, $status:expr, $work:expr) => {
        match $crate::idempotency::claim($once, $tx).await? {
            Some(replayed) => replayed,
            None => {
                let value = $work;
                $crate::idempotency::record($once, $tx, $status, &value).await?
            }
        }
    };
}
pub(crate) use answer_once;

/// Forgets keys past retention (run by the retention job).
pub async fn purge(pool: &sqlx::PgPool) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => $1)",
    )
    .bind(RETENTION_HOURS)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s.as_bytes()).unwrap()
    }

    fn server() -> ServerKey {
        ServerKey::derive_from("an-admin-token-long-enough")
    }

    #[test]
    fn keys_must_be_long_visible_ascii() {
        assert!(IdempotencyKey::parse(b"0123456789abcdef").is_ok());
        for bad in [
            &b"short"[..],
            b"0123456789 abcdef",
            b"0123456789abcde\x00",
            &[b'a'; 256],
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_scoped_to_the_caller_and_requests_must_match() {
        let k = key("a-key-of-enough-length");
        let ana = Principal::User(Uuid::new_v4());
        let a = Once::new(&server(), ana, &k, "/p", &1);
        let same = Once::new(&server(), ana, &k, "/p", &1);
        let other_caller = Once::new(&server(), Principal::Admin, &k, "/p", &1);
        let other_body = Once::new(&server(), ana, &k, "/p", &2);
        assert_eq!(a.lookup, same.lookup);
        assert_eq!(a.fingerprint, same.fingerprint);
        assert_ne!(a.lookup, other_caller.lookup);
        assert_eq!(a.lookup, other_body.lookup);
        assert_ne!(a.fingerprint, other_body.fingerprint);
        // The sealing key is not the lookup digest (which is stored).
        assert_ne!(a.lookup, a.seal);
        // Without the server's key, the same client key leads elsewhere.
        let elsewhere = Once::new(
            &ServerKey::derive_from("another-admin-token"),
            ana,
            &k,
            "/p",
            &1,
        );
        assert_ne!(a.lookup, elsewhere.lookup);
    }

    #[test]
    fn a_sealed_answer_opens_only_with_its_key() {
        let ana = Principal::User(Uuid::new_v4());
        let a = Once::new(&server(), ana, &key("a-key-of-enough-length"), "/p", &1);
        let b = Once::new(&server(), ana, &key("another-key-of-length"), "/p", &1);
        let (nonce, sealed) = a.seal(b"{\"api_token\":\"secret\"}").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            a.open(&nonce, &sealed).unwrap(),
            b"{\"api_token\":\"secret\"}"
        );
        assert!(b.open(&nonce, &sealed).is_err());
    }
}
