use super::*;
use crate::config::LocalDetector;
use crate::model::TrafficPolicy;
use crate::test_fixtures::{ep, sp};

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        node_ips: vec!["192.168.0.10".parse().unwrap()],
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn plan_of(sp: &ServicePort, cfg: &RenderConfig) -> Decisions {
    let eps: Vec<&Endpoint> = sp.endpoints.iter().collect();
    PortPlan::new(sp, cfg, &NodePlan::new(cfg), &eps)
        .unwrap()
        .decisions
}

#[test]
fn no_endpoints_rejects_everywhere_and_creates_nothing() {
    let d = plan_of(&sp(vec![]), &cfg());
    assert_eq!(d.internal.unserved, Some(Unserved::NoEndpoints));
    assert_eq!(d.external.unserved, Some(Unserved::NoEndpoints));
    assert!(!d.cluster_selection && !d.local_selection && !d.external_dispatch);
}

#[test]
fn external_local_without_local_endpoints_drops_external_traffic_only() {
    let mut s = sp(vec![ep(1, "node-b")]);
    s.node_port = Some(30080);
    s.external_traffic_policy = TrafficPolicy::Local;
    let d = plan_of(&s, &cfg());
    assert!(d.internal.served());
    assert_eq!(d.internal.set, EndpointSet::Cluster);
    assert_eq!(d.external.set, EndpointSet::Local);
    assert_eq!(d.external.unserved, Some(Unserved::NoLocalEndpoints));
    assert!(d.external_dispatch && d.cluster_selection && !d.local_selection);
}

#[test]
fn source_ranges_need_a_load_balancer_ip_and_endpoints() {
    let mut s = sp(vec![ep(1, "node-a")]);
    s.load_balancer_source_ranges = vec!["192.168.0.0/16".parse().unwrap()];
    assert!(!plan_of(&s, &cfg()).firewall);
    s.load_balancer_ips = vec!["203.0.113.10".parse().unwrap()];
    let d = plan_of(&s, &cfg());
    assert!(d.firewall && d.firewall_admits_node);
    s.endpoints.clear();
    assert!(!plan_of(&s, &cfg()).firewall);
}

#[test]
fn cluster_ip_masquerade_follows_the_flags() {
    let s = sp(vec![ep(1, "node-a")]);
    let mut c = cfg();
    assert_eq!(
        plan_of(&s, &c).cluster_ip_masquerade,
        ClusterIpMasquerade::NotFromLocalPod
    );
    c.local_detector = LocalDetector::Cidrs(vec!["fd00::/64".parse().unwrap()]);
    assert_eq!(
        plan_of(&s, &c).cluster_ip_masquerade,
        ClusterIpMasquerade::NoDetector
    );
    c.masquerade_all = true;
    assert_eq!(
        plan_of(&s, &c).cluster_ip_masquerade,
        ClusterIpMasquerade::All
    );
}

#[test]
fn a_local_policy_without_local_endpoints_is_a_fallback_selection() {
    let mut s = sp(vec![ep(1, "node-b")]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    let eps: Vec<&Endpoint> = s.endpoints.iter().collect();
    let c = cfg();
    let plan = PortPlan::new(&s, &c, &NodePlan::new(&c), &eps).unwrap();
    assert_eq!(plan.selection(true), Selection::LocalFallback);
    assert_eq!(plan.selection(false), Selection::Cluster);
    assert_eq!(
        plan.decisions.internal.unserved,
        Some(Unserved::NoLocalEndpoints)
    );
}

#[test]
fn node_ports_answer_where_the_flags_say() {
    let mut c = cfg();
    assert_eq!(
        NodePlan::new(&c).node_port_destinations,
        NodePortDestinations::EveryLocalAddress { loopback: true }
    );
    c.nodeport_addresses = vec!["192.168.0.0/16".parse().unwrap()];
    let node = NodePlan::new(&c);
    assert_eq!(
        node.node_port_destinations,
        NodePortDestinations::Addresses(vec!["192.168.0.10".parse().unwrap()])
    );
    assert_eq!(
        node.node_port_ips,
        vec!["192.168.0.10".parse::<IpAddr>().unwrap()]
    );
}
