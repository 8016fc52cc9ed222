//! Node-level settings that shape the rendered rules (the flags and config fields of kube-proxy).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::IpFamily;

/// How "traffic from a local pod" is recognised (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// No detector: nothing is treated as pod traffic (no `--cluster-cidr` given).
    #[default]
    None,
    /// Sources inside these CIDRs are local pods (ClusterCIDR and NodeCIDR modes).
    Cidrs(Vec<IpNet>),
    /// Packets arriving on this bridge come from local pods (BridgeInterface mode).
    BridgeInterface(String),
    /// Packets arriving on interfaces with this prefix come from local pods (InterfaceNamePrefix mode).
    InterfaceNamePrefix(String),
}

/// The settings one render uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Which family to render.
    pub family: IpFamily,
    /// This node's name (`--hostname-override`), to tell local endpoints.
    pub node_name: String,
    /// This node's zone label (`topology.kubernetes.io/zone`), for topology hints.
    pub node_zone: Option<String>,
    /// This node's addresses, used when `nodeport_addresses` is not "all".
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses`; empty means every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// How local pod traffic is detected.
    pub local_detector: LocalDetector,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (0..=31).
    pub masquerade_bit: u8,
    /// `--iptables-localhost-nodeports`.
    pub localhost_nodeports: bool,
    /// Whether MASQUERADE gets `--random-fully` (every iptables this project supports has it).
    pub random_fully: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: the INVALID drop is left out, as upstream does.
    pub conntrack_tcp_be_liberal: bool,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            family: IpFamily::V4,
            node_name: String::new(),
            node_zone: None,
            node_ips: Vec::new(),
            nodeport_addresses: Vec::new(),
            local_detector: LocalDetector::None,
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_nodeports: true,
            random_fully: true,
            conntrack_tcp_be_liberal: false,
        }
    }
}
