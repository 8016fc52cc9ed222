//! What the iptables render does with one service port, as plain data: the addresses it is
//! reachable on, which endpoints each path reaches (and why others are left out), where the
//! source is masqueraded, and the chains that carry it. Built from the renderer's own decisions
//! ([`crate::plan::endpoints`], [`crate::render::iptables::chains`]) so it cannot tell a different story than the rules.

pub mod ipvs;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::config::{LocalDetector, RenderConfig};
use crate::model::{
    Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy,
};
use crate::plan::endpoints;
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
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let localhost = cfg.family == IpFamily::V4
        && cfg.localhost_nodeports
        && (cfg.nodeport_addresses.is_empty()
            || cfg.nodeport_addresses.iter().any(|n| n.contains(&loopback)));
    let all = cfg.nodeport_addresses.is_empty()
        || cfg.nodeport_addresses.iter().any(|n| n.prefix_len() == 0);
    if all {
        return vec![match (cfg.family, localhost) {
            (IpFamily::V4, true) => "every local address (127.0.0.1 included)".to_string(),
            (IpFamily::V4, false) => "every local address but 127.0.0.0/8".to_string(),
            (IpFamily::V6, _) => "every local address but ::1".to_string(),
        }];
    }
    let mut ips: Vec<IpAddr> = cfg
        .node_ips
        .iter()
        .copied()
        .chain([loopback, IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)])
        .filter(|ip| cfg.family.contains(ip))
        .filter(|ip| cfg.nodeport_addresses.iter().any(|n| n.contains(ip)))
        .filter(|ip| !ip.is_loopback() || localhost)
        .collect();
    ips.sort();
    ips.dedup();
    ips.iter().map(ToString::to_string).collect()
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

