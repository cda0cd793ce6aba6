//! HTTP load on one endpoint: `connections` client tasks, each with a keep-alive HTTP/1.1
//! connection of its own, asking round-robin about the seeded people, each request with the
//! token of the person it is about, as the person's phone app would: an admin-token read of a
//! person is recorded in the access trail (an insert and a commit per read, by design), so the
//! admin is the rare caller of these routes. Each person's own rate limits (requests per
//! second, assessments per hour) are raised by [`super::cloud::start`] so they do not refuse
//! the load.
//!
//! The client is [`crate::bench::http1`]'s, not a general-purpose one: the load shares the
//! machine's cores with the cloud and Postgres, and every cycle it spends is one the cloud
//! does not get, while pgbench, the reference, is lean C.
//!
//! * **Closed loop** ([`Pacing::Closed`]): each connection sends its next request as soon as the
//!   last one answered: the most the API serves with that many callers.
//! * **Open loop** ([`Pacing::Open`]): each connection sends on a fixed schedule, its share of
//!   the target rate. A late request goes at once, and its latency counts from when it was due,
//!   not from when it went: otherwise a slow answer would delay the requests behind it and hide
//!   them from the percentiles (coordinated omission).
//!
//! A request belongs to the measured window when it was sent (closed loop) or due (open loop)
//! within it; it is then waited for, even past the window's end, so that the slowest requests
//! are never the ones left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::seed::Person;
use crate::bench::cloud::BenchCloud;
use crate::bench::http1::{self, Client, Method};
use crate::bench::latency::{Latencies, LatencySummary};
use crate::bench::progress::Progress;

/// One request's limit: far above any latency worth reporting, so that a stuck request ends as
/// an error rather than holding its connection to the end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that could not send waits this long before it tries again, rather than spin
/// on a refused socket and starve the cloud it shares the cores with.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What the load asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/users/{id}/credit-offers` without a body: an assessment (features, model,
    /// policy) and an offer written under the person's lock.
    Assess,
    /// `GET /v1/users/{id}`: one person read.
    Read,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Self::Assess => "assess",
            Self::Read => "read",
        }
    }

    fn method(self) -> Method {
        match self {
            Self::Assess => Method::Post,
            Self::Read => Method::Get,
        }
    }

    #[cfg(test)]
    fn path(self, user: Uuid) -> String {
        let mut path = String::new();
        self.write_path(&mut path, user);
        path
    }

    /// The request's path, into `path` (reused from request to request).
    fn write_path(self, path: &mut String, user: Uuid) {
        path.clear();
        path.push_str("/v1/users/");
        // Hyphenated lower-case hex, as `Display` writes it, without a formatter.
        path.push_str(user.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        if self == Self::Assess {
            path.push_str("/credit-offers");
        }
    }

    /// The status of a request that did what it was asked (201 Created, 200 OK); anything
    /// else is an error.
    pub fn expected(self) -> u16 {
        match self {
            Self::Assess => 201,
            Self::Read => 200,
        }
    }
}

/// How requests are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    Closed,
    /// `per_s` requests per second over all connections.
    Open {
        per_s: f64,
    },
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub endpoint: Endpoint,
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub pacing: Pacing,
}

/// Where the load goes: the cloud's API, about these people, each asked about with their own
/// token.
#[derive(Clone)]
pub struct Target {
    addr: std::net::SocketAddr,
    people: Arc<[Person]>,
}

