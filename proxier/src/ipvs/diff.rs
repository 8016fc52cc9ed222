//! The difference between the kernel's table and the desired one, as a plan of requests, and
//! the list of destinations being drained. Pure: no I/O, the clock comes in as `now`.
//!
//! Graceful termination follows upstream's `pkg/proxy/ipvs/graceful_termination.go` and
//! `syncEndpoint` in `pkg/proxy/ipvs/proxier.go`:
//!
//! - A destination that leaves the desired table is deleted at once if its protocol needs no
//!   graceful termination (UDP and SCTP: `IsRsGracefulTerminationNeeded` in
//!   `pkg/proxy/ipvs/util/ipvs.go`; their flows die on the next packet since kube-proxy sets
//!   `expire_nodest_conn=1`) or if it has no connections (`ActiveConn + InactiveConn == 0`,
//!   `deleteRsFunc`); otherwise it is set to weight 0 and put on the draining list
//!   (`GracefulDeleteRS`).
//! - A draining destination is deleted once its connections reach 0, checked at every sync and
//!   every [`super::IpvsSyncer::drain`] (upstream: a 1-minute timer, `rsCheckDeleteInterval`).
//! - Unlike upstream, which waits for ever, a draining destination is also deleted once the
//!   grace time-out has passed (default [`super::DEFAULT_GRACE_TIMEOUT`], 15 minutes: IPVS's
//!   own idle time-out for an established TCP connection, `tcp_timeouts[ESTABLISHED]` in
//!   `ip_vs_proto_tcp.c`), so one long-lived connection cannot pin a dead endpoint.
//! - A draining destination that comes back into the desired table is taken off the list and
//!   its weight restored with SET_DEST. (Upstream deletes and re-adds it,
//!   `MoveRSOutofGracefulDeleteList`; SET keeps the connections it still carries.)
//! - A removed service is deleted outright, destinations and all (`cleanLegacyService`), unless
//!   it is of the other family or inside `--ipvs-exclude-cidrs`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rulegen::model::Protocol;
use rulegen::render::ipvs::{IpvsTable, VirtualServer};

use super::attrs::{IP_VS_CONN_F_MASQ, IP_VS_SVC_F_PERSISTENT};
use super::entry::{IpvsDest, IpvsService, ServiceKey};

/// A destination's identity inside its service.
pub(crate) type DestKey = (IpAddr, u16);

/// The key of a desired virtual server.
pub(crate) fn key_of(vs: &VirtualServer) -> ServiceKey {
    let VirtualServer {
        protocol,
        addr,
        port,
        ..
    } = vs;
    ServiceKey {
        protocol: *protocol,
        addr: *addr,
        port: *port,
    }
}

/// The service flags a virtual server needs: its scheduler flags (`mh`'s source-port hashing,
/// [`super::attrs::IP_VS_SVC_F_SCHED_SH_PORT`]) and persistence for ClientIP session affinity.
/// The one place desired flags are computed; they are sent and compared from here.
pub(crate) fn desired_flags(vs: &VirtualServer) -> u32 {
    let persistent = if vs.persistence.is_some() {
        IP_VS_SVC_F_PERSISTENT
    } else {
        0
    };
    vs.flags | persistent
}

/// The service the kernel should hold for `vs`.
pub(crate) fn desired_service(vs: &VirtualServer) -> IpvsService {
    IpvsService::new(
        vs.protocol,
        vs.addr,
        vs.port,
        &vs.scheduler,
        desired_flags(vs),
        vs.persistence.unwrap_or(0),
    )
}

/// Whether the kernel's service needs a SET_SERVICE to become `want`: what upstream's
/// `VirtualServer.Equal` compares (scheduler, flags without `HASHED`, timeout). The netmask is
/// left out, as upstream does, so a kernel that reports it in another form cannot cause a SET
/// on every sync.
pub(crate) fn service_differs(kernel: &IpvsService, want: &IpvsService) -> bool {
    kernel.scheduler != want.scheduler
        || kernel.user_flags() != want.user_flags()
        || kernel.timeout != want.timeout
}

/// Whether connections to a removed destination of `protocol` are worth waiting for.
pub(crate) fn graceful(protocol: Protocol) -> bool {
    protocol == Protocol::Tcp
}

