//! [`IpvsDataplane`]: IPVS mode. One sync renders the node's IPVS dataplane and applies it in
//! upstream's order — make the kernel's virtual servers equal to the render (one dump, only the
//! differences sent), bind their addresses to `kube-ipvs0`, fill the ipsets, restore the
//! iptables rules that match on them, then unbind the addresses no Service has any more.
//!
//! Addresses are bound only once their virtual servers exist and unbound last, and the sets are
//! filled before the rules that name them, so no step leaves a Service unreachable while the
//! next one is applied.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rulegen::render::ipvs::{IpSets, IpvsConfig, IpvsRender, IpvsTable};
use rulegen::{IpFamily, Model, RenderConfig, Ruleset};
use thiserror::Error;

use crate::applier::{ApplyError, IptablesApplier, SyncKind, SyncReport};
use crate::cleanup::{self, CleanupError, CleanupReport};
use crate::command::Launcher;
use crate::dataplane::{Dataplane, NodeFacts, SyncError, SyncFuture, SyncObserver, sync_span};
use crate::interface::{DummyInterface, IPVS_INTERFACE, InterfaceError};
use crate::ipset::{Ipset, IpsetError};
use crate::iptables_dataplane::FULL_SYNC_PERIOD;
use crate::ipvs::{IpvsError, IpvsSocket, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer};

/// How long one `ipset restore` may take.
const IPSET_TIMEOUT: Duration = Duration::from_secs(120);

/// What IPVS mode keeps between syncs: the netlink syncer (with its draining list), the tools,
/// and what the sets were last given.
#[derive(Debug)]
pub struct IpvsDataplane {
    family: IpFamily,
    config: IpvsConfig,
    // Taken out while a blocking netlink exchange runs on the blocking pool.
    syncer: Option<IpvsSyncer<IpvsSocket>>,
    sync_config: IpvsSyncConfig,
    // The iptables part (the whole small ruleset, every sync).
    applier: IptablesApplier,
    ipset: Ipset,
    interface: DummyInterface,
    facts: NodeFacts,
    // The sets the kernel was last given, so a sync writes only the sets that changed; cleared
    // after a failure and every full-sync period, which rewrite them all (repairing sets
    // changed behind the proxy's back).
    applied_sets: Option<IpSets>,
    // When every set was last written.
    last_full_sync: Option<Instant>,
    full_sync_period: Duration,
}

/// What one IPVS-mode sync did beyond the iptables part, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsSyncSummary {
    /// Virtual servers rendered.
    pub virtual_servers: usize,
    /// Real servers rendered.
    pub real_servers: usize,
    /// Addresses bound to `kube-ipvs0`.
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
}

