//! What the iptables render does with one service port, as plain data: the addresses it is
//! reachable on, which endpoints each path reaches (and why others are left out), where the
//! source is masqueraded, and the chains that carry it. Read off the port's
//! [`PortPlan`] — the decisions the renderer writes — with chain names from
//! [`crate::render::iptables::chains`], so it cannot tell a different story than the rules.

pub mod ipvs;

use ipnet::IpNet;

use crate::config::{LocalDetector, RenderConfig};
use crate::model::{Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, TrafficPolicy};
use crate::plan::{
    ClusterIpMasquerade, EndpointSet as PlanSet, NodePlan, NodePortDestinations, PortPlan,
    Unserved, endpoints,
};
use crate::render::iptables::chains::{
    self, ChainName, KUBE_NODEPORTS, KUBE_SERVICES, ServiceChains,
};

/// One service port as the render carries it on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct PortExplanation {
    /// The port's identity.
    pub name: ServicePortName,
    /// Its protocol.
    pub protocol: Protocol,
    /// The Service port number.
    pub port: u16,
    /// The family explained.
    pub family: IpFamily,
    /// `internalTrafficPolicy`.
    pub internal_policy: TrafficPolicy,
    /// `externalTrafficPolicy` (only matters when the port has external destinations).
    pub external_policy: TrafficPolicy,
    /// ClientIP affinity timeout in seconds, if any.
    pub affinity_seconds: Option<u32>,
    /// How traffic from local pods is recognised, e.g. `source in 10.244.0.0/16`; None without a detector.
    pub local_traffic: Option<String>,
    /// The endpoints of this family, in the renderer's order.
    pub endpoints: Vec<EndpointReport>,
    /// The Cluster-policy set (`KUBE-SVC-*`), when the port uses one.
    pub cluster_set: Option<EndpointSet>,
    /// The Local-policy set (`KUBE-SVL-*`), when the port uses one.
    pub local_set: Option<EndpointSet>,
    /// Every way in: cluster IP, node port, external IPs, load-balancer IPs.
    pub paths: Vec<Path>,
    /// `healthCheckNodePort`: kube-proxy answers it; filter `KUBE-NODEPORTS` accepts it.
    pub health_check_node_port: Option<u16>,
    /// Every per-service chain the render writes for this port (sorted).
    pub chains: Vec<ChainName>,
}

/// One endpoint and what each endpoint set made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    /// `IP:port` (`[IP]:port` for IPv6).
    pub address: String,
    /// `nodeName`, if the slice gave one.
    pub node: Option<String>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Its `KUBE-SEP-*` chain, when some chain can reach it.
    pub sep: Option<ChainName>,
    /// Why the Cluster set left it out (None: in it, or no Cluster set).
    pub cluster_excluded: Option<Exclusion>,
    /// Why the Local set left it out (None: in it, or no Local set).
    pub local_excluded: Option<Exclusion>,
}

/// Why an endpoint is not in a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// Not ready, not a serving terminating endpoint.
    NotReady,
    /// Terminating and no longer serving.
    TerminatingNotServing,
    /// Serving but terminating, while ready endpoints exist (used only when none are ready).
    TerminatingWithReady,
    /// Topology hints send this node's traffic elsewhere.
    TopologyHints {
        /// `hints.forZones` of the endpoint.
        zones: Vec<String>,
        /// `hints.forNodes` of the endpoint.
        nodes: Vec<String>,
    },
    /// On another node (or no node given) under a Local policy.
    OtherNode(Option<String>),
}

/// Which endpoint selection chain a set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// `KUBE-SVC-*`.
    Cluster,
    /// `KUBE-SVL-*`.
    Local,
}

/// An endpoint selection chain and the endpoints it picks, each with an equal share.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSet {
    /// Cluster or Local.
    pub kind: SetKind,
    /// The chain, if the render writes it (None: the set is empty).
    pub chain: Option<ChainName>,
    /// Indices into [`PortExplanation::endpoints`].
    pub members: Vec<usize>,
}