/// Why a destination leaving the table is deleted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Not draining: no connections, or a protocol without graceful termination.
    Immediate,
    /// Done draining: its connections reached 0, or (`timed_out`) the grace time-out passed.
    Drained {
        /// The grace time-out passed while it still had connections.
        timed_out: bool,
    },
}

/// Whether a destination that is not desired can be deleted now; `since` is when it started
/// draining, if it is on the list.
pub(crate) fn removal(
    protocol: Protocol,
    dest: &IpvsDest,
    since: Option<Instant>,
    now: Instant,
    grace: Duration,
) -> Option<Removal> {
    let done = |timed_out| match since {
        Some(_) => Removal::Drained { timed_out },
        None => Removal::Immediate,
    };
    if !graceful(protocol) || dest.connections() == 0 {
        return Some(done(false));
    }
    match since {
        Some(s) if now.saturating_duration_since(s) >= grace => Some(done(true)),
        _ => None,
    }
}

/// One step for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DestStep {
    /// NEW_DEST.
    Add(IpvsDest),
    /// SET_DEST: weight or forwarding method differ.
    Update(IpvsDest),
    /// SET_DEST of a draining destination that is desired again.
    Restore(IpvsDest),
    /// SET_DEST to weight 0, then (if not yet) onto the draining list.
    Quiesce(IpvsDest),
    /// Onto the draining list without a request (its weight is 0 already).
    Park(IpvsDest),
    /// DEL_DEST.
    Remove(IpvsDest, Removal),
    /// Off the draining list: the destination is gone from the kernel.
    Forget(DestKey),
}

/// What to do to the service itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceStep {
    /// NEW_SERVICE, then every destination.
    Create,
    /// SET_SERVICE.
    Update,
    /// Nothing.
    Keep,
}

/// The steps for one desired service.
#[derive(Debug, Clone)]
pub(crate) struct ServicePlan {
    pub(crate) key: ServiceKey,
    /// The service as desired (what requests carry).
    pub(crate) svc: IpvsService,
    pub(crate) step: ServiceStep,
    pub(crate) dests: Vec<DestStep>,
}

/// The whole plan: desired services in the table's order, then the services to delete.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub(crate) services: Vec<ServicePlan>,
    pub(crate) deletes: Vec<(ServiceKey, IpvsService)>,
}

/// A kernel service of the dump, with its destinations when they were dumped (only desired
/// services' are).
#[derive(Debug, Clone)]
pub(crate) struct KernelService {
    pub(crate) svc: IpvsService,
    pub(crate) dests: Option<Vec<IpvsDest>>,
}

/// The kernel's table as dumped, by key; services without a key (fwmark, other protocols) are
/// not in it, since kube-proxy never touches them.
pub(crate) type KernelView = HashMap<ServiceKey, KernelService>;

/// The draining destinations, by service.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrainList {
    pub(crate) services: HashMap<ServiceKey, DrainingService>,
}

/// One service's draining destinations.
#[derive(Debug, Clone)]
pub(crate) struct DrainingService {
    /// The service, to address requests to it.
    pub(crate) svc: IpvsService,
    /// Each destination and when it started draining.
    pub(crate) dests: HashMap<DestKey, Instant>,
}

impl DrainList {
    pub(crate) fn since(&self, key: &ServiceKey, dest: &DestKey) -> Option<Instant> {
        self.services.get(key)?.dests.get(dest).copied()
    }

    pub(crate) fn contains(&self, key: &ServiceKey, dest: &DestKey) -> bool {
        self.since(key, dest).is_some()
    }

    pub(crate) fn insert(
        &mut self,
        key: ServiceKey,
        svc: &IpvsService,
        dest: DestKey,
        now: Instant,
    ) {
        self.services
            .entry(key)
            .or_insert_with(|| DrainingService {
                svc: svc.clone(),
                dests: HashMap::new(),
            })
            .dests
            .entry(dest)
            .or_insert(now);
    }

