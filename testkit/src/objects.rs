//! Realistic Kubernetes objects as YAML (v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node)
//! and [`render`], which runs the real `kube-proxy-rs --dry-run` on them.
//!
//! Conventions of the lab: this node is [`NODE_NAME`] (`node-a`, zone `zone-a`); endpoints with
//! `nodeName: node-b` ([`REMOTE_NODE`]) are "remote" even though their pods sit on the same lab
//! bridge. Every Service has one port `http` 80 → 8080/TCP.

use std::fmt::Write as _;
use std::process::Command;

use super::TempDir;

/// This node's name (`--hostname-override`).
pub const NODE_NAME: &str = "node-a";
/// Another node's name: endpoints there are not local.
pub const REMOTE_NODE: &str = "node-b";
/// This node's zone (`topology.kubernetes.io/zone`).
pub const NODE_ZONE: &str = "zone-a";
/// Every Service's port.
pub const SVC_PORT: u16 = 80;
/// Every endpoint's port (the lab's pod servers listen there).
pub const TARGET_PORT: u16 = 8080;

/// A Service with one TCP port `http` ([`SVC_PORT`] → [`TARGET_PORT`]).
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    cluster_ips: Vec<String>,
    node_port: Option<u16>,
    load_balancer: Option<(Vec<String>, Vec<String>)>,
    external_policy: Option<String>,
    internal_policy: Option<String>,
    affinity_timeout: Option<u32>,
}

impl Service {
    /// A `ClusterIP` Service with these cluster IPs (one per family, IPv4 first for dual-stack).
    pub fn cluster_ip(name: &str, cluster_ips: &[&str]) -> Service {
        assert!(!cluster_ips.is_empty());
        Service {
            name: name.to_string(),
            cluster_ips: cluster_ips.iter().map(|s| s.to_string()).collect(),
            node_port: None,
            load_balancer: None,
            external_policy: None,
            internal_policy: None,
            affinity_timeout: None,
        }
    }

    /// `type: NodePort` with this nodePort.
    pub fn node_port(mut self, port: u16) -> Service {
        self.node_port = Some(port);
        self
    }

