//! The REST API (axum): routes, extractors, the OpenAPI document.
//!
//! Handlers are thin: they parse input into domain values (a malformed body is a 400 or 422
//! naming the field, never a 500), check the caller's rights, and call the stage that does the
//! work (`people`, `devices`, `finance`, `offers`), which owns its SQL. Changes about a person run
//! in a [`PersonTx`](crate::people::PersonTx). Every error, the timeout's and the body limit's
//! included, is `application/problem+json` ([`crate::error`]).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use utoipa::{OpenApi, ToSchema};

mod analytics;
mod credit;
mod persons;
mod privacy;

use crate::{
    Error,
    analytics::Analytics,
    auth::{Authenticator, HasAuthenticator, Principal},
    error::{AuthProblems, Problem, ProblemType, Result},
    offers::Assessor,
};

pub use crate::offers::{OfferView, RiskView};
pub use credit::OfferBody;
pub use persons::{NewTransaction, RecordTransactions};

/// Tells whether the broker link is up (for `/readyz`).
pub type BrokerProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub assessor: Arc<Assessor>,
    /// Records assessments, several people's in one transaction under load (the assessor's
    /// group commit).
    pub offers: crate::offers::Recorder,
    pub broker_connected: BrokerProbe,
    /// False while ingest is stalled: messages wait and none has been taken for a while.
    pub ingest_flowing: BrokerProbe,
    pub metrics: PrometheusHandle,
    /// The analytics views (the dashboard's data).
    pub analytics: Analytics,
    /// Keys the derivations of stored idempotent answers.
    pub idempotency: crate::idempotency::ServerKey,
    /// Opens and seals people's personal fields (`crate::keys`).
    pub keyring: crate::keys::SharedKeyring,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

/// Longest a request may take before it is answered 503 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request body: a full batch of transactions fits with room to spare.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest a body may take to arrive, once its request's head has: past it, 408 (a client
/// trickling its body would otherwise hold its request until the 503 of [`REQUEST_TIMEOUT`]).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(state: AppState) -> Router {
    let request_id = header::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/problems/{slug}", get(problem_type))
        .merge(persons::routes())
        .merge(privacy::routes())
        .merge(credit::routes())
        .merge(analytics::routes())
        .merge(crate::dashboard::routes())
        .merge(crate::docs::routes())
        // Every read of a person's data by the admin token is recorded before it is served.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::privacy::trail::record_admin_reads,
        ))
        // Only matched routes: the label is the route template, so its cardinality is bounded.
        .route_layer(axum::middleware::from_fn(record_http_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(axum::middleware::from_fn(time_limit))
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

/// Answers 503 `timeout` (problem+json, like every error) when a request takes too long. What
/// the request was doing is dropped, so an uncommitted transaction rolls back.
async fn time_limit(request: Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout.into_response(),
    }
}

/// Answers 413 at once to a request whose declared `Content-Length` is over the limit, before
/// authentication or any of the body is read: waiting for a body that will be refused anyway
/// only holds the connection.
async fn refuse_declared_oversize(request: Request, next: axum::middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => Error::PayloadTooLarge(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes (Content-Length: {n})"
        ))
        .into_response(),
        _ => next.run(request).await,
    }
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

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
            && essence
                .get(..12)
                .is_some_and(|s| s.eq_ignore_ascii_case("application/")))
}

/// Reads the body within the limit and in time: too large is 413, too slow 408, anything else
/// unreadable 400.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes> {
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state))
        .await
        .map_err(|_| {
            Error::BodyTimeout(format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ))
        })?;
    read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
        } else {
            Error::BadRequest(e.body_text())
        }
    })
}

/// Parses JSON, naming the field that does not fit: a syntax error is 400, a value of the
/// wrong type or a missing or unknown field is 422 with its path.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                Error::invalid(field, inner.to_string())
            }
            _ => Error::BadRequest(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    // Anything after the value is not the request the client meant (and would be replayed as
    // if it were, under an Idempotency-Key).
    de.end()
        .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// A JSON body whose rejections speak problem+json and name the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType(
                "the body must be JSON, with Content-Type: application/json".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Self)
    }
}

