//! Kernel settings the proxy owns on a node: sysctls (written only when they differ, as upstream's
//! `EnsureSysctl`) and the connection-tracking limits upstream's `conntracker` sets at start.
//!
//! Paths are relative to a root (`/` on a node) so the logic is tested on a directory tree; the
//! kernel tests run the binary in a network namespace, whose `net.*` sysctls are its own.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// A sysctl that could not be read or written.
#[derive(Debug, Error)]
#[error("sysctl {key}: cannot {action} {path}: {source}", path = .path.display())]
pub struct SysctlError {
    /// The sysctl (`net/ipv4/ip_forward`) or sysfs parameter.
    pub key: String,
    /// `read` or `write`.
    pub action: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

/// One setting changed (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The sysctl or parameter.
    pub key: String,
    /// What it held.
    pub from: String,
    /// What it holds now.
    pub to: String,
}

/// The node's `/proc/sys` and `/sys/module`, under a root directory.
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

/// What upstream's conntracker sets (`cmd/kube-proxy/app/conntrack.go`); zero leaves a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackLimits {
    /// `nf_conntrack_max` (and the hash table at a quarter of it); 0 leaves both.
    pub max: u64,
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp_established_timeout: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait_timeout: Duration,
    /// `nf_conntrack_tcp_be_liberal` set to 1.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`.
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp_stream_timeout: Duration,
}

impl ConntrackLimits {
    /// Upstream's `getConntrackMax`: `max_per_core` × CPUs, at least `min`; 0 when
    /// `max_per_core` is 0 (leave the kernel's limit).
    pub fn max_for(max_per_core: u64, min: u64, cpus: u64) -> u64 {
        if max_per_core == 0 {
            0
        } else {
            (max_per_core * cpus).max(min)
        }
    }
}

impl Sysctls {
    /// The running kernel's.
    pub fn host() -> Self {
        Sysctls::at("/")
    }