    /// `type: LoadBalancer` with this nodePort, `status.loadBalancer.ingress[].ip` = `vips` and
    /// `loadBalancerSourceRanges` = `source_ranges` (omitted when empty).
    pub fn load_balancer(mut self, node_port: u16, vips: &[&str], source_ranges: &[&str]) -> Self {
        self.node_port = Some(node_port);
        self.load_balancer = Some((
            vips.iter().map(|s| s.to_string()).collect(),
            source_ranges.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// `externalTrafficPolicy` (`Local` or `Cluster`).
    pub fn external_traffic_policy(mut self, policy: &str) -> Service {
        self.external_policy = Some(policy.to_string());
        self
    }

    /// `internalTrafficPolicy` (`Local` or `Cluster`).
    pub fn internal_traffic_policy(mut self, policy: &str) -> Service {
        self.internal_policy = Some(policy.to_string());
        self
    }

    /// `sessionAffinity: ClientIP` with `timeoutSeconds`.
    pub fn session_affinity(mut self, timeout_seconds: u32) -> Service {
        self.affinity_timeout = Some(timeout_seconds);
        self
    }

    /// The Service as YAML.
    pub fn yaml(&self) -> String {
        let ty = match (&self.load_balancer, self.node_port) {
            (Some(_), _) => "LoadBalancer",
            (None, Some(_)) => "NodePort",
            (None, None) => "ClusterIP",
        };
        let families: Vec<&str> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect();
        let policy = if families.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let mut y = String::new();
        let _ = write!(
            y,
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  labels:
    app: {name}
spec:
  type: {ty}
  clusterIP: {first}
  clusterIPs: [{ips}]
  ipFamilies: [{families}]
  ipFamilyPolicy: {policy}
  selector:
    app: {name}
",
            name = self.name,
            first = self.cluster_ips[0],
            ips = quoted_list(&self.cluster_ips),
            families = families.join(", "),
        );
        if let Some(p) = &self.external_policy {
            let _ = writeln!(y, "  externalTrafficPolicy: {p}");
        }
        if let Some(p) = &self.internal_policy {
            let _ = writeln!(y, "  internalTrafficPolicy: {p}");
        }
        match self.affinity_timeout {
            Some(t) => {
                let _ = write!(
                    y,
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
                );
            }
            None => y.push_str("  sessionAffinity: None\n"),
        }
        if let Some((_, ranges)) = &self.load_balancer
            && !ranges.is_empty()
        {
            let _ = writeln!(y, "  loadBalancerSourceRanges: [{}]", quoted_list(ranges));
        }
        let _ = write!(
            y,
            "  ports:\n  - name: http\n    port: {SVC_PORT}\n    targetPort: {TARGET_PORT}\n    protocol: TCP\n"
        );
        if let Some(np) = self.node_port {
            let _ = writeln!(y, "    nodePort: {np}");
        }
        if let Some((vips, _)) = &self.load_balancer {
            y.push_str("status:\n  loadBalancer:\n    ingress:\n");
            for v in vips {
                let _ = writeln!(y, "    - ip: \"{v}\"");
            }
        }
        y
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    ip: String,
    node: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    zones: Option<Vec<String>>,
}

impl Endpoint {
    /// A ready endpoint on this node ([`NODE_NAME`]).
    pub fn local(ip: &str) -> Endpoint {
        Endpoint::on(ip, NODE_NAME)
    }

    /// A ready endpoint on another node ([`REMOTE_NODE`]).
    pub fn remote(ip: &str) -> Endpoint {
        Endpoint::on(ip, REMOTE_NODE)
    }

    /// A ready endpoint on `node`.
    pub fn on(ip: &str, node: &str) -> Endpoint {
        Endpoint {
            ip: ip.to_string(),
            node: node.to_string(),
            ready: true,
            serving: true,
            terminating: false,
            zones: None,
        }
    }

    /// Terminating: `ready: false, serving: <serving>, terminating: true`.
    pub fn terminating(mut self, serving: bool) -> Endpoint {
        self.ready = false;
        self.serving = serving;
        self.terminating = true;
        self
    }

    /// `hints: {forZones: [{name: z}, …]}`.
    pub fn zone_hints(mut self, zones: &[&str]) -> Endpoint {
        self.zones = Some(zones.iter().map(|z| z.to_string()).collect());
        self
    }
}

/// An EndpointSlice for Service `service` (label `kubernetes.io/service-name`), port `http`
/// [`TARGET_PORT`]/TCP. The address type follows the first endpoint's address.
pub fn endpoint_slice(service: &str, endpoints: &[Endpoint]) -> String {
    let v6 = endpoints.first().is_some_and(|e| e.ip.contains(':'));
    let (family, suffix) = if v6 { ("IPv6", "v6") } else { ("IPv4", "v4") };
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-{suffix}-x7k2p
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: {family}
ports:
- name: http
  port: {TARGET_PORT}
  protocol: TCP
endpoints:
"
    );
    if endpoints.is_empty() {
        y.push_str("  []\n");
    }
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses: [\"{ip}\"]
  conditions:
    ready: {ready}
    serving: {serving}
    terminating: {terminating}
  nodeName: {node}
  zone: {zone}
",
            ip = e.ip,
            ready = e.ready,
            serving = e.serving,
            terminating = e.terminating,
            node = e.node,
            zone = if e.node == NODE_NAME {
                NODE_ZONE
            } else {
                "zone-b"
            },
        );
        if let Some(zones) = &e.zones {
            let list: Vec<String> = zones.iter().map(|z| format!("{{name: {z}}}")).collect();
            let _ = writeln!(y, "  hints:\n    forZones: [{}]", list.join(", "));
        }
    }
    y
}

/// The v1 Node [`NODE_NAME`]: InternalIP(s) `internal_ips`, `spec.podCIDRs` = `pod_cidrs`, label
/// `topology.kubernetes.io/zone: zone-a`.
pub fn node(internal_ips: &[&str], pod_cidrs: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  labels:
    kubernetes.io/hostname: {NODE_NAME}
    kubernetes.io/os: linux
    topology.kubernetes.io/zone: {NODE_ZONE}
spec:
  podCIDR: {first}
  podCIDRs: [{cidrs}]
status:
  addresses:
",
        first = pod_cidrs.first().copied().unwrap_or(""),
        cidrs = pod_cidrs
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for ip in internal_ips {
        let _ = writeln!(y, "  - type: InternalIP\n    address: \"{ip}\"");
    }
    let _ = writeln!(y, "  - type: Hostname\n    address: {NODE_NAME}");
    y
}

/// Runs `kube-proxy-rs --dry-run --objects <objects> --hostname-override node-a <args…>` and
/// returns the ruleset it prints (panics, with its stderr, if it fails or prints no
/// filter+nat ruleset). Call it before building the lab: it fails fast.
pub fn render(tag: &str, objects: &[String], args: &[&str]) -> String {
    let dir = TempDir::new(&format!("{tag}-objects"));
    let path = dir.path().join("objects.yaml");
    let text = objects.join("---\n");
    std::fs::write(&path, &text).expect("write objects.yaml");
    let out = Command::new(crate::cli::binary())
        .arg("--dry-run")
        .arg("--objects")
        .arg(&path)
        .args(["--hostname-override", NODE_NAME])
        .args(args)
        .output()
        .expect("run kube-proxy-rs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("*nat") && stdout.contains("*filter"),
        "kube-proxy-rs --dry-run {args:?} failed ({}) or printed no filter+nat ruleset:\n\
         stderr:\n{stderr}\nstdout:\n{stdout}\nobjects:\n{text}",
        out.status
    );
    stdout
}
