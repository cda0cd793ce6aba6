//! The cloud's one error type, and its one mapping to HTTP status codes.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (unparsable JSON, a path parameter of the wrong shape).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the API accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON (missing or wrong `Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request is well-formed but its content is not acceptable; the message says what.
    #[error("{0}")]
    InvalidInput(String),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("this token may not access this resource")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well-formed but conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A dependency (Postgres, broker, model service) is down or overloaded; retry later.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker error: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_input`.
    pub error: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl Error {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::InvalidInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Database(e) if is_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::Database(_) | Error::Mqtt(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

/// Pool exhaustion and lost connections are "try again", not bugs.
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, error) = self.status_and_code();
        let message = if status.is_server_error() {
            // Internals (SQL, hostnames) stay in the log, not in the response.
            tracing::error!(error = %self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    "a dependency is unavailable; retry later".to_owned()
                }
                _ => "internal error".to_owned(),
            }
        } else {
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody { error, message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}
