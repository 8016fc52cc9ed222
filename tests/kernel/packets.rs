//! Packet tests through the real kernel: the ruleset `kube-proxy-rs --dry-run` renders for a set of
//! Kubernetes objects is loaded into a lab node namespace (kernel-lab.md), and TCP connections from
//! a client namespace must reach the right backends — or be refused at once when a Service has no
//! endpoints.
//!
//! `harness_selftest_*` runs the same checks against a hand-written kube-proxy-shaped ruleset, so
//! a failure there is the harness or the kernel, and a failure elsewhere is the renderer/CLI.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Backend, ConnErr, Lab, payload_tables, restore, save_tables};

const NODE_NAME: &str = "node-a";
const NODE_IP: &str = "192.168.50.1"; // the lab node's address on the first client's link
const WEB_IP: &str = "10.96.0.10"; // ClusterIP, two ready endpoints
const NP_IP: &str = "10.96.0.11"; // NodePort 30080, two ready endpoints
const EMPTY_IP: &str = "10.96.0.12"; // ClusterIP, no endpoints
const SVC_PORT: u16 = 80;
const NODE_PORT: u16 = 30080;
const POD_A: &str = "10.244.1.11";
const POD_B: &str = "10.244.1.12";

/// The objects the lab needs, as one multi-document YAML stream.
fn objects_yaml(node_ip: &str) -> String {
    let endpoint = |ip: &str| {
        format!(
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {NODE_NAME}\n"
        )
    };
    let service = |name: &str, ip: &str, node_port: Option<u16>| {
        let (ty, np) = match node_port {
            Some(p) => ("NodePort", format!("\n    nodePort: {p}")),
            None => ("ClusterIP", String::new()),
        };
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: {ty}
  clusterIP: {ip}
  clusterIPs: [\"{ip}\"]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  selector:
    app: {name}
  ports:
  - name: http
    port: {SVC_PORT}
    targetPort: 8080
    protocol: TCP{np}
"
        )
    };
    let slice = |svc: &str, eps: &[&str]| {
        let eps: String = eps.iter().map(|ip| endpoint(ip)).collect();
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-x7k2p
  namespace: default
  labels:
    kubernetes.io/service-name: {svc}
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
{eps}"
        )
    };
    let node = format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  labels:
    kubernetes.io/hostname: {NODE_NAME}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [\"10.244.1.0/24\"]
status:
  addresses:
  - type: InternalIP
    address: {node_ip}
  - type: Hostname
    address: {NODE_NAME}
"
    );
    [
        node,
        service("web", WEB_IP, None),
        slice("web", &[POD_A, POD_B]),
        service("np", NP_IP, Some(NODE_PORT)),
        slice("np", &[POD_A, POD_B]),
        service("empty", EMPTY_IP, None),
    ]
    .join("---\n")
}

