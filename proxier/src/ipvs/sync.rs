//! The IPVS syncer: dumps the kernel's table once, diffs it against the desired table and sends
//! only the differences, draining removed destinations gracefully (see [`super::diff`]).
//!
//! It is synchronous (a blocking socket); the agent calls it from `spawn_blocking`. Its only
//! state is the draining list: everything else is re-read from the kernel at every sync, so a
//! sync that failed half-way is repaired by the next one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rulegen::model::IpFamily;
use rulegen::render::ipvs::IpvsTable;

use super::diff::{
    DestKey, DestStep, DrainList, KernelService, KernelView, Removal, ServiceStep, key_of, plan,
    removal,
};
use super::entry::{IpvsDest, IpvsService, ServiceKey};
use super::error::IpvsError;
use super::handle::IpvsHandle;

/// How long a removed destination with connections keeps draining at most: 15 minutes, IPVS's
/// idle time-out of an established TCP connection (`ip_vs_proto_tcp.c`).
pub const DEFAULT_GRACE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How often upstream re-checks the draining list (`rsCheckDeleteInterval`,
/// `pkg/proxy/ipvs/graceful_termination.go`): the period to call [`IpvsSyncer::drain`] at.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(60);

/// What a syncer manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSyncConfig {
    /// The family of the services it may delete (`--ip-family`); the other family's are left
    /// alone, as a dual-stack node runs one proxier per family.
    pub family: IpFamily,
    /// `--ipvs-exclude-cidrs`: services with an address inside are never deleted.
    pub exclude_cidrs: Vec<IpNet>,
    /// How long a destination may drain before it is deleted with connections left.
    pub grace_timeout: Duration,
}

impl Default for IpvsSyncConfig {
    fn default() -> Self {
        IpvsSyncConfig {
            family: IpFamily::V4,
            exclude_cidrs: Vec::new(),
            grace_timeout: DEFAULT_GRACE_TIMEOUT,
        }
    }
}

/// What one sync (or drain) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsSyncReport {
    /// Services created (NEW_SERVICE).
    pub services_added: usize,
    /// Services whose scheduler, flags or timeout were changed (SET_SERVICE).
    pub services_changed: usize,
    /// Services deleted (DEL_SERVICE).
    pub services_deleted: usize,
    /// Destinations created (NEW_DEST).
    pub dests_added: usize,
    /// Destinations whose weight or forwarding method were changed (SET_DEST).
    pub dests_changed: usize,
    /// Destinations deleted at once: no connections, or UDP/SCTP (DEL_DEST).
    pub dests_deleted: usize,
    /// Destinations put on the draining list (weight set to 0).
    pub dests_drained: usize,
    /// Draining destinations that were desired again (weight restored, SET_DEST).
    pub dests_restored: usize,
    /// Draining destinations deleted (DEL_DEST), their connections gone or their time up.
    pub drained_deleted: usize,
    /// Of those, the ones deleted because the grace time-out passed.
    pub drain_timed_out: usize,
    /// Destinations on the draining list afterwards.
    pub draining: usize,
    /// Modifying requests sent (failed ones included).
    pub messages_sent: usize,
    /// Dump requests sent (one for the services, one per service whose destinations were read).
    pub dump_requests: usize,
    /// Time spent dumping.
    pub dump_duration: Duration,
    /// Time spent sending the changes.
    pub apply_duration: Duration,
}

impl IpvsSyncReport {
    /// Whether the sync changed nothing in the kernel.
    pub fn is_noop(&self) -> bool {
        self.messages_sent == 0
    }
}

/// Keeps a kernel's IPVS table equal to a desired [`IpvsTable`].
#[derive(Debug)]
pub struct IpvsSyncer<H: IpvsHandle> {
    handle: H,
    config: IpvsSyncConfig,
    drain: DrainList,
}

/// Refused requests, collected so the sync goes on with the others.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<IpvsError>,
}

