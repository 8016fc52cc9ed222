//! The effective node settings: flags and `--config` merged with upstream's precedence, then
//! validated. With `--config`, the file decides and the flags it covers are ignored, except
//! `--hostname-override` (kubeadm passes `--config … --hostname-override=$(NODE_NAME)`).

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use rulegen::IpFamily;

use crate::addr::parse_cidr_sloppy;
use crate::cli::Cli;
use crate::config::{self, KubeProxyConfiguration};
use crate::warning::Warning;

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

/// Schedulers the kernel's IPVS has (`net/netfilter/ipvs/ip_vs_*.c`); upstream accepts any
/// name and fails at the first sync, we refuse a typo at start.
pub const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

/// Everything about the node a render needs, resolved and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

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
            ipvs_scheduler: rulegen::ipvs::DEFAULT_SCHEDULER.to_string(),
            ipvs_exclude_cidrs: Vec::new(),
            ipvs_strict_arp: false,
        }
    }
}

/// The raw values from one source (flags or file), before validation, with the names to use
/// in errors so a message points at what the user actually wrote.
#[derive(Default)]
struct Raw {
    from_file: Option<String>,
    hostname_override: Option<String>,
    cluster_cidr: Option<String>,
    nodeport_addresses: Vec<String>,
    detect_local_mode: Option<String>,
    pod_bridge_interface: Option<String>,
    pod_interface_name_prefix: Option<String>,
    mode: Option<String>,
    masquerade_all: Option<bool>,
    masquerade_bit: Option<i64>,
    localhost_nodeports: Option<bool>,
    ipvs_scheduler: Option<String>,
    ipvs_exclude_cidrs: Vec<String>,
    ipvs_strict_arp: Option<bool>,
}

impl Raw {
    /// `--flag` for flags, `field (in FILE)` for the config file.
    fn name(&self, flag: &str, field: &str) -> String {
        match &self.from_file {
            Some(file) => format!("{field} (in {file})"),
            None => format!("--{flag}"),
        }
    }

    fn from_cli(cli: &Cli) -> Raw {
        Raw {
            from_file: None,
            hostname_override: cli.hostname_override.clone(),
            cluster_cidr: cli.cluster_cidr.clone(),
            nodeport_addresses: cli.nodeport_addresses.clone().unwrap_or_default(),
            detect_local_mode: cli.detect_local_mode.clone(),
            pod_bridge_interface: cli.pod_bridge_interface.clone(),
            pod_interface_name_prefix: cli.pod_interface_name_prefix.clone(),
            mode: cli.proxy_mode.clone(),
            masquerade_all: cli.masquerade_all,
            masquerade_bit: cli.iptables_masquerade_bit,
            localhost_nodeports: cli.iptables_localhost_nodeports,
            ipvs_scheduler: cli.ipvs_scheduler.clone(),
            ipvs_exclude_cidrs: cli.ipvs_exclude_cidrs.clone().unwrap_or_default(),
            ipvs_strict_arp: cli.ipvs_strict_arp,
        }
    }

    fn from_config(cfg: KubeProxyConfiguration, file: String) -> Raw {
        let detect_local = cfg.detect_local.unwrap_or_default();
        let iptables = cfg.iptables.unwrap_or_default();
        let ipvs = cfg.ipvs.unwrap_or_default();
        Raw {
            from_file: Some(file),
            hostname_override: cfg.hostname_override,
            cluster_cidr: cfg.cluster_cidr,
            nodeport_addresses: cfg.node_port_addresses.unwrap_or_default(),
            detect_local_mode: cfg.detect_local_mode,
            pod_bridge_interface: detect_local.bridge_interface,
            pod_interface_name_prefix: detect_local.interface_name_prefix,
            mode: cfg.mode,
            masquerade_all: iptables.masquerade_all,
            masquerade_bit: iptables.masquerade_bit,
            localhost_nodeports: iptables.localhost_node_ports,
            ipvs_scheduler: ipvs.scheduler,
            ipvs_exclude_cidrs: ipvs.exclude_cidrs.unwrap_or_default(),
            ipvs_strict_arp: ipvs.strict_arp,
        }
    }
}

impl Settings {
    /// Resolves the command line (and its `--config` file) into settings, with warnings about
    /// ignored flags and unknown config fields. Errors are the user's to fix (exit non-zero).
    pub fn from_cli(cli: &Cli) -> anyhow::Result<(Settings, Vec<Warning>)> {
        let mut warnings = Vec::new();
        let mut raw = match &cli.config {
            None => Raw::from_cli(cli),
            Some(path) => {
                let (cfg, config_warnings) = config::load(path)?;
                warnings.extend(config_warnings);
                warnings.extend(unsupported_ipvs_fields(&cfg, path));
                warnings.extend(ignored_flags(cli).into_iter().map(|flag| {
                    Warning::warn(format!(
                        "{flag} is ignored because --config is given (as upstream kube-proxy does)"
                    ))
                }));
                Raw::from_config(cfg, path.display().to_string())
            }
        };
        if cli.hostname_override.is_some() {
            raw.hostname_override.clone_from(&cli.hostname_override);
        }
        let settings = resolve(raw, cli.ip_family.into(), machine_hostname)?;
        Ok((settings, warnings))
    }
}

