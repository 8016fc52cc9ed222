//! A `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`, the format kubeadm writes
//! into the `kube-proxy` ConfigMap), and the flags that set the same fields.
//!
//! Each setting is defined once, here: its field is the config file's (serde, upstream's
//! camelCase names and nesting) and its `#[arg]` makes it the flag (upstream's spelling). The
//! flags therefore parse into the same type the file does, and `--write-config-to` serializes
//! it back. Fields that only exist in the file (`#[arg(skip)]`) are accepted and ignored, so a
//! kubeadm config loads without noise; fields upstream does not know draw a warning (upstream's
//! lenient fallback); a wrong type or broken YAML is fatal, as upstream.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::builder::TypedValueParser;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::flags::parse_go_bool;
use crate::warning::Warning;
use crate::yaml;

/// The config API group/version we read.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The config kind we read.
pub const KIND: &str = "KubeProxyConfiguration";

/// A `KubeProxyConfiguration` (v1alpha1), from the file or from the flags; `None` means not given.
// The field order is the order of the "ignored because --config is given" warnings; the file's
// keys are written sorted, as upstream writes them.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// Must be [`API_VERSION`].
    #[arg(skip)]
    #[serde(serialize_with = "plain")]
    pub api_version: Option<String>,
    /// Must be [`KIND`].
    #[arg(skip)]
    #[serde(serialize_with = "plain")]
    pub kind: Option<String>,

    /// The node's name; defaults to the machine's hostname, lower-cased.
    #[arg(
        id = "hostnameOverride",
        long = "hostname-override",
        value_name = "NODE"
    )]
    pub hostname_override: Option<String>,

    /// The cluster's pod CIDR(s), comma-separated, one per family; traffic from outside it is masqueraded.
    #[arg(id = "clusterCIDR", long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    // rename_all would spell it `clusterCidr`; upstream keeps the acronym upper-case.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,

    /// The addresses NodePorts are served on, as CIDRs; default: every local address.
    #[arg(
        id = "nodePortAddresses",
        long = "nodeport-addresses",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub node_port_addresses: Option<Vec<String>>,

    /// `iptables`: iptables mode's settings.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub iptables: IptablesConfiguration,

    /// How traffic from local pods is recognised: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.
    #[arg(
        id = "detectLocalMode",
        long = "detect-local-mode",
        value_name = "MODE"
    )]
    #[serde(serialize_with = "plain")]
    pub detect_local_mode: Option<String>,

    /// `detectLocal`: the interfaces of the interface-based modes.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub detect_local: DetectLocalConfiguration,

    /// The proxy mode: iptables (default) or ipvs.
    #[arg(id = "mode", long = "proxy-mode", value_name = "MODE")]
    #[serde(serialize_with = "plain")]
    pub mode: Option<String>,

    /// `ipvs`: IPVS mode's settings.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub ipvs: IpvsConfiguration,

    /// Where /healthz and /livez are served, IP:port [default: 0.0.0.0:10256]; empty disables.
    #[arg(
        id = "healthzBindAddress",
        long = "healthz-bind-address",
        value_name = "IP:PORT"
    )]
    pub healthz_bind_address: Option<String>,

    /// Where /metrics is served, IP:port [default: 127.0.0.1:10249]; empty disables.
    #[arg(
        id = "metricsBindAddress",
        long = "metrics-bind-address",
        value_name = "IP:PORT"
    )]
    pub metrics_bind_address: Option<String>,

    /// `conntrack`: the node's connection-tracking set-up.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub conntrack: ConntrackConfiguration,

    /// `clientConnection`: how the agent talks to the API server.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub client_connection: ClientConnectionConfiguration,

    /// `logging`: format and verbosity.
    #[command(flatten)]
    #[serde(default, deserialize_with = "null_is_default")]
    pub logging: LoggingConfiguration,

    // Upstream v1alpha1 fields that do not apply to what kube-proxy-rs does (Windows, the
    // nftables mode, profiling, a pre-1.0 port range…), or are accepted without effect; typed
    // as Value so they are neither errors nor "unknown field" warnings.
    /// `featureGates`: accepted, no effect.
    #[arg(skip)]
    pub feature_gates: Option<Value>,
    /// `bindAddress`: accepted, no effect.
    #[arg(skip)]
    pub bind_address: Option<Value>,
    /// `bindAddressHardFail`: accepted, no effect.
    #[arg(skip)]
    pub bind_address_hard_fail: Option<Value>,
    /// `enableProfiling`: accepted, no effect.
    #[arg(skip)]
    pub enable_profiling: Option<Value>,
    /// `showHiddenMetricsForVersion`: accepted, no effect.
    #[arg(skip)]
    pub show_hidden_metrics_for_version: Option<Value>,
    /// `nftables`: the nftables mode's settings; not a mode of ours yet.
    #[arg(skip)]
    pub nftables: Option<Value>,
    /// `winkernel`: Windows only.
    #[arg(skip)]
    pub winkernel: Option<Value>,
    /// `oomScoreAdj`: accepted, no effect.
    #[arg(skip)]
    pub oom_score_adj: Option<Value>,
    /// `configSyncPeriod`: accepted, no effect.
    #[arg(skip)]
    pub config_sync_period: Option<Value>,
    /// `portRange`: accepted, no effect.
    #[arg(skip)]
    pub port_range: Option<Value>,
    /// `windowsRunAsService`: Windows only.
    #[arg(skip)]
    pub windows_run_as_service: Option<Value>,
}

