//! The node-wide facts every service port's plan shares: where node ports are served and
//! whether local pods' traffic can be told apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{LocalDetector, RenderConfig};
use crate::model::IpFamily;

/// Where node ports answer when they are matched by destination type rather than by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortDestinations {
    /// Every local address of the family; loopback (`127.0.0.0/8`, `::1`) only when `loopback`.
    EveryLocalAddress {
        /// Whether loopback addresses serve node ports too (IPv4 `--localhost-nodeports`).
        loopback: bool,
    },
    /// Only these addresses (`--nodeport-addresses` picked them out of the node's), sorted.
    Addresses(Vec<IpAddr>),
}

/// What the node contributes to every service port's plan, computed once per render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The family rendered.
    pub family: IpFamily,
    /// Whether the local-traffic detector can recognise local pods' traffic in this family.
    pub has_local_detector: bool,
    /// Whether `127.0.0.1` serves node ports (IPv4 only, `--localhost-nodeports`).
    pub localhost_node_ports: bool,
    /// Node-port destinations as a destination-type match sees them (iptables mode).
    pub node_port_destinations: NodePortDestinations,
    /// The node's own addresses that serve node ports, loopback excluded, sorted: where a mode
    /// that needs one entry per address (IPVS virtual servers) puts them.
    pub node_port_ips: Vec<IpAddr>,
}

impl NodePlan {
    /// The node facts `cfg` describes.
    pub fn new(cfg: &RenderConfig) -> NodePlan {
        let localhost_node_ports = localhost_node_ports(cfg);
        NodePlan {
            family: cfg.family,
            has_local_detector: has_local_detector(cfg),
            localhost_node_ports,
            node_port_destinations: node_port_destinations(cfg, localhost_node_ports),
            node_port_ips: node_port_ips(cfg),
        }
    }
}

/// Whether the detector has a match for `cfg.family` (a CIDR detector may have none).
fn has_local_detector(cfg: &RenderConfig) -> bool {
    match &cfg.local_detector {
        LocalDetector::None => false,
        LocalDetector::Cidrs(cidrs) => cidrs.iter().any(|c| cfg.family.contains_net(c)),
        LocalDetector::BridgeInterface(_) | LocalDetector::InterfaceNamePrefix(_) => true,
    }
}

/// Localhost node ports exist only for IPv4, and only when the node-port addresses include
/// 127.0.0.1 (an empty list means "all addresses").
fn localhost_node_ports(cfg: &RenderConfig) -> bool {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.family == IpFamily::V4
        && cfg.localhost_nodeports
        && (cfg.nodeport_addresses.is_empty()
            || cfg.nodeport_addresses.iter().any(|n| n.contains(&loopback)))
}

fn node_port_destinations(cfg: &RenderConfig, localhost: bool) -> NodePortDestinations {
    let match_all = cfg.nodeport_addresses.is_empty()
        || cfg.nodeport_addresses.iter().any(|n| n.prefix_len() == 0);
    if match_all {
        return NodePortDestinations::EveryLocalAddress {
            loopback: localhost,
        };
    }
    let mut ips: Vec<IpAddr> = cfg
        .node_ips
        .iter()
        .copied()
        .chain([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ])
        .filter(|ip| cfg.family.contains(ip))
        .filter(|ip| cfg.nodeport_addresses.iter().any(|n| n.contains(ip)))
        .filter(|ip| !ip.is_loopback() || localhost)
        .collect();
    ips.sort();
    ips.dedup();
    NodePortDestinations::Addresses(ips)
}

/// The node's addresses of this family inside `--nodeport-addresses` (all of them when it is
/// empty), loopback excluded.
fn node_port_ips(cfg: &RenderConfig) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cfg
        .node_ips
        .iter()
        .filter(|ip| cfg.family.contains(ip) && !ip.is_loopback())
        .filter(|ip| {
            cfg.nodeport_addresses.is_empty()
                || cfg.nodeport_addresses.iter().any(|n| n.contains(*ip))
        })
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}
