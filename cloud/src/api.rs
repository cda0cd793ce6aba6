//! The REST API (axum): routes, request/response types, and the OpenAPI document.
//!
//! Handlers are thin: they parse input into domain values (a malformed body is a 400 or 422 with a
//! message, never a 500), check the caller's rights, and call the stage that does the work.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, topic};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

mod analytics;

use crate::{
    Error,
    analytics::Analytics,
    auth::{Authenticator, HasAuthenticator, Principal, issue_user_token},
    error::{ErrorBody, Result},
    features::EmotionFeatures,
    model::NamedValue,
    offers::{self, Assessor, CreditOffer},
};

/// Tells whether the broker link is up (for `/readyz`).
pub type BrokerProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub assessor: Arc<Assessor>,
    pub broker_connected: BrokerProbe,
    /// False while ingest is stalled: messages wait and none has been taken for a while.
    pub ingest_flowing: BrokerProbe,
    pub metrics: PrometheusHandle,
    /// The analytics views (the dashboard's data).
    pub analytics: Analytics,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

/// Largest number of transactions accepted in one request.
pub const MAX_TRANSACTIONS_PER_REQUEST: usize = 1_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub fn router(state: AppState) -> Router {
    let request_id = header::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/users", post(create_user))
        .route("/v1/users/{user_id}", get(get_user).delete(erase_user))
        .route(
            "/v1/users/{user_id}/emotional-profile",
            get(get_emotional_profile),
        )
        .route(
            "/v1/users/{user_id}/consent",
            axum::routing::put(set_consent),
        )
        .route("/v1/users/{user_id}/tokens", post(rotate_token))
        .route("/v1/users/{user_id}/devices", post(register_device))
        .route(
            "/v1/users/{user_id}/devices/{device_id}",
            axum::routing::delete(revoke_device),
        )
        .route(
            "/v1/users/{user_id}/transactions",
            post(record_transactions),
        )
        .route("/v1/users/{user_id}/credit-offers", post(create_offer))
        .route("/v1/users/{user_id}/credit-limit", get(get_credit_limit))
        .route("/v1/credit-offers/{offer_id}", get(get_offer))
        .route("/v1/credit-offers/{offer_id}/accept", post(accept_offer))
        .merge(analytics::routes())
        .merge(crate::dashboard::routes())
        // Only matched routes: the label is the route template, so its cardinality is bounded.
        .route_layer(axum::middleware::from_fn(record_http_metrics))
        .fallback(not_found)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "http",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id,
                        principal = tracing::field::Empty,
                        user_id = tracing::field::Empty,
                    )
                })
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_millis() as u64,
                        "request finished"
                    );
                }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Counts requests and their latency per route template, method and status.
async fn record_http_metrics(
    path: axum::extract::MatchedPath,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("route", path.as_str().to_owned()),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("ecs_http_requests_total", &labels).increment(1);
    metrics::histogram!("ecs_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `Json` whose rejections speak our error format.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(Error::InvalidInput(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(e)) => {
                Err(Error::UnsupportedMediaType(e.body_text()))
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::PayloadTooLarge(e.body_text()))
            }
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// `Path` whose rejections speak our error format.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| Error::BadRequest(e.body_text()))
    }
}

/// `Query` whose rejections speak our error format.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Error::BadRequest(e.body_text()))
    }
}

/// 1..=`max` characters and no control characters: Postgres text cannot hold NUL (it would be a
/// 500), and the others have no place in a name or a reference.
fn is_clean_text(value: &str, max: usize) -> bool {
    let len = value.chars().count();
    (1..=max).contains(&len) && !value.chars().any(char::is_control)
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
struct Readiness {
    status: &'static str,
    postgres: bool,
    broker: bool,
    /// Ingest takes messages: false while messages wait and none was taken for 30 s.
    ingest: bool,
}

/// Readiness: Postgres and the broker are reachable, and ingest is not stalled.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let broker = (state.broker_connected)();
    let ingest = (state.ingest_flowing)();
    let ready = postgres && broker && ingest;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        postgres,
        broker,
        ingest,
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// How the person wants to be called (1–200 characters).
    pub display_name: String,
    /// Consent to the use of emotional data (LGPD Art. 11). Without it no device can be
    /// registered and decisions use financial data only.
    pub emotional_data_consent: bool,
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub user_id: Uuid,
    /// The user's own API token. Shown only now; only its hash is stored.
    pub api_token: String,
    pub emotional_data_consent: bool,
    pub created_at: DateTime<Utc>,
}

