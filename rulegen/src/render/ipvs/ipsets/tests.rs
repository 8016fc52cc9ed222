use super::*;
use crate::model::{Endpoint, ServicePort, ServicePortName, TrafficPolicy};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(family: IpFamily, node_ips: &[&str]) -> RenderConfig {
    RenderConfig {
        family,
        node_name: "node-a".into(),
        node_ips: node_ips.iter().map(|s| ip(s)).collect(),
        ..RenderConfig::default()
    }
}

fn svc(name: &str, protocol: Protocol, cluster_ip: &str) -> ServicePort {
    ServicePort::cluster_ip(
        ServicePortName::new("ns", name, "p"),
        protocol,
        ip(cluster_ip),
        80,
    )
}

fn ep(addr: &str, node: &str, ready: bool) -> Endpoint {
    let mut e = Endpoint::ready(ip(addr), 8080);
    e.node_name = Some(node.into());
    e.ready = ready;
    e
}

fn members(sets: &IpSets, id: SetId) -> Vec<&str> {
    sets.get(id).entries.iter().map(String::as_str).collect()
}

#[test]
fn ipv6_names_gain_a_6_and_are_cut_to_31_characters() {
    assert_eq!(
        SetId::LoadBalancerSourceCidr.name(IpFamily::V6),
        "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    );
    assert_eq!(
        SetId::NodePortLocalSctp.name(IpFamily::V6),
        "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"
    );
    assert_eq!(SetId::ClusterIp.name(IpFamily::V6), "KUBE-6-CLUSTER-IP");
    assert_eq!(SetId::ClusterIp.name(IpFamily::V4), "KUBE-CLUSTER-IP");
    for id in SetId::ALL {
        assert!(id.name(IpFamily::V6).len() <= MAX_NAME_LEN, "{id:?}");
    }
}

#[test]
fn loop_back_holds_every_local_endpoint_ready_or_not_and_nothing_remote() {
    let mut web = svc("web", Protocol::Tcp, "10.96.0.10");
    web.endpoints = vec![
        ep("10.244.1.5", "node-a", true),
        ep("10.244.1.6", "node-a", false),
        ep("10.244.2.5", "node-b", true),
    ];
    let sets = IpSets::for_model(
        &Model {
            services: vec![web],
        },
        &cfg(IpFamily::V4, &[]),
    );
    assert_eq!(
        members(&sets, SetId::LoopBack),
        [
            "10.244.1.5,tcp:8080,10.244.1.5",
            "10.244.1.6,tcp:8080,10.244.1.6"
        ]
    );
    assert_eq!(members(&sets, SetId::ClusterIp), ["10.96.0.10,tcp:80"]);
    assert_eq!(members(&sets, SetId::IpvsIps), ["10.96.0.10"]);
}

#[test]
fn node_ports_need_a_node_address_and_sctp_ones_name_each_address() {
    let mut sctp = svc("sig", Protocol::Sctp, "10.96.0.11");
    sctp.node_port = Some(30001);
    sctp.external_traffic_policy = TrafficPolicy::Local;
    let mut lb = svc("lb", Protocol::Tcp, "10.96.0.12");
    lb.node_port = Some(30002);
    lb.health_check_node_port = Some(32000);
    lb.external_traffic_policy = TrafficPolicy::Local;
    lb.load_balancer_ips = vec![ip("198.51.100.1")];
    let model = Model {
        services: vec![sctp, lb],
    };
    let sets = IpSets::for_model(&model, &cfg(IpFamily::V4, &["192.168.0.10", "172.16.0.10"]));
    let sctp_members = ["172.16.0.10,sctp:30001", "192.168.0.10,sctp:30001"];
    assert_eq!(members(&sets, SetId::NodePortSctp), sctp_members);
    assert_eq!(members(&sets, SetId::NodePortLocalSctp), sctp_members);
    assert_eq!(members(&sets, SetId::NodePortTcp), ["30002"]);
    assert_eq!(members(&sets, SetId::NodePortLocalTcp), ["30002"]);
    assert_eq!(members(&sets, SetId::HealthCheckNodePort), ["32000"]);
    assert_eq!(
        members(&sets, SetId::LoadBalancerLocal),
        ["198.51.100.1,tcp:80"]
    );
    // Without a node address upstream skips the node port and everything after it.
    let sets = IpSets::for_model(&model, &cfg(IpFamily::V4, &[]));
    assert!(sets.is_empty(SetId::NodePortSctp));
    assert!(sets.is_empty(SetId::NodePortTcp));
    assert!(sets.is_empty(SetId::HealthCheckNodePort));
    assert_eq!(members(&sets, SetId::LoadBalancer), ["198.51.100.1,tcp:80"]);
}

#[test]
fn source_ranges_allow_the_node_through_the_vip_or_block_it_on_output() {
    let mut lb = svc("lb", Protocol::Tcp, "10.96.0.12");
    lb.load_balancer_ips = vec![ip("198.51.100.1"), ip("192.168.0.10")];
    lb.load_balancer_source_ranges = vec![
        "203.0.113.7/32".parse().unwrap(),
        "203.0.113.0/25".parse().unwrap(),
    ];
    let model = Model {
        services: vec![lb.clone()],
    };
    let sets = IpSets::for_model(&model, &cfg(IpFamily::V4, &["192.168.0.10"]));
    // A host range is listed by the kernel without its /32: so is ours.
    assert_eq!(
        members(&sets, SetId::LoadBalancerSourceCidr),
        [
            "192.168.0.10,tcp:80,203.0.113.0/25",
            "192.168.0.10,tcp:80,203.0.113.7",
            "198.51.100.1,tcp:80,203.0.113.0/25",
            "198.51.100.1,tcp:80,203.0.113.7"
        ]
    );
    assert!(sets.is_empty(SetId::LoadBalancerSourceIp));
    assert_eq!(
        sets.no_node_access,
        [
            (ip("192.168.0.10"), Protocol::Tcp, 80),
            (ip("198.51.100.1"), Protocol::Tcp, 80)
        ]
    );
    // A VIP that is already the node's address is not bound to kube-ipvs0.
    assert_eq!(
        members(&sets, SetId::IpvsIps),
        ["10.96.0.12", "198.51.100.1"]
    );

    lb.load_balancer_source_ranges
        .push("192.168.0.0/24".parse().unwrap());
    let sets = IpSets::for_model(
        &Model { services: vec![lb] },
        &cfg(IpFamily::V4, &["192.168.0.10"]),
    );
    assert_eq!(
        members(&sets, SetId::LoadBalancerSourceIp),
        [
            "192.168.0.10,tcp:80,192.168.0.10",
            "198.51.100.1,tcp:80,198.51.100.1"
        ]
    );
    assert!(sets.no_node_access.is_empty());
}

#[test]
fn external_ips_go_to_one_set_by_policy_and_other_families_are_left_out() {
    let mut a = svc("a", Protocol::Udp, "10.96.0.20");
    a.external_ips = vec![ip("192.0.2.1"), ip("2001:db8::1")];
    let mut b = svc("b", Protocol::Tcp, "10.96.0.21");
    b.external_ips = vec![ip("192.0.2.2")];
    b.external_traffic_policy = TrafficPolicy::Local;
    let sets = IpSets::for_model(
        &Model {
            services: vec![a, b],
        },
        &cfg(IpFamily::V4, &[]),
    );
    assert_eq!(members(&sets, SetId::ExternalIp), ["192.0.2.1,udp:80"]);
    assert_eq!(members(&sets, SetId::ExternalIpLocal), ["192.0.2.2,tcp:80"]);
}

#[test]
fn the_restore_script_swaps_a_filled_copy_into_each_set() {
    let sets = IpSets::for_model(
        &Model {
            services: vec![svc("web", Protocol::Tcp, "fd00::10")],
        },
        &cfg(IpFamily::V6, &[]),
    );
    let mut script = String::new();
    sets.write_restore_script(&mut script, "KUBE-TMP-", None)
        .unwrap();
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(
        &lines[5..11],
        [
            "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536 -exist",
            "create KUBE-TMP-1 hash:ip,port family inet6 hashsize 1024 maxelem 65536 -exist",
            "flush KUBE-TMP-1",
            "add KUBE-TMP-1 fd00::10,tcp:80",
            "swap KUBE-TMP-1 KUBE-6-CLUSTER-IP",
            "destroy KUBE-TMP-1",
        ]
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("swap ")).count(),
        SetId::ALL.len()
    );
    assert!(script.contains("create KUBE-6-NODE-PORT-TCP bitmap:port range 0-65535 -exist\n"));
}