/// `ipvs` fields the file sets that nothing reads yet: a warning each, so an operator does not
/// believe a time-out is in force when it is not. Zero values (kubeadm writes `0s`) are quiet.
fn unsupported_ipvs_fields(cfg: &KubeProxyConfiguration, path: &std::path::Path) -> Vec<Warning> {
    let Some(ipvs) = &cfg.ipvs else {
        return Vec::new();
    };
    let set = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !matches!(s.as_str(), "" | "0" | "0s"),
        Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    [
        (
            &ipvs.sync_period,
            "ipvs.syncPeriod",
            "use --ipvs-sync-period",
        ),
        (
            &ipvs.min_sync_period,
            "ipvs.minSyncPeriod",
            "use --ipvs-min-sync-period",
        ),
        (
            &ipvs.tcp_timeout,
            "ipvs.tcpTimeout",
            "the kernel's default applies",
        ),
        (
            &ipvs.tcp_fin_timeout,
            "ipvs.tcpFinTimeout",
            "the kernel's default applies",
        ),
        (
            &ipvs.udp_timeout,
            "ipvs.udpTimeout",
            "the kernel's default applies",
        ),
    ]
    .into_iter()
    .filter(|(v, _, _)| set(v))
    .map(|(_, field, instead)| {
        Warning::warn(format!(
            "{}: {field} is not supported yet and is ignored ({instead})",
            path.display()
        ))
    })
    .collect()
}

/// Flags the user gave that `--config` overrides.
fn ignored_flags(cli: &Cli) -> Vec<&'static str> {
    let given = [
        (cli.cluster_cidr.is_some(), "--cluster-cidr"),
        (cli.nodeport_addresses.is_some(), "--nodeport-addresses"),
        (cli.masquerade_all.is_some(), "--masquerade-all"),
        (
            cli.iptables_masquerade_bit.is_some(),
            "--iptables-masquerade-bit",
        ),
        (cli.detect_local_mode.is_some(), "--detect-local-mode"),
        (cli.pod_bridge_interface.is_some(), "--pod-bridge-interface"),
        (
            cli.pod_interface_name_prefix.is_some(),
            "--pod-interface-name-prefix",
        ),
        (
            cli.iptables_localhost_nodeports.is_some(),
            "--iptables-localhost-nodeports",
        ),
        (cli.proxy_mode.is_some(), "--proxy-mode"),
        (cli.ipvs_scheduler.is_some(), "--ipvs-scheduler"),
        (cli.ipvs_exclude_cidrs.is_some(), "--ipvs-exclude-cidrs"),
        (cli.ipvs_strict_arp.is_some(), "--ipvs-strict-arp"),
    ];
    given
        .into_iter()
        .filter(|(g, _)| *g)
        .map(|(_, f)| f)
        .collect()
}

