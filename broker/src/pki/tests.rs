use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca.cert_pem())).unwrap();
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The check rumqttd applies to a device's certificate during the handshake.
fn verify_client(ca: &CertificateAuthority, cert_pem: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
        .map(drop)
}

/// The check a device applies to the broker's certificate when dialling `name`.
fn verify_server(
    ca: &CertificateAuthority,
    cert_pem: &str,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now())
        .map(drop)
}

#[test]
fn a_device_certificate_names_the_device_as_cn_and_tenant() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca.issue_device(&device("phone42")).unwrap();

    let der = der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let subject = cert.subject();
    let organisations: Vec<_> = subject
        .iter_organization()
        .map(|o| o.as_str().unwrap())
        .collect();
    let common_names: Vec<_> = subject
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(organisations, ["phone42"]);
    assert_eq!(common_names, ["phone42"]);
    let usage = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(usage.client_auth && !usage.server_auth);
    assert!(!cert.is_ca());
}

#[test]
fn a_device_certificate_chains_to_its_ca_only() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let other_ca = CertificateAuthority::generate("other CA").unwrap();
    let issued = ca.issue_device(&device("phone42")).unwrap();

    verify_client(&ca, &issued.cert_pem).unwrap();
    assert!(verify_client(&other_ca, &issued.cert_pem).is_err());
}

#[test]
fn a_device_certificate_cannot_serve_tls() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca.issue_device(&device("localhost")).unwrap();
    assert!(verify_server(&ca, &issued.cert_pem, "localhost").is_err());
}

#[test]
fn a_server_certificate_is_valid_for_its_dns_names_and_ip_addresses() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let issued = ca.issue_server(&names).unwrap();

    verify_server(&ca, &issued.cert_pem, "localhost").unwrap();
    verify_server(&ca, &issued.cert_pem, "127.0.0.1").unwrap();
    assert!(verify_server(&ca, &issued.cert_pem, "broker.example").is_err());
    assert!(verify_client(&ca, &issued.cert_pem).is_err());
}

#[test]
fn a_server_certificate_needs_a_name() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    assert!(matches!(
        ca.issue_server(&[]),
        Err(Error::InvalidSetting { .. })
    ));
}

#[test]
fn a_ca_reloaded_from_pem_issues_certificates_that_chain_to_it() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let issued = reloaded.issue_device(&device("phone42")).unwrap();
    verify_client(&ca, &issued.cert_pem).unwrap();
}

#[test]
fn a_ca_is_not_loaded_with_a_foreign_key_or_from_a_leaf_certificate() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let other_ca = CertificateAuthority::generate("other CA").unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(ca.cert_pem(), other_ca.key_pem()),
        Err(Error::InvalidCa { .. })
    ));

    let leaf = ca.issue_device(&device("phone42")).unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
        Err(Error::InvalidCa { .. })
    ));
}

#[test]
fn debug_output_never_shows_private_keys() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca.issue_device(&device("phone42")).unwrap();
    assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

mod dir {
    use super::*;

    fn names() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn init_writes_a_ca_and_a_server_certificate_that_chains_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(tmp.path().join("pki"), &names()).unwrap();

        let ca = pki.load_ca().unwrap();
        let server = std::fs::read_to_string(pki.server_files().cert).unwrap();
        verify_server(&ca, &server, "localhost").unwrap();
    }

    #[test]
    fn init_refuses_to_replace_an_existing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(tmp.path(), &names()).unwrap();
        let before = std::fs::read_to_string(pki.ca_cert_path()).unwrap();

        assert!(matches!(
            PkiDir::init(tmp.path(), &names()),
            Err(Error::CaExists(_))
        ));
        assert_eq!(std::fs::read_to_string(pki.ca_cert_path()).unwrap(), before);
    }

    #[test]
    fn init_with_bad_server_names_leaves_no_ca_behind() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(PkiDir::init(tmp.path(), &[]).is_err());
        assert!(!PkiDir::new(tmp.path()).ca_key_path().exists());
    }

    #[test]
    fn device_files_are_issued_under_devices_and_chain_to_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(tmp.path(), &names()).unwrap();

        let files = pki.issue_device_files(&device("phone42")).unwrap();
        assert_eq!(files.cert, tmp.path().join("devices/phone42.pem"));
        assert_eq!(files.key, tmp.path().join("devices/phone42.key"));
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        verify_client(&pki.load_ca().unwrap(), &cert).unwrap();
    }

    #[test]
    fn issuing_without_a_ca_names_the_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let error = PkiDir::new(tmp.path())
            .issue_device_files(&device("phone42"))
            .unwrap_err();
        assert!(error.to_string().contains("ca.pem"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(tmp.path(), &names()).unwrap();
        let device = pki.issue_device_files(&device("phone42")).unwrap();

        for key in [pki.ca_key_path(), pki.server_files().key, device.key] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        for cert in [pki.ca_cert_path(), pki.server_files().cert, device.cert] {
            assert_eq!(mode(&cert), 0o644, "{}", cert.display());
        }
    }
}
