//! The lab of `tests/kernel/trace_kernel.rs`: one golden case's ruleset in a node namespace, real
//! packets through it, and `kube-proxy-rs trace`'s prediction for each of them.
//!
//! ```text
//!  ext ns  (external sources /32)  ──veth── node ext0 (node IPs, 169.254.10.1)
//!  pod ns  (pod IP /32)            ──veth── node <pod if> or bridge (169.254.20.1)
//!  backends ns (every endpoint /32)──veth── node bk0 (169.254.30.1), a /32 route per endpoint
//!  world ns (traps on lo)          ──veth── node wd0 (169.254.40.1), the node's default route
//!  hairpin ns (one endpoint /32)   ──veth── node hp0 (169.254.50.1): it connects to its Service
//! ```
//! (IPv6: the same with `fd99:0:<10|20|30|40|50>::1`, /128, no DAD.) The lab's node addresses go
//! to trace as `--local-address`; the pod's node-side interface fits `--detect-local-mode` (a
//! bridge named `--pod-bridge-interface`, a veth named with `--pod-interface-name-prefix`) and is
//! trace's `--in-interface`. The node has no ICMP rate limit (each REJECT answers) and, with
//! localhost node ports, `route_localnet=1`, as kube-proxy sets it.
//!
//! Every namespace is created by [`Netns`] (unique names, deleted on drop) and nothing links to
//! the root namespace. The servers are threads of the test process, one per namespace, that
//! answer every TCP connection and UDP datagram with `<place> <local address> <peer address>`:
//! the place (`node`, `backends`, `world`) and local address say where the kernel delivered the
//! packet (after DNAT), the peer whether its source was rewritten. Besides every endpoint, a
//! server listens on every destination trace predicts and on every probe's own destination (a
//! trap: a packet the rules leave alone is answered, so a missed DNAT, REJECT or DROP shows).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rulegen::LocalDetector;
use rulegen::model::{Protocol, ServicePort};
use serde_json::Value;

use super::golden::{flags, objects_path};
use rulegen::IpFamily;

use super::iptables::{Backend, restore_with};
use super::netns::Netns;

/// How long a probe waits for a connection (or a UDP answer) before calling it dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe trace says is never dropped waits for its answer: a busy machine may take
/// more than [`DROP_TIMEOUT`] to answer, and waiting costs nothing when the answer comes.
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(10);
/// A REJECT answers at once; a refusal slower than this is not counted as one.
pub const REFUSED_WITHIN: Duration = Duration::from_millis(500);
/// Upper bound for the chance that a check misses a predicted destination it should reach.
pub const MISS_PROBABILITY: f64 = 1e-9;
/// Every probe is sent at least this many times (a deterministic prediction is still re-checked).
pub const MIN_TRIES: usize = 3;
/// Connections a returning client makes without clearing the affinity lists.
pub const STICKY_TRIES: usize = 5;
/// Concurrent probes of one case.
const WORKERS: usize = 12;

/// Tries needed so that a destination with new-connection share `p` is missed with probability
/// at most [`MISS_PROBABILITY`]: (1 − p)^N ≤ 1e-9  ⇔  N ≥ ln(1e-9) / ln(1 − p)
/// (p = 1/2 → 30, 1/3 → 52, 1/4 → 73). At least [`MIN_TRIES`]; drops and rejects (deterministic,
/// and a drop costs [`DROP_TIMEOUT`]) at least 2.
pub fn tries_for(p_min: f64, only_refusals: bool) -> usize {
    let n = if p_min >= 1.0 - 1e-12 {
        1
    } else {
        (MISS_PROBABILITY.ln() / (1.0 - p_min).ln()).ceil() as usize
    };
    n.max(if only_refusals { 2 } else { MIN_TRIES })
}

// ---------------------------------------------------------------------------------------------
// Golden cases

/// One golden case in one family: the ruleset the kernel gets and the flags trace gets.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `example`, `dual-stack/ipv6`, …
    pub name: String,
    /// The golden case's directory.
    pub dir: PathBuf,
    /// The family of this variant's ruleset.
    pub family: IpFamily,
    /// The case's `flags` (plus `--ip-family ipv6` for the IPv6 variant).
    pub flags: Vec<String>,
    /// `expected.iptables` or `expected.ip6tables`.
    pub ruleset: PathBuf,
    /// The back end the lab loads the ruleset into.
    pub backend: Backend,
}

/// Every golden case with an `expected.iptables` (IPv4) and, where it has one,
/// `expected.ip6tables` (IPv6), sorted; the iptables back end alternates between variants so
/// both are exercised. Paths are relative to the repository root (the tests' working directory).
pub fn variants() -> Vec<Variant> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("golden")
        .expect("golden/ (tests run from the repository root)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.iptables").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let f = flags(&dir);
        out.push(Variant {
            name: case.clone(),
            dir: dir.clone(),
            family: IpFamily::V4,
            flags: f.clone(),
            ruleset: dir.join("expected.iptables"),
            backend: Backend::Legacy,
        });
        if dir.join("expected.ip6tables").is_file() {
            let mut f6 = f.clone();
            f6.extend(["--ip-family".to_string(), "ipv6".to_string()]);
            out.push(Variant {
                name: format!("{case}/ipv6"),
                dir: dir.clone(),
                family: IpFamily::V6,
                flags: f6,
                ruleset: dir.join("expected.ip6tables"),
                backend: Backend::Legacy,
            });
        }
    }
    for (i, v) in out.iter_mut().enumerate() {
        v.backend = Backend::ALL[i % 2];
    }
    out
}

/// What the library makes of a case (the same objects and flags the binary reads); the test
/// binary builds it (`kube_proxy_rs::commands::dryrun::load_model`), which keeps the kit free of the root
/// crate.
#[derive(Clone)]
pub struct CaseModel {
    /// The family's service ports.
    pub services: Vec<ServicePort>,
    /// The node's addresses of the family.
    pub node_ips: Vec<IpAddr>,
    /// How the render tells local traffic apart.
    pub detector: LocalDetector,
    /// `--cluster-cidr` of the family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--iptables-localhost-nodeports`.
    pub localhost_nodeports: bool,
}

// ---------------------------------------------------------------------------------------------
// Probes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
/// A probe's transport protocol.
pub enum Proto {
    /// TCP: a connection.
    Tcp,
    /// UDP: a datagram and its answer.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as trace's `--proto` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
/// Where a packet comes from, as trace's `--from` tells them apart.
pub enum Origin {
    /// A pod on this node.
    Pod,
    /// The node itself.
    Node,
    /// Outside the node.
    External,
    /// An endpoint of the Service it connects to (a pod, on its own link `hp0`).
    Hairpin,
}

impl Origin {
    /// `pod`, `node` or `external`, as trace's `--from` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Pod => "pod",
            Origin::Node => "node",
            Origin::External => "external",
            Origin::Hairpin => "endpoint",
        }
    }

    /// trace's `--from`.
    pub fn trace_from(self) -> &'static str {
        match self {
            Origin::Pod | Origin::Hairpin => "pod",
            Origin::Node => "node",
            Origin::External => "external",
        }
    }
}

