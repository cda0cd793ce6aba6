//! rumqttd's router: the routing core behind our door, with the limits that keep an in-memory
//! broker inside its memory, and the one way the door registers a connection with it.
//!
//! rumqttd's own servers, TLS and listeners are not used (see [`crate::door`] for why); its
//! router is started on its own thread and every connection, device or service, reaches it as
//! a `LinkBuilder` link.
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

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, RouterConfig, SegmentConfig};

/// Largest MQTT packet body a service may send or receive: the system's one packet limit
/// ([`ecs_protocol::MAX_PACKET_BYTES`], which every client sets too; rumqttc's default is
/// 10 KiB). Device packets are held to less (see [`crate::door::acl`]), so whatever a device
/// sends still fits, with the packet id the router adds, within this limit.
pub use ecs_protocol::MAX_PACKET_BYTES;

/// QoS 0 messages the router hands a connection per scheduling round.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;

/// Filters not covered below (anything a service subscribes to beyond the protocol).
const DEFAULT_SEGMENT: SegmentConfig = segment(256 * 1024, 2);
/// The fleet's uplink log: ~72 MiB of payload, about half a minute of 10 000 devices at 10 Hz.
const UPLINK_SEGMENT: SegmentConfig = segment(8 * 1024 * 1024, 8);
/// One device's downlink log: a few hundred acks and notifications.
const DOWNLINK_SEGMENT: SegmentConfig = segment(16 * 1024, 2);

const fn segment(max_segment_size: usize, max_segment_count: usize) -> SegmentConfig {
    SegmentConfig {
        max_segment_size,
        max_segment_count,
    }
}

type Connect = dyn Fn(&str, Option<String>, bool) -> Result<(LinkTx, LinkRx, Notification), LinkFailed>
    + Send
    + Sync;

/// The router refused a link or is gone. (rumqttd's own error is most of a kilobyte: it carries
/// the event that could not be sent; its text is all anyone needs.)
#[derive(Debug, thiserror::Error)]
#[error("router link: {0}")]
pub(crate) struct LinkFailed(pub(crate) String);

impl From<LinkError> for LinkFailed {
    fn from(error: LinkError) -> Self {
        LinkFailed(error.to_string())
    }
}

/// The running router, as the door sees it: a way to register a connection.
///
/// rumqttd's router sender has a type this crate cannot name (its event type is private), so
/// the handle keeps it inside the closure that uses it.
pub(crate) struct RouterHandle {
    connect: Box<Connect>,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterHandle")
    }
}

impl RouterHandle {
    /// Starts the router on its own thread, sized for `max_connections` links. The thread
    /// lives as long as the process: rumqttd's router has no way to stop.
    pub(crate) fn start(max_connections: usize) -> Self {
        let router_tx = rumqttd::Router::new(0, router_config(max_connections)).spawn();
        Self {
            connect: Box::new(move |client_id, tenant, clean_session| {
                LinkBuilder::new(client_id, router_tx.clone())
                    .tenant_id(tenant)
                    .clean_session(clean_session)
                    // rumqttd's documented behaviour without it: a publish to a topic no
                    // subscription has matched yet disconnects the publisher.
                    .dynamic_filters(true)
                    .build()
                    .map_err(LinkFailed::from)
            }),
        }
    }

    /// Registers a connection and returns its two halves and the router's CONNACK. Blocks until
    /// the router answers: call it off the async threads. With a `tenant`, the router confines
    /// the link to topics under `/tenants/<tenant>/` (a second fence behind the door's rules)
    /// and names it `<tenant>.<client_id>`. An error when the router refuses (full, or a client
    /// id with `+ $ # /`).
    pub(crate) fn link(
        &self,
        client_id: &str,
        tenant: Option<String>,
        clean_session: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), LinkFailed> {
        (self.connect)(client_id, tenant, clean_session)
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
            (ecs_protocol::topic::all_downlinks(), DOWNLINK_SEGMENT),
        ])),
        ..RouterConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_filters_get_their_own_segment_limits() {
        let router = router_config(10);
        let custom = router.custom_segment.unwrap_or_default();
        let uplinks = &custom[&ecs_protocol::topic::all_uplinks()];
        assert_eq!(uplinks.max_segment_size, UPLINK_SEGMENT.max_segment_size);
        assert_eq!(
            custom[&ecs_protocol::topic::all_downlinks()].max_segment_size,
            DOWNLINK_SEGMENT.max_segment_size
        );
    }

    #[test]
    fn segment_filters_match_the_protocol_topics() {
        use ecs_protocol::{DeviceId, topic};
        use rumqttd::protocol::matches;

        let device = DeviceId::parse("abc123").unwrap();
        assert!(matches(&topic::downlink(&device), &topic::all_downlinks()));
        assert!(matches(&topic::uplink(&device), &topic::all_uplinks()));
        assert!(!matches(&topic::uplink(&device), &topic::all_downlinks()));
    }
}
