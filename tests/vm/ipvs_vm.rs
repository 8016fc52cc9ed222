//! Issue #6: what IPVS mode renders, loaded into a real IPVS kernel (a qemu VM, see
//! `testkit::vm`): `ipvsadm -R` accepts the table and `ipvsadm -Sn` gives it back; every golden
//! case's three dry-run parts load with their own tools and save back unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use rulegen::render::ipvs::{DEFAULT_SCHEDULER, virtual_servers};
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
    let out = testkit::vm::run_in_ipvs_vm(
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
    let dir = testkit::TempDir::new("ipvs-golden");
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
    // Each case prints its `@@@` lines as it goes: the VM's limit on silence holds however many
    // golden cases there are and however busy the machine is.
    let out = testkit::vm::run_in_vm(&script, 512);
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
                testkit::unified_diff(&p["ipvsadm"], &got("ipvsadm"), "ours", "kernel")
            ));
        }
        let (ours, kernel) = (
            rulegen::render::ipvs::ipsets::comparable_save(&p["ipset"]),
            rulegen::render::ipvs::ipsets::comparable_save(&got("ipset")),
        );
        if ours != kernel {
            failures.push(format!(
                "{name}: ipset save differs:\n{}",
                testkit::unified_diff(&ours, &kernel, "ours", "kernel")
            ));
        }
        let ours = iptables_tables(&p["iptables"]);
        let kernel = iptables_tables(&got("iptables"));
        for (table, text) in &ours {
            let k = kernel.get(table).cloned().unwrap_or_default();
            if &k != text {
                failures.push(format!(
                    "{name}: iptables-save -t {table} differs:\n{}",
                    testkit::unified_diff(text, &k, "ours", "kernel")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `key=value` fields of the last agent log line that says `rules synced`, and how many
/// such lines there were.
fn last_sync_fields(log: &str) -> (usize, BTreeMap<String, String>) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("rules synced")).collect();
    let fields = lines
        .last()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        })
        .unwrap_or_default();
    (lines.len(), fields)
}

