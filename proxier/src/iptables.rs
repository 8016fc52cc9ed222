//! [`Iptables`]: one back end and family's tools, how to start them and how long a call may take.

use std::time::Duration;

use rulegen::IpFamily;

use crate::backend::Backend;
use crate::command::Launcher;

/// How long one tool call may run before it is killed, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds every tool waits for the xtables lock (`-w 5`, as upstream); nft ignores the lock.
pub const LOCK_WAIT_SECONDS: &str = "5";

/// The iptables tools of one back end and address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    /// Which back end's binaries to run.
    pub backend: Backend,
    /// Which family's binaries to run (`iptables-*` or `ip6tables-*`).
    pub family: IpFamily,
    /// How to start them.
    pub launcher: Launcher,
    /// How long one call may take before it is killed.
    pub timeout: Duration,
}

impl Iptables {
    /// The tools of `backend` for `family`, run directly, with [`DEFAULT_TIMEOUT`].
    pub fn new(backend: Backend, family: IpFamily) -> Self {
        Iptables {
            backend,
            family,
            launcher: Launcher::host(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same tools, started through `launcher`.
    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = launcher;
        self
    }

    /// The same tools, with another per-call time-out.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}
