//! The open-file limit. A benchmark holding one socket per simulated client needs more
//! descriptors than the usual soft limit of 1024; the hard limit is what the system allows us.

use anyhow::bail;

/// Descriptors a benchmark keeps beyond its clients' sockets: stdio, the runtime's epoll and
/// event fds, log and certificate files, probes.
pub const HEADROOM: u64 = 200;

/// Raises the soft open-file limit to the hard one and fails when `needed` descriptors still
/// do not fit. Child processes inherit the raised limit.
pub fn ensure(needed: u64) -> anyhow::Result<u64> {
    let limit = raise_soft_to_hard()?;
    if needed > limit {
        bail!(
            "this run needs about {needed} open files but the limit is {limit} (hard); use fewer \
             devices or raise the hard limit (ulimit -Hn, /etc/security/limits.conf)"
        );
    }
    Ok(limit)
}

/// Raises the soft limit to the hard limit (when allowed) and returns the soft limit in force.
#[cfg(unix)]
fn raise_soft_to_hard() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, writable value.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` it is given.
        // A refusal (an "unlimited" hard limit above the kernel's nr_open) leaves the soft limit
        // as it was, and `ensure` says whether that is enough.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix.
    Ok(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_soft_to_hard() -> std::io::Result<u64> {
    Ok(u64::MAX)
}
