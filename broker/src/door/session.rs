//! One client's life after its transport is up: CONNECT checked by our rules, the link to the
//! router, and the pump between the two until either side ends.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ecs_protocol::DeviceId;
use rumqttd::Notification;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Door;
use super::acl::Policy;
use super::limits::{Registration, TokenBucket};
use super::wire::{Wire, WireError};
use crate::metrics::{Listener, Refused, SessionGuard, Violation};

/// Longest keep-alive a client may ask for; zero (no keep-alive) is refused too, since a dead
/// connection would then be held for ever.
pub(crate) const MAX_KEEP_ALIVE_SECS: u16 = 3_600;
/// Longest client id a service may use (a device's is its device id).
const MAX_CLIENT_ID_CHARS: usize = 128;
/// Notifications from the router written per round, so one busy link cannot starve its own
/// reading for long.
const MAX_NOTIFICATIONS_PER_ROUND: usize = 512;
/// Packets read per round before they go to the router.
const MAX_PACKETS_PER_ROUND: usize = 100;

/// Who is at the other end, as far as the transport told us.
pub(crate) enum Peer {
    /// A device, its connection already counted against its caps.
    Device(DeviceId, Registration),
    Service,
}

/// Runs one connection to its end. Every way it ends is logged once, with the peer address and
/// the client once known.
pub(crate) async fn run<S>(door: Arc<Door>, stream: S, addr: SocketAddr, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let listener = match peer {
        Peer::Device(..) => Listener::Device,
        Peer::Service => Listener::Service,
    };
    let mut wire = Wire::new(
        stream,
        super::acl::CONNECT_MAX_PACKET_BYTES,
        door.write_timeout,
    );
    let connect_timeout = door.connect_timeout;
    let first = tokio::select! {
        read = tokio::time::timeout(connect_timeout, wire.read_packet()) => read,
        () = door.shutdown.cancelled() => return,
    };
    let (connect, will, login) = match first {
        Ok(Ok((Packet::Connect(connect, _, will, _, login), _))) => (connect, will, login),
        Ok(Ok(_)) | Ok(Err(WireError::Malformed(_))) => {
            return refuse(&door, wire, listener, addr, None, Refused::NotConnect, None).await;
        }
        Ok(Err(error)) => {
            tracing::debug!(peer = %addr, listener = listener.as_str(), %error, "gone before CONNECT");
            return;
        }
        Err(_) => {
            return refuse(
                &door,
                wire,
                listener,
                addr,
                None,
                Refused::ConnectTimeout,
                None,
            )
            .await;
        }
    };
    // MQTT 3.1.1: a service with an empty client id and a clean session gets one assigned.
    // (A device's client id must be its device id.)
    let client = match (&peer, connect.client_id.is_empty() && connect.clean_session) {
        (Peer::Service, true) => format!("anonymous-{}", random_suffix()),
        _ => connect.client_id.clone(),
    };

    // Our rules for CONNECT, before anything reaches rumqttd.
    let (policy, tenant) = match &peer {
        Peer::Device(device, _) => {
            if client != device.as_str() {
                let code = Some(ConnectReturnCode::ClientIdentifierNotValid);
                return refuse(
                    &door,
                    wire,
                    listener,
                    addr,
                    Some(&client),
                    Refused::ClientId,
                    code,
                )
                .await;
            }
            (Policy::device(device), Some(device.to_string()))
        }
        Peer::Service => {
            if client.is_empty()
                || client.chars().count() > MAX_CLIENT_ID_CHARS
                || client.contains(['+', '$', '#', '/'])
            {
                let code = Some(ConnectReturnCode::ClientIdentifierNotValid);
                return refuse(
                    &door,
                    wire,
                    listener,
                    addr,
                    Some(&client),
                    Refused::NotConnect,
                    code,
                )
                .await;
            }
            if let Err(reason) = door.check_login(addr, login.as_ref()) {
                let code = Some(ConnectReturnCode::BadUserNamePassword);
                return refuse(&door, wire, listener, addr, Some(&client), reason, code).await;
            }
            (Policy::Service, None)
        }
    };
    if connect.keep_alive == 0 || connect.keep_alive > MAX_KEEP_ALIVE_SECS {
        let code = Some(ConnectReturnCode::ServiceUnavailable);
        return refuse(
            &door,
            wire,
            listener,
            addr,
            Some(&client),
            Refused::KeepAlive,
            code,
        )
        .await;
    }
    if will.is_some() {
        let code = Some(ConnectReturnCode::NotAuthorized);
        return refuse(
            &door,
            wire,
            listener,
            addr,
            Some(&client),
            Refused::LastWill,
            code,
        )
        .await;
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
            let code = Some(ConnectReturnCode::ServiceUnavailable);
            return refuse(
                &door,
                wire,
                listener,
                addr,
                Some(&client),
                Refused::RouterRefused,
                code,
            )
            .await;
        }
        Err(_) => return,
    };
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

    let (closed, is_device) = match &peer {
        Peer::Device(_, registration) => (registration.closed().clone(), true),
        Peer::Service => (CancellationToken::new(), false),
    };
    let pump = Pump {
        door: Arc::clone(&door),
        listener,
        policy,
        session,
        subscriptions: HashSet::new(),
        keep_alive: keep_alive_deadline(&connect),
        device_rate: is_device.then(|| DeviceRate::new(&door)),
    };
    let end = pump.run(&mut wire, link_tx, link_rx, &closed).await;
    // Only now does the device get its connection slot back.
    drop(peer);
    match &end {
        End::ClientDisconnected | End::Shutdown => {
            tracing::info!(peer = %addr, client, reason = end.as_str(), "disconnected")
        }
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

/// Answers a refused CONNECT (when a CONNACK can say why), counts and logs it, and closes.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    door: &Door,
    mut wire: Wire<S>,
    listener: Listener,
    addr: SocketAddr,
    client: Option<&str>,
    reason: Refused,
    code: Option<ConnectReturnCode>,
) {
    door.metrics.refused(listener, reason);
    tracing::warn!(peer = %addr, listener = listener.as_str(), client, reason = reason.as_str(), "connection refused");
    if let Some(code) = code {
        let ack = ConnAck {
            session_present: false,
            code,
        };
        let _ = wire.send(Packet::ConnAck(ack, None)).await;
    }
    wire.shutdown().await;
}

