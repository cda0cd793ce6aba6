//! The measured phase: people with phones online accept offers at a steady rate, and each
//! accept is timed until its `offer_applied` notification is in the phone's inbox.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ecs_edge_agent::{Agent, AgentHandle};
use ecs_protocol::NotificationKind;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::NotifyBenchArgs;
use crate::bench::latency::{Latencies, LatencySummary};
use crate::bench::progress::Progress;
use crate::people::{Provisioned, provision};
use crate::stack::Stack;

/// How long the phones get to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the phones' inboxes are looked into while a round settles. Only the waiting is
/// paced by it: the latency comes from the inbox's own arrival stamp.
const POLL: Duration = Duration::from_millis(20);

/// What the phase measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub accepts: usize,
    pub notified: usize,
    pub lost: usize,
    /// From the accept's request sent to the notification's arrival on the phone.
    pub latency: Option<LatencySummary>,
    /// Where that time goes, each from the request sent.
    pub stages: Stages,
}

/// The way to the phone in stages, each measured from the accept's request sent: its answer
/// (the acceptance committed), the worker's transaction beginning (`applied_at`, Postgres's
/// `now()`, on this machine's clock), and the notifier's claim (`last_published_at` of a
/// notification published once).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub answered: Option<LatencySummary>,
    pub applying: Option<LatencySummary>,
    pub publishing: Option<LatencySummary>,
}

#[derive(Default)]
struct StageLatencies {
    answered: Latencies,
    applying: Latencies,
    publishing: Latencies,
}

struct Person {
    who: Provisioned,
    phone: AgentHandle,
}

/// One accept on its way: whose, which offer, when its request was sent and answered (Unix ms).
struct Sent {
    person: usize,
    offer_id: Uuid,
    sent_ms: f64,
    answered_ms: f64,
}

pub async fn run(
    stack: &Stack,
    args: &NotifyBenchArgs,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    let people = start_people(stack, args.people, progress).await?;
    let measured = accept_in_rounds(stack, &people, args, progress).await;
    for person in people {
        if let Err(e) = person.phone.shutdown().await {
            tracing::warn!(error = %e, "a phone did not shut down cleanly");
        }
    }
    measured
}

