//! Rule-shape tests against upstream's expectations (`pkg/proxy/iptables/proxier_test.go`),
//! written in `iptables-save` spelling.

use super::*;
use crate::model::{Protocol, ServicePortName, SessionAffinity, TrafficPolicy};
use std::net::Ipv4Addr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node1".into(),
        node_ips: vec![ip("192.168.0.2")],
        local_detector: LocalDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn svc(ns: &str, name: &str, port_name: &str, cip: &str, port: u16) -> ServicePort {
    ServicePort::cluster_ip(
        ServicePortName::new(ns, name, port_name),
        Protocol::Tcp,
        ip(cip),
        port,
    )
}

fn local_ep(a: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::ready(ip(a), port)
    }
}

/// Upstream's TestOverallIPTablesRules services, minus what later issues add.
fn overall_model() -> Model {
    let mut s1 = svc("ns1", "svc1", "p80", "172.30.0.41", 80);
    s1.endpoints = vec![Endpoint::ready(ip("10.180.0.1"), 80)];

    let mut s2 = svc("ns2", "svc2", "p80", "172.30.0.42", 80);
    s2.node_port = Some(3001);
    s2.external_ips = vec![ip("192.168.99.22")];
    s2.load_balancer_ips = vec![ip("1.2.3.4")];
    s2.external_traffic_policy = TrafficPolicy::Local;
    s2.health_check_node_port = Some(30000);
    s2.endpoints = vec![
        local_ep("10.180.0.2", 80, "node1"),
        local_ep("10.180.0.3", 80, "node2"),
    ];

    let mut s3 = svc("ns3", "svc3", "p80", "172.30.0.43", 80);
    s3.node_port = Some(3003);
    s3.endpoints = vec![Endpoint::ready(ip("10.180.0.3"), 80)];

    let mut s4 = svc("ns4", "svc4", "p80", "172.30.0.44", 80);
    s4.external_ips = vec![ip("192.168.99.33")];
    s4.endpoints = vec![
        Endpoint::ready(ip("10.180.0.4"), 80),
        Endpoint::ready(ip("10.180.0.5"), 80),
    ];

    let mut s5 = svc("ns5", "svc5", "p80", "172.30.0.45", 80);
    s5.node_port = Some(3002);
    s5.load_balancer_ips = vec![ip("5.6.7.8")];
    s5.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    s5.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    s5.endpoints = vec![Endpoint::ready(ip("10.180.0.3"), 80)];

    let s6 = svc("ns6", "svc6", "p80", "172.30.0.46", 80);
    Model {
        services: vec![s6, s5, s4, s3, s2, s1],
    }
}

fn rendered() -> Ruleset {
    render(&overall_model(), &cfg()).unwrap()
}

