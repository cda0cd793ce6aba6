//! What a phase costs: CPU time of this process (`/proc/self/stat`), of the Postgres processes
//! working for the scratch database (when the server runs on this machine), and of the whole
//! machine (`/proc/stat`, which includes whatever else runs), and this process's resident
//! memory (`/proc/self/status`). Linux only: elsewhere, or when a file cannot be read, a figure
//! is absent rather than zero.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

/// CPU time counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    at: Instant,
    /// User + system time of this process, in clock ticks.
    process_ticks: Option<u64>,
    /// Busy time summed over every CPU of the machine, in clock ticks.
    machine_busy_ticks: Option<u64>,
}

/// Average number of cores kept busy over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuFigures {
    /// By this process: phones, broker, cloud and bench together, as they run in it.
    pub process_cores: Option<f64>,
    /// By the Postgres server: the scratch database's backends and the server's WAL writer,
    /// checkpointer and background writer (these three also work for other databases). Absent
    /// when the server is not on this machine.
    pub postgres_cores: Option<f64>,
    /// By the whole machine (Postgres and other work included).
    pub machine_cores: Option<f64>,
}

/// Resident memory of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Memory {
    pub rss_bytes: Option<u64>,
    /// The highest resident size the process has had so far (VmHWM).
    pub peak_rss_bytes: Option<u64>,
}

impl CpuTimes {
    pub fn now() -> Self {
        let read = |path| std::fs::read_to_string(path).ok();
        Self {
            at: Instant::now(),
            process_ticks: read("/proc/self/stat").as_deref().and_then(process_ticks),
            machine_busy_ticks: read("/proc/stat").as_deref().and_then(machine_busy_ticks),
        }
    }

    /// Cores kept busy on average between `earlier` and `self`.
    pub fn cores_since(&self, earlier: &CpuTimes) -> CpuFigures {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        let per_second = clock_ticks_per_second();
        let cores = |now: Option<u64>, before: Option<u64>| {
            let (now, before, ticks) = (now?, before?, per_second?);
            (seconds > 0.0).then(|| now.saturating_sub(before) as f64 / ticks / seconds)
        };
        CpuFigures {
            process_cores: cores(self.process_ticks, earlier.process_ticks),
            postgres_cores: None,
            machine_cores: cores(self.machine_busy_ticks, earlier.machine_busy_ticks),
        }
    }
}

/// Every CPU counter at one instant: this process, the Postgres server, the machine.
#[derive(Debug, Clone)]
pub struct CpuMark {
    times: CpuTimes,
    server: ServerTicks,
}

impl CpuMark {
    pub async fn take(pool: &PgPool) -> Self {
        let server = ServerTicks::read(pool).await;
        Self {
            times: CpuTimes::now(),
            server,
        }
    }

    /// Cores kept busy on average between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuMark) -> CpuFigures {
        let seconds = self.times.at.duration_since(earlier.times.at).as_secs_f64();
        CpuFigures {
            postgres_cores: self.server.cores_since(&earlier.server, seconds),
            ..self.times.cores_since(&earlier.times)
        }
    }
}

/// CPU ticks of the Postgres processes working for the scratch database, by pid.
#[derive(Debug, Clone, Default)]
pub struct ServerTicks(HashMap<i32, u64>);

impl ServerTicks {
    /// Reads the ticks of the processes `pg_stat_activity` lists for the current database, and
    /// of the server's WAL writer, checkpointer and background writer. A pid counts only when
    /// `/proc` shows a process called `postgres` under it: a remote server's pids mean nothing
    /// here. Empty when Postgres cannot be asked.
    pub async fn read(pool: &PgPool) -> Self {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database()
                OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        Self(
            pids.into_iter()
                .filter_map(|pid| {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    (command_name(&stat)? == "postgres").then_some((pid, process_ticks(&stat)?))
                })
                .collect(),
        )
    }

