//! The API's listener: accepts TCP connections and serves each with hyper's HTTP/1.1 under the
//! router, within bounds that `axum::serve` does not set.
//!
//! * **Connections, in all and per address.** Past [`HttpLimits::max_connections`] open
//!   connections, or [`HttpLimits::max_connections_per_address`] from one IP address, a new
//!   connection is closed as soon as it is accepted (counted in
//!   `ecs_http_connections_refused_total{reason}`): one client holding thousands of sockets
//!   would otherwise take the process's file descriptors from everyone.
//! * **Reading a request's head.** A connection that has not sent a whole request head within
//!   [`HttpLimits::header_read_timeout`] is closed; that includes a keep-alive connection idle
//!   between requests. Without it a client dripping one header line at a time (slowloris) holds
//!   its connection for ever: the request timeout of the router only starts once the head is in.
//!
//! The client's address reaches the router as axum's `ConnectInfo<SocketAddr>` (the failed
//! authentications are limited per address). On shutdown the listener stops accepting, every
//! connection finishes the request it is serving and is closed, and [`serve`] returns when the
//! last one has.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How many connections the listener holds open, and how long a request's head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        crate::config::ListenerSettings::default().limits()
    }
}

/// After a failed `accept` (out of file descriptors, typically), the pause before the next: the
/// error persists until connections close, and retrying at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the open connections
/// to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let gate = Gate::new(limits);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting an HTTP connection failed; pausing");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            },
        };
        let admitted = match gate.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(reason) => {
                metrics::counter!("ecs_http_connections_refused_total", "reason" => reason.label())
                    .increment(1);
                debug!(%peer, reason = reason.label(), "HTTP connection refused");
                drop(stream);
                continue;
            }
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            limits.header_read_timeout,
            admitted,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_read_timeout: Duration,
    _admitted: Admitted,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        // A client that went away or timed out: its own business, not an error of ours.
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Full,
    AddressFull,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Self::Full => "max_connections",
            Self::AddressFull => "max_connections_per_address",
        }
    }
}

/// Counts open connections, in all and per address.
struct Gate {
    all: Arc<Semaphore>,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
}

/// An admitted connection's place; given back when dropped.
struct Admitted {
    _all: OwnedSemaphorePermit,
    address: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Gate {
    fn new(limits: HttpLimits) -> Self {
        Self {
            all: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_address: Arc::default(),
            max_per_address: limits.max_connections_per_address.max(1),
        }
    }

    fn admit(&self, address: IpAddr) -> Result<Admitted, Refused> {
        let all = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let mut open = lock(&self.per_address);
        let count = open.entry(address).or_default();
        if *count >= self.max_per_address {
            return Err(Refused::AddressFull);
        }
        *count += 1;
        drop(open);
        metrics::gauge!("ecs_http_connections").increment(1.0);
        Ok(Admitted {
            _all: all,
            address,
            per_address: self.per_address.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, address: IpAddr) -> usize {
        lock(&self.per_address).get(&address).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.per_address);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // No entry per address ever seen: the map holds only addresses connected now.
                open.remove(&self.address);
            }
        }
        drop(open);
        metrics::gauge!("ecs_http_connections").decrement(1.0);
    }
}

/// The counts stay consistent whatever panicked while holding the lock (each change is one
/// statement), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn started(
        limits: HttpLimits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop, task)
    }

    /// Sends one request on `stream` and reads the answer (the route's bodies are short).
    async fn get_peer(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// True once the server has closed `stream` (a read answers end of file or a reset).
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[test]
    fn the_gate_counts_per_address_and_gives_places_back() {
        let gate = Gate::new(HttpLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..HttpLimits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refused::AddressFull));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refused::Full), "3 in all");
        drop(first);
        assert_eq!(gate.open(a), 1);
        gate.admit(a)
            .expect("a place freed by a closed connection is free again");
    }

    #[tokio::test]
    async fn the_router_sees_the_peer_and_extra_connections_are_closed() {
        let limits = HttpLimits {
            max_connections_per_address: 2,
            ..HttpLimits::default()
        };
        let (addr, stop, task) = started(limits).await;
        let mut one = TcpStream::connect(addr).await.unwrap();
        let mut two = TcpStream::connect(addr).await.unwrap();
        let answer = get_peer(&mut one).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&one.local_addr().unwrap().to_string()),
            "{answer}"
        );
        assert!(get_peer(&mut two).await.starts_with("HTTP/1.1 200"));
        let mut three = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(&mut three, Duration::from_secs(5)).await,
            "a third connection from one address is closed"
        );
        drop(one);
        // The place is given back when the server sees the close; try until it has.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut again = TcpStream::connect(addr).await.unwrap();
            let _ = again
                .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = vec![0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(1), again.read(&mut buf)).await
                && n > 0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the closed connection's place never came back"
            );
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_head_that_drips_is_cut_off_and_shutdown_ends_idle_connections() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let (addr, stop, task) = started(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\n").await.unwrap();
        let mut cut = false;
        for _ in 0..20 {
            // One header line every 100 ms: each arrives well within the timeout, the head never.
            if slow.write_all(b"X-Drip: 1\r\n").await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            cut || closed(&mut slow, Duration::from_secs(2)).await,
            "a dripping head is cut off"
        );

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get_peer(&mut idle).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns once its connections are closed")
            .unwrap();
        assert!(closed(&mut idle, Duration::from_secs(2)).await);
    }
}
