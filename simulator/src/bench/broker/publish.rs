//! The publish phase: phones publish QoS 1 uplinks as fast as they are allowed, and one
//! service subscriber, like one cloud replica, receives them through the shared uplink
//! subscription.
//!
//! Two bounds pace the phones. Each phone has at most a few publishes unacknowledged by the
//! broker (its *window*, returned on PUBACK). And, unless switched off, all phones together have
//! at most a fixed number of messages *in transit*: published but not yet received by the
//! subscriber. Without the second bound, phones that outpace the subscriber fill the broker's
//! queues, and the figure becomes a measure of how a broker behaves when overrun (rumqttd
//! queues, so latency grows by the second; Mosquitto drops past `max_queued_messages`, 1000 by
//! default) rather than of how fast it forwards; run-to-run swings of 10x and more follow. With
//! the bound, the figure is the highest rate the broker sustains end to end, and latency stays
//! the broker's own (about in-transit / rate, by Little's law).
//!
//! Each payload carries the time it was handed to the phone's event loop, so the subscriber,
//! in the same process and on the same clock, knows each message's publish-to-delivery time.
//! Throughput is what the subscriber receives, not what the broker acknowledged: a broker that
//! acknowledges and then drops does not get credit for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ecs_broker::Secret;
use ecs_mqtt_link::{BrokerUrl, Scheme};
use indicatif::ProgressBar;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use super::phones::Phones;
use crate::bench::latency::{Latencies, LatencySummary};

/// Bytes of every uplink payload: about one small batch of sensor readings.
pub const PAYLOAD_BYTES: usize = 200;
/// Publishing before the measurement starts, so connections, buffers and the broker's logs are
/// warm when the clock starts.
const WARMUP: Duration = Duration::from_secs(1);
/// How long the subscriber gets to connect and subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks a payload as this bench's (a shared Mosquitto may carry other uplinks too).
const MAGIC: &[u8; 4] = b"ECSB";
const STAMP_BYTES: usize = MAGIC.len() + 8 + 8;

/// How the publish phase runs.
#[derive(Debug, Clone, Copy)]
pub struct PublishPlan {
    /// The first `publishers` phones publish; the others stay connected and idle.
    pub publishers: usize,
    pub duration: Duration,
    /// Messages published but not yet received, over all phones; unbounded when `None`.
    pub in_transit: Option<usize>,
    /// Identifies this run's payloads.
    pub run: u64,
}

/// What the phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublishFigures {
    pub publishers: usize,
    /// Messages the subscriber received during the measurement.
    pub delivered: u64,
    pub messages_per_s: f64,
    /// Publishes the broker acknowledged to the phones, per second.
    pub acked_per_s: f64,
    pub latency: Option<LatencySummary>,
}

/// Where and as whom the subscriber logs in.
#[derive(Debug, Clone)]
pub struct SubscriberLogin {
    pub addr: SocketAddr,
    /// Username and password; anonymous when `None` (Mosquitto's plain port).
    pub credentials: Option<(String, Secret)>,
    pub filter: String,
}

/// The run's clock (payload stamps count from it) and the measurement window.
#[derive(Debug, Clone, Copy)]
struct Window {
    clock: Instant,
    from: Instant,
    until: Instant,
}

