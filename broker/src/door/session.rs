//! One client's life after its transport is up: CONNECT checked by our rules, the link to the
//! router, and the pump between the two until either side ends.
//!
//! Two rules keep rumqttd's router (a single thread every connection depends on) safe from what
//! a client does: the router sees a client id only once at a time (a second connection with the
//! same id first ends the old session here, so the router never drops a link behind a live
//! pump), and nothing reaches it that our rules ([`super::acl`]) have not passed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ecs_protocol::DeviceId;
use rumqttd::Notification;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Door;
use super::acl::Policy;
use super::limits::{AddressSlot, Registration, TokenBucket};
use super::wire::{Wire, WireError};
use crate::metrics::{Listener, Refused, SessionGuard, Violation};

/// Longest keep-alive a client may ask for; zero (no keep-alive) is refused too, since a dead
/// connection would then be held for ever.
pub(crate) const MAX_KEEP_ALIVE_SECS: u16 = 3_600;
/// Longest client id a service may use (a device's is its device id).
const MAX_CLIENT_ID_CHARS: usize = 128;
/// Subscription filters one connection may hold: rumqttd matches every publish to a new topic
/// against every filter, so filters without bound would let one client slow the router for all.
const MAX_FILTERS: usize = 64;
/// Notifications from the router written per round, so one busy link cannot starve its own
/// reading for long.
const MAX_NOTIFICATIONS_PER_ROUND: usize = 512;
/// Packets read per round before they go to the router.
const MAX_PACKETS_PER_ROUND: usize = 100;
/// Packets of one client the router may have waiting before the door stops reading from that
/// client. rumqttd's per-link queue is unbounded: a client that sends faster than the router's
/// one thread consumes (a PINGREQ flood on a busy machine) would otherwise grow it without
/// bound. Past this, the client's TCP window fills and it is the one that waits.
const MAX_ROUTER_BACKLOG: usize = 4 * MAX_PACKETS_PER_ROUND;
/// How often a door waiting on the router's backlog looks again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(2);
/// How long a new session waits for the old session of the same client id to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Who is at the other end, as far as the transport told us.
pub(crate) enum Peer {
    /// A device, its connection already counted against its caps.
    Device(DeviceId, Registration),
    /// A service, holding a login slot until its login is done.
    Service { login: Option<AddressSlot> },
}

