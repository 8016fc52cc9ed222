//! What IPVS mode does with one service port, as plain data: its virtual servers (scheduler,
//! persistence, real servers), which endpoints each group of them left out and why, where the
//! source is masqueraded, the source-range firewall, and every ipset member that carries the
//! port. Read off an [`IpvsRender`] — the virtual-server table and the ipsets themselves — so it
//! cannot tell a different story than what IPVS mode puts on the node; only the reasons for
//! leaving an endpoint out come from the same endpoint selection the table was built from.

use std::net::IpAddr;

use super::{Exclusion, PathKind, detector_text, exclusion, local_exclusion};
use crate::config::RenderConfig;
use crate::model::{Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, TrafficPolicy};
use crate::plan::{ClusterIpMasquerade, NodePlan, PortPlan, endpoints};
use crate::render::ipvs::rules::{KUBE_IPVS_OUT_FILTER, KUBE_SOURCE_RANGES_FIREWALL};
use crate::render::ipvs::{IpvsRender, SCHED_FLAG_MH_PORT, SetId, VirtualServer};

/// One service port as IPVS mode carries it on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsExplanation {
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
    /// ClientIP affinity timeout in seconds, if any (IPVS persistence).
    pub affinity_seconds: Option<u32>,
    /// How traffic from local pods is recognised (`source in 10.244.0.0/16`); None when the
    /// cluster-IP masquerade rule does not look at it (no detector, or `--masquerade-all`).
    pub local_traffic: Option<String>,
    /// How the cluster IP's virtual server picked its real servers.
    pub internal_selection: Selection,
    /// How the other virtual servers picked theirs; None when the port has no other.
    pub external_selection: Option<Selection>,
    /// The endpoints of this family, sorted by address and port as the table builder sorts them.
    pub endpoints: Vec<IpvsEndpoint>,
    /// Every way in: cluster IP, node port, external IPs, load-balancer IPs.
    pub paths: Vec<IpvsPath>,
    /// `healthCheckNodePort`, when `KUBE-HEALTH-CHECK-NODE-PORT` holds it.
    pub health_check_node_port: Option<u16>,
    /// Every ipset member that carries this port, in the sets' order, as `ipset save` spells it.
    pub ipset_members: Vec<SetMember>,
}

pub use crate::plan::Selection;

/// Whether an endpoint is a real server of a group of virtual servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// A real server, with the weight the table gives it.
    RealServer {
        /// Its IPVS weight.
        weight: u32,
    },
    /// Left out, and why.
    Excluded(Exclusion),
    /// Selected, but another Service port owns the virtual server and its real servers.
    OtherOwner,
    /// Selected, but there is no virtual server to hold it (no node address serves node ports).
    NoVirtualServer,
}

/// One endpoint and what each group of virtual servers made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsEndpoint {
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
    /// In the cluster IP's virtual server?
    pub internal: Membership,
    /// In the other virtual servers? None when the port has none.
    pub external: Option<Membership>,
}

/// One set member that carries the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMember {
    /// The set's name (for the family).
    pub set: String,
    /// The member, as `ipset save` prints it.
    pub member: String,
}

/// Where a packet comes from, as IPVS mode's rules tell origins apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsOrigin {
    /// Any source.
    Any,
    /// A local pod (the local-traffic detector matches).
    LocalPod,
    /// Anything the local-traffic detector does not match.
    NotLocalPod,
    /// Without a detector: a source that is itself a Service address (`src,dst`), which is what
    /// the node's own connections pick since `kube-ipvs0` holds every cluster IP.
    FromServiceAddress,
    /// Without a detector: every other source.
    OtherSources,
    /// A source inside `loadBalancerSourceRanges`.
    InSourceRanges,
    /// This node's own connections.
    ThisNode,
    /// A source outside `loadBalancerSourceRanges`.
    OutsideSourceRanges,
}

/// Why a route masquerades (the ipset match that marks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsMasquerade {
    /// `--masquerade-all`: every cluster-IP packet.
    MasqueradeAll,
    /// Cluster-IP traffic not from a local pod.
    NotFromLocalPod,
    /// Cluster-IP traffic whose source is a Service address (no detector).
    FromServiceAddress,
    /// A node port under `externalTrafficPolicy: Cluster` (`KUBE-NODE-PORT-*`).
    NodePort,
    /// An external IP under `externalTrafficPolicy: Cluster` (`KUBE-EXTERNAL-IP`).
    ExternalIp,
    /// A load balancer under `externalTrafficPolicy: Cluster` (`KUBE-LOAD-BALANCER`).
    LoadBalancer,
    /// The port number is also a node port: `KUBE-NODE-PORT` matches local destinations
    /// (every `kube-ipvs0` address among them) on the port alone.
    NodePortNumber,
}

