//! Bearer-token authentication for the REST API.
//!
//! Two kinds of caller: the admin/service token (from the environment, full rights) and per-user
//! tokens (issued when a user is created, stored only as SHA-256, reaching only that user's data).
//! Tokens are compared as digests in constant time, and never logged.

use axum::{extract::FromRequestParts, http::request::Parts};
use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::{Error, error::Result};

/// Shortest admin token accepted at start-up: anything shorter is guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
const USER_TOKEN_PREFIX: &str = "ecs_u_";

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Authenticator {
    pub fn new(admin_token: &str, pool: PgPool) -> Result<Self> {
        if admin_token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(Error::InvalidInput(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            )));
        }
        Ok(Self {
            admin_digest: digest(admin_token),
            pool,
        })
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthenticated)?;
        let token_digest = digest(token);
        if constant_time_eq(&token_digest, &self.admin_digest) {
            return Ok(Principal::Admin);
        }
        if !token.starts_with(USER_TOKEN_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&token_digest[..])
        .fetch_optional(&self.pool)
        .await?;
        user.map(Principal::User).ok_or(Error::Unauthenticated)
    }
}

/// Creates a token for `user_id`, stores its digest, and returns the token: the only time it is
/// ever visible.
pub async fn issue_user_token(executor: impl PgExecutor<'_>, user_id: Uuid) -> Result<String> {
    let mut secret = [0u8; 32];
    rand::rng().fill(&mut secret[..]);
    let token = format!("{USER_TOKEN_PREFIX}{}", hex::encode(secret));
    sqlx::query("INSERT INTO api_tokens (token_id, user_id, token_sha256) VALUES ($1, $2, $3)")
        .bind(Uuid::new_v4())
        .bind(user_id)
        .bind(&digest(&token)[..])
        .execute(executor)
        .await?;
    Ok(token)
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
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = state.authenticator().authenticate(header).await?;
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

        sqlx::query("UPDATE api_tokens SET revoked_at = now()")
            .execute(&pool)
            .await
            .unwrap();
        assert!(auth.authenticate(Some(&bearer(&token))).await.is_err());
    }
}