/// `iptables`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesConfiguration {
    /// SNAT all traffic sent to cluster IPs.
    #[arg(
        id = "iptables.masqueradeAll",
        long = "masquerade-all",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub masquerade_all: Option<bool>,

    /// The fwmark bit (0-31) that marks packets for masquerading [default: 14].
    #[arg(
        id = "iptables.masqueradeBit",
        long = "iptables-masquerade-bit",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub masquerade_bit: Option<i64>,

    /// Accept NodePort connections on 127.0.0.1 (IPv4 only) [default: true].
    #[arg(
        id = "iptables.localhostNodePorts",
        long = "iptables-localhost-nodeports",
        value_name = "IPTABLES_LOCALHOST_NODEPORTS",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub localhost_node_ports: Option<bool>,

    /// The longest time between two syncs (a Go duration, e.g. 30s) [default: 30s].
    #[arg(
        id = "iptables.syncPeriod",
        long = "iptables-sync-period",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub sync_period: Option<String>,

    /// The shortest time between two syncs (e.g. 1s) [default: 1s].
    #[arg(
        id = "iptables.minSyncPeriod",
        long = "iptables-min-sync-period",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub min_sync_period: Option<String>,
}

/// `detectLocal`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocalConfiguration {
    /// The bridge local pods hang off (--detect-local-mode BridgeInterface).
    #[arg(
        id = "detectLocal.bridgeInterface",
        long = "pod-bridge-interface",
        value_name = "NAME"
    )]
    pub bridge_interface: Option<String>,

    /// The interface-name prefix of local pods (--detect-local-mode InterfaceNamePrefix).
    #[arg(
        id = "detectLocal.interfaceNamePrefix",
        long = "pod-interface-name-prefix",
        value_name = "PREFIX"
    )]
    pub interface_name_prefix: Option<String>,
}

