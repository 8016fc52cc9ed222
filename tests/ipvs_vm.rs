//! Issue #6: the IPVS table rulegen renders, loaded into a real IPVS kernel (a qemu VM, see
//! `support::vm`): `ipvsadm -R` accepts the text and `ipvsadm -Sn` gives the same table back.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use rulegen::ipvs::{DEFAULT_SCHEDULER, virtual_servers};
use rulegen::{
    Endpoint, IpFamily, Model, Protocol, RenderConfig, ServicePort, ServicePortName,
    SessionAffinity, TrafficPolicy,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(addr: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::ready(ip(addr), port)
    }
}

fn port(name: &str, protocol: Protocol, cluster_ip: &str, port: u16) -> ServicePort {
    ServicePort::cluster_ip(
        ServicePortName::new("default", name, "p"),
        protocol,
        ip(cluster_ip),
        port,
    )
}

/// Every kind of virtual server: cluster IPs (TCP and UDP), affinity, node ports on two node
/// addresses, an external IP, a Local-policy load balancer, a Service without endpoints, IPv6.
fn model() -> Model {
    let mut web = port("web", Protocol::Tcp, "10.96.0.10", 80);
    web.endpoints = vec![
        ep("10.244.1.5", 8080, "node-a"),
        ep("10.244.2.5", 8080, "node-b"),
    ];
    web.node_port = Some(30080);
    web.external_ips = vec![ip("192.0.2.7")];
    let mut dns = port("dns", Protocol::Udp, "10.96.0.53", 53);
    dns.endpoints = vec![ep("10.244.1.9", 53, "node-a")];
    dns.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    let mut lb = port("lb", Protocol::Tcp, "10.96.0.20", 443);
    lb.endpoints = vec![
        ep("10.244.1.6", 8443, "node-a"),
        ep("10.244.2.6", 8443, "node-b"),
    ];
    lb.node_port = Some(31443);
    lb.load_balancer_ips = vec![ip("203.0.113.9")];
    lb.external_traffic_policy = TrafficPolicy::Local;
    let empty = port("empty", Protocol::Tcp, "10.96.0.30", 80);
    let mut v6 = port("v6", Protocol::Tcp, "fd00:96::10", 80);
    v6.cluster_ips = vec![ip("fd00:96::10")];
    v6.endpoints = vec![ep("fd00:244::5", 8080, "node-a")];
    Model {
        services: vec![web, dns, lb, empty, v6],
    }
}

/// An `ipvsadm -S` text as virtual service → its real servers (the kernel lists services in
/// hash order, so only the sets compare).
fn parse(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("-A ") {
            out.entry(line.to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix("-a ") {
            let service = rest.split(" -r ").next().unwrap();
            let key = out
                .keys()
                .find(|k| k[3..].starts_with(service))
                .unwrap_or_else(|| panic!("real server before its service: {line}"))
                .clone();
            out.get_mut(&key).unwrap().insert(line.to_string());
        } else {
            panic!("unexpected line {line:?} in:\n{text}");
        }
    }
    out
}

#[test]
fn the_rendered_table_loads_into_a_real_ipvs_kernel_unchanged() {
    let cfg = |family| RenderConfig {
        family,
        node_name: "node-a".into(),
        node_ips: vec![ip("192.168.1.10"), ip("172.16.0.10"), ip("fd00:1::10")],
        ..RenderConfig::default()
    };
    let mut text = String::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        text.push_str(
            &virtual_servers(&model(), &cfg(family), DEFAULT_SCHEDULER).to_ipvsadm_text(),
        );
    }
    let ours = parse(&text);
    assert_eq!(ours.len(), 11, "{text}");
    let out = support::vm::run_in_ipvs_vm(
        &[("table", &text)],
        "ipvsadm -R < /table && echo RESTORED\nipvsadm -Sn\n",
    );
    let (status, saved) = out.split_once('\n').unwrap_or((&out, ""));
    assert_eq!(
        status.trim(),
        "RESTORED",
        "ipvsadm -R refused the table:\n{out}\n--- table:\n{text}"
    );
    assert_eq!(
        parse(saved),
        ours,
        "ipvsadm -Sn:\n{saved}\n--- ours:\n{text}"
    );
}
