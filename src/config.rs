//! The `--config` file: a `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`), the
//! format kubeadm writes into the `kube-proxy` ConfigMap.
//!
//! Only the fields that map to our flags are typed; every other v1alpha1 field is accepted and
//! ignored for now, so a kubeadm config loads without noise. Fields upstream does not know draw
//! a warning (upstream's lenient fallback); a wrong type or broken YAML is fatal, as upstream.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::warning::Warning;
use crate::yaml;

/// The config API group/version we read.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The config kind we read.
pub const KIND: &str = "KubeProxyConfiguration";

/// A `KubeProxyConfiguration` document (v1alpha1); `None` means the field was not written.
// The private fields exist only so serde recognises them; nothing reads them yet.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// Must be [`API_VERSION`].
    pub api_version: Option<String>,
    /// Must be [`KIND`].
    pub kind: Option<String>,
    /// `hostnameOverride` (`--hostname-override`, which wins over it).
    pub hostname_override: Option<String>,
    /// `clusterCIDR` (`--cluster-cidr`): comma-separated, one per family.
    // rename_all would spell it `clusterCidr`; upstream keeps the acronym upper-case.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// `nodePortAddresses` (`--nodeport-addresses`).
    pub node_port_addresses: Option<Vec<String>>,
    /// `detectLocalMode` (`--detect-local-mode`).
    pub detect_local_mode: Option<String>,
    /// `detectLocal` (`--pod-bridge-interface`, `--pod-interface-name-prefix`).
    pub detect_local: Option<DetectLocalConfiguration>,
    /// `mode` (`--proxy-mode`); empty means iptables on Linux.
    pub mode: Option<String>,
    /// `iptables` settings.
    pub iptables: Option<IptablesConfiguration>,
    /// `ipvs` settings.
    pub ipvs: Option<IpvsConfiguration>,
    /// `healthzBindAddress` (`--healthz-bind-address`); empty means the default.
    pub healthz_bind_address: Option<String>,
    /// `metricsBindAddress` (`--metrics-bind-address`); empty means the default.
    pub metrics_bind_address: Option<String>,

    /// `conntrack` settings (node set-up).
    pub conntrack: Option<ConntrackConfiguration>,
    /// `logging` settings.
    pub logging: Option<LoggingConfiguration>,
    /// `clientConnection` settings.
    pub client_connection: Option<ClientConnectionConfiguration>,

    // Upstream v1alpha1 fields that do not apply to what kube-proxy-rs does (Windows, the
    // nftables mode, profiling, a pre-1.0 port range…), or are accepted without effect; typed
    // as Value so they are neither errors nor "unknown field" warnings.
    feature_gates: Option<Value>,
    bind_address: Option<Value>,
    bind_address_hard_fail: Option<Value>,
    enable_profiling: Option<Value>,
    show_hidden_metrics_for_version: Option<Value>,
    nftables: Option<Value>,
    winkernel: Option<Value>,
    oom_score_adj: Option<Value>,
    config_sync_period: Option<Value>,
    port_range: Option<Value>,
    windows_run_as_service: Option<Value>,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocalConfiguration {
    /// `bridgeInterface`.
    pub bridge_interface: Option<String>,
    /// `interfaceNamePrefix`.
    pub interface_name_prefix: Option<String>,
}

/// `iptables`.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesConfiguration {
    /// `masqueradeAll`.
    pub masquerade_all: Option<bool>,
    /// `masqueradeBit` (default 14).
    pub masquerade_bit: Option<i64>,
    /// `localhostNodePorts` (default true).
    pub localhost_node_ports: Option<bool>,
    /// `syncPeriod` (`--iptables-sync-period`), a Go duration.
    pub sync_period: Option<String>,
    /// `minSyncPeriod` (`--iptables-min-sync-period`), a Go duration.
    pub min_sync_period: Option<String>,
}

