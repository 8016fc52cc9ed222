//! The per-port plan: every decision a mode's render needs about one service port, made once —
//! the family's addresses by kind, the categorized endpoint sets, and what exists (endpoint
//! selections, the external dispatch, the source-range firewall), where sources are
//! masqueraded and what happens to traffic no endpoint serves.
//!
//! It names no chain, set or virtual server: each mode maps the decisions onto its own objects
//! (iptables mode's `KUBE-SVC-*`/`KUBE-SVL-*`/`KUBE-EXT-*`/`KUBE-FW-*`, IPVS mode's virtual
//! servers and ipsets), and `explain` reads the same plan, so it tells the render's story.

pub mod endpoints;
pub mod node;

use std::net::IpAddr;

use ipnet::IpNet;

pub use endpoints::Categorized;
pub use node::{NodePlan, NodePortDestinations};

use crate::config::RenderConfig;
use crate::model::{Endpoint, ServicePort, SessionAffinity};

/// Which endpoint set a kind of traffic is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSet {
    /// The cluster's endpoints (Cluster policy; also the external path's short-circuits).
    Cluster,
    /// This node's endpoints (Local policy).
    Local,
}

/// Why a destination of the port serves no endpoint, which decides what the rules do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The Service has no usable endpoint anywhere: rejected (port unreachable).
    NoEndpoints,
    /// A Local policy and no usable endpoint on this node: dropped.
    NoLocalEndpoints,
}

/// Where one kind of traffic (cluster IP, or external destinations) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The set its policy selects from.
    pub set: EndpointSet,
    /// Why it reaches no endpoint, if it does not.
    pub unserved: Option<Unserved>,
}

impl Target {
    /// Whether this traffic reaches an endpoint.
    pub fn served(&self) -> bool {
        self.unserved.is_none()
    }
}

/// How a mode can masquerade cluster-IP traffic on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIpMasquerade {
    /// `--masquerade-all`: every packet.
    All,
    /// Packets the local-traffic detector does not recognise as a local pod's.
    NotFromLocalPod,
    /// No detector for the family: iptables mode masquerades none of it, IPVS mode masquerades
    /// sources that are Service addresses.
    NoDetector,
}

/// How a Local traffic policy picks its endpoints when a mode falls back (IPVS mode serves the
/// cluster's endpoints where iptables mode drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Cluster policy: the cluster's endpoints.
    Cluster,
    /// Local policy: this node's endpoints.
    Local,
    /// Local policy with no endpoint on this node: the cluster's, as upstream's IPVS proxier
    /// falls back (iptables mode drops instead).
    LocalFallback,
}

/// The addresses one service port answers on, in the rendered family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// The cluster IP of the family.
    pub cluster_ip: IpAddr,
    /// The Service port (cluster, external and load-balancer IPs).
    pub port: u16,
    /// The node port, if any (served where [`NodePlan`] says).
    pub node_port: Option<u16>,
    /// `externalIPs` of the family, in the Service's order.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of the family, in the Service's order.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` of the family.
    pub source_ranges: Vec<IpNet>,
    /// `healthCheckNodePort`, if any.
    pub health_check_node_port: Option<u16>,
}

/// The traffic policies as they apply to this port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` on a port with external destinations.
    pub external_local: bool,
    /// Whether the port has node ports, external IPs or load-balancer IPs.
    pub externally_accessible: bool,
    /// Whether some traffic uses the Cluster set.
    pub uses_cluster: bool,
    /// Whether some traffic uses the Local set.
    pub uses_local: bool,
}

/// What exists for the port and where its traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decisions {
    /// Whether the Service has any usable endpoint at all.
    pub has_endpoints: bool,
    /// Where cluster-IP traffic goes.
    pub internal: Target,
    /// Where traffic to external destinations (node port, external and load-balancer IPs)
    /// goes once it is not short-circuited to the Cluster set.
    pub external: Target,
    /// A Cluster endpoint selection exists (in use, and not empty).
    pub cluster_selection: bool,
    /// A Local endpoint selection exists (in use, and not empty).
    pub local_selection: bool,
    /// External destinations have a dispatch of their own (masquerade and short-circuits).
    pub external_dispatch: bool,
    /// Load-balancer traffic passes a source-range firewall first.
    pub firewall: bool,
    /// Some node address is inside the source ranges, so the node's own connections (which
    /// loop back with the load-balancer IP as source) are let through the firewall too.
    pub firewall_admits_node: bool,
    /// How cluster-IP traffic is masqueraded.
    pub cluster_ip_masquerade: ClusterIpMasquerade,
    /// ClientIP affinity timeout in seconds, if any.
    pub affinity_seconds: Option<u32>,
}

/// One service port's plan for one family.
#[derive(Debug, Clone, PartialEq)]
pub struct PortPlan<'m> {
    /// The service port planned.
    pub port: &'m ServicePort,
    /// Its addresses by kind.
    pub addresses: Addresses,
    /// Its traffic policies.
    pub policies: Policies,
    /// Its endpoint sets, as indices into the endpoint list the plan was made from.
    pub endpoints: Categorized,
    /// The decisions.
    pub decisions: Decisions,
}

