//! What a person can see of how their data is held and used: export, consent history, access
//! trail (`crate::privacy`).

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState};
use crate::{
    auth::Principal,
    error::{AuthProblems, Problem, Result},
    people,
    privacy::{self, AccessRecord, ConsentEvent, export},
};

/// Bytes the export task may write ahead of what the client has read.
const EXPORT_BUFFER: usize = 64 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}/export", get(export_user))
        .route("/v1/users/{user_id}/consent-history", get(consent_history))
        .route("/v1/users/{user_id}/access-log", get(access_log))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AfterQuery {
    /// The last id of the previous page (at most 500 a page); absent: from the first.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

impl AfterQuery {
    /// The id to start after: 0 when absent; a negative one is refused (422 naming `after`).
    fn after(&self) -> Result<i64> {
        match self.after {
            Some(n) if n < 0 => Err(crate::Error::invalid(
                "after",
                format!("must be 0 or more, not {n}"),
            )),
            after => Ok(after.unwrap_or(0)),
        }
    }
}

/// Everything the system holds about the person, readable, in one JSON document (LGPD Art. 18):
/// profile, consent history, devices, transactions, readings within retention, features,
/// assessments with their inputs and reasons, offers, the credit line and its history,
/// notifications, proactive checks, the access trail, tokens (when issued, never the secret).
/// Streamed: a document that does not parse was cut short by a failure.
#[utoipa::path(get, path = "/v1/users/{user_id}/export", tag = "privacy",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 200, description = "The export (`format`: `ecs-export-v1`).",
                   content_type = "application/json", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 429, description = "An export of this person, or as many as the server runs, is running; see Retry-After.",
                   body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn export_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response> {
    principal.ensure_can_access(user_id)?;
    // 404 (and any failure to open their data) before the body starts; at most one export per
    // person and a few per replica (429 past them).
    people::view(&state.pool, &state.keyring, user_id).await?;
    let slot = export::admit(user_id)?;
    let (writer, reader) = tokio::io::duplex(EXPORT_BUFFER);
    let (pool, keyring) = (state.pool.clone(), state.keyring.clone());
    // Ends when the document is written, or when the client goes away (the reader is dropped
    // and the next write fails).
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = export::write(&pool, &keyring, user_id, writer).await {
            tracing::warn!(%user_id, error = %e, "export cut short");
        }
    });
    let filename = format!("attachment; filename=\"ecs-export-{user_id}.json\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_DISPOSITION, filename),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// The person's consent history: every grant and withdrawal, with its purpose and who recorded
/// it, oldest first. Append-only (the database refuses changes).
#[utoipa::path(get, path = "/v1/users/{user_id}/consent-history", tag = "privacy",
    params(("user_id" = Uuid, Path, description = "The person."), AfterQuery),
    responses((status = 200, body = Vec<ConsentEvent>),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn consent_history(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AfterQuery>,
) -> Result<Json<Vec<ConsentEvent>>> {
    principal.ensure_can_access(user_id)?;
    ensure_exists(&state, user_id).await?;
    Ok(Json(
        privacy::consent_history(&state.pool, user_id, query.after()?).await?,
    ))
}

/// Every read of the person's data by the admin/service token (who, when, what, the request
/// id), oldest first. The reads the person makes with their own token are not listed.
#[utoipa::path(get, path = "/v1/users/{user_id}/access-log", tag = "privacy",
    params(("user_id" = Uuid, Path, description = "The person."), AfterQuery),
    responses((status = 200, body = Vec<AccessRecord>),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn access_log(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<AfterQuery>,
) -> Result<Json<Vec<AccessRecord>>> {
    principal.ensure_can_access(user_id)?;
    ensure_exists(&state, user_id).await?;
    Ok(Json(
        privacy::access_log(&state.pool, user_id, query.after()?).await?,
    ))
}

async fn ensure_exists(state: &AppState, user_id: Uuid) -> Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1)")
        .bind(user_id)
        .fetch_one(&state.pool)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(crate::Error::NotFound("user"))
    }
}
