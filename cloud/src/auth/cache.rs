//! Validated user tokens, remembered so that a request costs no query to authenticate.
//!
//! Resolving a token is one indexed read; on a route that is itself one read (a person's
//! profile) it doubles what the request asks of Postgres. So a replica remembers the tokens it
//! has resolved, by digest, for at most [`TTL`], and forgets one as soon as it is revoked:
//!
//! - **Revocations reach every replica.** A trigger on `api_tokens` (migration 0011) notifies
//!   [`CHANNEL`] with the digest of every token updated (revoked, rotated) or deleted (an
//!   erasure), and `*` on a `TRUNCATE`; [`listen`] forgets what is named.
//! - **The replica that revoked forgets at once**, before it answers ([`TokenCache::forget_user`]),
//!   so its own caller never sees the old token work. Another replica forgets when the
//!   notification arrives: milliseconds after the revoking transaction commits.
//! - **No notification can be missed unseen.** The cache is used only while [`listen`] holds a
//!   listening connection: when that connection is lost (or fails the question it is asked
//!   every [`HEALTH_CHECK_EVERY`], which finds a connection dropped without a word), everything
//!   is forgotten and every request queries again until it listens again. A token resolved by a query that raced a
//!   revocation is not remembered ([`TokenCache::generation`]): it would outlive its
//!   notification.
//! - **Bounded**: at most [`MAX_ENTRIES`] tokens; past it, the expired are swept, and if that
//!   is not enough, everything is forgotten (a flood of distinct valid tokens costs queries, not
//!   memory). Tokens that do not resolve are never remembered (failures are limited per address
//!   instead, see `Authenticator::authenticate_from`).

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// The channel the `api_tokens` trigger notifies (migration 0011).
pub const CHANNEL: &str = "ecs_api_tokens";
/// Longest a resolved token is trusted without asking Postgres again: a bound on anything the
/// notifications could still miss (an operator's change made with the trigger disabled).
pub const TTL: Duration = Duration::from_secs(60);
/// Most tokens remembered.
pub const MAX_ENTRIES: usize = 100_000;

const RELISTEN_INITIAL: Duration = Duration::from_millis(200);
const RELISTEN_MAX: Duration = Duration::from_secs(10);
/// How often the listening connection is asked a question. A listener only reads, so a
/// connection dropped without a word (a NAT's idle timeout, a failed-over host) would otherwise
/// look like a quiet channel for ever, and every revocation made elsewhere would be missed.
pub const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest the health check may take before the connection is taken for lost.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct Entry {
    user_id: Uuid,
    resolved_at: Instant,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    /// Whether [`listen`] holds a listening connection: only then is the cache used.
    listening: AtomicBool,
    /// Bumped by every forgetting; a query's answer is remembered only if no forgetting happened
    /// while it ran.
    generation: AtomicU64,
}

