//! Revoking a phone through the API cuts it off at the broker within seconds, and keeps it out.

use std::sync::Arc;
use std::time::Duration;

use ecs_protocol::DeviceId;
use ecs_simulator::mobile::ApiClient;
use ecs_simulator::stack::{BrokerChoice, Stack};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Revocation must take effect at the broker within this long (the promise).
const CUT_OFF: Duration = Duration::from_secs(5);

fn phone(stack: &Stack, device: &DeviceId) -> (AsyncClient, EventLoop) {
    let (url, tls) = stack.device_access(device).expect("device access");
    let tls = tls.expect("the embedded broker uses TLS");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&tls.ca_file).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut options = MqttOptions::new(device.as_str(), url.host.clone(), url.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    AsyncClient::new(options, 10)
}

/// Polls until the CONNACK (true) or the first error (false).
async fn connects(event_loop: &mut EventLoop) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), event_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return ack.code == rumqttc::ConnectReturnCode::Success;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_revoked_through_the_api_is_cut_off_within_seconds() {
    ecs_telemetry::install_crypto_provider();
    let (db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token).unwrap();
    let person = admin.create_user("Ana", true).await.unwrap();
    let device = DeviceId::parse("revokedphone1").unwrap();
    admin
        .register_device(person.user_id, Some(device.as_str()))
        .await
        .unwrap();
    let (_client, mut connection) = phone(&stack, &device);
    assert!(
        connects(&mut connection).await,
        "the phone connects before revocation"
    );

    let revoked = reqwest::Client::new()
        .delete(format!(
            "{}/v1/users/{}/devices/{device}",
            stack.api_base, person.user_id
        ))
        .bearer_auth(&person.api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);

    // The open connection is closed by the broker within the promise.
    let cut_off = tokio::time::timeout(CUT_OFF, async {
        loop {
            if connection.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        cut_off.is_ok(),
        "still connected {CUT_OFF:?} after the revocation"
    );

    // And it cannot come back, whatever its certificate says.
    let (_client, mut again) = phone(&stack, &device);
    assert!(!connects(&mut again).await, "a revoked phone reconnected");

    stack.stop().await;
    db.drop_now().await.unwrap();
}