/// One packet: the first packet of a new connection from `src` (a fresh source port per try).
#[derive(Clone, Debug)]
pub struct Probe {
    /// What it samples: `cluster IP`, `node port`, `load balancer (outside ranges)`, …
    pub kind: String,
    /// Where it comes from.
    pub origin: Origin,
    /// Its source address.
    pub src: IpAddr,
    /// Its destination.
    pub dst: SocketAddr,
    /// Its protocol.
    pub proto: Proto,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} from {} [{}]",
            self.proto.name(),
            self.src,
            self.dst,
            self.origin.name(),
            self.kind
        )
    }
}

/// The lab's own addresses on the node (passed to trace as `--local-address`) and beyond it.
#[derive(Clone, Debug)]
pub struct Infra {
    /// The node's address toward the external client.
    pub ext_gw: IpAddr,
    /// The node's address toward the pod (the pod's gateway).
    pub pod_gw: IpAddr,
    /// The node's address toward the backends namespace.
    pub bk_gw: IpAddr,
    /// The node's address toward the world namespace.
    pub wd_node: IpAddr,
    /// The world namespace's address (no Service uses it).
    pub wd_world: IpAddr,
    /// The node's address toward the hairpin namespace.
    pub hp_gw: IpAddr,
}

impl Infra {
    fn new(family: IpFamily) -> Infra {
        match family {
            IpFamily::V4 => {
                let a = |x: u8, y: u8| IpAddr::V4(Ipv4Addr::new(169, 254, x, y));
                Infra {
                    ext_gw: a(10, 1),
                    pod_gw: a(20, 1),
                    bk_gw: a(30, 1),
                    wd_node: a(40, 1),
                    wd_world: a(40, 2),
                    hp_gw: a(50, 1),
                }
            }
            IpFamily::V6 => {
                let a = |x: u16, y: u16| IpAddr::V6(Ipv6Addr::new(0xfd99, 0, x, 0, 0, 0, 0, y));
                Infra {
                    ext_gw: a(0x10, 1),
                    pod_gw: a(0x20, 1),
                    bk_gw: a(0x30, 1),
                    wd_node: a(0x40, 1),
                    wd_world: a(0x40, 2),
                    hp_gw: a(0x50, 1),
                }
            }
        }
    }

    /// The node's addresses the lab adds (not in the Node object).
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        vec![
            self.ext_gw,
            self.pod_gw,
            self.bk_gw,
            self.wd_node,
            self.hp_gw,
        ]
    }
}

/// Where a server for an address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// The node namespace itself.
    Node,
    /// The backends namespace (most endpoints).
    Backends,
    /// The world namespace (addresses of no endpoint).
    World,
    /// The hairpin namespace (the endpoint that reaches its own Service).
    Hairpin,
}

impl Place {
    /// The place's name, as its servers answer it.
    pub fn name(self) -> &'static str {
        match self {
            Place::Node => "node",
            Place::Backends => "backends",
            Place::World => "world",
            Place::Hairpin => "hairpin",
        }
    }
}

/// Everything decided before the lab exists: addresses, interfaces and the packets.
pub struct Plan {
    /// The golden case and family.
    pub variant: Variant,
    /// What the library makes of the case.
    pub model: CaseModel,
    /// The lab's own addresses.
    pub infra: Infra,
    /// The client pod's address.
    pub pod_ip: IpAddr,
    /// The node-side interface pod packets arrive on (`--in-interface`).
    pub pod_if: String,
    /// BridgeInterface mode: the pod's veth is a port of this bridge (= `pod_if`).
    pub bridge: Option<String>,
    /// The veth of the pod on the node (the bridge port in bridge mode).
    pub pod_veth: String,
    /// The node-side interface external packets arrive on.
    pub ext_if: String,
    /// An external source outside every load-balancer source range.
    pub ext_outside: IpAddr,
    /// Every external source: the outside one, then one inside each load-balancer source range.
    pub ext_sources: Vec<IpAddr>,
    /// The source of the node's own packets.
    pub node_src: IpAddr,
    /// Endpoint addresses that live in the backends namespace.
    pub backends: BTreeSet<IpAddr>,
    /// The endpoint that lives in the hairpin namespace and connects to its own Service.
    pub hairpin: Option<IpAddr>,
    /// The packets to send.
    pub probes: Vec<Probe>,
    /// Service ports not sampled, and why.
    pub left_out: Vec<String>,
}

impl Plan {
    /// Whether `ip` is one of the node's addresses (loopback included).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self.model.node_ips.contains(&ip)
            || self.infra.node_addresses().contains(&ip)
    }

    /// The namespace that answers for `ip`.
    pub fn place(&self, ip: IpAddr) -> Place {
        if self.is_local(ip) {
            Place::Node
        } else if self.hairpin == Some(ip) {
            Place::Hairpin
        } else if self.backends.contains(&ip) {
            Place::Backends
        } else {
            Place::World
        }
    }

    /// `--local-address` for trace: the lab's own node addresses.
    pub fn local_address_arg(&self) -> String {
        self.infra
            .node_addresses()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn nth_host(net: &IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(n4) => {
            let base = u32::from(n4.network()) as u128;
            IpAddr::V4(Ipv4Addr::from((base + n) as u32))
        }
        IpNet::V6(n6) => {
            let base = u128::from(n6.network());
            IpAddr::V6(Ipv6Addr::from(base + n))
        }
    }
}

