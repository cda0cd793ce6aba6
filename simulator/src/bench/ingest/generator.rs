//! The cloud-only load generator: one service connection that publishes pre-encoded batches on
//! the devices' uplink topics and reads the cloud's acks on their downlink topics, keeping a
//! fixed number of batches per device published and not yet acked. So it goes exactly as fast
//! as the cloud commits, and no faster: the queues in front of ingest stay short.
//!
//! It runs on a thread and a runtime of its own, as the phones would be elsewhere: on the
//! bench's runtime it would compete with the cloud for the same scheduler.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use ecs_mqtt_link::{BrokerUrl, Scheme};
use ecs_protocol::{Ack, Downlink, decode_downlink, topic};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::uplinks::Uplinks;
use crate::bench::cloud::ServiceLogin;

/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch not acked within this is given up (counted) and the device's next one sent: the
/// cloud drops an ack only when its own queue to the broker is full.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Running totals, read by the bench at the edges of its window.
#[derive(Debug, Default)]
pub struct Totals {
    pub published_batches: AtomicU64,
    pub acked_readings: AtomicU64,
    /// Batches given up after [`ACK_TIMEOUT`].
    pub unacked_batches: AtomicU64,
    /// Every device ran out of batches: the rate measured after that is not the cloud's.
    pub exhausted: AtomicBool,
}

/// A running generator. Dropping it stops the generator without waiting (an interrupted run).
pub struct Generator {
    pub totals: Arc<Totals>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    done: oneshot::Receiver<anyhow::Result<()>>,
}