/// `conntrack`: the node's connection-tracking limits and time-outs, set at start.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    /// `maxPerCore` (`--conntrack-max-per-core`): entries per CPU; 0 leaves the limit alone.
    pub max_per_core: Option<i64>,
    /// `min` (`--conntrack-min`): the floor for `maxPerCore` × CPUs.
    pub min: Option<i64>,
    /// `tcpEstablishedTimeout` (`--conntrack-tcp-timeout-established`), a Go duration.
    pub tcp_established_timeout: Option<String>,
    /// `tcpCloseWaitTimeout` (`--conntrack-tcp-timeout-close-wait`), a Go duration.
    pub tcp_close_wait_timeout: Option<String>,
    /// `tcpBeLiberal` (`--conntrack-tcp-be-liberal`).
    pub tcp_be_liberal: Option<bool>,
    /// `udpTimeout` (`--conntrack-udp-timeout`), a Go duration.
    pub udp_timeout: Option<String>,
    /// `udpStreamTimeout` (`--conntrack-udp-timeout-stream`), a Go duration.
    pub udp_stream_timeout: Option<String>,
}

/// `logging` (component-base's LoggingConfiguration; the fields kube-proxy-rs uses).
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingConfiguration {
    /// `format`: `text` (default) or `json`.
    pub format: Option<String>,
    /// `verbosity` (`-v`).
    pub verbosity: Option<u8>,
    flush_frequency: Option<Value>,
    vmodule: Option<Value>,
    options: Option<Value>,
}

/// `clientConnection`: how the agent talks to the API server.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnectionConfiguration {
    /// `kubeconfig` (`--kubeconfig`).
    pub kubeconfig: Option<String>,
    /// `qps` (`--kube-api-qps`); 0 means the default.
    pub qps: Option<f64>,
    /// `burst` (`--kube-api-burst`); 0 means the default.
    pub burst: Option<i64>,
    accept_content_types: Option<Value>,
    content_type: Option<Value>,
}

/// `ipvs`.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConfiguration {
    /// `scheduler` (`--ipvs-scheduler`); empty means rr.
    pub scheduler: Option<String>,
    /// `excludeCIDRs` (`--ipvs-exclude-cidrs`): virtual servers there are never deleted.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// `strictARP` (`--ipvs-strict-arp`).
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    /// `syncPeriod` (`--ipvs-sync-period`), a Go duration.
    pub sync_period: Option<String>,
    /// `minSyncPeriod` (`--ipvs-min-sync-period`), a Go duration.
    pub min_sync_period: Option<String>,
    /// `tcpTimeout`: IPVS's connection time-outs are not set yet; a non-zero value warns.
    pub tcp_timeout: Option<Value>,
    /// `tcpFinTimeout`: as `tcpTimeout`.
    pub tcp_fin_timeout: Option<Value>,
    /// `udpTimeout`: as `tcpTimeout`.
    pub udp_timeout: Option<Value>,
}

