//! Who gets in, and what they may touch once inside.

mod common;

use common::{SERVICE_PASSWORD, TestBroker, tls_config};
use ecs_broker::CertificateAuthority;
use ecs_protocol::{DeviceId, topic};

#[tokio::test]
async fn a_device_cannot_publish_as_another_device() {
    let broker = TestBroker::start();
    let (mallory, victim) = (
        DeviceId::parse("mallory").unwrap(),
        DeviceId::parse("victim").unwrap(),
    );
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::shared_uplinks("ingest")).await;
    let mut attacker = broker.device(&mallory).await.unwrap();
    let mut honest = broker.device(&victim).await.unwrap();

    attacker
        .mqtt
        .publish(
            topic::uplink(&victim),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    // rumqttd answers a publish outside the tenant's prefix by dropping the connection.
    attacker.expect_disconnected().await;

    honest
        .publish(&topic::uplink(&victim), b"genuine".to_vec())
        .await;
    let first = cloud.next_publish().await;
    assert_eq!(first.payload.as_ref(), b"genuine");
    cloud.expect_no_publish().await;
}

#[tokio::test]
async fn a_device_cannot_read_another_devices_downlink() {
    let broker = TestBroker::start();
    let (mallory, victim) = (
        DeviceId::parse("mallory").unwrap(),
        DeviceId::parse("victim").unwrap(),
    );
    let mut attacker = broker.device(&mallory).await.unwrap();

    attacker
        .mqtt
        .subscribe(topic::downlink(&victim), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    attacker.expect_disconnected().await;

    let mut attacker = broker.device(&mallory).await.unwrap();
    attacker
        .mqtt
        .subscribe("/tenants/+/ecs/v1/down", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    attacker.expect_disconnected().await;
}

#[tokio::test]
async fn a_tls_client_without_a_client_certificate_is_refused() {
    let broker = TestBroker::start();
    let tls = tls_config(&broker.pki.ca_cert_path(), None);

    let result = common::Client::connect(broker.device_options("anonymous", tls)).await;

    assert!(result.is_err(), "connected without a client certificate");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let broker = TestBroker::start();
    let impostor_ca = CertificateAuthority::generate("impostor CA").unwrap();
    let issued = impostor_ca
        .issue_device(&DeviceId::parse("phone1").unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let tls = tls_config(&broker.pki.ca_cert_path(), Some((&cert, &key)));

    let result = common::Client::connect(broker.device_options("phone1", tls)).await;

    assert!(result.is_err(), "connected with a foreign certificate");
}

#[tokio::test]
async fn a_service_with_a_wrong_password_is_refused() {
    let broker = TestBroker::start();

    let refused = broker.service("cloud-1", "not-the-password").await;
    assert!(refused.is_err(), "connected with a wrong password");

    // The listener still serves the right password afterwards.
    broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_service_without_credentials_is_refused() {
    let broker = TestBroker::start();
    let options = rumqttc::MqttOptions::new(
        "anonymous",
        broker.broker.service_addr().ip().to_string(),
        broker.broker.service_addr().port(),
    );

    let result = common::Client::connect(options).await;

    assert!(result.is_err(), "connected without credentials");
}