/// A JSON body that may be absent (no body at all, or `null`): then `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        // No body (whatever the headers say) is the default request.
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(Error::UnsupportedMediaType(
                "a body must be JSON, with Content-Type: application/json".into(),
            ));
        }
        parse_json::<Option<T>>(&bytes).map(|v| Self(v.unwrap_or_default()))
    }
}

/// `Path` whose rejections speak problem+json.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| Error::BadRequest(format!("path parameter: {}", e.body_text())))
    }
}

/// `Query` whose rejections speak problem+json.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Error::BadRequest(format!("query parameter: {}", e.body_text())))
    }
}

/// A JSON answer with a status (the reads and the updates; creates answer an
/// [`Answer`](crate::idempotency::Answer)).
pub fn json<T: Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(value)).into_response()
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
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
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
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
    json(status, body)
}

/// Prometheus metrics (admin token): request rates, ingest, the worker, the model's breaker.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
async fn metrics(State(state): State<AppState>, principal: Principal) -> Result<Response> {
    principal.ensure_admin()?;
    Ok((
        [(
            header::CONTENT_TYPE,
            ecs_telemetry::prometheus::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response())
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(Serialize, ToSchema)]
struct ProblemTypeView {
    #[serde(rename = "type")]
    problem_type: String,
    title: &'static str,
    status: u16,
    description: &'static str,
}

/// What a problem `type` means.
#[utoipa::path(get, path = "/problems/{slug}", tag = "operations",
    params(("slug" = String, Path, description = "The last segment of a problem's `type`.",
            pattern = "^[a-z-]{1,40}$")),
    responses((status = 200, body = ProblemTypeView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn problem_type(ApiPath(slug): ApiPath<String>) -> Result<Json<ProblemTypeView>> {
    let t = ProblemType::from_slug(&slug).ok_or(Error::NotFound("problem type"))?;
    Ok(Json(ProblemTypeView {
        problem_type: t.uri(),
        title: t.title(),
        status: t.status().as_u16(),
        description: t.description(),
    }))
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
    info(title = "Empathic Credit System API", version = "1",
         description = "Errors are `application/problem+json` (RFC 9457); `GET /problems/{slug}` \
             describes each `type`. Creates accept an `Idempotency-Key`. Every authenticated \
             request counts against its token's rate (429 with `Retry-After` past it)."),
    paths(healthz, readyz, metrics, problem_type,
          persons::create_user, persons::get_user, persons::erase_user,
          persons::get_emotional_profile, persons::set_consent, persons::rotate_token,
          persons::register_device, persons::revoke_device, persons::record_transactions,
          persons::list_notifications,
          privacy::export_user, privacy::consent_history, privacy::access_log,
          credit::create_offer, credit::get_offer, credit::accept_offer, credit::get_credit_limit,
          analytics::me, analytics::hourly_mood, analytics::credit_limits,
          analytics::interest_rates, analytics::decisions, analytics::funnel, analytics::ingest,
          analytics::personal),
    components(schemas(Problem)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("text/json+json"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            n: u8,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            items: Vec<Inner>,
        }
        let err = parse_json::<Outer>(br#"{"items":[{"n":1},{"n":"x"}]}"#).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == "items[1].n"),
            "{err:?}"
        );
        let err = parse_json::<Outer>(b"{").unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
        let err = parse_json::<Outer>(br#"{"items":[]} and more"#).unwrap_err();
        assert!(
            matches!(err, Error::BadRequest(_)),
            "trailing text: {err:?}"
        );
        assert!(parse_json::<Outer>(b"{\"items\":[]}  \n").is_ok());
    }

    /// A body whose client never sends a byte of it.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, Self::Error>>>
        {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_is_a_408() {
        let request = Request::builder()
            .method("POST")
            .uri("/")
            .body(axum::body::Body::new(Stalled))
            .unwrap();
        let started = tokio::time::Instant::now();
        let err = body_bytes(request, &()).await.unwrap_err();
        assert!(matches!(err, Error::BodyTimeout(_)), "{err:?}");
        assert_eq!(started.elapsed(), BODY_READ_TIMEOUT);
        assert_eq!(err.into_response().status(), StatusCode::REQUEST_TIMEOUT);
    }
}