impl Failures {
    /// Keeps a per-request error and goes on; any other error ends the sync.
    fn absorb(&mut self, r: Result<(), IpvsError>) -> Result<bool, IpvsError> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_per_request() => {
                tracing::warn!(error = %e, "IPVS request refused");
                self.count += 1;
                self.first.get_or_insert(e);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn finish(self, report: IpvsSyncReport) -> Result<IpvsSyncReport, IpvsError> {
        match self.first {
            None => Ok(report),
            Some(first) => Err(IpvsError::Incomplete {
                failed: self.count,
                first: Box::new(first),
                report: Box::new(report),
            }),
        }
    }
}

impl<H: IpvsHandle> IpvsSyncer<H> {
    /// A syncer driving `handle`, with an empty draining list.
    pub fn new(handle: H, config: IpvsSyncConfig) -> IpvsSyncer<H> {
        IpvsSyncer {
            handle,
            config,
            drain: DrainList::default(),
        }
    }

    /// The handle.
    pub fn handle(&self) -> &H {
        &self.handle
    }

    /// The handle, mutably (tests use it to change the fake between syncs).
    pub fn handle_mut(&mut self) -> &mut H {
        &mut self.handle
    }

    /// The handle back.
    pub fn into_handle(self) -> H {
        self.handle
    }

    /// Its configuration.
    pub fn config(&self) -> &IpvsSyncConfig {
        &self.config
    }

    /// How many destinations are draining.
    pub fn draining(&self) -> usize {
        self.drain.len()
    }

    /// Whether the destination `addr:port` of `key` is draining.
    pub fn is_draining(&self, key: &ServiceKey, addr: std::net::IpAddr, port: u16) -> bool {
        self.drain.contains(key, &(addr, port))
    }

    /// Whether this syncer may delete the kernel service `key`: its family, not excluded.
    fn owns(&self, key: &ServiceKey) -> bool {
        self.config.family.contains(&key.addr)
            && !self
                .config
                .exclude_cidrs
                .iter()
                .any(|n| n.contains(&key.addr))
    }

    /// Makes the kernel's table `desired`: one dump of the services, one of the destinations of
    /// each desired service the kernel has, then only the requests that differ.
    ///
    /// Requests the kernel refuses are counted and skipped (the result is then
    /// [`IpvsError::Incomplete`], carrying the report); a socket or decoding error ends the sync
    /// at once. Either way the next sync starts from a fresh dump.
    pub fn sync(&mut self, desired: &IpvsTable, now: Instant) -> Result<IpvsSyncReport, IpvsError> {
        let mut report = IpvsSyncReport::default();
        let dump_start = Instant::now();
        let kernel = self.dump(desired, &mut report)?;
        report.dump_duration = dump_start.elapsed();

        let apply_start = Instant::now();
        let grace = self.config.grace_timeout;
        let plan = plan(desired, &kernel, &self.drain, |k| self.owns(k), now, grace);
        let mut failures = Failures::default();

        for sp in &plan.services {
            match sp.step {
                ServiceStep::Create => {
                    report.messages_sent += 1;
                    if !failures.absorb(self.handle.new_service(&sp.svc))? {
                        continue;
                    }
                    report.services_added += 1;
                }
                ServiceStep::Update => {
                    report.messages_sent += 1;
                    if failures.absorb(self.handle.set_service(&sp.svc))? {
                        report.services_changed += 1;
                    }
                }
                ServiceStep::Keep => {}
            }
            for step in &sp.dests {
                self.apply_dest(&sp.key, &sp.svc, step, now, &mut report, &mut failures)?;
            }
        }

        for (key, svc) in &plan.deletes {
            report.messages_sent += 1;
            if failures.absorb(self.handle.del_service(svc))? {
                report.services_deleted += 1;
                self.drain.services.remove(key);
            }
        }

        // Draining entries of services the kernel did not have are moot (the service went behind
        // our back; one created this sync starts with none). Deleted ones went above.
        self.drain
            .services
            .retain(|key, _| kernel.contains_key(key));

        report.apply_duration = apply_start.elapsed();
        report.draining = self.drain.len();
        failures.finish(report)
    }