#[test]
fn a_kernel_save_compares_equal_to_ours_up_to_initval_and_member_order() {
    let mut web = svc("web", Protocol::Tcp, "10.96.0.10");
    web.external_ips = vec![ip("192.0.2.1")];
    let sets = IpSets::for_model(
        &Model {
            services: vec![web, svc("db", Protocol::Tcp, "10.96.0.9")],
        },
        &cfg(IpFamily::V4, &[]),
    );
    let ours = sets.to_save_text();
    let kernel = ours
        .replace(" bucketsize 12\n", " bucketsize 12 initval 0x1234abcd\n")
        .replace(
            "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\nadd KUBE-CLUSTER-IP 10.96.0.9,tcp:80\n",
            "add KUBE-CLUSTER-IP 10.96.0.9,tcp:80\nadd KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n",
        );
    assert_ne!(kernel, ours);
    assert_eq!(comparable_save(&kernel), comparable_save(&ours));
    assert_eq!(comparable_save(&ours), ours);
    let other = kernel.replace("10.96.0.9,tcp:80", "10.96.0.8,tcp:80");
    assert_ne!(comparable_save(&other), ours);
}

#[test]
fn the_restore_script_leaves_out_the_sets_the_kernel_already_holds() {
    let one = Model {
        services: vec![svc("web", Protocol::Tcp, "10.96.0.10")],
    };
    let mut two = one.clone();
    two.services.push(svc("db", Protocol::Udp, "10.96.0.9"));
    let c = cfg(IpFamily::V4, &[]);
    let (a, b) = (IpSets::for_model(&one, &c), IpSets::for_model(&two, &c));
    let script = |sets: &IpSets, applied: Option<&IpSets>| {
        let mut s = String::new();
        sets.write_restore_script(&mut s, "T-", applied).unwrap();
        s
    };
    assert_eq!(script(&a, Some(&a)), "");
    let changed = script(&b, Some(&a));
    let swapped: Vec<&str> = changed
        .lines()
        .filter_map(|l| l.strip_prefix("swap "))
        .collect();
    assert_eq!(swapped, ["T-1 KUBE-CLUSTER-IP", "T-16 KUBE-IPVS-IPS"]);
    // Another family's sets are never "already there".
    let v6 = IpSets::for_model(&Model::default(), &cfg(IpFamily::V6, &[]));
    let v4 = IpSets::for_model(&Model::default(), &c);
    assert_eq!(
        script(&v4, Some(&v6)).matches("swap ").count(),
        SetId::ALL.len()
    );
}

