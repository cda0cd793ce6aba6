//! The one error type of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while managing the PKI or starting the broker.
///
/// Variants carry the path or address involved, because the person reading the message is an
/// operator deciding which file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a CA already exists in {0}; refusing to overwrite it (devices trust it)")]
    CaExists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("invalid CA in {origin}: {reason}")]
    InvalidCa { origin: String, reason: String },
    #[error("{path}: no usable PEM {what}: {source}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration from {cert} / {key} / {ca} is unusable: {reason}")]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("{setting}: {reason}")]
    InvalidSetting {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the broker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the broker stopped: {0}")]
    BrokerStopped(String),
    #[error("the broker did not accept connections on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
}

impl Error {
    /// An I/O error, with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
