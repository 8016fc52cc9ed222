//! Walks over what the renderer writes for a small cluster (both modes), and over hand-written
//! rulesets for the walk's own corners.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use crate::config::{LocalDetector, RenderConfig};
use crate::model::{
    Endpoint, Model, Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy,
};

const NODE_IP: &str = "192.168.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn svc(name: &str, cip: &str, port: u16, eps: &[(&str, &str)]) -> ServicePort {
    let mut sp = ServicePort::cluster_ip(
        ServicePortName::new("shop", name, "http"),
        Protocol::Tcp,
        ip(cip),
        port,
    );
    sp.endpoints = eps
        .iter()
        .map(|(a, node)| Endpoint {
            node_name: Some((*node).into()),
            ..Endpoint::ready(ip(a), 8080)
        })
        .collect();
    sp
}

fn model() -> Model {
    let mut web = svc(
        "web",
        "10.96.0.10",
        80,
        &[
            ("10.244.1.2", "node1"),
            ("10.244.2.3", "node2"),
            ("10.244.3.4", "node3"),
        ],
    );
    web.node_port = Some(30080);
    let mut local = svc(
        "local",
        "10.96.0.11",
        80,
        &[("10.244.1.5", "node1"), ("10.244.2.6", "node2")],
    );
    local.node_port = Some(30081);
    local.load_balancer_ips = vec![ip("198.51.100.10")];
    local.external_traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(32000);
    let empty = svc("empty", "10.96.0.12", 80, &[]);
    let mut sticky = svc(
        "sticky",
        "10.96.0.13",
        80,
        &[("10.244.1.7", "node1"), ("10.244.2.8", "node2")],
    );
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    let mut fw = svc("fw", "10.96.0.14", 443, &[("10.244.2.9", "node2")]);
    fw.node_port = Some(30443);
    fw.load_balancer_ips = vec![ip("198.51.100.20")];
    fw.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    Model {
        services: vec![web, local, empty, sticky, fw],
    }
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node1".into(),
        node_ips: vec![ip(NODE_IP)],
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn iptables_rules() -> SavedRuleset {
    let text = crate::render(&model(), &cfg()).unwrap().to_save_text();
    SavedRuleset::parse(&text).unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        local_addresses: vec![ip(NODE_IP).into()],
        ..NodeContext::default()
    }
}

fn packet(origin: Origin, src: &str, dst: &str) -> Packet {
    Packet {
        proto: "tcp",
        src: sa(src),
        dst: sa(dst),
        origin,
        in_interface: None,
    }
}

/// New-connection outcomes: destination (or verdict) → (share, masqueraded).
fn fresh(t: &Trace) -> BTreeMap<String, (f64, bool)> {
    let mut out = BTreeMap::new();
    for leaf in t.leaves() {
        let Some(share) = leaf.share else { continue };
        let (key, masq) = match &leaf.outcome.verdict {
            Verdict::Delivered {
                destination,
                masquerade,
                ..
            } => (destination.to_string(), *masquerade),
            Verdict::Rejected { table, chain, .. } => (format!("REJECT {table} {chain}"), false),
            Verdict::Dropped { table, chain, .. } => (format!("DROP {table} {chain}"), false),
        };
        let e = out.entry(key).or_insert((0.0, masq));
        e.0 += share;
        assert_eq!(e.1, masq, "one destination, two masquerade decisions");
    }
    let total: f64 = out.values().map(|(s, _)| s).sum();
    assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}: {out:?}");
    out
}

fn assert_shares(t: &Trace, want: &[(&str, f64, bool)]) {
    let got = fresh(t);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (dst, share, masq) in want {
        let (s, m) = got
            .get(*dst)
            .unwrap_or_else(|| panic!("{dst} not in {got:?}"));
        assert!((s - share).abs() < 1e-6, "{dst}: share {s}, want {share}");
        assert_eq!(m, masq, "{dst}: masquerade");
    }
}

