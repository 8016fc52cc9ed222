//! The agent's IPVS mode: one sync renders the node's IPVS dataplane and applies it in
//! upstream's order — bind the service addresses to `kube-ipvs0`, fill the ipsets, restore the
//! iptables rules that match on them, make the kernel's virtual servers equal to the render
//! (one dump, only the differences sent), then unbind the addresses no Service has any more.
//!
//! Addresses are bound first and unbound last, and the sets are filled before the rules that
//! name them, so no step leaves a Service unreachable while the next one is applied.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use proxier::interface::{DummyInterface, IPVS_INTERFACE, local_addresses_except};
use proxier::ipvs::{IpvsError, IpvsSocket, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer};
use proxier::{Ipset, IptablesApplier, Launcher};
use rulegen::IpFamily;
use rulegen::render::ipvs::IpvsTable;

use crate::settings::Settings;
use crate::translate::Translation;

/// How long one `ipset restore` may take.
const IPSET_TIMEOUT: Duration = Duration::from_secs(120);

/// What IPVS mode keeps between syncs: the netlink syncer (with its draining list) and the tools.
pub struct IpvsDataplane {
    family: IpFamily,
    config: rulegen::render::ipvs::IpvsConfig,
    // Taken out while a blocking netlink exchange runs on the blocking pool.
    syncer: Option<IpvsSyncer<IpvsSocket>>,
    sync_config: IpvsSyncConfig,
    ipset: Ipset,
    interface: DummyInterface,
    // The sets the kernel was last given, so a sync writes only the sets that changed; cleared
    // after a failure and by `forget_applied` (the hourly full sync), which rewrite them all.
    applied_sets: Option<rulegen::render::ipvs::IpSets>,
    wrote_all: bool,
    // Whether the last sync's iptables restore failed (for the restore-failures metric).
    restore_failed: bool,
}

/// What one IPVS-mode sync did, for the log.
#[derive(Debug, Default)]
pub struct IpvsSyncSummary {
    /// Virtual servers rendered.
    pub virtual_servers: usize,
    /// Real servers rendered.
    pub real_servers: usize,
    /// Addresses bound to `kube-ipvs0` / removed from it.
    pub bound: usize,
    /// Addresses removed from `kube-ipvs0`.
    pub unbound: usize,
    /// Sets written (the ones that changed).
    pub sets_written: usize,
    /// Members written to the ipsets.
    pub set_entries: usize,
    /// How long `ipset restore` took.
    pub ipset: Duration,
    /// How long the iptables restore took.
    pub iptables: Duration,
    /// What the netlink sync did.
    pub netlink: IpvsSyncReport,
    /// Render time.
    pub render: Duration,
}

impl IpvsDataplane {
    /// Opens the kernel's IPVS family; fails with a clear message when the kernel has no IPVS
    /// (upstream refuses to start IPVS mode then too), before anything on the node is changed.
    pub fn open(settings: &Settings) -> anyhow::Result<IpvsDataplane> {
        let socket = IpvsSocket::open().map_err(|e| {
            anyhow!("--proxy-mode ipvs: {e} (load the ip_vs module, or use --proxy-mode iptables)")
        })?;
        let sync_config = IpvsSyncConfig {
            family: settings.family,
            exclude_cidrs: settings.ipvs_exclude_cidrs.clone(),
            // As upstream: a draining real server stays until its last connection is gone.
            grace_timeout: Duration::MAX,
        };
        let syncer = IpvsSyncer::new(socket, sync_config.clone());
        Ok(IpvsDataplane {
            family: settings.family,
            config: crate::dryrun::ipvs_config(settings),
            syncer: Some(syncer),
            sync_config,
            ipset: Ipset::new(Launcher::host(), IPSET_TIMEOUT),
            interface: DummyInterface::new(IPVS_INTERFACE),
            applied_sets: None,
            wrote_all: false,
            restore_failed: false,
        })
    }

