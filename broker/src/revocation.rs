//! Revoked devices: the list the cloud sends, and what the broker does with it.
//!
//! The cloud publishes [`ecs_protocol::Control::RevocationsV1`] on
//! [`ecs_protocol::topic::revocations`] through the service listener: new revocations at once,
//! and the whole list now and then, because a restarted broker remembers nothing. Revocation is
//! permanent, so the broker keeps the union of what it receives. A device on the list is refused
//! at the TLS handshake ([`crate::tls`]) and its live connections are closed at once.
//!
//! Only services can publish there: a device may publish on nothing but its own uplink topic.
//! Until the cloud has sent the list after a broker restart, a revoked device can connect; the
//! cloud's ingest refuses whatever it sends, so the gap costs no data, only a connection.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ecs_protocol::{Control, DeviceId, decode_control};
use rumqttd::Notification;
use rumqttd::local::LinkError;
use tokio_util::sync::CancellationToken;

use crate::door::limits::DeviceRegistry;
use crate::metrics::BrokerMetrics;
use crate::router::{LinkFailed, RouterHandle};

/// The devices the broker refuses. Cheap to clone; every clone sees the same list.
#[derive(Debug, Clone, Default)]
pub struct Denylist(Arc<RwLock<HashSet<DeviceId>>>);

impl Denylist {
    pub fn contains(&self, device: &DeviceId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(device)
    }

    /// Adds `devices`; returns the ones that were not on the list yet.
    pub fn extend(&self, devices: impl IntoIterator<Item = DeviceId>) -> Vec<DeviceId> {
        let mut list = self.0.write().unwrap_or_else(|p| p.into_inner());
        devices
            .into_iter()
            .filter(|d| list.insert(d.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The router client id of the broker's own subscription to the revocation topic.
const CLIENT_ID: &str = "ecs-broker.revocations";
/// How often the blocking receive looks up from the router to see whether to stop.
const POLL: Duration = Duration::from_millis(200);

/// Subscribes to the revocation topic through a link of the broker's own and applies every list
/// that arrives, until `shutdown`. Blocks: run it on a thread of its own.
pub(crate) fn follow(
    router: &RouterHandle,
    denylist: &Denylist,
    devices: &DeviceRegistry,
    metrics: &BrokerMetrics,
    shutdown: &CancellationToken,
) -> Result<(), LinkFailed> {
    let (mut link_tx, mut link_rx, _connack) = router.link(CLIENT_ID, None, true)?;
    link_tx.subscribe(ecs_protocol::topic::revocations())?;
    tracing::info!(topic = %ecs_protocol::topic::revocations(), "following revocations");
    while !shutdown.is_cancelled() {
        match link_rx.recv_deadline(Instant::now() + POLL) {
            Ok(Some(Notification::Forward(forward))) => {
                apply(&forward.publish.payload, denylist, devices, metrics);
            }
            Ok(Some(Notification::Unschedule)) => link_rx.ready()?,
            Ok(_) | Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {}
            // The router let go of the link, or is gone (a panic on its thread): the broker
            // can no longer route, so this ends, and with it the broker (a supervisor restarts
            // it) rather than running on deaf.
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies one control message; a message that does not decode is logged and skipped.
pub(crate) fn apply(
    payload: &[u8],
    denylist: &Denylist,
    devices: &DeviceRegistry,
    metrics: &BrokerMetrics,
) {
    let ids = match decode_control(payload) {
        Ok(Control::RevocationsV1(revocations)) => revocations.device_ids,
        Err(error) => {
            tracing::warn!(%error, bytes = payload.len(), "unreadable revocation message ignored");
            return;
        }
    };
    let new = denylist.extend(ids);
    metrics.revoked_devices(denylist.len());
    for device in &new {
        let closed = devices.close_device(device);
        metrics.revocation_disconnects(closed);
        tracing::info!(device_id = %device, connections_closed = closed, "device revoked");
    }
}