/// 16 hex digits, for assigned client ids.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hasher over the time: unique enough for a client id, no extra crate.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
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

/// A device connection's message and byte budgets.
struct DeviceRate {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl DeviceRate {
    fn new(door: &Door) -> Self {
        let now = std::time::Instant::now();
        Self {
            messages: TokenBucket::new(
                door.device_message_rate,
                2.0 * door.device_message_rate,
                now,
            ),
            bytes: TokenBucket::new(door.device_byte_rate, 2.0 * door.device_byte_rate, now),
        }
    }

    /// Charges one message of `bytes`; the pause before reading more.
    fn charge(&mut self, bytes: usize) -> Duration {
        let now = std::time::Instant::now();
        let a = self.messages.take_with_debt(1.0, now);
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
    /// The router dropped the link: a newer connection took over the client id, or the router
    /// is gone.
    RouterDropped,
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
            End::RouterDropped => "taken_over",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
        }
    }
}

struct Pump {
    door: Arc<Door>,
    listener: Listener,
    policy: Policy,
    session: SessionGuard,
    subscriptions: HashSet<String>,
    keep_alive: Duration,
    device_rate: Option<DeviceRate>,
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
        closed: &CancellationToken,
    ) -> End {
        let mut last_heard = Instant::now();
        // Reading pauses until then when the device has spent its budget.
        let mut read_paused_until: Option<Instant> = None;
        let end = loop {
            let silence_deadline = last_heard + self.keep_alive;
            let paused = read_paused_until.is_some_and(|t| t > Instant::now());
            tokio::select! {
                biased;
                () = self.door.shutdown.cancelled() => break End::Shutdown,
                () = closed.cancelled() => break End::Revoked,
                notification = link_rx.next() => {
                    match self.deliver(wire, &mut link_rx, notification).await {
                        Ok(()) => {}
                        Err(end) => break end,
                    }
                }
                filled = wire.fill(), if !paused => {
                    if let Err(error) = filled {
                        break End::ClientGone(error);
                    }
                    last_heard = Instant::now();
                    match self.forward(wire, &mut link_tx).await {
                        Ok(pause) if pause > Duration::ZERO => read_paused_until = Some(Instant::now() + pause),
                        Ok(_) => read_paused_until = None,
                        Err(end) => break end,
                    }
                }
                () = tokio::time::sleep_until(read_paused_until.unwrap_or_else(Instant::now)), if paused => {
                    read_paused_until = None;
                    // Packets may already be buffered from the last read.
                    match self.forward(wire, &mut link_tx).await {
                        Ok(pause) if pause > Duration::ZERO => read_paused_until = Some(Instant::now() + pause),
                        Ok(_) => {}
                        Err(end) => break end,
                    }
                }
                () = tokio::time::sleep_until(silence_deadline) => break End::KeepAliveExpired,
            }
        };
        // The router already knows when the client's DISCONNECT passed, or when it dropped
        // the link itself.
        if !matches!(end, End::RouterDropped | End::ClientDisconnected) {
            disconnect_link(link_tx).await;
        }
        end
    }

    /// Passes the packets read so far to the router, after our rules; returns how long to
    /// pause reading when a device went over its budget.
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        link_tx: &mut LinkTx,
    ) -> Result<Duration, End> {
        let mut batch = Vec::new();
        let mut pause = Duration::ZERO;
        let mut client_disconnected = false;
        while batch.len() < MAX_PACKETS_PER_ROUND && pause == Duration::ZERO {
            let (packet, qos) = match wire.next_buffered() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(_) => return Err(End::Violation(Violation::Malformed)),
            };
            self.policy.check(&packet, qos).map_err(End::Violation)?;
            match &packet {
                Packet::Publish(publish, _) => {
                    let bytes = publish.payload.len();
                    self.door
                        .metrics
                        .message_in(self.listener, &self.session.traffic, bytes);
                    if let Some(rate) = &mut self.device_rate {
                        pause = rate.charge(bytes);
                    }
                }
                Packet::Subscribe(subscribe, _) => {
                    for filter in &subscribe.filters {
                        if self.subscriptions.insert(filter.path.clone()) {
                            self.door.metrics.subscriptions(self.listener, 1);
                        }
                    }
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    for filter in &unsubscribe.filters {
                        if self.subscriptions.remove(filter) {
                            self.door.metrics.subscriptions(self.listener, -1);
                        }
                    }
                }
                Packet::Disconnect(..) => client_disconnected = true,
                _ => {}
            }
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
        if client_disconnected {
            return Err(End::ClientDisconnected);
        }
        Ok(pause)
    }

    /// Writes what the router has for this client: the notification that woke us and whatever
    /// else is already waiting, in one write.
    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        link_rx: &mut LinkRx,
        first: Result<Option<Notification>, LinkError>,
    ) -> Result<(), End> {
        let mut unscheduled = false;
        let mut next = first;
        for _ in 0..MAX_NOTIFICATIONS_PER_ROUND {
            let notification = match next {
                Ok(Some(notification)) => notification,
                Ok(None) => break,
                Err(_) => return Err(End::RouterDropped),
            };
            match notification {
                Notification::Unschedule => unscheduled = true,
                // MQTT 3.1.1 has no server DISCONNECT: the router wants the connection closed.
                Notification::Disconnect(..) => return Err(End::RouterDropped),
                notification => {
                    if let Notification::Forward(forward) = &notification {
                        let bytes = forward.publish.payload.len();
                        self.door
                            .metrics
                            .message_out(self.listener, &self.session.traffic, bytes);
                    }
                    let packet: Option<Packet> = notification.into();
                    if let Some(packet) = packet {
                        wire.queue(packet).map_err(End::ClientGone)?;
                    }
                }
            }
            // More that is already there, without waiting.
            next = match tokio::time::timeout(Duration::ZERO, link_rx.next()).await {
                Ok(more) => more,
                Err(_) => Ok(None),
            };
        }
        wire.flush().await.map_err(End::ClientGone)?;
        if unscheduled {
            // The router paused this link (its window was full); ask for more now that the
            // client has what it had.
            link_rx.wake().await.map_err(|_| End::RouterDropped)?;
        }
        Ok(())
    }
}
