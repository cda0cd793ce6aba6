//! A check of the device listener's TLS files before rumqttd gets them.
//!
//! rumqttd reads the CA, certificate and key on every incoming connection, and when they are
//! unusable it logs an error and drops that connection: the broker would look healthy while no
//! device could connect. So the same files are loaded here once, at start, the way rumqttd
//! loads them (only the first certificate of the CA file is trusted), and every problem is an
//! error naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::{Error, Result};
use crate::settings::BrokerSettings;

/// Builds the device listener's server configuration from `settings`' files and discards it.
pub(crate) fn check_device_tls(settings: &BrokerSettings) -> Result<()> {
    let (ca, cert, key) = (
        &settings.tls_ca_file,
        &settings.tls_cert_file,
        &settings.tls_key_file,
    );
    let unusable = |reason: String| Error::TlsConfig {
        cert: cert.clone(),
        key: key.clone(),
        ca: ca.clone(),
        reason,
    };

    let ca_certs = read_certs(ca, "CA certificate")?;
    if ca_certs.len() > 1 {
        tracing::warn!(
            ca_file = %ca.display(),
            "the CA file holds {} certificates; rumqttd trusts only the first",
            ca_certs.len()
        );
    }
    let mut roots = RootCertStore::empty();
    for first in ca_certs.into_iter().take(1) {
        roots
            .add(first)
            .map_err(|e| unusable(format!("CA certificate: {e}")))?;
    }

    let chain = read_certs(cert, "certificate")?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| Error::Pem {
        path: key.clone(),
        what: "private key",
        source,
    })?;

    // Explicit provider: the check must not depend on the process having installed one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unusable(format!("client verifier: {e}")))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| unusable(format!("certificate and key: {e}")))?;
    Ok(())
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
