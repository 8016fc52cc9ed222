//! Issue #6: what IPVS mode renders, loaded into a real IPVS kernel (a qemu VM, see
//! `support::vm`): `ipvsadm -R` accepts the table and `ipvsadm -Sn` gives it back; every golden
//! case's three dry-run parts load with their own tools and save back unchanged.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

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
        "ipvsadm -R < table && echo RESTORED\nipvsadm -Sn\n",
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

/// The three parts of an IPVS dry run, by header.
fn parts(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            current = Some(h.to_string());
            out.entry(h.to_string()).or_default();
            continue;
        }
        let part = current
            .as_ref()
            .unwrap_or_else(|| panic!("a line before the first header: {line}"));
        let t = out.get_mut(part).unwrap();
        t.push_str(line);
        t.push('\n');
    }
    out
}

/// `ipset save` text with the random `initval`s removed and each set's members sorted.
fn normalize_ipset(text: &str) -> String {
    let mut out = String::new();
    let mut members: Vec<&str> = Vec::new();
    let flush = |out: &mut String, members: &mut Vec<&str>| {
        members.sort();
        for m in members.drain(..) {
            out.push_str(m);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with("create ") {
            flush(&mut out, &mut members);
            let line = match line.find(" initval ") {
                Some(i) => &line[..i],
                None => line,
            };
            out.push_str(line);
            out.push('\n');
        } else if line.starts_with("add ") {
            members.push(line);
        }
    }
    flush(&mut out, &mut members);
    out
}

/// `iptables-save` text as table name → its lines (no `#` lines, counters zeroed).
fn iptables_tables(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        }
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &line[..i]),
            _ => line.to_string(),
        };
        let t = out.entry(table.clone()).or_default();
        t.push_str(&line);
        t.push('\n');
    }
    out
}

/// Every golden case's IPVS dry run (`expected.ipvs`, `expected.ipvs6`), loaded part by part
/// into the VM's kernel with `ipvsadm -R`, `ipset restore` and `iptables-restore`, and saved back
/// with `ipvsadm -Sn`, `ipset save` and `iptables-save`: each equals the part (up to the order
/// the kernel lists virtual servers and set members in, and ipset's random `initval`).
#[test]
fn every_golden_ipvs_case_loads_into_a_real_kernel_and_saves_back_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut cases: Vec<(String, String, bool)> = Vec::new();
    for entry in fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        for (file, v6) in [("expected.ipvs", false), ("expected.ipvs6", true)] {
            if let Ok(text) = fs::read_to_string(dir.join(file)) {
                let name = format!("{}/{file}", dir.file_name().unwrap().to_string_lossy());
                cases.push((name, text, v6));
            }
        }
    }
    cases.sort();
    assert!(cases.len() >= 30, "only {} IPVS golden files", cases.len());
    let dir = support::TempDir::new("ipvs-golden");
    let mut script = String::from(
        "ip link add rs type dummy\nip link set rs up\n\
         ip route add default dev rs\nip -6 route add default dev rs\n",
    );
    for (i, (name, text, v6)) in cases.iter().enumerate() {
        let p = parts(text);
        for part in ["ipvsadm", "ipset", "iptables"] {
            fs::write(dir.path().join(format!("{i}.{part}")), &p[part]).unwrap();
        }
        let (save, restore) = if *v6 {
            ("ip6tables-save", "ip6tables-restore")
        } else {
            ("iptables-save", "iptables-restore")
        };
        let d = dir.path().display();
        write!(
            script,
            "for t in filter nat; do iptables -w -t $t -F; iptables -w -t $t -X; \
             ip6tables -w -t $t -F; ip6tables -w -t $t -X; done\n\
             ipset destroy\nipvsadm -C\n\
             echo '@@@ {name} load'\n\
             ipset restore < {d}/{i}.ipset || echo 'ipset restore FAILED'\n\
             {restore} -w < {d}/{i}.iptables || echo 'iptables-restore FAILED'\n\
             ipvsadm -R < {d}/{i}.ipvsadm || echo 'ipvsadm -R FAILED'\n\
             echo '@@@ {name} ipvsadm'\nipvsadm -Sn\n\
             echo '@@@ {name} ipset'\nipset save\n\
             echo '@@@ {name} iptables'\n{save}\n"
        )
        .unwrap();
    }
    let out = support::vm::run_in_vm(&script, 512);
    let mut saved: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut key: Option<(String, String)> = None;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("@@@ ") {
            let (name, part) = h.rsplit_once(' ').unwrap();
            key = Some((name.to_string(), part.to_string()));
            saved.entry(key.clone().unwrap()).or_default();
        } else if let Some(k) = &key {
            let t = saved.get_mut(k).unwrap();
            t.push_str(line);
            t.push('\n');
        }
    }
    let mut failures = Vec::new();
    for (name, text, _) in &cases {
        let p = parts(text);
        let got = |part: &str| {
            saved
                .get(&(name.clone(), part.to_string()))
                .cloned()
                .unwrap_or_else(|| panic!("no {part} output for {name}:\n{out}"))
        };
        let load = got("load");
        if !load.trim().is_empty() {
            failures.push(format!("{name}: loading failed:\n{load}"));
            continue;
        }
        if parse(&got("ipvsadm")) != parse(&p["ipvsadm"]) {
            failures.push(format!(
                "{name}: ipvsadm -Sn differs:\n{}",
                support::unified_diff(&p["ipvsadm"], &got("ipvsadm"), "ours", "kernel")
            ));
        }
        let (ours, kernel) = (normalize_ipset(&p["ipset"]), normalize_ipset(&got("ipset")));
        if ours != kernel {
            failures.push(format!(
                "{name}: ipset save differs:\n{}",
                support::unified_diff(&ours, &kernel, "ours", "kernel")
            ));
        }
        let ours = iptables_tables(&p["iptables"]);
        let kernel = iptables_tables(&got("iptables"));
        for (table, text) in &ours {
            let k = kernel.get(table).cloned().unwrap_or_default();
            if &k != text {
                failures.push(format!(
                    "{name}: iptables-save -t {table} differs:\n{}",
                    support::unified_diff(text, &k, "ours", "kernel")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
