//! Upstream kube-proxy's packet-flow expectations (`pkg/proxy/iptables/proxier_test.go`:
//! `runPacketFlowTests` in TestClusterIPGeneral, TestLoadBalancer, TestNodePorts,
//! TestHealthCheckNodePort, TestExternalTrafficPolicyLocal/Cluster, TestNoEndpointsReject),
//! checked against what our renderer writes, walked by our tracer. The clusters are rebuilt here
//! from those tests' descriptions, with node ports moved into the API's range (3001 → 30001).
//!
//! Upstream's tracer names a flow's result as the endpoints reached ("10.180.0.1:80, …"),
//! `DROP`, `REJECT`, `ACCEPT` (a filter rule accepted it untranslated) or "" (no rule took it),
//! and whether it was marked for masquerade.

use std::net::IpAddr;

use super::*;
use crate::config::{LocalDetector, RenderConfig};
use crate::model::{
    Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName, SessionAffinity,
    TrafficPolicy,
};

const NODE_IP: &str = "192.168.0.2";
const NODE_IP_ALT: &str = "192.168.1.2";
/// Upstream counts this external IP among the node's own addresses.
const EXTERNAL_IP_LOCAL: &str = "192.168.99.11";
const EXTERNAL_CLIENT: &str = "203.0.113.2";
const EXTERNAL_CLIENT_BLOCKED: &str = "203.0.113.130";
const NODE_NAME: &str = "test-node";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: NODE_NAME.into(),
        node_ips: vec![ip(NODE_IP), ip(NODE_IP_ALT), ip(EXTERNAL_IP_LOCAL)],
        local_detector: LocalDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn cfg6() -> RenderConfig {
    RenderConfig {
        family: IpFamily::V6,
        node_name: NODE_NAME.into(),
        node_ips: vec![ip("2001:db8::1"), ip("2001:db8:1::2")],
        local_detector: LocalDetector::Cidrs(vec!["fd00:10::/32".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn port(ns: &str, name: &str, port_name: &str, proto: Protocol, cip: &str, p: u16) -> ServicePort {
    ServicePort::cluster_ip(ServicePortName::new(ns, name, port_name), proto, ip(cip), p)
}

fn ep(addr: &str, port: u16, node: Option<&str>) -> Endpoint {
    Endpoint {
        node_name: node.map(Into::into),
        ..Endpoint::ready(ip(addr), port)
    }
}

/// What upstream's tracer reports for a flow.
#[derive(Debug, PartialEq)]
struct Flow {
    output: String,
    masq: bool,
}

/// Walks one flow; the origin follows the source as upstream's tracer decides it: the node's
/// addresses (and loopback) are the node, the pod CIDR a pod, anything else outside.
fn flow(
    cfg: &RenderConfig,
    model: &Model,
    proto: &'static str,
    src: &str,
    dst: &str,
    dport: u16,
) -> Flow {
    let text = crate::render(model, cfg).unwrap().to_save_text();
    let rules = SavedRuleset::parse(&text).unwrap();
    let node = NodeContext {
        local_addresses: cfg.node_ips.iter().map(|a| (*a).into()).collect(),
        ..NodeContext::default()
    };
    let src_ip = ip(src);
    let pods: IpNet = match cfg.family {
        IpFamily::V4 => "10.0.0.0/8".parse().unwrap(),
        IpFamily::V6 => "fd00:10::/32".parse().unwrap(),
    };
    let origin = if node.is_local(src_ip)
        || model
            .services
            .iter()
            .any(|s| s.load_balancer_ips.contains(&src_ip))
    {
        // Upstream's "same node to LB, SNATted to the LB IP" case: the node's own packet.
        Origin::Node
    } else if pods.contains(&src_ip) {
        Origin::Pod
    } else {
        Origin::External
    };
    let packet = Packet {
        proto,
        src: SocketAddr::new(src_ip, 40000),
        dst: SocketAddr::new(ip(dst), dport),
        origin,
        in_interface: None,
    };
    let t = trace(&rules, &packet, &node);
    assert!(t.not_modelled.is_empty(), "{:?}", t.not_modelled);
    let mut outputs: Vec<String> = Vec::new();
    let mut masq = None;
    for leaf in t.leaves().iter().filter(|l| l.share.is_some()) {
        let (out, m) = match &leaf.outcome.verdict {
            Verdict::Delivered {
                destination,
                translated: true,
                masquerade,
                ..
            } => (destination.to_string(), *masquerade),
            Verdict::Delivered { .. } => {
                let accepted = steps_of(&t.root).iter().any(|s| {
                    matches!(s, Step::Rule { table, text, .. } if table == "filter" && text.ends_with("-j ACCEPT"))
                });
                (if accepted { "ACCEPT" } else { "" }.to_string(), false)
            }
            Verdict::Rejected { .. } => ("REJECT".into(), false),
            Verdict::Dropped { .. } => ("DROP".into(), false),
        };
        assert!(
            masq.is_none_or(|prev| prev == m),
            "mixed masquerade decisions"
        );
        masq = Some(m);
        if !outputs.contains(&out) {
            outputs.push(out);
        }
    }
    outputs.sort();
    Flow {
        output: outputs.join(", "),
        masq: masq.unwrap_or(false),
    }
}

fn steps_of(node: &TraceNode) -> Vec<&Step> {
    let mut out: Vec<&Step> = node.steps.iter().collect();
    if let End::Branches(bs) = &node.end {
        for b in bs {
            out.extend(steps_of(&b.node));
        }
    }
    out
}

fn expect(
    cfg: &RenderConfig,
    model: &Model,
    cases: &[(&str, &'static str, &str, &str, u16, &str, bool)],
) {
    for (name, proto, src, dst, dport, output, masq) in cases {
        let got = flow(cfg, model, proto, src, dst, *dport);
        assert_eq!(
            got,
            Flow {
                output: output.to_string(),
                masq: *masq
            },
            "upstream flow {name:?}: {proto} {src} -> {dst}:{dport}"
        );
    }
}

#[test]
fn cluster_ip_general() {
    let mut svc1 = port("ns1", "svc1", "http", Protocol::Tcp, "172.30.0.41", 80);
    svc1.endpoints = vec![ep("10.180.0.1", 80, Some(NODE_NAME))];
    let mut ports = vec![svc1];
    for (name, proto, p, target) in [
        ("http", Protocol::Tcp, 80, 80),
        ("https", Protocol::Tcp, 443, 8443),
        ("dns-udp", Protocol::Udp, 53, 53),
        ("dns-tcp", Protocol::Tcp, 53, 5353),
        ("dns-sctp", Protocol::Sctp, 53, 53),
    ] {
        let mut sp = port("ns2", "svc2", name, proto, "172.30.0.42", p);
        sp.endpoints = vec![
            ep("10.180.0.1", target, Some(NODE_NAME)),
            ep("10.180.2.1", target, Some("node2")),
        ];
        ports.push(sp);
    }
    let model = Model { services: ports };
    expect(
        &cfg(),
        &model,
        &[
            (
                "simple clusterIP",
                "tcp",
                "10.180.0.2",
                "172.30.0.41",
                80,
                "10.180.0.1:80",
                false,
            ),
            (
                "hairpin to cluster IP",
                "tcp",
                "10.180.0.1",
                "172.30.0.41",
                80,
                "10.180.0.1:80",
                true,
            ),
            (
                "clusterIP with multiple endpoints",
                "tcp",
                "10.180.0.2",
                "172.30.0.42",
                80,
                "10.180.0.1:80, 10.180.2.1:80",
                false,
            ),
            (
                "clusterIP with TargetPort",
                "tcp",
                "10.180.0.2",
                "172.30.0.42",
                443,
                "10.180.0.1:8443, 10.180.2.1:8443",
                false,
            ),
            (
                "same port (TCP)",
                "tcp",
                "10.180.0.2",
                "172.30.0.42",
                53,
                "10.180.0.1:5353, 10.180.2.1:5353",
                false,
            ),
            (
                "same port (UDP)",
                "udp",
                "10.180.0.2",
                "172.30.0.42",
                53,
                "10.180.0.1:53, 10.180.2.1:53",
                false,
            ),
            (
                "same port (SCTP)",
                "sctp",
                "10.180.0.2",
                "172.30.0.42",
                53,
                "10.180.0.1:53, 10.180.2.1:53",
                false,
            ),
            (
                "TCP-only port does not match UDP traffic",
                "udp",
                "10.180.0.2",
                "172.30.0.42",
                80,
                "",
                false,
            ),
            (
                "svc1 does not accept svc2's ports",
                "tcp",
                "10.180.0.2",
                "172.30.0.41",
                443,
                "",
                false,
            ),
        ],
    );
}

#[test]
fn load_balancer_with_source_ranges() {
    let mut sp = port("ns1", "svc1", "p80", Protocol::Tcp, "172.30.0.41", 80);
    sp.node_port = Some(30001);
    sp.load_balancer_ips = vec![ip("1.2.3.4"), ip("5.6.7.8")];
    sp.load_balancer_source_ranges = vec![
        "192.168.0.0/24".parse().unwrap(),
        "203.0.113.0/25".parse().unwrap(),
    ];
    sp.endpoints = vec![ep("10.180.0.1", 80, None)];
    let model = Model { services: vec![sp] };
    let ep = "10.180.0.1:80";
    expect(
        &cfg(),
        &model,
        &[
            (
                "pod to cluster IP",
                "tcp",
                "10.0.0.2",
                "172.30.0.41",
                80,
                ep,
                false,
            ),
            (
                "external to nodePort",
                "tcp",
                EXTERNAL_CLIENT,
                NODE_IP,
                30001,
                ep,
                true,
            ),
            (
                "nodePort bypasses LoadBalancerSourceRanges",
                "tcp",
                EXTERNAL_CLIENT_BLOCKED,
                NODE_IP,
                30001,
                ep,
                true,
            ),
            (
                "accepted external to LB1",
                "tcp",
                EXTERNAL_CLIENT,
                "1.2.3.4",
                80,
                ep,
                true,
            ),
            (
                "accepted external to LB2",
                "tcp",
                EXTERNAL_CLIENT,
                "5.6.7.8",
                80,
                ep,
                true,
            ),
            (
                "blocked external to LB1",
                "tcp",
                EXTERNAL_CLIENT_BLOCKED,
                "1.2.3.4",
                80,
                "DROP",
                false,
            ),
            (
                "blocked external to LB2",
                "tcp",
                EXTERNAL_CLIENT_BLOCKED,
                "5.6.7.8",
                80,
                "DROP",
                false,
            ),
            (
                "pod to LB1 (blocked by LoadBalancerSourceRanges)",
                "tcp",
                "10.0.0.2",
                "1.2.3.4",
                80,
                "DROP",
                false,
            ),
            (
                "pod to LB2 (blocked by LoadBalancerSourceRanges)",
                "tcp",
                "10.0.0.2",
                "5.6.7.8",
                80,
                "DROP",
                false,
            ),
            (
                "node to LB1 (allowed by LoadBalancerSourceRanges)",
                "tcp",
                NODE_IP,
                "1.2.3.4",
                80,
                ep,
                true,
            ),
            (
                "node to LB2 (allowed by LoadBalancerSourceRanges)",
                "tcp",
                NODE_IP,
                "5.6.7.8",
                80,
                ep,
                true,
            ),
            (
                "same node to LB1, SNATted to LB1 (implicitly allowed)",
                "tcp",
                "1.2.3.4",
                "1.2.3.4",
                80,
                ep,
                true,
            ),
            (
                "same node to LB2, SNATted to LB2 (implicitly allowed)",
                "tcp",
                "5.6.7.8",
                "5.6.7.8",
                80,
                ep,
                true,
            ),
        ],
    );
}

#[test]
fn node_ports_under_each_address_setting() {
    for (family, localhost, addresses, allow_alt) in [
        (IpFamily::V4, true, vec![], true),
        (IpFamily::V4, false, vec![], true),
        (
            IpFamily::V4,
            false,
            vec!["192.168.0.0/24", "127.0.0.1/32"],
            false,
        ),
        (
            IpFamily::V4,
            false,
            vec!["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"],
            true,
        ),
        (IpFamily::V6, true, vec![], true),
        (IpFamily::V6, false, vec![], true),
        (
            IpFamily::V6,
            false,
            vec!["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"],
            false,
        ),
    ] {
        let v4 = family == IpFamily::V4;
        let mut c = if v4 { cfg() } else { cfg6() };
        c.localhost_nodeports = localhost;
        c.nodeport_addresses = addresses
            .iter()
            .map(|a| a.parse::<IpNet>().unwrap())
            .filter(|n| n.addr().is_ipv4() == v4)
            .collect();
        let (svc_ip, ep1, ep2) = if v4 {
            ("172.30.0.41", "10.180.0.1", "10.180.2.1")
        } else {
            ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1")
        };
        let mut sp = port("ns1", "svc1", "p80", Protocol::Tcp, svc_ip, 80);
        sp.node_port = Some(30001);
        sp.endpoints = vec![ep(ep1, 80, None), ep(ep2, 80, Some(NODE_NAME))];
        let model = Model { services: vec![sp] };
        let (pod, external, node_ip, alt, lo) = if v4 {
            (
                "10.0.0.2",
                EXTERNAL_CLIENT,
                NODE_IP,
                NODE_IP_ALT,
                "127.0.0.1",
            )
        } else {
            (
                "fd00:10::2",
                "2600:5200::1",
                "2001:db8::1",
                "2001:db8:1::2",
                "::1",
            )
        };
        let both = |a: &str, b: &str| {
            let fmt = |x: &str| SocketAddr::new(ip(x), 80).to_string();
            format!("{}, {}", fmt(a), fmt(b))
        };
        let out = both(ep1, ep2);
        let label = format!("{family:?} localhost={localhost} addresses={addresses:?}");
        let mut cases = vec![
            ("pod to cluster IP", pod, svc_ip, out.clone(), false),
            ("external to nodePort", external, node_ip, out.clone(), true),
            ("node to nodePort", node_ip, node_ip, out.clone(), true),
        ];
        if v4 && localhost {
            cases.push((
                "localhost to nodePort gets masqueraded",
                lo,
                lo,
                out.clone(),
                true,
            ));
        } else {
            cases.push((
                "localhost to nodePort is ignored",
                lo,
                lo,
                String::new(),
                false,
            ));
        }
        if allow_alt {
            cases.push((
                "external to nodePort on secondary IP",
                external,
                alt,
                out.clone(),
                true,
            ));
        } else {
            cases.push((
                "secondary nodeIP ignores NodePorts",
                external,
                alt,
                String::new(),
                false,
            ));
        }
        for (name, src, dst, output, masq) in cases {
            let dport = if name == "pod to cluster IP" {
                80
            } else {
                30001
            };
            let got = flow(&c, &model, "tcp", src, dst, dport);
            assert_eq!(
                got,
                Flow { output, masq },
                "upstream flow {name:?} ({label})"
            );
        }
    }
}

#[test]
fn health_check_node_port_is_accepted() {
    let mut c = cfg();
    c.nodeport_addresses = vec!["127.0.0.0/8".parse().unwrap()];
    let mut sp = port("ns1", "svc1", "p80", Protocol::Tcp, "172.30.0.42", 80);
    sp.node_port = Some(30001);
    sp.health_check_node_port = Some(30000);
    sp.external_traffic_policy = TrafficPolicy::Local;
    let model = Model { services: vec![sp] };
    expect(
        &c,
        &model,
        &[(
            "firewall accepts HealthCheckNodePort",
            "tcp",
            "1.2.3.4",
            NODE_IP,
            30000,
            "ACCEPT",
            false,
        )],
    );
    expect(
        &c,
        &Model::default(),
        &[(
            "HealthCheckNodePort no longer has any rule",
            "tcp",
            "1.2.3.4",
            NODE_IP,
            30000,
            "",
            false,
        )],
    );
}

fn external_policy_model(policy: TrafficPolicy) -> Model {
    let mut sp = port("ns1", "svc1", "p80", Protocol::Tcp, "172.30.0.41", 80);
    sp.node_port = Some(30001);
    sp.external_ips = vec![ip(EXTERNAL_IP_LOCAL)];
    sp.load_balancer_ips = vec![ip("1.2.3.4")];
    sp.external_traffic_policy = policy;
    if policy == TrafficPolicy::Local {
        sp.health_check_node_port = Some(30000);
    }
    sp.endpoints = vec![
        ep("10.180.0.1", 80, None),
        ep("10.180.2.1", 80, Some(NODE_NAME)),
    ];
    Model { services: vec![sp] }
}

#[test]
fn external_traffic_policy_local() {
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let local = "10.180.2.1:80";
    expect(
        &cfg(),
        &external_policy_model(TrafficPolicy::Local),
        &[
            (
                "pod to cluster IP hits both endpoints, unmasqueraded",
                "tcp",
                "10.0.0.2",
                "172.30.0.41",
                80,
                both,
                false,
            ),
            (
                "pod to external IP hits both endpoints, unmasqueraded",
                "tcp",
                "10.0.0.2",
                EXTERNAL_IP_LOCAL,
                80,
                both,
                false,
            ),
            (
                "external to external IP hits only local endpoint, unmasqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                EXTERNAL_IP_LOCAL,
                80,
                local,
                false,
            ),
            (
                "pod to LB IP hits only both endpoints, unmasqueraded",
                "tcp",
                "10.0.0.2",
                "1.2.3.4",
                80,
                both,
                false,
            ),
            (
                "external to LB IP hits only local endpoint, unmasqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                "1.2.3.4",
                80,
                local,
                false,
            ),
            (
                "pod to NodePort hits both endpoints, unmasqueraded",
                "tcp",
                "10.0.0.2",
                NODE_IP,
                30001,
                both,
                false,
            ),
            (
                "external to NodePort hits only local endpoint, unmasqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                NODE_IP,
                30001,
                local,
                false,
            ),
        ],
    );
}

#[test]
fn external_traffic_policy_cluster() {
    let both = "10.180.0.1:80, 10.180.2.1:80";
    expect(
        &cfg(),
        &external_policy_model(TrafficPolicy::Cluster),
        &[
            (
                "pod to cluster IP hits both endpoints, unmasqueraded",
                "tcp",
                "10.0.0.2",
                "172.30.0.41",
                80,
                both,
                false,
            ),
            (
                "pod to external IP hits both endpoints, masqueraded",
                "tcp",
                "10.0.0.2",
                EXTERNAL_IP_LOCAL,
                80,
                both,
                true,
            ),
            (
                "external to external IP hits both endpoints, masqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                EXTERNAL_IP_LOCAL,
                80,
                both,
                true,
            ),
            (
                "pod to LB IP hits both endpoints, masqueraded",
                "tcp",
                "10.0.0.2",
                "1.2.3.4",
                80,
                both,
                true,
            ),
            (
                "external to LB IP hits both endpoints, masqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                "1.2.3.4",
                80,
                both,
                true,
            ),
            (
                "pod to NodePort hits both endpoints, masqueraded",
                "tcp",
                "10.0.0.2",
                NODE_IP,
                30001,
                both,
                true,
            ),
            (
                "external to NodePort hits both endpoints, masqueraded",
                "tcp",
                EXTERNAL_CLIENT,
                NODE_IP,
                30001,
                both,
                true,
            ),
        ],
    );
}

#[test]
fn no_endpoints_reject() {
    let mut sp = port("ns1", "svc1", "p80", Protocol::Tcp, "172.30.0.41", 80);
    sp.node_port = Some(30001);
    sp.external_ips = vec![ip(EXTERNAL_IP_LOCAL)];
    sp.load_balancer_ips = vec![ip("1.2.3.4")];
    let model = Model { services: vec![sp] };
    expect(
        &cfg(),
        &model,
        &[
            (
                "pod to cluster IP with no endpoints",
                "tcp",
                "10.0.0.2",
                "172.30.0.41",
                80,
                "REJECT",
                false,
            ),
            (
                "external to external IP with no endpoints",
                "tcp",
                EXTERNAL_CLIENT,
                EXTERNAL_IP_LOCAL,
                80,
                "REJECT",
                false,
            ),
            (
                "pod to NodePort with no endpoints",
                "tcp",
                "10.0.0.2",
                NODE_IP,
                30001,
                "REJECT",
                false,
            ),
            (
                "external to NodePort with no endpoints",
                "tcp",
                EXTERNAL_CLIENT,
                NODE_IP,
                30001,
                "REJECT",
                false,
            ),
            (
                "pod to LoadBalancer IP with no endpoints",
                "tcp",
                "10.0.0.2",
                "1.2.3.4",
                80,
                "REJECT",
                false,
            ),
            (
                "external to LoadBalancer IP with no endpoints",
                "tcp",
                EXTERNAL_CLIENT,
                "1.2.3.4",
                80,
                "REJECT",
                false,
            ),
        ],
    );
}

#[test]
fn session_affinity_keeps_new_clients_spread() {
    // Not an upstream flow (its tracer ignores `recent`); ours reports both kinds of client.
    let mut sp = port("ns5", "svc5", "p80", Protocol::Tcp, "172.30.0.45", 80);
    sp.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    sp.endpoints = vec![ep("10.180.0.3", 80, None), ep("10.180.0.4", 80, None)];
    let model = Model { services: vec![sp] };
    expect(
        &cfg(),
        &model,
        &[(
            "affinity",
            "tcp",
            "10.0.0.2",
            "172.30.0.45",
            80,
            "10.180.0.3:80, 10.180.0.4:80",
            false,
        )],
    );
}
