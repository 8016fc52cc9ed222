//! The node's settings: the flags ([`flags`]) and the `--config` file ([`config_file`]), both
//! one [`KubeProxyConfiguration`] per source, merged with upstream's precedence and validated
//! ([`resolve`]) into [`Settings`], and written back by `--write-config-to` ([`write`]).
//!
//! Nothing here reads the command line's other parts ([`crate::cli`] builds on these).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use rulegen::IpFamily;

pub mod config_file;
pub mod duration;
pub mod flags;
mod interface_name;
pub mod node_name;
mod resolve;
pub mod write;

pub use config_file::KubeProxyConfiguration;
pub use flags::{DryRunPart, Flags};

/// Upstream's default `--iptables-masquerade-bit`.
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// `--detect-local-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum DetectLocalMode {
    /// Pods are the sources inside `--cluster-cidr`.
    #[default]
    ClusterCidr,
    /// Pods are the sources inside this Node's `spec.podCIDRs`.
    NodeCidr,
    /// Pods are what arrives on `--pod-bridge-interface`.
    BridgeInterface,
    /// Pods are what arrives on interfaces named `--pod-interface-name-prefix*`.
    InterfaceNamePrefix,
}

impl DetectLocalMode {
    /// The spelling upstream's flag and config use.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectLocalMode::ClusterCidr => "ClusterCIDR",
            DetectLocalMode::NodeCidr => "NodeCIDR",
            DetectLocalMode::BridgeInterface => "BridgeInterface",
            DetectLocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
        }
    }
}

impl fmt::Display for DetectLocalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DetectLocalMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Upstream compares case-sensitively; so do we, to reject what it rejects.
        match s {
            "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
            "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
            "BridgeInterface" => Ok(DetectLocalMode::BridgeInterface),
            "InterfaceNamePrefix" => Ok(DetectLocalMode::InterfaceNamePrefix),
            _ => Err(format!(
                "invalid detect-local-mode {s:?} (use ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix)"
            )),
        }
    }
}

/// `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ProxyMode {
    /// iptables mode (the default on Linux).
    #[default]
    Iptables,
    /// IPVS mode: virtual servers, ipsets and a few iptables rules.
    Ipvs,
}

impl ProxyMode {
    /// The spelling upstream's flag and config use.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
        }
    }
}

/// Schedulers the kernel's IPVS has (`net/netfilter/ipvs/ip_vs_*.c`); upstream accepts any
/// name and fails at the first sync, we refuse a typo at start.
pub const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

/// Everything about the node a render needs, resolved and valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The node's name: `--hostname-override`, else `hostnameOverride`, else the hostname; lower-case.
    pub hostname: String,
    /// The family rendered (`--ip-family`).
    pub family: IpFamily,
    /// `--cluster-cidr`/`clusterCIDR`, masked; at most one per family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`/`nodePortAddresses` of both families, masked; empty means all.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--detect-local-mode`/`detectLocalMode`.
    pub detect_local_mode: DetectLocalMode,
    /// `--pod-bridge-interface` (set whenever the mode is BridgeInterface).
    pub pod_bridge_interface: String,
    /// `--pod-interface-name-prefix` (set whenever the mode is InterfaceNamePrefix).
    pub pod_interface_name_prefix: String,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit`, 0..=31.
    pub masquerade_bit: u8,
    /// `--iptables-localhost-nodeports`.
    pub localhost_nodeports: bool,
    /// `--proxy-mode`/`mode`.
    pub mode: ProxyMode,
    /// `--ipvs-scheduler`/`ipvs.scheduler`.
    pub ipvs_scheduler: String,
    /// `--ipvs-exclude-cidrs`/`ipvs.excludeCIDRs`, masked.
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-strict-arp`/`ipvs.strictARP`.
    pub ipvs_strict_arp: bool,
    /// `--healthz-bind-address`/`healthzBindAddress`; `None` when disabled.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `--metrics-bind-address`/`metricsBindAddress`; `None` when disabled.
    pub metrics_bind_address: Option<SocketAddr>,
    /// The mode's `--*-sync-period`/`syncPeriod`: the longest time between two syncs.
    pub sync_period: Duration,
    /// The mode's `--*-min-sync-period`/`minSyncPeriod`: the shortest time between two syncs.
    pub min_sync_period: Duration,
    /// `--conntrack-*`/`conntrack`.
    pub conntrack: ConntrackSettings,
    /// `--logging-format`/`logging.format` (the flag wins, as upstream's logging flags do).
    pub log_format: LogFormat,
    /// `-v`/`logging.verbosity` (the flag wins).
    pub verbosity: u8,
    /// `--kubeconfig`/`clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-qps`/`clientConnection.qps`; `None` means the default.
    pub kube_api_qps: Option<f64>,
    /// `--kube-api-burst`/`clientConnection.burst`; `None` means the default.
    pub kube_api_burst: Option<u32>,
}

/// `--logging-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum LogFormat {
    /// Plain text lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling upstream's flag and config use.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The node's connection-tracking set-up (`--conntrack-*`, `conntrack` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Entries per CPU; 0 leaves `nf_conntrack_max` alone.
    pub max_per_core: u64,
    /// The floor for `max_per_core` × CPUs.
    pub min: u64,
    /// `nf_conntrack_tcp_timeout_established`; zero leaves it.
    pub tcp_established_timeout: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`; zero leaves it.
    pub tcp_close_wait_timeout: Duration,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`; zero leaves it.
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream`; zero leaves it.
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackSettings {
    /// Upstream's defaults (`pkg/proxy/apis/config/v1alpha1/defaults.go`).
    fn default() -> Self {
        ConntrackSettings {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// Upstream's default sync period (both modes).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Upstream's default min sync period (both modes).
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

/// Upstream's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// Upstream's default `--metrics-bind-address`.
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: String::new(),
            family: IpFamily::V4,
            cluster_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCidr,
            pod_bridge_interface: String::new(),
            pod_interface_name_prefix: String::new(),
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            localhost_nodeports: true,
            mode: ProxyMode::Iptables,
            ipvs_scheduler: rulegen::render::ipvs::DEFAULT_SCHEDULER.to_string(),
            ipvs_exclude_cidrs: Vec::new(),
            ipvs_strict_arp: false,
            healthz_bind_address: DEFAULT_HEALTHZ_BIND_ADDRESS.parse().ok(),
            metrics_bind_address: DEFAULT_METRICS_BIND_ADDRESS.parse().ok(),
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            conntrack: ConntrackSettings::default(),
            log_format: LogFormat::Text,
            verbosity: 0,
            kubeconfig: None,
            kube_api_qps: None,
            kube_api_burst: None,
        }
    }
}