/// Create a user (admin only). Returns the user's API token once.
#[utoipa::path(post, path = "/v1/users", request_body = CreateUser,
    responses((status = 201, body = UserCreated), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserCreated>)> {
    principal.ensure_admin()?;
    let name = body.display_name.trim();
    if !is_clean_text(name, 200) {
        return Err(Error::InvalidInput(
            "display_name must be 1-200 characters, without control characters".into(),
        ));
    }
    let user_id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
         VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END)
         RETURNING created_at",
    )
    .bind(user_id)
    .bind(name)
    .bind(body.emotional_data_consent)
    .fetch_one(&mut *tx)
    .await?;
    let api_token = issue_user_token(&mut *tx, user_id).await?;
    tx.commit().await?;
    tracing::Span::current().record("user_id", tracing::field::display(user_id));
    tracing::info!(%user_id, "user created");
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            user_id,
            api_token,
            emotional_data_consent: body.emotional_data_consent,
            created_at,
        }),
    ))
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct UserView {
    pub user_id: Uuid,
    pub display_name: String,
    pub emotional_data_consent: bool,
    pub created_at: DateTime<Utc>,
    pub device_count: i64,
    pub reading_count: i64,
}

/// A user's profile.
#[utoipa::path(get, path = "/v1/users/{user_id}",
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<UserView>> {
    principal.ensure_can_access(user_id)?;
    let user: Option<UserView> = sqlx::query_as(
        "SELECT u.user_id, u.display_name, u.emotional_data_consent, u.created_at,
                (SELECT count(*) FROM devices d WHERE d.user_id = u.user_id) AS device_count,
                COALESCE((SELECT readings_count FROM emotion_features f WHERE f.user_id = u.user_id), 0)
                    AS reading_count
         FROM users u WHERE u.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    user.map(Json).ok_or(Error::NotFound("user"))
}

/// Erase a person and everything about them (LGPD Art. 18): profile, devices, readings,
/// features, transactions, assessments, offers, credit line, notifications, tokens.
#[utoipa::path(delete, path = "/v1/users/{user_id}",
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn erase_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<StatusCode> {
    principal.ensure_can_access(user_id)?;
    let mut tx = state.pool.begin().await?;
    // Lock order, as everywhere: the person, then their devices. Holding the devices keeps ingest
    // from writing a dead letter for them between the two deletes below.
    crate::people::lock(&mut tx, user_id).await?;
    sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    // Dead letters are not linked to a person by a key; the person's devices name them.
    sqlx::query(
        "DELETE FROM dead_letters WHERE device_id IN (SELECT device_id FROM devices WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    // Every personal table references users ON DELETE CASCADE.
    let erased = sqlx::query("DELETE FROM users WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if erased == 0 {
        return Err(Error::NotFound("user"));
    }
    tx.commit().await?;
    tracing::info!(%user_id, "user erased");
    Ok(StatusCode::NO_CONTENT)
}

/// What the system has concluded from a person's emotional data (LGPD Art. 18/20: the person
/// can see it).
#[utoipa::path(get, path = "/v1/users/{user_id}/emotional-profile",
    responses((status = 200, body = EmotionalProfile), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_emotional_profile(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<EmotionalProfile>> {
    principal.ensure_can_access(user_id)?;
    let features = crate::features::load(&state.pool, user_id)
        .await?
        .ok_or(Error::NotFound("emotional profile"))?;
    Ok(Json(EmotionalProfile { user_id, features }))
}

/// Rolling emotional features, exponentially weighted by recency.
#[derive(Serialize, ToSchema)]
pub struct EmotionalProfile {
    pub user_id: Uuid,
    #[serde(flatten)]
    pub features: EmotionFeatures,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentChange {
    pub emotional_data_consent: bool,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct ConsentView {
    pub user_id: Uuid,
    pub emotional_data_consent: bool,
    pub consent_recorded_at: Option<DateTime<Utc>>,
    pub consent_withdrawn_at: Option<DateTime<Utc>>,
}

/// Give or withdraw consent to the use of emotional data (LGPD Art. 8 §5, 11). Withdrawing stops
/// collection at once (ingest discards the phone's readings) and removes the derived emotional
/// profile, so no later decision uses it; erasing what was collected is `DELETE /v1/users/{id}`.
#[utoipa::path(put, path = "/v1/users/{user_id}/consent", request_body = ConsentChange,
    responses((status = 200, body = ConsentView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_consent(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ConsentChange>,
) -> Result<Json<ConsentView>> {
    principal.ensure_can_access(user_id)?;
    let mut tx = state.pool.begin().await?;
    let view: Option<ConsentView> = sqlx::query_as(
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
    .bind(body.emotional_data_consent)
    .fetch_optional(&mut *tx)
    .await?;
    let view = view.ok_or(Error::NotFound("user"))?;
    if !view.emotional_data_consent {
        sqlx::query("DELETE FROM emotion_features WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(%user_id, consent = view.emotional_data_consent, "consent recorded");
    Ok(Json(view))
}

#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    pub user_id: Uuid,
    /// The new token. Shown only now; every earlier token of the user no longer works.
    pub api_token: String,
}

/// Rotate a user's API token: every existing token of the user is revoked and a new one issued
/// (a lost phone, a leaked token).
#[utoipa::path(post, path = "/v1/users/{user_id}/tokens",
    responses((status = 201, body = TokenIssued), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn rotate_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<TokenIssued>)> {
    principal.ensure_can_access(user_id)?;
    let mut tx = state.pool.begin().await?;
    crate::people::lock(&mut tx, user_id).await?;
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let api_token = issue_user_token(&mut *tx, user_id).await?;
    tx.commit().await?;
    tracing::info!(%user_id, "API token rotated");
    Ok((
        StatusCode::CREATED,
        Json(TokenIssued { user_id, api_token }),
    ))
}

/// Revoke a phone: from now on ingest accepts nothing from it and no notification goes to it.
/// The broker is told within about a second (the revocation publisher) and cuts the phone off: it
/// refuses its certificate at the TLS handshake and disconnects it if it is connected.
#[utoipa::path(delete, path = "/v1/users/{user_id}/devices/{device_id}",
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn revoke_device(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((user_id, device_id)): ApiPath<(Uuid, String)>,
) -> Result<StatusCode> {
    principal.ensure_can_access(user_id)?;
    let revoked = sqlx::query(
        "UPDATE devices SET revoked_at = COALESCE(revoked_at, now())
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id)
    .bind(&device_id)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if revoked == 0 {
        return Err(Error::NotFound("device"));
    }
    tracing::info!(%user_id, %device_id, "device revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// 1–32 ASCII letters or digits; generated when absent. Only the admin/service token may
    /// choose it (a person's token gets a random id).
    pub device_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceRegistered {
    pub device_id: String,
    pub user_id: Uuid,
    pub registered_at: DateTime<Utc>,
    /// Where the device publishes readings.
    pub uplink_topic: String,
    /// Where the device receives acks and notifications.
    pub downlink_topic: String,
}

/// Register a phone for a user. Requires the user's consent to emotional data.
#[utoipa::path(post, path = "/v1/users/{user_id}/devices", request_body = RegisterDevice,
    responses((status = 201, body = DeviceRegistered), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn register_device(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RegisterDevice>,
) -> Result<(StatusCode, Json<DeviceRegistered>)> {
    principal.ensure_can_access(user_id)?;
    let device_id = match body.device_id {
        // Choosing an id is for the provisioning service (it issues the certificate with that
        // id): a person's token gets a random id, so nobody can claim an id meant for a phone
        // that is still being provisioned.
        Some(_) if principal != Principal::Admin => {
            return Err(Error::Forbidden);
        }
        Some(raw) => DeviceId::parse(raw).map_err(|e| Error::InvalidInput(e.to_string()))?,
        None => DeviceId::random(),
    };
    let consent: Option<bool> =
        sqlx::query_scalar("SELECT emotional_data_consent FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&state.pool)
            .await?;
    match consent {
        None => return Err(Error::NotFound("user")),
        Some(false) => {
            return Err(Error::Conflict(
                "the user has not consented to emotional data; a sensor cannot be registered"
                    .into(),
            ));
        }
        Some(true) => {}
    }
    let registered_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO devices (device_id, user_id) VALUES ($1, $2)
         ON CONFLICT (device_id) DO NOTHING RETURNING registered_at",
    )
    .bind(device_id.as_str())
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    let registered_at = registered_at
        .ok_or_else(|| Error::Conflict(format!("device {device_id} is already registered")))?;
    tracing::info!(%user_id, %device_id, "device registered");
    Ok((
        StatusCode::CREATED,
        Json(DeviceRegistered {
            uplink_topic: topic::uplink(&device_id),
            downlink_topic: topic::downlink(&device_id),
            device_id: device_id.to_string(),
            user_id,
            registered_at,
        }),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inflow,
    Outflow,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTransaction {
    /// The bank's own id of the transaction (1–100 characters): posting it twice is harmless.
    pub external_ref: String,
    pub direction: Direction,
    /// Positive amount in cents.
    pub amount_cents: i64,
    /// e.g. salary, rent, groceries, entertainment (1–50 characters).
    pub category: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordTransactions {
    pub transactions: Vec<NewTransaction>,
}

#[derive(Serialize, ToSchema)]
pub struct TransactionsRecorded {
    pub received: usize,
    pub inserted: u64,
    /// Already known by `external_ref`.
    pub duplicates: u64,
}

/// Record a user's financial transactions (admin/service only), idempotent by `external_ref`.
#[utoipa::path(post, path = "/v1/users/{user_id}/transactions", request_body = RecordTransactions,
    responses((status = 201, body = TransactionsRecorded), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn record_transactions(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RecordTransactions>,
) -> Result<(StatusCode, Json<TransactionsRecorded>)> {
    principal.ensure_admin()?;
    let txs = body.transactions;
    if txs.is_empty() || txs.len() > MAX_TRANSACTIONS_PER_REQUEST {
        return Err(Error::InvalidInput(format!(
            "send 1-{MAX_TRANSACTIONS_PER_REQUEST} transactions per request"
        )));
    }
    let latest_allowed = Utc::now() + chrono::Duration::minutes(5);
    for (i, t) in txs.iter().enumerate() {
        let fault = if !is_clean_text(&t.external_ref, 100) {
            Some("external_ref must be 1-100 characters, without control characters")
        } else if t.amount_cents <= 0 || t.amount_cents > 1_000_000_000_000 {
            Some("amount_cents must be between 1 and 1e12")
        } else if !is_clean_text(&t.category, 50) {
            Some("category must be 1-50 characters, without control characters")
        } else if t.occurred_at > latest_allowed {
            Some("occurred_at is in the future")
        } else {
            None
        };
        if let Some(fault) = fault {
            return Err(Error::InvalidInput(format!("transactions[{i}]: {fault}")));
        }
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&state.pool)
        .await?;
    exists.ok_or(Error::NotFound("user"))?;

    let ids: Vec<Uuid> = txs.iter().map(|_| Uuid::new_v4()).collect();
    let refs: Vec<&str> = txs.iter().map(|t| t.external_ref.as_str()).collect();
    let directions: Vec<&str> = txs
        .iter()
        .map(|t| match t.direction {
            Direction::Inflow => "inflow",
            Direction::Outflow => "outflow",
        })
        .collect();
    let amounts: Vec<i64> = txs.iter().map(|t| t.amount_cents).collect();
    let categories: Vec<String> = txs.iter().map(|t| t.category.to_lowercase()).collect();
    let times: Vec<DateTime<Utc>> = txs.iter().map(|t| t.occurred_at).collect();
    let inserted = sqlx::query(
        "INSERT INTO transactions (transaction_id, user_id, external_ref, direction, amount_cents, category, occurred_at)
         SELECT id, $1, r, d, a, c, o
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[])
             AS t(id, r, d, a, c, o)
         ON CONFLICT (user_id, external_ref) DO NOTHING",
    )
    .bind(user_id)
    .bind(&ids)
    .bind(&refs)
    .bind(&directions)
    .bind(&amounts)
    .bind(&categories)
    .bind(&times)
    .execute(&state.pool)
    .await?
    .rows_affected();
    Ok((
        StatusCode::CREATED,
        Json(TransactionsRecorded {
            received: txs.len(),
            inserted,
            duplicates: txs.len() as u64 - inserted,
        }),
    ))
}

/// The model's result.
#[derive(Serialize, ToSchema)]
pub struct RiskView {
    /// Probability of default, 0–1.
    pub probability_of_default: f64,
    /// 0 (certain default) to 1000 (no risk): `round(1000 × (1 − PD))`.
    pub risk_score: i32,
    pub model_name: String,
    pub model_version: String,
    pub contributions: Vec<NamedValue>,
}

#[derive(Serialize, ToSchema)]
pub struct OfferView {
    #[serde(flatten)]
    pub offer: CreditOffer,
    /// The model's result; present on the response that created the offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskView>,
}

impl From<CreditOffer> for OfferView {
    fn from(offer: CreditOffer) -> Self {
        Self { offer, risk: None }
    }
}

/// Assess a user now and create a credit offer (approved or declined, with reasons).
#[utoipa::path(post, path = "/v1/users/{user_id}/credit-offers",
    responses((status = 201, body = OfferView), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<OfferView>)> {
    principal.ensure_can_access(user_id)?;
    let assessment = state.assessor.assess(user_id).await?;
    let pd = assessment.score.probability_of_default;
    let mut view = OfferView::from(assessment.offer);
    view.risk = Some(RiskView {
        probability_of_default: pd,
        risk_score: ((1.0 - pd) * 1000.0).round() as i32,
        model_name: assessment.score.model_name,
        model_version: assessment.score.model_version,
        contributions: assessment.score.contributions,
    });
    Ok((StatusCode::CREATED, Json(view)))
}

/// An offer's current state.
#[utoipa::path(get, path = "/v1/credit-offers/{offer_id}",
    responses((status = 200, body = OfferView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(offer_id): ApiPath<Uuid>,
) -> Result<Json<OfferView>> {
    let offer = offers::find(&state.pool, offer_id).await?;
    // Someone else's offer is "not found", not "forbidden": ids are not to be probed.
    if principal.ensure_can_access(offer.user_id).is_err() {
        return Err(Error::NotFound("offer"));
    }
    Ok(Json(offer.into()))
}

/// Accept an offer. The new limit is applied asynchronously; the phone is notified when it is.
#[utoipa::path(post, path = "/v1/credit-offers/{offer_id}/accept",
    responses((status = 202, body = OfferView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn accept_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(offer_id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<OfferView>)> {
    let offer = offers::accept(&state.pool, principal, offer_id).await?;
    Ok((StatusCode::ACCEPTED, Json(offer.into())))
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct CreditLimitView {
    pub user_id: Uuid,
    pub credit_limit_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: String,
    pub offer_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

/// The user's current credit line (404 until an offer has been applied).
#[utoipa::path(get, path = "/v1/users/{user_id}/credit-limit",
    responses((status = 200, body = CreditLimitView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_credit_limit(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<CreditLimitView>> {
    principal.ensure_can_access(user_id)?;
    let limit: Option<CreditLimitView> = sqlx::query_as(
        "SELECT user_id, credit_limit_cents, interest_rate_bps, credit_type, offer_id, updated_at
         FROM credit_limits WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    limit.map(Json).ok_or(Error::NotFound("credit limit"))
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Empathic Credit System API", version = "1"),
    paths(healthz, readyz, create_user, get_user, erase_user, get_emotional_profile,
          set_consent, rotate_token, register_device, revoke_device, record_transactions,
          create_offer, get_offer, accept_offer, get_credit_limit,
          analytics::me, analytics::hourly_mood, analytics::credit_limits,
          analytics::interest_rates, analytics::decisions, analytics::funnel, analytics::ingest,
          analytics::personal),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
