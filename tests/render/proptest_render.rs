//! Property test: random object sets, invalid ones included, go through the real dry-run. The
//! binary never panics, always exits 0 for parseable YAML, and every payload it prints is
//! accepted by the real `iptables-restore --test` (both back ends) in a private namespace.

use std::fmt::Write as _;
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use testkit::{Backend, Netns};

/// Mostly a valid value, sometimes an invalid one: every pool's first `valid` entries are valid,
/// so most generated objects survive translation while bad input still shows up in every run.
fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    let split = pool
        .iter()
        .position(|v| *v == BAD)
        .expect("pool has a BAD marker");
    let (valid, invalid) = (&pool[..split], &pool[split + 1..]);
    if invalid.is_empty() {
        return proptest::sample::select(valid).boxed();
    }
    prop_oneof![25 => proptest::sample::select(valid), 1 => proptest::sample::select(invalid)]
        .boxed()
}

/// Separates valid from invalid entries in a pool.
const BAD: &str = "<bad>";

const CLUSTER_IPS: &[&str] = &[
    "10.96.0.1",
    "10.96.0.2",
    "10.96.1.7",
    "10.100.0.10",
    "10.96.0.012",
    BAD,
    "None",
    "\"\"",
    "10.96.0.300",
    "fd00:96::1",
    "not-an-ip",
];
const PORTS: &[&str] = &[
    "80", "443", "53", "8080", "65535", "1", BAD, "0", "70000", "-1", "\"http\"",
];
const PROTOCOLS: &[&str] = &[
    "TCP", "TCP", "TCP", "TCP", "UDP", "SCTP", BAD, "ICMP", "tcp", "\"\"",
];
const TYPES: &[&str] = &[
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    BAD,
    "ExternalName",
    "Weird",
];
const NODE_PORTS: &[&str] = &["30000", "30080", "32767", "31111", BAD, "0", "99999"];
const EXTERNAL_IPS: &[&str] = &[
    "192.168.99.1",
    "192.168.99.2",
    "203.0.113.9",
    "2001:db8::9",
    BAD,
    "999.1.1.1",
    "x",
];
const RANGES: &[&str] = &[
    "203.0.113.0/25",
    "10.0.0.0/8",
    "198.51.100.0/24",
    " 192.0.2.0/24 ",
    BAD,
    "1.2.3.4/33",
    "bogus",
];
const POLICIES: &[&str] = &["Cluster", "Local", BAD, "Bogus"];
const AFFINITY_TIMEOUTS: &[&str] = &["10800", "1", "86400", BAD, "0", "90000"];
const ENDPOINT_IPS: &[&str] = &[
    "10.244.1.5",
    "10.244.1.6",
    "10.244.2.7",
    "10.244.3.8",
    "10.244.3.9",
    "fd00:10:244::7",
    "fd00:10:244:1::8",
    "fd00:10:244:2::9",
    BAD,
    "::1",
    "fe80::1",
    "127.0.0.1",
    "169.254.3.3",
    "0.0.0.0",
    "10.244.2.300",
    "nope",
];
const NODES: &[&str] = &["node-a", "node-b", "node-c", BAD];
const V6_CLUSTER_IPS: &[&str] = &["fd00:10:96::1", "fd00:10:96::2", BAD, "fd00::zz"];
const ZONES: &[&str] = &["z1", "z2", BAD];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv4", "IPv6", BAD, "FQDN"];
const BOOLS: &[&str] = &["true", "true", "false", "null", BAD];
const PORT_NAMES: &[&str] = &["p0", "p0", "p0", "p1", "p2", BAD, "\"\"", "other"];

