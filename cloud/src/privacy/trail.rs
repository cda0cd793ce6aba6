//! The access trail: every read of a person's data by the admin/service token is recorded
//! (who, when, what) before it is served, by one middleware over every route, so a new route
//! cannot forget it.

use axum::{
    extract::{MatchedPath, RawPathParams, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{api::AppState, error::Result};

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
    if request.method() != Method::GET {
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
    let resource = format!("GET {}", matched.as_str());
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
            crate::Error::Unavailable("access trail").into_response()
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
    sqlx::query(sql)
        .bind(id)
        .bind(resource)
        .bind(request_id)
        .execute(&state.pool)
        .await?;
    Ok(())
}
