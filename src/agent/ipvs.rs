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
use proxier::interface::{DummyInterface, IPVS_INTERFACE};
use proxier::ipvs::{IpvsSocket, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer};
use proxier::{Ipset, IptablesApplier, Launcher};
use rulegen::IpFamily;

use crate::settings::Settings;
use crate::translate::Translation;

/// How long one `ipset restore` may take.
const IPSET_TIMEOUT: Duration = Duration::from_secs(120);

/// The sysctls upstream's IPVS proxier sets at start (`NewProxier`): conntrack for IPVS
/// connections (so the masquerade rules see them), dropping connections to deleted real
/// servers, expiring persistence templates of quiesced ones, and forwarding.
const SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
];

/// Writes each of [`SYSCTLS`] that differs; a failure is logged, not fatal (as upstream).
fn set_sysctls() {
    for (key, value) in SYSCTLS {
        let path = format!("/proc/sys/{key}");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == value => {}
            _ => match std::fs::write(&path, value) {
                Ok(()) => tracing::info!(sysctl = key, value, "sysctl set"),
                Err(e) => tracing::warn!(sysctl = key, value, "cannot set sysctl: {e}"),
            },
        }
    }
}

/// What IPVS mode keeps between syncs: the netlink syncer (with its draining list) and the tools.
pub struct IpvsDataplane {
    family: IpFamily,
    config: rulegen::ipvs::IpvsConfig,
    // Taken out while a blocking netlink exchange runs on the blocking pool.
    syncer: Option<IpvsSyncer<IpvsSocket>>,
    ipset: Ipset,
    interface: DummyInterface,
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
        set_sysctls();
        let syncer = IpvsSyncer::new(
            socket,
            IpvsSyncConfig {
                family: settings.family,
                exclude_cidrs: settings.ipvs_exclude_cidrs.clone(),
                ..IpvsSyncConfig::default()
            },
        );
        Ok(IpvsDataplane {
            family: settings.family,
            config: crate::dryrun::ipvs_config(settings),
            syncer: Some(syncer),
            ipset: Ipset::new(Launcher::host(), IPSET_TIMEOUT),
            interface: DummyInterface::new(IPVS_INTERFACE),
        })
    }

    /// Renders `translation` and applies it; `applier` restores the iptables part.
    pub async fn sync(
        &mut self,
        translation: &Translation,
        applier: &mut IptablesApplier,
    ) -> anyhow::Result<IpvsSyncSummary> {
        let started = Instant::now();
        let render = rulegen::ipvs::render(&translation.model, &translation.config, &self.config)
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
        let bound = render.bound_addresses.clone();
        summary.bound = self.on_interface(bound.clone(), Bind::Missing).await?;
        let sets = self
            .ipset
            .restore(&render.sets)
            .await
            .context("cannot apply the ipsets")?;
        summary.set_entries = sets.entries;
        summary.ipset = sets.elapsed;
        let rules = applier
            .full_sync(&render.ruleset)
            .await
            .context("cannot apply IPVS mode's iptables rules")?;
        summary.iptables = rules.restore;
        let table = render.table;
        let mut syncer = self
            .syncer
            .take()
            .context("a previous IPVS sync panicked")?;
        let (syncer, result) = tokio::task::spawn_blocking(move || {
            let r = syncer.sync(&table, Instant::now());
            (syncer, r)
        })
        .await
        .context("the IPVS sync task failed")?;
        self.syncer = Some(syncer);
        summary.netlink = result.context("cannot apply the IPVS virtual servers")?;
        summary.unbound = self.on_interface(bound, Bind::Surplus).await?;
        Ok(summary)
    }

    /// Deletes the drained real servers whose connections are gone (or whose time is up).
    pub async fn drain(&mut self) -> anyhow::Result<IpvsSyncReport> {
        let mut syncer = self
            .syncer
            .take()
            .context("a previous IPVS sync panicked")?;
        let (syncer, result) = tokio::task::spawn_blocking(move || {
            let r = syncer.drain(Instant::now());
            (syncer, r)
        })
        .await
        .context("the IPVS drain task failed")?;
        self.syncer = Some(syncer);
        Ok(result?)
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