/// The agent itself in IPVS mode, in the VM: it applies `golden/example` with its own netlink
/// client, ipset script and iptables restore, and the kernel then holds exactly what the dry
/// run prints (virtual servers, sets, rules, `kube-ipvs0`'s addresses). Then one endpoint of a
/// three-port Service goes away: the agent sends exactly the three real-server deletions, and
/// the kernel matches the new dry run.
#[test]
fn the_agent_applies_ipvs_mode_and_then_only_what_changed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let v1 = fs::read_to_string(root.join("golden/example/objects.yaml")).unwrap();
    let gone = "- addresses: [10.244.2.7]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: node-b\n  zone: zone-b\n";
    assert!(v1.contains(gone));
    let v2 = v1.replacen(gone, "", 1);
    let dir = testkit::TempDir::new("ipvs-agent");
    let d = dir.path().display().to_string();
    fs::write(dir.path().join("v1.yaml"), &v1).unwrap();
    fs::write(dir.path().join("v2.yaml"), &v2).unwrap();
    let flags = [
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--proxy-mode",
        "ipvs",
    ];
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let dry = |file: &str| {
        let objects = format!("{d}/{file}");
        let args = ["--dry-run", "--objects", &objects]
            .into_iter()
            .chain(flags);
        parts(&testkit::cli::stdout_of(args))
    };
    let (want1, want2) = (dry("v1.yaml"), dry("v2.yaml"));
    let wait = |n: usize| {
        format!(
            "i=0; while [ $(grep -c 'rules synced' /run/agent.log) -lt {n} ] && [ $i -lt 250 ]; do \
             sleep 0.1; i=$((i+1)); done\n"
        )
    };
    let dump = |tag: &str| {
        format!(
            "echo '@@@ {tag} ipvsadm'; ipvsadm -Sn; echo '@@@ {tag} ipset'; ipset save; \
             echo '@@@ {tag} iptables'; iptables-save; \
             echo '@@@ {tag} addr'; ip -o addr show dev kube-ipvs0\n"
        )
    };
    let script = format!(
        "ip link add rs type dummy\nip link set rs up\nip route add default dev rs\n\
         ip link add eth0 type dummy\nip link set eth0 up\nip addr add 192.168.0.10/24 dev eth0\n\
         cp {d}/v1.yaml /run/objects.yaml\n\
         {bin} --objects /run/objects.yaml {} > /run/agent.log 2>&1 &\nAGENT=$!\n{}{}\
         cp {d}/v2.yaml /run/objects.yaml\n{}{}\
         kill $AGENT; wait $AGENT\n\
         {bin} --cleanup --hostname-override node-a > /run/cleanup.log 2>&1; echo \"@@@ cleanup $?\"\n\
         ipvsadm -Sn; ip link show kube-ipvs0 2>&1; ipset list -n; iptables-save | grep -c KUBE-IPVS || true\n\
         echo '@@@ cleanup-log'; cat /run/cleanup.log\n\
         echo '@@@ log'; cat /run/agent.log\n",
        flags.join(" "),
        wait(1),
        dump("1"),
        wait(2),
        dump("2"),
    );
    let out = testkit::vm::run_in_vm(&script, 512);
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    let mut key = String::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("@@@ ") {
            key = h.to_string();
            got.entry(key.clone()).or_default();
        } else if !key.is_empty() {
            let t = got.get_mut(&key).unwrap();
            t.push_str(line);
            t.push('\n');
        }
    }
    let log = got.get("log").cloned().unwrap_or_default();
    let (syncs, fields) = last_sync_fields(&log);
    assert_eq!(syncs, 2, "expected two syncs:\n{out}");
    for (tag, want) in [("1", &want1), ("2", &want2)] {
        let k = |p: &str| got.get(&format!("{tag} {p}")).cloned().unwrap_or_default();
        assert_eq!(
            parse(&k("ipvsadm")),
            parse(&want["ipvsadm"]),
            "sync {tag}: ipvsadm -Sn:\n{}\n--- dry run:\n{}\n--- log:\n{log}",
            k("ipvsadm"),
            want["ipvsadm"]
        );
        assert_eq!(
            rulegen::render::ipvs::ipsets::comparable_save(&k("ipset")),
            rulegen::render::ipvs::ipsets::comparable_save(&want["ipset"]),
            "sync {tag}: ipset save"
        );
        let kernel = iptables_tables(&k("iptables"));
        for (table, text) in iptables_tables(&want["iptables"]) {
            assert_eq!(
                kernel.get(&table),
                Some(&text),
                "sync {tag}: iptables-save -t {table}"
            );
        }
        let bound: BTreeSet<String> = k("addr")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .map(|a| a.split('/').next().unwrap().to_string())
            .collect();
        let wanted: BTreeSet<String> = want["ipset"]
            .lines()
            .filter_map(|l| l.strip_prefix("add KUBE-IPVS-IPS "))
            .map(str::to_string)
            .collect();
        assert_eq!(bound, wanted, "sync {tag}: kube-ipvs0's addresses");
    }
    // Only the difference went over netlink: the three real servers of 10.244.2.7.
    let lines = |t: &str| -> BTreeSet<String> { t.lines().map(str::to_string).collect() };
    let changed = lines(&want1["ipvsadm"])
        .symmetric_difference(&lines(&want2["ipvsadm"]))
        .count();
    assert_eq!(changed, 3);
    assert_eq!(
        fields.get("netlink_messages").map(String::as_str),
        Some("3"),
        "{log}"
    );
    assert_eq!(
        fields.get("dests_deleted").map(String::as_str),
        Some("3"),
        "{log}"
    );
    assert_eq!(
        fields.get("services_added").map(String::as_str),
        Some("0"),
        "{log}"
    );
    // --cleanup then removes IPVS mode's virtual servers, kube-ipvs0, sets and rules.
    let cleanup = got.get("cleanup 0").unwrap_or_else(|| {
        panic!(
            "--cleanup failed:\n{}",
            got.get("cleanup-log").cloned().unwrap_or_default()
        )
    });
    assert!(!cleanup.contains("-A "), "virtual servers left:\n{cleanup}");
    assert!(
        cleanup.contains("does not exist") || cleanup.contains("Cannot find device"),
        "kube-ipvs0 left:\n{cleanup}"
    );
    assert!(
        !cleanup.contains("KUBE-CLUSTER-IP"),
        "sets left:\n{cleanup}"
    );
    assert_eq!(
        cleanup.lines().last().map(str::trim),
        Some("0"),
        "rules left:\n{cleanup}"
    );
}

