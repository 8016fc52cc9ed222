//! Every staleness rule, one test each (the rules are in the module's doc).

use super::*;
use crate::model::{Endpoint, TrafficPolicy};

const CLIENT: &str = "10.244.2.7";
const CLUSTER_IP: &str = "10.96.0.10";
const EXTERNAL_IP: &str = "192.0.2.10";
const LB_IP: &str = "198.51.100.10";
const NODE_IP: &str = "172.18.0.2";
const NODE_PORT: u16 = 30053;
const EP_A: &str = "10.244.1.11";
const EP_B: &str = "10.244.1.12";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        ..RenderConfig::default()
    }
}

fn cfg6() -> RenderConfig {
    RenderConfig {
        family: IpFamily::V6,
        ..cfg()
    }
}

/// `ns/dns:udp` on CLUSTER_IP:53, endpoints EP_A and EP_B on 8053.
fn dns() -> ServicePort {
    let mut sp = ServicePort::cluster_ip(
        ServicePortName::new("ns", "dns", "udp"),
        Protocol::Udp,
        ip(CLUSTER_IP),
        53,
    );
    sp.endpoints = vec![
        Endpoint::ready(ip(EP_A), 8053),
        Endpoint::ready(ip(EP_B), 8053),
    ];
    sp
}

/// `dns()` also reachable on EXTERNAL_IP, LB_IP and NODE_PORT.
fn dns_everywhere() -> ServicePort {
    ServicePort {
        external_ips: vec![ip(EXTERNAL_IP)],
        load_balancer_ips: vec![ip(LB_IP)],
        node_port: Some(NODE_PORT),
        ..dns()
    }
}

fn lookup(services: Vec<ServicePort>) -> Lookup {
    Lookup::build(&Model { services }, &cfg())
}

/// A UDP flow from CLIENT:40000 to `dst:dport`, DNATed to `target:tport`.
fn flow(dst: &str, dport: u16, target: &str, tport: u16) -> Flow {
    Flow {
        proto: IPPROTO_UDP,
        orig_src: ip(CLIENT),
        orig_dst: ip(dst),
        orig_sport: 40000,
        orig_dport: dport,
        reply_src: ip(target),
        reply_sport: tport,
    }
}

#[test]
fn a_flow_dnated_to_a_serving_endpoint_stays() {
    let l = lookup(vec![dns()]);
    assert!(!l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert!(!l.is_stale(&flow(CLUSTER_IP, 53, EP_B, 8053)));
}

#[test]
fn a_flow_dnated_to_a_removed_endpoint_is_stale() {
    let mut sp = dns();
    sp.endpoints.retain(|e| e.ip != ip(EP_A));
    let l = lookup(vec![sp]);
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert!(!l.is_stale(&flow(CLUSTER_IP, 53, EP_B, 8053)));
}

#[test]
fn the_endpoint_port_counts_too() {
    // kubernetes#130542: a changed targetPort leaves flows to the old port stale.
    let l = lookup(vec![dns()]);
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 53)));
}

#[test]
fn the_service_port_counts_too() {
    // kubernetes#130484: each port of a Service has its own endpoint set.
    let mut other = dns();
    other.name = ServicePortName::new("ns", "dns", "alt");
    other.port = 5353;
    other.endpoints = vec![Endpoint::ready(ip(EP_A), 5353)];
    let l = lookup(vec![dns(), other]);
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 5353)));
    assert!(l.is_stale(&flow(CLUSTER_IP, 5353, EP_A, 8053)));
    assert!(!l.is_stale(&flow(CLUSTER_IP, 5353, EP_A, 5353)));
    // A port the Service does not have is not a frontend: never DNATed, never judged.
    assert!(!l.is_stale(&flow(CLUSTER_IP, 54, CLUSTER_IP, 54)));
}

#[test]
fn a_flow_created_while_the_service_had_no_endpoints_is_stale() {
    // Not DNATed: the reply comes from the cluster IP itself.
    let l = lookup(vec![dns()]);
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, CLUSTER_IP, 53)));
}