    /// Renders `translation` and applies it; `applier` restores the iptables part.
    ///
    /// Upstream's order: virtual servers first, then their addresses bound (an address is never
    /// local without its virtual server, or a host listener could take its connections), then
    /// the sets, then the rules that match on them; addresses are unbound only once the rules
    /// no longer name them. One step failing does not hold back the others (a refused real
    /// server must not stop every other Service's changes): each is attempted, and the sync
    /// fails afterwards if any did, so the runner retries.
    pub async fn sync(
        &mut self,
        translation: &Translation,
        applier: &mut IptablesApplier,
    ) -> anyhow::Result<IpvsSyncSummary> {
        let started = Instant::now();
        self.restore_failed = false;
        // Node ports are served on the node's own addresses, as upstream reads them from its
        // interfaces (the Node object may not list every one); `--nodeport-addresses` still
        // filters them.
        let family = self.family;
        let mut cfg = translation.config.clone();
        match tokio::task::spawn_blocking(move || local_addresses_except(IPVS_INTERFACE, family))
            .await
        {
            Ok(Ok(local)) => cfg.node_ips = local,
            Ok(Err(e)) => {
                tracing::warn!("cannot list the node's addresses ({e}); using the Node object's")
            }
            Err(e) => {
                tracing::warn!("cannot list the node's addresses ({e}); using the Node object's")
            }
        }
        let render = rulegen::render::ipvs::render(&translation.model, &cfg, &self.config)
            .context("cannot render the IPVS dataplane")?;
        let mut summary = IpvsSyncSummary {
            virtual_servers: render.table.virtual_servers.len(),
            real_servers: render
                .table
                .virtual_servers
                .iter()
                .map(|v| v.real_servers.len())
                .sum(),
            render: started.elapsed(),
            ..IpvsSyncSummary::default()
        };
        let mut failures: Vec<anyhow::Error> = Vec::new();

        // 1. Virtual servers.
        let netlink_ok = match self.sync_table(render.table).await {
            Ok(report) => {
                summary.netlink = report;
                true
            }
            Err(IpvsError::Incomplete {
                failed,
                first,
                report,
            }) => {
                // The rest was applied: a refused request is that one object's problem.
                tracing::warn!(
                    refused = failed,
                    "the kernel refused {failed} IPVS request(s), first: {first}; the others were applied"
                );
                summary.netlink = *report;
                true
            }
            Err(e) => {
                failures.push(anyhow!(e).context("cannot apply the IPVS virtual servers"));
                false
            }
        };
        // 2. Their addresses, only once the virtual servers are in place.
        let bound = render.bound_addresses;
        if netlink_ok {
            match self.on_interface(bound.clone(), Bind::Missing).await {
                Ok(n) => summary.bound = n,
                Err(e) => failures.push(e),
            }
        }
        // 3. The sets, 4. the rules naming them.
        let applied = self.applied_sets.take();
        self.wrote_all = applied.is_none();
        match self.ipset.restore(&render.sets, applied.as_ref()).await {
            Ok(sets) => {
                self.applied_sets = Some(render.sets);
                summary.set_entries = sets.entries;
                summary.sets_written = sets.sets;
                summary.ipset = sets.elapsed;
            }
            Err(e) => failures.push(anyhow!(e).context("cannot apply the ipsets")),
        }
        drop(applied);
        let rules_ok = match applier.full_sync(&render.ruleset).await {
            Ok(report) => {
                summary.iptables = report.restore;
                true
            }
            Err(e) => {
                self.restore_failed = matches!(e, proxier::ApplyError::Restore(_));
                if let Some(line) = e.failed_line() {
                    tracing::error!(
                        line = line.number,
                        chain = line.chain.as_deref().unwrap_or("-"),
                        text = %line.text,
                        "iptables-restore rejected a line of IPVS mode's rules\n{}",
                        line.context
                    );
                }
                failures.push(anyhow!(e).context("cannot apply IPVS mode's iptables rules"));
                false
            }
        };
        // 5. Addresses no Service has, once no rule names them (upstream skips this after a
        // failed restore too).
        if netlink_ok && rules_ok {
            match self.on_interface(bound, Bind::Surplus).await {
                Ok(n) => summary.unbound = n,
                Err(e) => failures.push(e),
            }
        }
        match failures.len() {
            0 => Ok(summary),
            1 => Err(failures.remove(0)),
            n => {
                let all: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
                Err(anyhow!(
                    "{n} steps of the IPVS sync failed: {}",
                    all.join("; ")
                ))
            }
        }
    }

    /// Runs the netlink sync on the blocking pool. A panic there loses the syncer; a fresh one
    /// takes its place (it re-reads the kernel on every sync anyway; only the draining list's
    /// start times are lost).
    async fn sync_table(&mut self, table: IpvsTable) -> Result<IpvsSyncReport, IpvsError> {
        let mut syncer = match self.syncer.take() {
            Some(s) => s,
            None => IpvsSyncer::new(IpvsSocket::open()?, self.sync_config.clone()),
        };
        match tokio::task::spawn_blocking(move || {
            let r = syncer.sync(&table, Instant::now());
            (syncer, r)
        })
        .await
        {
            Ok((syncer, result)) => {
                self.syncer = Some(syncer);
                result
            }
            Err(e) => Err(IpvsError::Socket(std::io::Error::other(format!(
                "the IPVS sync task failed: {e}"
            )))),
        }
    }

    /// Whether the last sync's `iptables-restore` failed.
    pub fn restore_failed(&self) -> bool {
        self.restore_failed
    }

    /// Whether the last sync wrote every set (it had nothing applied to compare with).
    pub fn wrote_every_set(&self) -> bool {
        self.wrote_all
    }

    /// Makes the next sync write every set again (a periodic full resync: repairs sets changed
    /// behind the proxy's back).
    pub fn forget_applied(&mut self) {
        self.applied_sets = None;
    }

    async fn on_interface(&self, addrs: Vec<IpAddr>, what: Bind) -> anyhow::Result<usize> {
        let (interface, family) = (self.interface.clone(), self.family);
        tokio::task::spawn_blocking(move || match what {
            Bind::Missing => {
                interface.ensure()?;
                interface.bind(family, &addrs)
            }
            Bind::Surplus => interface.unbind_surplus(family, &addrs),
        })
        .await
        .context("the kube-ipvs0 task failed")?
        .with_context(|| format!("cannot update {IPVS_INTERFACE}"))
    }
}

#[derive(Clone, Copy)]
enum Bind {
    Missing,
    Surplus,
}