/// A YAML string scalar (JSON's double-quoted form is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The effective configuration of `settings` as a `KubeProxyConfiguration` file (what
/// `--write-config-to` writes): every field this proxy reads, with its resolved value, keys
/// sorted as upstream writes them. `hostname_override` is what was given, not the machine's
/// name, so the file can be shared by every node.
pub fn effective_yaml(settings: &crate::settings::Settings, hostname_override: &str) -> String {
    use crate::agent::duration::format_go_duration as d;
    use crate::settings::{LogFormat, ProxyMode};
    let list = |items: Vec<String>| {
        if items.is_empty() {
            " []\n".to_string()
        } else {
            items
                .iter()
                .map(|i| format!("\n- {}", q(i)))
                .collect::<String>()
                + "\n"
        }
    };
    let nets = |v: &[ipnet::IpNet]| list(v.iter().map(ToString::to_string).collect());
    let addr = |a: Option<std::net::SocketAddr>| q(&a.map(|a| a.to_string()).unwrap_or_default());
    let c = &settings.conntrack;
    let (ipt_sync, ipt_min, ipvs_sync, ipvs_min) = match settings.mode {
        ProxyMode::Iptables => (
            settings.sync_period,
            settings.min_sync_period,
            crate::settings::DEFAULT_SYNC_PERIOD,
            crate::settings::DEFAULT_MIN_SYNC_PERIOD,
        ),
        ProxyMode::Ipvs => (
            crate::settings::DEFAULT_SYNC_PERIOD,
            crate::settings::DEFAULT_MIN_SYNC_PERIOD,
            settings.sync_period,
            settings.min_sync_period,
        ),
    };
    let mut out = String::new();
    out += &format!("apiVersion: {API_VERSION}\n");
    out += "clientConnection:\n";
    out += &format!(
        "  burst: {}\n",
        settings.kube_api_burst.map_or(0, i64::from)
    );
    out += &format!(
        "  kubeconfig: {}\n",
        q(&settings
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default())
    );
    out += &format!("  qps: {}\n", settings.kube_api_qps.unwrap_or(0.0));
    out += &format!(
        "clusterCIDR: {}\n",
        q(&settings
            .cluster_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","))
    );
    out += "conntrack:\n";
    out += &format!("  maxPerCore: {}\n", c.max_per_core);
    out += &format!("  min: {}\n", c.min);
    out += &format!("  tcpBeLiberal: {}\n", c.tcp_be_liberal);
    out += &format!("  tcpCloseWaitTimeout: {}\n", d(c.tcp_close_wait_timeout));
    out += &format!(
        "  tcpEstablishedTimeout: {}\n",
        d(c.tcp_established_timeout)
    );
    out += &format!("  udpStreamTimeout: {}\n", d(c.udp_stream_timeout));
    out += &format!("  udpTimeout: {}\n", d(c.udp_timeout));
    out += "detectLocal:\n";
    out += &format!("  bridgeInterface: {}\n", q(&settings.pod_bridge_interface));
    out += &format!(
        "  interfaceNamePrefix: {}\n",
        q(&settings.pod_interface_name_prefix)
    );
    out += &format!("detectLocalMode: {}\n", settings.detect_local_mode);
    out += &format!(
        "healthzBindAddress: {}\n",
        addr(settings.healthz_bind_address)
    );
    out += &format!("hostnameOverride: {}\n", q(hostname_override));
    out += "iptables:\n";
    out += &format!("  localhostNodePorts: {}\n", settings.localhost_nodeports);
    out += &format!("  masqueradeAll: {}\n", settings.masquerade_all);
    out += &format!("  masqueradeBit: {}\n", settings.masquerade_bit);
    out += &format!("  minSyncPeriod: {}\n", d(ipt_min));
    out += &format!("  syncPeriod: {}\n", d(ipt_sync));
    out += "ipvs:\n";
    out += &format!(
        "  excludeCIDRs:{}",
        nets(&settings.ipvs_exclude_cidrs).replace("\n-", "\n  -")
    );
    out += &format!("  minSyncPeriod: {}\n", d(ipvs_min));
    out += &format!("  scheduler: {}\n", q(&settings.ipvs_scheduler));
    out += &format!("  strictARP: {}\n", settings.ipvs_strict_arp);
    out += &format!("  syncPeriod: {}\n", d(ipvs_sync));
    out += &format!("kind: {KIND}\n");
    out += "logging:\n";
    out += &format!(
        "  format: {}\n",
        match settings.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    );
    out += &format!("  verbosity: {}\n", settings.verbosity);
    out += &format!(
        "metricsBindAddress: {}\n",
        addr(settings.metrics_bind_address)
    );
    out += &format!(
        "mode: {}\n",
        match settings.mode {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
        }
    );
    out += &format!("nodePortAddresses:{}", nets(&settings.nodeport_addresses));
    out
}