/// `ipvs`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConfiguration {
    /// The IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh, …) [default: rr].
    #[arg(id = "ipvs.scheduler", long = "ipvs-scheduler", value_name = "NAME")]
    pub scheduler: Option<String>,

    /// CIDRs whose IPVS virtual servers the proxy never deletes (comma-separated).
    #[arg(
        id = "ipvs.excludeCIDRs",
        long = "ipvs-exclude-cidrs",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,

    /// IPVS mode: set arp_ignore=1 and arp_announce=2, so the node does not answer ARP for the
    /// addresses on kube-ipvs0 (needed by MetalLB's L2 mode).
    #[arg(
        id = "ipvs.strictARP",
        long = "ipvs-strict-arp",
        value_name = "IPVS_STRICT_ARP",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,

    /// IPVS mode: the longest time between two syncs (e.g. 30s) [default: 30s].
    #[arg(
        id = "ipvs.syncPeriod",
        long = "ipvs-sync-period",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub sync_period: Option<String>,

    /// IPVS mode: the shortest time between two syncs (e.g. 1s) [default: 1s].
    #[arg(
        id = "ipvs.minSyncPeriod",
        long = "ipvs-min-sync-period",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub min_sync_period: Option<String>,

    /// `tcpTimeout`: IPVS's connection time-outs are not set yet; a non-zero value warns.
    #[arg(skip)]
    pub tcp_timeout: Option<Value>,
    /// `tcpFinTimeout`: as `tcpTimeout`.
    #[arg(skip)]
    pub tcp_fin_timeout: Option<Value>,
    /// `udpTimeout`: as `tcpTimeout`.
    #[arg(skip)]
    pub udp_timeout: Option<Value>,
}

/// `conntrack`: the node's connection-tracking limits and time-outs, set at start.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    /// The most conntrack entries per CPU; 0 leaves the limit as it is [default: 32768].
    #[arg(
        id = "conntrack.maxPerCore",
        long = "conntrack-max-per-core",
        value_name = "N"
    )]
    pub max_per_core: Option<i64>,

    /// The floor for --conntrack-max-per-core × CPUs [default: 131072].
    #[arg(id = "conntrack.min", long = "conntrack-min", value_name = "N")]
    pub min: Option<i64>,

    /// The conntrack time-out of established TCP connections; 0 leaves it [default: 24h0m0s].
    #[arg(
        id = "conntrack.tcpEstablishedTimeout",
        long = "conntrack-tcp-timeout-established",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub tcp_established_timeout: Option<String>,

    /// The conntrack time-out of TCP connections in CLOSE_WAIT; 0 leaves it [default: 1h0m0s].
    #[arg(
        id = "conntrack.tcpCloseWaitTimeout",
        long = "conntrack-tcp-timeout-close-wait",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub tcp_close_wait_timeout: Option<String>,

    /// Set nf_conntrack_tcp_be_liberal (and leave out the INVALID-drop rule, as upstream).
    #[arg(
        id = "conntrack.tcpBeLiberal",
        long = "conntrack-tcp-be-liberal",
        value_name = "CONNTRACK_TCP_BE_LIBERAL",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub tcp_be_liberal: Option<bool>,

    /// The conntrack time-out of UDP flows; 0 leaves it [default: 0].
    #[arg(
        id = "conntrack.udpTimeout",
        long = "conntrack-udp-timeout",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub udp_timeout: Option<String>,

    /// The conntrack time-out of UDP streams; 0 leaves it [default: 0].
    #[arg(
        id = "conntrack.udpStreamTimeout",
        long = "conntrack-udp-timeout-stream",
        value_name = "DURATION"
    )]
    #[serde(serialize_with = "plain")]
    pub udp_stream_timeout: Option<String>,
}

/// `clientConnection`: how the agent talks to the API server.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnectionConfiguration {
    /// Path to a kubeconfig file (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(
        id = "clientConnection.kubeconfig",
        long = "kubeconfig",
        value_name = "FILE"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// Queries per second to the API server [default: 5].
    #[arg(
        id = "clientConnection.qps",
        long = "kube-api-qps",
        value_name = "QPS",
        value_parser = Qps::from_flag
    )]
    pub qps: Option<Qps>,

    /// Burst of queries to the API server [default: 10].
    // The flag is a u32 as upstream's; the file's negative numbers are refused when resolved.
    #[arg(id = "clientConnection.burst", long = "kube-api-burst", value_name = "N",
          value_parser = clap::value_parser!(u32).map(i64::from))]
    pub burst: Option<i64>,

    /// `acceptContentTypes`: the client speaks JSON.
    #[arg(skip)]
    pub accept_content_types: Option<Value>,
    /// `contentType`: the client speaks JSON.
    #[arg(skip)]
    pub content_type: Option<Value>,
}

