//! Which UDP conntrack flows are stale, as upstream's conntrack reconciler decides
//! (`pkg/proxy/conntrack/cleanup.go`, `CleanStaleEntries`): a pure lookup built from the model,
//! and a predicate over one flow. The kernel side (one dump, then deletions) is
//! `proxier::conntrack`.
//!
//! UDP has no connection to close: a flow DNATed to an endpoint that went away keeps every
//! later datagram of the same client socket on that dead endpoint for as long as the client
//! keeps sending (each datagram refreshes the flow's timeout). Upstream therefore lists every
//! UDP flow of the family once and deletes those that no longer match a serving endpoint. The
//! rules, as upstream has them after kubernetes#130484, #130542, #139629 and #141371:
//!
//! - Only UDP service ports count, and only those with a cluster IP of the family (the ports
//!   this family's proxier has). TCP and SCTP flows are never touched.
//! - A service port's endpoint set is every **serving** endpoint of the family, as
//!   `IP:port` — whatever the traffic policies, topology hints or terminating state say
//!   ("changes to the Service should not affect existing flows").
//! - **Frontends**: the cluster IP, each external IP and each load-balancer IP, with the
//!   service port. A flow whose original destination is a frontend is stale when its reply
//!   source (`IP:port`, the DNAT target) is not in the endpoint set — also when the set is
//!   empty (#139629: a Service scaled to zero keeps no flow to its dead endpoints) and when
//!   the flow was never DNATed (reply source = the frontend itself: it was created while the
//!   Service had no endpoints).
//! - **Node ports**: a flow whose original destination port is a node port (on any address)
//!   is stale when its reply source is not in the endpoint set; only for service ports that
//!   have serving endpoints (with none, a node port would match every UDP flow to that port
//!   number, also flows kube-proxy does not own).
//! - **Deleted services** (#141371): the frontends of UDP service ports that went since the
//!   last reconcile get an empty endpoint set once, so every flow to them goes. Here that is
//!   [`Lookup::add_removed`].
//!
//! Two deliberate differences, both deleting less than upstream:
//!
//! - A flow whose destination is a live frontend is judged by that frontend only; upstream
//!   also applies the node-port rule to it, so a flow to `clusterIP:30053` DNATed correctly
//!   would be deleted on every reconcile when another Service has node port 30053.
//! - When two UDP service ports claim the same frontend (a shared external IP), a flow is
//!   kept if it reaches an endpoint of either; upstream's map keeps whichever came last in a
//!   random iteration order.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::config::RenderConfig;
use crate::model::{IpFamily, Model, Protocol, ServicePort, ServicePortName};

#[cfg(test)]
mod tests;

/// `IPPROTO_UDP`, the only protocol whose flows can be stale.
pub const IPPROTO_UDP: u8 = 17;

/// One conntrack flow, as much of it as the staleness rules read (plus the original source
/// port, so that the original tuple is complete and the flow can be named for deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The layer-4 protocol number (`IPPROTO_*`).
    pub proto: u8,
    /// Original direction, source address (the client).
    pub orig_src: IpAddr,
    /// Original direction, destination address (the frontend the client sent to).
    pub orig_dst: IpAddr,
    /// Original direction, source port.
    pub orig_sport: u16,
    /// Original direction, destination port (the service port or node port).
    pub orig_dport: u16,
    /// Reply direction, source address (where the flow was DNATed to).
    pub reply_src: IpAddr,
    /// Reply direction, source port (the DNAT target's port).
    pub reply_sport: u16,
}

/// The service ports claiming one frontend or node port, as indices of their endpoint sets.
type Claims = Vec<u32>;

/// What the conntrack reconciler checks each UDP flow against: every UDP frontend and node
/// port of one family, with the serving endpoints behind it. Build it with [`Lookup::build`]
/// after each sync; [`Lookup::is_stale`] is the rule.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    family: IpFamily,
    /// (frontend address, service port) → the service ports serving it.
    frontends: HashMap<(IpAddr, u16), Claims>,
    /// Node port → the service ports serving it (only those with serving endpoints).
    node_ports: HashMap<u16, Claims>,
    /// (service port index, endpoint address, endpoint port) for every serving endpoint.
    endpoints: HashSet<(u32, IpAddr, u16)>,
    /// Frontends of service ports removed since the lookup given to [`Lookup::add_removed`]:
    /// every flow to them is stale.
    retired: HashSet<(IpAddr, u16)>,
    /// How many UDP service ports of the family the lookup covers.
    service_ports: usize,
}

