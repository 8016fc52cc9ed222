//! `--write-config-to`: the effective settings as a [`KubeProxyConfiguration`], serialized by a
//! small YAML writer over its serde form (keys sorted as upstream writes them; free text
//! double-quoted, durations and enum-like words plain), so the field list is the type's.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::config_file::{
    API_VERSION, ClientConnectionConfiguration, ConntrackConfiguration, DetectLocalConfiguration,
    IptablesConfiguration, IpvsConfiguration, KIND, KubeProxyConfiguration, LoggingConfiguration,
    PLAIN, Qps,
};
use super::duration::format_go_duration as duration;
use super::flags::Flags;
use super::{DEFAULT_MIN_SYNC_PERIOD, DEFAULT_SYNC_PERIOD, ProxyMode, Settings};

/// The configuration that gives `settings` (every field this proxy reads, resolved), with
/// `hostname_override` as given rather than the machine's name, so one file serves every node.
pub fn effective(settings: &Settings, hostname_override: &str) -> KubeProxyConfiguration {
    // The other mode's periods are the defaults: only the mode's own were resolved.
    let (ipt_sync, ipt_min, ipvs_sync, ipvs_min) = match settings.mode {
        ProxyMode::Iptables => (
            settings.sync_period,
            settings.min_sync_period,
            DEFAULT_SYNC_PERIOD,
            DEFAULT_MIN_SYNC_PERIOD,
        ),
        ProxyMode::Ipvs => (
            DEFAULT_SYNC_PERIOD,
            DEFAULT_MIN_SYNC_PERIOD,
            settings.sync_period,
            settings.min_sync_period,
        ),
    };
    let texts = |v: &[ipnet::IpNet]| Some(v.iter().map(ToString::to_string).collect());
    let addr = |a: Option<std::net::SocketAddr>| Some(a.map(|a| a.to_string()).unwrap_or_default());
    let count = |n: u64| Some(i64::try_from(n).unwrap_or(i64::MAX));
    let c = &settings.conntrack;
    KubeProxyConfiguration {
        api_version: Some(API_VERSION.to_string()),
        kind: Some(KIND.to_string()),
        hostname_override: Some(hostname_override.to_string()),
        cluster_cidr: Some(
            settings
                .cluster_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        node_port_addresses: texts(&settings.nodeport_addresses),
        iptables: IptablesConfiguration {
            masquerade_all: Some(settings.masquerade_all),
            masquerade_bit: Some(i64::from(settings.masquerade_bit)),
            localhost_node_ports: Some(settings.localhost_nodeports),
            sync_period: Some(duration(ipt_sync)),
            min_sync_period: Some(duration(ipt_min)),
        },
        detect_local_mode: Some(settings.detect_local_mode.to_string()),
        detect_local: DetectLocalConfiguration {
            bridge_interface: Some(settings.pod_bridge_interface.clone()),
            interface_name_prefix: Some(settings.pod_interface_name_prefix.clone()),
        },
        mode: Some(settings.mode.as_str().to_string()),
        ipvs: IpvsConfiguration {
            scheduler: Some(settings.ipvs_scheduler.clone()),
            exclude_cidrs: texts(&settings.ipvs_exclude_cidrs),
            strict_arp: Some(settings.ipvs_strict_arp),
            sync_period: Some(duration(ipvs_sync)),
            min_sync_period: Some(duration(ipvs_min)),
            ..IpvsConfiguration::default()
        },
        healthz_bind_address: addr(settings.healthz_bind_address),
        metrics_bind_address: addr(settings.metrics_bind_address),
        conntrack: ConntrackConfiguration {
            max_per_core: count(c.max_per_core),
            min: count(c.min),
            tcp_established_timeout: Some(duration(c.tcp_established_timeout)),
            tcp_close_wait_timeout: Some(duration(c.tcp_close_wait_timeout)),
            tcp_be_liberal: Some(c.tcp_be_liberal),
            udp_timeout: Some(duration(c.udp_timeout)),
            udp_stream_timeout: Some(duration(c.udp_stream_timeout)),
        },
        client_connection: ClientConnectionConfiguration {
            kubeconfig: Some(settings.kubeconfig.clone().unwrap_or_default()),
            qps: Some(Qps(settings.kube_api_qps.unwrap_or(0.0).to_string())),
            burst: Some(settings.kube_api_burst.map_or(0, i64::from)),
            ..ClientConnectionConfiguration::default()
        },
        logging: LoggingConfiguration {
            format: Some(settings.log_format.as_str().to_string()),
            verbosity: Some(settings.verbosity),
            ..LoggingConfiguration::default()
        },
        ..KubeProxyConfiguration::default()
    }
}

/// `config` as a YAML document: the fields set, keys sorted at every level.
pub fn to_yaml(config: &KubeProxyConfiguration) -> Result<String, WriteError> {
    let Node::Map(entries) = config.serialize(NodeSerializer { plain: false })? else {
        return Err(WriteError("a configuration is a map".to_string()));
    };
    let mut out = String::new();
    write_map(&mut out, entries, "");
    Ok(out)
}

/// The effective configuration of `settings` as a file (what `--write-config-to` writes).
pub fn effective_yaml(settings: &Settings, hostname_override: &str) -> String {
    to_yaml(&effective(settings, hostname_override))
        .expect("the effective configuration holds only what the writer writes")
}

/// `--write-config-to FILE`: resolves the flags and writes the effective configuration to FILE
/// (`-` for stdout), then exits, as upstream does.
pub fn write_effective(flags: &Flags, path: &Path) -> ExitCode {
    let (settings, warnings) = match Settings::from_flags(flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let hostname_override = flags
        .configuration
        .hostname_override
        .as_deref()
        .unwrap_or("");
    let text = effective_yaml(&settings, hostname_override);
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

/// Why a value could not be written: it holds a shape a configuration file does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError(String);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}

impl ser::Error for WriteError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WriteError(msg.to_string())
    }
}

/// A value as the writer lays it out.
enum Node {
    /// Not set: its key is left out.
    Absent,
    /// A scalar, already in its YAML spelling.
    Scalar(String),
    /// A sequence of scalars.
    List(Vec<Node>),
    /// A mapping, in field order (sorted when written).
    Map(Vec<(String, Node)>),
}

fn write_map(out: &mut String, mut entries: Vec<(String, Node)>, indent: &str) {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, node) in entries {
        match node {
            Node::Absent => {}
            Node::Scalar(s) => *out += &format!("{indent}{key}: {s}\n"),
            Node::List(items) if items.is_empty() => *out += &format!("{indent}{key}: []\n"),
            Node::List(items) => {
                *out += &format!("{indent}{key}:\n");
                for item in items {
                    if let Node::Scalar(s) = item {
                        *out += &format!("{indent}- {s}\n");
                    }
                }
            }
            Node::Map(inner) => {
                *out += &format!("{indent}{key}:\n");
                write_map(out, inner, &format!("{indent}  "));
            }
        }
    }
}