/// `--write-config-to FILE`: resolves the command line and writes the effective configuration
/// to FILE (`-` for stdout), then exits, as upstream does.
pub fn write_effective(cli: &crate::cli::Cli, path: &Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (settings, warnings) = match crate::settings::Settings::from_cli(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let text = effective_yaml(&settings, cli.hostname_override.as_deref().unwrap_or(""));
    let written = if path.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(text.as_bytes())
    } else {
        std::fs::write(path, &text)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Reads a config file; warnings name fields upstream would not know either.
pub fn load(path: &Path) -> anyhow::Result<(KubeProxyConfiguration, Vec<Warning>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses config `text`; `file` names it in diagnostics.
pub fn parse(text: &str, file: &str) -> anyhow::Result<(KubeProxyConfiguration, Vec<Warning>)> {
    let mut unknown = Vec::new();
    let cfg: KubeProxyConfiguration = yaml::decode_reporting_unknown(text, |path| {
        unknown.push(path)
    })
    .map_err(|e| match (e.line, e.column) {
        (Some(line), Some(column)) => anyhow::anyhow!("{file}:{line}:{column}: {e}"),
        (Some(line), None) => anyhow::anyhow!("{file}:{line}: {e}"),
        _ => anyhow::anyhow!("{file}: {e}"),
    })?;
    match (cfg.api_version.as_deref(), cfg.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => {}
        (Some(v), Some(KIND)) if v.starts_with("kubeproxy.config.k8s.io/") => {
            bail!("{file}: {KIND} {v} is not supported yet (use {API_VERSION})")
        }
        (v, k) => bail!(
            "{file}: not a {KIND} {API_VERSION} (apiVersion {:?}, kind {:?})",
            v.unwrap_or(""),
            k.unwrap_or("")
        ),
    }
    let warnings = unknown
        .into_iter()
        .map(|path| Warning::warn(format!("{file}: unknown field {path:?} ignored")))
        .collect();
    Ok((cfg, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubeadm config print init-defaults --component-configs KubeProxyConfiguration`
    /// (v1.31+: with the nftables section, the UDP conntrack time-outs, text log options).
    const KUBEADM: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    #[test]
    fn kubeadm_config_loads_without_warnings() {
        let (cfg, warnings) = parse(KUBEADM, "config.conf").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        let ipt = cfg.iptables.unwrap();
        assert_eq!(ipt.masquerade_all, Some(false));
        assert_eq!(ipt.masquerade_bit, None);
        assert_eq!(ipt.localhost_node_ports, None);
        assert_eq!(cfg.node_port_addresses, None);
        let ipvs = cfg.ipvs.unwrap();
        assert_eq!(ipvs.scheduler.as_deref(), Some(""));
        assert_eq!(ipvs.exclude_cidrs, None);
        assert_eq!(
            cfg.detect_local.unwrap().bridge_interface.as_deref(),
            Some("")
        );
    }

    /// The whole resolution, not just the decoding: kubeadm's file gives upstream's defaults
    /// and not a single warning.
    #[test]
    fn kubeadm_config_resolves_to_upstream_defaults_without_warnings() {
        let path = std::env::temp_dir().join(format!("kprs-kubeadm-{}.conf", std::process::id()));
        std::fs::write(&path, KUBEADM).unwrap();
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "kube-proxy-rs",
            "--config",
            path.to_str().unwrap(),
            "--hostname-override=node-a",
        ])
        .unwrap();
        let (settings, warnings) = crate::settings::Settings::from_cli(&cli).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        let defaults = crate::settings::Settings {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
            ..crate::settings::Settings::default()
        };
        assert_eq!(settings, defaults);
    }

    #[test]
    fn unknown_fields_warn() {
        let text = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nclusterCidr: x\niptables:\n  masqueradBit: 3\n"
        );
        let (_, warnings) = parse(&text, "c.yaml").unwrap();
        let lines: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "warning: c.yaml: unknown field \"clusterCidr\" ignored",
                "warning: c.yaml: unknown field \"iptables.masqueradBit\" ignored"
            ]
        );
    }

    #[test]
    fn wrong_type_is_fatal_with_line() {
        let text = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\niptables:\n  masqueradeBit: fourteen\n"
        );
        let e = parse(&text, "c.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("c.yaml:4:18: iptables.masqueradeBit: "),
            "{e}"
        );
    }

    #[test]
    fn broken_yaml_is_fatal_with_line() {
        let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nmode: [iptables\n");
        let e = parse(&text, "c.yaml").unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:"), "{e}");
        assert!(!e.starts_with("c.yaml: "), "no line in {e}");
    }

    #[test]
    fn wrong_kind_or_version_is_fatal() {
        let e = parse("apiVersion: v1\nkind: ConfigMap\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a KubeProxyConfiguration"), "{e}");
        let e = parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not supported yet"), "{e}");
    }
}
