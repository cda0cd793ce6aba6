use clap::Parser;

use super::*;

/// The settings as `ecs-broker serve` parses them, without touching the process environment.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    settings: BrokerSettings,
}

const TLS_FLAGS: [&str; 7] = [
    "ecs-broker",
    "--tls-ca-file=ca.pem",
    "--tls-cert-file=server.pem",
    "--tls-key-file=server.key",
    "--service-password=hunter2-hunter2-hunter2",
    "--device-addr=0.0.0.0:18883",
    "--service-addr=127.0.0.1:11884",
];

fn parse(extra: &[&str]) -> std::result::Result<BrokerSettings, clap::Error> {
    let args = TLS_FLAGS.iter().chain(extra).copied();
    Cli::try_parse_from(args).map(|cli| cli.settings)
}

#[test]
fn flags_parse_into_valid_settings_with_documented_defaults() {
    let settings = parse(&[]).unwrap();
    assert_eq!(settings.service_username, "ecs-cloud");
    assert_eq!(settings.max_device_connections, 10_000);
    assert_eq!(settings.admin_addr, Some("127.0.0.1:8885".parse().unwrap()));
    assert_eq!(settings.handshake_timeout_ms, 10_000);
    assert!(!settings.dev_mode);
    settings.validate().unwrap();
    assert_eq!(
        settings.service_password().unwrap().expose(),
        "hunter2-hunter2-hunter2"
    );
}

#[test]
fn a_password_or_a_password_file_is_required_but_not_both() {
    let without = Cli::try_parse_from(&TLS_FLAGS[..4]);
    assert!(without.is_err());
    assert!(parse(&["--service-password-file=pw"]).is_err());
}

#[test]
fn the_password_file_is_read_without_its_trailing_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("password");
    std::fs::write(&path, "from-file\n").unwrap();
    let mut settings = parse(&[]).unwrap();
    settings.service_password = None;
    settings.service_password_file = Some(path);

    assert_eq!(settings.service_password().unwrap().expose(), "from-file");
}

#[test]
fn an_empty_password_is_refused() {
    let mut settings = parse(&[]).unwrap();
    settings.service_password = Some(Secret::new(""));
    assert!(matches!(
        settings.validate(),
        Err(Error::InvalidSetting {
            setting: "service password",
            ..
        })
    ));
}

#[test]
fn the_admin_endpoint_may_only_listen_on_loopback() {
    let loopback = parse(&["--admin-addr=127.0.0.1:13030"]).unwrap();
    loopback.validate().unwrap();

    let public = parse(&["--admin-addr=0.0.0.0:3030"]).unwrap();
    let error = public.validate().unwrap_err();
    assert!(matches!(
        error,
        Error::InvalidSetting {
            setting: "admin address",
            ..
        }
    ));
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[test]
fn a_weak_service_password_is_refused_outside_development_mode() {
    let mut weak = parse(&[]).unwrap();
    weak.service_password = Some(Secret::new("change-me"));
    let error = weak.validate().unwrap_err();
    assert!(error.to_string().contains("at least 16"), "{error}");
    assert!(error.to_string().contains("ECS_BROKER_DEV_MODE"), "{error}");

    let mut dev = parse(&["--dev-mode"]).unwrap();
    dev.service_password = Some(Secret::new("change-me"));
    dev.validate().unwrap();
}

#[test]
fn shared_addresses_zero_caps_and_silly_rates_are_refused() {
    let mut settings = parse(&[]).unwrap();
    settings.service_addr = settings.device_addr;
    assert!(settings.validate().is_err());

    let mut settings = parse(&[]).unwrap();
    settings.max_device_connections = 0;
    assert!(settings.validate().is_err());

    let mut settings = parse(&[]).unwrap();
    settings.handshake_timeout_ms = 0;
    assert!(settings.validate().is_err());

    let mut settings = parse(&[]).unwrap();
    settings.device_message_rate = f64::NAN;
    assert!(settings.validate().is_err());
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let settings = parse(&[]).unwrap();
    assert!(!format!("{settings:?}").contains("hunter2"));
}
