//! The agent under test as a child process: the `ecs-edge-agent` binary built next to this one,
//! run with the flags of an [`AgentConfig`], its output in a log file.
//!
//! A process of its own, so its resident memory and CPU time (`/proc/<pid>/status` and
//! `/proc/<pid>/stat`) are the agent's alone, not the broker's and cloud's that run in the
//! bench. Its counters come from its SQLite file (`agent_status`, saved every 2 s and when it
//! stops) through the library's [`Status::read`], what `ecs-edge-agent status --json` prints.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use ecs_edge_agent::{AgentConfig, AgentStats, status::Status};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::bench::ingest::usage::{process_ticks, status_bytes};
use crate::bench::sibling;

/// Name of the agent binary cargo builds, and its package.
pub const BINARY: &str = "ecs-edge-agent";
pub const PACKAGE: &str = "ecs-edge-agent";
/// How long the agent gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the agent's log quoted when it fails.
const LOG_TAIL_LINES: usize = 20;

/// The agent's command line for `config`: every setting as a flag, logs as JSON.
pub fn arguments(config: &AgentConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };
    flag("--device-id", config.device_id.to_string().into());
    flag("--mqtt-url", config.broker.to_string().into());
    if let Some(tls) = &config.tls {
        flag("--tls-ca-file", tls.ca_file.clone().into());
        flag("--tls-cert-file", tls.cert_file.clone().into());
        flag("--tls-key-file", tls.key_file.clone().into());
    }
    flag("--db", config.db_path.clone().into());
    flag("--sample-hz", config.sample_rate_hz.to_string().into());
    if let Some(seed) = config.sensor_seed {
        flag("--sensor-seed", seed.to_string().into());
    }
    flag(
        "--buffer-capacity",
        config.buffer_capacity.to_string().into(),
    );
    flag("--batch-size", config.batch_size.to_string().into());
    flag(
        "--flush-interval-ms",
        config.flush_interval.as_millis().to_string().into(),
    );
    flag(
        "--ack-timeout-ms",
        config.ack_timeout.as_millis().to_string().into(),
    );
    flag(
        "--inflight-batches",
        config.inflight_batches.to_string().into(),
    );
    flag("--log-format", "json".into());
    args
}

/// What `/proc` says about a process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Resident memory now (VmRSS), in KiB.
    pub rss_kb: u64,
    /// The most it has been resident so far (VmHWM), in KiB.
    pub hwm_kb: u64,
    /// User + system CPU time since it started, in clock ticks.
    pub cpu_ticks: u64,
}

impl Usage {
    /// From the text of `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` when a field is
    /// missing (a process that has exited has no VmRSS).
    pub fn parse(status: &str, stat: &str) -> Option<Self> {
        Some(Self {
            rss_kb: status_bytes(status, "VmRSS:")? / 1024,
            hwm_kb: status_bytes(status, "VmHWM:")? / 1024,
            cpu_ticks: process_ticks(stat)?,
        })
    }
}

/// A running agent process. Dropping it kills the process.
pub struct AgentChild {
    child: Child,
    pid: u32,
    db: PathBuf,
    log: PathBuf,
}

impl AgentChild {
    /// Starts `binary` with `config`'s flags, its stdout and stderr into `log`, and none of our
    /// own `ECS_*` variables.
    pub fn start(binary: &Path, config: &AgentConfig, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening the agent's log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening the agent's log {}", log.display()))?;
        let mut command = Command::new(binary);
        command.args(arguments(config));
        sibling::without_ecs_variables(&mut command);
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        sibling::die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child
            .id()
            .context("the agent exited as soon as it started")?;
        Ok(Self {
            child,
            pid,
            db: config.db_path.clone(),
            log: log.to_owned(),
        })
    }

    /// Its memory and CPU time now. Fails (quoting its log) when the agent has exited.
    pub fn usage(&mut self) -> anyhow::Result<Usage> {
        self.check_running()?;
        let read = |what: &str| {
            let path = format!("/proc/{}/{what}", self.pid);
            std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
        };
        let (status, stat) = (read("status")?, read("stat")?);
        Usage::parse(&status, &stat)
            .with_context(|| format!("no VmRSS, VmHWM or CPU times for the agent {}", self.pid))
    }