#[test]
fn a_service_without_serving_endpoints_keeps_no_flow() {
    // kubernetes#139629: scaled to zero, the flows to its dead endpoints go.
    let mut sp = dns_everywhere();
    sp.endpoints.clear();
    let l = lookup(vec![sp]);
    assert_eq!(l.service_ports(), 1);
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, CLUSTER_IP, 53)));
    assert!(l.is_stale(&flow(EXTERNAL_IP, 53, EP_A, 8053)));
    assert!(l.is_stale(&flow(LB_IP, 53, EP_A, 8053)));
    // But its node port judges nothing: it would match every flow to that port number.
    assert!(!l.is_stale(&flow(NODE_IP, NODE_PORT, EP_A, 8053)));
    assert!(!l.is_stale(&flow("203.0.113.5", NODE_PORT, "203.0.113.5", NODE_PORT)));
}

#[test]
fn only_serving_counts_not_ready_policy_topology_or_terminating() {
    let mut sp = dns();
    sp.external_traffic_policy = TrafficPolicy::Local;
    sp.internal_traffic_policy = TrafficPolicy::Local;
    sp.node_port = Some(NODE_PORT);
    let gone = Endpoint {
        ready: false,
        serving: false,
        terminating: true,
        ..Endpoint::ready(ip(EP_A), 8053)
    };
    let draining = Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        node_name: Some("node-b".into()),
        ..Endpoint::ready(ip(EP_B), 8053)
    };
    let remote = Endpoint {
        node_name: Some("node-b".into()),
        ..Endpoint::ready(ip("10.244.3.3"), 8053)
    };
    sp.endpoints = vec![gone, draining, remote];
    let l = lookup(vec![sp]);
    // Not serving: stale.
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    // Serving while terminating, and remote under Local policies: rules no longer pick them,
    // but their existing flows stay, as TCP connections would.
    assert!(!l.is_stale(&flow(CLUSTER_IP, 53, EP_B, 8053)));
    assert!(!l.is_stale(&flow(CLUSTER_IP, 53, "10.244.3.3", 8053)));
    assert!(!l.is_stale(&flow(NODE_IP, NODE_PORT, "10.244.3.3", 8053)));
}

#[test]
fn external_and_load_balancer_ips_are_frontends() {
    let mut sp = dns_everywhere();
    sp.endpoints.retain(|e| e.ip != ip(EP_A));
    let l = lookup(vec![sp]);
    for front in [CLUSTER_IP, EXTERNAL_IP, LB_IP] {
        assert!(l.is_stale(&flow(front, 53, EP_A, 8053)), "{front}");
        assert!(!l.is_stale(&flow(front, 53, EP_B, 8053)), "{front}");
        assert!(l.is_stale(&flow(front, 53, front, 53)), "{front}");
    }
    assert_eq!(l.frontends(), 3);
}

#[test]
fn a_node_port_is_judged_on_any_destination_address() {
    let mut sp = dns_everywhere();
    sp.endpoints.retain(|e| e.ip != ip(EP_A));
    let l = lookup(vec![sp]);
    for dst in [NODE_IP, "127.0.0.1", "10.244.1.1"] {
        assert!(l.is_stale(&flow(dst, NODE_PORT, EP_A, 8053)), "{dst}");
        assert!(!l.is_stale(&flow(dst, NODE_PORT, EP_B, 8053)), "{dst}");
        // Created before the node port had endpoints: not DNATed.
        assert!(l.is_stale(&flow(dst, NODE_PORT, dst, NODE_PORT)), "{dst}");
    }
}

#[test]
fn a_live_frontend_wins_over_another_services_node_port() {
    // Upstream would also apply svc-b's node port rule to svc-a's correct flow.
    let mut a = dns();
    a.port = NODE_PORT;
    let mut b = dns();
    b.name = ServicePortName::new("ns", "b", "");
    b.cluster_ips = vec![ip("10.96.0.20")];
    b.node_port = Some(NODE_PORT);
    b.endpoints = vec![Endpoint::ready(ip("10.244.5.5"), 9999)];
    let l = lookup(vec![a, b]);
    assert!(!l.is_stale(&flow(CLUSTER_IP, NODE_PORT, EP_A, 8053)));
    assert!(l.is_stale(&flow(NODE_IP, NODE_PORT, EP_A, 8053)));
    assert!(!l.is_stale(&flow(NODE_IP, NODE_PORT, "10.244.5.5", 9999)));
}