/// Turns a serde value into a [`Node`]; `plain` leaves the next string unquoted.
#[derive(Clone, Copy)]
struct NodeSerializer {
    plain: bool,
}

/// Collects a sequence's items.
struct SeqNodes(Vec<Node>);

/// Collects a struct's fields.
struct StructNodes(Vec<(String, Node)>);

impl ser::SerializeSeq for SeqNodes {
    type Ok = Node;
    type Error = WriteError;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), WriteError> {
        let node = v.serialize(NodeSerializer { plain: false })?;
        if !matches!(node, Node::Scalar(_)) {
            return Err(WriteError("only lists of scalars are written".to_string()));
        }
        self.0.push(node);
        Ok(())
    }

    fn end(self) -> Result<Node, WriteError> {
        Ok(Node::List(self.0))
    }
}

impl ser::SerializeStruct for StructNodes {
    type Ok = Node;
    type Error = WriteError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), WriteError> {
        self.0.push((
            key.to_string(),
            v.serialize(NodeSerializer { plain: false })?,
        ));
        Ok(())
    }

    fn end(self) -> Result<Node, WriteError> {
        Ok(Node::Map(self.0))
    }
}

/// The error for the shapes a configuration does not have.
fn unsupported(what: &str) -> WriteError {
    WriteError(format!("a configuration holds no {what}"))
}

