//! What an operator relies on: revocation, limits at their boundaries, metrics that match what
//! happened, CA rotation.

mod common;

use std::time::Duration;

use common::{SERVICE_PASSWORD, TestBroker, eventually};
use ecs_broker::{HandshakeOutcome, Listener, PkiDir, Violation};
use ecs_protocol::{Control, DeviceId, MAX_MESSAGE_BYTES, Revocations, encode_control, topic};

#[tokio::test]
async fn a_revoked_device_is_cut_off_and_refused_at_the_handshake() {
    let broker = TestBroker::start();
    let (victim, bystander) = (
        DeviceId::parse("lost").unwrap(),
        DeviceId::parse("kept").unwrap(),
    );
    let mut lost = broker.device(&victim).await.unwrap();
    let mut kept = broker.device(&bystander).await.unwrap();
    let cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();

    let list = encode_control(&Control::RevocationsV1(Revocations {
        device_ids: vec![victim.clone()],
    }))
    .unwrap();
    // The cloud sends the list again and again; so does this test, until the broker has it.
    let denylist = broker.broker.denylist().clone();
    let resend = tokio::spawn({
        let mqtt = cloud.mqtt.clone();
        async move {
            while !denylist.contains(&DeviceId::parse("lost").unwrap()) {
                let _ = mqtt
                    .publish(
                        topic::revocations(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        list.clone(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    lost.expect_disconnected().await;
    resend.await.unwrap();
    assert!(
        broker.device(&victim).await.is_err(),
        "a revoked device reconnected"
    );
    let metrics = broker.broker.metrics();
    eventually("the refusal is counted as revoked", || {
        metrics.handshakes(HandshakeOutcome::Revoked) == 1
    })
    .await;
    // The other device did not notice.
    kept.subscribe(&topic::downlink(&bystander)).await;
}

#[tokio::test]
async fn a_device_cannot_send_revocations() {
    let broker = TestBroker::start();
    let me = DeviceId::parse("sneaky").unwrap();
    let mut device = broker.device(&me).await.unwrap();
    let list = encode_control(&Control::RevocationsV1(Revocations {
        device_ids: vec![DeviceId::parse("victim").unwrap()],
    }))
    .unwrap();
    device
        .mqtt
        .publish(topic::revocations(), rumqttc::QoS::AtLeastOnce, false, list)
        .await
        .unwrap();
    device.expect_disconnected().await;
    assert!(broker.broker.denylist().is_empty());
}

#[tokio::test]
async fn the_metrics_of_a_short_run_match_what_happened() {
    let broker = TestBroker::start();
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut phone_a = broker.device(&a).await.unwrap();
    let _phone_b = broker.device(&b).await.unwrap();
    for i in 0..5u8 {
        phone_a.publish(&topic::uplink(&a), vec![i; 100]).await;
    }
    for _ in 0..5 {
        cloud.next_publish().await;
    }
    assert!(broker.service("cloud-2", "wrong-password").await.is_err());

    let (status, text) = broker.admin("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "ecs_broker_connections{listener=\"device\"} 2",
        "ecs_broker_connections{listener=\"service\"} 1",
        "ecs_broker_messages_in_total{listener=\"device\"} 5",
        "ecs_broker_bytes_in_total{listener=\"device\"} 500",
        "ecs_broker_messages_out_total{listener=\"service\"} 5",
        "ecs_broker_handshakes_total{outcome=\"ok\"} 2",
        "ecs_broker_refused_total{listener=\"service\",reason=\"not_authorized\"} 1",
        "ecs_broker_subscriptions{listener=\"service\"} 1",
        "ecs_broker_listener_up{listener=\"device\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }

    let (status, body) = broker.admin("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = broker.admin("/status").await;
    assert_eq!(status, 200);
    let status: ecs_broker::metrics::Status = serde_json::from_str(&body).unwrap();
    assert_eq!(status.top_talkers[0].client, "a");
}

#[tokio::test]
async fn payloads_at_the_limit_pass_and_over_it_cost_only_the_sender() {
    let broker = TestBroker::start();
    let (big, other) = (
        DeviceId::parse("big").unwrap(),
        DeviceId::parse("other").unwrap(),
    );
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut sender = broker.device(&big).await.unwrap();

    // Exactly the protocol's limit: forwarded at QoS 1 (with the packet id the broker adds),
    // and the cloud's connection takes it.
    sender
        .publish(&topic::uplink(&big), vec![7; MAX_MESSAGE_BYTES])
        .await;
    assert_eq!(cloud.next_publish().await.payload.len(), MAX_MESSAGE_BYTES);

    // One byte over: the sender is cut off, nobody else.
    sender
        .mqtt
        .publish(
            topic::uplink(&big),
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![7; MAX_MESSAGE_BYTES + 1],
        )
        .await
        .unwrap();
    sender.expect_disconnected().await;
    assert_eq!(
        broker.broker.metrics().violations(Violation::PayloadSize),
        1
    );

    let mut honest = broker.device(&other).await.unwrap();
    honest
        .publish(&topic::uplink(&other), b"still here".to_vec())
        .await;
    assert_eq!(cloud.next_publish().await.payload.as_ref(), b"still here");
}

#[tokio::test]
async fn a_flooding_device_is_slowed_to_its_rate_and_others_pass_it() {
    let broker = TestBroker::start_with(|s| s.device_message_rate = 50.0);
    let (flooder, honest) = (
        DeviceId::parse("flood").unwrap(),
        DeviceId::parse("calm").unwrap(),
    );
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let flood = broker.device(&flooder).await.unwrap();
    let mut calm = broker.device(&honest).await.unwrap();

    // 500 messages at once; the budget is a burst of 100 and then 50 a second.
    let sender = tokio::spawn({
        let mqtt = flood.mqtt.clone();
        let topic = topic::uplink(&flooder);
        async move {
            for _ in 0..500 {
                if mqtt
                    .publish(&topic, rumqttc::QoS::AtMostOnce, false, vec![0; 64])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    // Wait until the flood is under way, then the calm phone speaks once.
    let mut flood_seen = 0;
    while flood_seen < 100 {
        let p = cloud.next_publish().await;
        assert_eq!(p.topic, topic::uplink(&flooder));
        flood_seen += 1;
    }
    calm.publish(&topic::uplink(&honest), b"hello".to_vec())
        .await;
    loop {
        let p = cloud.next_publish().await;
        if p.topic == topic::uplink(&honest) {
            break;
        }
        flood_seen += 1;
    }
    // The calm phone's message arrived while most of the flood was still held back.
    assert!(flood_seen < 400, "{flood_seen} flood messages went first");
    sender.abort();
}

#[tokio::test]
async fn a_second_ca_in_the_ca_file_is_trusted_for_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let new_ca = PkiDir::init(dir.path().join("new"), &names).unwrap();
    let combined = dir.path().join("cas.pem");
    let broker = TestBroker::start_with(|settings| {
        let old = std::fs::read_to_string(&settings.tls_ca_file).unwrap();
        let new = std::fs::read_to_string(new_ca.ca_cert_path()).unwrap();
        std::fs::write(&combined, format!("{old}{new}")).unwrap();
        settings.tls_ca_file = combined.clone();
        // This test reconnects one device many times.
        settings.device_connect_rate = 1_000.0;
    });

    // A device of the old CA and one of the new both get in.
    broker
        .device(&DeviceId::parse("old").unwrap())
        .await
        .unwrap();
    let id = DeviceId::parse("new").unwrap();
    let files = new_ca.issue_device_files(&id).unwrap();
    let tls = common::tls_config(&broker.pki.ca_cert_path(), Some((&files.cert, &files.key)));
    common::Client::connect(broker.device_options("new", tls))
        .await
        .unwrap();

    // The old CA is retired by editing the file: the broker reloads it by itself.
    std::fs::copy(new_ca.ca_cert_path(), &combined).unwrap();
    let file = std::fs::File::options()
        .append(true)
        .open(&combined)
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if broker
            .device(&DeviceId::parse("old").unwrap())
            .await
            .is_err()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old CA is still trusted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = broker.broker.metrics();
    eventually("refused for its certificate", || {
        metrics.handshakes(HandshakeOutcome::BadCertificate) == 1
    })
    .await;
    assert_eq!(
        metrics.refusals(Listener::Device, ecs_broker::Refused::DeviceConnectRate),
        0
    );
}

#[tokio::test]
async fn stopping_the_broker_mid_stream_closes_every_connection() {
    let broker = TestBroker::start();
    let id = DeviceId::parse("streaming").unwrap();
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut phone = broker.device(&id).await.unwrap();
    let streaming = tokio::spawn({
        let mqtt = phone.mqtt.clone();
        async move {
            loop {
                if mqtt
                    .publish(
                        topic::uplink(&id),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        vec![1; 200],
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    cloud.next_publish().await;

    let TestBroker {
        broker: running,
        pki: _pki,
        settings,
        _dir,
    } = broker;
    let device_addr = running.device_addr();
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap();

    phone.expect_disconnected().await;
    cloud.expect_disconnected().await;
    assert!(tokio::net::TcpStream::connect(device_addr).await.is_err());
    assert!(
        tokio::net::TcpStream::connect(settings.service_addr)
            .await
            .is_err()
    );
    streaming.abort();
}
