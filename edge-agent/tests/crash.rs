//! The agent killed with SIGKILL mid-stream and started again: the loss is counted, by the
//! sensor's clock, and shown by `ecs-edge-agent status`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::MOSQUITTO;

const HZ: f64 = 50.0;

fn start(db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
        .args([
            "--device-id",
            "crashphone1",
            "--mqtt-url",
            MOSQUITTO,
            "--db",
            db,
        ])
        .args(["--sample-hz", &HZ.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn status(db: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
        .args(["status", "--db", db, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the agent has stored readings in its file.
fn wait_for_readings(db: &str, more_than: u64) {
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(50));
        if std::path::Path::new(db).exists() && status(db)["buffered"].as_u64() > Some(more_than) {
            return;
        }
    }
    panic!("the agent stored nothing");
}

#[test]
fn a_sigkilled_agent_s_loss_is_counted_when_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db").to_str().unwrap().to_owned();

    let mut first = start(&db);
    wait_for_readings(&db, 20);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert_eq!(
        status(&db)["run_state"],
        "running",
        "it did not stop cleanly"
    );
    let buffered_at_kill = status(&db)["buffered"].as_u64().unwrap();
    let down = Duration::from_secs(1);
    std::thread::sleep(down);

    let mut second = start(&db);
    wait_for_readings(&db, buffered_at_kill);
    // SIGTERM: a clean stop this time.
    let terminated = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    assert!(second.wait().unwrap().success());

    let after = status(&db);
    assert_eq!(after["run_state"], "stopped", "{after}");
    assert_eq!(after["unclean_stops_total"], 1, "{after}");
    // At least what the sensor produced while no agent ran (1 s at 50 Hz), less a margin for
    // the restart's own first reading and timer granularity.
    let missed = after["missed_after_crashes_total"].as_u64().unwrap();
    let floor = (down.as_secs_f64() * HZ * 0.8) as u64;
    assert!(missed >= floor, "{missed} < {floor}: {after}");
    assert_eq!(after["last_run"]["unclean_stops"], 1, "{after}");
    assert!(
        after["last_run"]["readings_missed_after_crashes"].as_u64() == Some(missed),
        "{after}"
    );
}

/// In a set of seqs, how many are missing inside a run (lost readings), and how many runs
/// there are (one per start of the agent).
fn holes_and_runs(mut seqs: Vec<u64>) -> (u64, usize) {
    seqs.sort_unstable();
    seqs.dedup();
    // An incarnation numbers consecutively from the clock in µs; a restart jumps ahead by the
    // time it was down (far more than this many readings).
    const JUMP: u64 = 10_000;
    let (mut holes, mut runs) = (0, usize::from(!seqs.is_empty()));
    for pair in seqs.windows(2) {
        let gap = pair[1] - pair[0];
        if gap > JUMP {
            runs += 1;
        } else if gap > 1 {
            holes += gap - 1;
        }
    }
    (holes, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_three_times_and_cut_off_the_phone_loses_nothing_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db").to_str().unwrap().to_owned();
    let device = ecs_protocol::DeviceId::random();
    let mut cloud = support::TestCloud::connect(&device, true).await;
    let network = support::PhoneNetwork::start(false).await;
    let url = network.url().to_string();
    let run = |db: &str| {
        Command::new(env!("CARGO_BIN_EXE_ecs-edge-agent"))
            .args([
                "--device-id",
                device.as_str(),
                "--mqtt-url",
                &url,
                "--db",
                db,
            ])
            .args([
                "--sample-hz",
                "100",
                "--batch-size",
                "20",
                "--flush-interval-ms",
                "100",
            ])
            .args(["--ack-timeout-ms", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut received: Vec<u64> = Vec::new();
    let listen = async |cloud: &mut support::TestCloud, for_: Duration| {
        let mut seqs = Vec::new();
        for batch in cloud.batches_for(for_).await {
            seqs.extend(batch.first_seq..=batch.last_seq());
        }
        seqs
    };

    for round in 0..3 {
        let mut agent = run(&db);
        received.extend(listen(&mut cloud, Duration::from_millis(600)).await);
        match round {
            // The broker connection drops mid-stream.
            0 => network.cut(),
            // The broker is unreachable for a second: connections pass nothing.
            1 => {
                network.set_deaf(true);
                network.cut();
                received.extend(listen(&mut cloud, Duration::from_secs(1)).await);
                network.set_deaf(false);
                network.cut();
            }
            _ => {}
        }
        received.extend(listen(&mut cloud, Duration::from_millis(400)).await);
        agent.kill().unwrap(); // SIGKILL, mid-stream
        agent.wait().unwrap();
    }
    // A last run that stops cleanly once what it holds is sent.
    let mut last = run(&db);
    received.extend(listen(&mut cloud, Duration::from_secs(3)).await);
    Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status()
        .unwrap();
    assert!(last.wait().unwrap().success());
    received.extend(listen(&mut cloud, Duration::from_millis(300)).await);

    // What is still on the phone (sent at the next start) counts as kept.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut statement = conn.prepare("SELECT seq FROM readings").unwrap();
    let buffered: Vec<u64> = statement
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|seq| seq.unwrap() as u64)
        .collect();
    let mut kept = received.clone();
    kept.extend(&buffered);
    let (holes, runs) = holes_and_runs(kept);
    assert_eq!(
        holes, 0,
        "readings committed on the phone and never delivered"
    );
    assert_eq!(runs, 4, "one run of seqs per start of the agent");
    let after = status(&db);
    assert_eq!(after["unclean_stops_total"], 3, "{after}");
    assert_eq!(after["run_state"], "stopped", "{after}");
    assert!(
        received.len() > 300,
        "only {} readings arrived",
        received.len()
    );
}