impl EndpointSet {
    /// The probability each member is chosen with (random, equal shares).
    pub fn share(&self) -> f64 {
        if self.members.is_empty() {
            0.0
        } else {
            1.0 / self.members.len() as f64
        }
    }
}

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// The cluster IP.
    ClusterIp,
    /// The node port.
    NodePort,
    /// An external IP.
    ExternalIp,
    /// A load-balancer IP.
    LoadBalancerIp,
}

/// One destination (or set of destinations) of the port and what happens to its traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// What kind of destination.
    pub kind: PathKind,
    /// The destination addresses, as text (`10.96.0.10`, `every local address`, …).
    pub addresses: Vec<String>,
    /// The destination port.
    pub port: u16,
    /// `loadBalancerSourceRanges` that apply (load-balancer paths only).
    pub source_ranges: Vec<IpNet>,
    /// What traffic of each origin meets.
    pub routes: Vec<Route>,
}

/// Where a packet comes from, as the rules tell origins apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Any source.
    Any,
    /// A local pod (the local-traffic detector matches).
    LocalPod,
    /// Anything the local-traffic detector does not match.
    NotLocalPod,
    /// This node itself (`--src-type LOCAL`).
    ThisNode,
    /// Neither a local pod nor this node.
    Elsewhere,
    /// A source outside `loadBalancerSourceRanges`.
    OutsideSourceRanges,
}

/// Why a route masquerades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masquerade {
    /// `--masquerade-all`.
    MasqueradeAll,
    /// Cluster-IP traffic not from a local pod.
    NotFromLocalPod,
    /// External traffic under `externalTrafficPolicy: Cluster`.
    ExternalCluster,
    /// Traffic from this node to an external destination under a Local policy.
    FromThisNode,
}

/// What a route ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// DNAT to one endpoint of this set.
    Endpoints(SetKind),
    /// REJECT (icmp port unreachable): the Service has no endpoints.
    RejectNoEndpoints,
    /// DROP: no endpoint on this node under a Local policy.
    DropNoLocalEndpoints,
    /// DROP by `KUBE-PROXY-FIREWALL`: the source is not in the source ranges.
    DropFirewall,
}

/// The rules traffic of one origin meets on one path.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Which traffic.
    pub origin: Origin,
    /// The chains it passes, in order (the `KUBE-SEP-*` chain is the endpoint's).
    pub chains: Vec<String>,
    /// Whether (and why) its source is masqueraded.
    pub masquerade: Option<Masquerade>,
    /// Where it ends.
    pub verdict: Verdict,
}

/// The node-port destinations the render accepts: every local address, or a list.
pub fn node_port_addresses(cfg: &RenderConfig) -> Vec<String> {
    match NodePlan::new(cfg).node_port_destinations {
        NodePortDestinations::EveryLocalAddress { loopback } => {
            vec![match (cfg.family, loopback) {
                (IpFamily::V4, true) => "every local address (127.0.0.1 included)".to_string(),
                (IpFamily::V4, false) => "every local address but 127.0.0.0/8".to_string(),
                (IpFamily::V6, _) => "every local address but ::1".to_string(),
            }]
        }
        NodePortDestinations::Addresses(ips) => ips.iter().map(ToString::to_string).collect(),
    }
}

fn detector_text(cfg: &RenderConfig) -> Option<String> {
    match &cfg.local_detector {
        LocalDetector::None => None,
        LocalDetector::Cidrs(cidrs) => cidrs
            .iter()
            .find(|c| cfg.family.contains_net(c))
            .map(|c| format!("source in {c}")),
        LocalDetector::BridgeInterface(br) => Some(format!("arriving on {br}")),
        LocalDetector::InterfaceNamePrefix(p) => Some(format!("arriving on {p}+")),
    }
}