#[test]
fn a_pod_reaches_each_endpoint_in_equal_shares_with_its_own_source() {
    let t = trace(
        &iptables_rules(),
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.10:80"),
        &node(),
    );
    let third = 1.0 / 3.0;
    assert_shares(
        &t,
        &[
            ("10.244.1.2:8080", third, false),
            ("10.244.2.3:8080", third, false),
            ("10.244.3.4:8080", third, false),
        ],
    );
    assert!(t.not_modelled.is_empty(), "{:?}", t.not_modelled);
    // The walk starts in nat PREROUTING and the random choice sits in the service chain.
    assert_eq!(
        t.root.steps[0],
        Step::Hook {
            table: "nat".into(),
            chain: "PREROUTING".into()
        }
    );
}

#[test]
fn the_node_and_outside_clients_are_masqueraded() {
    let rules = iptables_rules();
    let from_node = trace(
        &rules,
        &packet(Origin::Node, "192.168.0.2:40000", "10.96.0.10:80"),
        &node(),
    );
    assert!(fresh(&from_node).values().all(|(_, m)| *m));
    assert_eq!(fresh(&from_node).len(), 3);
    let node_port = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "192.168.0.2:30080"),
        &node(),
    );
    assert!(fresh(&node_port).values().all(|(_, m)| *m));
    assert_eq!(fresh(&node_port).len(), 3);
    // The same node port on an address that is not the node's is not a node port at all.
    let elsewhere = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "192.168.0.3:30080"),
        &node(),
    );
    assert_shares(&elsewhere, &[("192.168.0.3:30080", 1.0, false)]);
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_the_local_endpoint() {
    let rules = iptables_rules();
    for dst in ["192.168.0.2:30081", "198.51.100.10:80"] {
        let t = trace(
            &rules,
            &packet(Origin::External, "192.0.2.50:40000", dst),
            &node(),
        );
        assert_shares(&t, &[("10.244.1.5:8080", 1.0, false)]);
    }
    // A pod on this node uses the cluster-wide set for the load-balancer IP (short-circuit).
    let t = trace(
        &rules,
        &packet(Origin::Pod, "10.244.1.100:40000", "198.51.100.10:80"),
        &node(),
    );
    assert_shares(
        &t,
        &[
            ("10.244.1.5:8080", 0.5, false),
            ("10.244.2.6:8080", 0.5, false),
        ],
    );
}

#[test]
fn a_service_without_endpoints_is_rejected_in_the_filter_table() {
    let rules = iptables_rules();
    for (origin, src) in [
        (Origin::Pod, "10.244.1.100:40000"),
        (Origin::Node, "192.168.0.2:40000"),
    ] {
        let t = trace(&rules, &packet(origin, src, "10.96.0.12:80"), &node());
        assert_shares(&t, &[("REJECT filter KUBE-SERVICES", 1.0, false)]);
    }
}

#[test]
fn load_balancer_source_ranges_drop_other_clients() {
    let rules = iptables_rules();
    let inside = trace(
        &rules,
        &packet(Origin::External, "203.0.113.7:40000", "198.51.100.20:443"),
        &node(),
    );
    assert_shares(&inside, &[("10.244.2.9:8080", 1.0, true)]);
    let outside = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "198.51.100.20:443"),
        &node(),
    );
    assert_shares(&outside, &[("DROP filter KUBE-PROXY-FIREWALL", 1.0, false)]);
}

#[test]
fn session_affinity_has_a_path_per_endpoint_for_returning_clients() {
    let t = trace(
        &iptables_rules(),
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.13:80"),
        &node(),
    );
    assert_shares(
        &t,
        &[
            ("10.244.1.7:8080", 0.5, false),
            ("10.244.2.8:8080", 0.5, false),
        ],
    );
    let returning: Vec<String> = t
        .leaves()
        .iter()
        .filter(|l| l.share.is_none())
        .map(|l| l.outcome.verdict.to_string())
        .collect();
    assert_eq!(
        returning,
        [
            "10.244.1.7:8080, source kept",
            "10.244.2.8:8080, source kept"
        ]
    );
}

#[test]
fn an_endpoint_reaching_itself_is_masqueraded() {
    let t = trace(
        &iptables_rules(),
        &packet(Origin::Pod, "10.244.1.2:40000", "10.96.0.10:80"),
        &node(),
    );
    let third = 1.0 / 3.0;
    assert_shares(
        &t,
        &[
            ("10.244.1.2:8080", third, true),
            ("10.244.2.3:8080", third, false),
            ("10.244.3.4:8080", third, false),
        ],
    );
}

