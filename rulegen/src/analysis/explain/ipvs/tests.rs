use super::*;
use crate::config::LocalDetector;
use crate::model::{Model, SessionAffinity};
use crate::render::ipvs::{IpvsConfig, render};
use crate::test_fixtures::{ep, sp};

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        node_zone: Some("zone-a".into()),
        node_ips: vec!["192.168.0.10".parse().unwrap()],
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

/// Explains the first port of `services` against their own IPVS render.
fn explain_with(services: Vec<ServicePort>, cfg: &RenderConfig, sched: &str) -> IpvsExplanation {
    let model = Model { services };
    let r = render(
        &model,
        cfg,
        &IpvsConfig {
            scheduler: sched.into(),
        },
    )
    .unwrap();
    explain_port(&model.services[0], cfg, &r).unwrap()
}

fn explain(s: ServicePort) -> IpvsExplanation {
    explain_with(vec![s], &cfg(), "rr")
}

fn path(x: &IpvsExplanation, kind: PathKind) -> &IpvsPath {
    x.paths.iter().find(|p| p.kind == kind).unwrap()
}

fn real_servers(p: &IpvsPath) -> Vec<String> {
    p.virtual_servers[0]
        .real_servers
        .iter()
        .map(|r| addr_port(&r.addr, r.port))
        .collect()
}

#[test]
fn cluster_ip_masquerades_what_the_detector_does_not_match() {
    let x = explain(sp(vec![ep(2, "node-b"), ep(1, "node-a")]));
    assert_eq!(x.paths.len(), 1);
    let p = &x.paths[0];
    assert_eq!(
        real_servers(p),
        vec!["10.244.0.1:8080".to_string(), "10.244.0.2:8080".into()]
    );
    let r: Vec<_> = p.routes.iter().map(|r| (r.origin, r.masquerade)).collect();
    assert_eq!(
        r,
        vec![
            (IpvsOrigin::LocalPod, None),
            (
                IpvsOrigin::NotLocalPod,
                Some(IpvsMasquerade::NotFromLocalPod)
            ),
        ]
    );
    assert_eq!(p.routes[0].matched, vec!["KUBE-CLUSTER-IP"]);
    assert_eq!(x.local_traffic.as_deref(), Some("source in 10.244.0.0/16"));
    assert_eq!(
        x.endpoints[0].internal,
        Membership::RealServer { weight: 1 }
    );
    assert!(x.external_selection.is_none());
}

#[test]
fn cluster_ip_masquerade_all_and_no_detector() {
    let mut c = cfg();
    c.masquerade_all = true;
    let x = explain_with(vec![sp(vec![ep(1, "node-a")])], &c, "rr");
    let r = &x.paths[0].routes;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].origin, IpvsOrigin::Any);
    assert_eq!(r[0].masquerade, Some(IpvsMasquerade::MasqueradeAll));
    assert_eq!(x.local_traffic, None);

    let mut c = cfg();
    c.local_detector = LocalDetector::None;
    let x = explain_with(vec![sp(vec![ep(1, "node-a")])], &c, "rr");
    let r: Vec<_> = x.paths[0]
        .routes
        .iter()
        .map(|r| (r.origin, r.masquerade))
        .collect();
    assert_eq!(
        r,
        vec![
            (
                IpvsOrigin::FromServiceAddress,
                Some(IpvsMasquerade::FromServiceAddress)
            ),
            (IpvsOrigin::OtherSources, None),
        ]
    );
}

