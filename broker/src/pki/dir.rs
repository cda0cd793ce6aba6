//! The PKI on disk: one directory an operator (or the all-in-one demo) hands around.
//!
//! ```text
//! <dir>/ca.pem              CA certificate: give it to every device and service
//! <dir>/ca.key              CA private key (0600): keep it off the broker host in production
//! <dir>/server.pem, .key    the broker's server certificate and key
//! <dir>/devices/<id>.pem    one client certificate per device
//! <dir>/devices/<id>.key    and its private key (0600)
//! ```
//!
//! Every file is written to a temporary file in the same directory and renamed into place, so a
//! reader (a broker loading its certificate, an agent starting up) never sees half a file, and a
//! private key is never readable by others, not even for a moment.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ecs_protocol::DeviceId;

use super::{CertificateAuthority, IssuedCert};
use crate::error::{Error, Result};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const DEVICES: &str = "devices";
/// The `CN` of a CA made by [`PkiDir::init`].
const CA_COMMON_NAME: &str = "ECS device CA";

/// Where a certificate and its key were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PKI directory (see the module docs for its layout). Creating the value does no I/O.
#[derive(Debug, Clone)]
pub struct PkiDir {
    root: PathBuf,
}

impl PkiDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates a new CA in `dir` (creating the directory if needed) and a broker server
    /// certificate for `server_names`.
    ///
    /// Refuses to touch an existing CA: replacing it would silently lock out every device
    /// provisioned with the old one.
    pub fn init(dir: impl Into<PathBuf>, server_names: &[String]) -> Result<Self> {
        let pki = Self::new(dir);
        fs::create_dir_all(&pki.root).map_err(Error::io(&pki.root))?;
        for existing in [pki.ca_cert_path(), pki.ca_key_path()] {
            if existing.exists() {
                return Err(Error::CaExists(existing));
            }
        }
        let ca = CertificateAuthority::generate(CA_COMMON_NAME)?;
        // Checked before anything is written, so bad names leave no half-made PKI behind.
        let server = ca.issue_server(server_names)?;
        // The key first: if a concurrent `init` won the race, no certificate of ours is left
        // pointing at their key.
        write_new(&pki.ca_key_path(), ca.key_pem(), Visibility::Private)?;
        write_new(&pki.ca_cert_path(), ca.cert_pem(), Visibility::Public)?;
        pki.write_pair(&pki.server_files(), &server)?;
        Ok(pki)
    }

    /// The CA, for issuing certificates.
    pub fn load_ca(&self) -> Result<CertificateAuthority> {
        let cert = read(&self.ca_cert_path())?;
        let key = read(&self.ca_key_path())?;
        CertificateAuthority::parse(&cert, &key, &self.root.display().to_string())
    }

    /// Issues a new broker server certificate (for renewal, or new names), replacing the old one.
    /// The running broker picks it up on the next connection: rumqttd reads the files per
    /// handshake.
    pub fn issue_server_files(&self, server_names: &[String]) -> Result<CertFiles> {
        let issued = self.load_ca()?.issue_server(server_names)?;
        let files = self.server_files();
        self.write_pair(&files, &issued)?;
        Ok(files)
    }

    /// Issues a certificate for `device`, replacing any earlier one of the same device (there is
    /// no revocation: the earlier one stays valid until it expires).
    pub fn issue_device_files(&self, device: &DeviceId) -> Result<CertFiles> {
        let issued = self.load_ca()?.issue_device(device)?;
        let devices = self.root.join(DEVICES);
        fs::create_dir_all(&devices).map_err(Error::io(&devices))?;
        let files = self.device_files(device);
        self.write_pair(&files, &issued)?;
        Ok(files)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join(CA_CERT)
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join(CA_KEY)
    }

    pub fn server_files(&self) -> CertFiles {
        CertFiles {
            cert: self.root.join(SERVER_CERT),
            key: self.root.join(SERVER_KEY),
        }
    }

    /// Where `device`'s certificate and key are (or would be) written.
    pub fn device_files(&self, device: &DeviceId) -> CertFiles {
        // DeviceId is alphanumeric only, so it cannot escape the directory.
        let devices = self.root.join(DEVICES);
        CertFiles {
            cert: devices.join(format!("{device}.pem")),
            key: devices.join(format!("{device}.key")),
        }
    }

    fn write_pair(&self, files: &CertFiles, issued: &IssuedCert) -> Result<()> {
        write_replacing(&files.key, &issued.key_pem, Visibility::Private)?;
        write_replacing(&files.cert, &issued.cert_pem, Visibility::Public)
    }
}

/// Who may read a file.
#[derive(Debug, Clone, Copy)]
enum Visibility {
    /// Only the owner (mode 0600): private keys.
    Private,
    /// Everyone (mode 0644): certificates.
    Public,
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(Error::io(path))
}

/// Writes `path` atomically, failing if it already exists.
fn write_new(path: &Path, contents: &str, visibility: Visibility) -> Result<()> {
    let file = staged(path, contents, visibility)?;
    file.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::CaExists(path.to_owned())
        } else {
            Error::io(path)(e.error)
        }
    })?;
    Ok(())
}

/// Writes `path` atomically, replacing it if it exists.
fn write_replacing(path: &Path, contents: &str, visibility: Visibility) -> Result<()> {
    let file = staged(path, contents, visibility)?;
    file.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}

/// A temporary file next to `path`, holding `contents` on disk, with its final permissions.
/// tempfile creates it with mode 0600, so a key is private from its first byte.
fn staged(path: &Path, contents: &str, visibility: Visibility) -> Result<tempfile::NamedTempFile> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .map_err(Error::io(path))?;
    set_visibility(&file, visibility).map_err(Error::io(path))?;
    Ok(file)
}

#[cfg(unix)]
fn set_visibility(file: &tempfile::NamedTempFile, visibility: Visibility) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match visibility {
        Visibility::Private => 0o600,
        Visibility::Public => 0o644,
    };
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_visibility(_file: &tempfile::NamedTempFile, _visibility: Visibility) -> std::io::Result<()> {
    Ok(())
}