impl Generator {
    /// Connects, subscribes to every downlink, and starts publishing `in_flight` batches per
    /// device. Returns once the first batches are on their way.
    pub async fn start(
        login: ServiceLogin,
        uplinks: Arc<Uplinks>,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let totals = Arc::new(Totals::default());
        let stop = CancellationToken::new();
        let (ready_tx, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let (thread_totals, thread_stop) = (Arc::clone(&totals), stop.clone());
        std::thread::Builder::new()
            .name("bench-generator".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("the generator's runtime: {e}")));
                        return;
                    }
                };
                let outcome = runtime.block_on(generate(
                    login,
                    uplinks,
                    in_flight,
                    thread_totals,
                    ready_tx,
                    thread_stop,
                ));
                let _ = done_tx.send(outcome);
            })
            .context("starting the generator thread")?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT * 2, ready).await {
            Ok(Ok(Ok(()))) => Ok(Self {
                totals,
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
                done,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => match tokio::time::timeout(STOP_TIMEOUT, done).await {
                Ok(Ok(Err(e))) => Err(e),
                _ => bail!("the generator thread ended before it was ready"),
            },
            Err(_) => {
                stop.cancel();
                bail!(
                    "the generator was not ready within {:?}",
                    SUBSCRIBE_TIMEOUT * 2
                )
            }
        }
    }

    /// Stops publishing and closes the connection; an error is what ended it early, if
    /// anything did.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.done).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => bail!("the generator thread ended without a word"),
            Err(_) => bail!("the generator did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}

/// One device's batches: the next to publish, and those published and not yet acked.
#[derive(Debug, Default)]
struct Lane {
    next: usize,
    pending: VecDeque<(u64, Instant)>,
}

async fn generate(
    login: ServiceLogin,
    uplinks: Arc<Uplinks>,
    in_flight: usize,
    totals: Arc<Totals>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = match connect(&login, uplinks.devices().len(), in_flight).await {
        Ok(connected) => connected,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    // Downlink topic → device index, to route acks.
    let lanes_of: HashMap<String, usize> = uplinks
        .devices()
        .iter()
        .enumerate()
        .map(|(i, d)| (topic::downlink(&d.id), i))
        .collect();
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move { read_acks(&mut eventloop, &lanes_of, acks_tx).await });
    let topics: Vec<String> = uplinks
        .devices()
        .iter()
        .map(|d| topic::uplink(&d.id))
        .collect();
    let mut lanes: Vec<Lane> = (0..topics.len()).map(|_| Lane::default()).collect();
    let sender = Sender {
        client: &client,
        uplinks: &uplinks,
        topics: &topics,
        totals: &totals,
    };
    for (device, lane) in lanes.iter_mut().enumerate() {
        for _ in 0..in_flight {
            sender.publish_next(device, lane).await?;
        }
    }
    let _ = ready.send(Ok(()));
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            ack = acks.recv() => {
                let Some((device, ack)) = ack else {
                    break Err(anyhow!("the generator's connection ended"));
                };
                let Some(lane) = lanes.get_mut(device) else { continue };
                let Some(at) = lane.pending.iter().position(|(first, _)| *first == ack.first_seq) else {
                    continue; // An ack for a batch already given up.
                };
                lane.pending.remove(at);
                let readings = ack.up_to_seq.saturating_sub(ack.first_seq) + 1;
                totals.acked_readings.fetch_add(readings, Ordering::Relaxed);
                sender.publish_next(device, lane).await?;
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                for (device, lane) in lanes.iter_mut().enumerate() {
                    while lane.pending.front().is_some_and(|(_, sent)| now.duration_since(*sent) > ACK_TIMEOUT) {
                        lane.pending.pop_front();
                        totals.unacked_batches.fetch_add(1, Ordering::Relaxed);
                        sender.publish_next(device, lane).await?;
                    }
                }
                if lanes.iter().all(|l| l.next >= uplinks.batches_per_device()) {
                    totals.exhausted.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    reader.abort();
    let _ = client.try_disconnect();
    outcome
}

struct Sender<'a> {
    client: &'a AsyncClient,
    uplinks: &'a Uplinks,
    topics: &'a [String],
    totals: &'a Totals,
}

impl Sender<'_> {
    /// Publishes the device's next batch, if it has one left.
    async fn publish_next(&self, device: usize, lane: &mut Lane) -> anyhow::Result<()> {
        let (Some(payload), Some(topic)) = (
            self.uplinks.batch(device, lane.next),
            self.topics.get(device),
        ) else {
            return Ok(());
        };
        self.client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .map_err(|_| anyhow!("the generator's connection ended"))?;
        lane.pending
            .push_back((self.uplinks.first_seq(lane.next), Instant::now()));
        lane.next += 1;
        self.totals
            .published_batches
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Connects on the service listener and subscribes to every downlink, waiting for the SUBACK.
async fn connect(
    login: &ServiceLogin,
    devices: usize,
    in_flight: usize,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let client_id = format!("bench-generator-{}", ecs_protocol::DeviceId::random());
    let url = BrokerUrl::at(Scheme::Mqtt, login.addr);
    let mut options = ecs_mqtt_link::options(&client_id, &url, Duration::from_secs(60));
    let window = devices.saturating_mul(in_flight);
    options
        .set_credentials(login.username.clone(), login.password.expose())
        // Never the MQTT window that limits the pace: the application window does.
        .set_inflight(u16::try_from(window.clamp(100, 10_000)).unwrap_or(10_000));
    let (client, mut eventloop) = AsyncClient::new(options, window.clamp(64, 10_000));
    client
        .subscribe(topic::all_downlinks(), QoS::AtLeastOnce)
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
                "the generator could not connect to {} and subscribe",
                login.addr
            )
        }),
        Err(_) => bail!(
            "the generator got no SUBACK from {} within {SUBSCRIBE_TIMEOUT:?}",
            login.addr
        ),
    }
}

/// Polls the event loop (which also sends what the client queued) and forwards each ack with
/// its device's index, until the connection fails.
async fn read_acks(
    eventloop: &mut EventLoop,
    lanes_of: &HashMap<String, usize>,
    acks: mpsc::UnboundedSender<(usize, Ack)>,
) {
    loop {
        let message = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(message))) => message,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "the bench generator's connection failed");
                return; // Dropping `acks` tells the generator.
            }
        };
        let Some(&device) = lanes_of.get(&message.topic) else {
            continue;
        };
        if let Ok(Downlink::AckV1(ack)) = decode_downlink(&message.payload)
            && acks.send((device, ack)).is_err()
        {
            return;
        }
    }
}
