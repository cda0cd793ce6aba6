//! The phones' identities: a device id each, a client certificate from the bench's own CA, and
//! the rustls configuration that presents it, all made before the clock starts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use ecs_broker::PkiDir;
use ecs_protocol::DeviceId;
use indicatif::ProgressBar;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// One phone's identity.
pub struct Credentials {
    pub id: DeviceId,
    pub tls: Arc<ClientConfig>,
}

/// Issues a certificate for each of `count` new devices and builds their TLS configurations,
/// spread over the machine's cores (key generation and file writes add up for 10 000 phones).
/// Blocking: call it from `spawn_blocking`.
pub fn issue(pki: &PkiDir, count: usize, bar: &ProgressBar) -> anyhow::Result<Vec<Credentials>> {
    let roots = Arc::new(trusted_roots(&pki.ca_cert_path())?);
    let ids: Vec<DeviceId> = (0..count).map(|_| DeviceId::random()).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let done = AtomicU64::new(0);
    let issued: Vec<anyhow::Result<Vec<Credentials>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(chunk)
            .map(|ids| {
                let roots = Arc::clone(&roots);
                let done = &done;
                scope.spawn(move || {
                    ids.iter()
                        .map(|id| {
                            let credentials = issue_one(pki, &roots, id)?;
                            bar.set_position(done.fetch_add(1, Ordering::Relaxed) + 1);
                            Ok(credentials)
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a certificate worker panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for chunk in issued {
        all.extend(chunk?);
    }
    Ok(all)
}

fn issue_one(
    pki: &PkiDir,
    roots: &Arc<RootCertStore>,
    id: &DeviceId,
) -> anyhow::Result<Credentials> {
    let files = pki
        .issue_device_files(id)
        .with_context(|| format!("issuing a certificate for device {id}"))?;
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading {}", files.key.display()))?;
    Ok(Credentials {
        id: id.clone(),
        tls: Arc::new(client_config(Arc::clone(roots), chain, key)?),
    })
}

/// The CA certificates in `path`, the only roots a phone trusts.
fn trusted_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        roots
            .add(cert.with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("using the CA certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("no CA certificate in {}", path.display());
    }
    Ok(roots)
}

/// Like the edge agent's: our CA only, the device's certificate, and the ring provider passed
/// explicitly rather than looked up.
fn client_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("using the device certificate")
}