fn host_count(net: &IpNet) -> u128 {
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// Every address the model mentions (to keep the lab's own choices clear of them).
fn model_addresses(m: &CaseModel) -> BTreeSet<IpAddr> {
    let mut s: BTreeSet<IpAddr> = m.node_ips.iter().copied().collect();
    for sp in &m.services {
        s.extend(sp.cluster_ips.iter().copied());
        s.extend(sp.external_ips.iter().copied());
        s.extend(sp.load_balancer_ips.iter().copied());
        s.extend(sp.endpoints.iter().map(|e| e.ip));
    }
    s
}

/// Plans the lab and the packets for one variant: the destinations come from the model.
///
/// Per TCP/UDP service port: each cluster IP from a pod, from the node, and (first port only)
/// from outside; the node port on each node IP from outside and from the node, and on the
/// loopback address from the node; each external IP from outside, from a pod and from the node;
/// each load-balancer IP from outside (one source inside each of the case's source ranges and
/// one outside all of them), from a pod and from the node. Then destinations no service has: the
/// other protocol on each cluster IP and port, an unused port on a cluster IP (TCP and UDP) and
/// on the node IP, and an address of no service from a pod and from the node.
///
/// Left out (listed in [`Plan::left_out`]): SCTP ports (this kernel has no SCTP) and health-check
/// node ports (answered by the agent's HTTP server, not by rules).
pub fn plan(variant: &Variant, model: CaseModel) -> Plan {
    let v4 = variant.family == IpFamily::V4;
    let infra = Infra::new(variant.family);
    let taken = model_addresses(&model);
    for a in &taken {
        for lab in infra.node_addresses().iter().chain([&infra.wd_world]) {
            assert_ne!(
                a, lab,
                "{}: the model uses the lab's address {a}",
                variant.name
            );
        }
    }

    // The pod: inside the detector's CIDR (the Node's podCIDR in NodeCIDR mode), else the cluster
    // CIDR, else a made-up pod range; its node-side interface fits the detector.
    let pod_net: IpNet = match &model.detector {
        LocalDetector::Cidrs(c) if !c.is_empty() => c[0],
        _ => model.cluster_cidrs.first().copied().unwrap_or_else(|| {
            if v4 {
                "10.244.1.0/24".parse().unwrap()
            } else {
                "fd00:10:244:1::/64".parse().unwrap()
            }
        }),
    };
    let pod_ip = (0..64)
        .map(|k| nth_host(&pod_net, 200 + k))
        .find(|a| !taken.contains(a))
        .expect("a free pod address");
    let (pod_if, bridge, pod_veth) = match &model.detector {
        LocalDetector::BridgeInterface(b) => (b.clone(), Some(b.clone()), "podport0".to_string()),
        LocalDetector::InterfaceNamePrefix(p) => {
            let name: String = format!("{p}pod0").chars().take(15).collect();
            (name.clone(), None, name)
        }
        _ => ("pod0".to_string(), None, "pod0".to_string()),
    };

    // External sources: one outside every source range, one inside each range.
    let ranges: BTreeSet<IpNet> = model
        .services
        .iter()
        .flat_map(|s| s.load_balancer_source_ranges.iter().copied())
        .collect();
    let outside_candidates: Vec<IpAddr> = if v4 {
        ["192.0.2.50", "100.64.0.50", "198.18.0.50"]
    } else {
        ["2001:db8:ffff::50", "fd98::50", "fd97::50"]
    }
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let free =
        |a: &&IpAddr| !taken.contains(a) && !model.cluster_cidrs.iter().any(|c| c.contains(*a));
    // Outside every range, to see the firewall drop it; no address is outside a range of every
    // address (0.0.0.0/0, ::/0), so those ranges are not looked at.
    let ext_outside = *outside_candidates
        .iter()
        .filter(free)
        .find(|a| !ranges.iter().any(|r| r.prefix_len() != 0 && r.contains(*a)))
        .expect("an outside address");
    let mut ext_sources = vec![ext_outside];
    let mut inside_of: Vec<(IpNet, IpAddr)> = Vec::new();
    for r in &ranges {
        let hosts = host_count(r);
        let inside = if r.prefix_len() == 0 {
            ext_outside
        } else if hosts == 1 {
            r.addr()
        } else {
            nth_host(r, 7.min(hosts - 2).max(1))
        };
        assert!(
            !taken.contains(&inside) && inside != pod_ip,
            "{}: the address chosen inside source range {r} ({inside}) is taken",
            variant.name
        );
        if !ext_sources.contains(&inside) {
            ext_sources.push(inside);
        }
        inside_of.push((*r, inside));
    }
    let node_src = model.node_ips.first().copied().unwrap_or(infra.ext_gw);

    let mut backends: BTreeSet<IpAddr> = model
        .services
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| e.ip))
        .filter(|ip| !(ip.is_loopback() || model.node_ips.contains(ip)))
        .collect();
    // Hairpin: the first ready endpoint (not on the node) of the first TCP/UDP port with a
    // cluster IP moves to its own namespace and connects to that cluster IP.
    let hairpin_of = model
        .services
        .iter()
        .filter(|s| matches!(s.protocol, Protocol::Tcp | Protocol::Udp))
        .filter(|s| !s.cluster_ips.is_empty())
        .find_map(|s| {
            s.endpoints
                .iter()
                .find(|e| e.ready && backends.contains(&e.ip))
                .map(|e| (e.ip, s))
        });
    let hairpin = hairpin_of.map(|(ip, _)| ip);
    if let Some(ip) = hairpin {
        backends.remove(&ip);
    }

    let mut probes: Vec<Probe> = Vec::new();
    let mut left_out = Vec::new();
    let mut add = |kind: &str, origin: Origin, src: IpAddr, dst: SocketAddr, proto: Proto| {
        probes.push(Probe {
            kind: kind.to_string(),
            origin,
            src,
            dst,
            proto,
        });
    };
    let used_ports: BTreeSet<u16> = model
        .services
        .iter()
        .flat_map(|s| [Some(s.port), s.node_port].into_iter().flatten())
        .collect();
    let unused_port = *[81u16, 444, 8081, 9999, 1234, 32999]
        .iter()
        .find(|p| !used_ports.contains(p))
        .unwrap();
    let loopback: IpAddr = if v4 {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    let mut first_cluster: Option<SocketAddr> = None;
    for sp in &model.services {
        let proto = match sp.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Sctp => {
                left_out.push(format!(
                    "{}: {} (sctp {}): SCTP is not sampled (this kernel has no SCTP)",
                    variant.name, sp.name, sp.port
                ));
                continue;
            }
        };
        if let Some(hc) = sp.health_check_node_port {
            left_out.push(format!(
                "{}: {} health-check node port {hc}: served by the agent, not by rules",
                variant.name, sp.name
            ));
        }
        for &c in &sp.cluster_ips {
            let dst = SocketAddr::new(c, sp.port);
            add("cluster IP", Origin::Pod, pod_ip, dst, proto);
            add("cluster IP", Origin::Node, node_src, dst, proto);
            if first_cluster.is_none() {
                first_cluster = Some(dst);
                add("cluster IP", Origin::External, ext_outside, dst, proto);
            }
        }
        if let Some(np) = sp.node_port {
            for &n in &model.node_ips {
                let dst = SocketAddr::new(n, np);
                add("node port", Origin::External, ext_outside, dst, proto);
                add("node port", Origin::Node, node_src, dst, proto);
            }
            add(
                "node port on loopback",
                Origin::Node,
                loopback,
                SocketAddr::new(loopback, np),
                proto,
            );
        }
        for &e in &sp.external_ips {
            let dst = SocketAddr::new(e, sp.port);
            add("external IP", Origin::External, ext_outside, dst, proto);
            add("external IP", Origin::Pod, pod_ip, dst, proto);
            add("external IP", Origin::Node, node_src, dst, proto);
        }
        for &l in &sp.load_balancer_ips {
            let dst = SocketAddr::new(l, sp.port);
            if sp.load_balancer_source_ranges.is_empty() {
                add("load balancer", Origin::External, ext_outside, dst, proto);
            } else {
                let outside = !sp
                    .load_balancer_source_ranges
                    .iter()
                    .any(|r| r.contains(&ext_outside));
                if outside {
                    add(
                        "load balancer, source outside the ranges",
                        Origin::External,
                        ext_outside,
                        dst,
                        proto,
                    );
                }
                for r in &sp.load_balancer_source_ranges {
                    let inside = inside_of.iter().find(|(n, _)| n == r).unwrap().1;
                    add(
                        &format!("load balancer, source in {r}"),
                        Origin::External,
                        inside,
                        dst,
                        proto,
                    );
                }
            }
            add("load balancer", Origin::Pod, pod_ip, dst, proto);
            add("load balancer", Origin::Node, node_src, dst, proto);
        }
    }
    if let Some((ep, sp)) = hairpin_of {
        let proto = if sp.protocol == Protocol::Tcp {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        add(
            "cluster IP, hairpin",
            Origin::Hairpin,
            ep,
            SocketAddr::new(sp.cluster_ips[0], sp.port),
            proto,
        );
    }
    // Destinations no service has.
    let services_at: BTreeSet<(IpAddr, u16, Protocol)> = model
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().map(move |c| (*c, s.port, s.protocol)))
        .collect();
    for &(c, port, protocol) in &services_at {
        let (other, other_proto) = match protocol {
            Protocol::Tcp => (Protocol::Udp, Proto::Udp),
            Protocol::Udp => (Protocol::Tcp, Proto::Tcp),
            Protocol::Sctp => continue,
        };
        if !services_at.contains(&(c, port, other)) {
            add(
                "no service: other protocol",
                Origin::Pod,
                pod_ip,
                SocketAddr::new(c, port),
                other_proto,
            );
        }
    }
    if let Some(c) = first_cluster {
        for proto in [Proto::Tcp, Proto::Udp] {
            add(
                "no service: unused port on a cluster IP",
                Origin::Pod,
                pod_ip,
                SocketAddr::new(c.ip(), unused_port),
                proto,
            );
        }
    }
    if let Some(&n) = model.node_ips.first() {
        add(
            "no service: unused port on the node",
            Origin::External,
            ext_outside,
            SocketAddr::new(n, unused_port),
            Proto::Tcp,
        );
    }
    let nowhere: IpAddr = if v4 {
        "198.18.77.77".parse().unwrap()
    } else {
        "2001:db8:77::77".parse().unwrap()
    };
    assert!(!taken.contains(&nowhere));
    add(
        "no service: an address of no service",
        Origin::Pod,
        pod_ip,
        SocketAddr::new(nowhere, 80),
        Proto::Tcp,
    );
    add(
        "no service: an address of no service",
        Origin::Node,
        node_src,
        SocketAddr::new(nowhere, 53),
        Proto::Udp,
    );
    // Once each.
    let mut seen = BTreeSet::new();
    probes.retain(|p| seen.insert((p.origin, p.src, p.dst, p.proto)));

    Plan {
        variant: variant.clone(),
        model,
        infra,
        pod_ip,
        pod_if,
        bridge,
        pod_veth,
        ext_if: "ext0".to_string(),
        ext_outside,
        ext_sources,
        node_src,
        backends,
        hairpin,
        probes,
        left_out,
    }
}