#[test]
fn external_paths_masquerade_under_cluster_policy_only() {
    let mut s = sp(vec![ep(1, "node-a"), ep(2, "node-b")]);
    s.node_port = Some(30080);
    s.external_ips = vec!["192.0.2.5".parse().unwrap()];
    s.load_balancer_ips = vec!["198.51.100.5".parse().unwrap()];
    let x = explain(s.clone());
    for (kind, m, set) in [
        (
            PathKind::NodePort,
            IpvsMasquerade::NodePort,
            "KUBE-NODE-PORT-TCP",
        ),
        (
            PathKind::ExternalIp,
            IpvsMasquerade::ExternalIp,
            "KUBE-EXTERNAL-IP",
        ),
        (
            PathKind::LoadBalancerIp,
            IpvsMasquerade::LoadBalancer,
            "KUBE-LOAD-BALANCER",
        ),
    ] {
        let p = path(&x, kind);
        assert_eq!(p.routes.len(), 1, "{kind:?}");
        assert_eq!(p.routes[0].masquerade, Some(m), "{kind:?}");
        assert_eq!(p.routes[0].matched, vec![set.to_string()], "{kind:?}");
        assert_eq!(p.selection, Selection::Cluster);
        assert_eq!(real_servers(p).len(), 2);
    }
    assert_eq!(
        path(&x, PathKind::NodePort).virtual_servers[0].addr,
        "192.168.0.10".parse::<IpAddr>().unwrap()
    );

    s.external_traffic_policy = TrafficPolicy::Local;
    let x = explain(s);
    for (kind, last) in [
        (PathKind::NodePort, "KUBE-NODE-PORT-LOCAL-TCP"),
        (PathKind::ExternalIp, "KUBE-EXTERNAL-IP-LOCAL"),
        (PathKind::LoadBalancerIp, "KUBE-LOAD-BALANCER-LOCAL"),
    ] {
        let p = path(&x, kind);
        assert_eq!(p.routes[0].masquerade, None, "{kind:?}");
        assert_eq!(p.routes[0].matched.last().unwrap(), last);
        assert_eq!(p.selection, Selection::Local);
        assert_eq!(real_servers(p), vec!["10.244.0.1:8080".to_string()]);
    }
    // The cluster IP keeps the cluster's endpoints; the other node's is out of the rest.
    assert_eq!(x.internal_selection, Selection::Cluster);
    assert_eq!(
        x.endpoints[1].internal,
        Membership::RealServer { weight: 1 }
    );
    assert_eq!(
        x.endpoints[1].external,
        Some(Membership::Excluded(Exclusion::OtherNode(Some(
            "node-b".into()
        ))))
    );
}

#[test]
fn local_policy_without_local_endpoints_falls_back_to_the_cluster() {
    let mut s = sp(vec![ep(2, "node-b"), ep(3, "node-c")]);
    s.node_port = Some(30080);
    s.external_traffic_policy = TrafficPolicy::Local;
    let x = explain(s);
    assert_eq!(x.external_selection, Some(Selection::LocalFallback));
    let np = path(&x, PathKind::NodePort);
    assert_eq!(np.selection, Selection::LocalFallback);
    assert_eq!(real_servers(np).len(), 2);
    // Still not masqueraded: KUBE-NODE-PORT-LOCAL-TCP returns before the mark.
    assert_eq!(np.routes[0].masquerade, None);
    assert_eq!(np.routes[0].verdict, IpvsVerdict::RealServers);
    assert!(
        x.endpoints
            .iter()
            .all(|e| e.external == Some(Membership::RealServer { weight: 1 }))
    );
}