fn chain(rs: &Ruleset, table: &str, chain: &str) -> Vec<String> {
    rs.table(table)
        .unwrap()
        .chain_rules(chain)
        .unwrap_or_else(|| panic!("no chain {chain}"))
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn cluster_ip_capture_and_endpoint_chains() {
    let rs = rendered();
    let services = chain(&rs, "nat", "KUBE-SERVICES");
    assert!(services.contains(&"-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O".to_string()));
    assert_eq!(
        chain(&rs, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O"),
        vec![
            "-A KUBE-SVC-XPGD46QRK7WJZT7O ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ",
        ]
    );
    assert_eq!(
        chain(&rs, "nat", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        vec![
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -m comment --comment \"ns1/svc1:p80\" -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp -j DNAT --to-destination 10.180.0.1:80",
        ]
    );
}

#[test]
fn nodeport_tail_rule_is_last() {
    let rs = rendered();
    let services = chain(&rs, "nat", "KUBE-SERVICES");
    assert_eq!(
        services.last().unwrap(),
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
}

#[test]
fn two_endpoints_split_evenly() {
    let rs = rendered();
    let svc4 = chain(&rs, "nat", "KUBE-SVC-4SW47YFZTEDKD3PK");
    assert!(
        svc4[1].contains(
            "-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC"
        ),
        "{svc4:?}"
    );
    assert!(!svc4[2].contains("statistic"));
}

#[test]
fn external_policy_local_shape() {
    let rs = rendered();
    let ext = chain(&rs, "nat", "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
    assert_eq!(
        ext,
        vec![
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -s 10.0.0.0/8 -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\" -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"masquerade LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT",
        ]
    );
    let svl = chain(&rs, "nat", "KUBE-SVL-GNZBNJ2PO5MGZ6GT");
    assert_eq!(svl.len(), 1, "only the local endpoint: {svl:?}");
    assert!(svl[0].contains("10.180.0.2:80"));
    let hc = chain(&rs, "filter", "KUBE-NODEPORTS");
    assert_eq!(
        hc,
        vec![
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"ns2/svc2:p80 health check node port\" -m tcp --dport 30000 -j ACCEPT"
        ]
    );
}

#[test]
fn no_endpoints_rejects_in_filter() {
    let rs = rendered();
    let f = chain(&rs, "filter", "KUBE-SERVICES");
    assert_eq!(
        f,
        vec![
            "-A KUBE-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"
        ]
    );
    assert!(
        !rs.to_save_text().contains("KUBE-SVC-")
            || !chain(&rs, "nat", "KUBE-SERVICES")
                .iter()
                .any(|l| l.contains("ns6/svc6"))
    );
}

#[test]
fn source_ranges_and_affinity() {
    let rs = rendered();
    let fw = chain(&rs, "nat", "KUBE-FW-NUKIZ6OKUXPJNT4C");
    assert_eq!(
        fw,
        vec![
            "-A KUBE-FW-NUKIZ6OKUXPJNT4C -s 203.0.113.0/25 -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -j KUBE-EXT-NUKIZ6OKUXPJNT4C",
            "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL\"",
        ]
    );
    let pf = chain(&rs, "filter", "KUBE-PROXY-FIREWALL");
    assert_eq!(
        pf,
        vec![
            "-A KUBE-PROXY-FIREWALL -d 5.6.7.8/32 -p tcp -m comment --comment \"ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C\" -m tcp --dport 80 -j DROP"
        ]
    );
    let svc5 = chain(&rs, "nat", "KUBE-SVC-NUKIZ6OKUXPJNT4C");
    assert!(
        svc5[1]
            .contains("-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-I77PXRDZVX7PMWMN"),
        "{svc5:?}"
    );
}

#[test]
fn output_is_independent_of_input_order() {
    let mut m = overall_model();
    let a = render(&m, &cfg()).unwrap().to_save_text();
    m.services.reverse();
    for s in &mut m.services {
        s.endpoints.reverse();
    }
    assert_eq!(a, render(&m, &cfg()).unwrap().to_save_text());
}

#[test]
fn masquerade_bit_is_configurable_and_checked() {
    let mut c = cfg();
    c.masquerade_bit = 0;
    let t = render(&overall_model(), &c).unwrap().to_save_text();
    assert!(t.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x1/0x1"));
    c.masquerade_bit = 32;
    assert_eq!(
        render(&overall_model(), &c),
        Err(RenderError::MasqueradeBit(32))
    );
}

#[test]
fn masquerade_all_marks_every_cluster_ip_packet() {
    let mut c = cfg();
    c.masquerade_all = true;
    let rs = render(&overall_model(), &c).unwrap();
    let svc1 = chain(&rs, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        svc1[0],
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
    );
}

#[test]
fn no_detector_means_no_internal_masquerade() {
    let mut c = cfg();
    c.local_detector = LocalDetector::None;
    let rs = render(&overall_model(), &c).unwrap();
    let svc1 = chain(&rs, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(svc1.len(), 1);
    assert!(svc1[0].contains("-j KUBE-SEP-"));
}

#[test]
fn nodeport_addresses_list_gives_one_tail_rule_per_ip() {
    let mut c = cfg();
    c.nodeport_addresses = vec!["192.168.0.0/24".parse().unwrap()];
    let rs = render(&overall_model(), &c).unwrap();
    let services = chain(&rs, "nat", "KUBE-SERVICES");
    assert_eq!(
        services.last().unwrap(),
        "-A KUBE-SERVICES -d 192.168.0.2/32 -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS"
    );
    // No loopback in the list: no localhost node ports, so no KUBE-FIREWALL.
    assert!(
        rs.table("filter")
            .unwrap()
            .chain_rules("KUBE-FIREWALL")
            .is_none()
    );
}

#[test]
fn large_cluster_mode_drops_endpoint_comments() {
    let mut s = svc("ns1", "big", "", "172.30.0.50", 80);
    for i in 0..1001u32 {
        s.endpoints.push(Endpoint::ready(
            IpAddr::V4(Ipv4Addr::from(0x0ab40000 + i)),
            80,
        ));
    }
    let rs = render(&Model { services: vec![s] }, &cfg()).unwrap();
    let text = rs.to_save_text();
    assert!(!text.contains("ns1/big -> "));
    assert!(text.contains("\"ns1/big cluster IP\""));
}

/// Every `--comment` value of a rendered ruleset, unquoted.
fn comments(rs: &Ruleset) -> Vec<String> {
    rs.to_save_text()
        .lines()
        .filter_map(|line| {
            let args = crate::sync::restore::split_args(line);
            let i = args.iter().position(|a| a == "--comment")?;
            args.get(i + 1).cloned()
        })
        .collect()
}

/// Issue #15 (7): `loadBalancerSourceRanges: [0.0.0.0/0]` (or `::/0`) is a source match the
/// kernel stores as "any address", which `iptables-save` lists without `-s`; the render must
/// list it the same way, for both families.
#[test]
fn a_match_all_source_range_is_written_as_iptables_save_lists_it() {
    for (family, cip, vip, all, node) in [
        (
            IpFamily::V4,
            "172.30.0.45",
            "5.6.7.8",
            "0.0.0.0/0",
            "192.168.0.2",
        ),
        (
            IpFamily::V6,
            "fd00:30::45",
            "2001:db8::8",
            "::/0",
            "fd00:1::2",
        ),
    ] {
        let mut s = svc("ns5", "svc5", "p80", cip, 80);
        s.cluster_ips = vec![ip(cip)];
        s.load_balancer_ips = vec![ip(vip)];
        s.load_balancer_source_ranges = vec![all.parse().unwrap()];
        s.endpoints = vec![Endpoint::ready(
            ip(if family == IpFamily::V4 {
                "10.180.0.3"
            } else {
                "fd00:180::3"
            }),
            80,
        )];
        let c = RenderConfig {
            family,
            node_ips: vec![ip(node)],
            local_detector: LocalDetector::None,
            ..cfg()
        };
        let rs = render(&Model { services: vec![s] }, &c).unwrap();
        let fw = chain(&rs, "nat", "KUBE-FW-NUKIZ6OKUXPJNT4C");
        assert_eq!(
            fw[0],
            "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -j KUBE-EXT-NUKIZ6OKUXPJNT4C",
            "{family:?}: {fw:#?}"
        );
        let text = rs.to_save_text();
        assert!(
            !text.contains("/0 "),
            "{family:?}: a /0 match is written:\n{text}"
        );
    }
}

/// Issue #15 (7): iptables keeps at most 255 bytes of a comment (xt_comment's
/// `XT_MAX_COMMENT_LEN` less the NUL) and drops the rest silently; the render must write what the
/// kernel will list. Names longer than the API allows are the only way to get there (see
/// `comments_of_names_at_the_api_limits_fit_the_kernel`).
#[test]
fn comments_longer_than_the_kernel_keeps_are_cut_as_iptables_cuts_them() {
    let ns = "n".repeat(300);
    let mut s = svc(&ns, "svc", "p80", "172.30.0.41", 80);
    s.endpoints = vec![Endpoint::ready(ip("10.180.0.1"), 80)];
    let rs = render(&Model { services: vec![s] }, &cfg()).unwrap();
    let all = comments(&rs);
    let full = format!("{ns}/svc:p80");
    for c in &all {
        assert!(c.len() <= 255, "a comment of {} bytes: {c}", c.len());
    }
    // Every per-service comment starts with the name, so each is its first 255 bytes.
    let cut = &full[..255];
    let per_service: Vec<&String> = all.iter().filter(|c| c.starts_with("nnn")).collect();
    assert!(per_service.len() >= 4, "{all:#?}");
    for c in per_service {
        assert_eq!(c, cut);
    }
    // A multi-byte character straddling byte 255 is left out whole (the text stays UTF-8).
    let ns = format!("{}é", "n".repeat(254));
    let mut s = svc(&ns, "svc", "p80", "172.30.0.41", 80);
    s.endpoints = vec![Endpoint::ready(ip("10.180.0.1"), 80)];
    let rs = render(&Model { services: vec![s] }, &cfg()).unwrap();
    assert!(
        comments(&rs).iter().any(|c| c == &"n".repeat(254)),
        "{:#?}",
        comments(&rs)
    );
}

/// The longest names a real API server accepts (namespace 63, Service 63, port name 15) with
/// the longest IPv6 endpoint, in every rule shape that carries the name: no comment needs
/// cutting, so what `iptables-save` lists is the full text. Worst case today: "other traffic to
/// NAME will be dropped by KUBE-PROXY-FIREWALL", 199 bytes.
#[test]
fn comments_of_names_at_the_api_limits_fit_the_kernel() {
    let (ns, name, port) = ("n".repeat(63), "s".repeat(63), "p".repeat(15));
    let mut longest = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        let v6 = family == IpFamily::V6;
        let a = |v4: &str, v6s: &str| ip(if v6 { v6s } else { v4 });
        let mut services = Vec::new();
        for (i, policy) in [TrafficPolicy::Cluster, TrafficPolicy::Local]
            .into_iter()
            .enumerate()
        {
            for with_endpoints in [true, false] {
                let k = i * 2 + usize::from(with_endpoints);
                let mut s = svc(
                    &ns,
                    &format!("{}{k}", &name[..62]),
                    &port,
                    &format!("172.30.0.{}", 40 + k),
                    65535,
                );
                s.cluster_ips = vec![a(
                    &format!("172.30.0.{}", 40 + k),
                    &format!("fd00:30::{}", 40 + k),
                )];
                s.node_port = Some(30000 + k as u16);
                s.external_ips = vec![a("192.168.99.22", "2001:db8:ffff:ffff:ffff:ffff:ffff:22")];
                s.load_balancer_ips = vec![a("5.6.7.8", "2001:db8:ffff:ffff:ffff:ffff:ffff:8")];
                s.load_balancer_source_ranges = vec![if v6 {
                    "fd00:1::/64".parse().unwrap()
                } else {
                    "192.168.0.0/24".parse().unwrap()
                }];
                s.external_traffic_policy = policy;
                s.internal_traffic_policy = policy;
                s.health_check_node_port = Some(32000 + k as u16);
                s.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: 86400,
                };
                if with_endpoints {
                    s.endpoints = vec![
                        local_ep(
                            if v6 {
                                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
                            } else {
                                "255.255.255.254"
                            },
                            65535,
                            "node1",
                        ),
                        local_ep(
                            if v6 {
                                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"
                            } else {
                                "255.255.255.253"
                            },
                            65535,
                            "node2",
                        ),
                    ];
                }
                services.push(s);
            }
        }
        let c = RenderConfig {
            family,
            node_ips: vec![a("192.168.0.2", "fd00:1::2")],
            local_detector: LocalDetector::Cidrs(vec![if v6 {
                "fd00:244::/64".parse().unwrap()
            } else {
                "10.0.0.0/8".parse().unwrap()
            }]),
            ..cfg()
        };
        let rs = render(&Model { services }, &c).unwrap();
        let all = comments(&rs);
        assert!(
            all.iter().any(|c| c.contains(" -> [ffff:")) || !v6,
            "{all:#?}"
        );
        for c in &all {
            longest = longest.max(c.len());
        }
    }
    assert_eq!(longest, 199, "the longest comment changed");
}
