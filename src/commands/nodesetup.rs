//! Node set-up, as upstream does before its first sync: the connection-tracking limits and
//! time-outs (`--conntrack-*`), `route_localnet` for localhost node ports (iptables mode,
//! IPv4), and IPVS mode's sysctls. `--init-only` runs just this and exits, for the privileged
//! init container of an unprivileged DaemonSet.

use proxier::sysctl::{Changed, ConntrackLimits, SysctlError, Sysctls};
use rulegen::IpFamily;

use crate::settings::{ProxyMode, Settings};

/// The sysctls upstream's IPVS proxier sets (`NewProxier`): conntrack for IPVS connections (so
/// the masquerade rules see them), dropping connections to deleted real servers, expiring
/// persistence templates of quiesced ones, and forwarding.
const IPVS_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
];

/// `--ipvs-strict-arp`: answer ARP only for addresses on the interface asked, and announce the
/// best local source, so the node does not claim the load-balancer IPs bound to kube-ipvs0.
const STRICT_ARP_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
];

/// What the set-up did: the settings changed, and the ones that could not be.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Settings changed.
    pub changed: Vec<Changed>,
    /// Settings that could not be read or written.
    pub failed: Vec<SysctlError>,
}

/// The conntrack limits `settings` ask for on a machine with `cpus` CPUs.
pub fn conntrack_limits(settings: &Settings, cpus: u64) -> ConntrackLimits {
    let c = &settings.conntrack;
    ConntrackLimits {
        max: ConntrackLimits::max_for(c.max_per_core, c.min, cpus),
        tcp_established_timeout: c.tcp_established_timeout,
        tcp_close_wait_timeout: c.tcp_close_wait_timeout,
        tcp_be_liberal: c.tcp_be_liberal,
        udp_timeout: c.udp_timeout,
        udp_stream_timeout: c.udp_stream_timeout,
    }
}

/// The machine's online CPUs — not the container's CPU allowance (`available_parallelism`
/// follows the cgroup quota and affinity): upstream counts the machine's (kubernetes#99225), and a
/// DaemonSet with a CPU limit must not shrink the node's conntrack table.
pub fn online_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// Applies the node set-up `settings` ask for to `sys`. Every setting is attempted; the ones
/// that fail are reported (the agent logs them and goes on, `--init-only` fails). `ipvs_loaded`
/// says whether the kernel has IPVS now: its `net/ipv4/vs/*` sysctls exist only then, and the
/// agent (which needs IPVS anyway) reports a missing IPVS itself.
pub fn set_up(settings: &Settings, sys: &Sysctls, ipvs_loaded: bool) -> SetupReport {
    let mut report = SetupReport::default();
    let cpus = online_cpus();
    let (changed, failed) = sys.set_conntrack(&conntrack_limits(settings, cpus));
    report.changed.extend(changed);
    report.failed.extend(failed);
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match settings.mode {
        ProxyMode::Iptables => {
            // Upstream's iptables proxier: localhost node ports need martian-source routing.
            if settings.localhost_nodeports && settings.family == IpFamily::V4 {
                wanted.push(("net/ipv4/conf/all/route_localnet", "1"));
            }
        }
        ProxyMode::Ipvs => {
            wanted.extend(
                IPVS_SYSCTLS
                    .iter()
                    .filter(|(k, _)| ipvs_loaded || !k.starts_with("net/ipv4/vs/")),
            );
            if settings.ipvs_strict_arp {
                wanted.extend(STRICT_ARP_SYSCTLS);
            }
        }
    }
    for (key, value) in wanted {
        match sys.ensure(key, value) {
            Ok(c) => report.changed.extend(c),
            Err(e) => report.failed.push(e),
        }
    }
    report
}

/// Runs [`set_up`] on this node and logs what it did; returns the failures. `ipvs_loaded` is
/// whether the caller already holds the IPVS family (the agent does); when it does not, in IPVS
/// mode the family is opened here first (the kernel loads `ip_vs` on that request where it
/// can), so an init container on a freshly booted node sets IPVS's sysctls too.
pub fn set_up_and_log(settings: &Settings, ipvs_loaded: bool) -> Vec<SysctlError> {
    let ipvs_loaded = ipvs_loaded
        || settings.mode == ProxyMode::Ipvs
            && match proxier::ipvs::IpvsSocket::open() {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!("IPVS's sysctls are left: {e}");
                    false
                }
            };
    let report = set_up(settings, &Sysctls::host(), ipvs_loaded);
    for c in &report.changed {
        tracing::info!(setting = %c.key, from = %c.from, to = %c.to, "node setting changed");
    }
    for e in &report.failed {
        tracing::warn!("{e}");
    }
    report.failed
}

#[cfg(test)]
mod tests;
