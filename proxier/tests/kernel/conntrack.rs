//! UDP conntrack cleanup (`proxier::conntrack`) against the real kernel, each test in network
//! namespaces it creates (`testkit::Netns`, deleted on drop, also on panic).
//!
//! The reconciler opens its ctnetlink socket in the calling thread's namespace, so it runs on
//! a thread of its own that first enters the test's node namespace (`setns`) and checks it got
//! there; the UDP servers and clients are sockets created the same way in the pod and client
//! namespaces. Nothing here runs in the root namespace. The rules are rendered by `rulegen` and
//! applied by `IptablesApplier` through `ip netns exec`, as in `kernel.rs`. The kernel's table
//! is read back independently with `conntrack -L`, and the many-flow test fills it with
//! `conntrack -R`.
//!
//! ```text
//!  client (192.168.50.2/24) ──veth── node (192.168.50.1/24, br0 10.244.1.1/24)
//!                                     ├── pod pa 10.244.1.11, UDP :8053 answers "pa"
//!                                     └── pod pb 10.244.1.12, UDP :8053 answers "pb"
//!  Service ns/dns:dns  UDP 10.96.0.10:53, node port 30053 → pa, pb
//! ```

#[allow(dead_code)]
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proxier::conntrack::{self, Conntrack};
use proxier::{
    Backend, Dataplane, IptablesApplier, IptablesDataplane, Launcher, NoObserver, NodeFacts,
};
use rulegen::sync::conntrack::Lookup;
use rulegen::{
    Endpoint, IpFamily, LocalDetector, Model, Protocol, RenderConfig, ServicePort, ServicePortName,
};
use testkit::netns::{Netns, in_ns};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CLUSTER_IP: &str = "10.96.0.10";
const NODE_IP: &str = "192.168.50.1";
const CLIENT_IP: &str = "192.168.50.2";
const NODE_PORT: u16 = 30053;
const POD_PORT: u16 = 8053;
const PODS: [(&str, &str); 2] = [("pa", "10.244.1.11"), ("pb", "10.244.1.12")];

// ---------------------------------------------------------------------------------------------
// The lab

/// A UDP server in a pod: answers every datagram with the pod's name. Stopped on drop.
struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn start(ns: &Netns, name: &'static str, port: u16) -> UdpServer {
        let sock = in_ns(ns, || {
            UdpSocket::bind(("0.0.0.0", port)).expect("bind the server")
        });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), peer);
                }
            }
        });
        UdpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node, one client and the two pods, with both servers running.
struct Lab {
    node: Netns,
    client: Netns,
    pods: Vec<Netns>,
}

impl Lab {
    fn build(tag: &str) -> Lab {
        let node = Netns::new(&format!("{tag}-node"));
        let client = Netns::new(&format!("{tag}-cli"));
        node.sysctl("net.ipv4.ip_forward", "1");
        node.add_bridge("br0", "10.244.1.1/24");
        node.add_veth("c0", &client);
        node.addr_up("c0", &format!("{NODE_IP}/24"));
        client.eth0_up(&format!("{CLIENT_IP}/24"), NODE_IP);
        let mut pods = Vec::new();
        for (name, addr) in PODS {
            let ns = Netns::new(&format!("{tag}-{name}"));
            let host_if = format!("v-{name}");
            node.add_veth(&host_if, &ns);
            node.exec_ok(["ip", "link", "set", &host_if, "master", "br0"]);
            node.exec_ok(["ip", "link", "set", &host_if, "up"]);
            ns.eth0_up(&format!("{addr}/24"), "10.244.1.1");
            pods.push(ns);
        }
        Lab { node, client, pods }
    }

    fn pod(&self, name: &str) -> &Netns {
        &self.pods[PODS.iter().position(|(n, _)| *n == name).unwrap()]
    }

    /// A client socket on `CLIENT_IP:port`: one conntrack flow per destination.
    fn client_socket(&self, port: u16) -> UdpSocket {
        let sock = in_ns(&self.client, || {
            UdpSocket::bind((CLIENT_IP, port)).expect("bind the client")
        });
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        sock
    }

