//! The reference: one QoS 1 hop through Mosquitto (publisher and subscriber in this process,
//! on loopback), at the rate and count the accepts ran at. A notification is at least one such
//! hop, so this is the floor the accept-to-phone latency is compared with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use uuid::Uuid;

use crate::bench::latency::{Latencies, LatencySummary};

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last messages get to arrive.
const SETTLE: Duration = Duration::from_secs(10);

/// What the reference measured.
#[derive(Debug, Clone)]
pub struct Reference {
    pub messages: usize,
    pub delivered: usize,
    pub latency: Option<LatencySummary>,
}

/// Sends `count` messages at `rate` a second from one client to another through the broker at
/// `addr` (`host:port`, plain MQTT, anonymous) and times each.
pub async fn run(addr: &str, count: usize, rate: f64) -> anyhow::Result<Reference> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("{addr:?} is not host:port"))?;
    let topic = format!("ecs-bench/notify/{}", Uuid::new_v4().simple());
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; count]));

    let (subscriber, mut sub_loop) = client(&host, port, "sub");
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .context("subscribing")?;
    tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("the subscriber failed: {e}")),
            }
        }
    })
    .await
    .context("the subscriber did not subscribe in time")??;

    let receiving = tokio::spawn({
        let sent = Arc::clone(&sent);
        async move {
            let mut latencies = Latencies::default();
            let mut delivered = 0;
            while delivered < count {
                let event = tokio::time::timeout(SETTLE, sub_loop.poll()).await;
                let Ok(event) = event else { break };
                let Ok(Event::Incoming(Packet::Publish(p))) = event else {
                    continue;
                };
                let arrived = Instant::now();
                let Some(index) = p
                    .payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b: [u8; 8]| u64::from_be_bytes(b) as usize)
                else {
                    continue;
                };
                let at = sent
                    .lock()
                    .ok()
                    .and_then(|s| s.get(index).copied().flatten());
                if let Some(at) = at {
                    latencies.record(arrived - at);
                    delivered += 1;
                }
            }
            (delivered, latencies)
        }
    });

    let (publisher, mut pub_loop) = client(&host, port, "pub");
    let driving = tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    for index in 0..count {
        tokio::time::sleep_until(start + interval * u32::try_from(index).unwrap_or(u32::MAX)).await;
        if let Ok(mut s) = sent.lock()
            && let Some(slot) = s.get_mut(index)
        {
            *slot = Some(Instant::now());
        }
        publisher
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                (index as u64).to_be_bytes().to_vec(),
            )
            .await
            .context("publishing")?;
    }
    let (delivered, latencies) = receiving.await.context("the subscriber task failed")?;
    let _ = publisher.disconnect().await;
    let _ = subscriber.disconnect().await;
    driving.abort();
    if delivered == 0 {
        bail!("no message came back through the broker at {addr}");
    }
    Ok(Reference {
        messages: count,
        delivered,
        latency: latencies.summary(),
    })
}

fn client(host: &str, port: u16, role: &str) -> (AsyncClient, EventLoop) {
    let id = format!("ecs-bench-notify-{role}-{}", Uuid::new_v4().simple());
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(options, 1024)
}
