//! A stand-in for the cloud, speaking plain MQTT to the real Mosquitto on 127.0.0.1:1883.
//!
//! The tests need that broker (CI runs it). If it is not there they fail, loudly, instead of
//! skipping. Not every test crate uses every helper.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ecs_edge_agent::{AgentConfig, BrokerUrl};
use ecs_protocol::{
    Ack, DeviceId, Downlink, MAX_PACKET_BYTES, ReadingBatch, Uplink, decode_uplink,
    encode_downlink, topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

pub const MOSQUITTO: &str = "mqtt://127.0.0.1:1883";

/// A quick agent: 50 Hz, small batches, short timers.
pub fn agent_config(device: &DeviceId, db: &Path) -> AgentConfig {
    // What every binary does first; these tests speak plain MQTT, but the process should look
    // like production.
    ecs_telemetry::install_crypto_provider();
    let broker: BrokerUrl = MOSQUITTO.parse().expect("valid url");
    let mut config = AgentConfig::new(device.clone(), broker);
    config.db_path = db.to_path_buf();
    config.sample_rate_hz = 50.0;
    config.batch_size = 20;
    config.flush_interval = Duration::from_millis(100);
    config.ack_timeout = Duration::from_secs(5);
    config
}

/// Subscribes to one device's uplink, decodes what arrives, and (when `auto_ack` is on)
/// acknowledges every batch the way the real cloud does after committing it.
pub struct TestCloud {
    device: DeviceId,
    client: AsyncClient,
    uplinks: mpsc::UnboundedReceiver<Uplink>,
    pub auto_ack: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestCloud {
    pub async fn connect(device: &DeviceId, auto_ack: bool) -> Self {
        let client_id = format!("cloud{}", DeviceId::random());
        let mut options = MqttOptions::new(client_id, "127.0.0.1", 1883);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        client
            .subscribe(topic::uplink(device), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        let subscribed = timeout(Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return,
                    Ok(_) => {}
                    Err(e) => panic!(
                        "these tests need Mosquitto listening on 127.0.0.1:1883 (plain MQTT, \
                         anonymous); connecting failed: {e}"
                    ),
                }
            }
        })
        .await;
        assert!(
            subscribed.is_ok(),
            "Mosquitto on 127.0.0.1:1883 did not confirm the subscription within 5 s"
        );

        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if raw_tx.send(p.payload.to_vec()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });

        // Acks are published from a separate task: publishing from the task that polls the
        // event loop could wait forever on a full request queue.
        let auto_ack = Arc::new(AtomicBool::new(auto_ack));
        let (tx, uplinks) = mpsc::unbounded_channel();
        let logic = {
            let (client, auto_ack, device) = (client.clone(), auto_ack.clone(), device.clone());
            tokio::spawn(async move {
                while let Some(payload) = raw_rx.recv().await {
                    let uplink =
                        match decode_uplink(&payload).expect("agent sent an undecodable uplink") {
                            // Seen as the batch it packs, so tests look at readings, not wire bytes.
                            Uplink::ReadingBatchV2(packed) | Uplink::ReadingBatchV3(packed) => {
                                Uplink::ReadingBatchV1(
                                    packed.unpack().expect("agent sent unpackable readings"),
                                )
                            }
                            other => other,
                        };
                    if let Uplink::ReadingBatchV1(batch) = &uplink
                        && auto_ack.load(Ordering::SeqCst)
                    {
                        let ack = Ack {
                            first_seq: batch.first_seq,
                            up_to_seq: batch.last_seq(),
                        };
                        publish(&client, &device, &Downlink::AckV1(ack)).await;
                    }
                    if tx.send(uplink).is_err() {
                        return;
                    }
                }
            })
        };
        Self {
            device: device.clone(),
            client,
            uplinks,
            auto_ack,
            tasks: vec![pump, logic],
        }
    }

    /// The next message from the device, or `None` if none came `within`.
    pub async fn next_uplink(&mut self, within: Duration) -> Option<Uplink> {
        timeout(within, self.uplinks.recv()).await.ok().flatten()
    }

    /// The next reading batch (skipping other messages), failing the test if none comes.
    pub async fn next_batch(&mut self, within: Duration) -> ReadingBatch {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_uplink(left).await {
                Some(Uplink::ReadingBatchV1(batch)) => return batch,
                Some(_) => {}
                None => panic!("no reading batch within {within:?}"),
            }
        }
    }

    /// Every batch that arrives `within`, checked to be valid and from our device.
    pub async fn batches_for(&mut self, within: Duration) -> Vec<ReadingBatch> {
        let deadline = Instant::now() + within;
        let mut batches = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_uplink(left).await {
                Some(Uplink::ReadingBatchV1(batch)) => {
                    assert_eq!(batch.validate(), Ok(()));
                    assert_eq!(batch.device_id, self.device);
                    batches.push(batch);
                }
                Some(_) => {}
                None => return batches,
            }
        }
    }

    /// Publishes a downlink message to the device, as the cloud would.
    pub async fn send(&self, message: &Downlink) {
        publish(&self.client, &self.device, message).await;
    }

    /// Publishes raw bytes on the device's downlink topic.
    pub async fn send_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(
                topic::downlink(&self.device),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("queue publish");
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn publish(client: &AsyncClient, device: &DeviceId, message: &Downlink) {
    let payload = encode_downlink(message).expect("encode downlink");
    client
        .publish(topic::downlink(device), QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue publish");
}

/// The seqs a set of batches covers.
pub fn seqs(batches: &[ReadingBatch]) -> BTreeSet<u64> {
    batches
        .iter()
        .flat_map(|b| b.first_seq..=b.last_seq())
        .collect()
}

/// Waits until `condition` holds, failing the test with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The phone's network: a TCP proxy in front of Mosquitto that the test can cut, or make
/// *deaf* (new connections pass the broker's CONNACK to the phone, then nothing more).
///
/// Deafness is how a test withholds acks reliably. Keeping its own cloud quiet is not enough on
/// a shared broker: any `ecs-cloud` connected to it receives every device's uplinks through its
/// shared subscription, and acknowledges even the batches of devices it does not know (it
/// dead-letters them), so our readings could be deleted by someone else's ack.
pub struct PhoneNetwork {
    pub port: u16,
    deaf: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    /// Frames written to the phone of the newest connection, whatever the broker says (a
    /// forger on the phone's path).
    inject: Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>>,
}

impl PhoneNetwork {
    pub async fn start(deaf: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let deaf = Arc::new(AtomicBool::new(deaf));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let inject = Arc::new(std::sync::Mutex::new(None));
        let accept = {
            let (deaf, links, inject) =
                (Arc::clone(&deaf), Arc::clone(&links), Arc::clone(&inject));
            tokio::spawn(async move {
                while let Ok((phone, _)) = listener.accept().await {
                    let (tx, rx) = mpsc::unbounded_channel();
                    *inject.lock().unwrap() = Some(tx);
                    let link = tokio::spawn(relay(phone, deaf.load(Ordering::SeqCst), rx));
                    links.lock().unwrap().push(link);
                }
            })
        };
        Self {
            port,
            deaf,
            links,
            accept,
            inject,
        }
    }

    /// Writes `message` to the phone of the newest connection as a QoS 0 PUBLISH on its
    /// downlink topic, as if the broker had forwarded it. For deaf networks: on a hearing one
    /// the frame could land inside a packet the broker is passing.
    pub fn inject(&self, device: &DeviceId, message: &Downlink) {
        let topic = topic::downlink(device);
        let payload = encode_downlink(message).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&payload);
        let mut frame = vec![0x30];
        let mut len = body.len();
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            frame.push(byte);
            if len == 0 {
                break;
            }
        }
        frame.extend_from_slice(&body);
        let sender = self.inject.lock().unwrap();
        sender
            .as_ref()
            .expect("a phone is connected")
            .send(frame)
            .unwrap();
    }

    /// The broker URL that reaches Mosquitto through this network.
    pub fn url(&self) -> BrokerUrl {
        format!("mqtt://127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// Applies to connections made from now on (see [`PhoneNetwork::cut`]).
    pub fn set_deaf(&self, deaf: bool) {
        self.deaf.store(deaf, Ordering::SeqCst);
    }

    /// Closes every open connection; the phone's reconnects are accepted again.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for PhoneNetwork {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Relays one phone connection to Mosquitto until either side closes; `injected` frames go to
/// the phone as they come.
async fn relay(
    phone: tokio::net::TcpStream,
    deaf: bool,
    mut injected: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:1883").await else {
        return;
    };
    let (mut phone_rx, mut phone_tx) = phone.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    let up = tokio::io::copy(&mut phone_rx, &mut broker_tx);
    let down = async {
        // An MQTT 3.1.1 CONNACK is exactly 4 bytes: pass it first, then interleave.
        let mut connack = [0u8; 4];
        broker_rx.read_exact(&mut connack).await?;
        phone_tx.write_all(&connack).await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                n = broker_rx.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    // Deaf: everything after the CONNACK is swallowed.
                    if !deaf {
                        phone_tx.write_all(&buf[..n]).await?;
                    }
                }
                Some(frame) = injected.recv() => phone_tx.write_all(&frame).await?,
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