/// What a route ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsVerdict {
    /// The virtual server schedules it to one of its real servers.
    RealServers,
    /// The virtual server has no real servers: the connection fails (IPVS answers port
    /// unreachable).
    NoRealServers,
    /// Dropped by `KUBE-SOURCE-RANGES-FIREWALL`: the source is not in the source ranges.
    DropSourceRanges,
    /// Dropped by `KUBE-IPVS-OUT-FILTER`: the source ranges leave this node out.
    DropNodeAccess,
}

/// The rules traffic of one origin meets on one path.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsRoute {
    /// Which traffic.
    pub origin: IpvsOrigin,
    /// The ipsets (and the one chain without a set, `KUBE-IPVS-OUT-FILTER`) whose rules decide
    /// it, in the order the packet meets them.
    pub matched: Vec<String>,
    /// Whether (and why) its source is masqueraded.
    pub masquerade: Option<IpvsMasquerade>,
    /// Where it ends.
    pub verdict: IpvsVerdict,
}

/// One kind of destination, its virtual servers and what happens to its traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsPath {
    /// What kind of destination.
    pub kind: PathKind,
    /// The destination port (the node port, or the Service port).
    pub port: u16,
    /// The virtual servers, as the table holds them (empty: no address serves it).
    pub virtual_servers: Vec<VirtualServer>,
    /// How their real servers were chosen.
    pub selection: Selection,
    /// The allowed source ranges, as `KUBE-LOAD-BALANCER-SOURCE-CIDR` spells them.
    pub source_ranges: Vec<String>,
    /// What traffic of each origin meets.
    pub routes: Vec<IpvsRoute>,
}

/// The scheduler flags of a virtual server, as `ipvsadm -b` names them.
pub fn scheduler_flags(vs: &VirtualServer) -> Vec<&'static str> {
    let mut out = Vec::new();
    if vs.flags & SCHED_FLAG_MH_PORT != 0 {
        out.push("mh-port");
    }
    out
}

/// `IP:port`, `[IP]:port` for IPv6.
pub fn addr_port(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `IP,proto:port`, a `hash:ip,port` member.
fn ip_port(ip: &IpAddr, p: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", p.as_str())
}

/// The node-port sets of a protocol: (Local policy, all).
fn node_port_sets(p: Protocol) -> (SetId, SetId) {
    match p {
        Protocol::Tcp => (SetId::NodePortLocalTcp, SetId::NodePortTcp),
        Protocol::Udp => (SetId::NodePortLocalUdp, SetId::NodePortUdp),
        Protocol::Sctp => (SetId::NodePortLocalSctp, SetId::NodePortSctp),
    }
}

/// What a node-port set member for destination `addr`, port `port` looks like: the port alone
/// (`bitmap:port`), or `IP,sctp:port` for SCTP's hash set.
fn node_port_member(addr: &IpAddr, p: Protocol, port: u16) -> String {
    match p {
        Protocol::Sctp => ip_port(addr, p, port),
        _ => port.to_string(),
    }
}

/// Reads one render's sets.
struct Sets<'a> {
    render: &'a IpvsRender,
}

