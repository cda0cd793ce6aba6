//! rustls client configurations from PEM files, for `mqtts://`.
//!
//! The ring provider is passed explicitly, so a configuration works whether or not the process
//! installed a default provider, and never picks up a second one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Which of the PEM files a [`TlsError`] is about: callers name it with their own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA certificate(s) the broker's certificate must be signed by.
    Ca,
    /// The client's certificate (chain).
    Cert,
    /// The client's private key.
    Key,
}

/// Why a TLS configuration could not be built from the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        file: TlsFile,
        path: PathBuf,
        reason: String,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { file: TlsFile, path: PathBuf },
    #[error("the certificate and the key do not go together: {0}")]
    KeyMismatch(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

impl TlsError {
    /// The file the error is about, if one.
    pub fn file(&self) -> Option<TlsFile> {
        match self {
            TlsError::Unreadable { file, .. } | TlsError::NoCertificate { file, .. } => Some(*file),
            TlsError::KeyMismatch(_) => Some(TlsFile::Key),
            TlsError::Setup(_) => None,
        }
    }
}

/// A client configuration trusting exactly the CAs in `ca_file` and, with `identity` (a
/// certificate chain file and its key file), presenting that certificate.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let unreadable = |file: TlsFile, path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::Unreadable {
            file,
            path,
            reason: e.to_string(),
        }
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(unreadable(TlsFile::Ca, ca_file))? {
        let cert = cert.map_err(unreadable(TlsFile::Ca, ca_file))?;
        roots.add(cert).map_err(|e| TlsError::Unreadable {
            file: TlsFile::Ca,
            path: ca_file.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            file: TlsFile::Ca,
            path: ca_file.to_path_buf(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(unreadable(TlsFile::Cert, cert_file))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable(TlsFile::Cert, cert_file))?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate {
                    file: TlsFile::Cert,
                    path: cert_file.to_path_buf(),
                });
            }
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(unreadable(TlsFile::Key, key_file))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::KeyMismatch)?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&ca, issued.cert.pem()).unwrap();
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        (ca, cert, key)
    }

    #[test]
    fn builds_with_and_without_a_client_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path());
        let with = client_config(&ca, Some((&cert, &key))).unwrap();
        assert!(with.client_auth_cert_resolver.has_certs());
        let without = client_config(&ca, None).unwrap();
        assert!(!without.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn each_unusable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let other_key = dir.path().join("other-key.pem");
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();

        type Case<'a> = (&'a Path, Option<(&'a Path, &'a Path)>, TlsFile, &'a Path);
        let cases: [Case; 5] = [
            (&missing, None, TlsFile::Ca, &missing),
            (&empty, None, TlsFile::Ca, &empty),
            (&ca, Some((&empty, &key)), TlsFile::Cert, &empty),
            (&ca, Some((&cert, &cert)), TlsFile::Key, &cert),
            (&ca, Some((&cert, &other_key)), TlsFile::Key, &other_key),
        ];
        for (ca_file, identity, file, path) in cases {
            let error = client_config(ca_file, identity).expect_err("refused");
            assert_eq!(error.file(), Some(file), "{error}");
            if !matches!(error, TlsError::KeyMismatch(_)) {
                assert!(
                    error.to_string().contains(&*path.to_string_lossy()),
                    "{error}"
                );
            }
        }
    }
}