impl TokenCache {
    /// The person whose token has this digest, when it was resolved within [`TTL`] and the
    /// cache is in use.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Uuid> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.lock();
        entries
            .get(digest)
            .filter(|e| e.resolved_at.elapsed() < TTL)
            .map(|e| e.user_id)
    }

    /// Taken before the query that resolves a token; handed back to [`TokenCache::remember`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a token resolved by a query that started at `generation`, unless something was
    /// forgotten since (the answer may predate that revocation) or the cache is not in use.
    pub fn remember(&self, digest: [u8; 32], user_id: Uuid, generation: u64) {
        let mut entries = self.lock();
        // Checked under the lock that forgetting takes too: a forgetting either happened before
        // (seen here) or happens after (and removes this entry).
        if !self.listening.load(Ordering::Acquire) || self.generation() != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.resolved_at.elapsed() < TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                user_id,
                resolved_at: Instant::now(),
            },
        );
    }

    /// Forgets one token (its digest).
    pub fn forget(&self, digest: &[u8; 32]) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(digest);
    }

    /// Forgets every token of `user_id`: called by the replica that revoked them, before it
    /// answers.
    pub fn forget_user(&self, user_id: Uuid) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, e| e.user_id != user_id);
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Starts or stops using the cache; either way, what it held is forgotten (notifications
    /// may have been missed in between).
    pub(super) fn set_listening(&self, listening: bool) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        self.listening.store(listening, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic elsewhere while holding it leaves a map that is still a valid map.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one notification's payload: a digest in hex, or `*`.
    fn apply(&self, payload: &str) {
        if payload == "*" {
            self.forget_all();
            return;
        }
        let mut digest = [0u8; 32];
        match hex::decode_to_slice(payload, &mut digest) {
            Ok(()) => self.forget(&digest),
            // Not ours to read: forgetting everything is the safe answer.
            Err(_) => {
                warn!(
                    payload,
                    "unreadable token revocation; forgetting every token"
                );
                self.forget_all();
            }
        }
    }
}

/// Keeps a connection listening on [`CHANNEL`] until shutdown, and forgets what each
/// notification names. The cache is in use only while it listens.
pub async fn listen(cache: std::sync::Arc<TokenCache>, pool: PgPool, shutdown: CancellationToken) {
    // A connection of its own, not one of the replica's pool: held for as long as the replica
    // runs, it would take one from the requests (or, in a pool of one, all of them).
    let options = (*pool.connect_options()).clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let mut backoff = ecs_mqtt_link::Backoff::new(RELISTEN_INITIAL, RELISTEN_MAX);
    while !shutdown.is_cancelled() {
        let listener = tokio::select! {
            () = shutdown.cancelled() => break,
            l = subscribe(&pool) => l,
        };
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for token revocations; every request queries");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        // Whatever ends this listening (a lost connection, shutdown, a panic), the cache stops
        // being used with it.
        let _listening = Listening::start(&cache);
        backoff.reset();
        info!("listening for token revocations; resolved tokens are remembered");
        let mut health = tokio::time::interval(HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.try_recv() => r,
                _ = health.tick() => {
                    let asked = tokio::time::timeout(
                        HEALTH_CHECK_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut listener),
                    )
                    .await;
                    match asked {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => {
                            warn!(error = %e, "LISTEN connection for token revocations failed its check");
                        }
                        Err(_) => warn!("LISTEN connection for token revocations did not answer its check"),
                    }
                    break;
                }
            };
            match received {
                Ok(Some(notification)) => cache.apply(notification.payload()),
                // `Ok(None)`: the connection was lost (what was notified meanwhile is gone).
                Ok(None) => {
                    warn!("LISTEN connection for token revocations lost");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "LISTEN connection for token revocations failed");
                    break;
                }
            }
        }
    }
}

/// The cache in use for as long as this lives.
struct Listening<'a>(&'a TokenCache);

impl<'a> Listening<'a> {
    fn start(cache: &'a TokenCache) -> Self {
        cache.set_listening(true);
        Self(cache)
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.set_listening(false);
    }
}

async fn subscribe(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    // This loop reconnects itself, knowing it has to forget; sqlx's own reconnect would not say.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> TokenCache {
        let cache = TokenCache::default();
        cache.set_listening(true);
        cache
    }

    #[test]
    fn nothing_is_used_unless_listening() {
        let cache = TokenCache::default();
        let (digest, user) = ([1; 32], Uuid::new_v4());
        cache.remember(digest, user, cache.generation());
        assert_eq!(cache.get(&digest), None);
        assert!(cache.is_empty());
        cache.set_listening(true);
        cache.remember(digest, user, cache.generation());
        assert_eq!(cache.get(&digest), Some(user));
        // Losing the connection forgets everything.
        cache.set_listening(false);
        assert_eq!(cache.get(&digest), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn an_answer_that_raced_a_revocation_is_not_remembered() {
        let cache = listening();
        let (digest, user) = ([2; 32], Uuid::new_v4());
        let before = cache.generation();
        // The revocation's notification arrives while the query runs.
        cache.forget(&digest);
        cache.remember(digest, user, before);
        assert_eq!(cache.get(&digest), None);
    }

    #[test]
    fn revocations_forget_by_digest_by_person_and_all() {
        let cache = listening();
        let (ana, bia) = (Uuid::new_v4(), Uuid::new_v4());
        for (d, u) in [([1; 32], ana), ([2; 32], ana), ([3; 32], bia)] {
            cache.remember(d, u, cache.generation());
        }
        cache.apply(&hex::encode([3u8; 32]));
        assert_eq!(cache.get(&[3; 32]), None);
        assert_eq!(cache.get(&[1; 32]), Some(ana));
        cache.forget_user(ana);
        assert!(cache.is_empty());
        cache.remember([4; 32], bia, cache.generation());
        cache.apply("*");
        assert!(cache.is_empty());
        cache.remember([5; 32], bia, cache.generation());
        cache.apply("not hex");
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = listening();
        let user = Uuid::new_v4();
        for i in 0..=MAX_ENTRIES as u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            cache.remember(digest, user, cache.generation());
        }
        assert!(cache.len() <= MAX_ENTRIES);
    }
}