fn exclusion(e: &Endpoint, set: &[usize], all: &[&Endpoint]) -> Exclusion {
    if e.ready {
        return Exclusion::TopologyHints {
            zones: e.zone_hints().unwrap_or_default().to_vec(),
            nodes: e.node_hints().unwrap_or_default().to_vec(),
        };
    }
    if e.terminating && !e.serving {
        return Exclusion::TerminatingNotServing;
    }
    if e.terminating && set.iter().any(|&i| all[i].ready) {
        return Exclusion::TerminatingWithReady;
    }
    Exclusion::NotReady
}

/// Why the Local set left out `e`, which it did.
fn local_exclusion(e: &Endpoint, node: &str, set: &[usize], all: &[&Endpoint]) -> Exclusion {
    if node.is_empty() || e.node_name.as_deref() != Some(node) {
        Exclusion::OtherNode(e.node_name.as_deref().map(str::to_string))
    } else {
        exclusion(e, set, all)
    }
}

/// The selection chain iptables mode names for an endpoint set.
fn set_chain(sc: &ServiceChains, set: PlanSet) -> ChainName {
    match set {
        PlanSet::Cluster => sc.svc,
        PlanSet::Local => sc.svl,
    }
}

fn set_kind(set: PlanSet) -> SetKind {
    match set {
        PlanSet::Cluster => SetKind::Cluster,
        PlanSet::Local => SetKind::Local,
    }
}

/// Explains `sp` as the render for `cfg` carries it; None when it has no cluster IP of `cfg.family`.
pub fn explain_port(sp: &ServicePort, cfg: &RenderConfig) -> Option<PortExplanation> {
    let node = NodePlan::new(cfg);
    // The renderer's endpoint order: this family's, sorted and deduplicated by "IP:port".
    let eps = endpoints::by_address_text(sp, cfg.family);
    let refs: Vec<&Endpoint> = eps.iter().map(|(_, e)| *e).collect();
    let plan = PortPlan::new(sp, cfg, &node, &refs)?;
    let sc = ServiceChains::new(&sp.name, sp.protocol);
    let endpoints = endpoint_reports(&plan, &eps, &refs, &cfg.node_name);
    let d = &plan.decisions;
    let set = |set: PlanSet, exists: bool, used: bool| {
        used.then(|| EndpointSet {
            kind: set_kind(set),
            chain: exists.then_some(set_chain(&sc, set)),
            members: plan.members(set).to_vec(),
        })
    };
    Some(PortExplanation {
        name: sp.name.clone(),
        protocol: sp.protocol,
        port: sp.port,
        family: cfg.family,
        internal_policy: sp.internal_traffic_policy,
        external_policy: sp.external_traffic_policy,
        affinity_seconds: d.affinity_seconds,
        local_traffic: node
            .has_local_detector
            .then(|| detector_text(cfg))
            .flatten(),
        cluster_set: set(
            PlanSet::Cluster,
            d.cluster_selection,
            plan.policies.uses_cluster,
        ),
        local_set: set(PlanSet::Local, d.local_selection, plan.policies.uses_local),
        chains: port_chains(&plan, &sc, &endpoints),
        paths: paths(&plan, &node, &sc, cfg),
        endpoints,
        health_check_node_port: plan.addresses.health_check_node_port,
    })
}

/// Each endpoint with its `KUBE-SEP-*` chain and why each set in use left it out.
fn endpoint_reports(
    plan: &PortPlan,
    eps: &[(String, &Endpoint)],
    refs: &[&Endpoint],
    node: &str,
) -> Vec<EndpointReport> {
    let (sp, cat) = (plan.port, &plan.endpoints);
    eps.iter()
        .enumerate()
        .map(|(i, (addr, e))| EndpointReport {
            address: addr.clone(),
            node: e.node_name.as_deref().map(str::to_string),
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            sep: cat
                .all_reachable
                .contains(&i)
                .then(|| chains::endpoint_chain(&sp.name, sp.protocol, addr)),
            cluster_excluded: (plan.policies.uses_cluster && !cat.cluster.contains(&i))
                .then(|| exclusion(e, &cat.cluster, refs)),
            local_excluded: (plan.policies.uses_local && !cat.local.contains(&i))
                .then(|| local_exclusion(e, node, &cat.local, refs)),
        })
        .collect()
}

