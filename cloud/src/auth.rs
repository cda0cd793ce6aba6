//! Bearer-token authentication for the REST API.
//!
//! Two kinds of caller: the admin/service token (from the environment, full rights) and per-user
//! tokens (issued when a user is created, stored only as SHA-256, reaching only that user's data).
//! Tokens are compared as digests in constant time, and never logged.
//!
//! A resolved user token is remembered by the replica until it is revoked ([`cache`]), so an
//! authenticated request usually costs no query.
//!
//! Every authenticated request spends a token of its caller's rate (per principal, not per
//! address: a person's phone and laptop share one budget, and one person's flood never slows
//! another's requests); over it, the answer is 429 with `Retry-After`.

use std::time::{Duration, Instant};

use axum::{extract::FromRequestParts, http::request::Parts};
use ecs_limits::KeyedRates;
use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::{Error, error::Result};

pub mod cache;

pub use cache::TokenCache;

/// Shortest admin token accepted at start-up: anything shorter is guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
const USER_TOKEN_PREFIX: &str = "ecs_u_";

/// A secret in the clear (an API token at the moment it is issued): it cannot be printed, and
/// leaves the process only in the one response that hands it to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Requests per second (and burst) per caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiRates {
    pub per_user: f64,
    pub per_user_burst: f64,
    /// The admin/service token (the bank's systems posting transactions, operators).
    pub admin: f64,
    pub admin_burst: f64,
}

impl Default for ApiRates {
    fn default() -> Self {
        Self {
            per_user: 20.0,
            per_user_burst: 40.0,
            admin: 2_000.0,
            admin_burst: 4_000.0,
        }
    }
}

/// Callers remembered at most by the rate table.
const MAX_RATED_CALLERS: usize = 100_000;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    Admin,
    User(Uuid),
}

impl Principal {
    /// Admins reach everyone; a user reaches only themself.
    pub fn ensure_can_access(self, user_id: Uuid) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::User(own) if own == user_id => Ok(()),
            Principal::User(_) => Err(Error::Forbidden),
        }
    }

    pub fn ensure_admin(self) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::User(_) => Err(Error::Forbidden),
        }
    }
}

/// Resolves bearer tokens to principals.
pub struct Authenticator {
    admin_digest: [u8; 32],
    pool: PgPool,
    /// Used only while `cache::listen` runs for it (the app starts it; tests that build an
    /// authenticator alone query every time).
    tokens: std::sync::Arc<TokenCache>,
    user_rates: KeyedRates<Uuid>,
    admin_rate: std::sync::Mutex<ecs_limits::TokenBucket>,
    /// Failed authentications per client address: guessing (or a flood of junk tokens) from
    /// one address is slowed without costing anyone else.
    failures: KeyedRates<std::net::IpAddr>,
}

/// Failed authentications per second one address may make (with a burst of twice that).
pub const FAILED_AUTHENTICATIONS_PER_ADDRESS: f64 = 10.0;

impl Authenticator {
    /// With the default [`ApiRates`].
    pub fn new(admin_token: &str, pool: PgPool) -> Result<Self> {
        Self::with_rates(admin_token, pool, ApiRates::default())
    }