impl ser::Serializer for NodeSerializer {
    type Ok = Node;
    type Error = WriteError;
    type SerializeSeq = SeqNodes;
    type SerializeTuple = Impossible<Node, WriteError>;
    type SerializeTupleStruct = Impossible<Node, WriteError>;
    type SerializeTupleVariant = Impossible<Node, WriteError>;
    type SerializeMap = Impossible<Node, WriteError>;
    type SerializeStruct = StructNodes;
    type SerializeStructVariant = Impossible<Node, WriteError>;

    fn serialize_bool(self, v: bool) -> Result<Node, WriteError> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn serialize_i8(self, v: i8) -> Result<Node, WriteError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Node, WriteError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Node, WriteError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Node, WriteError> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn serialize_u8(self, v: u8) -> Result<Node, WriteError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Node, WriteError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Node, WriteError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Node, WriteError> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn serialize_f32(self, v: f32) -> Result<Node, WriteError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Node, WriteError> {
        // Shortest round-trip digits, no trailing `.0`: `qps: 5`, `qps: 7.5`.
        Ok(Node::Scalar(v.to_string()))
    }
    fn serialize_char(self, v: char) -> Result<Node, WriteError> {
        self.serialize_str(&v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<Node, WriteError> {
        // JSON's double-quoted form is valid YAML and escapes whatever a value holds.
        Ok(Node::Scalar(if self.plain {
            v.to_string()
        } else {
            serde_json::to_string(v).map_err(ser::Error::custom)?
        }))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Node, WriteError> {
        Err(unsupported("bytes"))
    }
    fn serialize_none(self) -> Result<Node, WriteError> {
        Ok(Node::Absent)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Node, WriteError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Node, WriteError> {
        Ok(Node::Absent)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Node, WriteError> {
        Ok(Node::Absent)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Node, WriteError> {
        Ok(Node::Scalar(variant.to_string()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<Node, WriteError> {
        v.serialize(NodeSerializer {
            plain: name == PLAIN,
        })
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Node, WriteError> {
        Err(unsupported("enum with data"))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqNodes, WriteError> {
        Ok(SeqNodes(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, WriteError> {
        Err(unsupported("tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, WriteError> {
        Err(unsupported("tuple"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, WriteError> {
        Err(unsupported("tuple"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, WriteError> {
        // Only the fields kube-proxy-rs passes through untyped (`featureGates`, …) are maps,
        // and the effective configuration sets none of them.
        Err(unsupported("free-form map"))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<StructNodes, WriteError> {
        Ok(StructNodes(Vec::with_capacity(len)))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, WriteError> {
        Err(unsupported("enum with data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's bytes for the defaults, pinned: the writer must not drift from them.
    #[test]
    fn the_defaults_are_written_as_before() {
        let settings = Settings {
            hostname: "n".into(),
            ..Settings::default()
        };
        assert_eq!(
            effective_yaml(&settings, "n"),
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
clientConnection:
  burst: 0
  kubeconfig: \"\"
  qps: 0
clusterCIDR: \"\"
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: \"\"
  interfaceNamePrefix: \"\"
detectLocalMode: ClusterCIDR
healthzBindAddress: \"0.0.0.0:10256\"
hostnameOverride: \"n\"
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: []
  minSyncPeriod: 1s
  scheduler: \"rr\"
  strictARP: false
  syncPeriod: 30s
kind: KubeProxyConfiguration
logging:
  format: text
  verbosity: 0
metricsBindAddress: \"127.0.0.1:10249\"
mode: iptables
nodePortAddresses: []
"
        );
    }

    #[test]
    fn lists_and_numbers_are_written_as_before() {
        let settings = Settings {
            nodeport_addresses: vec!["192.168.0.0/16".parse().unwrap()],
            ipvs_exclude_cidrs: vec![
                "10.1.0.0/16".parse().unwrap(),
                "192.168.5.0/24".parse().unwrap(),
            ],
            kube_api_qps: Some(7.5),
            kube_api_burst: Some(12),
            ..Settings::default()
        };
        let text = effective_yaml(&settings, "");
        assert!(text.contains("  burst: 12\n"), "{text}");
        assert!(text.contains("  qps: 7.5\n"), "{text}");
        assert!(
            text.contains("ipvs:\n  excludeCIDRs:\n  - \"10.1.0.0/16\"\n  - \"192.168.5.0/24\"\n"),
            "{text}"
        );
        assert!(
            text.ends_with("nodePortAddresses:\n- \"192.168.0.0/16\"\n"),
            "{text}"
        );
    }
}
