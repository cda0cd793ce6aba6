//! Starting the broker: it comes up ready, or says clearly why it cannot.

use std::net::TcpListener;

use ecs_broker::{BrokerSettings, Error, PkiDir, RunningBroker, Secret};

fn fresh_settings() -> (tempfile::TempDir, BrokerSettings) {
    ecs_telemetry::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::init(dir.path(), &["127.0.0.1".to_owned()]).unwrap();
    let settings = BrokerSettings::loopback(&pki, Secret::new("startup-test-password")).unwrap();
    (dir, settings)
}

#[test]
fn a_started_broker_accepts_connections_on_every_listener() {
    let (_dir, settings) = fresh_settings();

    let broker = RunningBroker::start(&settings).unwrap();

    assert!(broker.is_running());
    assert_eq!(broker.device_addr(), settings.device_addr);
    assert_eq!(broker.service_addr(), settings.service_addr);
    assert_eq!(broker.admin_addr(), settings.admin_addr);
    for addr in [broker.device_addr(), broker.service_addr()] {
        std::net::TcpStream::connect(addr).unwrap();
    }
}

#[test]
fn a_stopped_broker_closes_its_listeners() {
    let (_dir, settings) = fresh_settings();
    let broker = RunningBroker::start(&settings).unwrap();
    let device = broker.device_addr();

    broker.stop();

    assert!(std::net::TcpStream::connect(device).is_err());
}

#[test]
fn port_zero_gets_a_port_and_reports_it() {
    let (_dir, mut settings) = fresh_settings();
    settings.device_addr = "127.0.0.1:0".parse().unwrap();
    settings.service_addr = "127.0.0.1:0".parse().unwrap();
    settings.admin_addr = None;

    let broker = RunningBroker::start(&settings).unwrap();

    assert_ne!(broker.device_addr().port(), 0);
    assert_ne!(broker.service_addr().port(), 0);
}

#[test]
fn a_taken_port_is_reported_instead_of_starting_half_a_broker() {
    let (_dir, settings) = fresh_settings();
    let _squatter = TcpListener::bind(settings.service_addr).unwrap();

    let error = RunningBroker::start(&settings).unwrap_err();

    assert!(
        matches!(error, Error::Bind { addr, .. } if addr == settings.service_addr),
        "{error}"
    );
}

#[test]
fn a_server_key_that_does_not_match_its_certificate_is_reported_at_start() {
    let (dir, mut settings) = fresh_settings();
    settings.tls_key_file = PkiDir::new(dir.path()).ca_key_path();

    let error = RunningBroker::start(&settings).unwrap_err();

    assert!(matches!(error, Error::TlsConfig { .. }), "{error}");
}

#[test]
fn a_missing_ca_file_is_reported_with_its_path() {
    let (dir, mut settings) = fresh_settings();
    settings.tls_ca_file = dir.path().join("nowhere.pem");

    let error = RunningBroker::start(&settings).unwrap_err();

    assert!(error.to_string().contains("nowhere.pem"), "{error}");
}