// ---------------------------------------------------------------------------------------------
// Trace

/// A predicted outcome as the tracer's JSON states it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Its share of the packets (`None`: not a random choice).
    pub share: Option<f64>,
    /// Whether it is a returning client's path (session affinity).
    pub affinity: bool,
    /// Where the packet ends.
    pub key: Key,
    /// Whether the destination was translated (DNAT).
    pub translated: bool,
    /// Whether the source was masqueraded.
    pub masquerade: bool,
    /// `table chain: rule` of a REJECT or DROP.
    pub rule: Option<String>,
}

/// What a packet's fate comes down to, as the kernel can show it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Delivered to this address (after DNAT), on the node itself or not.
    Delivered {
        /// The address that answered.
        dst: SocketAddr,
        /// Whether that address is the node's own.
        local: bool,
    },
    /// Refused by a REJECT.
    Rejected,
    /// Dropped (no answer).
    Dropped,
    /// Only ever observed: anything else the kernel did.
    Other(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Delivered { dst, local: true } => write!(f, "delivered to {dst} (this node)"),
            Key::Delivered { dst, local: false } => write!(f, "delivered to {dst} (forwarded)"),
            Key::Rejected => f.write_str("rejected"),
            Key::Dropped => f.write_str("dropped"),
            Key::Other(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug)]
/// What trace predicts for one probe.
pub struct Prediction {
    /// Every outcome trace lists.
    pub outcomes: Vec<Outcome>,
    /// The command, for messages.
    pub command: String,
}

/// Runs `kube-proxy-rs trace … --output json` for `probe` (the binary, as a user would), with
/// the case's objects and flags, the lab's interfaces and addresses; `ruleset` traces that file
/// instead of the render.
pub fn trace(plan: &Plan, probe: &Probe, ruleset: Option<&Path>) -> Result<Prediction, String> {
    let mut args: Vec<String> = vec![
        "trace".into(),
        "--src".into(),
        probe.src.to_string(),
        "--dst".into(),
        probe.dst.to_string(),
        "--proto".into(),
        probe.proto.name().into(),
        "--from".into(),
        probe.origin.trace_from().into(),
        "--local-address".into(),
        plan.local_address_arg(),
    ];
    match probe.origin {
        Origin::Pod => args.extend(["--in-interface".into(), plan.pod_if.clone()]),
        Origin::External => args.extend(["--in-interface".into(), plan.ext_if.clone()]),
        Origin::Hairpin => args.extend(["--in-interface".into(), "hp0".into()]),
        Origin::Node => {}
    }
    if let Some(r) = ruleset {
        args.extend(["--ruleset".into(), r.display().to_string()]);
    }
    args.extend([
        "--objects".into(),
        objects_path(&plan.variant.dir).display().to_string(),
    ]);
    args.extend(plan.variant.flags.iter().cloned());
    args.extend(["--output".into(), "json".into()]);
    let command = format!("kube-proxy-rs {}", args.join(" "));
    let out = Command::new(crate::cli::binary())
        .args(&args)
        .output()
        .map_err(|e| format!("run {command}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{command}: output is not JSON: {e}"))?;
    let not_modelled = json["not_modelled"].as_array().cloned().unwrap_or_default();
    if !not_modelled.is_empty() {
        return Err(format!(
            "{command}: the walk did not model {not_modelled:?}"
        ));
    }
    let mut outcomes = Vec::new();
    for o in json["outcomes"]
        .as_array()
        .ok_or(format!("{command}: no outcomes"))?
    {
        let get_bool = |k: &str| o[k].as_bool().unwrap_or(false);
        let key = match o["verdict"].as_str() {
            Some("delivered") => {
                let d = o["destination"].as_str().unwrap_or_default();
                Key::Delivered {
                    dst: d
                        .parse()
                        .map_err(|e| format!("{command}: destination {d:?}: {e}"))?,
                    local: get_bool("local"),
                }
            }
            Some("rejected") => Key::Rejected,
            Some("dropped") => Key::Dropped,
            other => return Err(format!("{command}: unknown verdict {other:?}")),
        };
        let rule = o["rule"].as_str().map(|r| {
            format!(
                "{} {}: {r}",
                o["table"].as_str().unwrap_or("?"),
                o["chain"].as_str().unwrap_or("?")
            )
        });
        outcomes.push(Outcome {
            share: o["share"].as_f64(),
            affinity: get_bool("affinity"),
            key,
            translated: get_bool("translated"),
            masquerade: get_bool("masquerade"),
            rule,
        });
    }
    Ok(Prediction { outcomes, command })
}

impl Prediction {
    /// New-connection outcomes grouped by key: share, and the masquerade flags allowed.
    pub fn new_connections(&self) -> BTreeMap<Key, (f64, BTreeSet<bool>)> {
        let mut m: BTreeMap<Key, (f64, BTreeSet<bool>)> = BTreeMap::new();
        for o in self.outcomes.iter().filter(|o| !o.affinity) {
            let e = m.entry(o.key.clone()).or_default();
            e.0 += o.share.unwrap_or(0.0);
            e.1.insert(o.masquerade);
        }
        m
    }

