use super::*;
use crate::model::{ServicePort, ServicePortName, SessionAffinity, TrafficPolicy};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(addr: &str, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::ready(ip(addr), 8080)
    }
}

fn svc(name: &str, cluster_ip: &str, eps: Vec<Endpoint>) -> ServicePort {
    let mut sp = ServicePort::cluster_ip(
        ServicePortName::new("ns", name, "http"),
        Protocol::Tcp,
        ip(cluster_ip),
        80,
    );
    sp.endpoints = eps;
    sp
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        node_ips: vec![ip("192.168.1.10"), ip("10.0.0.10"), ip("127.0.0.1")],
        ..RenderConfig::default()
    }
}

fn table(services: Vec<ServicePort>, cfg: &RenderConfig) -> String {
    virtual_servers(&Model { services }, cfg, DEFAULT_SCHEDULER).to_ipvsadm_text()
}

#[test]
fn a_cluster_ip_is_one_virtual_server_with_its_endpoints() {
    let t = table(
        vec![svc(
            "web",
            "10.96.0.10",
            vec![ep("10.244.2.5", "node-b"), ep("10.244.1.5", "node-a")],
        )],
        &cfg(),
    );
    assert_eq!(
        t,
        "-A -t 10.96.0.10:80 -s rr\n\
         -a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1\n\
         -a -t 10.96.0.10:80 -r 10.244.2.5:8080 -m -w 1\n"
    );
}

#[test]
fn affinity_is_persistence_and_udp_and_ipv6_print_as_ipvsadm_does() {
    let mut dns = svc("dns", "fd00:96::a", vec![]);
    dns.protocol = Protocol::Udp;
    dns.port = 53;
    dns.endpoints = vec![Endpoint::ready(ip("fd00:244::5"), 53)];
    dns.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    let v6 = RenderConfig {
        family: crate::model::IpFamily::V6,
        ..cfg()
    };
    assert_eq!(
        table(vec![dns], &v6),
        "-A -u [fd00:96::a]:53 -s rr -p 10800\n-a -u [fd00:96::a]:53 -r [fd00:244::5]:53 -m -w 1\n"
    );
}

#[test]
fn node_ports_get_a_virtual_server_per_node_address_in_the_filter() {
    let mut sp = svc("np", "10.96.0.11", vec![ep("10.244.1.5", "node-a")]);
    sp.node_port = Some(30080);
    sp.external_ips = vec![ip("192.0.2.7")];
    let t = virtual_servers(
        &Model {
            services: vec![sp.clone()],
        },
        &cfg(),
        "lc",
    );
    let vs: Vec<String> = t
        .virtual_servers
        .iter()
        .map(|v| format!("{}:{} {}", v.addr, v.port, v.scheduler))
        .collect();
    // Loopback is never a node-port address; sorted by address.
    assert_eq!(
        vs,
        [
            "10.0.0.10:30080 lc",
            "10.96.0.11:80 lc",
            "192.0.2.7:80 lc",
            "192.168.1.10:30080 lc"
        ]
    );
    let only = RenderConfig {
        nodeport_addresses: vec!["192.168.0.0/16".parse().unwrap()],
        ..cfg()
    };
    let t = virtual_servers(&Model { services: vec![sp] }, &only, "rr");
    assert_eq!(t.virtual_servers.len(), 3);
    assert!(t.virtual_servers.iter().all(|v| v.addr != ip("10.0.0.10")));
}

#[test]
fn external_traffic_policy_local_prefers_local_endpoints_and_falls_back() {
    let mut sp = svc(
        "lb",
        "10.96.0.12",
        vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
    );
    sp.node_port = Some(30081);
    sp.load_balancer_ips = vec![ip("203.0.113.9")];
    sp.external_traffic_policy = TrafficPolicy::Local;
    let t = virtual_servers(
        &Model {
            services: vec![sp.clone()],
        },
        &cfg(),
        "rr",
    );
    for vs in &t.virtual_servers {
        let rs: Vec<String> = vs.real_servers.iter().map(|r| r.addr.to_string()).collect();
        if vs.addr == ip("10.96.0.12") {
            assert_eq!(
                rs,
                ["10.244.1.5", "10.244.2.5"],
                "cluster IP: every endpoint"
            );
        } else {
            assert_eq!(rs, ["10.244.1.5"], "{}: local only", vs.addr);
        }
    }
    // No local endpoint: external destinations use the cluster's (upstream PR #97081).
    sp.endpoints = vec![ep("10.244.2.5", "node-b")];
    let t = virtual_servers(&Model { services: vec![sp] }, &cfg(), "rr");
    assert!(
        t.virtual_servers
            .iter()
            .all(|vs| vs.real_servers.len() == 1 && vs.real_servers[0].addr == ip("10.244.2.5"))
    );
}

#[test]
fn internal_traffic_policy_local_and_unready_endpoints() {
    let mut sp = svc(
        "itp",
        "10.96.0.13",
        vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
    );
    sp.internal_traffic_policy = TrafficPolicy::Local;
    let t = virtual_servers(
        &Model {
            services: vec![sp.clone()],
        },
        &cfg(),
        "rr",
    );
    assert_eq!(t.virtual_servers[0].real_servers.len(), 1);
    assert_eq!(t.virtual_servers[0].real_servers[0].addr, ip("10.244.1.5"));
    // Not ready (and not terminating-serving): not a real server; the virtual server stays.
    sp.internal_traffic_policy = TrafficPolicy::Cluster;
    sp.endpoints[0].ready = false;
    sp.endpoints[0].serving = false;
    let t = virtual_servers(&Model { services: vec![sp] }, &cfg(), "rr");
    let rs: Vec<IpAddr> = t.virtual_servers[0]
        .real_servers
        .iter()
        .map(|r| r.addr)
        .collect();
    assert_eq!(rs, [ip("10.244.2.5")]);
}

#[test]
fn the_table_does_not_depend_on_model_order() {
    let a = svc("a", "10.96.0.20", vec![ep("10.244.1.1", "node-a")]);
    let b = svc("b", "10.96.0.3", vec![ep("10.244.1.2", "node-b")]);
    let one = table(vec![a.clone(), b.clone()], &cfg());
    let two = table(vec![b, a], &cfg());
    assert_eq!(one, two);
    assert!(one.starts_with("-A -t 10.96.0.3:80"), "{one}");
}

#[test]
fn internal_traffic_policy_local_falls_back_like_upstream() {
    // Only a remote endpoint, internalTrafficPolicy Local.
    let mut sp = svc("itp", "10.96.0.14", vec![ep("10.244.2.5", "node-b")]);
    sp.internal_traffic_policy = TrafficPolicy::Local;
    let reals = |sp: &ServicePort| -> Vec<Vec<IpAddr>> {
        virtual_servers(
            &Model {
                services: vec![sp.clone()],
            },
            &cfg(),
            "rr",
        )
        .virtual_servers
        .iter()
        .map(|v| v.real_servers.iter().map(|r| r.addr).collect())
        .collect()
    };
    // A cluster-only Service has no cluster endpoints to fall back on: the VS stays empty.
    assert_eq!(reals(&sp), [Vec::<IpAddr>::new()]);
    // Reachable from outside (Cluster policy there), it has: the cluster IP's VS falls back to
    // them (upstream's syncEndpoint), as the node port's VSs use them.
    sp.node_port = Some(30500);
    assert_eq!(
        reals(&sp),
        [
            vec![ip("10.244.2.5")],
            vec![ip("10.244.2.5")],
            vec![ip("10.244.2.5")]
        ]
    );
}