/// Runs one connection to its end. Every way it ends is logged once, with the peer address and
/// the client once known.
pub(crate) async fn run<S>(door: Arc<Door>, stream: S, addr: SocketAddr, mut peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let listener = match peer {
        Peer::Device(..) => Listener::Device,
        Peer::Service { .. } => Listener::Service,
    };
    // A service's connection slot, taken once it has logged in.
    let mut _service_slot = None;
    let mut wire = Wire::new(
        stream,
        super::acl::CONNECT_MAX_PACKET_BYTES,
        door.write_timeout,
    );
    let refuse = |reason, client: Option<String>, code| Refusal {
        listener,
        addr,
        client,
        reason,
        code,
    };
    let first = tokio::select! {
        read = tokio::time::timeout(door.connect_timeout, wire.read_packet()) => read,
        () = door.shutdown.cancelled() => return,
    };
    let (connect, will, login) = match first {
        Ok(Ok((Packet::Connect(connect, _, will, _, login), _))) => (connect, will, login),
        Ok(Ok(_)) | Ok(Err(WireError::Malformed(_))) => {
            return refuse(Refused::NotConnect, None, None)
                .send(&door, wire)
                .await;
        }
        Ok(Err(error)) => {
            tracing::debug!(peer = %addr, listener = listener.as_str(), %error, "gone before CONNECT");
            return;
        }
        Err(_) => {
            return refuse(Refused::ConnectTimeout, None, None)
                .send(&door, wire)
                .await;
        }
    };
    let client = connect.client_id.clone();
    let named = |reason, code| refuse(reason, Some(client.clone()), Some(code));

    // Our rules for CONNECT, before anything reaches rumqttd.
    let (policy, tenant) = match &mut peer {
        Peer::Device(device, _) => {
            if client != device.as_str() {
                let refusal = named(
                    Refused::ClientId,
                    ConnectReturnCode::ClientIdentifierNotValid,
                );
                return refusal.send(&door, wire).await;
            }
            (Policy::device(device), Some(device.to_string()))
        }
        Peer::Service { login: login_slot } => {
            // No empty id (rumqttd would keep a session record for ever for each one it
            // assigned), and no `.`: the router names a device's link `<tenant>.<client id>`
            // and the broker's own links `ecs-broker.<name>`, which a service may not take over.
            if client.is_empty()
                || client.chars().count() > MAX_CLIENT_ID_CHARS
                || !client.is_ascii()
                || client.contains(['+', '$', '#', '/', '.'])
            {
                let refusal = named(
                    Refused::ClientId,
                    ConnectReturnCode::ClientIdentifierNotValid,
                );
                return refusal.send(&door, wire).await;
            }
            if !door.check_login(login.as_ref()) {
                // A wrong password is answered only after a delay, so guessing is slow even
                // over many connections (which are capped per address before CONNECT).
                tokio::time::sleep(super::FAILED_LOGIN_DELAY).await;
                let refusal = named(
                    Refused::NotAuthorized,
                    ConnectReturnCode::BadUserNamePassword,
                );
                return refusal.send(&door, wire).await;
            }
            let Some(slot) = door.service_slot() else {
                let refusal = named(
                    Refused::ServiceConnectionCap,
                    ConnectReturnCode::ServiceUnavailable,
                );
                return refusal.send(&door, wire).await;
            };
            _service_slot = Some(slot);
            drop(login_slot.take());
            let persistent = !connect.clean_session;
            (Policy::Service { persistent }, None)
        }
    };
    if connect.keep_alive == 0 || connect.keep_alive > MAX_KEEP_ALIVE_SECS {
        let refusal = named(Refused::KeepAlive, ConnectReturnCode::ServiceUnavailable);
        return refusal.send(&door, wire).await;
    }
    if will.is_some() {
        let refusal = named(Refused::LastWill, ConnectReturnCode::NotAuthorized);
        return refusal.send(&door, wire).await;
    }

    // One session per router client id: end the old one before the router hears of the new.
    let router_id = match &tenant {
        Some(tenant) => format!("{tenant}.{client}"),
        None => client.clone(),
    };
    let mut claim = door.claims.claim(&router_id);
    if let Some(previous) = claim.previous()
        && !previous.end(TAKEOVER_WAIT).await
    {
        // Registering now would have the router drop a link under a live pump: refuse, the
        // client retries (by then the old session has ended).
        tracing::warn!(peer = %addr, client, "the previous session of this client id did not end in time");
        let refusal = named(
            Refused::RouterRefused,
            ConnectReturnCode::ServiceUnavailable,
        );
        return refusal.send(&door, wire).await;
    }

    // The router's registration blocks until the router thread answers; a bounded number at
    // a time, so a reconnect storm cannot take every blocking thread.
    let link = {
        let Ok(_permit) = door.link_builds.acquire().await else {
            return;
        };
        let door = Arc::clone(&door);
        let (client, clean) = (client.clone(), connect.clean_session);
        tokio::task::spawn_blocking(move || door.router.link(&client, tenant, clean)).await
    };
    let (link_tx, link_rx, connack) = match link {
        Ok(Ok(link)) => link,
        Ok(Err(error)) => {
            tracing::warn!(peer = %addr, client, %error, "the router refused the connection");
            let refusal = named(
                Refused::RouterRefused,
                ConnectReturnCode::ServiceUnavailable,
            );
            return refusal.send(&door, wire).await;
        }
        Err(_) => return,
    };
    // Taken over while the router was registering us: leave at once.
    if claim.stop().is_cancelled() {
        disconnect_link(link_tx).await;
        return;
    }
    let session = door.metrics.session(listener, &client, addr);
    let connack: Option<Packet> = connack.into();
    if let Some(connack) = connack
        && wire.send(connack).await.is_err()
    {
        disconnect_link(link_tx).await;
        return;
    }
    wire.set_max_packet(policy.max_packet_bytes());
    tracing::info!(peer = %addr, listener = listener.as_str(), client, keep_alive = connect.keep_alive, "connected");

    let (revoked, is_device) = match &peer {
        Peer::Device(_, registration) => (registration.closed().clone(), true),
        Peer::Service { .. } => (CancellationToken::new(), false),
    };
    let pump = Pump {
        door: Arc::clone(&door),
        listener,
        policy,
        session,
        subscriptions: HashSet::new(),
        keep_alive: keep_alive_deadline(&connect),
        device_rate: is_device.then(|| DeviceRate::new(&door)),
        revoked,
        taken_over: claim.stop().clone(),
    };
    let end = pump.run(&mut wire, link_tx, link_rx).await;
    // The router has been told; a newer session of this id may register now.
    drop(claim);
    // Only now does the device get its connection slot back.
    drop(peer);
    match &end {
        End::Violation(violation) => {
            door.metrics.violation(*violation);
            tracing::warn!(peer = %addr, client, violation = violation.as_str(), "closed: against the access rules");
        }
        End::ClientGone(error) => {
            tracing::info!(peer = %addr, client, reason = end.as_str(), %error, "disconnected")
        }
        _ => tracing::info!(peer = %addr, client, reason = end.as_str(), "disconnected"),
    }
    wire.shutdown().await;
}