#[test]
fn a_shared_frontend_keeps_flows_to_either_service() {
    let mut a = dns();
    a.external_ips = vec![ip(EXTERNAL_IP)];
    a.endpoints = vec![Endpoint::ready(ip(EP_A), 8053)];
    let mut b = dns();
    b.name = ServicePortName::new("ns", "b", "");
    b.cluster_ips = vec![ip("10.96.0.20")];
    b.external_ips = vec![ip(EXTERNAL_IP)];
    b.endpoints = vec![Endpoint::ready(ip(EP_B), 8053)];
    let l = lookup(vec![b.clone(), a.clone()]);
    assert!(!l.is_stale(&flow(EXTERNAL_IP, 53, EP_A, 8053)));
    assert!(!l.is_stale(&flow(EXTERNAL_IP, 53, EP_B, 8053)));
    assert!(l.is_stale(&flow(EXTERNAL_IP, 53, "10.244.9.9", 8053)));
    // Each cluster IP still has only its own endpoints.
    assert!(l.is_stale(&flow(CLUSTER_IP, 53, EP_B, 8053)));
}

#[test]
fn other_protocols_and_unrelated_flows_are_never_stale() {
    let mut tcp = dns_everywhere();
    tcp.name = ServicePortName::new("ns", "dns", "tcp");
    tcp.protocol = Protocol::Tcp;
    tcp.endpoints.clear();
    let mut sctp = tcp.clone();
    sctp.name = ServicePortName::new("ns", "dns", "sctp");
    sctp.protocol = Protocol::Sctp;
    let mut udp = dns_everywhere();
    udp.endpoints.retain(|e| e.ip != ip(EP_A));
    let l = lookup(vec![udp.clone(), tcp.clone(), sctp]);
    assert_eq!(l.service_ports(), 1);
    for proto in [6u8, 132, 1] {
        let f = Flow {
            proto,
            ..flow(CLUSTER_IP, 53, EP_A, 8053)
        };
        assert!(!l.is_stale(&f), "proto {proto}");
        let f = Flow {
            proto,
            ..flow(NODE_IP, NODE_PORT, EP_A, 8053)
        };
        assert!(!l.is_stale(&f), "proto {proto}");
    }
    // Flows that have nothing to do with a Service.
    assert!(!l.is_stale(&flow("8.8.8.8", 53, "8.8.8.8", 53)));
    assert!(!l.is_stale(&flow("10.96.0.99", 53, EP_A, 8053)));
    // A TCP-only Service is not in the lookup at all.
    let only_tcp = lookup(vec![tcp]);
    assert!(only_tcp.is_empty());
    assert!(!only_tcp.is_stale(&flow(CLUSTER_IP, 53, CLUSTER_IP, 53)));
    assert!(!only_tcp.needs_reconcile(None));
}

#[test]
fn each_family_judges_its_own_flows_and_endpoints() {
    let mut sp = dns_everywhere();
    sp.cluster_ips.push(ip("fd00:96::10"));
    sp.external_ips.push(ip("2001:db8::10"));
    sp.endpoints.push(Endpoint::ready(ip("fd00:244::11"), 8053));
    let model = Model {
        services: vec![sp.clone()],
    };
    let v4 = Lookup::build(&model, &cfg());
    let v6 = Lookup::build(&model, &cfg6());
    assert_eq!((v4.family(), v6.family()), (IpFamily::V4, IpFamily::V6));
    assert_eq!((v4.frontends(), v6.frontends()), (3, 2));
    let f6 = |dst: &str, dport, target: &str| Flow {
        orig_src: ip("fd00:244:2::7"),
        ..flow(dst, dport, target, 8053)
    };
    assert!(!v6.is_stale(&f6("fd00:96::10", 53, "fd00:244::11")));
    assert!(v6.is_stale(&f6("fd00:96::10", 53, "fd00:244::12")));
    assert!(v6.is_stale(&f6("2001:db8::10", 53, "fd00:244::12")));
    assert!(v6.is_stale(&f6("fd00::2", NODE_PORT, "fd00:244::12")));
    // Each ignores the other family's flows.
    assert!(!v4.is_stale(&f6("fd00:96::10", 53, "fd00:244::12")));
    assert!(!v6.is_stale(&flow(CLUSTER_IP, 53, "10.244.9.9", 8053)));
    assert!(v4.is_stale(&flow(CLUSTER_IP, 53, "10.244.9.9", 8053)));

    // A service port without a cluster IP of the family does not exist for that family, even
    // with an external IP of it (as the iptables renderer has it).
    let mut v4_only = dns();
    v4_only.external_ips = vec![ip("2001:db8::20")];
    let v6 = Lookup::build(
        &Model {
            services: vec![v4_only],
        },
        &cfg6(),
    );
    assert!(v6.is_empty());
}

