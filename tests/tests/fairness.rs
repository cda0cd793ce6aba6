//! One phone never stalls everyone: a flooding phone, and a person whose row is held locked,
//! cost only themselves; the other phones' readings keep being stored and acked.
//!
//! Run over Mosquitto, which does not rate-limit devices as our broker does, so what is tested
//! is the cloud's own fairness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecs_protocol::{
    DeviceId, Downlink, Emotions, Reading, ReadingBatch, Uplink, decode_downlink, encode_uplink,
    topic,
};
use ecs_simulator::mobile::ApiClient;
use ecs_simulator::stack::BrokerChoice;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::Instant;

/// What "the usual lag" may grow to while another phone misbehaves, on a loaded test machine.
/// Before the per-device queue, a flood stalled every phone for minutes.
const USUAL_LAG: Duration = Duration::from_secs(5);

fn batch(device: &DeviceId, first_seq: u64, readings: usize) -> Vec<u8> {
    let reading = Reading {
        offset_ms: 0,
        emotions: Emotions {
            joy: 50,
            ..Emotions::default()
        },
        valence: 10,
        arousal: 40,
        dominance: 50,
        stress: 30,
        focus: 60,
        thoughts: Vec::new(),
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    encode_uplink(&Uplink::ReadingBatchV1(ReadingBatch {
        device_id: device.clone(),
        first_seq,
        base_time_ms: now_ms,
        readings: vec![reading; readings],
    }))
    .unwrap()
}

/// A phone speaking raw MQTT: publishes batches and records when each range was acked.
struct Phone {
    id: DeviceId,
    client: AsyncClient,
    /// first_seq → time from publish to ack.
    acked: Arc<Mutex<HashMap<u64, Duration>>>,
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Phone {
    async fn connect(id: DeviceId) -> Phone {
        let mut options = MqttOptions::new(id.as_str(), "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut events) = AsyncClient::new(options, 10_000);
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let mut connected_tx = Some(connected_tx);
        {
            let (acked, sent, client, id) =
                (acked.clone(), sent.clone(), client.clone(), id.clone());
            tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client
                                .subscribe(topic::downlink(&id), QoS::AtLeastOnce)
                                .await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = connected_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Ok(Downlink::AckV1(ack)) = decode_downlink(&p.payload) {
                                let sent_at = sent.lock().unwrap().get(&ack.first_seq).copied();
                                if let Some(at) = sent_at {
                                    acked
                                        .lock()
                                        .unwrap()
                                        .entry(ack.first_seq)
                                        .or_insert(at.elapsed());
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .expect("phone subscribed")
            .unwrap();
        Phone {
            id,
            client,
            acked,
            sent,
        }
    }

    async fn publish(&self, first_seq: u64, readings: usize, qos: QoS) {
        self.sent.lock().unwrap().insert(first_seq, Instant::now());
        let _ = self
            .client
            .publish(
                topic::uplink(&self.id),
                qos,
                false,
                batch(&self.id, first_seq, readings),
            )
            .await;
    }

    /// Publishes `count` batches, one every `every`, from `first_seq` on.
    async fn stream(&self, first_seq: u64, count: u64, every: Duration) {
        for i in 0..count {
            self.publish(first_seq + i * 10, 10, QoS::AtLeastOnce).await;
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until every range sent from `first_seq` on is acked, and returns the worst lag.
    async fn worst_lag(&self, from_seq: u64, count: u64) -> Duration {
        let deadline = Instant::now() + USUAL_LAG + Duration::from_secs(5);
        loop {
            let acked = self.acked.lock().unwrap().clone();
            let lags: Vec<Duration> = (0..count)
                .filter_map(|i| acked.get(&(from_seq + i * 10)).copied())
                .collect();
            if lags.len() as u64 == count {
                return lags.into_iter().max().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} of {count} batches acked",
                self.id,
                lags.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn person_with_phone(admin: &ApiClient, name: &str) -> (uuid::Uuid, DeviceId) {
    let person = admin.create_user(name, true).await.unwrap();
    let device = DeviceId::random();
    admin
        .register_device(person.user_id, Some(device.as_str()))
        .await
        .unwrap();
    (person.user_id, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_phone_and_a_locked_person_cost_only_themselves() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) =
        ecs_tests::ready_stack(BrokerChoice::External("mqtt://127.0.0.1:1883".into())).await;
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let (_, flood_id) = person_with_phone(&admin, "Flávia").await;
    let (locked_user, locked_id) = person_with_phone(&admin, "Lúcio").await;
    let (_, calm_a) = person_with_phone(&admin, "Ana").await;
    let (_, calm_b) = person_with_phone(&admin, "Bruno").await;
    let flooder = Phone::connect(flood_id.clone()).await;
    let locked = Phone::connect(locked_id).await;
    let calm = [Phone::connect(calm_a).await, Phone::connect(calm_b).await];

    // 1. A flood: 5 000 one-reading batches at once from one phone.
    for seq in 1..=5_000u64 {
        flooder.publish(seq, 1, QoS::AtMostOnce).await;
    }
    let every = Duration::from_millis(200);
    tokio::join!(calm[0].stream(1, 10, every), calm[1].stream(1, 10, every));
    for phone in &calm {
        let lag = phone.worst_lag(1, 10).await;
        assert!(
            lag < USUAL_LAG,
            "{} waited {lag:?} behind the flood",
            phone.id
        );
    }

    // 2. One person's row held for 20 s (as a long erasure would): their phone keeps sending.
    let mut holder = stack.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
        .bind(locked_user)
        .execute(&mut *holder)
        .await
        .unwrap();
    let locked_stream = locked.stream(1, 200, Duration::from_millis(100));
    let calm_streams = async {
        tokio::join!(
            calm[0].stream(1_001, 100, every),
            calm[1].stream(1_001, 100, every)
        );
    };
    tokio::join!(locked_stream, calm_streams);
    for phone in &calm {
        let lag = phone.worst_lag(1_001, 100).await;
        assert!(
            lag < USUAL_LAG,
            "{} waited {lag:?} behind a locked person",
            phone.id
        );
    }
    holder.rollback().await.unwrap();

    // Whatever the flooder was told is stored is stored: an ack is never a lie.
    let acked: Vec<u64> = flooder.acked.lock().unwrap().keys().copied().collect();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emotion_readings WHERE device_id = $1 AND seq = ANY($2)",
    )
    .bind(flood_id.as_str())
    .bind(acked.iter().map(|s| *s as i64).collect::<Vec<_>>())
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(stored as usize, acked.len());

    stack.stop().await;
    db.drop_now().await.unwrap();
}
