//! The ECS MQTT broker: rumqttd embedded, plus the certificate authority that gives devices
//! their identity.
//!
//! Two listeners, because devices and services are trusted differently:
//! * **devices** connect over TLS with a client certificate from our CA ([`pki`]). rumqttd takes
//!   the certificate's `O` field as the client's tenant and lets it publish and subscribe only
//!   under `/tenants/<O>/`; since `O` is the device id, a device can speak only as itself and
//!   read only its own downlink. A publish outside its prefix disconnects the device.
//! * **services** (the cloud) connect with a username and password, over plain TCP on a private
//!   address, and may use every topic.
//!
//! rumqttd keeps everything in memory and nothing survives a restart; end-to-end delivery is
//! the business of the application acks in `ecs_protocol`, not of the broker.
//!
//! # Known limits (rumqttd 0.20)
//!
//! * It cannot be stopped from outside; the process exit ends it ([`RunningBroker`]).
//! * The TLS handshake runs inline in the device listener's accept loop with no timeout: one
//!   client that connects and never completes the handshake blocks all new device connections
//!   until it goes away (`tests/availability.rs`, ignored, shows it). Fixing it needs a patched
//!   rumqttd or a different broker.
//! * A refused login (wrong password, no certificate) and a full broker (`max_connections`) get
//!   no CONNACK: the connection just closes, so a client cannot tell them from a network fault.
//! * A device that publishes or subscribes outside its tenant prefix is disconnected, its
//!   offending packet unanswered.
//! * A publish matching no subscription is acknowledged and dropped; a new subscription sees only
//!   messages published after it. A client that reconnects with `clean_session = false` and the
//!   same client id keeps its subscriptions and gets what was published meanwhile, as far as the
//!   bounded, lossy in-memory logs still hold it (see the `config` module).
//! * No certificate revocation: a device certificate is valid until it expires.
//!
//! Code map: [`settings`](BrokerSettings) (flags and environment), `config` (rumqttd
//! configuration and memory limits), `tls` (checking the TLS files at start), [`RunningBroker`]
//! (thread and readiness), [`pki`] (CA and certificate files).

mod config;
mod error;
pub mod pki;
mod running;
mod settings;
mod tls;

pub use config::MAX_PACKET_BYTES;
pub use error::{Error, Result};
pub use pki::{CertFiles, CertificateAuthority, IssuedCert, PkiDir};
pub use running::{READY_TIMEOUT, RunningBroker};
pub use settings::{BrokerSettings, DEFAULT_MAX_CONNECTIONS, DEFAULT_SERVICE_USERNAME, Secret};

/// A TCP port on 127.0.0.1 that was free a moment ago, for tests and the all-in-one demo, which
/// start brokers on ephemeral ports (rumqttd cannot report a port it picked itself).
///
/// The port is released before returning, so another process may take it first; the broker
/// then fails to start with [`Error::Bind`] rather than misbehaving.
pub fn free_local_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
