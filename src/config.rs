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

    // Upstream v1alpha1 fields not used yet; typed as Value so they are neither errors nor
    // "unknown field" warnings. Later issues give them real types.
    feature_gates: Option<Value>,
    client_connection: Option<Value>,
    logging: Option<Value>,
    bind_address: Option<Value>,
    healthz_bind_address: Option<Value>,
    metrics_bind_address: Option<Value>,
    bind_address_hard_fail: Option<Value>,
    enable_profiling: Option<Value>,
    show_hidden_metrics_for_version: Option<Value>,
    nftables: Option<Value>,
    winkernel: Option<Value>,
    oom_score_adj: Option<Value>,
    conntrack: Option<Value>,
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
    // Sync pacing is for the node agent; accepted now, used later.
    sync_period: Option<Value>,
    min_sync_period: Option<Value>,
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
    /// `syncPeriod`: not read yet (the flags are); a non-zero value draws a warning.
    pub sync_period: Option<Value>,
    /// `minSyncPeriod`: as `syncPeriod`.
    pub min_sync_period: Option<Value>,
    /// `tcpTimeout`: IPVS's connection time-outs are not set yet; a non-zero value warns.
    pub tcp_timeout: Option<Value>,
    /// `tcpFinTimeout`: as `tcpTimeout`.
    pub tcp_fin_timeout: Option<Value>,
    /// `udpTimeout`: as `tcpTimeout`.
    pub udp_timeout: Option<Value>,
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
    .map_err(|e| match e.line {
        Some(line) => anyhow::anyhow!("{file}:{line}: {e}"),
        None => anyhow::anyhow!("{file}: {e}"),
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
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
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
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
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
        assert!(e.starts_with("c.yaml:4: iptables.masqueradeBit: "), "{e}");
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
