//! Removing what kube-proxy (either mode, upstream's or ours) left on the node, per mode as
//! upstream's `CleanupLeftovers`: iptables mode's hooks and chains in one family, and IPVS
//! mode's virtual servers, `kube-ipvs0` and ipsets. `--cleanup` runs them for both families;
//! each [`Dataplane`](crate::Dataplane) removes its own with them. Every step is attempted even
//! when one before failed, and a [`CleanupReport`] says what went and what failed.

use std::time::{Duration, Instant};

use ipnet::IpNet;
use rulegen::IpFamily;
use rulegen::render::ipvs::{IpvsTable, SetId};
use thiserror::Error;

use crate::command::{CommandError, Launcher};
use crate::interface::{DummyInterface, IPVS_INTERFACE, InterfaceError};
use crate::iptables::Iptables;
use crate::ipvs::{IpvsError, IpvsHandle, IpvsSocket, IpvsSyncConfig, IpvsSyncer};
use crate::restore::RestoreError;

/// The tables kube-proxy writes to, in the order they are cleaned.
pub const TABLES: [&str; 3] = ["mangle", "filter", "nat"];

/// One clean-up step that failed; the others were attempted.
#[derive(Debug, Error)]
pub enum CleanupError {
    /// The restore removing one table's hooks and chains failed.
    #[error("{family:?} {table}")]
    Rules {
        /// The family of the tools that ran.
        family: IpFamily,
        /// The table.
        table: &'static str,
        /// What the restore said.
        #[source]
        source: RestoreError,
    },
    /// The virtual servers could not be deleted.
    #[error("cannot delete the IPVS virtual servers")]
    VirtualServers(#[source] IpvsError),
    /// The blocking task deleting the virtual servers and `kube-ipvs0` died.
    #[error("the IPVS cleanup task failed")]
    Task(#[source] tokio::task::JoinError),
    /// `kube-ipvs0` could not be deleted.
    #[error("cannot delete {IPVS_INTERFACE}")]
    Interface(#[source] InterfaceError),
    /// The sets could not be destroyed.
    #[error("cannot destroy IPVS mode's ipsets")]
    Ipsets(#[source] CommandError),
}

/// A table whose kube-proxy hooks and chains were removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanedTable {
    /// The family of the tools that ran.
    pub family: IpFamily,
    /// The table.
    pub table: &'static str,
}

/// What a clean-up removed, and the steps that failed.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Tables whose hooks and chains were removed (those holding nothing of ours are not listed).
    pub tables: Vec<CleanedTable>,
    /// IPVS virtual servers deleted.
    pub virtual_servers_deleted: usize,
    /// Whether `kube-ipvs0` existed and was deleted.
    pub interface_deleted: bool,
    /// ipsets destroyed.
    pub sets_destroyed: usize,
    /// The steps that failed.
    pub failures: Vec<CleanupError>,
}

impl CleanupReport {
    /// A report of one failed step.
    pub fn failed(step: CleanupError) -> Self {
        CleanupReport {
            failures: vec![step],
            ..CleanupReport::default()
        }
    }

    /// Adds what `other` removed and its failures to this report.
    pub fn merge(&mut self, other: CleanupReport) {
        self.tables.extend(other.tables);
        self.virtual_servers_deleted += other.virtual_servers_deleted;
        self.interface_deleted |= other.interface_deleted;
        self.sets_destroyed += other.sets_destroyed;
        self.failures.extend(other.failures);
    }

    /// Whether every step went.
    pub fn succeeded(&self) -> bool {
        self.failures.is_empty()
    }
}

/// iptables mode's leftovers in `ipt`'s family: kube-proxy's hooks and chains in each of
/// [`TABLES`], one restore per table ([`rulegen::sync::cleanup::cleanup_payload`], which also
/// knows IPVS mode's chains, so this is IPVS mode's iptables part too).
pub async fn iptables_leftovers(ipt: &Iptables) -> CleanupReport {
    let family = ipt.family;
    let mut report = CleanupReport::default();
    for table in TABLES {
        let saved = match ipt.read_table_for_cleanup(table).await {
            Ok(s) => s,
            // A table the kernel does not have holds nothing of ours.
            Err(e) => {
                tracing::debug!(table, ?family, "not read: {e}");
                continue;
            }
        };
        let Some(payload) = rulegen::sync::cleanup::cleanup_payload(&saved) else {
            continue;
        };
        match ipt.restore(&payload).await {
            Ok(()) => {
                tracing::info!(
                    table,
                    ?family,
                    backend = ipt.backend.name(),
                    "removed kube-proxy's chains and hooks"
                );
                report.tables.push(CleanedTable { family, table });
            }
            Err(source) => report.failures.push(CleanupError::Rules {
                family,
                table,
                source,
            }),
        }
    }
    report
}

/// IPVS mode's leftovers outside iptables, as `--cleanup` removes them: the virtual servers of
/// each of `families` with no address in `exclude` (someone else's; upstream flushes the whole
/// table), `kube-ipvs0`, then the families' sets (`ipset` started through `launcher`). The
/// iptables part is [`iptables_leftovers`]'s, which must run first: rules go before the sets
/// they match on.
pub async fn ipvs_leftovers(
    launcher: &Launcher,
    families: &[IpFamily],
    exclude: &[IpNet],
    timeout: Duration,
) -> CleanupReport {
    let netlink = {
        let (families, exclude) = (families.to_vec(), exclude.to_vec());
        move || {
            let mut report = CleanupReport::default();
            match IpvsSocket::open() {
                Err(e) => tracing::info!("no IPVS to clean up ({e})"),
                Ok(mut socket) => {
                    for family in families {
                        let config = IpvsSyncConfig {
                            family,
                            exclude_cidrs: exclude.clone(),
                            grace_timeout: Duration::ZERO,
                        };
                        let mut syncer = IpvsSyncer::new(socket, config);
                        report.merge(virtual_servers(&mut syncer));
                        socket = syncer.into_handle();
                    }
                }
            }
            report.merge(interface());
            report
        }
    };
    let mut report = tokio::task::spawn_blocking(netlink)
        .await
        .unwrap_or_else(|e| CleanupReport::failed(CleanupError::Task(e)));
    report.merge(ipsets(launcher, families, timeout).await);
    report
}

/// Deletes every virtual server `syncer` may delete (its family's, outside its exclude CIDRs):
/// it is synced to an empty table. Blocking (netlink).
pub fn virtual_servers<H: IpvsHandle>(syncer: &mut IpvsSyncer<H>) -> CleanupReport {
    let family = syncer.config().family;
    match syncer.sync(&IpvsTable::default(), Instant::now()) {
        Ok(done) => {
            tracing::info!(
                ?family,
                deleted = done.services_deleted,
                "removed IPVS virtual servers"
            );
            CleanupReport {
                virtual_servers_deleted: done.services_deleted,
                ..CleanupReport::default()
            }
        }
        Err(e) => CleanupReport::failed(CleanupError::VirtualServers(e)),
    }
}

/// Deletes `kube-ipvs0` (and the addresses on it) if it exists. Blocking (netlink).
pub fn interface() -> CleanupReport {
    match DummyInterface::new(IPVS_INTERFACE).delete() {
        Ok(deleted) => {
            if deleted {
                tracing::info!("deleted {IPVS_INTERFACE}");
            }
            CleanupReport {
                interface_deleted: deleted,
                ..CleanupReport::default()
            }
        }
        Err(e) => CleanupReport::failed(CleanupError::Interface(e)),
    }
}

/// Destroys IPVS mode's sets of `families` that exist (their temporary copies included), with
/// `ipset` started through `launcher`; nothing to do when `ipset` cannot list them.
pub async fn ipsets(
    launcher: &Launcher,
    families: &[IpFamily],
    timeout: Duration,
) -> CleanupReport {
    let mut report = CleanupReport::default();
    let listed = match launcher.run("ipset", &["list", "-n"], None, timeout).await {
        Ok(l) => l,
        Err(e) => {
            tracing::info!("no ipsets to clean up ({e})");
            return report;
        }
    };
    let script = destroy_script(&listed, families);
    if script.is_empty() {
        return report;
    }
    match launcher
        .run("ipset", &["restore"], Some(script.as_bytes()), timeout)
        .await
    {
        Ok(_) => {
            report.sets_destroyed = script.lines().count();
            tracing::info!(sets = report.sets_destroyed, "destroyed IPVS mode's ipsets");
        }
        Err(e) => report.failures.push(CleanupError::Ipsets(e)),
    }
    report
}

/// The `ipset restore` script destroying the sets of `families` among `listed` (`ipset list
/// -n`): IPVS mode's sets and the temporary copies a sync swaps in.
fn destroy_script(listed: &str, families: &[IpFamily]) -> String {
    let ours: Vec<String> = SetId::ALL
        .iter()
        .flat_map(|id| families.iter().map(|f| id.name(*f)))
        .collect();
    // The prefix `Ipset` gives each family's temporary copies.
    let temp = |f: &IpFamily| match f {
        IpFamily::V4 => "KUBE-TMP-",
        IpFamily::V6 => "KUBE-6-TMP-",
    };
    listed
        .lines()
        .map(str::trim)
        .filter(|n| ours.iter().any(|o| o == n) || families.iter().any(|f| n.starts_with(temp(f))))
        .map(|n| format!("destroy {n}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only IPVS mode's sets of the asked families go; anyone else's stay.
    #[test]
    fn the_script_destroys_only_our_sets_of_the_families() {
        let listed = "KUBE-CLUSTER-IP\nKUBE-6-CLUSTER-IP\nKUBE-TMP-3\nKUBE-6-TMP-1\nother-set\n";
        assert_eq!(
            destroy_script(listed, &[IpFamily::V4, IpFamily::V6]),
            "destroy KUBE-CLUSTER-IP\ndestroy KUBE-6-CLUSTER-IP\ndestroy KUBE-TMP-3\n\
             destroy KUBE-6-TMP-1\n"
        );
        assert_eq!(
            destroy_script(listed, &[IpFamily::V6]),
            "destroy KUBE-6-CLUSTER-IP\ndestroy KUBE-6-TMP-1\n"
        );
        assert_eq!(destroy_script("other-set\n", &[IpFamily::V4]), "");
    }

    /// Only the syncer's family's virtual servers outside the exclude CIDRs are deleted.
    #[test]
    fn virtual_servers_of_the_family_go_excluded_ones_stay() {
        use crate::ipvs::{FakeIpvs, IpvsService};
        use rulegen::Protocol;
        let mut fake = FakeIpvs::new();
        for addr in ["10.96.0.1", "10.96.0.2", "192.0.2.9", "fd00::1"] {
            let svc = IpvsService::new(Protocol::Tcp, addr.parse().unwrap(), 80, "rr", 0, 0);
            fake.insert_service(svc);
        }
        let config = IpvsSyncConfig {
            family: IpFamily::V4,
            exclude_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            grace_timeout: Duration::ZERO,
        };
        let mut syncer = IpvsSyncer::new(fake, config);
        let report = virtual_servers(&mut syncer);
        assert!(report.succeeded(), "{:?}", report.failures);
        assert_eq!(report.virtual_servers_deleted, 2);
        assert_eq!(
            syncer.handle().service_count(),
            2,
            "the excluded and the IPv6 one"
        );
    }

    /// A failed step is reported with what the others removed.
    #[test]
    fn merged_reports_keep_every_failure() {
        let mut report = CleanupReport {
            sets_destroyed: 2,
            ..CleanupReport::default()
        };
        report.merge(CleanupReport {
            virtual_servers_deleted: 3,
            failures: vec![CleanupError::Interface(InterfaceError::NotFound {
                name: IPVS_INTERFACE.into(),
            })],
            ..CleanupReport::default()
        });
        assert_eq!(
            (report.sets_destroyed, report.virtual_servers_deleted),
            (2, 3)
        );
        assert!(!report.succeeded());
    }
}
