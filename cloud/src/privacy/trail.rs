//! The access trail: every read of a person's data by the admin/service token is recorded
//! (who, when, what) before it is served, by one middleware over every route, so a new route
//! cannot forget it. A read is a `GET` or a `HEAD` (axum serves `HEAD` with the `GET` handler)
//! of a route naming a person (`{user_id}`) or one of their offers (`{offer_id}`), and the
//! writes whose answer discloses the person's data ([`DISCLOSING_POSTS`]): minting a person's
//! token (which then reads as the person), an assessment (its answer carries the model's
//! result, with the features it was computed from) and accepting an offer (the offer).

use axum::{
    extract::{MatchedPath, RawPathParams, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{api::AppState, error::Result};

/// The `POST` routes whose answer discloses a person's data, recorded like reads.
pub const DISCLOSING_POSTS: [&str; 3] = [
    "/v1/users/{user_id}/tokens",
    "/v1/users/{user_id}/credit-offers",
    "/v1/credit-offers/{offer_id}/accept",
];

/// Records the read when the caller is the admin token and the route names a person
/// (`{user_id}`) or something of theirs (`{offer_id}`); then serves it. A read that cannot be
/// recorded is not served (503): an access trail with holes would prove nothing.
pub async fn record_admin_reads(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let discloses = method == Method::POST
        && matched
            .as_ref()
            .is_some_and(|m| DISCLOSING_POSTS.contains(&m.as_str()));
    if method != Method::GET && method != Method::HEAD && !discloses {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.auth.is_admin(authorization) {
        return next.run(request).await;
    }
    let (Some(matched), Some((name, value))) = (
        matched,
        params
            .iter()
            .find(|(name, _)| *name == "user_id" || *name == "offer_id"),
    ) else {
        return next.run(request).await;
    };
    // A malformed id is the handler's to refuse (400); nothing of anyone's is read then.
    let Ok(id) = Uuid::parse_str(value) else {
        return next.run(request).await;
    };
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect::<String>());
    let resource = format!("{method} {}", matched.as_str());
    let recorded = record(
        &state,
        name == "offer_id",
        id,
        &resource,
        request_id.as_deref(),
    )
    .await;
    match recorded {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record an admin read; not serving it");
            e.into_response()
        }
    }
}

/// Inserts the record for the person `id` names (or owns, for an offer). Nothing when there is
/// no such person or offer: the handler answers 404 and nothing was read.
async fn record(
    state: &AppState,
    is_offer: bool,
    id: Uuid,
    resource: &str,
    request_id: Option<&str>,
) -> Result<()> {
    let sql = if is_offer {
        "INSERT INTO data_access_log (user_id, principal, resource, request_id)
         SELECT user_id, 'admin', $2, $3 FROM credit_offers WHERE offer_id = $1"
    } else {
        "INSERT INTO data_access_log (user_id, principal, resource, request_id)
         SELECT user_id, 'admin', $2, $3 FROM users WHERE user_id = $1"
    };
    // The insert's foreign key waits on the person's lock (an assessment, an erasure): bounded
    // like every wait on a person (a timeout answers 503 `busy`); a person erased meanwhile is
    // the handler's 404.
    let mut tx = state
        .pool
        .begin_with("BEGIN; SET LOCAL lock_timeout = '2s'")
        .await?;
    let inserted = sqlx::query(sql)
        .bind(id)
        .bind(resource)
        .bind(request_id)
        .execute(&mut *tx)
        .await;
    match inserted {
        Ok(_) => tx.commit().await?,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            tx.rollback().await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