/// Every per-service chain the render writes for the port, sorted.
fn port_chains(plan: &PortPlan, sc: &ServiceChains, eps: &[EndpointReport]) -> Vec<ChainName> {
    let d = &plan.decisions;
    let mut all = Vec::new();
    all.extend(d.cluster_selection.then_some(sc.svc));
    all.extend(d.local_selection.then_some(sc.svl));
    all.extend(d.external_dispatch.then_some(sc.ext));
    all.extend(d.firewall.then_some(sc.fw));
    all.extend(eps.iter().filter_map(|e| e.sep));
    all.sort();
    all
}

/// Every way in, with what traffic of each origin meets.
fn paths(plan: &PortPlan, node: &NodePlan, sc: &ServiceChains, cfg: &RenderConfig) -> Vec<Path> {
    let a = &plan.addresses;
    let mut paths = vec![Path {
        kind: PathKind::ClusterIp,
        addresses: vec![a.cluster_ip.to_string()],
        port: a.port,
        source_ranges: Vec::new(),
        routes: cluster_ip_routes(plan, sc),
    }];
    let external = |prefix: Vec<String>| external_routes(plan, node, sc, prefix);
    if let Some(np) = a.node_port {
        paths.push(Path {
            kind: PathKind::NodePort,
            addresses: node_port_addresses(cfg),
            port: np,
            source_ranges: Vec::new(),
            routes: external(vec![KUBE_SERVICES.into(), KUBE_NODEPORTS.into()]),
        });
    }
    if !a.external_ips.is_empty() {
        paths.push(Path {
            kind: PathKind::ExternalIp,
            addresses: a.external_ips.iter().map(ToString::to_string).collect(),
            port: a.port,
            source_ranges: Vec::new(),
            routes: external(vec![KUBE_SERVICES.into()]),
        });
    }
    if !a.load_balancer_ips.is_empty() {
        let routes = if plan.decisions.firewall {
            let fw = sc.fw.as_str().to_string();
            let mut r = external(vec![KUBE_SERVICES.into(), fw.clone()]);
            r.push(route(
                Origin::OutsideSourceRanges,
                vec![KUBE_SERVICES.into(), fw, chains::KUBE_PROXY_FIREWALL.into()],
                None,
                Verdict::DropFirewall,
            ));
            r
        } else {
            external(vec![KUBE_SERVICES.into()])
        };
        paths.push(Path {
            kind: PathKind::LoadBalancerIp,
            addresses: a
                .load_balancer_ips
                .iter()
                .map(ToString::to_string)
                .collect(),
            port: a.port,
            source_ranges: a.source_ranges.clone(),
            routes,
        });
    }
    paths
}

/// What cluster-IP traffic meets.
fn cluster_ip_routes(plan: &PortPlan, sc: &ServiceChains) -> Vec<Route> {
    let internal = plan.decisions.internal;
    let dispatch = || vec![KUBE_SERVICES.to_string()];
    match internal.unserved {
        Some(Unserved::NoEndpoints) => {
            return vec![route(
                Origin::Any,
                dispatch(),
                None,
                Verdict::RejectNoEndpoints,
            )];
        }
        Some(Unserved::NoLocalEndpoints) => {
            return vec![route(
                Origin::Any,
                dispatch(),
                None,
                Verdict::DropNoLocalEndpoints,
            )];
        }
        None => {}
    }
    let chains = vec![
        KUBE_SERVICES.to_string(),
        set_chain(sc, internal.set).as_str().to_string(),
    ];
    let to = Verdict::Endpoints(set_kind(internal.set));
    match plan.decisions.cluster_ip_masquerade {
        ClusterIpMasquerade::All => vec![route(
            Origin::Any,
            chains,
            Some(Masquerade::MasqueradeAll),
            to,
        )],
        ClusterIpMasquerade::NotFromLocalPod => vec![
            route(Origin::LocalPod, chains.clone(), None, to),
            route(
                Origin::NotLocalPod,
                chains,
                Some(Masquerade::NotFromLocalPod),
                to,
            ),
        ],
        ClusterIpMasquerade::NoDetector => vec![route(Origin::Any, chains, None, to)],
    }
}