impl Lookup {
    /// The lookup for `cfg.family`: every UDP service port of `model` with a cluster IP of
    /// that family, its frontends, its node port, and its serving endpoints of that family.
    pub fn build(model: &Model, cfg: &RenderConfig) -> Lookup {
        let family = cfg.family;
        let mut ports: Vec<(&ServicePort, IpAddr)> = model
            .services
            .iter()
            .filter(|sp| sp.protocol == Protocol::Udp)
            .filter_map(|sp| {
                sp.cluster_ips
                    .iter()
                    .find(|ip| family.contains(ip))
                    .map(|ip| (sp, *ip))
            })
            .collect();
        // Indices in name order, so that equal models give equal lookups (see `same_targets`).
        fn key<'a>(p: &(&'a ServicePort, IpAddr)) -> (&'a ServicePortName, u16) {
            (&p.0.name, p.0.port)
        }
        if !ports.is_sorted_by(|a, b| key(a) <= key(b)) {
            ports.sort_by(|a, b| key(a).cmp(&key(b)));
        }
        let mut out = Lookup {
            family,
            service_ports: ports.len(),
            ..Lookup::default()
        };
        for (index, (sp, cluster_ip)) in ports.iter().enumerate() {
            let index = index as u32;
            let before = out.endpoints.len();
            for ep in &sp.endpoints {
                if ep.serving && family.contains(&ep.ip) {
                    out.endpoints.insert((index, ep.ip, ep.port));
                }
            }
            // Indices are unique per service port, so any endpoint of this one is new.
            let serving = out.endpoints.len() > before;
            let frontends = std::iter::once(cluster_ip)
                .chain(&sp.external_ips)
                .chain(&sp.load_balancer_ips)
                .filter(|ip| family.contains(ip));
            for ip in frontends {
                claim(out.frontends.entry((*ip, sp.port)).or_default(), index);
            }
            if let (Some(np), true) = (sp.node_port, serving) {
                claim(out.node_ports.entry(np).or_default(), index);
            }
        }
        out
    }

    /// The family the lookup was built for: the one whose flows it judges.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// How many UDP service ports it covers.
    pub fn service_ports(&self) -> usize {
        self.service_ports
    }

    /// How many frontends (address and port) it covers, the removed ones included.
    pub fn frontends(&self) -> usize {
        self.frontends.len() + self.retired.len()
    }

    /// Whether no flow can be stale: no UDP frontend, node port or removed frontend.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.node_ports.is_empty() && self.retired.is_empty()
    }

    /// Marks the frontends `previous` had and this lookup lacks (their service port was
    /// deleted, or the address or port left it) as removed: every flow to them is stale, as
    /// upstream does for deleted UDP services (kubernetes#141371). Only `previous`'s own
    /// frontends count, not those it held as removed, so pass the lookup of the last
    /// reconcile that succeeded. Node ports are not carried over (upstream never clears a
    /// node port without endpoints). Returns how many frontends were added.
    pub fn add_removed(&mut self, previous: &Lookup) -> usize {
        if previous.family != self.family {
            return 0;
        }
        let before = self.retired.len();
        for key in previous.frontends.keys() {
            if !self.frontends.contains_key(key) {
                self.retired.insert(*key);
            }
        }
        self.retired.len() - before
    }

    /// Whether a reconcile can delete anything that the last successful one, run with
    /// `previous`, left: always when there was none (a restarted agent does not know what
    /// happened meanwhile), else when a frontend, node port or endpoint set changed or a
    /// frontend was removed. Upstream reconciles only after a UDP service's endpoints changed;
    /// this is that, seen from the result.
    pub fn needs_reconcile(&self, previous: Option<&Lookup>) -> bool {
        if self.is_empty() {
            return false;
        }
        match previous {
            None => true,
            Some(prev) => !self.retired.is_empty() || !self.same_targets(prev),
        }
    }

    /// Whether both lookups judge every flow alike, removed frontends left aside.
    fn same_targets(&self, other: &Lookup) -> bool {
        self.family == other.family
            && self.frontends == other.frontends
            && self.node_ports == other.node_ports
            && self.endpoints == other.endpoints
    }

    /// Whether `flow` is stale and should be deleted (the rules are in the module's doc).
    pub fn is_stale(&self, flow: &Flow) -> bool {
        if flow.proto != IPPROTO_UDP
            || !self.family.contains(&flow.orig_dst)
            || !self.family.contains(&flow.reply_src)
        {
            return false;
        }
        let target = (flow.reply_src, flow.reply_sport);
        let front = (flow.orig_dst, flow.orig_dport);
        if let Some(claims) = self.frontends.get(&front) {
            return !self.serves(claims, target);
        }
        if self.retired.contains(&front) {
            return true;
        }
        match self.node_ports.get(&flow.orig_dport) {
            Some(claims) => !self.serves(claims, target),
            None => false,
        }
    }

    /// Whether `target` is a serving endpoint of any of `claims`.
    fn serves(&self, claims: &[u32], (ip, port): (IpAddr, u16)) -> bool {
        claims
            .iter()
            .any(|&i| self.endpoints.contains(&(i, ip, port)))
    }
}

fn claim(claims: &mut Claims, index: u32) {
    if !claims.contains(&index) {
        claims.push(index);
    }
}