/// Explains `sp` as the render for `cfg` carries it; None when it has no cluster IP of `cfg.family`.
pub fn explain_port(sp: &ServicePort, cfg: &RenderConfig) -> Option<PortExplanation> {
    let fam = cfg.family;
    let cluster_ip = *sp.cluster_ips.iter().find(|ip| fam.contains(ip))?;
    // The renderer's endpoint order: this family's, sorted and deduplicated by "IP:port".
    let mut eps: Vec<(String, &Endpoint)> = sp
        .endpoints
        .iter()
        .filter(|e| fam.contains(&e.ip))
        .map(|e| (e.addr_string(), e))
        .collect();
    eps.sort_by(|a, b| a.0.cmp(&b.0));
    eps.dedup_by(|a, b| a.0 == b.0);
    let refs: Vec<&Endpoint> = eps.iter().map(|(_, e)| *e).collect();
    let cat = endpoints::categorize(sp, &refs, &cfg.node_name, cfg.node_zone.as_deref());

    let sc = ServiceChains::new(&sp.name, sp.protocol);
    let uses_cluster = endpoints::uses_cluster_endpoints(sp);
    let uses_local = endpoints::uses_local_endpoints(sp);
    let accessible = endpoints::externally_accessible(sp);
    let internal_local = endpoints::internal_policy_local(sp);
    let external_local = endpoints::external_policy_local(sp);
    let has_any = cat.has_any;
    let is_local = |e: &Endpoint| {
        !cfg.node_name.is_empty() && e.node_name.as_deref() == Some(cfg.node_name.as_str())
    };

    let endpoints: Vec<EndpointReport> = eps
        .iter()
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
            cluster_excluded: (uses_cluster && !cat.cluster.contains(&i))
                .then(|| exclusion(e, &cat.cluster, &refs)),
            local_excluded: (uses_local && !cat.local.contains(&i)).then(|| {
                if !is_local(e) {
                    Exclusion::OtherNode(e.node_name.as_deref().map(str::to_string))
                } else {
                    exclusion(e, &cat.local, &refs)
                }
            }),
        })
        .collect();

    let svc_exists = uses_cluster && !cat.cluster.is_empty();
    let svl_exists = uses_local && !cat.local.is_empty();
    let ext_exists = has_any && accessible;
    let lb_ips: Vec<IpAddr> = sp
        .load_balancer_ips
        .iter()
        .copied()
        .filter(|ip| fam.contains(ip))
        .collect();
    let source_ranges: Vec<IpNet> = sp
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|n| fam.contains_net(n))
        .collect();
    let fw_exists = has_any && !lb_ips.is_empty() && !source_ranges.is_empty();

    let mut all_chains = Vec::new();
    all_chains.extend(svc_exists.then_some(sc.svc));
    all_chains.extend(svl_exists.then_some(sc.svl));
    all_chains.extend(ext_exists.then_some(sc.ext));
    all_chains.extend(fw_exists.then_some(sc.fw));
    all_chains.extend(endpoints.iter().filter_map(|e| e.sep));
    all_chains.sort();

    let detector = crate::render::iptables::detector_match(cfg, &mut String::new(), false);
    let s = |c: &ChainName| c.as_str().to_string();

    // Cluster IP.
    let (internal_chain, internal_kind, has_internal) = if internal_local {
        (sc.svl, SetKind::Local, has_any && !cat.local.is_empty())
    } else {
        (sc.svc, SetKind::Cluster, has_any)
    };
    let internal_chains = vec![KUBE_SERVICES.to_string(), s(&internal_chain)];
    let cluster_routes = if !has_any {
        vec![route(
            Origin::Any,
            vec![KUBE_SERVICES.into()],
            None,
            Verdict::RejectNoEndpoints,
        )]
    } else if !has_internal {
        vec![route(
            Origin::Any,
            vec![KUBE_SERVICES.into()],
            None,
            Verdict::DropNoLocalEndpoints,
        )]
    } else if cfg.masquerade_all {
        vec![route(
            Origin::Any,
            internal_chains,
            Some(Masquerade::MasqueradeAll),
            Verdict::Endpoints(internal_kind),
        )]
    } else if detector {
        vec![
            route(
                Origin::LocalPod,
                internal_chains.clone(),
                None,
                Verdict::Endpoints(internal_kind),
            ),
            route(
                Origin::NotLocalPod,
                internal_chains,
                Some(Masquerade::NotFromLocalPod),
                Verdict::Endpoints(internal_kind),
            ),
        ]
    } else {
        vec![route(
            Origin::Any,
            internal_chains,
            None,
            Verdict::Endpoints(internal_kind),
        )]
    };
    let mut paths = vec![Path {
        kind: PathKind::ClusterIp,
        addresses: vec![cluster_ip.to_string()],
        port: sp.port,
        source_ranges: Vec::new(),
        routes: cluster_routes,
    }];

    // External destinations all enter KUBE-EXT-*; `prefix` is how they get there.
    let external_routes = |prefix: Vec<String>| -> Vec<Route> {
        if !has_any {
            // The filter table's KUBE-EXTERNAL-SERVICES rejects it.
            return vec![route(
                Origin::Any,
                vec![chains::KUBE_EXTERNAL_SERVICES.into()],
                None,
                Verdict::RejectNoEndpoints,
            )];
        }
        let mut via = prefix.clone();
        via.push(s(&sc.ext));
        let to = |c: &ChainName| {
            let mut v = via.clone();
            v.push(s(c));
            v
        };
        if !external_local {
            return vec![route(
                Origin::Any,
                to(&sc.svc),
                Some(Masquerade::ExternalCluster),
                Verdict::Endpoints(SetKind::Cluster),
            )];
        }
        let mut out = Vec::new();
        if detector {
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
        if cat.local.is_empty() {
            // Nothing in nat matches; the filter table's KUBE-EXTERNAL-SERVICES drops it.
            let mut v = via;
            v.push(chains::KUBE_EXTERNAL_SERVICES.into());
            out.push(route(
                Origin::Elsewhere,
                v,
                None,
                Verdict::DropNoLocalEndpoints,
            ));
        } else {
            out.push(route(
                Origin::Elsewhere,
                to(&sc.svl),
                None,
                Verdict::Endpoints(SetKind::Local),
            ));
        }
        out
    };

    if let Some(np) = sp.node_port {
        paths.push(Path {
            kind: PathKind::NodePort,
            addresses: node_port_addresses(cfg),
            port: np,
            source_ranges: Vec::new(),
            routes: external_routes(vec![KUBE_SERVICES.into(), KUBE_NODEPORTS.into()]),
        });
    }
    let external_ips: Vec<String> = sp
        .external_ips
        .iter()
        .filter(|ip| fam.contains(ip))
        .map(ToString::to_string)
        .collect();
    if !external_ips.is_empty() {
        paths.push(Path {
            kind: PathKind::ExternalIp,
            addresses: external_ips,
            port: sp.port,
            source_ranges: Vec::new(),
            routes: external_routes(vec![KUBE_SERVICES.into()]),
        });
    }
    if !lb_ips.is_empty() {
        let routes = if fw_exists {
            let mut r = external_routes(vec![KUBE_SERVICES.into(), s(&sc.fw)]);
            r.push(route(
                Origin::OutsideSourceRanges,
                vec![
                    KUBE_SERVICES.into(),
                    s(&sc.fw),
                    chains::KUBE_PROXY_FIREWALL.into(),
                ],
                None,
                Verdict::DropFirewall,
            ));
            r
        } else {
            external_routes(vec![KUBE_SERVICES.into()])
        };
        paths.push(Path {
            kind: PathKind::LoadBalancerIp,
            addresses: lb_ips.iter().map(ToString::to_string).collect(),
            port: sp.port,
            source_ranges: source_ranges.clone(),
            routes,
        });
    }

    let set = |kind, exists: bool, chain: ChainName, members: &[usize], used: bool| {
        used.then(|| EndpointSet {
            kind,
            chain: exists.then_some(chain),
            members: members.to_vec(),
        })
    };
    Some(PortExplanation {
        name: sp.name.clone(),
        protocol: sp.protocol,
        port: sp.port,
        family: fam,
        internal_policy: sp.internal_traffic_policy,
        external_policy: sp.external_traffic_policy,
        affinity_seconds: match sp.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        },
        local_traffic: detector.then(|| detector_text(cfg)).flatten(),
        cluster_set: set(
            SetKind::Cluster,
            svc_exists,
            sc.svc,
            &cat.cluster,
            uses_cluster,
        ),
        local_set: set(SetKind::Local, svl_exists, sc.svl, &cat.local, uses_local),
        endpoints,
        paths,
        health_check_node_port: sp.health_check_node_port,
        chains: all_chains,
    })
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

    fn cfg() -> RenderConfig {
        RenderConfig {
            node_name: "node-a".into(),
            node_zone: Some("zone-a".into()),
            local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
            ..RenderConfig::default()
        }
    }

    fn ep(last: u8, node: &str) -> Endpoint {
        Endpoint {
            node_name: Some(node.into()),
            ..Endpoint::ready(format!("10.244.0.{last}").parse().unwrap(), 8080)
        }
    }

    fn sp(eps: Vec<Endpoint>) -> ServicePort {
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new("ns", "web", "http"),
            Protocol::Tcp,
            "10.96.0.20".parse().unwrap(),
            80,
        );
        sp.endpoints = eps;
        sp
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