    /// Goes through the draining list without a new desired table (the agent's periodic
    /// check): re-reads each draining service's destinations and deletes those whose
    /// connections are gone or whose time is up.
    pub fn drain(&mut self, now: Instant) -> Result<IpvsSyncReport, IpvsError> {
        let mut report = IpvsSyncReport::default();
        let mut failures = Failures::default();
        let grace = self.config.grace_timeout;
        let mut keys: Vec<ServiceKey> = self.drain.services.keys().copied().collect();
        keys.sort();
        for key in keys {
            let svc = self.drain.services[&key].svc.clone();
            let dump_start = Instant::now();
            report.dump_requests += 1;
            let kernel = self.handle.destinations(&svc)?;
            report.dump_duration += dump_start.elapsed();

            let apply_start = Instant::now();
            let have: HashMap<DestKey, IpvsDest> =
                kernel.into_iter().map(|d| ((d.addr, d.port), d)).collect();
            let mut entries: Vec<(DestKey, Instant)> = self.drain.services[&key]
                .dests
                .iter()
                .map(|(k, s)| (*k, *s))
                .collect();
            entries.sort();
            for (dk, since) in entries {
                let Some(d) = have.get(&dk) else {
                    self.drain.remove(&key, &dk);
                    continue;
                };
                if let Some(r) = removal(key.protocol, d, Some(since), now, grace) {
                    let step = DestStep::Remove(d.clone(), r);
                    self.apply_dest(&key, &svc, &step, now, &mut report, &mut failures)?;
                }
            }
            report.apply_duration += apply_start.elapsed();
        }
        report.draining = self.drain.len();
        failures.finish(report)
    }

    /// The kernel's services, with the destinations of those that are desired.
    fn dump(
        &mut self,
        desired: &IpvsTable,
        report: &mut IpvsSyncReport,
    ) -> Result<KernelView, IpvsError> {
        report.dump_requests += 1;
        let services = self.handle.services()?;
        let mut kernel: KernelView = HashMap::with_capacity(services.len());
        for svc in services {
            // Fwmark services and other protocols are never kube-proxy's: left out, left alone.
            if let Some(key) = svc.key() {
                kernel.insert(key, KernelService { svc, dests: None });
            }
        }
        for vs in &desired.virtual_servers {
            if let Some(k) = kernel.get_mut(&key_of(vs))
                && k.dests.is_none()
            {
                report.dump_requests += 1;
                k.dests = Some(self.handle.destinations(&k.svc)?);
            }
        }
        Ok(kernel)
    }

    /// Sends one destination step and updates the draining list and the report by its outcome.
    fn apply_dest(
        &mut self,
        key: &ServiceKey,
        svc: &IpvsService,
        step: &DestStep,
        now: Instant,
        report: &mut IpvsSyncReport,
        failures: &mut Failures,
    ) -> Result<(), IpvsError> {
        let dk = |d: &IpvsDest| (d.addr, d.port);
        match step {
            DestStep::Add(d) => {
                report.messages_sent += 1;
                if failures.absorb(self.handle.new_dest(svc, d))? {
                    report.dests_added += 1;
                    self.drain.remove(key, &dk(d));
                }
            }
            DestStep::Update(d) => {
                report.messages_sent += 1;
                if failures.absorb(self.handle.set_dest(svc, d))? {
                    report.dests_changed += 1;
                }
            }
            DestStep::Restore(d) => {
                report.messages_sent += 1;
                if failures.absorb(self.handle.set_dest(svc, d))? {
                    report.dests_restored += 1;
                    self.drain.remove(key, &dk(d));
                }
            }
            DestStep::Quiesce(d) => {
                report.messages_sent += 1;
                if failures.absorb(self.handle.set_dest(svc, d))? {
                    if self.drain.contains(key, &dk(d)) {
                        // Already draining; someone raised its weight again.
                        report.dests_changed += 1;
                    } else {
                        report.dests_drained += 1;
                        self.drain.insert(*key, svc, dk(d), now);
                    }
                }
            }
            DestStep::Park(d) => {
                report.dests_drained += 1;
                self.drain.insert(*key, svc, dk(d), now);
            }
            DestStep::Remove(d, why) => {
                report.messages_sent += 1;
                if failures.absorb(self.handle.del_dest(svc, d))? {
                    match why {
                        Removal::Immediate => report.dests_deleted += 1,
                        Removal::Drained { timed_out } => {
                            report.drained_deleted += 1;
                            if *timed_out {
                                report.drain_timed_out += 1;
                            }
                        }
                    }
                    self.drain.remove(key, &dk(d));
                }
            }
            DestStep::Forget(k) => self.drain.remove(key, k),
        }
        Ok(())
    }
}