impl Sets<'_> {
    fn has(&self, id: SetId, member: &str) -> bool {
        self.render.sets.get(id).entries.contains(member)
    }

    fn name(&self, id: SetId) -> String {
        self.render.sets.get(id).name.clone()
    }

    /// The members of `id` that start with `prefix`.
    fn with_prefix(&self, id: SetId, prefix: &str) -> Vec<String> {
        self.render
            .sets
            .get(id)
            .entries
            .iter()
            .filter(|e| e.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// Why the endpoint `i` is not among `sel`'s picks (the same decisions as iptables mode's sets).
fn why_not(plan: &PortPlan, sel: Selection, i: usize, eps: &[&Endpoint], node: &str) -> Exclusion {
    let (e, cat) = (eps[i], &plan.endpoints);
    let local_reason = || local_exclusion(e, node, &cat.local, eps);
    match sel {
        Selection::Cluster => exclusion(e, &cat.cluster, eps),
        Selection::Local => local_reason(),
        // A Local-only Service has no cluster endpoints to fall back to.
        Selection::LocalFallback if !plan.policies.uses_cluster => local_reason(),
        Selection::LocalFallback => exclusion(e, &cat.cluster, eps),
    }
}

/// One port being explained: its plan and the render that carries it.
struct Port<'a> {
    plan: &'a PortPlan<'a>,
    node: &'a NodePlan,
    render: &'a IpvsRender,
    sets: Sets<'a>,
    /// `--hostname-override`: whose endpoints are local.
    node_name: &'a str,
    /// `namespace/name:port`, as the table names a virtual server's owner.
    name: String,
}

/// Explains `sp` as `render` (IPVS mode's render for `cfg`) carries it; None when it has no
/// cluster IP of `cfg.family`.
pub fn explain_port(
    sp: &ServicePort,
    cfg: &RenderConfig,
    render: &IpvsRender,
) -> Option<IpvsExplanation> {
    let node = NodePlan::new(cfg);
    // The table builder's endpoint list: this family's, sorted by address and port.
    let eps = endpoints::by_address(sp, cfg.family);
    let plan = PortPlan::new(sp, cfg, &node, &eps)?;
    let x = Port {
        plan: &plan,
        node: &node,
        render,
        sets: Sets { render },
        node_name: &cfg.node_name,
        name: sp.name.to_string(),
    };
    let internal_selection = plan.selection(plan.policies.internal_local);
    let ext_selection = plan.selection(plan.policies.external_local);
    let mut paths = vec![x.cluster_ip_path(internal_selection)];
    paths.extend(x.node_port_path(ext_selection));
    paths.extend(x.external_ip_path(ext_selection));
    paths.extend(x.load_balancer_path(ext_selection));

    let has_external = paths.len() > 1;
    let external_vss: Vec<VirtualServer> = paths[1..]
        .iter()
        .flat_map(|p| p.virtual_servers.iter().cloned())
        .collect();
    let endpoints = eps
        .iter()
        .enumerate()
        .map(|(i, e)| IpvsEndpoint {
            address: e.addr_string(),
            node: e.node_name.as_deref().map(str::to_string),
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            internal: x.membership(&eps, i, internal_selection, &paths[0].virtual_servers),
            external: has_external.then(|| x.membership(&eps, i, ext_selection, &external_vss)),
        })
        .collect();

    let cluster_ip = plan.addresses.cluster_ip;
    let ipset_members = members(&plan, &node, &x.sets, &cluster_ip);
    let masquerade = plan.decisions.cluster_ip_masquerade;
    let local_traffic = (masquerade == ClusterIpMasquerade::NotFromLocalPod)
        .then(|| detector_text(cfg))
        .flatten();
    Some(IpvsExplanation {
        name: sp.name.clone(),
        protocol: sp.protocol,
        port: sp.port,
        family: cfg.family,
        internal_policy: sp.internal_traffic_policy,
        external_policy: sp.external_traffic_policy,
        affinity_seconds: plan.decisions.affinity_seconds,
        local_traffic,
        internal_selection,
        external_selection: has_external.then_some(ext_selection),
        endpoints,
        paths,
        health_check_node_port: plan
            .addresses
            .health_check_node_port
            .filter(|hc| x.sets.has(SetId::HealthCheckNodePort, &hc.to_string())),
        ipset_members,
    })
}

impl Port<'_> {
    /// The virtual server the table holds for `addr`:`port` and this port's protocol.
    fn lookup(&self, addr: IpAddr, port: u16) -> Option<VirtualServer> {
        let p = self.plan.port.protocol;
        self.render
            .table
            .virtual_servers
            .iter()
            .find(|vs| vs.addr == addr && vs.port == port && vs.protocol == p)
            .cloned()
    }

    /// What an endpoint is to a group of virtual servers (`vss`, chosen by `sel`).
    fn membership(
        &self,
        eps: &[&Endpoint],
        i: usize,
        sel: Selection,
        vss: &[VirtualServer],
    ) -> Membership {
        let (e, cat) = (eps[i], &self.plan.endpoints);
        let node = self.node_name;
        let Some(vs) = vss.first() else {
            let picked = match sel {
                Selection::Local => &cat.local,
                Selection::Cluster | Selection::LocalFallback => &cat.cluster,
            };
            if picked.contains(&i) {
                return Membership::NoVirtualServer;
            }
            return Membership::Excluded(why_not(self.plan, sel, i, eps, node));
        };
        if let Some(rs) = vs
            .real_servers
            .iter()
            .find(|r| r.addr == e.ip && r.port == e.port)
        {
            return Membership::RealServer { weight: rs.weight };
        }
        if vs.service != self.name {
            return Membership::OtherOwner;
        }
        Membership::Excluded(why_not(self.plan, sel, i, eps, node))
    }

    fn cluster_ip_path(&self, selection: Selection) -> IpvsPath {
        let (sp, a) = (self.plan.port, &self.plan.addresses);
        let p = sp.protocol;
        let cluster_vs: Vec<VirtualServer> =
            self.lookup(a.cluster_ip, a.port).into_iter().collect();
        let cluster_member = ip_port(&a.cluster_ip, p, a.port);
        let mut routes = Vec::new();
        if self.sets.has(SetId::ClusterIp, &cluster_member) {
            let set = vec![self.sets.name(SetId::ClusterIp)];
            let r = |origin, masquerade| IpvsRoute {
                origin,
                matched: set.clone(),
                masquerade,
                verdict: IpvsVerdict::RealServers,
            };
            match self.plan.decisions.cluster_ip_masquerade {
                ClusterIpMasquerade::All => {
                    routes.push(r(IpvsOrigin::Any, Some(IpvsMasquerade::MasqueradeAll)));
                }
                ClusterIpMasquerade::NotFromLocalPod => {
                    routes.push(r(IpvsOrigin::LocalPod, None));
                    routes.push(r(
                        IpvsOrigin::NotLocalPod,
                        Some(IpvsMasquerade::NotFromLocalPod),
                    ));
                }
                ClusterIpMasquerade::NoDetector => {
                    routes.push(r(
                        IpvsOrigin::FromServiceAddress,
                        Some(IpvsMasquerade::FromServiceAddress),
                    ));
                    routes.push(r(IpvsOrigin::OtherSources, None));
                }
            }
            node_port_number(&self.sets, &mut routes, &a.cluster_ip, p, a.port);
        }
        finish(
            PathKind::ClusterIp,
            a.port,
            cluster_vs,
            selection,
            Vec::new(),
            routes,
        )
    }

    /// Node port: one virtual server per node address that serves node ports.
    fn node_port_path(&self, selection: Selection) -> Option<IpvsPath> {
        let np = self.plan.addresses.node_port?;
        let p = self.plan.port.protocol;
        let vss: Vec<VirtualServer> = self
            .node
            .node_port_ips
            .iter()
            .filter_map(|ip| self.lookup(*ip, np))
            .collect();
        let mut routes = Vec::new();
        if let Some(first) = vss.first() {
            let (local_set, all_set) = node_port_sets(p);
            let m = node_port_member(&first.addr, p, np);
            if self.sets.has(local_set, &m) {
                routes.push(IpvsRoute {
                    origin: IpvsOrigin::Any,
                    matched: vec![self.sets.name(local_set)],
                    masquerade: None,
                    verdict: IpvsVerdict::RealServers,
                });
            } else if self.sets.has(all_set, &m) {
                routes.push(IpvsRoute {
                    origin: IpvsOrigin::Any,
                    matched: vec![self.sets.name(all_set)],
                    masquerade: Some(IpvsMasquerade::NodePort),
                    verdict: IpvsVerdict::RealServers,
                });
            }
        }
        Some(finish(
            PathKind::NodePort,
            np,
            vss,
            selection,
            Vec::new(),
            routes,
        ))
    }

    fn external_ip_path(&self, selection: Selection) -> Option<IpvsPath> {
        let a = &self.plan.addresses;
        let p = self.plan.port.protocol;
        let first = a.external_ips.first()?;
        let m = ip_port(first, p, a.port);
        let mut routes = Vec::new();
        for (id, masquerade) in [
            (SetId::ExternalIp, Some(IpvsMasquerade::ExternalIp)),
            (SetId::ExternalIpLocal, None),
        ] {
            if self.sets.has(id, &m) {
                routes.push(IpvsRoute {
                    origin: IpvsOrigin::Any,
                    matched: vec![self.sets.name(id)],
                    masquerade,
                    verdict: IpvsVerdict::RealServers,
                });
            }
        }
        // Both external-IP sets' rules ACCEPT in KUBE-SERVICES, so the packet never reaches
        // KUBE-NODE-PORT: no node-port-number mark here.
        let vss = a
            .external_ips
            .iter()
            .filter_map(|ip| self.lookup(*ip, a.port))
            .collect();
        Some(finish(
            PathKind::ExternalIp,
            a.port,
            vss,
            selection,
            Vec::new(),
            routes,
        ))
    }

    /// Load-balancer IPs, behind the source-range firewall when they have ranges.
    fn load_balancer_path(&self, selection: Selection) -> Option<IpvsPath> {
        let a = &self.plan.addresses;
        let p = self.plan.port.protocol;
        let first = a.load_balancer_ips.first()?;
        let m = ip_port(first, p, a.port);
        let mut routes = Vec::new();
        let mut source_ranges = Vec::new();
        if self.sets.has(SetId::LoadBalancer, &m) {
            source_ranges = self.load_balancer_routes(&mut routes, first, &m);
            // KUBE-LOAD-BALANCER returns to KUBE-SERVICES, which goes on to KUBE-NODE-PORT.
            node_port_number(&self.sets, &mut routes, first, p, a.port);
        }
        let vss = a
            .load_balancer_ips
            .iter()
            .filter_map(|ip| self.lookup(*ip, a.port))
            .collect();
        Some(finish(
            PathKind::LoadBalancerIp,
            a.port,
            vss,
            selection,
            source_ranges,
            routes,
        ))
    }

    /// The routes of a load balancer whose set member is `m`; returns its source ranges.
    fn load_balancer_routes(
        &self,
        routes: &mut Vec<IpvsRoute>,
        first: &IpAddr,
        m: &str,
    ) -> Vec<String> {
        let sets = &self.sets;
        let (p, port) = (self.plan.port.protocol, self.plan.addresses.port);
        let (lb_sets, masquerade) = if sets.has(SetId::LoadBalancerLocal, m) {
            (
                vec![
                    sets.name(SetId::LoadBalancer),
                    sets.name(SetId::LoadBalancerLocal),
                ],
                None,
            )
        } else {
            (
                vec![sets.name(SetId::LoadBalancer)],
                Some(IpvsMasquerade::LoadBalancer),
            )
        };
        let to_vs = |origin, first: Vec<String>| {
            let mut matched = first;
            matched.extend(lb_sets.iter().cloned());
            IpvsRoute {
                origin,
                matched,
                masquerade,
                verdict: IpvsVerdict::RealServers,
            }
        };
        if !sets.has(SetId::LoadBalancerFw, m) {
            routes.push(to_vs(IpvsOrigin::Any, Vec::new()));
            return Vec::new();
        }
        let fw = sets.name(SetId::LoadBalancerFw);
        let prefix = format!("{m},");
        let source_ranges = sets
            .with_prefix(SetId::LoadBalancerSourceCidr, &prefix)
            .iter()
            .map(|e| e[prefix.len()..].to_string())
            .collect();
        routes.push(to_vs(
            IpvsOrigin::InSourceRanges,
            vec![fw.clone(), sets.name(SetId::LoadBalancerSourceCidr)],
        ));
        if !sets
            .with_prefix(SetId::LoadBalancerSourceIp, &prefix)
            .is_empty()
        {
            routes.push(to_vs(
                IpvsOrigin::ThisNode,
                vec![fw.clone(), sets.name(SetId::LoadBalancerSourceIp)],
            ));
        } else if self.render.sets.no_node_access.contains(&(*first, p, port)) {
            routes.push(IpvsRoute {
                origin: IpvsOrigin::ThisNode,
                matched: vec![KUBE_IPVS_OUT_FILTER.to_string()],
                masquerade: None,
                verdict: IpvsVerdict::DropNodeAccess,
            });
        }
        routes.push(IpvsRoute {
            origin: IpvsOrigin::OutsideSourceRanges,
            matched: vec![fw, KUBE_SOURCE_RANGES_FIREWALL.to_string()],
            masquerade: None,
            verdict: IpvsVerdict::DropSourceRanges,
        });
        source_ranges
    }
}

