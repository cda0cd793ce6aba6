//! Binaries of this workspace run by a benchmark as child processes: found next to the running
//! `ecs-simulator` (the same cargo target directory and profile), and never outliving it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

/// The binary `name` (of the package `package`) in the directory of the running executable.
/// When it is missing, the error says how to build it.
pub fn locate(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let binary = dir.join(name);
    if !binary.is_file() {
        bail!(
            "no {name} binary next to {}: build it with cargo build --release -p {package}",
            exe.display()
        );
    }
    Ok(binary)
}

/// Removes our own `ECS_*` variables from the child's environment: a developer's shell may hold
/// a setting that would change the component under test. Everything else, `RUST_LOG` included,
/// passes.
pub fn without_ecs_variables(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ECS_") {
            command.env_remove(name);
        }
    }
}

/// Asks Linux to kill the child when this process dies, so not even a SIGKILL of the bench
/// leaves a child behind holding its ports or files.
///
/// The signal follows the death of the *thread* that spawned the child: spawn from a runtime
/// worker or the main thread, never from a short-lived blocking-pool thread.
#[cfg(target_os = "linux")]
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_command: &mut Command) {}

/// The last `lines` lines of a child's log file, to quote when it failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}
