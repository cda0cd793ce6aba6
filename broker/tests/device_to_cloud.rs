//! The happy path: a provisioned device and the cloud exchange protocol messages through the
//! broker, each on its own listener.

mod common;

use common::{SERVICE_PASSWORD, TestBroker};
use ecs_protocol::{
    Ack, DeviceId, Downlink, Emotions, MAX_MESSAGE_BYTES, Reading, ReadingBatch, Uplink, topic,
};

fn batch(device: &DeviceId) -> Uplink {
    let reading = Reading {
        offset_ms: 0,
        emotions: Emotions {
            joy: 70,
            ..Emotions::default()
        },
        valence: 40,
        arousal: 50,
        dominance: 60,
        stress: 20,
        focus: 80,
        thoughts: Vec::new(),
    };
    Uplink::ReadingBatchV1(ReadingBatch {
        device_id: device.clone(),
        first_seq: 1,
        base_time_ms: 1_700_000_000_000,
        readings: vec![reading; 3],
    })
}

#[tokio::test]
async fn a_device_uplink_reaches_the_cloud_and_the_cloud_ack_reaches_the_device() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("phone1").unwrap();

    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut device = broker.device(&id).await.unwrap();
    device.subscribe(&topic::downlink(&id)).await;

    let sent = batch(&id);
    device
        .publish(
            &topic::uplink(&id),
            ecs_protocol::encode_uplink(&sent).unwrap(),
        )
        .await;

    let received = cloud.next_publish().await;
    assert_eq!(topic::device_of_uplink(&received.topic), Some(id.clone()));
    assert_eq!(
        ecs_protocol::decode_uplink(&received.payload).unwrap(),
        sent
    );

    let ack = Downlink::AckV1(Ack {
        first_seq: 1,
        up_to_seq: 3,
    });
    cloud
        .publish(
            &topic::downlink(&id),
            ecs_protocol::encode_downlink(&ack).unwrap(),
        )
        .await;

    let delivered = device.next_publish().await;
    assert_eq!(delivered.topic, topic::downlink(&id));
    assert_eq!(
        ecs_protocol::decode_downlink(&delivered.payload).unwrap(),
        ack
    );
}

#[tokio::test]
async fn a_message_of_the_largest_protocol_size_passes_the_broker() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("phone2").unwrap();
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut device = broker.device(&id).await.unwrap();

    let payload = vec![0xA5; MAX_MESSAGE_BYTES];
    device.publish(&topic::uplink(&id), payload.clone()).await;

    assert_eq!(
        cloud.next_publish().await.payload.as_ref(),
        payload.as_slice()
    );
}

#[tokio::test]
async fn cloud_replicas_in_one_group_share_the_uplinks_instead_of_each_getting_all() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("phone3").unwrap();
    let mut first = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    let mut second = broker.service("cloud-2", SERVICE_PASSWORD).await.unwrap();
    first.subscribe(&topic::shared_uplinks("ingest")).await;
    second.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut device = broker.device(&id).await.unwrap();

    let encoded = ecs_protocol::encode_uplink(&batch(&id)).unwrap();
    device.publish(&topic::uplink(&id), encoded.clone()).await;
    device.publish(&topic::uplink(&id), encoded).await;

    // Round robin: one message each, and no copies.
    first.next_publish().await;
    second.next_publish().await;
    first.expect_no_publish().await;
    second.expect_no_publish().await;
}

#[tokio::test]
async fn an_uplink_nobody_is_subscribed_to_is_acknowledged_and_dropped() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("phone4").unwrap();
    let mut device = broker.device(&id).await.unwrap();

    // PUBACK comes (the helper waits for it) although nobody will ever read this.
    device.publish(&topic::uplink(&id), b"early".to_vec()).await;
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    device.publish(&topic::uplink(&id), b"late".to_vec()).await;

    assert_eq!(cloud.next_publish().await.payload.as_ref(), b"late");
    cloud.expect_no_publish().await;
}

#[tokio::test]
async fn a_device_with_a_persistent_session_gets_the_downlinks_sent_while_it_was_away() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("phone5").unwrap();
    let mut options = broker.device_options_for(&id);
    options.set_clean_session(false);
    let mut device = common::Client::connect(options.clone()).await.unwrap();
    device.subscribe(&topic::downlink(&id)).await;
    device.mqtt.disconnect().await.unwrap();
    device.expect_disconnected().await;

    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud
        .publish(&topic::downlink(&id), b"while away".to_vec())
        .await;

    let mut device = common::Client::connect(options).await.unwrap();
    assert_eq!(device.next_publish().await.payload.as_ref(), b"while away");
}
