//! Routes of the analytics views (`/v1/analytics/...`, `/v1/users/{id}/analytics`) and of
//! `/v1/me`, which tells the dashboard whose token it holds. Thin: parse the window, check who is
//! asking, call [`crate::analytics`].

use axum::{Json, Router, extract::State, routing::get};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState};
use crate::{
    analytics::{
        Days, Hours, Minutes,
        personal::PersonalView,
        population::{Decisions, Distribution, Funnel, HourlyMood},
        traffic::IngestView,
    },
    auth::Principal,
    error::{AuthProblems, Problem, Result},
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/analytics/emotions/hourly", get(hourly_mood))
        .route("/v1/analytics/credit-limits", get(credit_limits))
        .route("/v1/analytics/interest-rates", get(interest_rates))
        .route("/v1/analytics/decisions", get(decisions))
        .route("/v1/analytics/funnel", get(funnel))
        .route("/v1/analytics/ingest", get(ingest))
        .route("/v1/users/{user_id}/analytics", get(personal))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HoursQuery {
    /// Hours to look back, the current one included: 1–744 (default 24).
    #[param(minimum = 1, maximum = 744)]
    pub hours: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DaysQuery {
    /// Days of offers to look back at: 1–366 (default 30).
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MinutesQuery {
    /// Minutes to look back, the current one included: 1–360 (default 30).
    #[param(minimum = 1, maximum = 360)]
    pub minutes: Option<u32>,
}

/// Whose token this is.
#[derive(Serialize, ToSchema)]
pub struct Me {
    /// `admin` (the operator's token) or `user` (a person's own token).
    pub role: &'static str,
    /// The person, for a user token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

/// Who the bearer token belongs to (the dashboard picks the operator's or the person's view).
#[utoipa::path(get, path = "/v1/me",
    responses((status = 200, body = Me),
              AuthProblems),
    security(("bearer" = [])))]
async fn me(principal: Principal) -> Json<Me> {
    Json(match principal {
        Principal::Admin => Me {
            role: "admin",
            user_id: None,
        },
        Principal::User(id) => Me {
            role: "user",
            user_id: Some(id),
        },
    })
}

/// The population's mean valence, stress and arousal, hour by hour (admin only). Hours with
/// fewer than k people are suppressed.
#[utoipa::path(get, path = "/v1/analytics/emotions/hourly", params(HoursQuery),
    responses((status = 200, body = HourlyMood),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn hourly_mood(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<HoursQuery>,
) -> Result<Json<HourlyMood>> {
    principal.ensure_admin()?;
    let window = Hours::parse(query.hours)?;
    Ok(Json(state.analytics.hourly_mood(window).await?))
}

/// How many people's current credit limit falls in each band (admin only; bands of fewer than
/// k people are suppressed).
#[utoipa::path(get, path = "/v1/analytics/credit-limits",
    responses((status = 200, body = Distribution),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn credit_limits(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Distribution>> {
    principal.ensure_admin()?;
    Ok(Json(state.analytics.credit_limits().await?))
}

/// How many people's current interest rate falls in each band (admin only; bands of fewer than
/// k people are suppressed).
#[utoipa::path(get, path = "/v1/analytics/interest-rates",
    responses((status = 200, body = Distribution),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn interest_rates(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Distribution>> {
    principal.ensure_admin()?;
    Ok(Json(state.analytics.interest_rates().await?))
}

/// Approval rate and the reasons of declined and approved offers in the window (admin only).
#[utoipa::path(get, path = "/v1/analytics/decisions", params(DaysQuery),
    responses((status = 200, body = Decisions),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn decisions(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<DaysQuery>,
) -> Result<Json<Decisions>> {
    principal.ensure_admin()?;
    let window = Days::parse(query.days)?;
    Ok(Json(state.analytics.decisions(window).await?))
}

/// The offer funnel: assessed → approved → accepted → applied → notified (admin only).
#[utoipa::path(get, path = "/v1/analytics/funnel", params(DaysQuery),
    responses((status = 200, body = Funnel),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn funnel(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<DaysQuery>,
) -> Result<Json<Funnel>> {
    principal.ensure_admin()?;
    let window = Days::parse(query.days)?;
    Ok(Json(state.analytics.funnel(window).await?))
}

/// Readings stored per minute, their lag from the sensor, and the phones connected now (admin
/// only).
#[utoipa::path(get, path = "/v1/analytics/ingest", params(MinutesQuery),
    responses((status = 200, body = IngestView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<MinutesQuery>,
) -> Result<Json<IngestView>> {
    principal.ensure_admin()?;
    let window = Minutes::parse(query.minutes)?;
    Ok(Json(state.analytics.ingest(window).await?))
}

/// A person's own view: their mood by hour, their recent offers with reasons, their credit line
/// (the person or admin).
#[utoipa::path(get, path = "/v1/users/{user_id}/analytics",
    params(("user_id" = Uuid, Path, description = "The person."), HoursQuery),
    responses((status = 200, body = PersonalView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn personal(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<HoursQuery>,
) -> Result<Json<PersonalView>> {
    principal.ensure_can_access(user_id)?;
    let window = Hours::parse(query.hours)?;
    Ok(Json(state.analytics.person(user_id, window).await?))
}
