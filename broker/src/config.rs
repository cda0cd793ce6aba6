//! Translation of [`BrokerSettings`] into rumqttd's `Config`, with the limits that keep an
//! in-memory broker inside its memory.
//!
//! # Where rumqttd keeps messages
//!
//! rumqttd has no disk. Every filter somebody has subscribed to since the broker started owns an
//! in-memory commit log of up to `max_segment_count` full segments of `max_segment_size` bytes,
//! plus the segment being filled; the oldest segment is dropped when the log is full, and a
//! subscriber that had not read it yet silently skips ahead. A log is never freed, even when
//! its subscribers leave. Publishes to a topic no filter matches are acknowledged and dropped.
//! Segment sizes count topic and payload bytes only; each stored message costs a few hundred
//! bytes more.
//!
//! Two kinds of filters matter here, so they get their own sizes:
//! * the cloud's subscription to every uplink (`/tenants/+/ecs/v1/up`): one log for the whole
//!   fleet, sized to ride out a short stall of the cloud;
//! * each device's downlink (`/tenants/<id>/ecs/v1/down`): one log per device that ever
//!   subscribed, so it must be small; acks and notifications are a few dozen bytes.
//!
//! Losing a message from a log is survivable by design: devices resend until the cloud's
//! application ack, and the cloud resends notifications until the device's receipt.

use std::collections::HashMap;
use std::sync::Arc;

use rumqttd::{
    Config, ConnectionSettings, ConsoleSettings, RouterConfig, SegmentConfig, ServerSettings,
    TlsConfig,
};
use sha2::{Digest, Sha256};

use crate::settings::{BrokerSettings, Secret};

/// Largest MQTT packet body accepted: one protocol message plus room for the topic, packet id
/// and properties. Clients must raise their own limit too (rumqttc's default is 10 KiB).
pub const MAX_PACKET_BYTES: usize = ecs_protocol::MAX_MESSAGE_BYTES + 4096;

/// Time a client gets, after its TCP (and TLS) connection is accepted, to send CONNECT. Idle
/// connections would otherwise use up `max_connections`.
const CONNECT_TIMEOUT_MS: u16 = 10_000;
/// Packets rumqttd reads from one connection before handing them to the router (rumqttd calls it
/// `max_inflight_count`; the MQTT inflight window towards a client is fixed at 100).
const READ_BATCH_PACKETS: usize = 100;
/// Pause after accepting each connection: caps a reconnect storm at ~1000 connections per second
/// per listener, which the single router thread can absorb.
const NEXT_CONNECTION_DELAY_MS: u64 = 1;
/// QoS 0 messages the router hands a connection per scheduling round.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;

/// Filters not covered below (anything a service or device subscribes to beyond the protocol).
const DEFAULT_SEGMENT: SegmentConfig = segment(256 * 1024, 2);
/// The fleet's uplink log: ~72 MiB of payload, about half a minute of 10 000 devices at 10 Hz.
const UPLINK_SEGMENT: SegmentConfig = segment(8 * 1024 * 1024, 8);
/// One device's downlink log: a few hundred acks and notifications.
const DOWNLINK_SEGMENT: SegmentConfig = segment(16 * 1024, 2);

/// Filter matching every device's downlink topic (`ecs_protocol::topic` has no function for it;
/// a test ties the two together).
const ALL_DOWNLINKS: &str = "/tenants/+/ecs/v1/down";

const fn segment(max_segment_size: usize, max_segment_count: usize) -> SegmentConfig {
    SegmentConfig {
        max_segment_size,
        max_segment_count,
    }
}

