//! MQTT topic names, in one place.
//!
//! Every device topic lives under `/tenants/<device_id>/`: the embedded broker, when it verifies
//! client certificates, takes the certificate's `O` field as a tenant and lets that client publish
//! and subscribe only below `/tenants/<O>/`. Issuing each device a certificate with `O = device_id`
//! therefore confines a device to its own topics. The layout is plain MQTT 3.1.1, so any broker
//! (Mosquitto, EMQX, …) carries it; there, per-device ACLs must be configured on the broker.

use crate::DeviceId;

const PREFIX: &str = "/tenants/";
const UPLINK_SUFFIX: &str = "/ecs/v1/up";
const DOWNLINK_SUFFIX: &str = "/ecs/v1/down";

/// Where a device publishes [`crate::Uplink`] messages.
pub fn uplink(device: &DeviceId) -> String {
    format!("{PREFIX}{device}{UPLINK_SUFFIX}")
}

/// Where the cloud publishes [`crate::Downlink`] messages for a device.
pub fn downlink(device: &DeviceId) -> String {
    format!("{PREFIX}{device}{DOWNLINK_SUFFIX}")
}

/// Filter matching every device's downlink topic.
pub fn all_downlinks() -> String {
    format!("{PREFIX}+{DOWNLINK_SUFFIX}")
}

/// Where services publish [`crate::Control`] messages for the broker (revoked devices). Outside
/// `/tenants/`, so no device topic can ever match it.
pub fn revocations() -> String {
    "/ecs/v1/control/revocations".to_owned()
}

/// Filter matching every device's uplink topic.
pub fn all_uplinks() -> String {
    format!("{PREFIX}+{UPLINK_SUFFIX}")
}

/// Shared subscription to every device's uplink: replicas in the same `group` split the messages
/// between them instead of each receiving all of them.
pub fn shared_uplinks(group: &str) -> String {
    format!("$share/{group}/{}", all_uplinks())
}

/// The device an uplink topic belongs to, or `None` when the topic is not an uplink topic.
pub fn device_of_uplink(topic: &str) -> Option<DeviceId> {
    let id = topic.strip_prefix(PREFIX)?.strip_suffix(UPLINK_SUFFIX)?;
    DeviceId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_topic_round_trips_to_its_device() {
        let device = DeviceId::parse("abc123").unwrap();
        assert_eq!(uplink(&device), "/tenants/abc123/ecs/v1/up");
        assert_eq!(device_of_uplink(&uplink(&device)), Some(device));
    }

    #[test]
    fn foreign_or_malformed_topics_have_no_device() {
        assert_eq!(device_of_uplink("/tenants/abc/ecs/v1/down"), None);
        assert_eq!(device_of_uplink("/tenants/a+b/ecs/v1/up"), None);
        assert_eq!(device_of_uplink("/tenants//ecs/v1/up"), None);
        assert_eq!(device_of_uplink("ecs/v1/up"), None);
    }

    #[test]
    fn shared_subscription_names_group_and_filter() {
        assert_eq!(shared_uplinks("cloud"), "$share/cloud//tenants/+/ecs/v1/up");
    }
}
