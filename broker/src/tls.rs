//! The device listener's TLS: one rustls configuration, built from the CA, certificate and key
//! files at start and rebuilt when they change, with a client-certificate verifier that also
//! refuses revoked devices.
//!
//! Every certificate in the CA file is trusted, so a new CA can be added beside the old one,
//! devices re-issued, and the old one removed: a rotation without a flag day. A configuration
//! that fails to load never replaces a working one; the error is logged and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ecs_protocol::DeviceId;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::error::{Error, Result};
use crate::revocation::Denylist;

/// The files the device listener's TLS is built from.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The current server configuration, shared by every handshake.
#[derive(Debug)]
pub(crate) struct TlsStore {
    files: TlsFiles,
    denylist: Denylist,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    modified: Vec<Option<SystemTime>>,
}

impl TlsStore {
    /// Loads the files; an error names the file and what is wrong with it.
    pub(crate) fn load(files: TlsFiles, denylist: Denylist) -> Result<Self> {
        let loaded = load(&files, &denylist)?;
        Ok(Self {
            files,
            denylist,
            current: RwLock::new(loaded),
        })
    }

    /// The configuration for the next handshake.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&current.config)
    }

    /// Rebuilds the configuration when one of the files changed since the last load. Returns
    /// whether it did; a failed rebuild keeps the old configuration and is returned as an error.
    pub(crate) fn reload_if_changed(&self) -> Result<bool> {
        let modified = modification_times(&self.files);
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.modified == modified {
                return Ok(false);
            }
        }
        let loaded = load(&self.files, &self.denylist)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(true)
    }
}

fn modification_times(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(files: &TlsFiles, denylist: &Denylist) -> Result<Loaded> {
    // Taken before reading, so a change during the read triggers another reload.
    let modified = modification_times(files);
    let unusable = |reason: String| Error::TlsConfig {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca, "CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| unusable(format!("CA certificate: {e}")))?;
    }
    let chain = read_certs(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| Error::Pem {
        path: files.key.clone(),
        what: "private key",
        source,
    })?;

    // Explicit provider: the broker must not depend on the process having installed one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unusable(format!("client verifier: {e}")))?;
    let verifier = Arc::new(DeviceVerifier {
        webpki,
        denylist: denylist.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| unusable(format!("certificate and key: {e}")))?;
    // No session resumption: a resumed handshake restores the peer certificate from the cache
    // and never asks the verifier, so a revoked device holding a ticket would get back in.
    // (Phones reconnect rarely; a full handshake costs a few milliseconds.)
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols.clear();
    Ok(Loaded {
        config: Arc::new(config),
        modified,
    })
}

/// All certificates in a PEM file; an error when there is none.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let pem_error = |source| Error::Pem {
        path: path.to_owned(),
        what,
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(pem_error(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The device a client certificate was issued to: its `CN`, which must also be its `O` (the
/// CA writes both, see [`crate::pki`]), parsed as a [`DeviceId`].
pub(crate) fn device_of_certificate(cert: &CertificateDer<'_>) -> Option<DeviceId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    fn single<'a>(
        mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    ) -> Option<String> {
        let first = values.next()?.as_str().ok()?.to_owned();
        values.next().is_none().then_some(first)
    }
    let common_name = single(subject.iter_common_name())?;
    let organization = single(subject.iter_organization())?;
    if common_name != organization {
        return None;
    }
    DeviceId::parse(common_name).ok()
}

/// The subject of a certificate as text, for logs (`?` when it does not parse).
fn subject_of(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// rustls' WebPKI verifier, and then two rules of ours: the certificate must name one valid
/// device, and that device must not be revoked.
#[derive(Debug)]
struct DeviceVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    denylist: Denylist,
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Runs inside the handshake's span, so these lines carry the peer address too.
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| {
                tracing::warn!(subject = subject_of(end_entity), %error, "client certificate refused");
            })?;
        let Some(device) = device_of_certificate(end_entity) else {
            tracing::warn!(
                subject = subject_of(end_entity),
                "client certificate refused: no single valid device id"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NoDeviceId)),
            )));
        };
        if self.denylist.contains(&device) {
            tracing::warn!(device_id = %device, "client certificate refused: the device is revoked");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the certificate names no single valid device id (CN = O = device id)")]
struct NoDeviceId;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::PkiDir;

    fn files(pki: &PkiDir) -> TlsFiles {
        let server = pki.server_files();
        TlsFiles {
            ca: pki.ca_cert_path(),
            cert: server.cert,
            key: server.key,
        }
    }

    #[test]
    fn a_device_certificate_names_its_device() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(dir.path(), &["localhost".to_owned()]).unwrap();
        let device = DeviceId::parse("phone42").unwrap();
        let issued = pki.issue_device_files(&device).unwrap();
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        assert_eq!(device_of_certificate(&der), Some(device));
        let server = CertificateDer::from_pem_file(pki.server_files().cert).unwrap();
        assert_eq!(
            device_of_certificate(&server),
            None,
            "a server is no device"
        );
    }

    #[test]
    fn reload_happens_only_when_a_file_changes_and_never_breaks_a_working_config() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(dir.path(), &["localhost".to_owned()]).unwrap();
        let store = TlsStore::load(files(&pki), Denylist::default()).unwrap();
        assert!(!store.reload_if_changed().unwrap());
        let before = store.config();

        // A broken CA file: the reload fails and the old configuration stays.
        std::fs::write(pki.ca_cert_path(), "not a certificate").unwrap();
        filetime_bump(&pki.ca_cert_path());
        assert!(store.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&before, &store.config()));
    }

    /// Sets a file's modification time clearly after its previous one (some filesystems keep
    /// coarse timestamps).
    fn filetime_bump(path: &Path) {
        let file = std::fs::File::options().append(true).open(path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        file.set_modified(later).unwrap();
    }
}
