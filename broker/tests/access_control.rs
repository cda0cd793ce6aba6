//! Who gets in, and what they may touch once inside.

mod common;

use common::{SERVICE_PASSWORD, TestBroker, eventually, tls_config};
use ecs_broker::{CertificateAuthority, HandshakeOutcome, Listener, Refused, Violation};
use ecs_protocol::{DeviceId, topic};
use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};

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
async fn a_device_cannot_publish_on_its_own_downlink() {
    let broker = TestBroker::start();
    let me = DeviceId::parse("forger").unwrap();
    let mut cloud = broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    cloud.subscribe(&topic::all_downlinks()).await;
    let mut device = broker.device(&me).await.unwrap();

    device
        .mqtt
        .publish(
            topic::downlink(&me),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"fake ack".to_vec(),
        )
        .await
        .unwrap();

    device.expect_disconnected().await;
    cloud.expect_no_publish().await;
    assert_eq!(
        broker.broker.metrics().violations(Violation::PublishTopic),
        1
    );
}

#[tokio::test]
async fn a_device_subscribes_to_nothing_but_its_own_downlink() {
    let broker = TestBroker::start();
    let me = DeviceId::parse("curious").unwrap();
    for filter in [
        "#",
        "/tenants/curious/#",
        &topic::uplink(&me),
        &topic::revocations(),
    ] {
        let mut device = broker.device(&me).await.unwrap();
        device
            .mqtt
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        device.expect_disconnected().await;
    }
    assert_eq!(
        broker
            .broker
            .metrics()
            .violations(Violation::SubscribeFilter),
        4
    );
    // Its own downlink is fine.
    let mut device = broker.device(&me).await.unwrap();
    device.subscribe(&topic::downlink(&me)).await;
}

#[tokio::test]
async fn a_device_cannot_publish_a_retained_message() {
    let broker = TestBroker::start();
    let me = DeviceId::parse("sticky").unwrap();
    let mut device = broker.device(&me).await.unwrap();
    device
        .mqtt
        .publish(
            topic::uplink(&me),
            rumqttc::QoS::AtLeastOnce,
            true,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    device.expect_disconnected().await;
    assert_eq!(broker.broker.metrics().violations(Violation::Retain), 1);
}

#[tokio::test]
async fn a_tls_client_without_a_client_certificate_is_refused() {
    let broker = TestBroker::start();
    let tls = tls_config(&broker.pki.ca_cert_path(), None);

    let result = common::Client::connect(broker.device_options("anonymous", tls)).await;

    assert!(result.is_err(), "connected without a client certificate");
    eventually("counted as no certificate", || {
        broker
            .broker
            .metrics()
            .handshakes(HandshakeOutcome::NoCertificate)
            == 1
    })
    .await;
}

/// Writes a device certificate signed by `issuer` (or by its own key when `None`), valid
/// between the two offsets from now, and returns its files.
fn forged_certificate(
    dir: &std::path::Path,
    device: &str,
    issuer: Option<&Issuer<'static, KeyPair>>,
    valid: (time::Duration, time::Duration),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, device);
    params
        .distinguished_name
        .push(DnType::OrganizationName, device);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + valid.0;
    params.not_after = now + valid.1;
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let (cert_path, key_path) = (
        dir.join(format!("{device}.pem")),
        dir.join(format!("{device}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn self_signed_and_expired_certificates_are_refused_and_counted() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let day = time::Duration::days(1);

    let (cert, key) = forged_certificate(dir.path(), "selfmade", None, (-day, day));
    let tls = tls_config(&broker.pki.ca_cert_path(), Some((&cert, &key)));
    assert!(
        common::Client::connect(broker.device_options("selfmade", tls))
            .await
            .is_err()
    );

    // Signed by the real CA, but expired yesterday.
    let ca_pem = std::fs::read_to_string(broker.pki.ca_cert_path()).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(broker.pki.ca_key_path()).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let (cert, key) = forged_certificate(dir.path(), "stale", Some(&issuer), (-day * 30, -day));
    let tls = tls_config(&broker.pki.ca_cert_path(), Some((&cert, &key)));
    assert!(
        common::Client::connect(broker.device_options("stale", tls))
            .await
            .is_err()
    );

    let metrics = broker.broker.metrics();
    eventually("both refusals counted", || {
        metrics.handshakes(HandshakeOutcome::BadCertificate) == 1
            && metrics.handshakes(HandshakeOutcome::Expired) == 1
    })
    .await;
    assert_eq!(metrics.handshakes(HandshakeOutcome::Ok), 0);
}

#[tokio::test]
async fn a_certificate_whose_names_disagree_is_refused() {
    // CN and O must both be the device id: a certificate naming two devices is nobody's.
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = std::fs::read_to_string(broker.pki.ca_cert_path()).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(broker.pki.ca_key_path()).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "bob");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let tls = tls_config(&broker.pki.ca_cert_path(), Some((&cert_path, &key_path)));

    assert!(
        common::Client::connect(broker.device_options("alice", tls))
            .await
            .is_err()
    );
    eventually("counted", || {
        broker
            .broker
            .metrics()
            .handshakes(HandshakeOutcome::BadCertificate)
            == 1
    })
    .await;
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
async fn wrong_passwords_are_answered_slowly_and_never_lock_out_the_right_one() {
    let broker = TestBroker::start();
    // Eight guesses at once from one address: each is answered only after the delay.
    let started = std::time::Instant::now();
    let addr = broker.broker.service_addr();
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..8 {
        let mut options =
            rumqttc::MqttOptions::new(format!("guesser{i}"), addr.ip().to_string(), addr.port());
        options.set_credentials("ecs-cloud", "wrong-guess");
        guesses.spawn(async move { common::Client::connect(options).await.is_err() });
    }
    while let Some(refused) = guesses.join_next().await {
        assert!(refused.unwrap(), "a wrong password got in");
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "answered too fast"
    );

    // The right password, from the same address, right after: accepted at once.
    broker.service("cloud-1", SERVICE_PASSWORD).await.unwrap();
    let metrics = broker.broker.metrics();
    assert_eq!(
        metrics.refusals(Listener::Service, Refused::NotAuthorized),
        8
    );
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