/// A refused CONNECT: counted, logged, answered with a CONNACK when one can say why.
struct Refusal {
    listener: Listener,
    addr: SocketAddr,
    client: Option<String>,
    reason: Refused,
    code: Option<ConnectReturnCode>,
}

impl Refusal {
    async fn send<S: AsyncRead + AsyncWrite + Unpin>(self, door: &Door, mut wire: Wire<S>) {
        door.metrics.refused(self.listener, self.reason);
        tracing::warn!(peer = %self.addr, listener = self.listener.as_str(), client = self.client,
            reason = self.reason.as_str(), "connection refused");
        if let Some(code) = self.code {
            let ack = ConnAck {
                session_present: false,
                code,
            };
            let _ = wire.send(Packet::ConnAck(ack, None)).await;
        }
        wire.shutdown().await;
    }
}

/// MQTT: the server closes a connection that was silent for one and a half keep-alives.
fn keep_alive_deadline(connect: &Connect) -> Duration {
    Duration::from_secs(u64::from(connect.keep_alive)).mul_f64(1.5)
}

/// Tells the router this connection is gone. A DISCONNECT packet rather than rumqttd's
/// private disconnect event; if the router already dropped the link, nobody reads it.
async fn disconnect_link(mut link_tx: LinkTx) {
    let disconnect = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    };
    let _ = link_tx.send(Packet::Disconnect(disconnect, None)).await;
}

/// A device connection's packet and byte budgets.
struct DeviceRate {
    packets: TokenBucket,
    bytes: TokenBucket,
}

impl DeviceRate {
    fn new(door: &Door) -> Self {
        let now = std::time::Instant::now();
        let (packets, bytes) = (door.device_message_rate, door.device_byte_rate);
        Self {
            packets: TokenBucket::new(packets, 2.0 * packets, now),
            bytes: TokenBucket::new(bytes, 2.0 * bytes, now),
        }
    }

    /// Charges one packet carrying `bytes` of payload; the pause before reading more.
    fn charge(&mut self, bytes: usize) -> Duration {
        let now = std::time::Instant::now();
        let a = self.packets.take_with_debt(1.0, now);
        let b = self.bytes.take_with_debt(bytes as f64, now);
        a.max(b)
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    ClientDisconnected,
    ClientGone(WireError),
    KeepAliveExpired,
    Violation(Violation),
    /// The router dropped the link (or is gone).
    RouterDropped,
    /// A newer connection with the same client id.
    TakenOver,
    Revoked,
    Shutdown,
}

impl End {
    fn as_str(&self) -> &'static str {
        match self {
            End::ClientDisconnected => "client_disconnected",
            End::ClientGone(_) => "connection_lost",
            End::KeepAliveExpired => "keep_alive_expired",
            End::Violation(_) => "acl_violation",
            End::RouterDropped => "router_dropped",
            End::TakenOver => "taken_over",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
        }
    }
}

/// What one round of reading did.
struct Forwarded {
    /// How long to pause reading (a device over its budget).
    pause: Duration,
    /// Whether complete packets may still wait in the buffer.
    more: bool,
}

struct Pump {
    door: Arc<Door>,
    listener: Listener,
    policy: Policy,
    session: SessionGuard,
    subscriptions: HashSet<String>,
    keep_alive: Duration,
    device_rate: Option<DeviceRate>,
    /// Cancelled when the device is revoked.
    revoked: CancellationToken,
    /// Cancelled when a newer session claims the client id.
    taken_over: CancellationToken,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.door
            .metrics
            .subscriptions(self.listener, -(self.subscriptions.len() as i64));
    }
}