impl Target {
    pub fn new(cloud: &BenchCloud, people: Arc<[Person]>) -> Self {
        Self {
            addr: cloud.http_addr,
            people,
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct LoadFigures {
    pub endpoint: Endpoint,
    pub connections: usize,
    /// The open loop's target rate; `None` for the closed loop.
    pub target_per_s: Option<f64>,
    /// The measured window's length.
    pub seconds: f64,
    /// Requests of the window answered with the expected status.
    pub ok: u64,
    /// `ok` per second of the window.
    pub ok_per_s: f64,
    /// Every answer of the window by status, the expected one included.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests of the window that got no answer (connection or timeout).
    pub transport_errors: u64,
    /// Latency of every request of the window, errors included; `None` when there was none.
    pub latency: Option<LatencySummary>,
}

impl LoadFigures {
    /// Requests of the window not answered with the expected status.
    pub fn errors(&self) -> u64 {
        let expected = self.endpoint.expected();
        let wrong: u64 = self
            .statuses
            .iter()
            .filter(|(status, _)| **status != expected)
            .map(|(_, n)| n)
            .sum();
        wrong + self.transport_errors
    }

    /// One line for the person watching.
    pub fn line(&self) -> String {
        let pacing = self
            .target_per_s
            .map_or("closed loop".to_owned(), |r| format!("{r:.0}/s offered"));
        let latency = self.latency.map_or("no samples".to_owned(), |l| {
            format!("p50 {:.2} ms, p99 {:.2} ms", l.p50_ms, l.p99_ms)
        });
        format!(
            "{} ({pacing}): {:.0}/s, {latency}, {} errors",
            self.endpoint.name(),
            self.ok_per_s,
            self.errors()
        )
    }
}

/// One connection's schedule in the open loop: due times `first + k × interval`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Duration,
}

impl Schedule {
    /// Connection `index` of `connections`, sending its share of `per_s`; the connections'
    /// first requests are spread over one interval, so they do not all go at once.
    fn for_connection(start: Instant, index: usize, connections: usize, per_s: f64) -> Self {
        let interval = Duration::from_secs_f64(connections as f64 / per_s);
        Self {
            first: start + interval.mul_f64(index as f64 / connections as f64),
            interval,
        }
    }

    fn due(&self, k: u64) -> Instant {
        self.first + self.interval.mul_f64(k as f64)
    }
}

/// The measured window: requests sent (or due) in `[start, end)` count.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn holds(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// One connection's counts.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

/// Runs one phase: warm-up, then the measured window.
pub async fn run(
    target: &Target,
    plan: &LoadPlan,
    progress: &Progress,
) -> anyhow::Result<LoadFigures> {
    anyhow::ensure!(
        !target.people.is_empty(),
        "the load needs people to ask about"
    );
    let target_per_s = match plan.pacing {
        Pacing::Closed => None,
        Pacing::Open { per_s } => {
            anyhow::ensure!(
                per_s.is_finite() && per_s > 0.0,
                "an open loop needs a positive rate, not {per_s}"
            );
            Some(per_s)
        }
    };
    let bar = progress.timer(plan.endpoint.name());
    bar.set_message(match target_per_s {
        None => format!("{} connections, closed loop", plan.connections),
        Some(r) => format!("{} connections, {r:.0}/s", plan.connections),
    });
    let started = Instant::now();
    let window = Window {
        start: started + plan.warmup,
        end: started + plan.warmup + plan.measure,
    };
    // Shared so that the connections together go round-robin over the people.
    let next = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    for index in 0..plan.connections {
        // One client per task, each with its own keep-alive socket, as `connections` separate
        // callers would; it connects on its first request.
        let client = Client::new(target.addr);
        let schedule =
            target_per_s.map(|r| Schedule::for_connection(started, index, plan.connections, r));
        let (target, next) = (target.clone(), Arc::clone(&next));
        let endpoint = plan.endpoint;
        connections.spawn(async move {
            connection(client, target, endpoint, window, schedule, next).await
        });
    }
    let mut latencies = Latencies::default();
    let mut total = Tally::default();
    while let Some(joined) = connections.join_next().await {
        let tally = joined.context("a load connection failed")?;
        for latency in tally.latencies {
            latencies.record(latency);
        }
        total.ok += tally.ok;
        total.transport_errors += tally.transport_errors;
        for (status, n) in tally.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
    }
    bar.finish_and_clear();
    let seconds = plan.measure.as_secs_f64();
    Ok(LoadFigures {
        endpoint: plan.endpoint,
        connections: plan.connections,
        target_per_s,
        seconds,
        ok: total.ok,
        ok_per_s: total.ok as f64 / seconds,
        statuses: total.statuses,
        transport_errors: total.transport_errors,
        latency: latencies.summary(),
    })
}

/// One connection: sends until the window ends, and tallies the requests of the window. Each
/// request carries the token of the person it is about.
async fn connection(
    mut client: Client,
    target: Target,
    endpoint: Endpoint,
    window: Window,
    schedule: Option<Schedule>,
    next: Arc<AtomicUsize>,
) -> Tally {
    let mut tally = Tally::default();
    let mut path = String::new();
    let expected = endpoint.expected();
    for k in 0_u64.. {
        // When the latency counts from: the due time in the open loop, the send otherwise.
        let from = match schedule {
            Some(schedule) => {
                let due = schedule.due(k);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if from >= window.end {
            break;
        }
        // `run` refused an empty list, so the remainder is an index.
        let person = &target.people[next.fetch_add(1, Ordering::Relaxed) % target.people.len()];
        endpoint.write_path(&mut path, person.id);
        let answer = send(&mut client, endpoint.method(), &path, &person.token).await;
        let latency = from.elapsed();
        let counted = window.holds(from);
        match answer {
            Ok(status) if counted => {
                tally.latencies.push(latency);
                *tally.statuses.entry(status).or_default() += 1;
                if status == expected {
                    tally.ok += 1;
                }
            }
            Ok(_) => {}
            Err(_) => {
                if counted {
                    tally.latencies.push(latency);
                    tally.transport_errors += 1;
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

/// One request with the person's token, its answer read to the end, within
/// [`REQUEST_TIMEOUT`]. On a timeout the client's connection is dropped with the request (see
/// [`http1`]), so the next request starts on a fresh one.
async fn send(
    client: &mut Client,
    method: Method,
    path: &str,
    token: &str,
) -> Result<u16, http1::Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, client.send(method, path, token))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(statuses: &[(u16, u64)], transport_errors: u64) -> LoadFigures {
        LoadFigures {
            endpoint: Endpoint::Assess,
            connections: 2,
            target_per_s: None,
            seconds: 1.0,
            ok: 0,
            ok_per_s: 0.0,
            statuses: statuses.iter().copied().collect(),
            transport_errors,
            latency: None,
        }
    }

    #[test]
    fn errors_are_every_other_status_and_every_unanswered_request() {
        assert_eq!(figures(&[(201, 100)], 0).errors(), 0);
        assert_eq!(figures(&[(201, 100), (429, 3), (500, 2)], 1).errors(), 6);
        // A 200 is not what an assessment answers.
        assert_eq!(figures(&[(200, 4)], 0).errors(), 4);
    }

    #[test]
    fn open_loop_connections_share_the_rate_and_are_staggered() {
        let start = Instant::now();
        // 100/s over 4 connections: each sends every 40 ms, the four 10 ms apart.
        let first = Schedule::for_connection(start, 0, 4, 100.0);
        let second = Schedule::for_connection(start, 1, 4, 100.0);
        assert_eq!(first.interval, Duration::from_millis(40));
        assert_eq!(first.due(0), start);
        assert_eq!(first.due(3), start + Duration::from_millis(120));
        assert_eq!(second.due(0) - start, Duration::from_millis(10));
    }

    #[test]
    fn the_window_holds_its_start_not_its_end() {
        let start = Instant::now();
        let window = Window {
            start,
            end: start + Duration::from_secs(1),
        };
        assert!(window.holds(start));
        assert!(!window.holds(window.end));
        assert!(!window.holds(start - Duration::from_millis(1)));
    }

    #[test]
    fn each_endpoint_has_its_route_and_status() {
        let id = Uuid::nil();
        assert_eq!(
            Endpoint::Assess.path(id),
            format!("/v1/users/{id}/credit-offers")
        );
        assert_eq!(Endpoint::Assess.method(), Method::Post);
        assert_eq!(Endpoint::Assess.expected(), 201);
        assert_eq!(Endpoint::Read.path(id), format!("/v1/users/{id}"));
        assert_eq!(Endpoint::Read.method(), Method::Get);
        assert_eq!(Endpoint::Read.expected(), 200);
        // The path written in place is the same, whatever was in the buffer.
        let mut path = "junk".to_owned();
        Endpoint::Assess.write_path(&mut path, id);
        assert_eq!(path, Endpoint::Assess.path(id));
    }
}
