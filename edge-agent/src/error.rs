//! The crate's one error type.

use std::path::PathBuf;

use ecs_protocol::{DeviceId, ValidationError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the agent.
///
/// Network trouble is *not* here: a broken connection is the normal state of a phone, and the
/// uplink handles it by reconnecting with backoff, not by failing. What surfaces as an `Error`
/// is configuration, local storage, or a task that died.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error("invalid broker url {url:?}: {reason}")]
    InvalidBrokerUrl { url: String, reason: &'static str },

    #[error("cannot read PEM file {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },

    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),

    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),

    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error(
        "the buffer file belongs to device {stored}, not {configured}: refusing to send its \
         readings under another identity"
    )]
    DeviceMismatch {
        stored: String,
        configured: DeviceId,
    },

    #[error("stored row {0} cannot be decoded")]
    CorruptRow(String),

    #[error("reading rejected before storing: {0}")]
    InvalidReading(#[from] ValidationError),

    #[error("cannot encode message: {0}")]
    Encode(#[from] postcard::Error),

    #[error("the MQTT connection task has stopped")]
    LinkClosed,

    #[error("a background task failed: {0}")]
    Task(String),
}