    pub fn with_rates(admin_token: &str, pool: PgPool, rates: ApiRates) -> Result<Self> {
        if admin_token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(Error::InvalidInput(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            )));
        }
        Ok(Self {
            admin_digest: digest(admin_token),
            pool,
            tokens: Default::default(),
            user_rates: KeyedRates::new(rates.per_user, rates.per_user_burst, MAX_RATED_CALLERS),
            admin_rate: std::sync::Mutex::new(ecs_limits::TokenBucket::new(
                rates.admin,
                rates.admin_burst,
                Instant::now(),
            )),
            failures: KeyedRates::new(
                FAILED_AUTHENTICATIONS_PER_ADDRESS,
                2.0 * FAILED_AUTHENTICATIONS_PER_ADDRESS,
                MAX_RATED_CALLERS,
            ),
        })
    }

    /// [`Authenticator::authenticate`] for a client at `addr` (when known): from an address past
    /// its rate of failures, only a credential known without a query (the admin token, a token
    /// already in the cache) is let through; anything else is answered 429 before it costs a
    /// query. So junk from one address behind a NAT or proxy does not lock out its valid callers,
    /// and guessing gains nothing: tokens are 256 random bits (the admin's at least
    /// [`MIN_ADMIN_TOKEN_LEN`] characters), and what the limit bounds is the queries of the
    /// guesses.
    pub async fn authenticate_from(
        &self,
        addr: Option<std::net::IpAddr>,
        authorization: Option<&str>,
    ) -> Result<Principal> {
        let now = Instant::now();
        if let Some(ip) = addr
            && let Some(wait) = self.failures.wait_for(&ip, now)
        {
            if let Some(principal) = bearer(authorization).and_then(|t| self.known(&digest(t))) {
                return Ok(principal);
            }
            return Err(Error::RateLimited {
                what: "too many failed authentications from this address",
                retry_after: wait.min(Duration::from_secs(3600)),
            });
        }
        let outcome = self.authenticate(authorization).await;
        if let (Some(ip), Err(Error::Unauthenticated)) = (addr, &outcome) {
            // Spent after the fact: only failures count.
            let _ = self.failures.take_or_wait(&ip, now);
        }
        outcome
    }

    /// Spends one request of the caller's rate.
    pub fn spend(&self, principal: Principal) -> Result<()> {
        let now = Instant::now();
        let taken = match principal {
            Principal::Admin => self
                .admin_rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_or_wait(1.0, now),
            Principal::User(id) => self.user_rates.take_or_wait(&id, now),
        };
        taken.map_err(|wait| Error::RateLimited {
            what: "request rate exceeded for this token",
            retry_after: wait.min(Duration::from_secs(3600)),
        })
    }

    /// Whether `authorization` carries the admin token (no query, no rate spent): for the access
    /// trail, which records what the admin token reads.
    pub fn is_admin(&self, authorization: Option<&str>) -> bool {
        bearer(authorization)
            .is_some_and(|token| constant_time_eq(&digest(token), &self.admin_digest))
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let token = bearer(authorization).ok_or(Error::Unauthenticated)?;
        let token_digest = digest(token);
        if let Some(principal) = self.known(&token_digest) {
            return Ok(principal);
        }
        // Only something shaped like a token we issue costs a database query.
        let shaped = token
            .strip_prefix(USER_TOKEN_PREFIX)
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !shaped {
            return Err(Error::Unauthenticated);
        }
        let generation = self.tokens.generation();
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&token_digest[..])
        .fetch_optional(&self.pool)
        .await?;
        let user = user.ok_or(Error::Unauthenticated)?;
        self.tokens.remember(token_digest, user, generation);
        Ok(Principal::User(user))
    }

    /// The principal of a token known without a query: the admin token, or a person's token the
    /// cache remembers (a revoked one is forgotten the moment it is revoked).
    fn known(&self, token_digest: &[u8; 32]) -> Option<Principal> {
        if constant_time_eq(token_digest, &self.admin_digest) {
            return Some(Principal::Admin);
        }
        let user = self.tokens.get(token_digest)?;
        metrics::counter!("ecs_api_tokens_remembered_total").increment(1);
        Some(Principal::User(user))
    }

    /// The tokens this authenticator remembers: for `cache::listen`, and for forgetting a
    /// person's tokens the moment they are revoked here.
    pub fn tokens(&self) -> &std::sync::Arc<TokenCache> {
        &self.tokens
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

/// Creates a token for `user_id`, stores its digest, and returns the token: the only time it is
/// ever visible.
pub async fn issue_user_token(executor: impl PgExecutor<'_>, user_id: Uuid) -> Result<Secret> {
    let mut secret = [0u8; 32];
    rand::rng().fill(&mut secret[..]);
    let token = format!("{USER_TOKEN_PREFIX}{}", hex::encode(secret));
    sqlx::query("INSERT INTO api_tokens (token_id, user_id, token_sha256) VALUES ($1, $2, $3)")
        .bind(Uuid::new_v4())
        .bind(user_id)
        .bind(&digest(&token)[..])
        .execute(executor)
        .await?;
    Ok(Secret(token))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal-length comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Anything the router state can lend an authenticator from.
pub trait HasAuthenticator {
    fn authenticator(&self) -> &Authenticator;
}

impl<S> FromRequestParts<S> for Principal
where
    S: HasAuthenticator + Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let mut headers = parts
            .headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter();
        let header = headers.next().and_then(|v| v.to_str().ok());
        // Authorization is one credential (RFC 9110, 11.6.2): two are not a choice to make here.
        if headers.next().is_some() {
            return Err(Error::Unauthenticated);
        }
        let auth = state.authenticator();
        // Present when the server was started with connect info (the app); absent in tests
        // that call the router directly, which then do not limit failures.
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let principal = auth.authenticate_from(addr, header).await?;
        auth.spend(principal)?;
        let span = tracing::Span::current();
        match principal {
            Principal::Admin => span.record("principal", "admin"),
            Principal::User(id) => span
                .record("principal", "user")
                .record("user_id", tracing::field::display(id)),
        };
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        let me = Uuid::new_v4();
        assert!(Principal::Admin.ensure_can_access(me).is_ok());
        assert!(Principal::User(me).ensure_can_access(me).is_ok());
        assert!(matches!(
            Principal::User(me).ensure_can_access(Uuid::new_v4()),
            Err(Error::Forbidden)
        ));
        assert!(Principal::User(me).ensure_admin().is_err());
    }

    #[test]
    fn a_secret_does_not_print() {
        let s = Secret::new("ecs_u_very_secret".into());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"ecs_u_very_secret\"");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn each_caller_has_its_own_rate(pool: PgPool) {
        let rates = ApiRates {
            per_user: 0.0,
            per_user_burst: 2.0,
            admin: 0.0,
            admin_burst: 1.0,
        };
        let auth = Authenticator::with_rates("an-admin-token-long-enough", pool, rates).unwrap();
        let (ana, bia) = (
            Principal::User(Uuid::new_v4()),
            Principal::User(Uuid::new_v4()),
        );
        assert!(auth.spend(ana).is_ok() && auth.spend(ana).is_ok());
        assert!(matches!(auth.spend(ana), Err(Error::RateLimited { .. })));
        assert!(auth.spend(bia).is_ok());
        assert!(auth.spend(Principal::Admin).is_ok());
        assert!(auth.spend(Principal::Admin).is_err());
    }

    #[test]
    fn digests_compare_by_content() {
        assert!(constant_time_eq(&digest("abc"), &digest("abc")));
        assert!(!constant_time_eq(&digest("abc"), &digest("abd")));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn tokens_resolve_to_their_principal(pool: PgPool) {
        let auth = Authenticator::new("an-admin-token-long-enough", pool.clone()).unwrap();
        assert!(Authenticator::new("short", pool.clone()).is_err());
        let user = Uuid::new_v4();
        sqlx::query("INSERT INTO users (user_id, display_name, emotional_data_consent) VALUES ($1, 'Ana', false)")
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        let token = issue_user_token(&pool, user).await.unwrap();
        let token = token.expose().to_owned();

        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            auth.authenticate(Some(&bearer("an-admin-token-long-enough")))
                .await
                .unwrap(),
            Principal::Admin
        );
        assert_eq!(
            auth.authenticate(Some(&bearer(&token))).await.unwrap(),
            Principal::User(user)
        );
        assert_eq!(
            auth.authenticate(Some(&format!("bearer {token}")))
                .await
                .unwrap(),
            Principal::User(user)
        );
        for bad in [
            None,
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer ecs_u_nope"),
        ] {
            assert!(
                matches!(auth.authenticate(bad).await, Err(Error::Unauthenticated)),
                "{bad:?}"
            );
        }

        // One address's failures are limited; another's are not.
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let burst = (2.0 * FAILED_AUTHENTICATIONS_PER_ADDRESS) as usize;
        for _ in 0..burst {
            let out = auth.authenticate_from(Some(a), Some("Bearer nope")).await;
            assert!(matches!(out, Err(Error::Unauthenticated)), "{out:?}");
        }
        // Past its failures, the address gets 429 for what would cost a query (this token: an
        // authenticator without `cache::listen` remembers none) ...
        let out = auth.authenticate_from(Some(a), Some(&bearer(&token))).await;
        assert!(matches!(out, Err(Error::RateLimited { .. })), "{out:?}");
        let out = auth.authenticate_from(Some(a), Some("Bearer nope")).await;
        assert!(matches!(out, Err(Error::RateLimited { .. })), "{out:?}");
        // ... but a credential known without one still passes: junk from an address shared
        // behind a NAT does not lock its valid callers out.
        assert_eq!(
            auth.authenticate_from(Some(a), Some(&bearer("an-admin-token-long-enough")))
                .await
                .unwrap(),
            Principal::Admin
        );
        // As `cache::listen` does once it listens.
        auth.tokens().set_listening(true);
        auth.tokens()
            .remember(digest(&token), user, auth.tokens().generation());
        assert_eq!(
            auth.authenticate_from(Some(a), Some(&bearer(&token)))
                .await
                .unwrap(),
            Principal::User(user)
        );
        auth.tokens().set_listening(false);
        assert_eq!(
            auth.authenticate_from(Some(b), Some(&bearer(&token)))
                .await
                .unwrap(),
            Principal::User(user)
        );

        sqlx::query("UPDATE api_tokens SET revoked_at = now()")
            .execute(&pool)
            .await
            .unwrap();
        assert!(auth.authenticate(Some(&bearer(&token))).await.is_err());
    }
}
