//! The MQTT connection: options, TLS, and the task that keeps rumqttc's event loop turning.
//!
//! rumqttc does nothing unless its `EventLoop` is polled, and it reconnects on the next poll
//! after an error with no pause at all. This task polls it without ever blocking on anything
//! else, forwards what the session needs to know as [`LinkEvent`]s, and sleeps an exponential,
//! jittered, capped delay between failed attempts (reset by every ConnAck), so a fleet of
//! phones does not hammer a broker that just came back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ecs_mqtt_link::Backoff;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::Counters;
use crate::config::{AgentConfig, BrokerUrl, Scheme, TlsFiles};
use crate::error::{Error, Result, TlsFile};

/// What the connection tells the session.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A ConnAck arrived: a fresh session (we never ask the broker to keep one), so
    /// subscriptions are gone and anything unacknowledged must be sent again.
    Connected,
    /// The connection broke; the task is already trying again.
    Disconnected,
    /// A message arrived on a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for the DISCONNECT packet to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// The MQTT client for this device and the event loop that serves it: client id = device id,
/// packets sized for the largest protocol message, TLS with the device certificate for
/// `mqtts://`. Reads the TLS files, so call it off the async workers.
///
/// The session is clean: we do not rely on the broker keeping state (rumqttd keeps it only in
/// memory), and a persistent session per phone would pile up on brokers. Everything that must
/// survive is in SQLite and is re-sent after each ConnAck.
pub(crate) fn client(config: &AgentConfig) -> Result<(AsyncClient, EventLoop)> {
    let mut options = ecs_mqtt_link::options(
        config.device_id.as_str(),
        &config.broker,
        Duration::from_secs(30),
    );
    if config.broker.scheme == Scheme::Mqtts {
        let files = config
            .tls
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig(format!("{} needs TLS files", config.broker)))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_tls(files)?,
        )));
    }
    // Room for a full window of batches, their resends and receipts, so the session task
    // rarely waits on the queue to the event loop.
    let requests = config.inflight_batches * 2 + 16;
    Ok(AsyncClient::new(options, requests))
}

/// A rustls client configuration that trusts only our CA and presents the device certificate,
/// its errors naming the agent's flag for the file at fault.
fn client_tls(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    ecs_mqtt_link::tls::client_config(&files.ca_file, Some((&files.cert_file, &files.key_file)))
        .map_err(|error| {
            use ecs_mqtt_link::tls::{TlsError, TlsFile as Role};
            let file = |role| match role {
                Role::Ca => TlsFile::Ca,
                Role::Cert => TlsFile::Cert,
                Role::Key => TlsFile::Key,
            };
            match error {
                TlsError::Unreadable {
                    file: role,
                    path,
                    reason,
                } => Error::TlsFile {
                    file: file(role),
                    path,
                    reason,
                },
                TlsError::NoCertificate { file: role, path } => Error::NoCertificate {
                    file: file(role),
                    path,
                },
                TlsError::KeyMismatch(source) => Error::KeyMismatch { source },
                TlsError::Setup(e) => Error::Tls(e),
            }
        })
}

/// What a failed connection attempt means for the person running the agent, and the setting
/// that would fix it when one would.
pub(crate) fn explain(error: &ConnectionError, broker: &BrokerUrl) -> String {
    use rustls::{AlertDescription, CertificateError};
    // rumqttc wraps rustls's error in its own and in `io::Error`s: find it wherever it is.
    let mut rustls_error = None;
    let mut io_kind = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            rustls_error = Some(found);
            break;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            if let Some(inner) = io.get_ref() {
                cause = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cause = e.source();
    }
    match (rustls_error, error) {
        (Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)), _) => format!(
            "the broker's certificate does not name the host of {broker} (--mqtt-url, \
             ECS_MQTT_URL)"
        ),
        (Some(rustls::Error::InvalidCertificate(e)), _) => format!(
            "the broker's certificate is not trusted by {} ({e:?}): is it the CA that \
             signed the broker's certificate?",
            TlsFile::Ca
        ),
        (
            Some(rustls::Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired),
            )),
            _,
        ) => format!(
            "the broker refused {} ({alert:?}): not signed by the broker's device CA, \
             revoked, expired, or not naming a device",
            TlsFile::Cert
        ),
        (Some(e), _) => format!("the TLS handshake with {broker} failed: {e}"),
        (None, ConnectionError::ConnectionRefused(code)) => {
            format!("the broker refused the session ({code:?})")
        }
        (None, _) if io_kind == Some(std::io::ErrorKind::ConnectionRefused) => {
            format!("nothing listens at {broker} (--mqtt-url, ECS_MQTT_URL); trying again")
        }
        (None, _) => format!("cannot reach {broker} (--mqtt-url, ECS_MQTT_URL): {error}"),
    }
}