#[test]
fn the_walk_follows_the_rules_not_the_model() {
    // A rendering bug (an endpoint chain DNATing to the wrong port) shows in the trace.
    let text = crate::render(&model(), &cfg()).unwrap().to_save_text();
    let broken = text.replace(
        "--to-destination 10.244.2.3:8080",
        "--to-destination 10.244.2.3:9999",
    );
    assert_ne!(text, broken);
    let t = trace(
        &SavedRuleset::parse(&broken).unwrap(),
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.10:80"),
        &node(),
    );
    assert!(fresh(&t).contains_key("10.244.2.3:9999"), "{:?}", fresh(&t));
}

#[test]
fn ipvs_mode_goes_through_sets_and_virtual_servers() {
    let r = crate::render::ipvs::render(
        &model(),
        &cfg(),
        &crate::render::ipvs::IpvsConfig::default(),
    )
    .unwrap();
    let rules = SavedRuleset::parse(&r.ruleset.to_save_text()).unwrap();
    let node = NodeContext {
        local_addresses: vec![ip(NODE_IP).into()],
        sets: Some(SavedSets::parse(&r.sets.to_save_text()).unwrap()),
        virtual_servers: Some(SavedVirtualServers::parse(&r.table.to_ipvsadm_text()).unwrap()),
    };
    let third = 1.0 / 3.0;
    let pod = trace(
        &rules,
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.10:80"),
        &node,
    );
    assert_shares(
        &pod,
        &[
            ("10.244.1.2:8080", third, false),
            ("10.244.2.3:8080", third, false),
            ("10.244.3.4:8080", third, false),
        ],
    );
    assert!(pod.not_modelled.is_empty(), "{:?}", pod.not_modelled);
    let from_node = trace(
        &rules,
        &packet(Origin::Node, "192.168.0.2:40000", "10.96.0.10:80"),
        &node,
    );
    assert!(
        fresh(&from_node).values().all(|(_, m)| *m),
        "{:?}",
        fresh(&from_node)
    );
    let node_port = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "192.168.0.2:30080"),
        &node,
    );
    assert_eq!(fresh(&node_port).len(), 3);
    assert!(fresh(&node_port).values().all(|(_, m)| *m));
    let empty = trace(
        &rules,
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.12:80"),
        &node,
    );
    assert_shares(&empty, &[("REJECT ipvs tcp 10.96.0.12:80", 1.0, false)]);
    let outside = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "198.51.100.20:443"),
        &node,
    );
    assert_shares(
        &outside,
        &[("DROP filter KUBE-SOURCE-RANGES-FIREWALL", 1.0, false)],
    );
    // A cluster IP on a port it does not serve is refused by KUBE-IPVS-FILTER.
    let wrong_port = trace(
        &rules,
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.10:81"),
        &node,
    );
    assert_shares(
        &wrong_port,
        &[("REJECT filter KUBE-IPVS-FILTER", 1.0, false)],
    );
}

fn handwritten(body: &str) -> SavedRuleset {
    SavedRuleset::parse(body).unwrap()
}

#[test]
fn policies_gotos_interfaces_and_unknown_matches() {
    let rules = handwritten(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n\
         -A FORWARD -i cbr0 -g A\n\
         -A FORWARD -m physdev --physdev-is-bridged -j ACCEPT\n\
         -A A -j B\n\
         -A A -j ACCEPT\n\
         -A B -j RETURN\n\
         -A B -j DROP\n\
         COMMIT\n",
    );
    let pod = trace(
        &rules,
        &packet(Origin::Pod, "10.244.1.100:40000", "10.244.2.3:8080"),
        &node(),
    );
    assert_shares(&pod, &[("10.244.2.3:8080", 1.0, false)]);
    let external = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "10.244.2.3:8080"),
        &node(),
    );
    assert_shares(&external, &[("DROP filter FORWARD", 1.0, false)]);
    assert_eq!(external.not_modelled, ["-m physdev"]);
    let named = trace(
        &rules,
        &Packet {
            in_interface: Some("eth0".into()),
            ..packet(Origin::Pod, "10.244.1.100:40000", "10.244.2.3:8080")
        },
        &node(),
    );
    assert_shares(&named, &[("DROP filter FORWARD", 1.0, false)]);
}