impl<'m> PortPlan<'m> {
    /// Plans `sp` on the node `node` describes (`cfg` is its config) from `eps`, the port's
    /// endpoints of the family in the mode's order; None without a cluster IP of the family.
    pub fn new(
        sp: &'m ServicePort,
        cfg: &RenderConfig,
        node: &NodePlan,
        eps: &[&Endpoint],
    ) -> Option<PortPlan<'m>> {
        let cluster_ip = *sp.cluster_ips.iter().find(|ip| node.family.contains(ip))?;
        Some(Self::with_sets(
            sp,
            cluster_ip,
            cfg,
            node,
            eps,
            Categorized::default(),
        ))
    }

    /// Like [`PortPlan::new`] for a known cluster IP, categorizing into `sets` (whose
    /// allocations a renderer reuses from one port to the next).
    pub fn with_sets(
        sp: &'m ServicePort,
        cluster_ip: IpAddr,
        cfg: &RenderConfig,
        node: &NodePlan,
        eps: &[&Endpoint],
        mut sets: Categorized,
    ) -> PortPlan<'m> {
        let fam = node.family;
        endpoints::categorize_into(&mut sets, sp, eps, &cfg.node_name, cfg.node_zone.as_deref());
        let addresses = Addresses {
            cluster_ip,
            port: sp.port,
            node_port: sp.node_port,
            external_ips: of_family(&sp.external_ips, |ip| fam.contains(ip)),
            load_balancer_ips: of_family(&sp.load_balancer_ips, |ip| fam.contains(ip)),
            source_ranges: of_family(&sp.load_balancer_source_ranges, |n| fam.contains_net(n)),
            health_check_node_port: sp.health_check_node_port,
        };
        let policies = Policies {
            internal_local: endpoints::internal_policy_local(sp),
            external_local: endpoints::external_policy_local(sp),
            externally_accessible: endpoints::externally_accessible(sp),
            uses_cluster: endpoints::uses_cluster_endpoints(sp),
            uses_local: endpoints::uses_local_endpoints(sp),
        };
        let decisions = decide(sp, cfg, node, &addresses, &policies, &sets);
        PortPlan {
            port: sp,
            addresses,
            policies,
            endpoints: sets,
            decisions,
        }
    }

    /// The set a policy's traffic reaches when a mode falls back to the cluster's endpoints
    /// under a Local policy with none on this node (IPVS mode).
    pub fn selection(&self, local_policy: bool) -> Selection {
        match (local_policy, self.endpoints.local.is_empty()) {
            (false, _) => Selection::Cluster,
            (true, false) => Selection::Local,
            (true, true) => Selection::LocalFallback,
        }
    }

    /// The endpoint indices of `set`.
    pub fn members(&self, set: EndpointSet) -> &[usize] {
        match set {
            EndpointSet::Cluster => &self.endpoints.cluster,
            EndpointSet::Local => &self.endpoints.local,
        }
    }
}

fn of_family<T: Copy>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<T> {
    items.iter().copied().filter(|x| keep(x)).collect()
}

fn decide(
    sp: &ServicePort,
    cfg: &RenderConfig,
    node: &NodePlan,
    addresses: &Addresses,
    policies: &Policies,
    sets: &Categorized,
) -> Decisions {
    let has_endpoints = sets.has_any;
    let target = |local: bool| {
        let (set, served) = if local {
            (EndpointSet::Local, has_endpoints && !sets.local.is_empty())
        } else {
            (EndpointSet::Cluster, has_endpoints)
        };
        let unserved = if !has_endpoints {
            Some(Unserved::NoEndpoints)
        } else {
            (!served).then_some(Unserved::NoLocalEndpoints)
        };
        Target { set, unserved }
    };
    let firewall = has_endpoints
        && !addresses.load_balancer_ips.is_empty()
        && !addresses.source_ranges.is_empty();
    Decisions {
        has_endpoints,
        internal: target(policies.internal_local),
        external: target(policies.external_local),
        cluster_selection: !sets.cluster.is_empty() && policies.uses_cluster,
        local_selection: !sets.local.is_empty() && policies.uses_local,
        external_dispatch: has_endpoints && policies.externally_accessible,
        firewall,
        firewall_admits_node: firewall
            && addresses
                .source_ranges
                .iter()
                .any(|net| cfg.node_ips.iter().any(|ip| net.contains(ip))),
        cluster_ip_masquerade: if cfg.masquerade_all {
            ClusterIpMasquerade::All
        } else if node.has_local_detector {
            ClusterIpMasquerade::NotFromLocalPod
        } else {
            ClusterIpMasquerade::NoDetector
        },
        affinity_seconds: match sp.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        },
    }
}

#[cfg(test)]
mod tests;