/// Runs the phase: subscribe, warm up, measure, stop the publishers.
pub async fn run(
    phones: &Phones,
    login: &SubscriberLogin,
    plan: PublishPlan,
    bar: &ProgressBar,
) -> anyhow::Result<PublishFigures> {
    let in_transit = plan.in_transit.map(|n| Arc::new(Semaphore::new(n)));
    let (subscribed, collected) = start_subscriber(login.clone(), plan, in_transit.clone())?;
    let window = subscribed
        .await
        .context("the subscriber thread ended early")??;

    let mut publishers = JoinSet::new();
    for phone in phones.phones().iter().take(plan.publishers) {
        publishers.spawn(publish(
            phone.client.clone(),
            Pacing {
                window: Arc::clone(&phone.window),
                in_transit: in_transit.clone(),
            },
            ecs_protocol::topic::uplink(&phone.id),
            plan.run,
            window,
        ));
    }

    tokio::time::sleep_until(window.from.into()).await;
    let acked_before = phones.pubacks();
    bar.set_message("measuring");
    tokio::time::sleep_until(window.until.into()).await;
    let acked = phones.pubacks() - acked_before;
    publishers.shutdown().await;
    let collected = collected
        .await
        .context("the subscriber thread ended early")??;

    let seconds = plan.duration.as_secs_f64();
    Ok(PublishFigures {
        publishers: plan.publishers.min(phones.len()),
        delivered: collected.delivered,
        messages_per_s: collected.delivered as f64 / seconds,
        acked_per_s: acked as f64 / seconds,
        latency: collected.latencies.summary(),
    })
}

type Reply<T> = oneshot::Receiver<anyhow::Result<T>>;

/// Starts the subscriber on a thread and a runtime of its own, as a cloud replica has its own
/// process. On the bench's runtime it would be one task among thousands of phones and
/// publishers, and the scheduler's fairness would make it the bottleneck instead of the broker.
///
/// Replies once subscribed, with the measurement window (the clock starts then), and again
/// when the window is over, with what it received.
fn start_subscriber(
    login: SubscriberLogin,
    plan: PublishPlan,
    in_transit: Option<Arc<Semaphore>>,
) -> anyhow::Result<(Reply<Window>, Reply<Collected>)> {
    let (subscribed_tx, subscribed) = oneshot::channel();
    let (collected_tx, collected) = oneshot::channel();
    let subscriber = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ =
                    subscribed_tx.send(Err(anyhow::Error::new(e).context("subscriber runtime")));
                return;
            }
        };
        runtime.block_on(async move {
            let (client, eventloop) = match subscribe(&login).await {
                Ok(subscribed) => subscribed,
                Err(e) => {
                    let _ = subscribed_tx.send(Err(e));
                    return;
                }
            };
            let clock = Instant::now();
            let window = Window {
                clock,
                from: clock + WARMUP,
                until: clock + WARMUP + plan.duration,
            };
            if subscribed_tx.send(Ok(window)).is_err() {
                return; // The bench is gone.
            }
            let received = collect(eventloop, plan.run, window, in_transit).await;
            // Dropping the client and its event loop closes the connection.
            drop(client);
            let _ = collected_tx.send(received);
        });
    };
    std::thread::Builder::new()
        .name("bench-subscriber".to_owned())
        .spawn(subscriber)
        .context("starting the subscriber thread")?;
    Ok((subscribed, collected))
}

/// Connects the subscriber and subscribes at QoS 1, waiting for CONNACK and SUBACK.
async fn subscribe(login: &SubscriberLogin) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let client_id = format!("bench-subscriber-{}", ecs_protocol::DeviceId::random());
    let url = BrokerUrl::at(Scheme::Mqtt, login.addr);
    let mut options = ecs_mqtt_link::options(&client_id, &url, Duration::from_secs(60));
    if let Some((username, password)) = &login.credentials {
        options.set_credentials(username.clone(), password.expose());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(login.filter.clone(), QoS::AtLeastOnce)
        .await
        .context("queueing the subscription")?;
    let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match subscribed {
        Ok(Ok(())) => Ok((client, eventloop)),
        Ok(Err(e)) => Err(e).with_context(|| {
            format!(
                "the subscriber could not connect to {} and subscribe",
                login.addr
            )
        }),
        Err(_) => bail!(
            "the subscriber got no SUBACK from {} within {SUBSCRIBE_TIMEOUT:?}",
            login.addr
        ),
    }
}

/// What a publisher waits for before each publish.
struct Pacing {
    /// The phone's own window, returned by its event loop on PUBACK.
    window: Arc<Semaphore>,
    /// The fleet's messages in transit, returned by the subscriber on receipt.
    in_transit: Option<Arc<Semaphore>>,
}