/// Issue #15 (4): hash:ip,port,net refuses a /0 member, and one refused member makes
/// `ipset restore` stop there; an all-addresses source range is its two /1 halves instead, which
/// admit the same clients (and the node, through the VIP).
#[test]
fn an_all_addresses_source_range_is_held_as_its_two_halves() {
    for (family, vip, all, halves, node) in [
        (
            IpFamily::V4,
            "198.51.100.8",
            "0.0.0.0/0",
            ["0.0.0.0/1", "128.0.0.0/1"],
            "192.168.0.10",
        ),
        (
            IpFamily::V6,
            "2001:db8:100::8",
            "::/0",
            ["8000::/1", "::/1"],
            "2001:db8::10",
        ),
    ] {
        let mut s = svc(
            "open",
            Protocol::Tcp,
            if family == IpFamily::V4 {
                "10.96.0.30"
            } else {
                "fd00:96::30"
            },
        );
        s.load_balancer_ips = vec![ip(vip)];
        s.load_balancer_source_ranges = vec![all.parse().unwrap()];
        let sets = IpSets::for_model(&Model { services: vec![s] }, &cfg(family, &[node]));
        let want: Vec<String> = halves.iter().map(|h| format!("{vip},tcp:80,{h}")).collect();
        assert_eq!(
            members(&sets, SetId::LoadBalancerSourceCidr),
            want,
            "{family:?}"
        );
        assert!(
            members(&sets, SetId::LoadBalancerSourceCidr)
                .iter()
                .all(|m| !m.ends_with("/0")),
            "{family:?}"
        );
        assert_eq!(
            members(&sets, SetId::LoadBalancerSourceIp),
            [format!("{vip},tcp:80,{vip}")],
            "{family:?}: the node is in the range"
        );
        assert!(sets.no_node_access.is_empty());
    }
}