/// A path whose routes meet a virtual server without real servers ends there instead.
fn finish(
    kind: PathKind,
    port: u16,
    virtual_servers: Vec<VirtualServer>,
    selection: Selection,
    source_ranges: Vec<String>,
    mut routes: Vec<IpvsRoute>,
) -> IpvsPath {
    if virtual_servers.iter().all(|vs| vs.real_servers.is_empty()) {
        for r in &mut routes {
            if r.verdict == IpvsVerdict::RealServers {
                r.verdict = IpvsVerdict::NoRealServers;
                r.masquerade = None;
            }
        }
        // Origins that only differ in masquerading all meet the same empty virtual server.
        if routes.len() > 1
            && routes
                .iter()
                .all(|r| r.verdict == IpvsVerdict::NoRealServers)
        {
            routes.truncate(1);
            routes[0].origin = IpvsOrigin::Any;
        }
    }
    IpvsPath {
        kind,
        port,
        virtual_servers,
        selection,
        source_ranges,
        routes,
    }
}

/// `KUBE-SERVICES` sends every packet for a local address (each `kube-ipvs0` address is one) to
/// `KUBE-NODE-PORT`, which matches TCP and UDP node ports by port number alone: a Service port
/// whose number is also a node port is marked there unless the Local node-port set returns it.
fn node_port_number(sets: &Sets, routes: &mut [IpvsRoute], addr: &IpAddr, p: Protocol, port: u16) {
    let (local_set, all_set) = node_port_sets(p);
    let m = node_port_member(addr, p, port);
    if sets.has(local_set, &m) || !sets.has(all_set, &m) {
        return;
    }
    for r in routes
        .iter_mut()
        .filter(|r| r.verdict == IpvsVerdict::RealServers)
    {
        r.matched.push(sets.name(all_set));
        r.masquerade = r.masquerade.or(Some(IpvsMasquerade::NodePortNumber));
    }
}