#[derive(Debug, Clone)]
struct Port {
    proto: &'static str,
    port: &'static str,
    node_port: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Svc {
    cluster_ip: &'static str,
    cluster_ip6: Option<&'static str>,
    kind: &'static str,
    ports: Vec<Port>,
    external_ips: Vec<&'static str>,
    lb_ips: Vec<&'static str>,
    ranges: Vec<&'static str>,
    etp: &'static str,
    itp: &'static str,
    affinity: Option<&'static str>,
    health_check: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Ep {
    ip: &'static str,
    ready: &'static str,
    serving: &'static str,
    terminating: &'static str,
    node: &'static str,
    zone_hint: Option<&'static str>,
    node_hint: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Slice {
    address_type: &'static str,
    service: usize,
    port_name: &'static str,
    proto: &'static str,
    port: &'static str,
    endpoints: Vec<Ep>,
}

fn port() -> impl Strategy<Value = Port> {
    (
        pick(PROTOCOLS),
        pick(PORTS),
        proptest::option::of(pick(NODE_PORTS)),
    )
        .prop_map(|(proto, port, node_port)| Port {
            proto,
            port,
            node_port,
        })
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        (
            pick(CLUSTER_IPS),
            pick(TYPES),
            proptest::collection::vec(port(), 1..4),
            proptest::option::of(pick(V6_CLUSTER_IPS)),
        ),
        (
            proptest::collection::vec(pick(EXTERNAL_IPS), 0..3),
            proptest::collection::vec(pick(EXTERNAL_IPS), 0..3),
            proptest::collection::vec(pick(RANGES), 0..3),
        ),
        (
            pick(POLICIES),
            pick(POLICIES),
            proptest::option::of(pick(AFFINITY_TIMEOUTS)),
            proptest::option::of(pick(NODE_PORTS)),
        ),
    )
        .prop_map(
            |(
                (cluster_ip, kind, ports, cluster_ip6),
                (external_ips, lb_ips, ranges),
                (etp, itp, affinity, health_check),
            )| Svc {
                cluster_ip,
                cluster_ip6,
                kind,
                ports,
                external_ips,
                lb_ips,
                ranges,
                etp,
                itp,
                affinity,
                health_check,
            },
        )
}

fn ep() -> impl Strategy<Value = Ep> {
    (
        pick(ENDPOINT_IPS),
        pick(BOOLS),
        pick(BOOLS),
        pick(BOOLS),
        pick(NODES),
        proptest::option::of(pick(ZONES)),
        proptest::option::of(pick(NODES)),
    )
        .prop_map(
            |(ip, ready, serving, terminating, node, zone_hint, node_hint)| Ep {
                ip,
                ready,
                serving,
                terminating,
                node,
                zone_hint,
                node_hint,
            },
        )
}

fn slice() -> impl Strategy<Value = Slice> {
    (
        pick(ADDRESS_TYPES),
        0usize..6,
        pick(PORT_NAMES),
        pick(PROTOCOLS),
        pick(PORTS),
        proptest::collection::vec(ep(), 0..6),
    )
        .prop_map(
            |(address_type, service, port_name, proto, port, endpoints)| Slice {
                address_type,
                service,
                port_name,
                proto,
                port,
                endpoints,
            },
        )
}

fn yaml(services: &[Svc], slices: &[Slice]) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}\nspec: {podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]}\nstatus:\n  addresses: [{type: InternalIP, address: 192.168.0.10}, {type: InternalIP, address: \"2001:db8::10\"}]\n",
    );
    for (i, s) in services.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  type: {}\n  clusterIP: {}\n  externalTrafficPolicy: {}\n  internalTrafficPolicy: {}\n",
            s.kind, s.cluster_ip, s.etp, s.itp
        );
        if let Some(v6) = s.cluster_ip6 {
            let _ = writeln!(y, "  clusterIPs: [{}, \"{v6}\"]", s.cluster_ip);
        }
        if !s.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs: [{}]", s.external_ips.join(", "));
        }
        if !s.ranges.is_empty() {
            let quoted: Vec<String> = s.ranges.iter().map(|r| format!("\"{r}\"")).collect();
            let _ = writeln!(y, "  loadBalancerSourceRanges: [{}]", quoted.join(", "));
        }
        if let Some(t) = s.affinity {
            let _ = writeln!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}"
            );
        }
        if let Some(h) = s.health_check {
            let _ = writeln!(y, "  healthCheckNodePort: {h}");
        }
        y.push_str("  ports:\n");
        for (j, p) in s.ports.iter().enumerate() {
            let _ = write!(
                y,
                "  - {{name: p{j}, protocol: {}, port: {}",
                p.proto, p.port
            );
            if let Some(np) = p.node_port {
                let _ = write!(y, ", nodePort: {np}");
            }
            y.push_str("}\n");
        }
        if !s.lb_ips.is_empty() {
            y.push_str("status:\n  loadBalancer:\n    ingress:\n");
            for ip in &s.lb_ips {
                let _ = writeln!(y, "    - {{ip: {ip}}}");
            }
        }
    }
    for (i, sl) in slices.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{}-{i}, namespace: ns, labels: {{kubernetes.io/service-name: s{}}}}}\naddressType: {}\nports: [{{name: {}, protocol: {}, port: {}}}]\nendpoints:\n",
            sl.service, sl.service, sl.address_type, sl.port_name, sl.proto, sl.port
        );
        if sl.endpoints.is_empty() {
            y.push_str("  []\n");
        }
        for e in &sl.endpoints {
            let _ = writeln!(
                y,
                "- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: {}, serving: {}, terminating: {}}}, hints: {{forZones: [{}], forNodes: [{}]}}}}",
                e.ip,
                e.node,
                e.ready,
                e.serving,
                e.terminating,
                e.zone_hint
                    .map(|z| format!("{{name: {z}}}"))
                    .unwrap_or_default(),
                e.node_hint
                    .map(|n| format!("{{name: {n}}}"))
                    .unwrap_or_default(),
            );
        }
    }
    y
}

