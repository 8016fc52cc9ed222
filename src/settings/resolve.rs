//! Resolution: the flags and the `--config` file merged with upstream's precedence, then
//! validated into [`Settings`]. With `--config`, the file decides and the flags it covers are
//! ignored (and reported), except `--hostname-override` (kubeadm passes `--config …
//! --hostname-override=$(NODE_NAME)`) and the logging flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use rulegen::IpFamily;

use super::config_file::{self, KubeProxyConfiguration};
use super::flags::Flags;
use super::{
    ConntrackSettings, DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_MASQUERADE_BIT,
    DEFAULT_METRICS_BIND_ADDRESS, DEFAULT_MIN_SYNC_PERIOD, DEFAULT_SYNC_PERIOD, DetectLocalMode,
    IPVS_SCHEDULERS, LogFormat, ProxyMode, Settings, interface_name, node_name,
};
use crate::addr::parse_cidr_sloppy;
use crate::warning::Warning;

/// The settings whose flags count even with `--config`: the node's name, and logging, whose
/// flags win over the file's as upstream's logging flags do.
const FLAGS_OVER_FILE: [&str; 3] = ["hostnameOverride", "logging.format", "logging.verbosity"];

/// Where the values being resolved came from, so a message names what the user wrote.
#[derive(Debug, Clone, Default)]
struct Source {
    /// The config file, when the values are its.
    file: Option<String>,
    /// Whether the node name is the flag's (it counts even with `--config`).
    hostname_from_flag: bool,
}

impl Source {
    /// The setting `path` (its config-file path, which is also its flag's clap id) as the user
    /// wrote it: `--flag` for flags, `path (in FILE)` for the config file.
    fn name(&self, path: &str) -> String {
        match &self.file {
            Some(file) => format!("{path} (in {file})"),
            None => flag_of(path),
        }
    }

    /// Whether the values are the config file's (where kubeadm writes `""` and `0s` for unset).
    fn is_file(&self) -> bool {
        self.file.is_some()
    }
}

impl Settings {
    /// Resolves the flags (and their `--config` file) into settings, with warnings about
    /// ignored flags and unknown config fields. Errors are the user's to fix (exit non-zero).
    pub fn from_flags(flags: &Flags) -> anyhow::Result<(Settings, Vec<Warning>)> {
        let mut warnings = Vec::new();
        let given = &flags.configuration;
        let (mut cfg, file) = match &flags.config {
            None => (given.clone(), None),
            Some(path) => {
                let (cfg, config_warnings) = config_file::load(path)?;
                warnings.extend(config_warnings);
                warnings.extend(unsupported_ipvs_fields(&cfg, path));
                warnings.extend(
                    flags
                        .given_settings()
                        .into_iter()
                        .filter(|(id, _)| !FLAGS_OVER_FILE.contains(&id.as_str()))
                        .map(|(_, flag)| {
                            Warning::warn(format!(
                                "{flag} is ignored because --config is given (as upstream kube-proxy does)"
                            ))
                        }),
                );
                (cfg, Some(path.display().to_string()))
            }
        };
        // As upstream: with --config only the host name and logging flags still count.
        if given.hostname_override.is_some() {
            cfg.hostname_override.clone_from(&given.hostname_override);
        }
        if given.logging.format.is_some() {
            cfg.logging.format.clone_from(&given.logging.format);
        }
        if given.logging.verbosity.is_some() {
            cfg.logging.verbosity = given.logging.verbosity;
        }
        warnings.extend(flags.given_ignored().into_iter().map(|flag| {
            Warning::warn(format!(
                "{flag} is accepted for compatibility and has no effect"
            ))
        }));
        let src = Source {
            file,
            hostname_from_flag: given.hostname_override.is_some(),
        };
        let settings = resolve(&cfg, &src, flags.ip_family, machine_hostname)?;
        if settings.min_sync_period > settings.sync_period {
            let min = flag_of(sync_path(settings.mode, true));
            let max = flag_of(sync_path(settings.mode, false));
            bail!(
                "the min sync period ({}) must not exceed the sync period ({}): check {min} and {max} (or the config file's)",
                super::duration::format_go_duration(settings.min_sync_period),
                super::duration::format_go_duration(settings.sync_period)
            );
        }
        Ok((settings, warnings))
    }
}

