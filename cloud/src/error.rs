//! The cloud's one error type, and its one mapping to HTTP: `application/problem+json` (RFC 9457).
//!
//! Every error response, whether a handler, an extractor, the timeout or the body limit produced
//! it, goes through [`Error::into_response`], so a client sees one shape with a stable `type` per
//! kind of problem (the table in [`ProblemType`], also served at `/problems/{slug}`).

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (unparsable JSON, a path or query parameter of the wrong shape).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the API accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON (missing or wrong `Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// One field of a well-formed request has a value the API does not accept.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A setting or a file the process was given is not acceptable (start-up and operator
    /// commands; on the API, a 422 without a field).
    #[error("{0}")]
    InvalidInput(String),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("this token may not access this resource")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    /// The request is well-formed but conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` was used before for a different request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// Too many requests; `retry_after` says when the next one will be accepted.
    #[error("{what}")]
    RateLimited {
        what: &'static str,
        retry_after: Duration,
    },
    /// A dependency (Postgres, broker, model service) is down or overloaded; retry later.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    /// Other requests about the same person kept winning the lock, retries ran out.
    #[error("too many concurrent changes to this person; retry")]
    Busy,
    /// The request took longer than the API allows.
    #[error("the request took too long")]
    Timeout,
    /// The client did not send its body in time (nothing was done).
    #[error("{0}")]
    BodyTimeout(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker error: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A validation error naming the field (JSON path, e.g. `transactions[3].category`).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A serialisation failure or a deadlock: the same work, run again, will most likely
    /// succeed (Postgres chose this transaction as the victim).
    pub fn is_transient_conflict(&self) -> bool {
        matches!(self, Error::Database(e) if sql_state(e).is_some_and(|c| c == "40001" || c == "40P01"))
    }

    pub fn problem_type(&self) -> ProblemType {
        match self {
            Error::BadRequest(_) => ProblemType::BadRequest,
            Error::PayloadTooLarge(_) => ProblemType::PayloadTooLarge,
            Error::UnsupportedMediaType(_) => ProblemType::UnsupportedMediaType,
            Error::Invalid { .. } | Error::InvalidInput(_) => ProblemType::Validation,
            Error::Unauthenticated => ProblemType::Unauthenticated,
            Error::Forbidden => ProblemType::Forbidden,
            Error::NotFound(_) => ProblemType::NotFound,
            Error::MethodNotAllowed => ProblemType::MethodNotAllowed,
            Error::Conflict(_) => ProblemType::Conflict,
            Error::IdempotencyKeyReused => ProblemType::IdempotencyKeyReused,
            Error::RateLimited { .. } => ProblemType::RateLimited,
            Error::Unavailable(_) => ProblemType::Unavailable,
            Error::Busy => ProblemType::Busy,
            Error::Timeout => ProblemType::Timeout,
            Error::BodyTimeout(_) => ProblemType::RequestTimeout,
            Error::Database(e) if is_unavailable(e) => ProblemType::Unavailable,
            // Postgres gave up waiting for a lock (`lock_timeout`): contention, not a bug.
            Error::Database(e) if sql_state(e).is_some_and(|c| c == "55P03") => ProblemType::Busy,
            // Retries exhausted, or a path that does not retry: still "try again".
            e if e.is_transient_conflict() => ProblemType::Busy,
            Error::Database(_) | Error::Mqtt(_) | Error::Internal(_) => ProblemType::Internal,
        }
    }

    /// How long a client should wait before retrying, when the answer is "later".
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => match self.problem_type() {
                ProblemType::Busy => Some(Duration::from_secs(1)),
                ProblemType::Unavailable | ProblemType::Timeout => Some(Duration::from_secs(5)),
                _ => None,
            },
        }
    }
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Pool exhaustion and lost connections are "try again", not bugs. A server shutting down (or
/// an operator ending the backend) says so before it closes the connection: the next statement
/// on it reads that message as a database error of class 57P (the pool pings only connections
/// idle for a while, `db::PING_AFTER_IDLE`, so a busy one meets it here).
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    ) || matches!(
        sql_state(e).as_deref(),
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped,
        // idle_session_timeout
        Some("57P01" | "57P02" | "57P03" | "57P04" | "57P05")
    )
}

/// Every kind of problem the API answers, with its stable `type` URI and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    Validation,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    Unavailable,
    Busy,
    Timeout,
}

impl ProblemType {
    pub const ALL: [ProblemType; 16] = [
        ProblemType::BadRequest,
        ProblemType::Unauthenticated,
        ProblemType::Forbidden,
        ProblemType::NotFound,
        ProblemType::MethodNotAllowed,
        ProblemType::Conflict,
        ProblemType::PayloadTooLarge,
        ProblemType::RequestTimeout,
        ProblemType::UnsupportedMediaType,
        ProblemType::Validation,
        ProblemType::IdempotencyKeyReused,
        ProblemType::RateLimited,
        ProblemType::Internal,
        ProblemType::Unavailable,
        ProblemType::Busy,
        ProblemType::Timeout,
    ];

