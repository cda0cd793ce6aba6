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
    "--service-password=hunter2",
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
    assert_eq!(settings.max_connections, 10_000);
    assert_eq!(settings.console_addr, None);
    settings.validate().unwrap();
    assert_eq!(settings.service_password().unwrap().expose(), "hunter2");
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
fn the_console_may_only_listen_on_loopback() {
    let loopback = parse(&["--console-addr=127.0.0.1:13030"]).unwrap();
    loopback.validate().unwrap();

    let public = parse(&["--console-addr=0.0.0.0:3030"]).unwrap();
    let error = public.validate().unwrap_err();
    assert!(matches!(
        error,
        Error::InvalidSetting {
            setting: "console address",
            ..
        }
    ));
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[test]
fn port_zero_and_shared_addresses_are_refused() {
    let mut settings = parse(&[]).unwrap();
    settings.device_addr = "127.0.0.1:0".parse().unwrap();
    assert!(settings.validate().is_err());

    let mut settings = parse(&[]).unwrap();
    settings.service_addr = settings.device_addr;
    assert!(settings.validate().is_err());

    let mut settings = parse(&[]).unwrap();
    settings.max_connections = 0;
    assert!(settings.validate().is_err());
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let settings = parse(&[]).unwrap();
    assert!(!format!("{settings:?}").contains("hunter2"));
}