#[test]
fn a_loop_in_the_rules_ends_the_walk() {
    let rules = handwritten(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n-A PREROUTING -j A\n-A A -j A\nCOMMIT\n",
    );
    let t = trace(
        &rules,
        &packet(Origin::External, "192.0.2.50:40000", "10.96.0.10:80"),
        &node(),
    );
    let leaves = t.leaves();
    assert_eq!(leaves.len(), 1);
    assert!(
        matches!(&leaves[0].outcome.verdict, Verdict::Dropped { rule, .. } if rule.contains("loop"))
    );
}

/// How many choices deep the walk nests (0: none), counted without recursion.
fn choice_depth(t: &Trace) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(&t.root, 0)];
    while let Some((node, depth)) = stack.pop() {
        match &node.end {
            End::Outcome(_) => deepest = deepest.max(depth),
            End::Branches(bs) => stack.extend(bs.iter().map(|b| (&b.node, depth + 1))),
        }
    }
    deepest
}

/// A Service with `n` endpoints on another node (10.1.0.0 onwards), and the rules for it.
fn big_service_rules(n: u32, affinity: bool) -> SavedRuleset {
    let mut big = svc("big", "10.96.0.20", 80, &[]);
    big.endpoints = (0..n)
        .map(|i| Endpoint {
            node_name: Some("node2".into()),
            ..Endpoint::ready(
                IpAddr::from(Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 0]) + i)),
                8080,
            )
        })
        .collect();
    if affinity {
        big.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: 10800,
        };
    }
    let model = Model {
        services: vec![big],
    };
    SavedRuleset::parse(&crate::render(&model, &cfg()).unwrap().to_save_text()).unwrap()
}

/// Issue #15: every endpoint's `--probability` rule nested a choice in the previous one's way
/// on, and the walk recursed once per endpoint, so 4,300 endpoints overflowed the main thread's
/// stack (a test thread's, 2 MiB, far sooner). Now a Service's endpoints are one choice, walked
/// from a work stack.
#[test]
fn a_service_with_50_000_endpoints_is_one_choice() {
    const N: u32 = 50_000;
    let t = trace(
        &big_service_rules(N, false),
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.20:80"),
        &node(),
    );
    assert_eq!(choice_depth(&t), 1);
    let End::Branches(ways) = &t.root.end else {
        panic!("no choice: {:?}", t.root.end);
    };
    assert_eq!(ways.len(), N as usize);
    assert!(matches!(
        ways.last().unwrap().condition,
        Condition::Random { taken: false, .. }
    ));
    let got = fresh(&t);
    assert_eq!(got.len(), N as usize, "one destination per endpoint");
    for (dst, (share, _)) in &got {
        assert!((share * f64::from(N) - 1.0).abs() < 1e-3, "{dst}: {share}");
    }
}

/// Session affinity doubles the chained choices (an `--rcheck` rule per endpoint before the
/// `--probability` ones): a returning client's choice, whose last way (a new client) holds the
/// random one.
#[test]
fn session_affinity_over_20_000_endpoints_is_two_choices() {
    const N: u32 = 20_000;
    let t = trace(
        &big_service_rules(N, true),
        &packet(Origin::Pod, "10.244.1.100:40000", "10.96.0.20:80"),
        &node(),
    );
    assert_eq!(choice_depth(&t), 2);
    let End::Branches(ways) = &t.root.end else {
        panic!("no choice: {:?}", t.root.end);
    };
    assert_eq!(
        ways.len(),
        N as usize + 1,
        "a way per endpoint, and a new client's"
    );
    let leaves = t.leaves();
    assert_eq!(
        leaves.iter().filter(|l| l.share.is_none()).count(),
        N as usize
    );
    assert_eq!(fresh(&t).len(), N as usize);
}