fn resolve(
    raw: Raw,
    family: IpFamily,
    hostname: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Settings> {
    let mode = check_mode(&raw)?;
    let ipvs_scheduler = match raw.ipvs_scheduler.as_deref().map(str::trim) {
        None | Some("") => rulegen::ipvs::DEFAULT_SCHEDULER.to_string(),
        Some(s) if IPVS_SCHEDULERS.contains(&s) => s.to_string(),
        Some(s) => bail!(
            "{} {s:?} is not an IPVS scheduler (use one of {})",
            raw.name("ipvs-scheduler", "ipvs.scheduler"),
            IPVS_SCHEDULERS.join(", ")
        ),
    };
    let ipvs_exclude_cidrs = cidr_list(
        &raw.ipvs_exclude_cidrs,
        &raw.name("ipvs-exclude-cidrs", "ipvs.excludeCIDRs"),
    )?;

    let masquerade_bit = match raw.masquerade_bit {
        None => DEFAULT_MASQUERADE_BIT,
        Some(bit) => u8::try_from(bit).ok().filter(|b| *b <= 31).ok_or_else(|| {
            anyhow!(
                "{} {bit} is out of range: it must be between 0 and 31",
                raw.name("iptables-masquerade-bit", "iptables.masqueradeBit")
            )
        })?,
    };

    let cluster_cidrs = cluster_cidrs(&raw)?;
    let nodeport_addresses = nodeport_addresses(&raw)?;

    let detect_local_mode = match raw.detect_local_mode.as_deref() {
        None | Some("") => DetectLocalMode::default(),
        Some(s) => s
            .parse()
            .map_err(|e| anyhow!("{}: {e}", raw.name("detect-local-mode", "detectLocalMode")))?,
    };
    let pod_bridge_interface = raw.pod_bridge_interface.clone().unwrap_or_default();
    let pod_interface_name_prefix = raw.pod_interface_name_prefix.clone().unwrap_or_default();
    if detect_local_mode == DetectLocalMode::BridgeInterface && pod_bridge_interface.is_empty() {
        bail!(
            "{} must be set when {} is BridgeInterface",
            raw.name("pod-bridge-interface", "detectLocal.bridgeInterface"),
            raw.name("detect-local-mode", "detectLocalMode")
        );
    }
    if detect_local_mode == DetectLocalMode::InterfaceNamePrefix
        && pod_interface_name_prefix.is_empty()
    {
        bail!(
            "{} must be set when {} is InterfaceNamePrefix",
            raw.name(
                "pod-interface-name-prefix",
                "detectLocal.interfaceNamePrefix"
            ),
            raw.name("detect-local-mode", "detectLocalMode")
        );
    }

    // Upstream's GetHostname: trimmed and lower-cased whether given or taken from the machine.
    let hostname = match raw.hostname_override.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => hostname()?,
    }
    .trim()
    .to_lowercase();
    if hostname.is_empty() {
        bail!("the node name is empty; set --hostname-override");
    }

    Ok(Settings {
        hostname,
        family,
        cluster_cidrs,
        nodeport_addresses,
        detect_local_mode,
        pod_bridge_interface,
        pod_interface_name_prefix,
        masquerade_all: raw.masquerade_all.unwrap_or(false),
        masquerade_bit,
        localhost_nodeports: raw.localhost_nodeports.unwrap_or(true),
        mode,
        ipvs_scheduler,
        ipvs_exclude_cidrs,
        ipvs_strict_arp: raw.ipvs_strict_arp.unwrap_or(false),
    })
}

fn check_mode(raw: &Raw) -> anyhow::Result<ProxyMode> {
    match raw.mode.as_deref().unwrap_or("") {
        "" | "iptables" => Ok(ProxyMode::Iptables),
        "ipvs" => Ok(ProxyMode::Ipvs),
        m @ ("nftables" | "kernelspace") => bail!(
            "{} {m:?} is not supported yet (use iptables or ipvs)",
            raw.name("proxy-mode", "mode")
        ),
        m => bail!(
            "{} {m:?} is invalid (use iptables or ipvs)",
            raw.name("proxy-mode", "mode")
        ),
    }
}

/// A list of CIDRs, each entry trimmed and masked; empty entries are skipped.
fn cidr_list(entries: &[String], name: &str) -> anyhow::Result<Vec<IpNet>> {
    entries
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|e| parse_cidr_sloppy(e).ok_or_else(|| anyhow!("{name}: invalid CIDR {e:?}")))
        .collect()
}

/// Comma-separated, at most one CIDR per family, as upstream validates `clusterCIDR`.
fn cluster_cidrs(raw: &Raw) -> anyhow::Result<Vec<IpNet>> {
    let name = raw.name("cluster-cidr", "clusterCIDR");
    let Some(text) = raw.cluster_cidr.as_deref() else {
        return Ok(Vec::new());
    };
    let mut cidrs = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let cidr =
            parse_cidr_sloppy(entry).ok_or_else(|| anyhow!("{name}: invalid CIDR {entry:?}"))?;
        cidrs.push(cidr);
    }
    let v4 = cidrs
        .iter()
        .filter(|c| IpFamily::V4.contains_net(c))
        .count();
    if cidrs.len() > 2 || v4 > 1 || cidrs.len() - v4 > 1 {
        bail!("{name}: {text:?} must hold at most one CIDR per IP family");
    }
    Ok(cidrs)
}

fn nodeport_addresses(raw: &Raw) -> anyhow::Result<Vec<IpNet>> {
    let name = raw.name("nodeport-addresses", "nodePortAddresses");
    let mut nets = Vec::new();
    for entry in raw
        .nodeport_addresses
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        if entry == "primary" {
            bail!("{name}: \"primary\" is not supported yet; list CIDRs");
        }
        nets.push(
            parse_cidr_sloppy(entry).ok_or_else(|| anyhow!("{name}: invalid CIDR {entry:?}"))?,
        );
    }
    Ok(nets)
}

/// The machine's hostname, as Go's `os.Hostname` reads it on Linux.
fn machine_hostname() -> anyhow::Result<String> {
    for file in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(h) = std::fs::read_to_string(file)
            && !h.trim().is_empty()
        {
            return Ok(h.trim().to_string());
        }
    }
    bail!("cannot determine the hostname; set --hostname-override")
}

#[cfg(test)]
mod tests;