/// `logging` (component-base's LoggingConfiguration; the fields kube-proxy-rs uses).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingConfiguration {
    /// Log format: text or json.
    #[arg(id = "logging.format", long = "logging-format", value_name = "FORMAT")]
    #[serde(serialize_with = "plain")]
    pub format: Option<String>,

    /// Log verbosity (0-10), as upstream's -v.
    #[arg(id = "logging.verbosity", short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u8>,

    /// `flushFrequency`: accepted, no effect.
    #[arg(skip)]
    pub flush_frequency: Option<Value>,
    /// `vmodule`: accepted, no effect.
    #[arg(skip)]
    pub vmodule: Option<Value>,
    /// `options`: accepted, no effect.
    #[arg(skip)]
    pub options: Option<Value>,
}

/// `clientConnection.qps` (`--kube-api-qps`), kept as text so an error quotes what was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qps(pub String);

impl Qps {
    /// The flag's value as given; it is checked when the settings are resolved.
    fn from_flag(s: &str) -> Result<Qps, std::convert::Infallible> {
        Ok(Qps(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Qps {
    /// The file's field is a number (a string there is a type error, as upstream's).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        f64::deserialize(d).map(|q| Qps(q.to_string()))
    }
}

impl Serialize for Qps {
    /// A number, as the file holds it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let q: f64 = self.0.trim().parse().map_err(serde::ser::Error::custom)?;
        s.serialize_f64(q)
    }
}

/// The newtype-struct name that tells [`super::write`]'s YAML writer to leave a string
/// unquoted (durations, enum-like words); every other serializer ignores it.
pub(crate) const PLAIN: &str = "$kube_proxy_rs::plain";

/// Serializes a string field as a plain YAML scalar (see [`PLAIN`]).
fn plain<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(text) => s.serialize_newtype_struct(PLAIN, text),
        None => s.serialize_none(),
    }
}

/// A section written as `null` (or left out) is the section with nothing set.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
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
        let ipt = cfg.iptables;
        assert_eq!(ipt.masquerade_all, Some(false));
        assert_eq!(ipt.masquerade_bit, None);
        assert_eq!(ipt.localhost_node_ports, None);
        assert_eq!(cfg.node_port_addresses, None);
        let ipvs = cfg.ipvs;
        assert_eq!(ipvs.scheduler.as_deref(), Some(""));
        assert_eq!(ipvs.exclude_cidrs, None);
        assert_eq!(cfg.detect_local.bridge_interface.as_deref(), Some(""));
    }

    /// The whole resolution, not just the decoding: kubeadm's file gives upstream's defaults
    /// and not a single warning.
    #[test]
    fn kubeadm_config_resolves_to_upstream_defaults_without_warnings() {
        let path = std::env::temp_dir().join(format!("kprs-kubeadm-{}.conf", std::process::id()));
        std::fs::write(&path, KUBEADM).unwrap();
        let flags = crate::settings::flags::parse_for_test(&[
            "--config",
            path.to_str().unwrap(),
            "--hostname-override=node-a",
        ]);
        let (settings, warnings) = crate::settings::Settings::from_flags(&flags).unwrap();
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

    /// A setting's clap id is its path in the file (messages and precedence find one from the
    /// other): each flag, given alone, sets exactly the field its id names.
    #[test]
    fn every_flag_id_is_its_config_path() {
        fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
            match v {
                Value::Null => {}
                Value::Object(fields) => {
                    for (k, v) in fields {
                        let inner = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        leaves(v, inner, out);
                    }
                }
                _ => out.push(path),
            }
        }
        let cmd = <KubeProxyConfiguration as clap::Args>::augment_args(clap::Command::new("t"));
        let args: Vec<_> = cmd.get_arguments().collect();
        assert_eq!(args.len(), 31);
        for arg in args {
            let long = arg.get_long().unwrap();
            let flags = crate::settings::flags::parse_for_test(&[&format!("--{long}=1")]);
            let mut set = Vec::new();
            leaves(
                &serde_json::to_value(&flags.configuration).unwrap(),
                String::new(),
                &mut set,
            );
            assert_eq!(set, [arg.get_id().as_str()], "--{long}");
        }
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