impl Pump {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        wire: &mut Wire<S>,
        mut link_tx: LinkTx,
        mut link_rx: LinkRx,
    ) -> End {
        let (revoked, taken_over) = (self.revoked.clone(), self.taken_over.clone());
        let mut last_heard = Instant::now();
        // Reading pauses until then when the device has spent its budget.
        let mut paused_until: Option<Instant> = None;
        // Complete packets may wait in the buffer: handle them before reading more bytes, so
        // the buffer never grows past one partial packet and one read.
        let mut more = false;
        let end = loop {
            let silence_deadline = last_heard + self.keep_alive;
            let backlogged = link_tx.buffer().len() >= MAX_ROUTER_BACKLOG;
            let paused = backlogged || paused_until.is_some_and(|t| t > Instant::now());
            // Not biased: a link the router keeps busy must still get its client's packets read,
            // and a client that keeps sending must still get its acks.
            let round = tokio::select! {
                () = self.door.shutdown.cancelled() => break End::Shutdown,
                () = revoked.cancelled() => break End::Revoked,
                () = taken_over.cancelled() => break End::TakenOver,
                notification = link_rx.next() => {
                    if let Err(end) = self.deliver(wire, &mut link_rx, notification).await {
                        break end;
                    }
                    continue;
                }
                () = std::future::ready(()), if more && !paused => None,
                filled = wire.fill(), if !more && !paused => match filled {
                    Err(error) => break End::ClientGone(error),
                    Ok(_) => {
                        last_heard = Instant::now();
                        None
                    }
                },
                () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)),
                    if paused && !backlogged => None,
                () = tokio::time::sleep(BACKLOG_RECHECK), if backlogged => {
                    // Only looking again: nothing is passed on while the router is behind, and
                    // a client we are not reading from is not silent (its keep-alive waits).
                    last_heard = Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(silence_deadline) => break End::KeepAliveExpired,
            };
            let _: Option<()> = round;
            match self.forward(wire, &mut link_tx).await {
                Ok(round) => {
                    more = round.more;
                    // A rate pause still running is kept: a round that charged nothing new
                    // does not cut it short.
                    let pause =
                        (round.pause > Duration::ZERO).then(|| Instant::now() + round.pause);
                    paused_until = match (paused_until, pause) {
                        (Some(old), Some(new)) => Some(old.max(new)),
                        (Some(old), None) if old > Instant::now() => Some(old),
                        (_, new) => new,
                    };
                }
                Err(end) => break end,
            }
        };
        // The router already knows when the client's DISCONNECT passed, or when it dropped
        // the link itself.
        if !matches!(end, End::RouterDropped | End::ClientDisconnected) {
            disconnect_link(link_tx).await;
        }
        end
    }

    /// Passes the packets read so far to the router, after our rules.
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        link_tx: &mut LinkTx,
    ) -> Result<Forwarded, End> {
        let mut batch = Vec::new();
        let mut pause = Duration::ZERO;
        let mut client_disconnected = false;
        let mut answered_locally = false;
        let mut more = false;
        loop {
            if batch.len() >= MAX_PACKETS_PER_ROUND || pause > Duration::ZERO {
                more = true;
                break;
            }
            let (packet, qos) = match wire.next_buffered() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(_) => return Err(End::Violation(Violation::Malformed)),
            };
            self.policy.check(&packet, qos).map_err(End::Violation)?;
            let mut payload = 0;
            let packet = match packet {
                Packet::Publish(publish, properties) => {
                    payload = publish.payload.len();
                    self.door
                        .metrics
                        .message_in(self.listener, &self.session.traffic, payload);
                    Packet::Publish(publish, properties)
                }
                Packet::Subscribe(subscribe, properties) => {
                    let fresh: Vec<&str> = subscribe
                        .filters
                        .iter()
                        .map(|f| f.path.as_str())
                        .filter(|f| !self.subscriptions.contains(*f))
                        .collect();
                    if self.subscriptions.len() + fresh.len() > MAX_FILTERS {
                        return Err(End::Violation(Violation::SubscribeFilter));
                    }
                    for filter in &subscribe.filters {
                        if self.subscriptions.insert(filter.path.clone()) {
                            self.door.metrics.subscriptions(self.listener, 1);
                        }
                    }
                    Packet::Subscribe(subscribe, properties)
                }
                Packet::Unsubscribe(mut unsubscribe, properties) => {
                    // rumqttd answers only an UNSUBSCRIBE that removed something; MQTT wants an
                    // UNSUBACK for every one. Filters this client does not hold are ours to
                    // answer; the rest go to the router, which answers them.
                    unsubscribe.filters.retain(|f| self.subscriptions.remove(f));
                    if unsubscribe.filters.is_empty() {
                        let ack = UnsubAck {
                            pkid: unsubscribe.pkid,
                            reasons: Vec::new(),
                        };
                        wire.queue(Packet::UnsubAck(ack, None))
                            .map_err(End::ClientGone)?;
                        answered_locally = true;
                        self.charge(payload, &mut pause);
                        continue;
                    }
                    let removed = unsubscribe.filters.len() as i64;
                    self.door.metrics.subscriptions(self.listener, -removed);
                    Packet::Unsubscribe(unsubscribe, properties)
                }
                Packet::Disconnect(disconnect, properties) => {
                    client_disconnected = true;
                    Packet::Disconnect(disconnect, properties)
                }
                other => other,
            };
            self.charge(payload, &mut pause);
            batch.push(packet);
            if client_disconnected {
                break;
            }
        }
        if let Some(last) = batch.pop() {
            link_tx.buffer().extend(batch);
            // One wake-up of the router for the whole batch.
            link_tx.send(last).await.map_err(|_| End::RouterDropped)?;
        }
        if answered_locally {
            self.flush(wire).await?;
        }
        if client_disconnected {
            return Err(End::ClientDisconnected);
        }
        Ok(Forwarded { pause, more })
    }

    /// Writes what is queued, unless the session must end first: a client that stopped reading
    /// holds its flush for up to the write timeout, and a takeover, a revocation or a shutdown
    /// must not wait for that.
    async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        wire: &mut Wire<S>,
    ) -> Result<(), End> {
        tokio::select! {
            flushed = wire.flush() => flushed.map_err(End::ClientGone),
            () = self.taken_over.cancelled() => Err(End::TakenOver),
            () = self.revoked.cancelled() => Err(End::Revoked),
            () = self.door.shutdown.cancelled() => Err(End::Shutdown),
        }
    }

    /// Every packet a device sends costs from its budget (a flood of PINGREQs too), publishes
    /// also their payload bytes.
    fn charge(&mut self, payload: usize, pause: &mut Duration) {
        if let Some(rate) = &mut self.device_rate {
            *pause = (*pause).max(rate.charge(payload));
        }
    }

    /// Writes what the router has for this client: the notification that woke us and whatever
    /// else is already waiting, in one write per round.
    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        link_rx: &mut LinkRx,
        first: Result<Option<Notification>, LinkError>,
    ) -> Result<(), End> {
        // The router paused this link (its window was full) and waits for a wake.
        let mut unscheduled = false;
        let mut first = Some(first);
        loop {
            let mut next = first.take();
            let mut handled = 0;
            while let Some(notification) = next.take() {
                let notification = match notification {
                    Ok(Some(notification)) => notification,
                    Ok(None) => break,
                    Err(_) => return Err(End::RouterDropped),
                };
                handled += 1;
                match notification {
                    Notification::Unschedule => unscheduled = true,
                    // MQTT 3.1.1 has no server DISCONNECT: the router wants the link closed.
                    Notification::Disconnect(..) => return Err(End::RouterDropped),
                    notification => {
                        if let Notification::Forward(forward) = &notification {
                            let bytes = forward.publish.payload.len();
                            self.door.metrics.message_out(
                                self.listener,
                                &self.session.traffic,
                                bytes,
                            );
                        }
                        let packet: Option<Packet> = notification.into();
                        if let Some(packet) = packet {
                            wire.queue(packet).map_err(End::ClientGone)?;
                        }
                    }
                }
                // More that is already there, without waiting. Past the round's limit it stays
                // with the router for the next round: nothing fetched is ever dropped.
                if handled < MAX_NOTIFICATIONS_PER_ROUND {
                    next = waiting(link_rx).await;
                }
            }
            self.flush(wire).await?;
            if !unscheduled {
                return Ok(());
            }
            // Wake the router, unless it has let go of the link meanwhile (a wake for a
            // connection it no longer has makes it panic); what arrived during the flush is
            // delivered first, and may say just that.
            match waiting(link_rx).await {
                Some(Err(_)) => return Err(End::RouterDropped),
                Some(Ok(Some(notification))) => first = Some(Ok(Some(notification))),
                Some(Ok(None)) | None => {
                    link_rx.wake().await.map_err(|_| End::RouterDropped)?;
                    return Ok(());
                }
            }
        }
    }
}

/// The next notification if one is already waiting (`None` when none is).
async fn waiting(link_rx: &mut LinkRx) -> Option<Result<Option<Notification>, LinkError>> {
    tokio::time::timeout(Duration::ZERO, link_rx.next())
        .await
        .ok()
}