/// Polls the event loop until `cancel`, then lets a DISCONNECT go out (bounded by
/// [`DISCONNECT_GRACE`]). Ends early only if the session task is gone.
pub(crate) async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    broker: BrokerUrl,
    events: mpsc::UnboundedSender<LinkEvent>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
    loop {
        let polled = tokio::select! {
            () = cancel.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                counters.set_connection_problem(None);
                counters.connected.store(true, Ordering::Relaxed);
                counters.connections.fetch_add(1, Ordering::Relaxed);
                info!("connected to broker");
                LinkEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => LinkEvent::Message {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(error) => {
                if counters.connected.swap(false, Ordering::Relaxed) {
                    warn!(%error, "connection to broker lost");
                    if events.send(LinkEvent::Disconnected).is_err() {
                        break;
                    }
                }
                let delay = backoff.next_delay();
                let problem = explain(&error, &broker);
                warn!(
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot connect: {problem}"
                );
                counters.set_connection_problem(Some(problem));
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        // The channel is unbounded on purpose: a bounded one could fill while the session task
        // waits for room in rumqttc's request queue, which only this task drains (deadlock).
        // Its length is bounded in practice by the session task, which never stops reading.
        if events.send(event).is_err() {
            break;
        }
    }

    if counters.connected.swap(false, Ordering::Relaxed) && client.try_disconnect().is_ok() {
        let flushed = tokio::time::timeout(DISCONNECT_GRACE, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            warn!("DISCONNECT not sent within {DISCONNECT_GRACE:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ecs_protocol::DeviceId;

    use super::*;

    /// A config for `mqtts://` whose PEM files hold a fresh self-signed certificate and key.
    fn tls_config(dir: &Path) -> AgentConfig {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("ca.pem"), issued.cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), issued.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), issued.signing_key.serialize_pem()).unwrap();
        let mut config = AgentConfig::new(DeviceId::random(), "mqtts://localhost".parse().unwrap());
        config.tls = Some(TlsFiles {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        });
        config
    }

    #[test]
    fn mqtts_builds_a_client_from_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = tls_config(dir.path());
        assert!(client(&config).is_ok());
    }

    #[test]
    fn unusable_pem_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tls_config(dir.path());
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let files = config.tls.clone().unwrap();

        config.tls = Some(TlsFiles {
            ca_file: dir.path().join("missing.pem"),
            ..files.clone()
        });
        let missing = client(&config).err().expect("refused");
        assert!(
            matches!(&missing, Error::TlsFile { file: TlsFile::Ca, path, .. } if path.ends_with("missing.pem"))
        );
        assert!(missing.to_string().contains("--tls-ca-file"), "{missing}");

        config.tls = Some(TlsFiles {
            ca_file: dir.path().join("empty.pem"),
            ..files.clone()
        });
        let empty = client(&config).err().expect("refused");
        assert!(matches!(
            empty,
            Error::NoCertificate {
                file: TlsFile::Ca,
                ..
            }
        ));
        assert!(empty.to_string().contains("ECS_TLS_CA_FILE"), "{empty}");

        config.tls = Some(TlsFiles {
            key_file: files.cert_file.clone(),
            ..files
        });
        let not_a_key = client(&config).err().expect("refused");
        assert!(
            matches!(&not_a_key, Error::TlsFile { file: TlsFile::Key, path, .. } if path.ends_with("cert.pem"))
        );
        assert!(
            not_a_key.to_string().contains("--tls-key-file"),
            "{not_a_key}"
        );
    }
}