    /// `conntrack -L -p udp` in the node: client port → (reply source, flow id), as the
    /// kernel lists them (read with the tool, not with the code under test).
    fn kernel_flows(&self) -> BTreeMap<u16, (String, String)> {
        let out = self
            .node
            .exec_ok(["conntrack", "-L", "-p", "udp", "-o", "id"]);
        let mut flows = BTreeMap::new();
        for line in out.lines() {
            let field = |key: &str, nth: usize| {
                line.split_whitespace()
                    .filter_map(|w| w.strip_prefix(key))
                    .nth(nth)
                    .map(str::to_string)
            };
            let (Some(sport), Some(reply_src), Some(id)) =
                (field("sport=", 0), field("src=", 1), field("id=", 0))
            else {
                continue;
            };
            flows.insert(sport.parse().unwrap(), (reply_src, id));
        }
        flows
    }
}

/// Sends one datagram to `dst` and returns who answered, `None` after the read time-out.
fn ask(sock: &UdpSocket, dst: SocketAddr) -> Option<String> {
    sock.send_to(b"who?", dst).expect("send");
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// The Service, with the endpoints of `pods`.
fn model(pods: &[&str]) -> Model {
    let mut sp = ServicePort::cluster_ip(
        ServicePortName::new("ns", "dns", "dns"),
        Protocol::Udp,
        ip(CLUSTER_IP),
        53,
    );
    sp.node_port = Some(NODE_PORT);
    for (name, addr) in PODS {
        if pods.contains(&name) {
            sp.endpoints.push(Endpoint {
                node_name: Some("node-a".into()),
                ..Endpoint::ready(ip(addr), POD_PORT)
            });
        }
    }
    Model { services: vec![sp] }
}

fn config() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn applier(ns: &Netns, backend: Backend) -> IptablesDataplane {
    let applier = IptablesApplier::new(backend, IpFamily::V4)
        .with_launcher(Launcher::netns(ns.name()).with_env("XTABLES_LOCKFILE", ns.lockfile()))
        .with_timeout(Duration::from_secs(30));
    IptablesDataplane::new(applier).with_node_facts(NodeFacts::given())
}

// ---------------------------------------------------------------------------------------------

/// The issue's scenario. UDP clients keep sending to the ClusterIP and to the node port of a
/// Service with two backends; pod pa is removed from the Service (re-render, apply). Without
/// cleanup, the clients whose flows were DNATed to pa keep reaching pa (the control), and once
/// pa is really gone they are black-holed; after `reconcile` their next datagrams reach pb,
/// while the flows already on pb are left exactly as they were (same conntrack id).
async fn a_removed_udp_backend_no_longer_holds_its_clients(backend: Backend) {
    testkit::needs_root!();
    let lab = Lab::build(&format!("ct-{backend}"));
    let mut pa = Some(UdpServer::start(lab.pod("pa"), "pa", POD_PORT));
    let _pb = UdpServer::start(lab.pod("pb"), "pb", POD_PORT);
    let cfg = config();
    let mut a = applier(&lab.node, backend);
    a.sync(&model(&["pa", "pb"]), &cfg, &mut NoObserver)
        .await
        .unwrap();
    let before = Lookup::build(&model(&["pa", "pb"]), &cfg);

    // Clients on both frontends, until each frontend has a flow on pa and one on pb.
    let frontends: [SocketAddr; 2] = [
        SocketAddr::new(ip(CLUSTER_IP), 53),
        SocketAddr::new(ip(NODE_IP), NODE_PORT),
    ];
    // (socket, its port, frontend, backend its flow is on)
    let mut clients: Vec<(UdpSocket, u16, SocketAddr, String)> = Vec::new();
    let mut port = 40000;
    for dst in frontends {
        let mut on = BTreeMap::new();
        while on.len() < 2 {
            assert!(
                port < 40100,
                "100 flows and {dst} never reached both pods: {on:?}"
            );
            let sock = lab.client_socket(port);
            let who = ask(&sock, dst).unwrap_or_else(|| panic!("no answer on {dst}"));
            on.insert(who.clone(), ());
            clients.push((sock, port, dst, who));
            port += 1;
        }
    }
    // The flows hold: each client keeps its backend.
    for (sock, _, dst, who) in &clients {
        for _ in 0..3 {
            assert_eq!(ask(sock, *dst).as_deref(), Some(who.as_str()), "{dst}");
        }
    }
    let flows_before = lab.kernel_flows();
    assert_eq!(flows_before.len(), clients.len(), "{flows_before:?}");

    // pa leaves the Service: the rules no longer send anything to it.
    let after_model = model(&["pb"]);
    a.sync(&after_model, &cfg, &mut NoObserver).await.unwrap();
    // A new client lands on pb only.
    let fresh = lab.client_socket(port);
    for dst in frontends {
        assert_eq!(ask(&fresh, dst).as_deref(), Some("pb"), "new flow to {dst}");
    }
    drop(fresh);

    // Control: without cleanup, the old flows still carry their clients to pa.
    for (sock, _, dst, who) in &clients {
        assert_eq!(
            ask(sock, *dst).as_deref(),
            Some(who.as_str()),
            "{dst}: without cleanup the flow should still be on {who}"
        );
    }
    // And once pa is gone for good, its clients are black-holed.
    drop(pa.take());
    for (sock, _, dst, who) in &clients {
        let want = (who == "pb").then_some("pb");
        assert_eq!(ask(sock, *dst).as_deref(), want, "{dst}, flow on {who}");
    }

    // The reconcile, in the node's namespace.
    let lookup = Lookup::build(&after_model, &cfg);
    assert!(lookup.needs_reconcile(Some(&before)));
    let report = in_ns(&lab.node, || conntrack::reconcile(&lookup)).unwrap();
    eprintln!("[{backend}] {report:?}");
    let on_pa: Vec<u16> = clients
        .iter()
        .filter(|c| c.3 == "pa")
        .map(|c| c.1)
        .collect();
    assert_eq!(report.flows_stale, on_pa.len(), "{report:?}");
    assert_eq!(report.flows_deleted, on_pa.len(), "{report:?}");
    assert_eq!(report.flows_gone, 0, "{report:?}");
    // Every client flow, the fresh one's (two frontends), nothing else.
    assert_eq!(report.flows_seen, clients.len() + 2, "{report:?}");
    let flows_after = lab.kernel_flows();
    for (_, port, _, who) in &clients {
        match who.as_str() {
            "pa" => assert!(!flows_after.contains_key(port), "{port}: {flows_after:?}"),
            _ => assert_eq!(flows_after.get(port), flows_before.get(port), "{port}"),
        }
    }

    // The next datagrams of every client reach pb, and stay there.
    for (sock, port, dst, _) in &clients {
        for _ in 0..3 {
            assert_eq!(ask(sock, *dst).as_deref(), Some("pb"), "{dst} from {port}");
        }
    }
    let flows_now = lab.kernel_flows();
    for port in &on_pa {
        assert_eq!(flows_now[port].0, PODS[1].1, "{port}: {flows_now:?}");
    }

    // Nothing changed since: no reconcile needed, and one would delete nothing.
    assert!(!Lookup::build(&after_model, &cfg).needs_reconcile(Some(&lookup)));
    let again = in_ns(&lab.node, || conntrack::reconcile(&lookup)).unwrap();
    assert_eq!(
        (again.flows_stale, again.flows_deleted),
        (0, 0),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_removed_udp_backend_no_longer_holds_its_clients_nft() {
    a_removed_udp_backend_no_longer_holds_its_clients(Backend::Nft).await;
}

#[tokio::test]
async fn a_removed_udp_backend_no_longer_holds_its_clients_legacy() {
    a_removed_udp_backend_no_longer_holds_its_clients(Backend::Legacy).await;
}

/// The Service scales to zero, then is deleted: each time the flows to its dead endpoints go
/// (kubernetes#139629, #141371), and new datagrams meet the rules of the moment (REJECT).
#[tokio::test]
async fn a_service_scaled_to_zero_or_deleted_keeps_no_flow() {
    testkit::needs_root!();
    let lab = Lab::build("ct-zero");
    let _pa = UdpServer::start(lab.pod("pa"), "pa", POD_PORT);
    let _pb = UdpServer::start(lab.pod("pb"), "pb", POD_PORT);
    let cfg = config();
    let mut a = applier(&lab.node, Backend::Nft);
    let both = model(&["pa", "pb"]);
    a.sync(&both, &cfg, &mut NoObserver).await.unwrap();
    let dst = SocketAddr::new(ip(CLUSTER_IP), 53);
    let sock = lab.client_socket(41000);
    assert!(ask(&sock, dst).is_some());
    let last = Lookup::build(&both, &cfg);

    // Zero endpoints: the flow goes; the next datagram is rejected, nothing answers.
    let none = model(&[]);
    a.sync(&none, &cfg, &mut NoObserver).await.unwrap();
    assert!(
        ask(&sock, dst).is_some(),
        "control: the old flow still answers"
    );
    let lookup = Lookup::build(&none, &cfg);
    assert!(lookup.needs_reconcile(Some(&last)));
    let report = in_ns(&lab.node, || conntrack::reconcile(&lookup)).unwrap();
    assert_eq!(report.flows_deleted, 1, "{report:?}");
    assert_eq!(ask(&sock, dst), None);
    assert!(lab.kernel_flows().is_empty(), "{:?}", lab.kernel_flows());

    // Endpoints again, then the Service is deleted: its frontend keeps no flow.
    a.sync(&both, &cfg, &mut NoObserver).await.unwrap();
    assert!(ask(&sock, dst).is_some());
    let last = Lookup::build(&both, &cfg);
    let gone = Model::default();
    a.sync(&gone, &cfg, &mut NoObserver).await.unwrap();
    assert!(
        ask(&sock, dst).is_some(),
        "control: the old flow still answers"
    );
    let mut lookup = Lookup::build(&gone, &cfg);
    assert!(lookup.is_empty());
    assert_eq!(lookup.add_removed(&last), 1);
    let report = in_ns(&lab.node, || conntrack::reconcile(&lookup)).unwrap();
    assert_eq!(report.flows_deleted, 1, "{report:?}");
    assert!(lab.kernel_flows().is_empty(), "{:?}", lab.kernel_flows());
}

// ---------------------------------------------------------------------------------------------
// Many flows

/// `conntrack -R` input: one `-I` line per flow (UDP unless `proto` says otherwise).
#[allow(clippy::too_many_arguments)]
fn insert_line(
    out: &mut String,
    proto: &str,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    reply_src: &str,
    reply_sport: u16,
) {
    let state = if proto == "tcp" {
        " --state ESTABLISHED"
    } else {
        ""
    };
    writeln!(
        out,
        "-I -p {proto} -s {src} -d {dst} --sport {sport} --dport {dport} -r {reply_src} \
         -q {src} --reply-port-src {reply_sport} --reply-port-dst {sport} -t 600{state}"
    )
    .unwrap();
}

use std::fmt::Write as _;

/// Loads `lines` into the namespace's conntrack table with `conntrack -R`.
fn load(ns: &Netns, lines: &str) {
    let path = ns.dir().join("flows.txt");
    File::create(&path)
        .and_then(|mut f| f.write_all(lines.as_bytes()))
        .unwrap();
    ns.exec_ok(["conntrack", "-R", path.to_str().unwrap()]);
}

/// `conntrack -C`: how many flows the namespace's table holds.
fn count(ns: &Netns) -> usize {
    ns.exec_ok(["conntrack", "-C"]).trim().parse().unwrap()
}

/// 5,000 UDP flows (plus TCP and IPv6 ones) to a few Services, some of them stale: one dump and
/// the deletions remove exactly the stale ones, whatever the others are.
#[test]
fn among_many_flows_only_the_stale_ones_go() {
    testkit::needs_root!();
    let ns = Netns::new("ct-many");
    let cfg = config();
    // Services 10.96.1.<s>:53, s in 0..10, endpoints 10.244.<s>.1-4:8053; svc 0 also has node
    // port 30053. Endpoint .4 of each is gone from the model (its flows are stale).
    let mut services = Vec::new();
    for s in 0..10u8 {
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new("ns", format!("svc{s}"), ""),
            Protocol::Udp,
            ip(&format!("10.96.1.{s}")),
            53,
        );
        for e in 1..=3 {
            sp.endpoints
                .push(Endpoint::ready(ip(&format!("10.244.{s}.{e}")), POD_PORT));
        }
        if s == 0 {
            sp.node_port = Some(NODE_PORT);
        }
        services.push(sp);
    }
    let model = Model { services };
    let lookup = Lookup::build(&model, &cfg);

    let mut lines = String::new();
    let mut stale = 0;
    let mut udp = 0;
    for i in 0..5000u32 {
        let s = (i % 10) as u8;
        let client = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
        let sport = 10000 + (i % 50000) as u16;
        let (dst, dport) = match i % 7 {
            0 if s == 0 => (NODE_IP.to_string(), NODE_PORT),
            _ => (format!("10.96.1.{s}"), 53),
        };
        // Endpoint 1-4 (4 is gone), or not DNATed at all (created with no endpoints), or
        // to the right address on the wrong port.
        let (target, tport, is_stale) = match i % 13 {
            0 => (dst.clone(), dport, true),
            1 => (format!("10.244.{s}.1"), 53, true),
            k => {
                let e = 1 + k % 4;
                (format!("10.244.{s}.{e}"), POD_PORT, e == 4)
            }
        };
        insert_line(
            &mut lines, "udp", &client, &dst, sport, dport, &target, tport,
        );
        udp += 1;
        stale += usize::from(is_stale);
    }
    // Flows the reconciler must not touch: TCP to a Service, UDP elsewhere, IPv6.
    for i in 0..300u16 {
        let c = format!("10.200.0.{}", i % 250);
        insert_line(
            &mut lines,
            "tcp",
            &c,
            "10.96.1.1",
            20000 + i,
            53,
            "10.244.1.4",
            8053,
        );
        insert_line(
            &mut lines,
            "udp",
            &c,
            "9.9.9.9",
            20000 + i,
            53,
            "9.9.9.9",
            53,
        );
        insert_line(
            &mut lines,
            "udp",
            "fd00::7",
            "fd00:96::1",
            20000 + i,
            53,
            "fd00:244::4",
            8053,
        );
    }
    udp += 300;
    let started = Instant::now();
    load(&ns, &lines);
    let load_time = started.elapsed();
    assert_eq!(count(&ns), 5000 + 900);

    let report = in_ns(&ns, || conntrack::reconcile(&lookup)).unwrap();
    eprintln!("5,000 UDP flows loaded in {load_time:?}; reconcile: {report:?}");
    assert_eq!(report.flows_seen, udp, "{report:?}");
    assert_eq!(report.flows_stale, stale, "{report:?}");
    assert_eq!(report.flows_deleted, stale, "{report:?}");
    assert_eq!(count(&ns), 5000 + 900 - stale);
    // What is left holds no stale flow: the tool's own view, judged by the same rules.
    let left = ns.exec_ok(["conntrack", "-L", "-p", "udp", "-f", "ipv4"]);
    for line in left.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let get = |key: &str, nth: usize| {
            w.iter()
                .filter_map(|x| x.strip_prefix(key))
                .nth(nth)
                .unwrap()
                .to_string()
        };
        let flow = rulegen::sync::conntrack::Flow {
            proto: 17,
            orig_src: ip(&get("src=", 0)),
            orig_dst: ip(&get("dst=", 0)),
            orig_sport: get("sport=", 0).parse().unwrap(),
            orig_dport: get("dport=", 0).parse().unwrap(),
            reply_src: ip(&get("src=", 1)),
            reply_sport: get("sport=", 1).parse().unwrap(),
        };
        assert!(!lookup.is_stale(&flow), "{line}");
    }
    // The IPv6 lookup judges the IPv6 flows only (all stale here: no such Service).
    let mut v6 = Lookup::build(
        &Model::default(),
        &RenderConfig {
            family: IpFamily::V6,
            ..cfg.clone()
        },
    );
    let mut old6 = ServicePort::cluster_ip(
        ServicePortName::new("ns", "v6", ""),
        Protocol::Udp,
        ip("fd00:96::1"),
        53,
    );
    old6.endpoints
        .push(Endpoint::ready(ip("fd00:244::4"), POD_PORT));
    let before6 = Lookup::build(
        &Model {
            services: vec![old6],
        },
        &RenderConfig {
            family: IpFamily::V6,
            ..cfg.clone()
        },
    );
    assert_eq!(v6.add_removed(&before6), 1);
    let report6 = in_ns(&ns, || conntrack::reconcile(&v6)).unwrap();
    assert_eq!(
        (report6.flows_seen, report6.flows_deleted),
        (300, 300),
        "{report6:?}"
    );
    assert_eq!(count(&ns), 5000 + 600 - stale);

    // A second pass finds nothing, and the dump alone is quick.
    let again = in_ns(&ns, || conntrack::reconcile(&lookup)).unwrap();
    assert_eq!(
        (again.flows_stale, again.flows_deleted),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(again.flows_seen, udp - stale, "{again:?}");
    eprintln!("second pass: {again:?}");
}

/// The client alone: a dump sees each flow's tuples as `conntrack -L` prints them, and
/// deletions of flows already gone are counted, not failures.
#[test]
fn the_client_dumps_and_deletes_what_the_tool_sees() {
    testkit::needs_root!();
    let ns = Netns::new("ct-client");
    let mut lines = String::new();
    for (proto, src, dst, sport, dport, reply_src, reply_sport) in [
        (
            "udp",
            "10.1.0.1",
            "10.96.0.10",
            1000,
            53,
            "10.244.1.11",
            8053,
        ),
        ("udp", "10.1.0.2", "10.96.0.10", 1001, 53, "10.96.0.10", 53),
        (
            "tcp",
            "10.1.0.3",
            "10.96.0.10",
            1002,
            53,
            "10.244.1.11",
            8053,
        ),
        (
            "udp",
            "fd00::1",
            "fd00:96::10",
            1003,
            53,
            "fd00:244::11",
            8053,
        ),
    ] {
        insert_line(
            &mut lines,
            proto,
            src,
            dst,
            sport,
            dport,
            reply_src,
            reply_sport,
        );
    }
    load(&ns, &lines);
    let ids = ns.exec_ok(["conntrack", "-L", "-p", "udp", "-f", "ipv4", "-o", "id"]);

    let (mut v4, v6, outcome, again) = in_ns(&ns, || {
        let mut ct = Conntrack::open().unwrap();
        let mut v4 = Vec::new();
        ct.dump_udp(IpFamily::V4, |e| v4.push(*e)).unwrap();
        let mut v6 = Vec::new();
        ct.dump_udp(IpFamily::V6, |e| v6.push(*e)).unwrap();
        // The same flows without the kernel's filter (every flow comes, UDP is kept here).
        let mut all = Conntrack::open().unwrap().with_kernel_filter(false);
        let mut unfiltered = Vec::new();
        assert_eq!(
            all.dump_udp(IpFamily::V4, |e| unfiltered.push(*e)).unwrap(),
            2
        );
        let mut sorted = v4.clone();
        sorted.sort_by_key(|e| e.flow.orig_sport);
        unfiltered.sort_by_key(|e| e.flow.orig_sport);
        assert_eq!(unfiltered, sorted);
        let outcome = ct.delete(&v4).unwrap();
        let again = ct.delete(&v4).unwrap();
        (v4, v6, outcome, again)
    });
    v4.sort_by_key(|e| e.flow.orig_sport);
    let got: Vec<String> = v4
        .iter()
        .map(|e| {
            let f = &e.flow;
            format!(
                "{} {}:{} -> {}:{} reply {}:{} id={}",
                f.proto,
                f.orig_src,
                f.orig_sport,
                f.orig_dst,
                f.orig_dport,
                f.reply_src,
                f.reply_sport,
                e.id.unwrap()
            )
        })
        .collect();
    let id_of = |sport: &str| {
        ids.lines()
            .find(|l| l.contains(&format!("sport={sport} ")))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        got,
        [
            format!(
                "17 10.1.0.1:1000 -> 10.96.0.10:53 reply 10.244.1.11:8053 id={}",
                id_of("1000")
            ),
            format!(
                "17 10.1.0.2:1001 -> 10.96.0.10:53 reply 10.96.0.10:53 id={}",
                id_of("1001")
            ),
        ]
    );
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].flow.reply_src, ip("fd00:244::11"));
    assert_eq!((outcome.deleted, outcome.gone, outcome.failed), (2, 0, 0));
    assert_eq!((again.deleted, again.gone, again.failed), (0, 2, 0));
    // The TCP and IPv6 flows are still there.
    assert_eq!(count(&ns), 2);
}

