//! What a connection may do once inside: the exact rules for devices, and none beyond the
//! protocol for services.
//!
//! A device may publish only on its own uplink topic and subscribe only to its own downlink
//! topic. rumqttd's tenant prefix would also let it publish on its own downlink (forging acks
//! and notifications for itself) and subscribe to its own uplink; these rules do not. Anything
//! else closes the connection and is counted.

use rumqttd::protocol::Packet;

use crate::metrics::Violation;

/// Largest packet a device may send: one protocol message, its topic and headers. The router
/// adds a 2-byte packet id when it forwards at QoS 1, which the service limit
/// ([`crate::MAX_PACKET_BYTES`]) has ample room for.
pub(crate) const DEVICE_MAX_PACKET_BYTES: usize = ecs_protocol::MAX_MESSAGE_BYTES + 256;
const _: () = assert!(DEVICE_MAX_PACKET_BYTES + 2 < crate::MAX_PACKET_BYTES);

/// Largest CONNECT packet either listener reads: a client id, a username and a password.
pub(crate) const CONNECT_MAX_PACKET_BYTES: usize = 2 * 1024;

/// Subscription filters one SUBSCRIBE may carry.
const MAX_FILTERS_PER_SUBSCRIBE: usize = 8;

/// The QoS of a PUBLISH, from the first byte of its fixed header (rumqttd keeps the field
/// private once parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishQos(pub(crate) u8);

impl PublishQos {
    /// Reads the QoS bits when `first_byte` starts a PUBLISH.
    pub(crate) fn of_header(first_byte: u8) -> Option<Self> {
        (first_byte >> 4 == 3).then_some(Self((first_byte >> 1) & 0b11))
    }
}

/// Longest topic name or filter any client may use. Ours are a few dozen bytes.
const MAX_TOPIC_BYTES: usize = 512;

/// Whether rumqttd's router can be trusted with `topic` as a name or filter: not empty, not
/// too long, ASCII. rumqttd 0.20's matcher slices the first *byte* of a topic as a string
/// (`topic[..1]`), which panics on a multi-byte first character and takes the router, and every
/// connection with it, down; our protocol's topics are ASCII, so the rule costs nothing.
fn routable(topic: &[u8]) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES && topic.is_ascii()
}

/// The rules of one connection.
#[derive(Debug, Clone)]
pub(crate) enum Policy {
    /// A device, confined to its two topics.
    Device { uplink: String, downlink: String },
    /// A service: any routable topic. A persistent session (`clean_session = false`) may not
    /// join a shared subscription: rumqttd 0.20's router panics when such a session leaves with
    /// a message unacknowledged (it removes the group, then expects it).
    Service { persistent: bool },
}

impl Policy {
    pub(crate) fn device(device: &ecs_protocol::DeviceId) -> Self {
        Policy::Device {
            uplink: ecs_protocol::topic::uplink(device),
            downlink: ecs_protocol::topic::downlink(device),
        }
    }

    pub(crate) fn max_packet_bytes(&self) -> usize {
        match self {
            Policy::Device { .. } => DEVICE_MAX_PACKET_BYTES,
            Policy::Service { .. } => crate::MAX_PACKET_BYTES,
        }
    }