/// `N` ClusterIP Services with `per` endpoints each, as one JSON `List`; `moved` shifts the
/// addresses of Service 0's endpoints (a one-endpoint-set change).
fn scale_objects(n: u32, per: u32, moved: u32) -> String {
    let mut items = Vec::new();
    items.push(
        "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"node-a\"},\
         \"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"192.168.0.10\"}]}}"
            .to_string(),
    );
    for i in 0..n {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        items.push(format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"svc{i}\",\"namespace\":\"ns\"}},\
             \"spec\":{{\"clusterIP\":\"{ip}\",\"clusterIPs\":[\"{ip}\"],\"ports\":[{{\"name\":\"http\",\"port\":80,\"protocol\":\"TCP\",\"targetPort\":8080}}]}}}}"
        ));
        let eps: Vec<String> = (0..per)
            .map(|e| {
                let k = i * per + e + if i == 0 { moved } else { 0 };
                format!(
                    "{{\"addresses\":[\"10.{}.{}.{}\"],\"nodeName\":\"node-{}\",\"conditions\":{{\"ready\":true}}}}",
                    128 + k / 65536 % 64,
                    k / 256 % 256,
                    k % 256,
                    e % 3
                )
            })
            .collect();
        items.push(format!(
            "{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"svc{i}-1\",\"namespace\":\"ns\",\
             \"labels\":{{\"kubernetes.io/service-name\":\"svc{i}\"}}}},\"addressType\":\"IPv4\",\
             \"ports\":[{{\"name\":\"http\",\"port\":8080,\"protocol\":\"TCP\"}}],\"endpoints\":[{}]}}",
            eps.join(",")
        ));
    }
    format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}\n",
        items.join(",\n")
    )
}