    pub(crate) fn remove(&mut self, key: &ServiceKey, dest: &DestKey) {
        if let Some(s) = self.services.get_mut(key) {
            s.dests.remove(dest);
            if s.dests.is_empty() {
                self.services.remove(key);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.services.values().map(|s| s.dests.len()).sum()
    }
}

/// The plan that turns `kernel` into `desired`. `ours` says which kernel services this syncer
/// may delete (its family, outside the excluded CIDRs).
pub(crate) fn plan(
    desired: &IpvsTable,
    kernel: &KernelView,
    drain: &DrainList,
    ours: impl Fn(&ServiceKey) -> bool,
    now: Instant,
    grace: Duration,
) -> Plan {
    let mut out = Plan {
        services: Vec::with_capacity(desired.virtual_servers.len()),
        deletes: Vec::new(),
    };
    let mut wanted: HashSet<ServiceKey> = HashSet::with_capacity(desired.virtual_servers.len());
    for vs in &desired.virtual_servers {
        let key = key_of(vs);
        if !wanted.insert(key) {
            // A duplicate key: the first one wins, as the kernel could hold only one.
            continue;
        }
        let want = desired_service(vs);
        let plan = match kernel.get(&key) {
            None => ServicePlan {
                key,
                step: ServiceStep::Create,
                dests: vs
                    .real_servers
                    .iter()
                    .map(|rs| DestStep::Add(IpvsDest::masq(rs.addr, rs.port, rs.weight)))
                    .collect(),
                svc: want,
            },
            Some(k) => {
                let step = if service_differs(&k.svc, &want) {
                    ServiceStep::Update
                } else {
                    ServiceStep::Keep
                };
                let dests = plan_dests(
                    &key,
                    vs,
                    k.dests.as_deref().unwrap_or_default(),
                    drain,
                    now,
                    grace,
                );
                ServicePlan {
                    key,
                    svc: want,
                    step,
                    dests,
                }
            }
        };
        out.services.push(plan);
    }
    let mut deletes: Vec<(ServiceKey, IpvsService)> = kernel
        .iter()
        .filter(|(key, _)| !wanted.contains(key) && ours(key))
        .map(|(key, k)| (*key, k.svc.clone()))
        .collect();
    deletes.sort_by_key(|a| a.0);
    out.deletes = deletes;
    out
}

/// The destination steps of a service the kernel has.
fn plan_dests(
    key: &ServiceKey,
    vs: &VirtualServer,
    kernel: &[IpvsDest],
    drain: &DrainList,
    now: Instant,
    grace: Duration,
) -> Vec<DestStep> {
    let mut steps = Vec::new();
    let mut have: HashMap<DestKey, &IpvsDest> =
        kernel.iter().map(|d| ((d.addr, d.port), d)).collect();
    for rs in &vs.real_servers {
        let want = IpvsDest::masq(rs.addr, rs.port, rs.weight);
        match have.remove(&(rs.addr, rs.port)) {
            None => steps.push(DestStep::Add(want)),
            Some(_) if drain.contains(key, &(rs.addr, rs.port)) => {
                steps.push(DestStep::Restore(want))
            }
            Some(k) if k.weight != want.weight || k.fwd_method != IP_VS_CONN_F_MASQ => {
                steps.push(DestStep::Update(want))
            }
            Some(_) => {}
        }
    }
    let mut leaving: Vec<&IpvsDest> = have.into_values().collect();
    leaving.sort_by_key(|d| (d.addr, d.port));
    for d in leaving {
        let dk = (d.addr, d.port);
        let since = drain.since(key, &dk);
        match removal(key.protocol, d, since, now, grace) {
            Some(r) => steps.push(DestStep::Remove(d.clone(), r)),
            None if d.weight != 0 => {
                let mut zero = d.clone();
                zero.weight = 0;
                steps.push(DestStep::Quiesce(zero));
            }
            None if since.is_none() => steps.push(DestStep::Park(d.clone())),
            None => {}
        }
    }
    if let Some(ds) = drain.services.get(key) {
        let present: HashSet<DestKey> = kernel.iter().map(|d| (d.addr, d.port)).collect();
        let mut gone: Vec<DestKey> = ds
            .dests
            .keys()
            .filter(|dk| !present.contains(*dk))
            .copied()
            .collect();
        gone.sort();
        steps.extend(gone.into_iter().map(DestStep::Forget));
    }
    steps
}
