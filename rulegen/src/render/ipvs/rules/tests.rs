use super::*;
use crate::config::LocalDetector;
use crate::model::{Model, ServicePort, ServicePortName};

fn sets_for(cfg: &RenderConfig) -> IpSets {
    let sp = ServicePort::cluster_ip(
        ServicePortName::new("ns", "web", "http"),
        Protocol::Tcp,
        if cfg.family == IpFamily::V6 {
            "fd00::10".parse().unwrap()
        } else {
            "10.96.0.10".parse().unwrap()
        },
        80,
    );
    IpSets::for_model(&Model { services: vec![sp] }, cfg)
}

fn cluster_ip_masquerade(cfg: &RenderConfig) -> String {
    let rs = ruleset(cfg, &sets_for(cfg));
    let nat = rs.table("nat").unwrap().chain_rules(KUBE_SERVICES).unwrap();
    nat.lines()
        .find(|l| l.ends_with("-j KUBE-MARK-MASQ"))
        .unwrap()
        .to_string()
}

#[test]
fn the_cluster_ip_masquerade_rule_follows_the_detector() {
    let mut cfg = RenderConfig::default();
    assert_eq!(
        cluster_ip_masquerade(&cfg),
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ"
    );
    cfg.local_detector = LocalDetector::BridgeInterface("cbr0".into());
    assert_eq!(
        cluster_ip_masquerade(&cfg),
        "-A KUBE-SERVICES ! -i cbr0 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"
    );
    cfg.masquerade_all = true;
    assert_eq!(
        cluster_ip_masquerade(&cfg),
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"
    );
}

#[test]
fn rules_of_empty_sets_are_left_out_and_the_fixed_ones_stay() {
    let cfg = RenderConfig::default();
    let rs = ruleset(&cfg, &IpSets::for_model(&Model::default(), &cfg));
    let nat = rs.table("nat").unwrap();
    assert_eq!(
        nat.chain_rules(KUBE_SERVICES).unwrap(),
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n"
    );
    assert_eq!(nat.chain_rules(KUBE_NODE_PORT).unwrap(), "");
    let filter = rs.table("filter").unwrap();
    assert_eq!(
        filter.chain_rules(KUBE_SOURCE_RANGES_FIREWALL).unwrap(),
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP\n"
    );
    assert_eq!(
        filter
            .chain_rules(KUBE_IPVS_FILTER)
            .unwrap()
            .lines()
            .count(),
        6
    );
}

#[test]
fn ipv6_uses_its_loopback_its_set_names_and_icmp6() {
    let cfg = RenderConfig {
        family: IpFamily::V6,
        ..RenderConfig::default()
    };
    let rs = ruleset(&cfg, &sets_for(&cfg));
    let text = rs.to_save_text();
    assert!(
        text.contains("-A KUBE-SERVICES -s ::1/128 -j RETURN\n"),
        "{text}"
    );
    assert!(
        text.contains("--match-set KUBE-6-CLUSTER-IP src,dst"),
        "{text}"
    );
    assert!(text.contains(
        "--match-set KUBE-6-IPVS-IPS dst -j REJECT --reject-with icmp6-port-unreachable\n"
    ));
    assert!(!text.contains("KUBE-CLUSTER-IP "), "{text}");
}