/// Every member of the render's sets that this port put there, in the sets' order.
fn members(plan: &PortPlan, node: &NodePlan, sets: &Sets, cluster_ip: &IpAddr) -> Vec<SetMember> {
    let (sp, fam) = (plan.port, node.family);
    let p = sp.protocol;
    let externals: Vec<&IpAddr> = plan.addresses.external_ips.iter().collect();
    let lbs: Vec<&IpAddr> = plan.addresses.load_balancer_ips.iter().collect();
    let mut out = Vec::new();
    for id in SetId::ALL {
        let mut candidates: Vec<String> = Vec::new();
        match id {
            SetId::LoopBack => {
                candidates.extend(
                    sp.endpoints
                        .iter()
                        .filter(|e| fam.contains(&e.ip))
                        .map(|e| format!("{},{}:{},{}", e.ip, p.as_str(), e.port, e.ip)),
                );
            }
            SetId::ClusterIp => candidates.push(ip_port(cluster_ip, p, sp.port)),
            SetId::ExternalIp | SetId::ExternalIpLocal => {
                candidates.extend(externals.iter().map(|ip| ip_port(ip, p, sp.port)));
            }
            SetId::LoadBalancer | SetId::LoadBalancerFw | SetId::LoadBalancerLocal => {
                candidates.extend(lbs.iter().map(|ip| ip_port(ip, p, sp.port)));
            }
            SetId::LoadBalancerSourceIp | SetId::LoadBalancerSourceCidr => {
                for ip in &lbs {
                    candidates
                        .extend(sets.with_prefix(id, &format!("{},", ip_port(ip, p, sp.port))));
                }
            }
            SetId::NodePortTcp
            | SetId::NodePortLocalTcp
            | SetId::NodePortUdp
            | SetId::NodePortLocalUdp
            | SetId::NodePortSctp
            | SetId::NodePortLocalSctp => {
                let (local_set, all_set) = node_port_sets(p);
                if let Some(np) = sp.node_port.filter(|_| id == local_set || id == all_set) {
                    match p {
                        Protocol::Sctp => candidates
                            .extend(node.node_port_ips.iter().map(|ip| ip_port(ip, p, np))),
                        _ => candidates.push(np.to_string()),
                    }
                }
            }
            SetId::HealthCheckNodePort => {
                candidates.extend(sp.health_check_node_port.map(|hc| hc.to_string()));
            }
            SetId::IpvsIps => {
                candidates.push(cluster_ip.to_string());
                candidates.extend(externals.iter().chain(&lbs).map(|ip| ip.to_string()));
            }
        }
        candidates.sort();
        candidates.dedup();
        // Only what the render holds: a candidate the render left out is not named.
        out.extend(
            candidates
                .into_iter()
                .filter(|m| sets.has(id, m))
                .map(|member| SetMember {
                    set: sets.name(id),
                    member,
                }),
        );
    }
    out
}

#[cfg(test)]
mod tests;
