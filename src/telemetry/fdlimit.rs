//! The open-file limit: raised to the hard limit at start, as Go's runtime does for upstream's
//! kube-proxy (Go 1.19 and later raise the soft `RLIMIT_NOFILE` to the hard one at start-up).
//! systemd and several container runtimes start processes with a soft limit of 1,024 under a
//! far higher hard one; the agent's files (restore pipes, netlink sockets, the HTTP servers'
//! listeners and connections) would otherwise share those 1,024.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn open_file_limits() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a pointer to a local of that type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (to the kernel's `fs.nr_open` when the hard
/// limit is unlimited: no process may open more); returns the soft limit before and after.
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = open_file_limits()?;
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if target <= soft {
        return Ok((soft, soft));
    }
    let limit = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit through a pointer to a local of that type.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = open_file_limits().unwrap();
        // Lowered first so there is something to raise (to half: this process's other tests
        // need far fewer files).
        let lowered = libc::rlimit {
            rlim_cur: soft / 2,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one rlimit through a pointer to a local of that type.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let (before, after) = raise_open_file_limit().unwrap();
        assert_eq!(before, soft / 2);
        assert!(after >= soft, "raised to {after}, was {soft}");
        assert_eq!(open_file_limits().unwrap(), (after, hard));
        if hard != libc::RLIM_INFINITY {
            assert_eq!(after, hard);
        }
    }
}
