//! The system's own certificate authority.
//!
//! Devices prove who they are with client certificates signed by this CA, and find the broker by
//! a server certificate signed by it too. A device certificate carries the device id twice: as
//! `CN`, for humans and logs, and as `O`, because rumqttd (with `validate-tenant-prefix`) takes
//! `O` as the client's tenant and confines it to topics under `/tenants/<O>/`, which is where
//! [`ecs_protocol::topic`] puts a device's topics. That one field is the whole authorisation
//! model for devices, so it is set here and nowhere else.
//!
//! Keys are ECDSA P-256 (rcgen's default, cheap to handshake on a phone). There is no
//! revocation: rumqttd loads no revocation list, so one lost device cannot be cut off by itself
//! (rotating the CA cuts off all of them). Device certificates are therefore short-lived (see
//! [`DEVICE_VALIDITY`]), which bounds how long a leaked key stays useful, and devices must be
//! re-issued a certificate before it expires.

mod dir;

use std::fmt;

use ecs_protocol::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

pub use dir::{CertFiles, PkiDir};

/// How long the CA certificate is valid: everything else is re-issued well within it.
pub const CA_VALIDITY: Duration = Duration::days(10 * 365);
/// How long a broker server certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::days(2 * 365);
/// How long a device certificate is valid.
pub const DEVICE_VALIDITY: Duration = Duration::days(365);
/// Certificates start being valid this long before they are issued, so a phone whose clock runs
/// a little behind does not reject a fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// The CA: its certificate and the key that signs device and server certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA. Its path length is 0: verifiers accept only end-entity
    /// certificates directly below it, never an intermediate CA someone slipped in.
    pub fn generate(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);

        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// A CA loaded from its PEM certificate and key, checking that the certificate is a CA and
    /// that the key is its own (a mismatched pair would issue certificates nobody can verify).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::parse(cert_pem, key_pem, "PEM input")
    }

    /// [`Self::from_pem`], naming where the PEM came from in errors.
    fn parse(cert_pem: &str, key_pem: &str, origin: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCa {
            origin: origin.to_owned(),
            reason,
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(invalid("the certificate is not marked as a CA".into()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("private key: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate: what devices and services trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key. Whoever holds it can impersonate any device.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for the broker, valid for `names`: each is an IP address when it
    /// parses as one, a DNS name otherwise. Clients check the name they dialled against these.
    pub fn issue_server(&self, names: &[String]) -> Result<IssuedCert> {
        let first = names.first().ok_or_else(|| Error::InvalidSetting {
            setting: "server names",
            reason: "a server certificate needs at least one DNS name or IP address".into(),
        })?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, SERVER_VALIDITY)
    }

    /// A client certificate for one device, with `CN = O = device id` (see the module docs for
    /// why `O` matters).
    pub fn issue_device(&self, device: &DeviceId) -> Result<IssuedCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, device.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, DEVICE_VALIDITY)
    }

    fn issue(&self, mut params: CertificateParams, validity: Duration) -> Result<IssuedCert> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        // A fresh key per certificate: the serial number is derived from it, so it is unique too.
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests;