/// By hand, for the figures in `benches/README.md` (TCG emulation: slower than a real node):
/// `KPRS_VM_SCALE_SERVICES=10000 cargo test --release --test vm ipvs_vm:: -- --ignored --nocapture`.
/// The agent syncs N Services × 10 endpoints into the VM's empty IPVS table, then one Service's
/// endpoint set changes (one real server replaced); prints both syncs' log lines.
#[test]
#[ignore]
fn ipvs_sync_at_scale_in_the_vm() {
    let n: u32 = std::env::var("KPRS_VM_SCALE_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = testkit::TempDir::new("ipvs-scale");
    let d = dir.path().display().to_string();
    fs::write(dir.path().join("v1.json"), scale_objects(n, 10, 0)).unwrap();
    // Service 0's endpoints shift by one address: one real server out, one in.
    fs::write(dir.path().join("v2.json"), scale_objects(n, 10, 1)).unwrap();
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let wait = |k: usize| {
        format!(
            "i=0; while [ $(grep -c 'rules synced' /run/agent.log) -lt {k} ] && [ $i -lt 6000 ]; do \
             sleep 0.1; i=$((i+1)); done\n"
        )
    };
    let script = format!(
        "ip link add rs type dummy\nip link set rs up\nip route add default dev rs\n\
         cp {d}/v1.json /run/objects.json\n\
         {bin} --objects /run/objects.json --hostname-override node-a --proxy-mode ipvs \
         --ipvs-min-sync-period 0s > /run/agent.log 2>&1 &\nAGENT=$!\n{}\
         cp {d}/v2.json /run/objects.json\n{}\
         echo VS=$(ipvsadm -Sn | grep -c '^-A') RS=$(ipvsadm -Sn | grep -c '^-a')\n\
         kill $AGENT; wait $AGENT\ncat /run/agent.log\n",
        wait(1),
        wait(2),
    );
    let out = testkit::vm::run_in_vm_for(&script, 3072, std::time::Duration::from_secs(3600));
    println!("{out}");
    let (syncs, fields) = last_sync_fields(&out);
    assert_eq!(syncs, 2, "{out}");
    assert!(out.contains(&format!("VS={n} RS={}", n * 10)), "{out}");
    assert_eq!(
        fields.get("netlink_messages").map(String::as_str),
        Some("2"),
        "{out}"
    );
}

const LAB_OBJECTS: &str = r#"apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  clusterIPs: [10.96.0.80]
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
  nodeName: node-a
- addresses: [10.244.1.6]
  conditions: {ready: true}
  nodeName: node-a
"#;

/// Real connections through the agent's virtual servers, in the VM: two pods (network
/// namespaces behind veths) serve a Service; the node connects to its cluster IP and to its node
/// port and reaches both pods round-robin. A node-wide listener on another port answers on the
/// node's address but not on the cluster IP: `KUBE-IPVS-FILTER` refuses new connections to
/// `kube-ipvs0` addresses on ports no Service has (upstream issue #72236).
#[test]
fn connections_reach_the_pods_through_the_virtual_servers() {
    let dir = testkit::TempDir::new("ipvs-lab");
    let d = dir.path().display().to_string();
    fs::write(dir.path().join("objects.yaml"), LAB_OBJECTS).unwrap();
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let mut script = String::from(
        "ip link add eth0 type dummy\nip link set eth0 up\nip addr add 192.168.0.10/24 dev eth0\n",
    );
    for (i, pod) in ["pod-a", "pod-b"].iter().enumerate() {
        let host = format!("veth{i}");
        let addr = format!("10.244.1.{}", 5 + i);
        write!(
            script,
            "ip netns add {pod}\nip link add {host} type veth peer name eth0 netns {pod}\n\
             ip link set {host} up\nip route add {addr}/32 dev {host}\n\
             ip netns exec {pod} ip link set lo up\nip netns exec {pod} ip link set eth0 up\n\
             ip netns exec {pod} ip addr add {addr}/24 dev eth0\n\
             ip netns exec {pod} ip route add default dev eth0\n\
             echo 1 > /proc/sys/net/ipv4/conf/{host}/proxy_arp\n\
             ip netns exec {pod} socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo {pod}' &\n"
        )
        .unwrap();
    }
    script.push_str("socat TCP-LISTEN:81,fork,reuseaddr SYSTEM:'echo node' &\n");
    write!(
        script,
        "{bin} --objects {d}/objects.yaml --hostname-override node-a --cluster-cidr 10.244.0.0/16 \
         --proxy-mode ipvs > /run/agent.log 2>&1 &\nAGENT=$!\n\
         i=0; while ! grep -q 'rules synced' /run/agent.log && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
         sleep 0.5\n\
         for n in 1 2 3 4; do echo \"cluster $(socat -T2 - TCP:10.96.0.80:80,connect-timeout=2 </dev/null 2>&1)\"; done\n\
         for n in 1 2 3 4; do echo \"nodeport $(socat -T2 - TCP:192.168.0.10:30080,connect-timeout=2 </dev/null 2>&1)\"; done\n\
         echo \"other-port $(socat -T2 - TCP:10.96.0.80:81,connect-timeout=2 </dev/null 2>&1 | grep -o 'Connection refused\\|timed out' | head -1)\"\n\
         echo \"node-port-81 $(socat -T2 - TCP:192.168.0.10:81,connect-timeout=2 </dev/null 2>&1)\"\n\
         ipvsadm -Ln --stats\nkill $AGENT; wait $AGENT\ncat /run/agent.log\n"
    )
    .unwrap();
    let out = testkit::vm::run_in_vm(&script, 512);
    let count = |prefix: &str, pod: &str| {
        out.lines()
            .filter(|l| l.trim() == format!("{prefix} {pod}"))
            .count()
    };
    for prefix in ["cluster", "nodeport"] {
        assert_eq!(
            (count(prefix, "pod-a"), count(prefix, "pod-b")),
            (2, 2),
            "{prefix}: round-robin over both pods expected:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l.trim() == "node-port-81 node"),
        "the node's own listener must answer on the node's address:\n{out}"
    );
    assert!(
        out.contains("other-port Connection refused"),
        "a port no Service has must be refused on the cluster IP:\n{out}"
    );
}

/// Two things that must not stop IPVS mode, with the agent in the VM: (1) the node ran
/// iptables mode before (`golden/example`'s ruleset is loaded first: its chains stay, as
/// upstream leaves them, and nothing fails); (2) the kernel refuses one real server (its
/// address is the pod network's broadcast address on this node, which the API accepts): that
/// one is logged, and every other virtual server, address, set and rule is applied, in the
/// first sync and in the next one.
#[test]
fn the_agent_takes_over_an_iptables_node_and_survives_a_refused_real_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unroutable =
        "- addresses: [10.244.255.255]\n  conditions: {ready: true}\n  nodeName: node-b\n";
    let v1 = fs::read_to_string(root.join("golden/example/objects.yaml"))
        .unwrap()
        .replacen(
            "- addresses: [10.244.2.7]\n",
            &format!("{unroutable}- addresses: [10.244.2.7]\n"),
            1,
        );
    assert!(v1.contains("10.244.255.255"));
    let gone = "- addresses: [10.244.2.7]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: node-b\n  zone: zone-b\n";
    let v2 = v1.replacen(gone, "", 1);
    assert_ne!(v1, v2);
    let dir = testkit::TempDir::new("ipvs-takeover");
    let d = dir.path().display().to_string();
    fs::write(dir.path().join("v1.yaml"), &v1).unwrap();
    fs::write(dir.path().join("v2.yaml"), &v2).unwrap();
    // The node's pod-network address must not serve node ports here, as the Node object says.
    let flags = "--hostname-override node-a --cluster-cidr 10.244.0.0/16 --proxy-mode ipvs --nodeport-addresses 192.168.0.0/24";
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let dry = |file: &str| {
        let out = std::process::Command::new(bin)
            .args(["--dry-run", "--objects", &format!("{d}/{file}")])
            .args(flags.split(' '))
            .output()
            .unwrap();
        assert!(out.status.success());
        parts(&String::from_utf8(out.stdout).unwrap())
    };
    let without_unroutable = |p: &BTreeMap<String, String>| -> String {
        p["ipvsadm"]
            .lines()
            .filter(|l| !l.contains("10.244.255.255"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (want1, want2) = (dry("v1.yaml"), dry("v2.yaml"));
    let wait = |n: usize| {
        format!(
            "i=0; while [ $(grep -c 'rules synced' /run/agent.log) -lt {n} ] && [ $i -lt 250 ]; do \
             sleep 0.1; i=$((i+1)); done\n"
        )
    };
    let script = format!(
        // 10.244.255.255 is this node's broadcast address on the pod network: IPVS refuses it.
        "ip link add rs type dummy\nip link set rs up\nip addr add 10.244.0.1/16 dev rs\n\
         ip link add eth0 type dummy\nip link set eth0 up\nip addr add 192.168.0.10/24 dev eth0\n\
         iptables-restore -w < {root}/golden/example/expected.iptables && echo IPTABLES-MODE-LOADED\n\
         cp {d}/v1.yaml /run/objects.yaml\n\
         {bin} --objects /run/objects.yaml {flags} > /run/agent.log 2>&1 &\nAGENT=$!\n{}\
         echo '@@@ 1'; ipvsadm -Sn\n\
         cp {d}/v2.yaml /run/objects.yaml\n{}\
         echo '@@@ 2'; ipvsadm -Sn\necho '@@@ save'; iptables-save -t nat\n\
         kill $AGENT; wait $AGENT\necho '@@@ log'; cat /run/agent.log\n",
        wait(1),
        wait(2),
        root = root.display(),
    );
    let out = testkit::vm::run_in_vm(&script, 512);
    assert!(out.contains("IPTABLES-MODE-LOADED"), "{out}");
    let section = |name: &str| -> String {
        let start = out
            .find(&format!("@@@ {name}\n"))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
        let rest = &out[start + name.len() + 5..];
        rest[..rest.find("@@@ ").unwrap_or(rest.len())].to_string()
    };
    let log = section("log");
    assert_eq!(
        last_sync_fields(&log).0,
        2,
        "both syncs must succeed:\n{log}"
    );
    assert!(!log.contains("sync failed"), "{log}");
    assert!(
        log.contains("refused"),
        "the refused real server is logged:\n{log}"
    );
    assert_eq!(
        parse(&section("1")),
        parse(&without_unroutable(&want1)),
        "{log}"
    );
    assert_eq!(
        parse(&section("2")),
        parse(&without_unroutable(&want2)),
        "{log}"
    );
    // iptables mode's chains are still there, and IPVS mode's KUBE-SERVICES replaced its own.
    let nat = section("save");
    assert!(nat.contains(":KUBE-NODEPORTS"), "{nat}");
    assert!(
        nat.contains("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"),
        "{nat}"
    );
    assert!(!nat.contains("-A KUBE-SERVICES -d 10.96.0.10/32"), "{nat}");
}
