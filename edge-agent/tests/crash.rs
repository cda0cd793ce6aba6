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