    /// Cores kept busy over `seconds` by the processes present at both readings; `None` when
    /// there were none.
    pub fn cores_since(&self, earlier: &ServerTicks, seconds: f64) -> Option<f64> {
        let ticks: u64 = self
            .0
            .iter()
            .filter_map(|(pid, now)| Some(now.saturating_sub(*earlier.0.get(pid)?)))
            .sum();
        let both = self.0.keys().any(|pid| earlier.0.contains_key(pid));
        (both && seconds > 0.0)
            .then(|| ticks as f64 / clock_ticks_per_second().unwrap_or(100.0) / seconds)
    }
}

impl Memory {
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let field = |name| status.as_deref().and_then(|s| status_bytes(s, name));
        Self {
            rss_bytes: field("VmRSS:"),
            peak_rss_bytes: field("VmHWM:"),
        }
    }
}

pub(crate) fn clock_ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf reads a configuration value; it takes no pointers and has no
    // preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// The command name (field 2, in parentheses) from the text of `/proc/<pid>/stat`.
pub(crate) fn command_name(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// utime + stime from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the last
/// `)`: state is the first after it, utime the 12th, stime the 13th.
pub(crate) fn process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks of all CPUs from the text of `/proc/stat`: its first line, `cpu user nice system
/// idle iowait irq softirq steal …`, without idle and iowait (guest time is already in user).
pub(crate) fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = values.try_into().ok()?;
    Some(user + nice + system + irq + softirq + steal)
}

/// A `Name:   123 kB` line of `/proc/self/status`, in bytes.
pub(crate) fn status_bytes(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_count_from_the_end_of_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may be called.
        let stat = "4242 (ecs sim (x)) S 1 4242 4242 0 -1 4194304 900 0 0 0 250 75 0 0 20 0 \
                    12 0 3000 123456789 5000 18446744073709551615";
        assert_eq!(process_ticks(stat), Some(325));
        assert_eq!(command_name(stat), Some("ecs sim (x)"));
        assert_eq!(command_name("1 (postgres) S 1"), Some("postgres"));
        assert_eq!(command_name(")("), None);
        assert_eq!(process_ticks("garbage"), None);
        assert_eq!(process_ticks("1 (short) S 1 2"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(161));
        assert_eq!(machine_busy_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(machine_busy_ticks("cpu 1 2 3"), None);
        assert_eq!(machine_busy_ticks(""), None);
    }

    #[test]
    fn status_sizes_are_read_in_bytes() {
        let status = "Name:\tecs-simulator\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_bytes(status, "VmRSS:"), Some(100 << 20));
        assert_eq!(status_bytes(status, "VmHWM:"), Some(200 << 20));
        assert_eq!(status_bytes(status, "VmSwap:"), None);
        assert_eq!(status_bytes("VmRSS:\t12 pages", "VmRSS:"), None);
    }

    #[test]
    fn cores_are_busy_ticks_over_wall_time() {
        let Some(per_second) = clock_ticks_per_second() else {
            return; // Not a system with clock ticks: nothing to check.
        };
        let earlier = CpuTimes {
            at: Instant::now(),
            process_ticks: Some(0),
            machine_busy_ticks: None,
        };
        let later = CpuTimes {
            at: earlier.at + std::time::Duration::from_secs(2),
            process_ticks: Some((3.0 * per_second) as u64),
            machine_busy_ticks: Some(10),
        };
        let cores = later.cores_since(&earlier);
        assert!((cores.process_cores.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(cores.machine_cores, None, "no figure without both readings");
    }

    #[test]
    fn server_cores_count_only_processes_seen_twice() {
        let Some(per_second) = clock_ticks_per_second() else {
            return;
        };
        let ticks = |v: f64| (v * per_second) as u64;
        let earlier = ServerTicks(HashMap::from([(1, ticks(1.0)), (2, ticks(5.0))]));
        // 2 ended, 3 started: only 1's second of CPU counts, over 2 s.
        let later = ServerTicks(HashMap::from([(1, ticks(2.0)), (3, ticks(9.0))]));
        let cores = later.cores_since(&earlier, 2.0).unwrap();
        assert!((cores - 0.5).abs() < 1e-9, "{cores}");
        assert_eq!(ServerTicks::default().cores_since(&earlier, 2.0), None);
    }
}