/// Runs `kube-proxy-rs --dry-run` on the lab's objects and returns the ruleset it prints.
fn render_with_binary(tag: &str) -> String {
    let dir = testkit::TempDir::new(&format!("{tag}-objects"));
    let objects = dir.path().join("objects.yaml");
    std::fs::write(&objects, objects_yaml(NODE_IP)).expect("write objects.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rs"))
        .arg("--dry-run")
        .arg("--objects")
        .arg(&objects)
        .args(["--hostname-override", NODE_NAME])
        .args(["--cluster-cidr", testkit::lab::POD_CIDR])
        .output()
        .expect("run kube-proxy-rs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kube-proxy-rs --dry-run failed ({}):\nstderr:\n{}\nstdout:\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("*nat") && stdout.contains("*filter"),
        "kube-proxy-rs --dry-run printed no filter+nat ruleset:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A lab with two backends and one client, with `payload` loaded into the node.
fn lab_with(tag: &str, backend: Backend, payload: &str) -> Lab {
    let lab = Lab::builder(tag)
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .client("c")
        .build();
    assert_eq!(lab.node_ip().to_string(), NODE_IP);
    if let Err(e) = restore(&lab.node, backend, payload) {
        panic!("loading the ruleset ({backend}) failed: {e}\npayload:\n{payload}");
    }
    let held = save_tables(&lab.node, backend, &payload_tables(payload));
    assert!(
        held.contains("KUBE-SERVICES"),
        "no KUBE-SERVICES after restore:\n{held}"
    );
    lab
}

/// Renders with the binary first (fails fast, before any namespace exists), then builds the lab.
fn binary_lab(tag: &str, backend: Backend) -> Lab {
    let payload = render_with_binary(tag);
    lab_with(tag, backend, &payload)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// 20 connections to the ClusterIP reach both backends.
fn check_cluster_ip(lab: &Lab) {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..20 {
        match lab.connect("c", WEB_IP, SVC_PORT, CONNECT_TIMEOUT) {
            Ok(name) => *seen.entry(name).or_default() += 1,
            Err(e) => panic!(
                "connection {i} to ClusterIP {WEB_IP}:{SVC_PORT} failed: {e}\n{}",
                lab.diagnostics()
            ),
        }
    }
    eprintln!("ClusterIP {WEB_IP}:{SVC_PORT}: {seen:?}");
    let a = seen.get("pa").copied().unwrap_or(0);
    let b = seen.get("pb").copied().unwrap_or(0);
    assert!(
        a > 0 && b > 0 && a + b == 20,
        "20 connections to {WEB_IP}:{SVC_PORT} should reach both pa and pb, got {seen:?}\n{}",
        lab.diagnostics()
    );
}

/// The NodePort on the node's address answers with a backend's name.
fn check_node_port(lab: &Lab) {
    let node_ip = lab.node_ip().to_string();
    for _ in 0..3 {
        match lab.connect("c", &node_ip, NODE_PORT, CONNECT_TIMEOUT) {
            Ok(name) => assert!(
                name == "pa" || name == "pb",
                "NodePort {node_ip}:{NODE_PORT} answered {name:?}, expected pa or pb"
            ),
            Err(e) => panic!(
                "connection to NodePort {node_ip}:{NODE_PORT} failed: {e}\n{}",
                lab.diagnostics()
            ),
        }
    }
}

/// A Service without endpoints is refused at once (REJECT), not left to time out.
fn check_no_endpoints(lab: &Lab) {
    let start = Instant::now();
    let r = lab.connect("c", EMPTY_IP, SVC_PORT, CONNECT_TIMEOUT);
    let took = start.elapsed();
    assert_eq!(
        r,
        Err(ConnErr::Refused),
        "connecting to {EMPTY_IP}:{SVC_PORT} (no endpoints) should be refused, took {took:?}\n{}",
        lab.diagnostics()
    );
    assert!(
        took < Duration::from_millis(500),
        "refusal of {EMPTY_IP}:{SVC_PORT} took {took:?}, expected well under 1 s"
    );
}

#[test]
fn cluster_ip_reaches_both_backends() {
    testkit::needs_root!();
    let lab = binary_lab("cip", Backend::Nft);
    check_cluster_ip(&lab);
}

#[test]
fn node_port_from_another_namespace() {
    testkit::needs_root!();
    let lab = binary_lab("np", Backend::Nft);
    check_node_port(&lab);
}

#[test]
fn service_without_endpoints_is_refused() {
    testkit::needs_root!();
    let lab = binary_lab("noep", Backend::Nft);
    check_no_endpoints(&lab);
}

#[test]
fn all_checks_legacy_backend() {
    testkit::needs_root!();
    let lab = binary_lab("leg", Backend::Legacy);
    check_cluster_ip(&lab);
    check_node_port(&lab);
    check_no_endpoints(&lab);
}

/// The hand-written ruleset below, in the shapes of upstream-iptables.md §1.4 for the lab's
/// objects (chain hashes made up). Proves the lab and the checks themselves.
fn handwritten_payload() -> String {
    let sep = |chain: &str, svc: &str, ip: &str| {
        format!(
            "-A {chain} -s {ip}/32 -m comment --comment default/{svc}:http -j KUBE-MARK-MASQ\n\
             -A {chain} -p tcp -m comment --comment default/{svc}:http -m tcp -j DNAT --to-destination {ip}:8080\n"
        )
    };
    let svc = |chain: &str, svc: &str, ip: &str, sep_a: &str, sep_b: &str| {
        format!(
            "-A {chain} ! -s 10.244.0.0/16 -d {ip}/32 -p tcp -m comment --comment \"default/{svc}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A {chain} -m comment --comment \"default/{svc}:http -> {POD_A}:8080\" -m statistic --mode random --probability 0.50000000000 -j {sep_a}\n\
             -A {chain} -m comment --comment \"default/{svc}:http -> {POD_B}:8080\" -j {sep_b}\n"
        )
    };
    format!(
        "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d {EMPTY_IP}/32 -p tcp -m comment --comment \"default/empty:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-HANDNP0000000000 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-HANDNPA000000000 - [0:0]
:KUBE-SEP-HANDNPB000000000 - [0:0]
:KUBE-SEP-HANDWEBA00000000 - [0:0]
:KUBE-SEP-HANDWEBB00000000 - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-HANDNP0000000000 - [0:0]
:KUBE-SVC-HANDWEB000000000 - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-EXT-HANDNP0000000000 -m comment --comment \"masquerade traffic for default/np:http external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-HANDNP0000000000 -j KUBE-SVC-HANDNP0000000000
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment default/np:http -m tcp --dport {NODE_PORT} -j KUBE-EXT-HANDNP0000000000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
{sep_npa}{sep_npb}{sep_weba}{sep_webb}-A KUBE-SERVICES -d {WEB_IP}/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-HANDWEB000000000
-A KUBE-SERVICES -d {NP_IP}/32 -p tcp -m comment --comment \"default/np:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-HANDNP0000000000
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
{svc_np}{svc_web}COMMIT
",
        sep_npa = sep("KUBE-SEP-HANDNPA000000000", "np", POD_A),
        sep_npb = sep("KUBE-SEP-HANDNPB000000000", "np", POD_B),
        sep_weba = sep("KUBE-SEP-HANDWEBA00000000", "web", POD_A),
        sep_webb = sep("KUBE-SEP-HANDWEBB00000000", "web", POD_B),
        svc_np = svc(
            "KUBE-SVC-HANDNP0000000000",
            "np",
            NP_IP,
            "KUBE-SEP-HANDNPA000000000",
            "KUBE-SEP-HANDNPB000000000"
        ),
        svc_web = svc(
            "KUBE-SVC-HANDWEB000000000",
            "web",
            WEB_IP,
            "KUBE-SEP-HANDWEBA00000000",
            "KUBE-SEP-HANDWEBB00000000"
        ),
    )
}

/// The harness against a known-good hand-written ruleset (nft back end): if this fails, the lab or
/// the kernel is at fault, not the renderer.
#[test]
fn harness_selftest_handwritten_ruleset() {
    testkit::needs_root!();
    let lab = lab_with("self", Backend::Nft, &handwritten_payload());
    check_cluster_ip(&lab);
    check_node_port(&lab);
    check_no_endpoints(&lab);
}

/// Without any ruleset, the lab itself routes: pods answer on their own addresses from the client,
/// and the unhandled ClusterIP times out rather than being refused (so the refusal above really
/// comes from the REJECT rule).
#[test]
fn harness_selftest_bare_lab() {
    testkit::needs_root!();
    let lab = Lab::builder("bare")
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .client("c")
        .build();
    assert_eq!(
        lab.connect("c", POD_A, 8080, CONNECT_TIMEOUT).as_deref(),
        Ok("pa")
    );
    assert_eq!(
        lab.connect("c", POD_B, 8080, CONNECT_TIMEOUT).as_deref(),
        Ok("pb")
    );
    let r = lab.connect("c", EMPTY_IP, SVC_PORT, Duration::from_millis(300));
    assert!(
        matches!(r, Err(ConnErr::Timeout) | Err(ConnErr::Unreachable(_))),
        "an un-DNATed ClusterIP with no rules should not be refused: {r:?}"
    );
}
