//! What a person starting the agent wrongly sees: one line on stderr naming what is wrong and the
//! flag or variable that fixes it, and a non-zero exit.

use std::process::{Command, Output};

fn edge_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
        .args(["--device-id", "phone1"])
        .args(args)
        // Nothing from the environment decides what these runs see.
        .env_remove("ECS_MQTT_URL")
        .env_remove("ECS_EDGE_DB")
        .env_remove("ECS_TLS_CA_FILE")
        .env_remove("ECS_TLS_CERT_FILE")
        .env_remove("ECS_TLS_KEY_FILE")
        .output()
        .unwrap()
}

/// The one line the agent printed on stderr, after checking it failed.
fn failure(args: &[&str]) -> String {
    let out = edge_agent(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    lines[0].to_owned()
}

#[test]
fn unusable_tls_files_are_named_with_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let db = path("edge.db");
    std::fs::write(path("junk.pem"), "not a certificate\n").unwrap();
    let tls = |ca: &str, cert: &str, key: &str| {
        failure(&[
            "--db",
            &db,
            "--tls-ca-file",
            ca,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
        ])
    };

    let missing = tls(&path("missing.pem"), &path("junk.pem"), &path("junk.pem"));
    assert!(missing.contains("missing.pem"), "{missing}");
    assert!(missing.contains("--tls-ca-file"), "{missing}");

    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(path("ca.pem"), issued.cert.pem()).unwrap();
    let no_cert = tls(&path("ca.pem"), &path("junk.pem"), &path("junk.pem"));
    assert!(no_cert.contains("--tls-cert-file"), "{no_cert}");

    std::fs::write(path("cert.pem"), issued.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(path("other-key.pem"), other.signing_key.serialize_pem()).unwrap();
    let mismatch = tls(&path("ca.pem"), &path("cert.pem"), &path("other-key.pem"));
    assert!(
        mismatch.contains("--tls-cert-file") && mismatch.contains("--tls-key-file"),
        "{mismatch}"
    );

    let none = failure(&["--db", &db]);
    assert!(
        none.contains("--tls-ca-file") && none.contains("--mqtt-url"),
        "{none}"
    );
}

#[test]
fn an_unusable_buffer_file_is_named_with_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ["--mqtt-url", "mqtt://127.0.0.1:1"];

    let nowhere = dir.path().join("no-such-dir").join("edge.db");
    let line = failure(&[&plain[..], &["--db", nowhere.to_str().unwrap()]].concat());
    assert!(
        line.contains("--db") && line.contains("ECS_EDGE_DB"),
        "{line}"
    );
    assert!(line.contains("cannot be opened or created"), "{line}");

    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, vec![0x5a; 8192]).unwrap();
    let line = failure(&[&plain[..], &["--db", damaged.to_str().unwrap()]].concat());
    assert!(line.contains("--db"), "{line}");
    assert!(line.contains("not an agent's SQLite file"), "{line}");
    // Nothing was written over it: what it held is still there to be looked at.
    assert_eq!(std::fs::read(&damaged).unwrap(), vec![0x5a; 8192]);
}