async fn start_people(
    stack: &Stack,
    count: usize,
    progress: &Progress,
) -> anyhow::Result<Vec<Person>> {
    let bar = progress.counter("people", count as u64);
    let mut people = Vec::with_capacity(count);
    for i in 0..count {
        let who = provision(stack, &format!("Bench person {}", i + 1), 3, 900_000).await?;
        let mut config = who.phone.clone();
        // Streaming, as a phone does, but slowly: the bench is about the way back.
        config.sample_rate_hz = 1.0;
        config.sensor_seed = Some(i as u64);
        let phone = Agent::start(config)
            .await
            .with_context(|| format!("starting phone {}", i + 1))?;
        people.push(Person { who, phone });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while !people.iter().all(|p| p.phone.stats().connected) {
        if tokio::time::Instant::now() > deadline {
            bail!("the phones did not all connect within {CONNECT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(people)
}

async fn accept_in_rounds(
    stack: &Stack,
    people: &[Person],
    args: &NotifyBenchArgs,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    let bar = progress.counter("accepts", args.accepts as u64);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let settle = Duration::from_secs(args.settle_secs);
    let mut latencies = Latencies::default();
    let mut stages = StageLatencies::default();
    let (mut notified, mut lost) = (0, 0);
    let mut remaining = args.accepts;
    while remaining > 0 {
        let round = &people[..remaining.min(people.len())];
        let sent = accept_round(round, interval).await?;
        record_stages(stack, &sent, &mut stages).await?;
        let (arrived, missing) = settle_round(people, sent, settle).await?;
        notified += arrived.len();
        lost += missing;
        for latency in arrived {
            latencies.record(latency);
        }
        remaining -= round.len();
        bar.inc(round.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Measured {
        accepts: args.accepts,
        notified,
        lost,
        latency: latencies.summary(),
        stages: Stages {
            answered: stages.answered.summary(),
            applying: stages.applying.summary(),
            publishing: stages.publishing.summary(),
        },
    })
}

/// Reads, once the round's limits are in force, when each was applied and first published.
async fn record_stages(
    stack: &Stack,
    sent: &[Sent],
    stages: &mut StageLatencies,
) -> anyhow::Result<()> {
    let since =
        |sent_ms: f64, at_ms: f64| Duration::from_secs_f64((at_ms - sent_ms).max(0.0) / 1000.0);
    for s in sent {
        stages.answered.record(since(s.sent_ms, s.answered_ms));
    }
    let ids: Vec<Uuid> = sent.iter().map(|s| s.offer_id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rows: Vec<(Uuid, f64, Option<f64>)> = loop {
        let rows: Vec<(Uuid, Option<f64>, Option<f64>)> = sqlx::query_as(
            "SELECT o.offer_id,
                    extract(epoch FROM o.applied_at)::float8 * 1000,
                    (SELECT extract(epoch FROM n.last_published_at)::float8 * 1000
                     FROM notifications n
                     WHERE n.offer_id = o.offer_id AND n.kind = 'offer_applied'
                       AND n.publish_attempts = 1)
             FROM credit_offers o WHERE o.offer_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&stack.pool)
        .await
        .context("reading when the offers were applied")?;
        let complete: Option<Vec<_>> = rows
            .iter()
            .map(|(id, applied, published)| applied.map(|a| (*id, a, *published)))
            .collect();
        match complete {
            Some(rows) if rows.iter().all(|r| r.2.is_some()) => break rows,
            _ if tokio::time::Instant::now() > deadline => {
                break rows
                    .into_iter()
                    .filter_map(|(id, a, p)| a.map(|a| (id, a, p)))
                    .collect();
            }
            _ => tokio::time::sleep(POLL).await,
        }
    };
    let sent_at: HashMap<Uuid, f64> = sent.iter().map(|s| (s.offer_id, s.sent_ms)).collect();
    for (offer_id, applied_ms, published_ms) in rows {
        if let Some(&sent_ms) = sent_at.get(&offer_id) {
            stages.applying.record(since(sent_ms, applied_ms));
            if let Some(published_ms) = published_ms {
                stages.publishing.record(since(sent_ms, published_ms));
            }
        }
    }
    Ok(())
}

/// Every person of the round asks for an offer (untimed), then the offers are accepted one
/// every `interval`, open loop: an accept waits for its slot, not for the answers before it.
async fn accept_round(round: &[Person], interval: Duration) -> anyhow::Result<Vec<Sent>> {
    let mut offers = Vec::with_capacity(round.len());
    for person in round {
        let offer = person
            .who
            .api
            .request_offer(person.who.user_id)
            .await
            .context("asking for an offer")?;
        if !offer.approved {
            bail!(
                "a salaried person's offer was declined ({:?}); the bench needs approved offers",
                offer.reason_codes
            );
        }
        offers.push(offer.offer_id);
    }
    let start = tokio::time::Instant::now();
    let mut accepts = JoinSet::new();
    for (k, offer_id) in offers.into_iter().enumerate() {
        let api = round[k].who.api.clone();
        let slot = start + interval * u32::try_from(k).unwrap_or(u32::MAX);
        accepts.spawn(async move {
            tokio::time::sleep_until(slot).await;
            let sent_ms = unix_ms();
            api.accept_offer(offer_id).await.map(|_| Sent {
                person: k,
                offer_id,
                sent_ms,
                answered_ms: unix_ms(),
            })
        });
    }
    let mut sent = Vec::new();
    while let Some(done) = accepts.join_next().await {
        sent.push(
            done.context("an accept task failed")?
                .context("accepting an offer")?,
        );
    }
    Ok(sent)
}

/// Waits until every accept's notification is in its phone's inbox, or `settle` has passed.
/// Returns the latencies of those that arrived and how many did not.
async fn settle_round(
    people: &[Person],
    sent: Vec<Sent>,
    settle: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let deadline = tokio::time::Instant::now() + settle;
    let mut pending: HashMap<Uuid, Sent> = sent.into_iter().map(|s| (s.offer_id, s)).collect();
    let mut arrived = Vec::new();
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let mut heard = Vec::new();
        for s in pending.values() {
            let inbox = people[s.person]
                .phone
                .received_notifications()
                .await
                .context("reading a phone's inbox")?;
            let arrival = inbox.iter().find_map(|r| match r.notification.kind {
                NotificationKind::OfferApplied { offer_id, .. } if offer_id == s.offer_id => {
                    Some(r.received_at_ms)
                }
                _ => None,
            });
            if let Some(received_ms) = arrival {
                // The inbox stamps whole milliseconds (rounded down): a latency is read to
                // within a millisecond, and never below zero.
                let ms = (received_ms as f64 - s.sent_ms).max(0.0);
                arrived.push(Duration::from_secs_f64(ms / 1000.0));
                heard.push(s.offer_id);
            }
        }
        for offer_id in heard {
            pending.remove(&offer_id);
        }
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok((arrived, pending.len()))
}

/// Now, as Unix milliseconds with a fraction: the clock the phones' inboxes stamp with.
fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