/// `ipvs` fields the file sets that nothing reads yet: a warning each, so an operator does not
/// believe a time-out is in force when it is not. Zero values (kubeadm writes `0s`) are quiet.
fn unsupported_ipvs_fields(cfg: &KubeProxyConfiguration, path: &std::path::Path) -> Vec<Warning> {
    let ipvs = &cfg.ipvs;
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

fn resolve(
    cfg: &KubeProxyConfiguration,
    src: &Source,
    family: IpFamily,
    hostname: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Settings> {
    let mode = check_mode(cfg, src)?;
    let ipvs_scheduler = ipvs_scheduler(cfg, src)?;
    let ipvs_exclude_cidrs = cidr_list(
        cfg.ipvs.exclude_cidrs.as_deref().unwrap_or_default(),
        &src.name("ipvs.excludeCIDRs"),
    )?;

    let masquerade_bit = masquerade_bit(cfg, src)?;

    let cluster_cidrs = cluster_cidrs(cfg, src)?;
    let nodeport_addresses = nodeport_addresses(cfg, src)?;

    let (detect_local_mode, pod_bridge_interface, pod_interface_name_prefix) =
        detect_local(cfg, src)?;

    let hostname = node_hostname(cfg, src, hostname)?;

    Ok(Settings {
        hostname,
        family,
        cluster_cidrs,
        nodeport_addresses,
        detect_local_mode,
        pod_bridge_interface,
        pod_interface_name_prefix,
        masquerade_all: cfg.iptables.masquerade_all.unwrap_or(false),
        masquerade_bit,
        localhost_nodeports: cfg.iptables.localhost_node_ports.unwrap_or(true),
        mode,
        ipvs_scheduler,
        ipvs_exclude_cidrs,
        ipvs_strict_arp: cfg.ipvs.strict_arp.unwrap_or(false),
        sync_period: go_duration(
            match mode {
                ProxyMode::Iptables => cfg.iptables.sync_period.as_deref(),
                ProxyMode::Ipvs => cfg.ipvs.sync_period.as_deref(),
            },
            DEFAULT_SYNC_PERIOD,
            &sync_names(src, mode, false),
            false,
            src.is_file(),
        )?,
        min_sync_period: go_duration(
            match mode {
                ProxyMode::Iptables => cfg.iptables.min_sync_period.as_deref(),
                ProxyMode::Ipvs => cfg.ipvs.min_sync_period.as_deref(),
            },
            DEFAULT_MIN_SYNC_PERIOD,
            &sync_names(src, mode, true),
            true,
            src.is_file(),
        )?,
        conntrack: conntrack(cfg, src)?,
        log_format: log_format(cfg, src)?,
        verbosity: cfg.logging.verbosity.unwrap_or(0),
        kubeconfig: cfg
            .client_connection
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(PathBuf::from),
        kube_api_qps: kube_api_qps(cfg, src)?,
        kube_api_burst: kube_api_burst(cfg, src)?,
        healthz_bind_address: bind_address(
            cfg.healthz_bind_address.as_deref(),
            DEFAULT_HEALTHZ_BIND_ADDRESS,
            &src.name("healthzBindAddress"),
            src.is_file(),
        )?,
        metrics_bind_address: bind_address(
            cfg.metrics_bind_address.as_deref(),
            DEFAULT_METRICS_BIND_ADDRESS,
            &src.name("metricsBindAddress"),
            src.is_file(),
        )?,
    })
}

/// `ipvs.scheduler`: upstream's list, `rr` when unset.
fn ipvs_scheduler(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<String> {
    Ok(match cfg.ipvs.scheduler.as_deref().map(str::trim) {
        None | Some("") => rulegen::render::ipvs::DEFAULT_SCHEDULER.to_string(),
        Some(s) if IPVS_SCHEDULERS.contains(&s) => s.to_string(),
        Some(s) => bail!(
            "{} {s:?} is not an IPVS scheduler (use one of {})",
            src.name("ipvs.scheduler"),
            IPVS_SCHEDULERS.join(", ")
        ),
    })
}

/// `iptables.masqueradeBit`: 0–31, 14 when unset.
fn masquerade_bit(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<u8> {
    Ok(match cfg.iptables.masquerade_bit {
        None => DEFAULT_MASQUERADE_BIT,
        Some(bit) => u8::try_from(bit).ok().filter(|b| *b <= 31).ok_or_else(|| {
            anyhow!(
                "{} {bit} is out of range: it must be between 0 and 31",
                src.name("iptables.masqueradeBit")
            )
        })?,
    })
}

/// `detectLocalMode` and the interface its interface-based modes name, checked as the kernel
/// takes names.
fn detect_local(
    cfg: &KubeProxyConfiguration,
    src: &Source,
) -> anyhow::Result<(DetectLocalMode, String, String)> {
    let detect_local_mode = match cfg.detect_local_mode.as_deref() {
        None | Some("") => DetectLocalMode::default(),
        Some(s) => s
            .parse()
            .map_err(|e| anyhow!("{}: {e}", src.name("detectLocalMode")))?,
    };
    let pod_bridge_interface = cfg
        .detect_local
        .bridge_interface
        .clone()
        .unwrap_or_default();
    let pod_interface_name_prefix = cfg
        .detect_local
        .interface_name_prefix
        .clone()
        .unwrap_or_default();
    // Only the mode's own interface reaches the rules, so only it is checked (as upstream).
    if detect_local_mode == DetectLocalMode::BridgeInterface {
        let name = src.name("detectLocal.bridgeInterface");
        if pod_bridge_interface.is_empty() {
            bail!(
                "{name} must be set when {} is BridgeInterface",
                src.name("detectLocalMode")
            );
        }
        interface_name::check_name(&pod_bridge_interface).map_err(|e| {
            anyhow!("{name} {pod_bridge_interface:?} is not an interface name: {e}")
        })?;
    }
    if detect_local_mode == DetectLocalMode::InterfaceNamePrefix {
        let name = src.name("detectLocal.interfaceNamePrefix");
        if pod_interface_name_prefix.is_empty() {
            bail!(
                "{name} must be set when {} is InterfaceNamePrefix",
                src.name("detectLocalMode")
            );
        }
        interface_name::check_prefix(&pod_interface_name_prefix).map_err(|e| {
            anyhow!("{name} {pod_interface_name_prefix:?} is not an interface-name prefix: {e}")
        })?;
    }
    Ok((
        detect_local_mode,
        pod_bridge_interface,
        pod_interface_name_prefix,
    ))
}

/// The node's name: `hostnameOverride` or the machine's, held to the Node name rules.
fn node_hostname(
    cfg: &KubeProxyConfiguration,
    src: &Source,
    hostname: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    // Upstream's GetHostname: trimmed and lower-cased whether given or taken from the machine.
    let given = cfg
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
            Some(h) if src.hostname_from_flag => {
                bail!("--hostname-override {h:?} is not a node name: {e}")
            }
            Some(h) => bail!(
                "{} {h:?} is not a node name: {e}",
                src.name("hostnameOverride")
            ),
            None => bail!(
                "this machine's hostname {hostname:?} is not a node name: {e}; set --hostname-override"
            ),
        }
    }
    Ok(hostname)
}

/// `logging.format`: text (the default) or json.
fn log_format(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<LogFormat> {
    Ok(match cfg.logging.format.as_deref().map(str::trim) {
        None | Some("") | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(f) => bail!(
            "{} {f:?} is invalid (use text or json)",
            src.name("logging.format")
        ),
    })
}

/// `clientConnection.qps`: positive; 0 or unset means the default.
fn kube_api_qps(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<Option<f64>> {
    Ok(
        match cfg
            .client_connection
            .qps
            .as_ref()
            .map(|q| q.0.as_str())
            .map(str::trim)
        {
            None | Some("") => None,
            Some(v) => match v.parse::<f64>() {
                // As upstream: 0 means the default.
                Ok(0.0) => None,
                Ok(q) if q > 0.0 && q.is_finite() => Some(q),
                _ => bail!(
                    "{} {v:?} must be a positive number",
                    src.name("clientConnection.qps")
                ),
            },
        },
    )
}

/// `clientConnection.burst`: positive; 0 or unset means the default.
fn kube_api_burst(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<Option<u32>> {
    Ok(match cfg.client_connection.burst {
        None | Some(0) => None,
        Some(b) => Some(u32::try_from(b).ok().filter(|b| *b > 0).ok_or_else(|| {
            anyhow!(
                "{} {b} must be a positive number",
                src.name("clientConnection.burst")
            )
        })?),
    })
}

fn check_mode(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<ProxyMode> {
    match cfg.mode.as_deref().unwrap_or("") {
        "" | "iptables" => Ok(ProxyMode::Iptables),
        "ipvs" => Ok(ProxyMode::Ipvs),
        m @ ("nftables" | "kernelspace") => bail!(
            "{} {m:?} is not supported yet (use iptables or ipvs)",
            src.name("mode")
        ),
        m => bail!(
            "{} {m:?} is invalid (use iptables or ipvs)",
            src.name("mode")
        ),
    }
}

/// The name of the sync-period setting `src` names for `mode`, for messages.
fn sync_names(src: &Source, mode: ProxyMode, min: bool) -> String {
    src.name(sync_path(mode, min))
}

/// The config path of the sync-period setting for `mode`.
fn sync_path(mode: ProxyMode, min: bool) -> &'static str {
    match (mode, min) {
        (ProxyMode::Iptables, false) => "iptables.syncPeriod",
        (ProxyMode::Iptables, true) => "iptables.minSyncPeriod",
        (ProxyMode::Ipvs, false) => "ipvs.syncPeriod",
        (ProxyMode::Ipvs, true) => "ipvs.minSyncPeriod",
    }
}

/// The flag of the setting at config path `path` (its clap id), as `--name`.
fn flag_of(path: &str) -> String {
    <KubeProxyConfiguration as clap::Args>::augment_args(clap::Command::new(""))
        .get_arguments()
        .find(|a| a.get_id() == path)
        .and_then(|a| a.get_long())
        .map_or_else(|| path.to_string(), |long| format!("--{long}"))
}

/// A Go duration; absent, empty or (in a config file, where kubeadm writes `0s` for "unset")
/// zero means `default`. A zero sync period is refused; a zero min sync period is allowed.
fn go_duration(
    value: Option<&str>,
    default: Duration,
    name: &str,
    zero_ok: bool,
    from_file: bool,
) -> anyhow::Result<Duration> {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    let d = super::duration::parse_go_duration(text).map_err(|e| anyhow!("{name}: {e}"))?;
    if d.is_zero() && from_file {
        return Ok(default);
    }
    if d.is_zero() && !zero_ok {
        bail!("{name} must be above zero");
    }
    Ok(d)
}

/// The conntrack settings: upstream's defaults, then what was given (durations checked).
fn conntrack(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<ConntrackSettings> {
    let c = &cfg.conntrack;
    let d = ConntrackSettings::default();
    // The kernel's nf_conntrack_max is an int: a larger count is refused when written, and
    // one near u64's limit would overflow when scaled by the CPUs.
    let count = |v: Option<i64>, default: u64, path: &str| match v {
        None => Ok(default),
        Some(n) if n < 0 => bail!("{} {n} must not be negative", src.name(path)),
        Some(n) if n > i64::from(i32::MAX) => bail!(
            "{} {n} is above {}, the most the kernel's nf_conntrack_max holds",
            src.name(path),
            i32::MAX
        ),
        Some(n) => Ok(n.unsigned_abs()),
    };
    let timeout = |v: &Option<String>, default: Duration, path: &str| match v
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => Ok(default),
        Some(t) => {
            super::duration::parse_go_duration(t).map_err(|e| anyhow!("{}: {e}", src.name(path)))
        }
    };
    Ok(ConntrackSettings {
        max_per_core: count(c.max_per_core, d.max_per_core, "conntrack.maxPerCore")?,
        min: count(c.min, d.min, "conntrack.min")?,
        tcp_established_timeout: timeout(
            &c.tcp_established_timeout,
            d.tcp_established_timeout,
            "conntrack.tcpEstablishedTimeout",
        )?,
        tcp_close_wait_timeout: timeout(
            &c.tcp_close_wait_timeout,
            d.tcp_close_wait_timeout,
            "conntrack.tcpCloseWaitTimeout",
        )?,
        tcp_be_liberal: c.tcp_be_liberal.unwrap_or(false),
        udp_timeout: timeout(&c.udp_timeout, d.udp_timeout, "conntrack.udpTimeout")?,
        udp_stream_timeout: timeout(
            &c.udp_stream_timeout,
            d.udp_stream_timeout,
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
    from_file: bool,
) -> anyhow::Result<Option<SocketAddr>> {
    let default: SocketAddr = default.parse().expect("valid default");
    let text = match value.map(str::trim) {
        None => return Ok(Some(default)),
        Some("") if from_file => return Ok(Some(default)),
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
fn cluster_cidrs(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<Vec<IpNet>> {
    let name = src.name("clusterCIDR");
    let Some(text) = cfg.cluster_cidr.as_deref() else {
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

fn nodeport_addresses(cfg: &KubeProxyConfiguration, src: &Source) -> anyhow::Result<Vec<IpNet>> {
    let name = src.name("nodePortAddresses");
    let mut nets = Vec::new();
    for entry in cfg
        .node_port_addresses
        .iter()
        .flatten()
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
#[path = "tests.rs"]
mod tests;