/// The rumqttd configuration for `settings`, whose password has been resolved to
/// `service_password`.
///
/// Never log this value: rumqttd's types print everything they hold.
pub(crate) fn rumqttd_config(settings: &BrokerSettings, service_password: Secret) -> Config {
    let device = ServerSettings {
        name: "device-listener".to_owned(),
        listen: settings.device_addr,
        tls: Some(TlsConfig::Rustls {
            capath: Some(settings.tls_ca_file.display().to_string()),
            certpath: settings.tls_cert_file.display().to_string(),
            keypath: settings.tls_key_file.display().to_string(),
        }),
        next_connection_delay_ms: NEXT_CONNECTION_DELAY_MS,
        // No username/password: the client certificate is the credential.
        connections: connection_settings(),
    };

    let mut service = ServerSettings {
        name: "service-listener".to_owned(),
        listen: settings.service_addr,
        tls: None,
        next_connection_delay_ms: NEXT_CONNECTION_DELAY_MS,
        connections: connection_settings(),
    };
    let credentials = Arc::new(ServiceCredentials::new(
        settings.service_username.clone(),
        &service_password,
    ));
    // An auth handler rather than rumqttd's `auth` map: the map would keep the password in a
    // struct whose `Debug` prints it, and the handler lets us log who was refused.
    service.set_auth_handler(move |client_id, username, password| {
        let credentials = Arc::clone(&credentials);
        async move { credentials.check(&client_id, &username, &password) }
    });

    let console = settings.console_addr.map(|addr| {
        let mut console = ConsoleSettings::default();
        console.listen = addr.to_string();
        console
    });

    Config {
        id: 0,
        router: router_config(settings.max_connections),
        v4: Some(HashMap::from([
            ("device".to_owned(), device),
            ("service".to_owned(), service),
        ])),
        console,
        ..Config::default()
    }
}

fn connection_settings() -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: READ_BATCH_PACKETS,
        auth: None,
        external_auth: None,
        // rumqttd's documented behaviour without it: a publish to a topic no subscription has
        // matched yet disconnects the publisher. 0.20.0's router happens to drop such a publish
        // either way; set it so our devices do not depend on that detail.
        dynamic_filters: true,
    }
}

fn router_config(max_connections: usize) -> RouterConfig {
    RouterConfig {
        max_connections,
        max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
        max_segment_size: DEFAULT_SEGMENT.max_segment_size,
        max_segment_count: DEFAULT_SEGMENT.max_segment_count,
        // rumqttd applies these to every subscribed filter they match, so a device subscribing
        // to its own uplink topic would get the fleet-sized limits; it can only fill them with
        // its own publishes.
        custom_segment: Some(HashMap::from([
            (ecs_protocol::topic::all_uplinks(), UPLINK_SEGMENT),
            (ALL_DOWNLINKS.to_owned(), DOWNLINK_SEGMENT),
        ])),
        ..RouterConfig::default()
    }
}

/// The one username and password the service listener accepts.
struct ServiceCredentials {
    username: String,
    /// Only a digest is kept, so comparing takes the same time whatever the guess.
    password_digest: [u8; 32],
}

impl ServiceCredentials {
    fn new(username: String, password: &Secret) -> Self {
        Self {
            username,
            password_digest: digest(password.expose()),
        }
    }

    fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        // Constant-time comparison of equal-length digests: no early exit on the first
        // differing byte, and the password's length does not show either.
        let difference = digest(password)
            .iter()
            .zip(self.password_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        let accepted = username == self.username && difference == 0;
        if !accepted {
            tracing::warn!(client_id, username, "service login refused");
        }
        accepted
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_credentials_accept_only_the_configured_pair() {
        let credentials = ServiceCredentials::new("ecs-cloud".into(), &Secret::new("s3cret"));
        assert!(credentials.check("c", "ecs-cloud", "s3cret"));
        assert!(!credentials.check("c", "ecs-cloud", "s3cret "));
        assert!(!credentials.check("c", "ecs-cloud", ""));
        assert!(!credentials.check("c", "other", "s3cret"));
    }

    #[test]
    fn protocol_filters_get_their_own_segment_limits() {
        let router = router_config(10);
        let custom = router.custom_segment.unwrap_or_default();
        let uplinks = &custom[&ecs_protocol::topic::all_uplinks()];
        assert_eq!(uplinks.max_segment_size, UPLINK_SEGMENT.max_segment_size);
        assert_eq!(
            custom[ALL_DOWNLINKS].max_segment_size,
            DOWNLINK_SEGMENT.max_segment_size
        );
    }

    #[test]
    fn segment_filters_match_the_protocol_topics() {
        use ecs_protocol::{DeviceId, topic};
        use rumqttd::protocol::matches;

        let device = DeviceId::parse("abc123").unwrap();
        assert!(matches(&topic::downlink(&device), ALL_DOWNLINKS));
        assert!(matches(&topic::uplink(&device), &topic::all_uplinks()));
        assert!(!matches(&topic::uplink(&device), ALL_DOWNLINKS));
    }
}