/// Timing at scale (not run by default): `KPRS_CT_FLOWS` UDP flows (100,000 unless set) to
/// 1,000 Services, one in ten stale, plus as many TCP flows the kernel filters out of the dump.
/// `cargo test --release -p proxier --test kernel conntrack:: -- --ignored --nocapture`
#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn reconcile_timing_at_scale() {
    testkit::needs_root!();
    let n: u32 = std::env::var("KPRS_CT_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ns = Netns::new("ct-scale");
    let cfg = config();
    let services = (0..1000u32)
        .map(|s| {
            let mut sp = ServicePort::cluster_ip(
                ServicePortName::new("ns", format!("svc{s}"), ""),
                Protocol::Udp,
                ip(&format!("10.96.{}.{}", s / 256, s % 256)),
                53,
            );
            for e in 1..=9 {
                let addr = format!("10.{}.{}.{e}", 128 + s / 256, s % 256);
                sp.endpoints.push(Endpoint::ready(ip(&addr), POD_PORT));
            }
            sp
        })
        .collect();
    let lookup = Lookup::build(&Model { services }, &cfg);
    let mut lines = String::new();
    for i in 0..n {
        let s = i % 1000;
        let client = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
        let dst = format!("10.96.{}.{}", s / 256, s % 256);
        // Endpoint 1-10 of the Service; 10 is not in the model.
        let e = 1 + (i / 1000) % 10;
        let target = format!("10.{}.{}.{e}", 128 + s / 256, s % 256);
        let sport = 1024 + (i % 60000) as u16;
        insert_line(
            &mut lines, "udp", &client, &dst, sport, 53, &target, POD_PORT,
        );
        insert_line(
            &mut lines, "tcp", &client, &dst, sport, 53, &target, POD_PORT,
        );
    }
    let started = Instant::now();
    load(&ns, &lines);
    eprintln!("{} flows loaded in {:?}", 2 * n, started.elapsed());
    let report = in_ns(&ns, || conntrack::reconcile(&lookup)).unwrap();
    eprintln!("reconcile of {n} UDP flows: {report:?}");
    assert_eq!(report.flows_seen, n as usize);
    assert_eq!(report.flows_deleted, (n / 10) as usize);
    let again = in_ns(&ns, || conntrack::reconcile(&lookup)).unwrap();
    eprintln!("second pass: {again:?}");
    assert_eq!(again.flows_deleted, 0);
}