    /// Whether `packet` (a PUBLISH with QoS `qos`) may pass to the router.
    pub(crate) fn check(&self, packet: &Packet, qos: Option<PublishQos>) -> Result<(), Violation> {
        match (self, packet) {
            (_, Packet::Connect(..)) => Err(Violation::Packet),
            // Packets only a server sends.
            (
                _,
                Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(..),
            ) => Err(Violation::Packet),
            (Policy::Service { .. }, Packet::Publish(publish, _)) => {
                if routable(&publish.topic) {
                    Ok(())
                } else {
                    Err(Violation::PublishTopic)
                }
            }
            (Policy::Service { persistent }, Packet::Subscribe(subscribe, _)) => {
                let refused = |f: &rumqttd::protocol::Filter| {
                    !routable(f.path.as_bytes()) || (*persistent && f.path.starts_with("$share/"))
                };
                if subscribe.filters.is_empty() || subscribe.filters.iter().any(refused) {
                    Err(Violation::SubscribeFilter)
                } else {
                    Ok(())
                }
            }
            (Policy::Service { .. }, Packet::Unsubscribe(unsubscribe, _)) => {
                if unsubscribe.filters.iter().all(|f| routable(f.as_bytes())) {
                    Ok(())
                } else {
                    Err(Violation::SubscribeFilter)
                }
            }
            (Policy::Service { .. }, _) => Ok(()),
            (Policy::Device { uplink, .. }, Packet::Publish(publish, _)) => {
                if publish.topic.as_ref() != uplink.as_bytes() {
                    Err(Violation::PublishTopic)
                } else if qos.is_none_or(|q| q.0 > 1) {
                    Err(Violation::Qos)
                } else if publish.retain {
                    Err(Violation::Retain)
                } else if publish.payload.len() > ecs_protocol::MAX_MESSAGE_BYTES {
                    Err(Violation::PayloadSize)
                } else {
                    Ok(())
                }
            }
            (Policy::Device { downlink, .. }, Packet::Subscribe(subscribe, _)) => {
                if subscribe.filters.is_empty()
                    || subscribe.filters.len() > MAX_FILTERS_PER_SUBSCRIBE
                    || subscribe.filters.iter().any(|f| &f.path != downlink)
                {
                    Err(Violation::SubscribeFilter)
                } else if subscribe.filters.iter().any(|f| f.qos as u8 > 1) {
                    Err(Violation::Qos)
                } else {
                    Ok(())
                }
            }
            (Policy::Device { downlink, .. }, Packet::Unsubscribe(unsubscribe, _)) => {
                if unsubscribe.filters.iter().any(|f| f != downlink) {
                    Err(Violation::SubscribeFilter)
                } else {
                    Ok(())
                }
            }
            (
                Policy::Device { .. },
                Packet::PingReq(_) | Packet::PubAck(..) | Packet::Disconnect(..),
            ) => Ok(()),
            // QoS 2 flow packets: the protocol never uses QoS 2.
            (Policy::Device { .. }, _) => Err(Violation::Packet),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ecs_protocol::{DeviceId, topic};
    use rumqttd::protocol::{Protocol, v4::V4};

    /// Parses what a real MQTT client (rumqttc) would send, so the rules are checked against
    /// the packets as the door sees them.
    fn wire(packet: rumqttc::mqttbytes::v4::Packet) -> (Packet, Option<PublishQos>) {
        let mut bytes = BytesMut::new();
        packet.write(&mut bytes, usize::MAX).unwrap();
        let qos = PublishQos::of_header(bytes[0]);
        (V4.read_mut(&mut bytes, usize::MAX).unwrap(), qos)
    }

    fn publish(
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        len: usize,
    ) -> (Packet, Option<PublishQos>) {
        let mut p = rumqttc::mqttbytes::v4::Publish::new(topic, qos, vec![0u8; len]);
        p.retain = retain;
        p.pkid = u16::from(qos != rumqttc::QoS::AtMostOnce);
        wire(rumqttc::mqttbytes::v4::Packet::Publish(p))
    }

    fn subscribe(filters: &[&str], qos: rumqttc::QoS) -> (Packet, Option<PublishQos>) {
        let filters = filters
            .iter()
            .map(|f| rumqttc::mqttbytes::v4::SubscribeFilter::new((*f).to_owned(), qos))
            .collect::<Vec<_>>();
        let mut s = rumqttc::mqttbytes::v4::Subscribe::new_many(filters);
        s.pkid = 1;
        wire(rumqttc::mqttbytes::v4::Packet::Subscribe(s))
    }

    #[test]
    fn a_device_publishes_only_on_its_uplink() {
        let (me, other) = (
            DeviceId::parse("me").unwrap(),
            DeviceId::parse("other").unwrap(),
        );
        let policy = Policy::device(&me);
        let check = |(packet, qos): (Packet, Option<PublishQos>)| policy.check(&packet, qos);
        use rumqttc::QoS::*;
        assert_eq!(
            check(publish(&topic::uplink(&me), AtLeastOnce, false, 10)),
            Ok(())
        );
        assert_eq!(
            check(publish(&topic::uplink(&me), AtMostOnce, false, 10)),
            Ok(())
        );
        assert_eq!(
            check(publish(&topic::downlink(&me), AtLeastOnce, false, 10)),
            Err(Violation::PublishTopic)
        );
        assert_eq!(
            check(publish(&topic::uplink(&other), AtLeastOnce, false, 10)),
            Err(Violation::PublishTopic)
        );
        assert_eq!(
            check(publish(&topic::revocations(), AtLeastOnce, false, 10)),
            Err(Violation::PublishTopic)
        );
        assert_eq!(
            check(publish(&topic::uplink(&me), ExactlyOnce, false, 10)),
            Err(Violation::Qos)
        );
        assert_eq!(
            check(publish(&topic::uplink(&me), AtLeastOnce, true, 10)),
            Err(Violation::Retain)
        );
        let limit = ecs_protocol::MAX_MESSAGE_BYTES;
        assert_eq!(
            check(publish(&topic::uplink(&me), AtLeastOnce, false, limit)),
            Ok(())
        );
        assert_eq!(
            check(publish(&topic::uplink(&me), AtLeastOnce, false, limit + 1)),
            Err(Violation::PayloadSize)
        );
    }

    #[test]
    fn a_device_subscribes_only_to_its_downlink() {
        let (me, other) = (
            DeviceId::parse("me").unwrap(),
            DeviceId::parse("other").unwrap(),
        );
        let policy = Policy::device(&me);
        let check = |(packet, qos): (Packet, Option<PublishQos>)| policy.check(&packet, qos);
        use rumqttc::QoS::*;
        assert_eq!(
            check(subscribe(&[&topic::downlink(&me)], AtLeastOnce)),
            Ok(())
        );
        for filter in [
            "#",
            "/tenants/+/ecs/v1/down",
            "/tenants/me/#",
            &topic::uplink(&me),
            &topic::downlink(&other),
        ] {
            assert_eq!(
                check(subscribe(&[filter], AtLeastOnce)),
                Err(Violation::SubscribeFilter),
                "{filter}"
            );
        }
        assert_eq!(
            check(subscribe(&[&topic::downlink(&me), "#"], AtLeastOnce)),
            Err(Violation::SubscribeFilter)
        );
        assert_eq!(
            check(subscribe(&[&topic::downlink(&me)], ExactlyOnce)),
            Err(Violation::Qos)
        );
    }

    #[test]
    fn services_may_use_any_topic_but_not_speak_as_a_server() {
        use rumqttc::QoS::*;
        let policy = Policy::Service { persistent: false };
        let (packet, qos) = publish("/anything/at/all", ExactlyOnce, true, 10);
        assert_eq!(policy.check(&packet, qos), Ok(()));
        let (packet, qos) = subscribe(&["#"], AtLeastOnce);
        assert_eq!(policy.check(&packet, qos), Ok(()));
        let (packet, qos) = subscribe(&["$share/g/#"], AtLeastOnce);
        assert_eq!(policy.check(&packet, qos), Ok(()));
        let (packet, qos) = wire(rumqttc::mqttbytes::v4::Packet::PingResp);
        assert_eq!(policy.check(&packet, qos), Err(Violation::Packet));
    }

    #[test]
    fn topics_rumqttd_cannot_route_safely_are_refused() {
        use rumqttc::QoS::*;
        let policy = Policy::Service { persistent: false };
        for topic in ["é/x", "\u{1F600}", &"a".repeat(MAX_TOPIC_BYTES + 1)] {
            let (packet, qos) = publish(topic, AtLeastOnce, false, 1);
            assert_eq!(
                policy.check(&packet, qos),
                Err(Violation::PublishTopic),
                "{topic}"
            );
            let (packet, qos) = subscribe(&[topic], AtLeastOnce);
            assert_eq!(
                policy.check(&packet, qos),
                Err(Violation::SubscribeFilter),
                "{topic}"
            );
        }
        let persistent = Policy::Service { persistent: true };
        let (packet, qos) = subscribe(&["$share/g/#"], AtLeastOnce);
        assert_eq!(
            persistent.check(&packet, qos),
            Err(Violation::SubscribeFilter)
        );
        let (packet, qos) = subscribe(&["/plain/#"], AtLeastOnce);
        assert_eq!(persistent.check(&packet, qos), Ok(()));
    }
}