    /// Those under `root` (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysctls { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join("proc/sys").join(key)
    }

    fn read_file(&self, key: &str, path: &Path) -> Result<String, SysctlError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|source| SysctlError {
                key: key.to_string(),
                action: "read",
                path: path.to_path_buf(),
                source,
            })
    }

    fn write_file(&self, key: &str, path: &Path, value: &str) -> Result<(), SysctlError> {
        std::fs::write(path, value).map_err(|source| SysctlError {
            key: key.to_string(),
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// The value of sysctl `key` (`net/ipv4/ip_forward`).
    pub fn read(&self, key: &str) -> Result<String, SysctlError> {
        self.read_file(key, &self.path(key))
    }

    /// Sets sysctl `key` to `value` unless it already holds it (so a read-only `/proc/sys`
    /// that already has the right values is no error, as upstream).
    pub fn ensure(&self, key: &str, value: &str) -> Result<Option<Changed>, SysctlError> {
        let path = self.path(key);
        let from = self.read_file(key, &path)?;
        if from == value {
            return Ok(None);
        }
        self.write_file(key, &path, value)?;
        Ok(Some(Changed {
            key: key.to_string(),
            from,
            to: value.to_string(),
        }))
    }

    /// Sets the connection-tracking limits, in upstream's order: every one is attempted; returns
    /// what changed and what failed.
    pub fn set_conntrack(&self, limits: &ConntrackLimits) -> (Vec<Changed>, Vec<SysctlError>) {
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        let mut record = |r: Result<Option<Changed>, SysctlError>| match r {
            Ok(c) => changed.extend(c),
            Err(e) => failed.push(e),
        };
        if limits.max > 0 {
            let max = self.ensure("net/netfilter/nf_conntrack_max", &limits.max.to_string());
            let max_ok = max.is_ok();
            record(max);
            if max_ok {
                record(self.ensure_hashsize(limits.max / 4));
            }
        }
        for (key, timeout) in [
            (
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                limits.tcp_established_timeout,
            ),
            (
                "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
                limits.tcp_close_wait_timeout,
            ),
            ("net/netfilter/nf_conntrack_udp_timeout", limits.udp_timeout),
            (
                "net/netfilter/nf_conntrack_udp_timeout_stream",
                limits.udp_stream_timeout,
            ),
        ] {
            if !timeout.is_zero() {
                record(self.ensure(key, &timeout.as_secs().to_string()));
            }
        }
        if limits.tcp_be_liberal {
            record(self.ensure("net/netfilter/nf_conntrack_tcp_be_liberal", "1"));
        }
        (changed, failed)
    }

    /// Grows the conntrack hash table to `wanted` buckets, only when it is smaller: the kernel
    /// refuses this write outside the initial network namespace, and most nodes never need it.
    fn ensure_hashsize(&self, wanted: u64) -> Result<Option<Changed>, SysctlError> {
        let key = "nf_conntrack hashsize";
        let path = self
            .root
            .join("sys/module/nf_conntrack/parameters/hashsize");
        let hashsize: u64 = self.read_file(key, &path)?.parse().unwrap_or(0);
        if hashsize >= wanted {
            return Ok(None);
        }
        self.write_file(key, &path, &wanted.to_string())?;
        Ok(Some(Changed {
            key: key.to_string(),
            from: hashsize.to_string(),
            to: wanted.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc/sys` + `/sys/module` tree in a temp dir.
    fn tree(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("kprs-sysctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, value) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{value}\n")).unwrap();
        }
        root
    }

    fn read(root: &Path, path: &str) -> String {
        std::fs::read_to_string(root.join(path))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn max_is_per_core_times_cpus_with_a_floor_and_zero_means_leave_it() {
        assert_eq!(ConntrackLimits::max_for(32768, 131072, 2), 131072);
        assert_eq!(ConntrackLimits::max_for(32768, 131072, 8), 262144);
        assert_eq!(ConntrackLimits::max_for(0, 131072, 8), 0);
    }

    #[test]
    fn conntrack_limits_are_written_only_where_they_differ() {
        let root = tree(
            "ct",
            &[
                ("proc/sys/net/netfilter/nf_conntrack_max", "65536"),
                ("sys/module/nf_conntrack/parameters/hashsize", "16384"),
                (
                    "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
                    "432000",
                ),
                (
                    "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
                    "3600",
                ),
                ("proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", "0"),
                ("proc/sys/net/netfilter/nf_conntrack_udp_timeout", "30"),
            ],
        );
        let limits = ConntrackLimits {
            max: 262144,
            tcp_established_timeout: Duration::from_secs(86400),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: true,
            ..ConntrackLimits::default()
        };
        let (changed, failed) = Sysctls::at(&root).set_conntrack(&limits);
        assert!(failed.is_empty(), "{failed:?}");
        let keys: Vec<&str> = changed.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net/netfilter/nf_conntrack_max",
                "nf_conntrack hashsize",
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                "net/netfilter/nf_conntrack_tcp_be_liberal"
            ]
        );
        assert_eq!(
            read(&root, "proc/sys/net/netfilter/nf_conntrack_max"),
            "262144"
        );
        assert_eq!(
            read(&root, "sys/module/nf_conntrack/parameters/hashsize"),
            "65536"
        );
        assert_eq!(
            read(
                &root,
                "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
            ),
            "86400"
        );
        // Zero time-outs leave the kernel's values.
        assert_eq!(
            read(&root, "proc/sys/net/netfilter/nf_conntrack_udp_timeout"),
            "30"
        );
        // A second run changes nothing (and would not need write access).
        let (changed, failed) = Sysctls::at(&root).set_conntrack(&limits);
        assert!(changed.is_empty() && failed.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_missing_sysctl_is_an_error_naming_it() {
        let root = tree("missing", &[]);
        let e = Sysctls::at(&root)
            .ensure("net/ipv4/conf/all/route_localnet", "1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sysctl net/ipv4/conf/all/route_localnet: cannot read "),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
