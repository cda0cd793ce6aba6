//! A phone that cannot reach the broker says why, for a person, naming the setting that would
//! fix it: against the real broker, with the TLS mistakes people make.

use std::time::Duration;

use ecs_broker::CertificateAuthority;
use ecs_edge_agent::{Agent, AgentConfig, AgentHandle, TlsFiles};
use ecs_protocol::DeviceId;
use ecs_simulator::stack::BrokerChoice;

/// How long a phone gets to fail its first attempt.
const WAIT: Duration = Duration::from_secs(20);

/// The agent's explanation of its first failed attempt; the agent is stopped after.
async fn problem_of(config: AgentConfig) -> String {
    let agent: AgentHandle = Agent::start(config).await.expect("the phone starts");
    let started = tokio::time::Instant::now();
    let problem = loop {
        if let Some(problem) = agent.connection_problem() {
            break problem;
        }
        assert!(!agent.stats().connected, "it connected");
        assert!(
            started.elapsed() < WAIT,
            "no attempt failed within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    agent.shutdown().await.unwrap();
    eprintln!("the phone says: {problem}");
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_are_explained_with_the_setting_that_fixes_them() {
    ecs_telemetry::install_crypto_provider();
    let (_db, stack) = ecs_tests::ready_stack(BrokerChoice::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::parse("misconfigured1").unwrap();
    let (url, tls) = stack.device_access(&device).unwrap();
    let tls = tls.expect("the embedded broker uses TLS");
    let foreign = CertificateAuthority::generate("someone else's CA").unwrap();
    let foreign_ca = dir.path().join("foreign-ca.pem");
    std::fs::write(&foreign_ca, foreign.cert_pem()).unwrap();
    let config = |name: &str, tls: TlsFiles| {
        let mut config = AgentConfig::new(device.clone(), url.clone());
        config.tls = Some(tls);
        config.db_path = dir.path().join(format!("{name}.db"));
        config
    };

    // The phone trusts another CA than the one that signed the broker's certificate.
    let problem = problem_of(config(
        "wrong-ca",
        TlsFiles {
            ca_file: foreign_ca.clone(),
            ..tls.clone()
        },
    ))
    .await;
    assert!(problem.contains("--tls-ca-file"), "{problem}");
    assert!(problem.contains("not trusted"), "{problem}");

    // The phone's certificate was issued by a CA the broker does not take devices from.
    let issued = foreign.issue_device(&device).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, issued.cert_pem).unwrap();
    std::fs::write(&key_file, issued.key_pem).unwrap();
    let problem = problem_of(config(
        "foreign-cert",
        TlsFiles {
            cert_file,
            key_file,
            ..tls.clone()
        },
    ))
    .await;
    assert!(problem.contains("--tls-cert-file"), "{problem}");
    assert!(problem.contains("refused"), "{problem}");

    // Nothing listens where the phone looks.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut nowhere = config("nowhere", tls);
    nowhere.broker = format!("mqtts://127.0.0.1:{port}").parse().unwrap();
    let problem = problem_of(nowhere).await;
    assert!(problem.contains("--mqtt-url"), "{problem}");
    assert!(problem.contains("nothing listens"), "{problem}");
    stack.stop().await;
}