/// One step of an IPVS sync that failed (the others were attempted).
#[derive(Debug, Error)]
pub enum IpvsStepError {
    /// The virtual servers could not be applied.
    #[error("cannot apply the IPVS virtual servers")]
    VirtualServers(#[source] IpvsError),
    /// `kube-ipvs0` could not be updated.
    #[error("cannot update {IPVS_INTERFACE}")]
    Interface(#[source] InterfaceError),
    /// The blocking task updating `kube-ipvs0` died.
    #[error("the kube-ipvs0 task failed")]
    InterfaceTask(#[source] tokio::task::JoinError),
    /// The ipsets could not be applied.
    #[error("cannot apply the ipsets")]
    Ipsets(#[source] IpsetError),
    /// The iptables rules could not be applied.
    #[error("cannot apply IPVS mode's iptables rules")]
    Rules(#[source] ApplyError),
}

impl IpvsDataplane {
    /// IPVS mode over `socket` (opened first: without the kernel's IPVS upstream refuses to
    /// start IPVS mode, before anything on the node is changed), restoring its iptables part
    /// with `applier` (which should keep iptables mode's stale chains), rendering with
    /// `config`, and reading the node's facts from this host.
    pub fn new(
        socket: IpvsSocket,
        applier: IptablesApplier,
        sync_config: IpvsSyncConfig,
        config: IpvsConfig,
    ) -> IpvsDataplane {
        IpvsDataplane {
            family: sync_config.family,
            config,
            syncer: Some(IpvsSyncer::new(socket, sync_config.clone())),
            sync_config,
            applier,
            ipset: Ipset::new(Launcher::host(), IPSET_TIMEOUT),
            interface: DummyInterface::new(IPVS_INTERFACE),
            facts: NodeFacts::host(),
            applied_sets: None,
            last_full_sync: None,
            full_sync_period: FULL_SYNC_PERIOD,
        }
    }

    /// The same dataplane, with every set rewritten every `period`.
    pub fn with_full_sync_period(mut self, period: Duration) -> Self {
        self.full_sync_period = period;
        self
    }

    /// Renders `model` and applies it.
    ///
    /// Upstream's order: virtual servers first, then their addresses bound (an address is never
    /// local without its virtual server, or a host listener could take its connections), then
    /// the sets, then the rules that match on them; addresses are unbound only once the rules
    /// no longer name them. One step failing does not hold back the others (a refused real
    /// server must not stop every other Service's changes): each is attempted, and the sync
    /// fails afterwards if any did, so the runner retries.
    async fn sync_now(
        &mut self,
        model: &Model,
        cfg: &RenderConfig,
    ) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        // Hourly, and after any failure, every set is written again (as the iptables part and
        // the IPVS table always are: those are read back on every sync).
        if self
            .last_full_sync
            .is_none_or(|t| t.elapsed() >= self.full_sync_period)
        {
            self.applied_sets = None;
        }
        let render = self.render(model, cfg).await?;
        let mut summary = IpvsSyncSummary {
            virtual_servers: render.table.virtual_servers.len(),
            real_servers: render
                .table
                .virtual_servers
                .iter()
                .map(|v| v.real_servers.len())
                .sum(),
            ..IpvsSyncSummary::default()
        };
        let mut report = SyncReport {
            render: started.elapsed(),
            ..SyncReport::default()
        };
        let mut failures: Vec<IpvsStepError> = Vec::new();

        // 1. Virtual servers.
        let netlink_ok = match self.apply_virtual_servers(render.table).await {
            Ok(r) => {
                summary.netlink = r;
                true
            }
            Err(e) => {
                failures.push(e);
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
        let wrote_all = applied.is_none();
        report.kind = if wrote_all {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        tracing::Span::current().record("kind", report.kind.as_str());
        match self.ipset.restore(&render.sets, applied.as_ref()).await {
            Ok(sets) => {
                self.applied_sets = Some(render.sets);
                summary.set_entries = sets.entries;
                summary.sets_written = sets.sets;
                summary.ipset = sets.elapsed;
            }
            Err(e) => failures.push(IpvsStepError::Ipsets(e)),
        }
        drop(applied);
        let rules_ok = match self.apply_rules(&render.ruleset).await {
            Ok(restore) => {
                summary.iptables = restore;
                true
            }
            Err(e) => {
                failures.push(e);
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
            0 => {
                if wrote_all {
                    self.last_full_sync = Some(Instant::now());
                }
                report.ipvs = Some(summary);
                Ok(report)
            }
            1 => Err(SyncError::IpvsStep(failures.remove(0))),
            _ => Err(SyncError::IpvsSteps(failures)),
        }
    }

    /// Renders `model` with the node's facts read now.
    async fn render(&self, model: &Model, cfg: &RenderConfig) -> Result<IpvsRender, SyncError> {
        let mut cfg = self.facts.conntrack(cfg).into_owned();
        // Node ports are served on the node's own addresses; `--nodeport-addresses` still
        // filters them.
        if let Some(local) = self.facts.local_addresses(self.family).await {
            cfg.node_ips = local;
        }
        rulegen::render::ipvs::render(model, &cfg, &self.config).map_err(SyncError::IpvsRender)
    }

    /// Makes the kernel's virtual servers equal to `table`. Requests the kernel refused are
    /// logged, not a failure: the rest was applied, and a refused request is that one object's
    /// problem.
    async fn apply_virtual_servers(
        &mut self,
        table: IpvsTable,
    ) -> Result<IpvsSyncReport, IpvsStepError> {
        match self.sync_table(table).await {
            Ok(r) => Ok(r),
            Err(IpvsError::Incomplete {
                failed,
                first,
                report,
            }) => {
                tracing::warn!(
                    refused = failed,
                    "the kernel refused {failed} IPVS request(s), first: {first}; the others were applied"
                );
                Ok(*report)
            }
            Err(e) => Err(IpvsStepError::VirtualServers(e)),
        }
    }

    /// Restores the iptables part; returns how long the restore took.
    async fn apply_rules(&mut self, ruleset: &Ruleset) -> Result<Duration, IpvsStepError> {
        match self.applier.full_sync(ruleset).await {
            Ok(r) => Ok(r.restore),
            Err(e) => {
                if let Some(line) = e.failed_line() {
                    tracing::error!(
                        line = line.number,
                        chain = line.chain.as_deref().unwrap_or("-"),
                        text = %line.text,
                        "iptables-restore rejected a line of IPVS mode's rules\n{}",
                        line.context
                    );
                }
                Err(IpvsStepError::Rules(e))
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

    /// Deletes its family's virtual servers and `kube-ipvs0` on the blocking pool, through the
    /// syncer (whose draining list then forgets the deleted ones).
    async fn clean_up_netlink(&mut self) -> CleanupReport {
        let syncer = match self.syncer.take() {
            Some(s) => Ok(s),
            None => IpvsSocket::open().map(|s| IpvsSyncer::new(s, self.sync_config.clone())),
        };
        let task = tokio::task::spawn_blocking(move || {
            let (syncer, mut report) = match syncer {
                Ok(mut s) => {
                    let report = cleanup::virtual_servers(&mut s);
                    (Some(s), report)
                }
                Err(e) => (None, CleanupReport::failed(CleanupError::VirtualServers(e))),
            };
            report.merge(cleanup::interface());
            (syncer, report)
        });
        match task.await {
            Ok((syncer, report)) => {
                self.syncer = syncer;
                report
            }
            // The syncer is lost; the next sync opens a fresh one.
            Err(e) => CleanupReport::failed(CleanupError::Task(e)),
        }
    }

    async fn on_interface(&self, addrs: Vec<IpAddr>, what: Bind) -> Result<usize, IpvsStepError> {
        let (interface, family) = (self.interface.clone(), self.family);
        tokio::task::spawn_blocking(move || match what {
            Bind::Missing => {
                interface.ensure()?;
                interface.bind(family, &addrs)
            }
            Bind::Surplus => interface.unbind_surplus(family, &addrs),
        })
        .await
        .map_err(IpvsStepError::InterfaceTask)?
        .map_err(IpvsStepError::Interface)
    }
}

impl Dataplane for IpvsDataplane {
    fn mode(&self) -> &'static str {
        "ipvs"
    }

    fn family(&self) -> IpFamily {
        self.family
    }

    fn sync<'a>(
        &'a mut self,
        model: &'a Model,
        cfg: &'a RenderConfig,
        _observer: &'a mut dyn SyncObserver,
    ) -> SyncFuture<'a, Result<SyncReport, SyncError>> {
        Box::pin(async move {
            let span = sync_span(self.mode(), self.family());
            let result = tracing::Instrument::instrument(self.sync_now(model, cfg), span).await;
            if result.is_err() {
                self.forget_applied();
            }
            result
        })
    }

    fn forget_applied(&mut self) {
        self.applied_sets = None;
        self.last_full_sync = None;
    }

    /// Its family's virtual servers (outside the exclude CIDRs), `kube-ipvs0`, its iptables
    /// part, then its family's sets: upstream's order, rules before the sets they match on.
    fn clean_up(&mut self) -> SyncFuture<'_, CleanupReport> {
        Box::pin(async move {
            let mut report = self.clean_up_netlink().await;
            report.merge(cleanup::iptables_leftovers(self.applier.iptables()).await);
            // Where the sync runs `ipset` (`Ipset::new` in `new`).
            let sets = cleanup::ipsets(&Launcher::host(), &[self.family], IPSET_TIMEOUT).await;
            report.merge(sets);
            self.forget_applied();
            self.applier.invalidate();
            report
        })
    }
}

#[derive(Clone, Copy)]
enum Bind {
    Missing,
    Surplus,
}