    /// An error quoting the log if the agent is no longer running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("watching the agent")? {
            bail!(
                "the agent exited ({status}); the end of its log ({}):\n{}",
                self.log.display(),
                sibling::log_tail(&self.log, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Stops the agent as a person would (SIGTERM: it stores what it sampled, saves its
    /// counters and exits) and returns the counters it saved last.
    pub async fn stop(mut self) -> anyhow::Result<AgentStats> {
        self.check_running()?;
        let pid = libc::pid_t::try_from(self.pid).context("the agent's pid")?;
        // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped (we hold
        // its `Child` and it had not exited a moment ago).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to the agent");
        }
        let exited = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await;
        let status = match exited {
            Ok(status) => status.context("waiting for the agent")?,
            Err(_) => bail!("the agent did not stop within {STOP_TIMEOUT:?} of SIGTERM"),
        };
        if !status.success() {
            bail!(
                "the agent stopped with {status}; the end of its log ({}):\n{}",
                self.log.display(),
                sibling::log_tail(&self.log, LOG_TAIL_LINES)
            );
        }
        let db = self.db.clone();
        let saved = tokio::task::spawn_blocking(move || Status::read(&db))
            .await
            .context("the status task failed")?
            .with_context(|| format!("reading the agent's status from {}", self.db.display()))?;
        saved
            .last_run
            .context("the agent saved no counters (agent_status is empty)")
    }
}

#[cfg(test)]
mod tests {
    use ecs_edge_agent::{BrokerUrl, TlsFiles};
    use ecs_protocol::DeviceId;

    use super::*;

    #[test]
    fn every_setting_the_bench_changes_is_on_the_command_line() {
        let broker: BrokerUrl = "mqtts://127.0.0.1:18883".parse().unwrap();
        let mut config = AgentConfig::new(DeviceId::parse("phone1").unwrap(), broker);
        config.tls = Some(TlsFiles {
            ca_file: "/p/ca.pem".into(),
            cert_file: "/p/d.pem".into(),
            key_file: "/p/d.key".into(),
        });
        config.db_path = "/w/agent.db".into();
        config.sample_rate_hz = 0.001;
        config.sensor_seed = Some(42);
        config.buffer_capacity = 2_000_000;
        let args: Vec<String> = arguments(&config)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let value = |name: &str| {
            let at = args.iter().position(|a| a == name).unwrap();
            args[at + 1].as_str()
        };
        assert_eq!(value("--device-id"), "phone1");
        assert_eq!(value("--mqtt-url"), "mqtts://127.0.0.1:18883");
        assert_eq!(value("--tls-key-file"), "/p/d.key");
        assert_eq!(value("--db"), "/w/agent.db");
        assert_eq!(value("--sample-hz"), "0.001");
        assert_eq!(value("--sensor-seed"), "42");
        assert_eq!(value("--buffer-capacity"), "2000000");
        assert_eq!(value("--batch-size"), "100");
        assert_eq!(value("--flush-interval-ms"), "1000");
        assert_eq!(value("--inflight-batches"), "8");
        assert_eq!(args.len() % 2, 0, "every flag has its value: {args:?}");
    }

    #[test]
    fn plain_mqtt_has_no_tls_flags() {
        let broker: BrokerUrl = "mqtt://127.0.0.1:1883".parse().unwrap();
        let config = AgentConfig::new(DeviceId::parse("phone1").unwrap(), broker);
        let args = arguments(&config);
        assert!(
            !args
                .iter()
                .any(|a| a.to_string_lossy().starts_with("--tls"))
        );
        assert!(!args.iter().any(|a| a == "--sensor-seed"));
    }

    #[test]
    fn usage_is_read_from_proc_in_kib_and_ticks() {
        let status = "Name:\tecs-edge-agent\nVmHWM:\t    9216 kB\nVmRSS:\t    8192 kB\n";
        let stat = "77 (ecs-edge-agent) S 1 77 77 0 -1 4194304 900 0 0 0 120 30 0 0 20 0 6 0";
        assert_eq!(
            Usage::parse(status, stat),
            Some(Usage {
                rss_kb: 8192,
                hwm_kb: 9216,
                cpu_ticks: 150
            })
        );
        // An exited process (a zombie) has no memory lines.
        assert_eq!(Usage::parse("Name:\tx\nState:\tZ (zombie)\n", stat), None);
        assert_eq!(Usage::parse(status, "garbage"), None);
    }
}