    /// Outcomes only a returning client (session affinity) takes.
    pub fn affinity_paths(&self) -> BTreeMap<Key, BTreeSet<bool>> {
        let mut m: BTreeMap<Key, BTreeSet<bool>> = BTreeMap::new();
        for o in self.outcomes.iter().filter(|o| o.affinity) {
            m.entry(o.key.clone()).or_default().insert(o.masquerade);
        }
        m
    }

    /// The outcomes in one line, for messages.
    pub fn summary(&self) -> String {
        self.outcomes
            .iter()
            .map(|o| {
                let share = match o.share {
                    Some(s) => format!("{:.2}%", s * 100.0),
                    None => "affinity".to_string(),
                };
                let masq = if o.masquerade { ", masqueraded" } else { "" };
                let rule = o
                    .rule
                    .as_deref()
                    .map(|r| format!(" by {r}"))
                    .unwrap_or_default();
                format!("{share} {}{masq}{rule}", o.key)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// ---------------------------------------------------------------------------------------------
// The lab

/// The namespaces and servers of one variant. Drop stops the servers, then deletes the
/// namespaces.
pub struct Lab {
    servers: Vec<Servers>,
    /// The node namespace (the rules go here).
    pub node: Netns,
    /// The client pod's namespace.
    pub pod: Netns,
    /// The external clients' namespace.
    pub ext: Netns,
    /// The namespace of most endpoints.
    pub backends: Netns,
    /// The namespace of addresses no Service uses.
    pub world: Netns,
    /// The namespace of the endpoint that reaches its own Service.
    pub hairpin: Netns,
}

fn batch(ns: &Netns, family: IpFamily, lines: &[String]) -> Result<(), String> {
    let fam = match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    };
    let text = lines.join("\n") + "\n";
    let out = ns.exec_input(["ip", fam, "-batch", "-"], text.as_bytes());
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch in {}: {}\n{text}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn sysctls(ns: &Netns, kv: &[(&str, &str)]) -> Result<(), String> {
    let mut args = vec!["sysctl".to_string(), "-qw".to_string()];
    args.extend(kv.iter().map(|(k, v)| format!("{k}={v}")));
    let out = ns.exec(&args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn addr_line(ip: IpAddr, dev: &str) -> String {
    match ip {
        IpAddr::V4(_) => format!("addr add {} dev {dev}", host(ip)),
        IpAddr::V6(_) => format!("addr add {} dev {dev} nodad", host(ip)),
    }
}

impl Lab {
    /// Builds the lab of `plan`, loads `ruleset` (iptables-restore text of the plan's family) into
    /// the node with the variant's back end, and starts a server on every address of `listen`.
    pub fn build(plan: &Plan, ruleset: &str, listen: &BTreeSet<SocketAddr>) -> Result<Lab, String> {
        let fam = plan.variant.family;
        let v6 = fam == IpFamily::V6;
        let tag = plan.variant.name.replace(['/', '_'], "-");
        let tag: String = tag.chars().take(24).collect();
        let mk = |role: &str| Netns::new(&format!("{tag}-{role}"));
        let mut lab = Lab {
            servers: Vec::new(),
            node: mk("node"),
            pod: mk("pod"),
            ext: mk("ext"),
            backends: mk("bk"),
            world: mk("world"),
            hairpin: mk("hp"),
        };
        let base: Vec<(&str, &str)> = if v6 {
            vec![
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ]
        } else {
            vec![
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ]
        };
        for ns in [&lab.pod, &lab.ext, &lab.backends, &lab.world, &lab.hairpin] {
            sysctls(ns, &base)?;
        }
        let mut node_sysctls = base.clone();
        // No ICMP rate limit: a REJECT answers every probe, not the first few per client.
        node_sysctls.extend([
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv4.icmp_msgs_per_sec", "100000"),
            ("net.ipv4.icmp_msgs_burst", "100000"),
            ("net.ipv6.icmp.ratelimit", "0"),
        ]);
        if v6 {
            node_sysctls.push(("net.ipv6.conf.all.forwarding", "1"));
        } else {
            node_sysctls.push(("net.ipv4.ip_forward", "1"));
            if plan.model.localhost_nodeports {
                // What kube-proxy sets up on a node with localhost node ports (as the agent does).
                node_sysctls.push(("net.ipv4.conf.all.route_localnet", "1"));
            }
        }
        sysctls(&lab.node, &node_sysctls)?;

        // The node: links, addresses, routes.
        let i = &plan.infra;
        let mut n: Vec<String> = Vec::new();
        for (dev, peer) in [
            (plan.ext_if.as_str(), &lab.ext),
            (plan.pod_veth.as_str(), &lab.pod),
            ("bk0", &lab.backends),
            ("wd0", &lab.world),
            ("hp0", &lab.hairpin),
        ] {
            n.push(format!(
                "link add {dev} type veth peer name eth0 netns {}",
                peer.name()
            ));
        }
        if let Some(br) = &plan.bridge {
            n.push(format!("link add {br} type bridge"));
            n.push(format!("link set {} master {br}", plan.pod_veth));
            n.push(format!("link set {br} up"));
        }
        for ip in plan.model.node_ips.iter().chain([&i.ext_gw]) {
            n.push(addr_line(*ip, &plan.ext_if));
        }
        n.push(addr_line(i.pod_gw, &plan.pod_if));
        n.push(addr_line(i.bk_gw, "bk0"));
        n.push(addr_line(i.wd_node, "wd0"));
        n.push(addr_line(i.hp_gw, "hp0"));
        for dev in [
            plan.ext_if.as_str(),
            plan.pod_veth.as_str(),
            "bk0",
            "wd0",
            "hp0",
        ] {
            n.push(format!("link set {dev} up"));
        }
        for src in &plan.ext_sources {
            n.push(format!("route add {} dev {}", host(*src), plan.ext_if));
        }
        n.push(format!(
            "route add {} dev {}",
            host(plan.pod_ip),
            plan.pod_if
        ));
        for ep in &plan.backends {
            n.push(format!("route add {} dev bk0", host(*ep)));
        }
        if let Some(ep) = plan.hairpin {
            n.push(format!("route add {} dev hp0", host(ep)));
        }
        n.push(format!("route add {} dev wd0", host(i.wd_world)));
        n.push(format!("route add default via {} dev wd0", i.wd_world));
        batch(&lab.node, fam, &n)?;
        if plan.bridge.is_some() {
            let key = if v6 {
                "net.bridge.bridge-nf-call-ip6tables"
            } else {
                "net.bridge.bridge-nf-call-iptables"
            };
            sysctls(&lab.node, &[(key, "1")])?;
        }

        // The peers: their addresses, a route to their gateway on the node, a default route.
        let peer = |ns: &Netns, addrs: &[IpAddr], lo: &[IpAddr], gw: IpAddr| {
            let mut l: Vec<String> = addrs.iter().map(|a| addr_line(*a, "eth0")).collect();
            l.extend(lo.iter().map(|a| addr_line(*a, "lo")));
            l.push("link set eth0 up".into());
            l.push(format!("route add {} dev eth0", host(gw)));
            l.push(format!("route add default via {gw} dev eth0"));
            batch(ns, fam, &l)
        };
        let world_addrs: Vec<IpAddr> = listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| plan.place(*ip) == Place::World)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        peer(&lab.ext, &plan.ext_sources, &[], i.ext_gw)?;
        peer(&lab.pod, &[plan.pod_ip], &[], i.pod_gw)?;
        let bk: Vec<IpAddr> = plan.backends.iter().copied().collect();
        peer(&lab.backends, &bk, &[], i.bk_gw)?;
        peer(&lab.world, &[i.wd_world], &world_addrs, i.wd_node)?;
        let hp: Vec<IpAddr> = plan.hairpin.into_iter().collect();
        peer(&lab.hairpin, &hp, &[], i.hp_gw)?;

        restore_with(&lab.node, plan.variant.backend, fam, &[], ruleset)?;

        for place in [Place::Node, Place::Backends, Place::World, Place::Hairpin] {
            let addrs: Vec<SocketAddr> = listen
                .iter()
                .copied()
                .filter(|a| plan.place(a.ip()) == place)
                .collect();
            let ns = match place {
                Place::Node => &lab.node,
                Place::Backends => &lab.backends,
                Place::World => &lab.world,
                Place::Hairpin => &lab.hairpin,
            };
            lab.servers.push(Servers::start(ns, place, &addrs)?);
        }
        Ok(lab)
    }

    fn ns_of(&self, origin: Origin) -> &Netns {
        match origin {
            Origin::Pod => &self.pod,
            Origin::Node => &self.node,
            Origin::External => &self.ext,
            Origin::Hairpin => &self.hairpin,
        }
    }

    /// Node state for failure messages.
    pub fn diagnostics(&self, family: IpFamily) -> String {
        let mut s = String::new();
        let ipt = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let cmds: Vec<Vec<String>> = vec![
            vec!["ip".into(), "-br".into(), "addr".into()],
            vec!["ip".into(), "route".into()],
            vec!["ip".into(), "-6".into(), "route".into()],
            vec![
                "conntrack".into(),
                "-L".into(),
                "-f".into(),
                if family == IpFamily::V4 {
                    "ipv4"
                } else {
                    "ipv6"
                }
                .into(),
            ],
            vec![format!("{ipt}-legacy-save"), "-c".into()],
            vec![format!("{ipt}-nft-save"), "-c".into()],
        ];
        for c in cmds {
            let out = self.node.exec(&c);
            s.push_str(&format!(
                "==== node: {} ====\n{}{}\n",
                c.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s
    }
}

/// Servers of one namespace: a thread polling every socket, stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, place: Place, addrs: &[SocketAddr]) -> Result<Servers, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let path = ns.path();
        let addrs = addrs.to_vec();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let setup = || -> Result<(Vec<TcpListener>, Vec<UdpSocket>), String> {
                enter(&path)?;
                let mut tcp = Vec::new();
                let mut udp = Vec::new();
                for a in &addrs {
                    let l = TcpListener::bind(a).map_err(|e| format!("listen tcp {a}: {e}"))?;
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    tcp.push(l);
                    let u = UdpSocket::bind(a).map_err(|e| format!("bind udp {a}: {e}"))?;
                    u.set_nonblocking(true).map_err(|e| e.to_string())?;
                    udp.push(u);
                }
                Ok((tcp, udp))
            };
            let (tcp, udp) = match setup() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{} servers: {e}", place.name())));
                    return;
                }
            };
            serve(place, &tcp, &udp, &stop2);
        });
        let servers = Servers {
            stop,
            handle: Some(handle),
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(servers),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("{} servers: the thread died", place.name())),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<(), String> {
    super::sock::enter(path).map_err(|e| e.to_string())
}

fn serve(place: Place, tcp: &[TcpListener], udp: &[UdpSocket], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = tcp
        .iter()
        .map(|l| l.as_raw_fd())
        .chain(udp.iter().map(|u| u.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (k, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            if k < tcp.len() {
                while let Ok((mut s, peer)) = tcp[k].accept() {
                    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = writeln!(s, "{} {local} {peer}", place.name());
                }
            } else {
                let u = &udp[k - tcp.len()];
                while let Ok((_, peer)) = u.recv_from(&mut buf) {
                    let local = u.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let _ = u.send_to(
                        format!("{} {local} {peer}\n", place.name()).as_bytes(),
                        peer,
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probing

/// What the kernel did with one connection.
#[derive(Clone, Debug)]
pub enum Obs {
    /// A server answered.
    Reply {
        /// The namespace of the server that answered.
        place: String,
        /// The address that answered.
        local: SocketAddr,
        /// The source address the server saw.
        peer: SocketAddr,
    },
    /// Refused (RST or ICMP unreachable), after this long.
    Refused(Duration),
    /// No answer within the probe's time limit.
    Timeout,
    /// Anything else.
    Error(String),
}

impl fmt::Display for Obs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obs::Reply { place, local, peer } => {
                write!(
                    f,
                    "answered by {local} in {place}, which saw the source {peer}"
                )
            }
            Obs::Refused(t) => write!(f, "refused after {t:?}"),
            Obs::Timeout => f.write_str("no answer in time"),
            Obs::Error(e) => write!(f, "error: {e}"),
        }
    }
}

impl Obs {
    /// The fate this observation shows, to compare with trace's [`Key`].
    pub fn key(&self) -> Key {
        match self {
            Obs::Reply { place, local, .. } => Key::Delivered {
                dst: *local,
                local: place == "node",
            },
            Obs::Refused(t) if *t < REFUSED_WITHIN => Key::Rejected,
            Obs::Timeout => Key::Dropped,
            other => Key::Other(other.to_string()),
        }
    }
}

fn classify(e: std::io::Error, start: Instant) -> Obs {
    match e.kind() {
        ErrorKind::ConnectionRefused => Obs::Refused(start.elapsed()),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Obs::Timeout,
        _ => Obs::Error(e.to_string()),
    }
}

fn parse_reply(text: &str) -> Obs {
    let mut w = text.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some(place), Some(local), Some(peer)) => match (local.parse(), peer.parse()) {
            (Ok(local), Ok(peer)) => Obs::Reply {
                place: place.to_string(),
                local,
                peer,
            },
            _ => Obs::Error(format!("bad answer {text:?}")),
        },
        _ => Obs::Error(format!("bad answer {text:?}")),
    }
}

/// A TCP connection from `src` (address and port) to `dst` in the calling thread's namespace:
/// connect within `patience`, then read the server's answer to the end.
fn tcp_probe(src: SocketAddr, dst: SocketAddr, patience: Duration) -> Obs {
    let start = Instant::now();
    let mut stream = match super::sock::connect_bound(src, dst, patience) {
        Ok(s) => s,
        Err(e) => return classify(e, start),
    };
    if let Err(e) = stream.set_read_timeout(Some(Duration::from_secs(3))) {
        return Obs::Error(e.to_string());
    }
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => parse_reply(&text),
        Err(e) => Obs::Error(format!("connected, then read: {e} (got {text:?})")),
    }
}

/// A UDP datagram from `src` to `dst` on a connected socket (so an ICMP error is reported), and
/// the answer within `patience`.
fn udp_probe(src: SocketAddr, dst: SocketAddr, patience: Duration) -> Obs {
    let start = Instant::now();
    let sock = match UdpSocket::bind(src) {
        Ok(s) => s,
        Err(e) => return Obs::Error(format!("bind {src}: {e}")),
    };
    if let Err(e) = sock.set_read_timeout(Some(patience)) {
        return Obs::Error(e.to_string());
    }
    if let Err(e) = sock.connect(dst) {
        return classify(e, start);
    }
    if let Err(e) = sock.send(b"probe") {
        // EPERM: netfilter dropped the datagram in OUTPUT (a node's own packet). A REJECT there
        // still sends its ICMP error, which the receive below reports; a DROP sends nothing.
        if e.raw_os_error() != Some(libc::EPERM) {
            return classify(e, start);
        }
    }
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => parse_reply(&String::from_utf8_lossy(&buf[..n])),
        Err(e) => classify(e, start),
    }
}

/// Clears every xt_recent list of the calling thread's namespace (session affinity forgets).
fn clear_recent() -> Result<(), String> {
    let dir = Path::new("/proc/thread-self/net/xt_recent");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // no `recent` rule loaded
    };
    for e in entries.flatten() {
        std::fs::write(e.path(), b"/\n")
            .map_err(|err| format!("clear {}: {err}", e.path().display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Comparing

/// What one probe's tries showed.
#[derive(Clone, Debug, Default)]
pub struct Tries {
    /// A new client's connections (the `recent` lists cleared before each).
    pub new: Vec<(SocketAddr, Obs)>,
    /// A returning client's connections (affinity probes only), without clearing the lists.
    pub sticky: Vec<(SocketAddr, Obs)>,
}

/// The checks of one probe. Returns failure texts (empty: trace and kernel agree).
pub fn compare(plan: &Plan, pred: &Prediction, tries: &Tries) -> Vec<String> {
    let mut fails = Vec::new();
    let new = pred.new_connections();
    let total: f64 = new.values().map(|(s, _)| s).sum();
    if (total - 1.0).abs() > 1e-6 {
        fails.push(format!(
            "trace's new-connection shares sum to {total}, not 1"
        ));
    }
    let masq_ok = |obs: &Obs, src: &SocketAddr, allowed: &BTreeSet<bool>| -> Option<String> {
        if let Obs::Reply { peer, .. } = obs {
            let masqueraded = peer != src;
            if !allowed.contains(&masqueraded) {
                return Some(format!(
                    "trace says the source is {}, the kernel {} it (sent from {src}, the server saw {peer})",
                    if masqueraded { "kept" } else { "masqueraded" },
                    if masqueraded { "rewrote" } else { "kept" },
                ));
            }
        }
        None
    };
    // The server's place must fit the address (a listener exists in one place only).
    let place_ok = |obs: &Obs| -> Option<String> {
        if let Obs::Reply { place, local, .. } = obs
            && plan.place(local.ip()).name() != place
        {
            return Some(format!("{local} answered from {place}: lab error"));
        }
        None
    };
    let mut reached: BTreeMap<Key, usize> = BTreeMap::new();
    // Unexpected outcomes and masquerade mismatches, counted, with the first example of each.
    let mut unexpected: BTreeMap<Key, (usize, String)> = BTreeMap::new();
    let mut masq_wrong: BTreeMap<Key, (usize, String)> = BTreeMap::new();
    for (src, obs) in &tries.new {
        let key = obs.key();
        *reached.entry(key.clone()).or_default() += 1;
        fails.extend(place_ok(obs));
        match new.get(&key) {
            None => {
                unexpected
                    .entry(key)
                    .or_insert_with(|| (0, obs.to_string()))
                    .0 += 1
            }
            Some((_, allowed)) => {
                if let Some(m) = masq_ok(obs, src, allowed) {
                    masq_wrong.entry(key).or_insert_with(|| (0, m)).0 += 1;
                }
            }
        }
    }
    for (key, (count, example)) in &unexpected {
        fails.push(format!(
            "the kernel: {count}× {key} (e.g. {example}); trace predicts no such new-connection outcome"
        ));
    }
    for (key, (count, example)) in &masq_wrong {
        fails.push(format!("{count}× {key}: {example}"));
    }
    let n = tries.new.len();
    for (key, (share, _)) in &new {
        if *share > 0.0 && !reached.contains_key(key) {
            fails.push(format!(
                "trace predicts {key} ({:.2}%), the kernel never did it in {n} tries",
                share * 100.0
            ));
        }
    }
    if !tries.sticky.is_empty() {
        let last = tries.new.last().map(|(_, o)| o.key());
        let aff = pred.affinity_paths();
        for (src, obs) in &tries.sticky {
            let key = obs.key();
            if Some(&key) != last.as_ref() {
                fails.push(format!(
                    "session affinity: a returning client went to {key}, its first connection to {}",
                    last.as_ref().map(|k| k.to_string()).unwrap_or_default()
                ));
            }
            match aff.get(&key) {
                None => fails.push(format!(
                    "session affinity: the kernel sent a returning client to {key}; trace's \
                     affinity paths are {:?}",
                    aff.keys().map(|k| k.to_string()).collect::<Vec<_>>()
                )),
                Some(allowed) => fails.extend(masq_ok(obs, src, allowed)),
            }
        }
    }
    fails
}

// ---------------------------------------------------------------------------------------------
// Running a variant

/// Rewrites a ruleset's text.
pub type Rewrite = Box<dyn Fn(&str) -> String + Send + Sync>;
/// Chooses probes.
pub type ProbeFilter = Box<dyn Fn(&Probe) -> bool + Send + Sync>;

/// What to change for a negative control.
#[derive(Default)]
pub struct Options {
    /// Rewrites the ruleset the kernel gets.
    pub kernel_ruleset: Option<Rewrite>,
    /// Trace this file (`--ruleset`) instead of the render.
    pub trace_ruleset: Option<PathBuf>,
    /// Only these probes.
    pub probe_filter: Option<ProbeFilter>,
}

/// One variant's result.
#[derive(Debug, Default)]
pub struct Report {
    /// The variant's name.
    pub variant: String,
    /// The back end it ran on.
    pub backend: String,
    /// How many probes it sent.
    pub probes: usize,
    /// How many connections in all (a probe takes several tries).
    pub connections: usize,
    /// How many probes also tried a returning client (session affinity).
    pub affinity_probes: usize,
    /// Probes per kind (`cluster IP from pod`, …).
    pub kinds: BTreeMap<String, usize>,
    /// Outcomes checked per verdict.
    pub verdicts: BTreeMap<String, usize>,
    /// Service ports not probed, and why.
    pub left_out: Vec<String>,
    /// Trace and kernel disagree (per probe: the packet, the prediction, the failures).
    pub disagreements: Vec<String>,
    /// The lab or trace could not run.
    pub errors: Vec<String>,
    /// One line per packet: what trace said and what the kernel did.
    pub lines: Vec<String>,
    /// How long the variant took.
    pub took: Duration,
}

/// Plans, builds and probes one variant, and compares every probe's tries with trace's prediction.
pub fn run_variant(variant: &Variant, model: CaseModel, opts: &Options) -> Report {
    let start = Instant::now();
    let mut report = Report {
        variant: variant.name.clone(),
        backend: variant.backend.name().to_string(),
        ..Report::default()
    };
    let mut plan = plan(variant, model);
    if let Some(f) = &opts.probe_filter {
        plan.probes.retain(|p| f(p));
    }
    report.left_out = plan.left_out.clone();

    // Predictions first: the servers go where trace says packets end.
    let mut preds: Vec<Prediction> = Vec::new();
    for p in &plan.probes {
        match trace(&plan, p, opts.trace_ruleset.as_deref()) {
            Ok(pred) => preds.push(pred),
            Err(e) => {
                report.errors.push(format!("{}: {p}: {e}", variant.name));
                return report;
            }
        }
    }
    let mut listen: BTreeSet<SocketAddr> = BTreeSet::new();
    for sp in &plan.model.services {
        for e in &sp.endpoints {
            listen.insert(SocketAddr::new(e.ip, e.port));
        }
    }
    for (p, pred) in plan.probes.iter().zip(&preds) {
        listen.insert(p.dst); // the trap
        for o in &pred.outcomes {
            if let Key::Delivered { dst, .. } = o.key {
                listen.insert(dst);
            }
        }
    }
    let text = match std::fs::read_to_string(&variant.ruleset) {
        Ok(t) => t,
        Err(e) => {
            report
                .errors
                .push(format!("{}: {e}", variant.ruleset.display()));
            return report;
        }
    };
    let text = match &opts.kernel_ruleset {
        Some(f) => f(&text),
        None => text,
    };
    let lab = match Lab::build(&plan, &text, &listen) {
        Ok(l) => l,
        Err(e) => {
            report.errors.push(format!("{}: lab: {e}", variant.name));
            return report;
        }
    };

    // The jobs: every try of a probe without affinity on its own; the probes with affinity one
    // after the other in one job (each try clears the node's xt_recent lists first).
    let port = AtomicU16::new(20000);
    let next_src = |ip: IpAddr| SocketAddr::new(ip, port.fetch_add(1, Ordering::Relaxed));
    enum Job {
        Try(usize),
        Affinity(Vec<usize>),
    }
    let mut jobs: Vec<Job> = Vec::new();
    let mut affinity = Vec::new();
    let mut n_tries = vec![0usize; plan.probes.len()];
    let mut patience = vec![DROP_TIMEOUT; plan.probes.len()];
    for (k, pred) in preds.iter().enumerate() {
        let new = pred.new_connections();
        let p_min = new.values().map(|(s, _)| *s).fold(1.0, f64::min);
        let only_refusals = new
            .keys()
            .all(|k| matches!(k, Key::Rejected | Key::Dropped));
        n_tries[k] = tries_for(p_min, only_refusals);
        // Only a probe that may be dropped needs the short wait that decides "dropped".
        let may_drop = pred.outcomes.iter().any(|o| o.key == Key::Dropped);
        patience[k] = if may_drop {
            DROP_TIMEOUT
        } else {
            ANSWER_PATIENCE
        };
        if pred.outcomes.iter().any(|o| o.affinity) {
            affinity.push(k);
        } else {
            jobs.extend((0..n_tries[k]).map(|_| Job::Try(k)));
        }
    }
    report.affinity_probes = affinity.len();
    // The slow affinity job first, so it overlaps the rest.
    if !affinity.is_empty() {
        jobs.insert(0, Job::Affinity(affinity));
    }
    let results: Mutex<Vec<Tries>> = Mutex::new(vec![Tries::default(); plan.probes.len()]);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..WORKERS.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(j) else { break };
                    match job {
                        Job::Try(k) => {
                            let p = &plan.probes[*k];
                            let src = next_src(p.src);
                            let obs = send(lab.ns_of(p.origin), p, src, patience[*k]);
                            results.lock().unwrap()[*k].new.push((src, obs));
                        }
                        Job::Affinity(ks) => {
                            for &k in ks {
                                let p = &plan.probes[k];
                                for _ in 0..n_tries[k] {
                                    if let Err(e) = in_node(&lab, clear_recent) {
                                        errors.lock().unwrap().push(e);
                                    }
                                    let src = next_src(p.src);
                                    let obs = send(lab.ns_of(p.origin), p, src, patience[k]);
                                    results.lock().unwrap()[k].new.push((src, obs));
                                }
                                for _ in 0..STICKY_TRIES {
                                    let src = next_src(p.src);
                                    let obs = send(lab.ns_of(p.origin), p, src, patience[k]);
                                    results.lock().unwrap()[k].sticky.push((src, obs));
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    report.errors.extend(errors.into_inner().unwrap());
    let results = results.into_inner().unwrap();
    let mut any_disagreement = false;
    for ((p, pred), tries) in plan.probes.iter().zip(&preds).zip(&results) {
        report.probes += 1;
        report.connections += tries.new.len() + tries.sticky.len();
        *report
            .kinds
            .entry(format!("{} from {}", p.kind, p.origin.name()))
            .or_default() += 1;
        for key in pred.new_connections().keys() {
            let v = match key {
                Key::Delivered { local: true, .. } => "delivered (node)",
                Key::Delivered { local: false, .. } => "delivered (forwarded)",
                Key::Rejected => "rejected",
                Key::Dropped => "dropped",
                Key::Other(_) => "other",
            };
            *report.verdicts.entry(v.to_string()).or_default() += 1;
        }
        let fails = compare(&plan, pred, tries);
        let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
        for (_, o) in &tries.new {
            *seen.entry(o.key()).or_default() += 1;
        }
        let tally = |seen: &BTreeMap<Key, usize>| {
            seen.iter()
                .map(|(k, n)| format!("{n}× {k}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut sticky: BTreeMap<Key, usize> = BTreeMap::new();
        for (_, o) in &tries.sticky {
            *sticky.entry(o.key()).or_default() += 1;
        }
        report.lines.push(format!(
            "{} {p}\n    trace: {}\n    kernel: {}{}{}",
            if fails.is_empty() { "ok  " } else { "FAIL" },
            pred.summary(),
            tally(&seen),
            if sticky.is_empty() {
                String::new()
            } else {
                format!("; returning client: {}", tally(&sticky))
            },
            tries
                .new
                .iter()
                .find_map(|(src, o)| match o {
                    Obs::Reply { peer, .. } if peer != src =>
                        Some(format!(" (masqueraded, e.g. {src} seen as {peer})")),
                    _ => None,
                })
                .unwrap_or_default()
        ));
        if !fails.is_empty() {
            any_disagreement = true;
            report.disagreements.push(format!(
                "DISAGREEMENT case {} ({} back end), packet {p}\n  trace says: {}\n  kernel did ({} tries): {}\n  {}\n  command: {}",
                variant.name,
                variant.backend,
                pred.summary(),
                tries.new.len(),
                tally(&seen),
                fails.join("\n  "),
                pred.command
            ));
        }
    }
    if any_disagreement && std::env::var("TRACE_KERNEL_DIAG").is_ok() {
        report.disagreements.push(lab.diagnostics(variant.family));
    }
    drop(lab);
    report.took = start.elapsed();
    report
}

/// Runs `f` on this thread after entering the node namespace (the next [`send`] moves it on).
fn in_node(lab: &Lab, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    enter(&lab.node.path())?;
    f()
}

/// One try: enter the client's namespace, send.
fn send(ns: &Netns, p: &Probe, src: SocketAddr, patience: Duration) -> Obs {
    if let Err(e) = enter(&ns.path()) {
        return Obs::Error(e);
    }
    match p.proto {
        Proto::Tcp => tcp_probe(src, p.dst, patience),
        Proto::Udp => udp_probe(src, p.dst, patience),
    }
}
