//! The crate's one error type.

use std::path::{Path, PathBuf};

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

    #[error("cannot read {file} {path}: {reason}")]
    TlsFile {
        file: TlsFile,
        path: PathBuf,
        reason: String,
    },

    #[error("{path}, given as {file}, holds no certificate")]
    NoCertificate { file: TlsFile, path: PathBuf },

    #[error("{cert} and {key} do not go together: {source}", cert = TlsFile::Cert, key = TlsFile::Key)]
    KeyMismatch { source: rustls::Error },

    #[error("cannot use the buffer file {path} (--db, ECS_EDGE_DB): {reason}")]
    BufferFile { path: PathBuf, reason: String },

    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),

    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error(
        "the buffer file (--db, ECS_EDGE_DB) belongs to device {stored}, not {configured} \
         (--device-id, ECS_DEVICE_ID): refusing to send its readings under another identity"
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

/// One of the agent's TLS files, named the way the person configuring the agent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "the CA certificate (--tls-ca-file, ECS_TLS_CA_FILE)",
            TlsFile::Cert => "the device certificate (--tls-cert-file, ECS_TLS_CERT_FILE)",
            TlsFile::Key => "the device key (--tls-key-file, ECS_TLS_KEY_FILE)",
        })
    }
}

impl Error {
    /// `error`, met opening the buffer file at `path`, said as what is wrong with the file.
    pub(crate) fn buffer_file(path: &Path, error: Error) -> Error {
        use rusqlite::ErrorCode;
        let Error::Sqlite(sqlite) = &error else {
            return error;
        };
        let reason = match sqlite.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => "it is not an agent's SQLite file (damaged, or \
                another file); move it aside and the agent starts with an empty buffer"
                .to_owned(),
            Some(ErrorCode::DatabaseCorrupt) => "it is damaged; move it aside and the agent \
                starts with an empty buffer (what it held is lost)"
                .to_owned(),
            Some(ErrorCode::CannotOpen) => "it cannot be opened or created: does its directory \
                exist, and may this user write there?"
                .to_owned(),
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
                "it is read-only for this user".to_owned()
            }
            Some(ErrorCode::DiskFull) => "the disk is full".to_owned(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                "another process holds it locked (is another agent running on it?)".to_owned()
            }
            _ => sqlite.to_string(),
        };
        Error::BufferFile {
            path: path.to_path_buf(),
            reason,
        }
    }
}