    /// `(slug, status, title, when)`.
    const fn facts(self) -> (&'static str, StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ProblemType::BadRequest => (
                "bad-request",
                S::BAD_REQUEST,
                "Malformed request",
                "The body is not valid JSON for the operation, or a path or query parameter has the wrong shape.",
            ),
            ProblemType::Unauthenticated => (
                "unauthenticated",
                S::UNAUTHORIZED,
                "Authentication required",
                "The bearer token is missing, unknown or revoked.",
            ),
            ProblemType::Forbidden => (
                "forbidden",
                S::FORBIDDEN,
                "Not allowed",
                "The token is valid but may not do this (a person's token on another person, or on an admin operation).",
            ),
            ProblemType::NotFound => (
                "not-found",
                S::NOT_FOUND,
                "Not found",
                "The resource does not exist, or belongs to someone else (ids are not to be probed).",
            ),
            ProblemType::MethodNotAllowed => (
                "method-not-allowed",
                S::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "The path exists but not with this method.",
            ),
            ProblemType::Conflict => (
                "conflict",
                S::CONFLICT,
                "Conflicts with the current state",
                "The request is valid but the resource's state does not allow it (an offer already declined, a device id taken).",
            ),
            ProblemType::PayloadTooLarge => (
                "payload-too-large",
                S::PAYLOAD_TOO_LARGE,
                "Body too large",
                "The body exceeds the API's limit.",
            ),
            ProblemType::RequestTimeout => (
                "request-timeout",
                S::REQUEST_TIMEOUT,
                "Body too slow",
                "The body did not arrive within the time the API allows (RFC 9110, 15.5.9); nothing was done.",
            ),
            ProblemType::UnsupportedMediaType => (
                "unsupported-media-type",
                S::UNSUPPORTED_MEDIA_TYPE,
                "Not JSON",
                "The body must be JSON, with Content-Type: application/json.",
            ),
            ProblemType::Validation => (
                "validation",
                S::UNPROCESSABLE_ENTITY,
                "Invalid value",
                "A field has a value the API does not accept; `errors` names the field and says why.",
            ),
            ProblemType::IdempotencyKeyReused => (
                "idempotency-key-reused",
                S::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused",
                "This Idempotency-Key was already used for a different request (another path or body).",
            ),
            ProblemType::RateLimited => (
                "rate-limited",
                S::TOO_MANY_REQUESTS,
                "Too many requests",
                "The token's request rate, or the person's assessments per period, is exhausted; retry after Retry-After.",
            ),
            ProblemType::Internal => (
                "internal",
                S::INTERNAL_SERVER_ERROR,
                "Internal error",
                "A bug: the details are in the server's log under the request id.",
            ),
            ProblemType::Unavailable => (
                "unavailable",
                S::SERVICE_UNAVAILABLE,
                "Dependency unavailable",
                "Postgres or the risk model is down or overloaded; retry after Retry-After.",
            ),
            ProblemType::Busy => (
                "busy",
                S::SERVICE_UNAVAILABLE,
                "Contention",
                "Concurrent changes to the same person kept conflicting (or a request with the same Idempotency-Key held it too long); the request changed nothing; retry.",
            ),
            ProblemType::Timeout => (
                "timeout",
                S::SERVICE_UNAVAILABLE,
                "Request timed out",
                "The request took longer than the API allows; it may or may not have taken effect unless it carried an Idempotency-Key.",
            ),
        }
    }

    pub fn slug(self) -> &'static str {
        self.facts().0
    }

    pub fn status(self) -> StatusCode {
        self.facts().1
    }

    pub fn title(self) -> &'static str {
        self.facts().2
    }

    pub fn description(self) -> &'static str {
        self.facts().3
    }

    /// The `type` member: a URI reference resolved against the API's base, documented at that
    /// address.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.slug())
    }

    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.slug() == slug)
    }
}

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response body (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation", "title": "Invalid value", "status": 422,
    "detail": "display_name: must be 1-200 characters",
    "errors": [{"field": "display_name", "message": "must be 1-200 characters"}]}))]
pub struct Problem {
    /// Stable identifier of the kind of problem; `GET` it for its description.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// For validation problems: which field, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// What every authenticated operation can answer besides its own outcomes, for the OpenAPI
/// document (never constructed: only its description is used).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AuthProblems {
    /// The bearer token is missing, unknown or revoked.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// The token's rate (or the person's assessments for the period) is used up; see
    /// `Retry-After`.
    #[response(status = 429, content_type = "application/problem+json")]
    RateLimited(Problem),
    /// Postgres or the model is unavailable, contention on the person, or a timeout; see
    /// `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// What every operation with a JSON body (or a path parameter) can answer about its input.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyProblems {
    /// Not JSON, or a path parameter of the wrong shape.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// The body did not arrive within 10 s.
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// The body is larger than 1 MiB (also when its declared `Content-Length` is, before any of
    /// it is read).
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is not `application/json`.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// A field has a value the API does not accept (`errors` names it), or an
    /// Idempotency-Key was reused for another request.
    #[response(status = 422, content_type = "application/problem+json")]
    Validation(Problem),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field in the body, or the parameter's name.
    pub field: String,
    pub message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let kind = self.problem_type();
        let status = kind.status();
        let detail = if status.is_server_error() {
            // Internals (SQL, hostnames) stay in the log, not in the response.
            if kind == ProblemType::Internal {
                tracing::error!(error = %self, "request failed");
            } else {
                tracing::warn!(error = %self, "request not served");
            }
            kind.description().to_owned()
        } else {
            self.to_string()
        };
        let errors = match &self {
            Error::Invalid { field, message } => vec![FieldError {
                field: field.clone(),
                message: message.clone(),
            }],
            _ => Vec::new(),
        };
        let body = Problem {
            problem_type: kind.uri(),
            title: kind.title(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: "0" would invite an immediate retry.
            let secs = after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_has_a_unique_slug_and_an_error_status() {
        let mut slugs: Vec<_> = ProblemType::ALL.iter().map(|t| t.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemType::ALL.len());
        for t in ProblemType::ALL {
            assert!(t.status().is_client_error() || t.status().is_server_error());
            assert_eq!(ProblemType::from_slug(t.slug()), Some(t));
        }
    }
}