#[test]
fn a_deleted_service_keeps_no_flow_once() {
    // kubernetes#141371.
    let gone = dns_everywhere();
    let mut stays = dns();
    stays.name = ServicePortName::new("ns", "stays", "");
    stays.cluster_ips = vec![ip("10.96.0.20")];
    let before = lookup(vec![gone, stays.clone()]);
    let mut after = lookup(vec![stays.clone()]);
    assert!(!after.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert_eq!(after.add_removed(&before), 3);
    for front in [CLUSTER_IP, EXTERNAL_IP, LB_IP] {
        assert!(after.is_stale(&flow(front, 53, EP_A, 8053)), "{front}");
        assert!(after.is_stale(&flow(front, 53, front, 53)), "{front}");
        assert!(!after.is_stale(&flow(front, 54, EP_A, 8053)), "{front}");
    }
    // Its node port is not carried over.
    assert!(!after.is_stale(&flow(NODE_IP, NODE_PORT, "10.244.9.9", 8053)));
    assert!(!after.is_stale(&flow("10.96.0.20", 53, EP_A, 8053)));
    assert!(after.needs_reconcile(Some(&before)));
    assert_eq!(after.frontends(), 4);

    // Once reconciled, the next lookup does not inherit the removed frontends.
    let mut next = lookup(vec![stays]);
    assert_eq!(next.add_removed(&after), 0);
    assert!(!next.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert!(!next.needs_reconcile(Some(&after)));

    // Lookups of different families never retire each other's frontends.
    let mut v6 = Lookup::build(&Model::default(), &cfg6());
    assert_eq!(v6.add_removed(&before), 0);
}

#[test]
fn a_frontend_that_moves_to_another_service_is_judged_by_it() {
    let before = lookup(vec![dns()]);
    let mut reused = dns();
    reused.name = ServicePortName::new("ns", "new", "");
    reused.endpoints = vec![Endpoint::ready(ip("10.244.7.7"), 8053)];
    let mut after = lookup(vec![reused]);
    assert_eq!(after.add_removed(&before), 0);
    assert!(after.is_stale(&flow(CLUSTER_IP, 53, EP_A, 8053)));
    assert!(!after.is_stale(&flow(CLUSTER_IP, 53, "10.244.7.7", 8053)));
}

#[test]
fn a_reconcile_is_needed_only_when_a_flow_can_have_become_stale() {
    let mut other = dns();
    other.name = ServicePortName::new("ns", "other", "");
    other.cluster_ips = vec![ip("10.96.0.20")];
    let model = vec![dns_everywhere(), other.clone()];
    let first = lookup(model.clone());
    assert!(first.needs_reconcile(None));

    // The same services in another order, or with changes that keep every serving set.
    let mut same = model.clone();
    same.reverse();
    same[1].endpoints.reverse();
    same[1].endpoints[0].ready = false; // still serving
    same[1].internal_traffic_policy = TrafficPolicy::Local;
    assert!(!lookup(same).needs_reconcile(Some(&first)));

    // An endpoint stops serving, one is added, a node port or external IP changes.
    let mut changed = model.clone();
    changed[0].endpoints[0].serving = false;
    assert!(lookup(changed).needs_reconcile(Some(&first)));
    let mut changed = model.clone();
    changed[1]
        .endpoints
        .push(Endpoint::ready(ip("10.244.8.8"), 8053));
    assert!(lookup(changed).needs_reconcile(Some(&first)));
    let mut changed = model.clone();
    changed[0].node_port = Some(NODE_PORT + 1);
    assert!(lookup(changed).needs_reconcile(Some(&first)));
    let mut changed = model;
    changed[0].external_ips.clear();
    let mut l = lookup(changed);
    assert!(l.needs_reconcile(Some(&first)));
    assert_eq!(l.add_removed(&first), 1);
    assert!(l.is_stale(&flow(EXTERNAL_IP, 53, EP_A, 8053)));

    // Nothing UDP at all: nothing to do, whatever came before.
    assert!(!lookup(vec![]).needs_reconcile(None));
    assert!(!lookup(vec![]).needs_reconcile(Some(&first)));
}