/// One phone publishing until the measurement ends, as fast as `pacing` lets it.
async fn publish(client: AsyncClient, pacing: Pacing, topic: String, run: u64, window: Window) {
    let publishing = async {
        loop {
            // Permits are taken for good here and given back by whoever sees the message
            // arrive; a closed semaphore never happens (nobody closes them).
            let Ok(permit) = pacing.window.acquire().await else {
                return;
            };
            permit.forget();
            if let Some(in_transit) = &pacing.in_transit {
                let Ok(permit) = in_transit.acquire().await else {
                    return;
                };
                permit.forget();
            }
            let stamp = Stamp {
                run,
                sent: window.clock.elapsed(),
            };
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, stamp.encode())
                .await
                .is_err()
            {
                return; // The event loop is gone: the phone was stopped.
            }
        }
    };
    let _ = tokio::time::timeout_at(window.until.into(), publishing).await;
}

struct Collected {
    delivered: u64,
    latencies: Latencies,
}

/// The subscriber's event loop until the window ends: counts this run's messages received in
/// the window and their latencies. rumqttc acknowledges each QoS 1 message itself.
async fn collect(
    mut eventloop: EventLoop,
    run: u64,
    window: Window,
    in_transit: Option<Arc<Semaphore>>,
) -> anyhow::Result<Collected> {
    let mut collected = Collected {
        delivered: 0,
        latencies: Latencies::default(),
    };
    let outcome = tokio::time::timeout_at(
        window.until.into(),
        receive(
            &mut eventloop,
            &mut collected,
            run,
            window,
            in_transit.as_deref(),
        ),
    )
    .await;
    match outcome {
        Ok(Err(e)) => Err(e),
        // The window is over (`receive` itself only ends on an error).
        Ok(Ok(())) | Err(_) => Ok(collected),
    }
}

async fn receive(
    eventloop: &mut EventLoop,
    collected: &mut Collected,
    run: u64,
    window: Window,
    in_transit: Option<&Semaphore>,
) -> anyhow::Result<()> {
    loop {
        let event = eventloop
            .poll()
            .await
            .context("the subscriber lost its connection")?;
        let Event::Incoming(Packet::Publish(message)) = event else {
            continue;
        };
        let Some(stamp) = Stamp::decode(&message.payload).filter(|s| s.run == run) else {
            continue;
        };
        if let Some(in_transit) = in_transit {
            in_transit.add_permits(1);
        }
        if Instant::now() >= window.from {
            collected.delivered += 1;
            collected
                .latencies
                .record(window.clock.elapsed().saturating_sub(stamp.sent));
        }
    }
}

/// The header of a bench payload: magic, run, send time since the run's clock started (ns),
/// then zero padding up to [`PAYLOAD_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    run: u64,
    sent: Duration,
}

impl Stamp {
    fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
        payload.extend_from_slice(MAGIC);
        payload.extend_from_slice(&self.run.to_be_bytes());
        let nanos = u64::try_from(self.sent.as_nanos()).unwrap_or(u64::MAX);
        payload.extend_from_slice(&nanos.to_be_bytes());
        payload.resize(PAYLOAD_BYTES.max(STAMP_BYTES), 0);
        payload
    }

    /// `None` for anything that is not a bench payload.
    fn decode(payload: &[u8]) -> Option<Self> {
        let rest = payload.strip_prefix(MAGIC)?;
        let run = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let nanos = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
        Some(Self {
            run,
            sent: Duration::from_nanos(nanos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_the_payload() {
        let stamp = Stamp {
            run: 42,
            sent: Duration::from_nanos(1_234_567_891),
        };
        let payload = stamp.encode();
        assert_eq!(payload.len(), PAYLOAD_BYTES);
        assert_eq!(Stamp::decode(&payload), Some(stamp));
    }

    #[test]
    fn foreign_payloads_are_not_stamps() {
        assert_eq!(Stamp::decode(b""), None);
        assert_eq!(Stamp::decode(b"{\"readings\":[]}"), None);
        assert_eq!(Stamp::decode(b"ECSB\0\0\0"), None);
    }
}