/// What traffic to an external destination meets; they all enter `KUBE-EXT-*`, `prefix` is how
/// they get there.
fn external_routes(
    plan: &PortPlan,
    node: &NodePlan,
    sc: &ServiceChains,
    prefix: Vec<String>,
) -> Vec<Route> {
    let d = &plan.decisions;
    if !d.has_endpoints {
        // The filter table's KUBE-EXTERNAL-SERVICES rejects it.
        return vec![route(
            Origin::Any,
            vec![chains::KUBE_EXTERNAL_SERVICES.into()],
            None,
            Verdict::RejectNoEndpoints,
        )];
    }
    let mut via = prefix;
    via.push(sc.ext.as_str().to_string());
    let to = |c: &ChainName| {
        let mut v = via.clone();
        v.push(c.as_str().to_string());
        v
    };
    if !plan.policies.external_local {
        return vec![route(
            Origin::Any,
            to(&sc.svc),
            Some(Masquerade::ExternalCluster),
            Verdict::Endpoints(SetKind::Cluster),
        )];
    }
    let mut out = Vec::new();
    if node.has_local_detector {
        out.push(route(
            Origin::LocalPod,
            to(&sc.svc),
            None,
            Verdict::Endpoints(SetKind::Cluster),
        ));
    }
    out.push(route(
        Origin::ThisNode,
        to(&sc.svc),
        Some(Masquerade::FromThisNode),
        Verdict::Endpoints(SetKind::Cluster),
    ));
    if d.external.served() {
        out.push(route(
            Origin::Elsewhere,
            to(&sc.svl),
            None,
            Verdict::Endpoints(SetKind::Local),
        ));
    } else {
        // Nothing in nat matches; the filter table's KUBE-EXTERNAL-SERVICES drops it.
        let mut v = via;
        v.push(chains::KUBE_EXTERNAL_SERVICES.into());
        out.push(route(
            Origin::Elsewhere,
            v,
            None,
            Verdict::DropNoLocalEndpoints,
        ));
    }
    out
}