#[test]
fn random_objects_render_and_load() {
    testkit::needs_root!();
    let ns = Netns::new("prop");
    let tmp = testkit::TempDir::new("prop");
    let file = tmp.path().join("objects.yaml");
    let cases: u32 = std::env::var("KPRS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(svc(), 0..6),
        proptest::collection::vec(slice(), 0..8),
    );
    // Each case runs with one of these; the IPv6 ones are checked with ip6tables-restore.
    let flag_sets: [&[&str]; 7] = [
        &["--cluster-cidr", "10.244.0.0/16"],
        &["--masquerade-all", "--nodeport-addresses", "192.168.0.0/24"],
        &[],
        &["--ip-family", "ipv6", "--cluster-cidr", "fd00:10:244::/56"],
        &[
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "cbr0",
        ],
        &[
            "--detect-local-mode",
            "NodeCIDR",
            "--iptables-localhost-nodeports=false",
        ],
        &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            "veth",
            "--iptables-masquerade-bit",
            "3",
        ],
    ];
    let n = std::cell::Cell::new(0usize);
    // Guards against a generator that only ever produces rejected objects.
    let with_endpoints = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(services, slices)| {
            n.set(n.get() + 1);
            let text = yaml(&services, &slices);
            let flags = flag_sets[n.get() % flag_sets.len()];
            let family = if flags.contains(&"ipv6") {
                rulegen::IpFamily::V6
            } else {
                rulegen::IpFamily::V4
            };
            std::fs::write(&file, &text).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rs"))
                .args(["--dry-run", "--hostname-override", "node-a", "--objects"])
                .arg(&file)
                .args(flags)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            prop_assert!(!stderr.contains("panicked"), "panic:\n{stderr}\n{text}");
            prop_assert_eq!(
                out.status.code(),
                Some(0),
                "exit code; stderr:\n{}\n{}",
                stderr,
                text
            );
            let payload = String::from_utf8(out.stdout).unwrap();
            prop_assert!(payload.contains("*nat\n") && payload.contains("*filter\n"));
            if payload.contains(":KUBE-SEP-") {
                with_endpoints.set(with_endpoints.get() + 1);
            }
            for backend in Backend::ALL {
                let check = ns.exec_input(
                    [backend.restore_bin(family).as_str(), "-w", "--test"],
                    payload.as_bytes(),
                );
                if !check.status.success() {
                    return Err(TestCaseError::fail(format!(
                        "{} --test refused the payload: {}\nobjects:\n{text}\npayload:\n{payload}",
                        backend.name(),
                        String::from_utf8_lossy(&check.stderr)
                    )));
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(n.get() >= cases as usize, "ran {} cases", n.get());
    assert!(
        with_endpoints.get() * 20 >= n.get(),
        "only {} of {} cases rendered any endpoint chain",
        with_endpoints.get(),
        n.get()
    );
    eprintln!(
        "{} cases, {} with endpoint chains",
        n.get(),
        with_endpoints.get()
    );
}
