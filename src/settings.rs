//! The effective node settings: flags and `--config` merged with upstream's precedence, then
//! validated. With `--config`, the file decides and the flags it covers are ignored, except
//! `--hostname-override` (kubeadm passes `--config … --hostname-override=$(NODE_NAME)`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use rulegen::IpFamily;

use crate::addr::parse_cidr_sloppy;
use crate::cli::Cli;
use crate::config::{self, KubeProxyConfiguration};
use crate::warning::Warning;

mod interface_name;
pub mod node_name;

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

/// The raw values from one source (flags or file), before validation, with the names to use
/// in errors so a message points at what the user actually wrote.
#[derive(Default)]
struct Raw {
    from_file: Option<String>,
    hostname_override: Option<String>,
    /// Whether `hostname_override` is the flag's (it counts even with `--config`).
    hostname_override_is_flag: bool,
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
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    iptables_sync_period: Option<String>,
    iptables_min_sync_period: Option<String>,
    ipvs_sync_period: Option<String>,
    ipvs_min_sync_period: Option<String>,
    conntrack: crate::config::ConntrackConfiguration,
    log_format: Option<String>,
    verbosity: Option<u8>,
    kubeconfig: Option<String>,
    kube_api_qps: Option<String>,
    kube_api_burst: Option<i64>,
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
            hostname_override_is_flag: cli.hostname_override.is_some(),
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
            healthz_bind_address: cli.healthz_bind_address.clone(),
            metrics_bind_address: cli.metrics_bind_address.clone(),
            iptables_sync_period: cli.iptables_sync_period.clone(),
            iptables_min_sync_period: cli.iptables_min_sync_period.clone(),
            ipvs_sync_period: cli.ipvs_sync_period.clone(),
            ipvs_min_sync_period: cli.ipvs_min_sync_period.clone(),
            conntrack: crate::config::ConntrackConfiguration {
                max_per_core: cli.conntrack_max_per_core,
                min: cli.conntrack_min,
                tcp_established_timeout: cli.conntrack_tcp_timeout_established.clone(),
                tcp_close_wait_timeout: cli.conntrack_tcp_timeout_close_wait.clone(),
                tcp_be_liberal: cli.conntrack_tcp_be_liberal,
                udp_timeout: cli.conntrack_udp_timeout.clone(),
                udp_stream_timeout: cli.conntrack_udp_timeout_stream.clone(),
            },
            log_format: cli.logging_format.clone(),
            verbosity: cli.verbosity,
            kubeconfig: cli.kubeconfig.as_ref().map(|p| p.display().to_string()),
            kube_api_qps: cli.kube_api_qps.clone(),
            kube_api_burst: cli.kube_api_burst.map(i64::from),
        }
    }

    fn from_config(cfg: KubeProxyConfiguration, file: String) -> Raw {
        let detect_local = cfg.detect_local.unwrap_or_default();
        let iptables = cfg.iptables.unwrap_or_default();
        let ipvs = cfg.ipvs.unwrap_or_default();
        let logging = cfg.logging.unwrap_or_default();
        let client = cfg.client_connection.unwrap_or_default();
        Raw {
            from_file: Some(file),
            hostname_override: cfg.hostname_override,
            hostname_override_is_flag: false,
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
            healthz_bind_address: cfg.healthz_bind_address,
            metrics_bind_address: cfg.metrics_bind_address,
            iptables_sync_period: iptables.sync_period,
            iptables_min_sync_period: iptables.min_sync_period,
            ipvs_sync_period: ipvs.sync_period,
            ipvs_min_sync_period: ipvs.min_sync_period,
            conntrack: cfg.conntrack.unwrap_or_default(),
            log_format: logging.format,
            verbosity: logging.verbosity,
            kubeconfig: client.kubeconfig,
            kube_api_qps: client.qps.map(|q| q.to_string()),
            kube_api_burst: client.burst,
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
        // As upstream: with --config only the host name and logging flags still count.
        if cli.hostname_override.is_some() {
            raw.hostname_override.clone_from(&cli.hostname_override);
            raw.hostname_override_is_flag = true;
        }
        if cli.logging_format.is_some() {
            raw.log_format.clone_from(&cli.logging_format);
        }
        if cli.verbosity.is_some() {
            raw.verbosity = cli.verbosity;
        }
        warnings.extend(cli.ignored.given().into_iter().map(|flag| {
            Warning::warn(format!(
                "{flag} is accepted for compatibility and has no effect"
            ))
        }));
        let settings = resolve(raw, cli.ip_family.into(), machine_hostname)?;
        if settings.min_sync_period > settings.sync_period {
            let (min, max) = match settings.mode {
                ProxyMode::Iptables => ("iptables-min-sync-period", "iptables-sync-period"),
                ProxyMode::Ipvs => ("ipvs-min-sync-period", "ipvs-sync-period"),
            };
            bail!(
                "the min sync period ({}) must not exceed the sync period ({}): check --{min} and --{max} (or the config file's)",
                crate::agent::duration::format_go_duration(settings.min_sync_period),
                crate::agent::duration::format_go_duration(settings.sync_period)
            );
        }
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
        (&ipvs.tcp_timeout, "ipvs.tcpTimeout"),
        (&ipvs.tcp_fin_timeout, "ipvs.tcpFinTimeout"),
        (&ipvs.udp_timeout, "ipvs.udpTimeout"),
    ]
    .into_iter()
    .filter(|(v, _)| set(v))
    .map(|(_, field)| {
        Warning::warn(format!(
            "{}: {field} is not supported yet and is ignored (the kernel's default applies)",
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
        (cli.healthz_bind_address.is_some(), "--healthz-bind-address"),
        (cli.metrics_bind_address.is_some(), "--metrics-bind-address"),
        (cli.iptables_sync_period.is_some(), "--iptables-sync-period"),
        (
            cli.iptables_min_sync_period.is_some(),
            "--iptables-min-sync-period",
        ),
        (cli.ipvs_sync_period.is_some(), "--ipvs-sync-period"),
        (cli.ipvs_min_sync_period.is_some(), "--ipvs-min-sync-period"),
        (
            cli.conntrack_max_per_core.is_some(),
            "--conntrack-max-per-core",
        ),
        (cli.conntrack_min.is_some(), "--conntrack-min"),
        (
            cli.conntrack_tcp_timeout_established.is_some(),
            "--conntrack-tcp-timeout-established",
        ),
        (
            cli.conntrack_tcp_timeout_close_wait.is_some(),
            "--conntrack-tcp-timeout-close-wait",
        ),
        (
            cli.conntrack_tcp_be_liberal.is_some(),
            "--conntrack-tcp-be-liberal",
        ),
        (
            cli.conntrack_udp_timeout.is_some(),
            "--conntrack-udp-timeout",
        ),
        (
            cli.conntrack_udp_timeout_stream.is_some(),
            "--conntrack-udp-timeout-stream",
        ),
        (cli.kubeconfig.is_some(), "--kubeconfig"),
        (cli.kube_api_qps.is_some(), "--kube-api-qps"),
        (cli.kube_api_burst.is_some(), "--kube-api-burst"),
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
        None | Some("") => rulegen::render::ipvs::DEFAULT_SCHEDULER.to_string(),
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
    // Only the mode's own interface reaches the rules, so only it is checked (as upstream).
    if detect_local_mode == DetectLocalMode::BridgeInterface {
        let name = raw.name("pod-bridge-interface", "detectLocal.bridgeInterface");
        if pod_bridge_interface.is_empty() {
            bail!(
                "{name} must be set when {} is BridgeInterface",
                raw.name("detect-local-mode", "detectLocalMode")
            );
        }
        interface_name::check_name(&pod_bridge_interface).map_err(|e| {
            anyhow!("{name} {pod_bridge_interface:?} is not an interface name: {e}")
        })?;
    }
    if detect_local_mode == DetectLocalMode::InterfaceNamePrefix {
        let name = raw.name(
            "pod-interface-name-prefix",
            "detectLocal.interfaceNamePrefix",
        );
        if pod_interface_name_prefix.is_empty() {
            bail!(
                "{name} must be set when {} is InterfaceNamePrefix",
                raw.name("detect-local-mode", "detectLocalMode")
            );
        }
        interface_name::check_prefix(&pod_interface_name_prefix).map_err(|e| {
            anyhow!("{name} {pod_interface_name_prefix:?} is not an interface-name prefix: {e}")
        })?;
    }

    // Upstream's GetHostname: trimmed and lower-cased whether given or taken from the machine.
    let given = raw
        .hostname_override
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty());
    let hostname = match given {
        Some(h) => h.to_string(),
        None => hostname()?,
    }
    .trim()
    .to_lowercase();
    if hostname.is_empty() {
        bail!("the node name is empty; set --hostname-override");
    }
    if let Err(e) = node_name::check(&hostname) {
        match given {
            Some(h) if raw.hostname_override_is_flag => {
                bail!("--hostname-override {h:?} is not a node name: {e}")
            }
            Some(h) => bail!(
                "{} {h:?} is not a node name: {e}",
                raw.name("hostname-override", "hostnameOverride")
            ),
            None => bail!(
                "this machine's hostname {hostname:?} is not a node name: {e}; set --hostname-override"
            ),
        }
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
        sync_period: go_duration(
            match mode {
                ProxyMode::Iptables => raw.iptables_sync_period.as_deref(),
                ProxyMode::Ipvs => raw.ipvs_sync_period.as_deref(),
            },
            DEFAULT_SYNC_PERIOD,
            &sync_names(&raw, mode, false),
            false,
        )?,
        min_sync_period: go_duration(
            match mode {
                ProxyMode::Iptables => raw.iptables_min_sync_period.as_deref(),
                ProxyMode::Ipvs => raw.ipvs_min_sync_period.as_deref(),
            },
            DEFAULT_MIN_SYNC_PERIOD,
            &sync_names(&raw, mode, true),
            true,
        )?,
        conntrack: conntrack(&raw)?,
        log_format: match raw.log_format.as_deref().map(str::trim) {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(f) => bail!(
                "{} {f:?} is invalid (use text or json)",
                raw.name("logging-format", "logging.format")
            ),
        },
        verbosity: raw.verbosity.unwrap_or(0),
        kubeconfig: raw
            .kubeconfig
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(PathBuf::from),
        kube_api_qps: match raw.kube_api_qps.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => match v.parse::<f64>() {
                // As upstream: 0 means the default.
                Ok(0.0) => None,
                Ok(q) if q > 0.0 && q.is_finite() => Some(q),
                _ => bail!(
                    "{} {v:?} must be a positive number",
                    raw.name("kube-api-qps", "clientConnection.qps")
                ),
            },
        },
        kube_api_burst: match raw.kube_api_burst {
            None | Some(0) => None,
            Some(b) => Some(u32::try_from(b).ok().filter(|b| *b > 0).ok_or_else(|| {
                anyhow!(
                    "{} {b} must be a positive number",
                    raw.name("kube-api-burst", "clientConnection.burst")
                )
            })?),
        },
        healthz_bind_address: bind_address(
            raw.healthz_bind_address.as_deref(),
            DEFAULT_HEALTHZ_BIND_ADDRESS,
            &raw.name("healthz-bind-address", "healthzBindAddress"),
        )?,
        metrics_bind_address: bind_address(
            raw.metrics_bind_address.as_deref(),
            DEFAULT_METRICS_BIND_ADDRESS,
            &raw.name("metrics-bind-address", "metricsBindAddress"),
        )?,
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

/// The name of the sync-period setting `raw` took for `mode`, for messages.
fn sync_names(raw: &Raw, mode: ProxyMode, min: bool) -> String {
    let (flag, field) = match (mode, min) {
        (ProxyMode::Iptables, false) => ("iptables-sync-period", "iptables.syncPeriod"),
        (ProxyMode::Iptables, true) => ("iptables-min-sync-period", "iptables.minSyncPeriod"),
        (ProxyMode::Ipvs, false) => ("ipvs-sync-period", "ipvs.syncPeriod"),
        (ProxyMode::Ipvs, true) => ("ipvs-min-sync-period", "ipvs.minSyncPeriod"),
    };
    raw.name(flag, field)
}

/// A Go duration; absent, empty or (in a config file, where kubeadm writes `0s` for "unset")
/// zero means `default`. A zero sync period is refused; a zero min sync period is allowed.
fn go_duration(
    value: Option<&str>,
    default: Duration,
    name: &str,
    zero_ok: bool,
) -> anyhow::Result<Duration> {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    let d = crate::agent::duration::parse_go_duration(text).map_err(|e| anyhow!("{name}: {e}"))?;
    if d.is_zero() && name.contains("(in ") {
        return Ok(default);
    }
    if d.is_zero() && !zero_ok {
        bail!("{name} must be above zero");
    }
    Ok(d)
}

/// The conntrack settings: upstream's defaults, then what was given (durations checked).
fn conntrack(raw: &Raw) -> anyhow::Result<ConntrackSettings> {
    let c = &raw.conntrack;
    let d = ConntrackSettings::default();
    // The kernel's nf_conntrack_max is an int: a larger count is refused when written, and
    // one near u64's limit would overflow when scaled by the CPUs.
    let count = |v: Option<i64>, default: u64, flag: &str, field: &str| match v {
        None => Ok(default),
        Some(n) if n < 0 => bail!("{} {n} must not be negative", raw.name(flag, field)),
        Some(n) if n > i64::from(i32::MAX) => bail!(
            "{} {n} is above {}, the most the kernel's nf_conntrack_max holds",
            raw.name(flag, field),
            i32::MAX
        ),
        Some(n) => Ok(n.unsigned_abs()),
    };
    let timeout = |v: &Option<String>, default: Duration, flag: &str, field: &str| match v
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => Ok(default),
        Some(t) => crate::agent::duration::parse_go_duration(t)
            .map_err(|e| anyhow!("{}: {e}", raw.name(flag, field))),
    };
    Ok(ConntrackSettings {
        max_per_core: count(
            c.max_per_core,
            d.max_per_core,
            "conntrack-max-per-core",
            "conntrack.maxPerCore",
        )?,
        min: count(c.min, d.min, "conntrack-min", "conntrack.min")?,
        tcp_established_timeout: timeout(
            &c.tcp_established_timeout,
            d.tcp_established_timeout,
            "conntrack-tcp-timeout-established",
            "conntrack.tcpEstablishedTimeout",
        )?,
        tcp_close_wait_timeout: timeout(
            &c.tcp_close_wait_timeout,
            d.tcp_close_wait_timeout,
            "conntrack-tcp-timeout-close-wait",
            "conntrack.tcpCloseWaitTimeout",
        )?,
        tcp_be_liberal: c.tcp_be_liberal.unwrap_or(false),
        udp_timeout: timeout(
            &c.udp_timeout,
            d.udp_timeout,
            "conntrack-udp-timeout",
            "conntrack.udpTimeout",
        )?,
        udp_stream_timeout: timeout(
            &c.udp_stream_timeout,
            d.udp_stream_timeout,
            "conntrack-udp-timeout-stream",
            "conntrack.udpStreamTimeout",
        )?,
    })
}

/// A server's `IP:port`. Not given (or empty in the config file, which kubeadm writes) means the
/// default; an explicitly empty flag disables the server, as upstream's does. An IP without a
/// port gets the default port (upstream's flag accepts both).
fn bind_address(
    value: Option<&str>,
    default: &str,
    name: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    let default: SocketAddr = default.parse().expect("valid default");
    let text = match value.map(str::trim) {
        None => return Ok(Some(default)),
        Some("") if name.contains("(in ") => return Ok(Some(default)),
        Some("") => return Ok(None),
        Some(t) => t,
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, default.port())));
    }
    bail!("{name}: {text:?} is not an IP:port (e.g. {default})")
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