fn route(origin: Origin, chains: Vec<String>, masquerade: Option<Masquerade>, v: Verdict) -> Route {
    Route {
        origin,
        chains,
        masquerade,
        verdict: v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Hints;
    use crate::test_fixtures::{ep, sp};

    fn cfg() -> RenderConfig {
        RenderConfig {
            node_name: "node-a".into(),
            node_zone: Some("zone-a".into()),
            local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
            ..RenderConfig::default()
        }
    }

    #[test]
    fn cluster_ip_splits_on_the_detector_and_shares_equally() {
        let x = explain_port(&sp(vec![ep(2, "node-b"), ep(1, "node-a")]), &cfg()).unwrap();
        assert_eq!(x.endpoints[0].address, "10.244.0.1:8080");
        let set = x.cluster_set.as_ref().unwrap();
        assert_eq!(set.members, vec![0, 1]);
        assert_eq!(set.share(), 0.5);
        assert_eq!(x.paths.len(), 1);
        let r = &x.paths[0].routes;
        assert_eq!(r[0].origin, Origin::LocalPod);
        assert_eq!(r[0].masquerade, None);
        assert_eq!(r[1].masquerade, Some(Masquerade::NotFromLocalPod));
        assert_eq!(x.chains.len(), 3); // SVC + 2 SEP
        assert!(x.local_set.is_none());
    }

    #[test]
    fn no_endpoints_rejects_and_has_no_chains() {
        let x = explain_port(&sp(vec![]), &cfg()).unwrap();
        assert_eq!(x.paths[0].routes[0].verdict, Verdict::RejectNoEndpoints);
        assert!(x.chains.is_empty());
    }

    #[test]
    fn reasons_for_leaving_endpoints_out() {
        let mut unready = ep(1, "node-a");
        unready.ready = false;
        let mut term = ep(2, "node-a");
        term.ready = false;
        term.terminating = true;
        let mut gone = ep(3, "node-a");
        gone.ready = false;
        gone.serving = false;
        gone.terminating = true;
        let x = explain_port(&sp(vec![unready, term, gone, ep(4, "node-b")]), &cfg()).unwrap();
        let why: Vec<_> = x
            .endpoints
            .iter()
            .map(|e| e.cluster_excluded.clone())
            .collect();
        assert_eq!(
            why,
            vec![
                Some(Exclusion::NotReady),
                Some(Exclusion::TerminatingWithReady),
                Some(Exclusion::TerminatingNotServing),
                None
            ]
        );
    }

    #[test]
    fn topology_hints_exclude_other_zones() {
        let hinted = |last, zone: &str| Endpoint {
            hints: Some(Box::new(Hints {
                zones: Some(vec![zone.to_string()]),
                nodes: None,
            })),
            ..ep(last, "node-b")
        };
        let x = explain_port(&sp(vec![hinted(1, "zone-a"), hinted(2, "zone-b")]), &cfg()).unwrap();
        assert_eq!(x.endpoints[0].cluster_excluded, None);
        assert!(matches!(
            x.endpoints[1].cluster_excluded,
            Some(Exclusion::TopologyHints { .. })
        ));
    }

    #[test]
    fn external_local_policy_routes_by_origin() {
        let mut s = sp(vec![ep(1, "node-a"), ep(2, "node-b")]);
        s.node_port = Some(30080);
        s.external_traffic_policy = TrafficPolicy::Local;
        let x = explain_port(&s, &cfg()).unwrap();
        let np = &x.paths[1];
        assert_eq!(np.kind, PathKind::NodePort);
        let origins: Vec<_> = np.routes.iter().map(|r| (r.origin, r.verdict)).collect();
        assert_eq!(
            origins,
            vec![
                (Origin::LocalPod, Verdict::Endpoints(SetKind::Cluster)),
                (Origin::ThisNode, Verdict::Endpoints(SetKind::Cluster)),
                (Origin::Elsewhere, Verdict::Endpoints(SetKind::Local)),
            ]
        );
        assert_eq!(x.local_set.as_ref().unwrap().members, vec![0]);
        assert_eq!(
            x.endpoints[1].local_excluded,
            Some(Exclusion::OtherNode(Some("node-b".into())))
        );
    }

    #[test]
    fn external_local_without_local_endpoints_drops() {
        let mut s = sp(vec![ep(2, "node-b")]);
        s.node_port = Some(30080);
        s.external_traffic_policy = TrafficPolicy::Local;
        let x = explain_port(&s, &cfg()).unwrap();
        let last = x.paths[1].routes.last().unwrap();
        assert_eq!(last.verdict, Verdict::DropNoLocalEndpoints);
    }

    #[test]
    fn source_ranges_add_a_firewall_route() {
        let mut s = sp(vec![ep(1, "node-b")]);
        s.node_port = Some(30443);
        s.load_balancer_ips = vec!["203.0.113.10".parse().unwrap()];
        s.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let x = explain_port(&s, &cfg()).unwrap();
        let lb = x.paths.last().unwrap();
        assert_eq!(lb.kind, PathKind::LoadBalancerIp);
        assert_eq!(lb.routes.last().unwrap().verdict, Verdict::DropFirewall);
        assert!(lb.routes[0].chains[1].starts_with("KUBE-FW-"));
    }

    #[test]
    fn node_port_addresses_follow_the_flags() {
        let mut c = cfg();
        assert_eq!(
            node_port_addresses(&c),
            vec!["every local address (127.0.0.1 included)"]
        );
        c.nodeport_addresses = vec!["192.168.0.0/16".parse().unwrap()];
        c.node_ips = vec!["192.168.0.10".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert_eq!(node_port_addresses(&c), vec!["192.168.0.10"]);
    }
}