#[test]
fn internal_local_only_service_has_nothing_to_fall_back_to() {
    let mut s = sp(vec![ep(2, "node-b")]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    let x = explain(s);
    assert_eq!(x.internal_selection, Selection::LocalFallback);
    assert!(x.paths[0].virtual_servers[0].real_servers.is_empty());
    assert_eq!(x.paths[0].routes[0].verdict, IpvsVerdict::NoRealServers);
    assert_eq!(
        x.endpoints[0].internal,
        Membership::Excluded(Exclusion::OtherNode(Some("node-b".into())))
    );
}

#[test]
fn reasons_for_leaving_endpoints_out() {
    let mut unready = ep(1, "node-a");
    unready.ready = false;
    let mut term = ep(2, "node-a");
    term.ready = false;
    term.terminating = true;
    let mut gone = ep(3, "node-a");
    gone.ready = false;
    gone.serving = false;
    gone.terminating = true;
    let x = explain(sp(vec![unready, term, gone, ep(4, "node-b")]));
    let why: Vec<_> = x.endpoints.iter().map(|e| e.internal.clone()).collect();
    assert_eq!(
        why,
        vec![
            Membership::Excluded(Exclusion::NotReady),
            Membership::Excluded(Exclusion::TerminatingWithReady),
            Membership::Excluded(Exclusion::TerminatingNotServing),
            Membership::RealServer { weight: 1 },
        ]
    );
    // Every local endpoint, ready or not, is in KUBE-LOOP-BACK.
    let loopback: Vec<_> = x
        .ipset_members
        .iter()
        .filter(|m| m.set == "KUBE-LOOP-BACK")
        .map(|m| m.member.as_str())
        .collect();
    assert_eq!(
        loopback,
        vec![
            "10.244.0.1,tcp:8080,10.244.0.1",
            "10.244.0.2,tcp:8080,10.244.0.2",
            "10.244.0.3,tcp:8080,10.244.0.3"
        ]
    );
}

#[test]
fn no_endpoints_leave_every_virtual_server_empty() {
    let mut s = sp(vec![]);
    s.node_port = Some(30080);
    let x = explain(s);
    assert_eq!(x.paths.len(), 2);
    for p in &x.paths {
        assert!(p.virtual_servers[0].real_servers.is_empty());
        // One row: the detector's split only decided masquerading.
        assert_eq!(p.routes.len(), 1, "{:?}", p.kind);
        assert_eq!(p.routes[0].origin, IpvsOrigin::Any);
        assert_eq!(p.routes[0].verdict, IpvsVerdict::NoRealServers);
        assert_eq!(p.routes[0].masquerade, None);
    }
}

#[test]
fn source_ranges_firewall_and_the_node_itself() {
    let mut s = sp(vec![ep(1, "node-b")]);
    s.node_port = Some(30443);
    s.load_balancer_ips = vec!["198.51.100.20".parse().unwrap()];
    s.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    let x = explain(s.clone());
    let lb = path(&x, PathKind::LoadBalancerIp);
    assert_eq!(lb.source_ranges, vec!["203.0.113.0/24"]);
    let r: Vec<_> = lb.routes.iter().map(|r| (r.origin, r.verdict)).collect();
    assert_eq!(
        r,
        vec![
            (IpvsOrigin::InSourceRanges, IpvsVerdict::RealServers),
            (IpvsOrigin::ThisNode, IpvsVerdict::DropNodeAccess),
            (
                IpvsOrigin::OutsideSourceRanges,
                IpvsVerdict::DropSourceRanges
            ),
        ]
    );
    assert_eq!(
        lb.routes[0].matched,
        vec![
            "KUBE-LOAD-BALANCER-FW",
            "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            "KUBE-LOAD-BALANCER"
        ]
    );

    // A range holding the node's address lets the node in (KUBE-LOAD-BALANCER-SOURCE-IP).
    s.load_balancer_source_ranges
        .push("192.168.0.0/24".parse().unwrap());
    let x = explain(s);
    let lb = path(&x, PathKind::LoadBalancerIp);
    assert_eq!(lb.routes[1].origin, IpvsOrigin::ThisNode);
    assert_eq!(lb.routes[1].verdict, IpvsVerdict::RealServers);
    assert_eq!(lb.routes[1].matched[1], "KUBE-LOAD-BALANCER-SOURCE-IP");
    assert!(x.ipset_members.contains(&SetMember {
        set: "KUBE-LOAD-BALANCER-SOURCE-IP".into(),
        member: "198.51.100.20,tcp:80,198.51.100.20".into(),
    }));
}

#[test]
fn a_service_port_that_is_also_a_node_port_is_marked_on_every_local_address() {
    let mut web = sp(vec![ep(1, "node-a")]);
    web.port = 30080;
    let mut other = sp(vec![ep(2, "node-b")]);
    other.name = ServicePortName::new("ns", "other", "http");
    other.cluster_ips = vec!["10.96.0.21".parse().unwrap()];
    other.node_port = Some(30080);
    let x = explain_with(vec![web, other], &cfg(), "rr");
    let r = &x.paths[0].routes;
    assert_eq!(r[0].origin, IpvsOrigin::LocalPod);
    assert_eq!(r[0].masquerade, Some(IpvsMasquerade::NodePortNumber));
    assert_eq!(r[0].matched, vec!["KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP"]);
    // A reason already there stays the first one.
    assert_eq!(r[1].masquerade, Some(IpvsMasquerade::NotFromLocalPod));
}

#[test]
fn scheduler_persistence_and_members_come_from_the_render() {
    let mut s = sp(vec![ep(1, "node-a")]);
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    s.node_port = Some(30080);
    s.health_check_node_port = Some(32000);
    s.external_traffic_policy = TrafficPolicy::Local;
    let x = explain_with(vec![s], &cfg(), "mh");
    for p in &x.paths {
        let vs = &p.virtual_servers[0];
        assert_eq!(vs.scheduler, "mh");
        assert_eq!(vs.persistence, Some(600));
        assert_eq!(scheduler_flags(vs), vec!["mh-port"]);
    }
    assert_eq!(x.health_check_node_port, Some(32000));
    let members: Vec<String> = x
        .ipset_members
        .iter()
        .map(|m| format!("{} {}", m.set, m.member))
        .collect();
    assert_eq!(
        members,
        vec![
            "KUBE-LOOP-BACK 10.244.0.1,tcp:8080,10.244.0.1",
            "KUBE-CLUSTER-IP 10.96.0.20,tcp:80",
            "KUBE-NODE-PORT-TCP 30080",
            "KUBE-NODE-PORT-LOCAL-TCP 30080",
            "KUBE-HEALTH-CHECK-NODE-PORT 32000",
            "KUBE-IPVS-IPS 10.96.0.20",
        ]
    );
}

#[test]
fn ipv6_uses_the_family_set_names() {
    let mut c = cfg();
    c.family = IpFamily::V6;
    c.local_detector = LocalDetector::Cidrs(vec!["fd00:244::/64".parse().unwrap()]);
    let mut s = sp(vec![Endpoint {
        node_name: Some("node-a".into()),
        ..Endpoint::ready("fd00:244::5".parse().unwrap(), 8080)
    }]);
    s.cluster_ips = vec!["fd00:96::20".parse().unwrap()];
    let x = explain_with(vec![s], &c, "rr");
    assert_eq!(x.endpoints[0].address, "[fd00:244::5]:8080");
    assert_eq!(x.paths[0].routes[0].matched, vec!["KUBE-6-CLUSTER-IP"]);
    assert!(
        x.ipset_members
            .iter()
            .any(|m| m.set == "KUBE-6-LOOP-BACK" && m.member == "fd00:244::5,tcp:8080,fd00:244::5")
    );
}

#[test]
fn a_node_port_without_node_addresses_has_no_virtual_server() {
    let mut c = cfg();
    c.nodeport_addresses = vec!["172.16.0.0/12".parse().unwrap()];
    let mut s = sp(vec![ep(1, "node-a")]);
    s.node_port = Some(30080);
    let x = explain_with(vec![s], &c, "rr");
    let np = path(&x, PathKind::NodePort);
    assert!(np.virtual_servers.is_empty());
    assert!(np.routes.is_empty());
    assert_eq!(np.port, 30080);
    assert_eq!(x.endpoints[0].external, Some(Membership::NoVirtualServer));
    assert!(
        !x.ipset_members
            .iter()
            .any(|m| m.set.starts_with("KUBE-NODE-PORT"))
    );
}

#[test]
fn a_virtual_server_another_port_claimed_first_is_not_this_ports() {
    let mut first = sp(vec![ep(1, "node-a")]);
    first.name = ServicePortName::new("ns", "aaa", "http");
    first.cluster_ips = vec!["10.96.0.30".parse().unwrap()];
    first.external_ips = vec!["192.0.2.9".parse().unwrap()];
    let mut web = sp(vec![ep(2, "node-b")]);
    web.external_ips = vec!["192.0.2.9".parse().unwrap()];
    let model = Model {
        services: vec![first, web],
    };
    let r = render(&model, &cfg(), &IpvsConfig::default()).unwrap();
    let x = explain_port(&model.services[1], &cfg(), &r).unwrap();
    let ext = path(&x, PathKind::ExternalIp);
    assert_eq!(ext.virtual_servers[0].service, "ns/aaa:http");
    assert_eq!(x.endpoints[0].external, Some(Membership::OtherOwner));
}
