//! The ECS MQTT broker: our own doors in front of rumqttd's router, plus the certificate
//! authority that gives devices their identity.
//!
//! Two listeners, because devices and services are trusted differently:
//! * **devices** connect over TLS with a client certificate from our CA ([`pki`]). The device
//!   id comes from the verified certificate; the client id must be that id; the device may
//!   publish only on its own uplink topic and subscribe only to its own downlink topic, at its
//!   own bounded rates; revoked devices are refused at the handshake and cut off when revoked.
//! * **services** (the cloud) connect with a username and password, over plain TCP on a private
//!   address, and may use every topic. Guessing the password is throttled per address.
//!
//! rumqttd keeps everything in memory and nothing survives a restart; end-to-end delivery is
//! the business of the application acks in `ecs_protocol`, not of the broker.
//!
//! # Behaviour a client sees
//!
//! * A refused CONNECT gets a CONNACK that says why (bad client id, bad password, server
//!   unavailable for caps and rates, not authorised for a last will) and the connection closes.
//!   Refusals before CONNECT (the listener's connect rate and caps, a device's own cap and
//!   reconnect rate, a certificate refused at the handshake) close the connection without one.
//! * A device packet against the access rules closes the connection, unanswered.
//! * A publish matching no subscription is acknowledged and dropped; a new subscription sees only
//!   messages published after it. A client that reconnects with `clean_session = false` and the
//!   same client id keeps its subscriptions and gets what was published meanwhile, as far as the
//!   bounded, lossy in-memory logs still hold it (see the `router` module).
//!
//! Code map: [`settings`](BrokerSettings) (flags and environment), `door` (accept paths,
//! handshakes, CONNECT, access rules, the pump to the router), `router` (rumqttd's router and its
//! memory limits), `tls` (the device TLS configuration and certificate checks), `revocation`
//! (the denylist the cloud sends), `credentials` (the service password), [`metrics`] and `admin`
//! (what an operator sees), [`RunningBroker`] (threads, start, stop), [`status`] (`ecs-broker
//! status`), [`pki`] (CA and certificate files).

mod admin;
mod credentials;
mod door;
mod error;
pub mod metrics;
pub mod pki;
mod revocation;
mod router;
mod running;
mod settings;
pub mod status;
mod tls;

pub use credentials::password_weakness;
pub use error::{Error, Result};
pub use metrics::{BrokerMetrics, HandshakeOutcome, Listener, Refused, Violation};
pub use pki::{CertFiles, CertificateAuthority, IssuedCert, PkiDir};
pub use revocation::Denylist;
pub use router::MAX_PACKET_BYTES;
pub use running::{READY_TIMEOUT, RunningBroker};
pub use settings::{
    BrokerSettings, DEFAULT_MAX_DEVICE_CONNECTIONS, DEFAULT_SERVICE_USERNAME, Secret,
};

/// A TCP port on 127.0.0.1 that was free a moment ago, for tests and the all-in-one demo, which
/// start brokers and clients on ephemeral ports.
///
/// The port is released before returning, so another process may take it first; the broker
/// then fails to start with [`Error::Bind`] rather than misbehaving.
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(free_local_ports::<1>()?[0])
}

/// `N` distinct free ports: all are held until all are chosen, so the system cannot hand out the
/// same one twice (two separate calls of [`free_local_port`] can, once the first is released).
pub fn free_local_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}
