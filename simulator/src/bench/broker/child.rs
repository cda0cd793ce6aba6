//! The broker under test as a child process: the `ecs-broker` binary built next to this one,
//! run with `serve` on loopback ports, its output in a log file.
//!
//! A separate process, not the embedded broker the demo uses, so the figures are the broker's
//! own (its memory is its process's, it has its own threads) and a restart is a real one.
//!
//! The bench talks to it only through `ecs-broker serve` and environment variables, so it
//! keeps working while the broker's internals change. Settings the broker does not know yet are
//! passed anyway (clap ignores unknown variables) and take effect once it reads them.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ecs_broker::{PkiDir, Secret};
use tokio::process::{Child, Command};

use crate::bench::sibling;

/// Name of the broker binary cargo builds.
const BINARY: &str = "ecs-broker";
/// How long a starting broker gets to accept TCP on both listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the broker's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// New connections per second the broker is told to admit: far above any storm we make, so the
/// bench measures how fast the broker can go, not a limit chosen for production.
const CONNECT_RATE: u32 = 100_000;
/// Handshakes under way at once: the production default over all, all of it for one address.
const MAX_HANDSHAKES: usize = 4_096;
/// Device connections beyond the phones a broker must accept: phones reconnecting over their
/// own half-closed connections, with room to spare.
const DEVICE_HEADROOM: usize = 100;

/// Everything needed to start (and restart) the same broker.
pub struct BrokerLaunch {
    pub binary: PathBuf,
    pub pki: PkiDir,
    pub device_addr: SocketAddr,
    pub service_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub service_password: Secret,
    /// Phones that will connect at once.
    pub devices: usize,
    /// The broker's stdout and stderr, appended to across restarts.
    pub log: PathBuf,
}

impl BrokerLaunch {
    /// The `ecs-broker` binary in the directory of the running executable: the same cargo
    /// target directory and profile as this bench.
    pub fn locate_binary() -> anyhow::Result<PathBuf> {
        sibling::locate(BINARY, "ecs-broker")
    }

    /// On free loopback ports (free a moment ago: another process may take one first, and the
    /// broker then fails to start, which [`BrokerChild::start`] reports).
    pub fn on_free_ports(
        binary: PathBuf,
        pki: PkiDir,
        service_password: Secret,
        devices: usize,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<SocketAddr> {
            let port = ecs_broker::free_local_port().context("finding a free loopback port")?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        Ok(Self {
            binary,
            pki,
            device_addr: free()?,
            service_addr: free()?,
            admin_addr: free()?,
            service_password,
            devices,
            log,
        })
    }

    fn command(&self) -> anyhow::Result<Command> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening the broker log {}", self.log.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("opening the broker log {}", self.log.display()))?;
        let server = self.pki.server_files();
        let mut command = Command::new(&self.binary);
        command.arg("serve");
        // Our own ECS_* variables (a developer's shell may hold a console address or a limit)
        // would change the broker under test.
        sibling::without_ecs_variables(&mut command);
        command
            .env("ECS_BROKER_DEVICE_ADDR", self.device_addr.to_string())
            .env("ECS_BROKER_SERVICE_ADDR", self.service_addr.to_string())
            .env("ECS_BROKER_ADMIN_ADDR", self.admin_addr.to_string())
            .env("ECS_TLS_CA_FILE", self.pki.ca_cert_path())
            .env("ECS_TLS_CERT_FILE", &server.cert)
            .env("ECS_TLS_KEY_FILE", &server.key)
            .env(
                "ECS_BROKER_SERVICE_PASSWORD",
                self.service_password.expose(),
            )
            .env("ECS_LOG_FORMAT", "json")
            .env(
                "ECS_BROKER_MAX_DEVICE_CONNECTIONS",
                (self.devices + DEVICE_HEADROOM).to_string(),
            )
            .env("ECS_BROKER_CONNECT_RATE", CONNECT_RATE.to_string())
            // Every phone of the bench dials from 127.0.0.1, unlike a real fleet: the rate and
            // the handshake share per address would otherwise be the bench's bottleneck.
            .env("ECS_BROKER_CONNECT_RATE_PER_IP", CONNECT_RATE.to_string())
            .env(
                "ECS_BROKER_MAX_HANDSHAKES_PER_IP",
                MAX_HANDSHAKES.to_string(),
            )
            .env("ECS_BROKER_MAX_HANDSHAKES", MAX_HANDSHAKES.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Dropping the child (an error, Ctrl-C) kills it.
            .kill_on_drop(true);
        sibling::die_with_parent(&mut command);
        Ok(command)
    }
}

/// A running broker process. Dropping it kills the process.
pub struct BrokerChild {
    launch: BrokerLaunch,
    child: Child,
}

impl BrokerChild {
    /// Starts the broker and waits until both listeners accept TCP.
    pub async fn start(launch: BrokerLaunch) -> anyhow::Result<Self> {
        let child = spawn(&launch).await?;
        Ok(Self { launch, child })
    }

    pub fn launch(&self) -> &BrokerLaunch {
        &self.launch
    }

    /// Resident memory of the broker process now, in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the broker has exited")?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }

    /// Kills the broker (SIGKILL: a crash, nothing flushed, every connection cut) and waits for
    /// it to be gone, so its ports are free again.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .context("killing the broker process")
    }

    /// Starts the broker again on the same ports and waits until it accepts TCP.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = spawn(&self.launch).await?;
        Ok(())
    }
}

async fn spawn(launch: &BrokerLaunch) -> anyhow::Result<Child> {
    let mut child = launch
        .command()?
        .spawn()
        .with_context(|| format!("starting {}", launch.binary.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("watching the broker process")? {
            bail!(
                "the broker exited ({status}) before accepting connections; the end of its log \
                 ({}):\n{}",
                launch.log.display(),
                sibling::log_tail(&launch.log, LOG_TAIL_LINES)
            );
        }
        if accepts(launch.device_addr).await && accepts(launch.service_addr).await {
            return Ok(child);
        }
        if Instant::now() > deadline {
            // `child` is dropped here, which kills it.
            bail!(
                "the broker did not accept connections on {} and {} within {READY_TIMEOUT:?}; \
                 the end of its log ({}):\n{}",
                launch.device_addr,
                launch.service_addr,
                launch.log.display(),
                sibling::log_tail(&launch.log, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a TCP connection to `addr` is accepted. The connection is closed at once; a broker
/// sees a client that left before its handshake.
async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The `VmRSS` of a `/proc/<pid>/status` file, in bytes (the kernel writes it in kB).
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tecs-broker\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
    }

    #[test]
    fn a_status_without_vm_rss_has_none() {
        // A zombie process has no VmRSS line.
        assert_eq!(parse_vm_rss("Name:\tx\nState:\tZ (zombie)\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }
}
