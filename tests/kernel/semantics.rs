//! Service semantics proven with real connections (issue #3). Each test writes realistic objects,
//! renders them with the real `kube-proxy-rs --dry-run`, loads the ruleset into a lab node
//! namespace (kernel-lab.md) and opens TCP connections from clients, pods or the node itself. The
//! pod servers answer `<pod name> <peer address>`, so every test asserts the exact set of backends
//! reached and the source address the backend saw (the client's own, or a masqueraded one).
//!
//! Lab addresses: node 192.168.50.1 (client `c` is 192.168.50.2, client `d` 192.168.51.2), pod
//! bridge br0 10.244.1.1/24 (also the address MASQUERADE picks toward a bridged pod), backends
//! pa/pb/pc 10.244.1.11–13, a client pod `px` 10.244.1.20. "Local" endpoints have
//! `nodeName: node-a` (this node), "remote" ones `node-b`, though all sit on the same bridge.
//!
//! Randomness: a tally of 20 connections over two endpoints must reach both; it misses one with
//! probability 2 * 2^-20 (the statistic match is uniform). Other spreads give their own figure next
//! to the assertion; all are below 2^-9.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rulegen::IpFamily;
use testkit::iptables::{Backend, payload_tables, restore_with, save_tables_with};
use testkit::lab::{BRIDGE_IP, BRIDGE_IP6, POD_CIDR, POD_CIDR6, pod_ip6};
use testkit::objects::{Endpoint, SVC_PORT, Service, endpoint_slice, node, render};
use testkit::{Lab, LabBuilder, Netns, Tally, unified_diff};

const NODE_IP: &str = "192.168.50.1";
const NODE_IP6: &str = "fd00:192:168:50::1";
const CLIENT_C: &str = "192.168.50.2";
const POD_A: &str = "10.244.1.11";
const POD_B: &str = "10.244.1.12";
const POD_C: &str = "10.244.1.13";
/// A pod on this node that is a client, never an endpoint.
const POD_X: &str = "10.244.1.20";
/// The node's node-local pod CIDR (`spec.podCIDRs`).
const NODE_POD_CIDR: &str = "10.244.1.0/24";
const NODE_POD_CIDR6: &str = "fd00:10:244:1::/64";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP address")
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn names<'a>(list: &[&'a str]) -> BTreeSet<&'a str> {
    list.iter().copied().collect()
}

/// The v1 Node object for the IPv4 lab.
fn node4() -> String {
    node(&[NODE_IP], &[NODE_POD_CIDR])
}

/// Loads `payload` into the lab's node with `<family>-<backend>-restore -w`, and checks the
/// kernel holds kube-proxy's chains.
fn load(lab: &Lab, backend: Backend, family: IpFamily, payload: &str) {
    if let Err(e) = restore_with(&lab.node, backend, family, &[], payload) {
        panic!("loading the ruleset ({backend}, {family:?}) failed: {e}\npayload:\n{payload}");
    }
    let held = save_tables_with(&lab.node, backend, family, &payload_tables(payload));
    assert!(
        held.contains(":KUBE-SERVICES"),
        "no KUBE-SERVICES after restore:\n{held}"
    );
}

/// Builds the lab and loads the IPv4 `payload` into it.
fn lab_with(builder: LabBuilder, backend: Backend, payload: &str) -> Lab {
    let lab = builder.build();
    assert_eq!(lab.node_ip().to_string(), NODE_IP);
    load(&lab, backend, IpFamily::V4, payload);
    lab
}

/// Asserts where `n` connections went: exactly the backends `want`, seen from exactly the
/// sources `peers`.
#[track_caller]
fn assert_tally(lab: &Lab, what: &str, t: &Tally, want: &[&str], peers: &[&str]) {
    assert!(
        t.reached() == names(want) && t.peers == ips(peers),
        "{what}: expected backends {want:?} seeing source(s) {peers:?}, got {:?} seeing {:?}\n{}",
        t.backends,
        t.peers,
        lab.diagnostics()
    );
}

/// The address MASQUERADE gives a connection toward a pod: the node's br0 ([`BRIDGE_IP`]), also
/// toward a routed pod, whose veth has none (the kernel picks the first suitable node address).
const MASQ: &str = "10.244.1.1";

/// Where a row's connections start.
#[derive(Clone, Copy)]
enum Origin {
    /// The client namespace of that name.
    Client(&'static str),
    /// That client, bound to this extra source address of it.
    ClientAs(&'static str, &'static str),
    /// The pod of that name.
    Pod(&'static str),
    /// The node itself.
    Node,
}
use Origin::{Client, ClientAs, Node, Pod};

/// One row of a test's table: what it checks, where the connections start, the destination
/// address and port, how many connections, the backends they must reach (all of them, no other),
/// and the source addresses those backends must see.
struct Reach<'a>(
    &'a str,
    Origin,
    &'a str,
    u16,
    u32,
    &'a [&'a str],
    &'a [&'a str],
);

/// Runs each row's connections in `lab` and asserts where they went.
#[track_caller]
fn check(lab: &Lab, table: &[Reach]) {
    assert_eq!(BRIDGE_IP.to_string(), MASQ);
    for Reach(what, from, dst, port, n, want, peers) in table {
        let (ns, src) = match *from {
            Client(c) => (&lab.client(c).ns, None),
            ClientAs(c, src) => (&lab.client(c).ns, Some(src)),
            Pod(p) => (&lab.pod(p).ns, None),
            Node => (&lab.node, None),
        };
        let t = lab.tally(ns, src, dst, *port, *n);
        assert_tally(lab, what, &t, want, peers);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. externalTrafficPolicy
// ---------------------------------------------------------------------------------------------

const ETP_LOCAL_IP: &str = "10.96.0.20";
const ETP_CLUSTER_IP: &str = "10.96.0.21";
const ETP_REMOTE_IP: &str = "10.96.0.22";
/// eTP=Local, endpoints pa (local) and pb (remote).
const NP_LOCAL: u16 = 30020;
/// eTP=Cluster, same endpoints.
const NP_CLUSTER: u16 = 30021;
/// eTP=Local, endpoints pa and pb both on node-b.
const NP_REMOTE: u16 = 30022;

fn etp_lab(tag: &str, backend: Backend) -> Lab {
    let objects = vec![
        node4(),
        Service::cluster_ip("etp-local", &[ETP_LOCAL_IP])
            .node_port(NP_LOCAL)
            .external_traffic_policy("Local")
            .yaml(),
        endpoint_slice(
            "etp-local",
            &[Endpoint::local(POD_A), Endpoint::remote(POD_B)],
        ),
        Service::cluster_ip("etp-cluster", &[ETP_CLUSTER_IP])
            .node_port(NP_CLUSTER)
            .external_traffic_policy("Cluster")
            .yaml(),
        endpoint_slice(
            "etp-cluster",
            &[Endpoint::local(POD_A), Endpoint::remote(POD_B)],
        ),
        Service::cluster_ip("etp-remote", &[ETP_REMOTE_IP])
            .node_port(NP_REMOTE)
            .external_traffic_policy("Local")
            .yaml(),
        endpoint_slice(
            "etp-remote",
            &[Endpoint::remote(POD_A), Endpoint::remote(POD_B)],
        ),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("px", POD_X)
        .client("c");
    lab_with(builder, backend, &payload)
}

fn check_etp_local_from_outside(lab: &Lab) {
    // A rule set that used all endpoints would reach pb with probability 1 - 2^-12.
    #[rustfmt::skip]
    let table = [
        Reach("eTP=Local NodePort from outside", Client("c"), NODE_IP, NP_LOCAL, 12, &["pa"], &[CLIENT_C]),
    ];
    check(lab, &table);
}

/// eTP=Local: an outside client reaches only the local endpoint, which sees the client's own IP.
#[test]
fn external_traffic_policy_local_reaches_only_local_endpoints_and_keeps_client_ip() {
    testkit::needs_root!();
    let lab = etp_lab("etpl", Backend::Nft);
    check_etp_local_from_outside(&lab);
}

/// The same on the legacy back end.
#[test]
fn external_traffic_policy_local_legacy_backend() {
    testkit::needs_root!();
    let lab = etp_lab("etpleg", Backend::Legacy);
    check_etp_local_from_outside(&lab);
}

/// eTP=Cluster: external traffic is masqueraded (the backend sees the node's br0 address) and
/// spread over local and remote endpoints.
#[test]
fn external_traffic_policy_cluster_masquerades_and_reaches_all_endpoints() {
    testkit::needs_root!();
    let lab = etp_lab("etpc", Backend::Nft);
    // Both reached: false failure 2 * 2^-20.
    #[rustfmt::skip]
    let table = [
        Reach("eTP=Cluster NodePort from outside", Client("c"), NODE_IP, NP_CLUSTER, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// eTP=Local: a pod on this node connecting to the NodePort on the node IP short-circuits to the
/// Cluster endpoints (the remote pb is reached too), unmasqueraded; also when the Service has no
/// local endpoint at all.
#[test]
fn external_traffic_policy_local_pod_on_the_node_short_circuits_to_all_endpoints() {
    testkit::needs_root!();
    let lab = etp_lab("etpsc", Backend::Nft);
    // Both reached: false failure 2 * 2^-20.
    #[rustfmt::skip]
    let table = [
        Reach("eTP=Local NodePort from a pod on the node", Pod("px"), NODE_IP, NP_LOCAL, 20, &["pa", "pb"], &[POD_X]),
        Reach("eTP=Local NodePort without local endpoints, from a pod on the node", Pod("px"), NODE_IP, NP_REMOTE, 20, &["pa", "pb"], &[POD_X]),
    ];
    check(&lab, &table);
}

/// eTP=Local: node-originated traffic to the NodePort is masqueraded and routed to all endpoints
/// ("masquerade/route LOCAL traffic" rules).
#[test]
fn external_traffic_policy_local_node_originated_traffic_is_masqueraded_to_all_endpoints() {
    testkit::needs_root!();
    let lab = etp_lab("etpnode", Backend::Nft);
    #[rustfmt::skip]
    let table = [
        Reach("eTP=Local NodePort from the node itself", Node, NODE_IP, NP_LOCAL, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// eTP=Local with every endpoint on another node: external traffic is dropped (time-out). Without
/// the DROP it would be refused: nothing listens on the NodePort in the node.
#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_external_traffic() {
    testkit::needs_root!();
    let lab = etp_lab("etpdrop", Backend::Nft);
    lab.expect_dropped(&lab.client("c").ns, None, NODE_IP, NP_REMOTE);
    // The endpoints themselves are fine: a pod's short-circuit reaches them.
    let r = lab.expect_reply(&lab.pod("px").ns, None, NODE_IP, NP_REMOTE);
    assert!(r.backend == "pa" || r.backend == "pb", "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. internalTrafficPolicy
// ---------------------------------------------------------------------------------------------

const ITP_LOCAL_IP: &str = "10.96.0.30";
const ITP_REMOTE_IP: &str = "10.96.0.31";

fn itp_lab(tag: &str) -> Lab {
    let objects = vec![
        node4(),
        Service::cluster_ip("itp-local", &[ITP_LOCAL_IP])
            .internal_traffic_policy("Local")
            .yaml(),
        endpoint_slice(
            "itp-local",
            &[Endpoint::local(POD_A), Endpoint::remote(POD_B)],
        ),
        Service::cluster_ip("itp-remote", &[ITP_REMOTE_IP])
            .internal_traffic_policy("Local")
            .yaml(),
        endpoint_slice(
            "itp-remote",
            &[Endpoint::remote(POD_A), Endpoint::remote(POD_B)],
        ),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("px", POD_X)
        .client("c")
        .service_trap();
    lab_with(builder, Backend::Nft, &payload)
}

/// iTP=Local: the ClusterIP reaches only the local endpoint, from outside (masqueraded: the
/// masquerade rule lives in the SVL chain) and from a pod (not masqueraded).
#[test]
fn internal_traffic_policy_local_reaches_only_local_endpoints() {
    testkit::needs_root!();
    let lab = itp_lab("itpl");
    #[rustfmt::skip]
    let table = [
        Reach("iTP=Local ClusterIP from outside", Client("c"), ITP_LOCAL_IP, SVC_PORT, 12, &["pa"], &[MASQ]),
        Reach("iTP=Local ClusterIP from a pod", Pod("px"), ITP_LOCAL_IP, SVC_PORT, 12, &["pa"], &[POD_X]),
    ];
    check(&lab, &table);
}

/// iTP=Local with no local endpoint: ClusterIP traffic is dropped (time-out), not sent to the
/// remote endpoints and not refused. (The lab's service trap answers any ClusterIP packet that is
/// neither DNATed nor dropped, so the time-out is the DROP rule's doing.)
#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    testkit::needs_root!();
    let lab = itp_lab("itpdrop");
    lab.expect_dropped(&lab.client("c").ns, None, ITP_REMOTE_IP, SVC_PORT);
}

// ---------------------------------------------------------------------------------------------
// 3. sessionAffinity: ClientIP
// ---------------------------------------------------------------------------------------------

const AFF_IP: &str = "10.96.0.40";

fn check_session_affinity(tag: &str, backend: Backend) {
    let objects = vec![
        node4(),
        Service::cluster_ip("aff", &[AFF_IP])
            .session_affinity(600)
            .yaml(),
        endpoint_slice(
            "aff",
            &[
                Endpoint::local(POD_A),
                Endpoint::local(POD_B),
                Endpoint::remote(POD_C),
            ],
        ),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("pc", POD_C)
        .client("c");
    let lab = lab_with(builder, backend, &payload);
    let sources: Vec<String> = (10..22).map(|i| format!("192.168.50.{i}")).collect();
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    lab.add_client_addrs("c", &refs);
    let c = &lab.client("c").ns;

    // One source, 20 connections: one backend (without affinity: false pass 3 * 3^-20).
    let t = lab.tally(c, None, AFF_IP, SVC_PORT, 20);
    assert!(
        t.backends.len() == 1 && t.total() == 20,
        "20 connections from {CLIENT_C} should all reach one backend, got {:?}\n{}",
        t.backends,
        lab.diagnostics()
    );

    // 12 more sources, 3 connections each: each sticks to one backend, and the sources do not all
    // land on the same backend. Each new source picks one of 3 backends uniformly, so a false
    // failure needs the other 11 to pick the first one's: 3^-11 ≈ 5.6e-6 (< 2^-9).
    let mut first_choices = BTreeSet::new();
    for src in &refs {
        let t = lab.tally(c, Some(src), AFF_IP, SVC_PORT, 3);
        assert!(
            t.backends.len() == 1,
            "3 connections from {src} should reach one backend, got {:?}\n{}",
            t.backends,
            lab.diagnostics()
        );
        first_choices.extend(t.backends.into_keys());
    }
    assert!(
        first_choices.len() > 1,
        "12 distinct sources all reached the same backend {first_choices:?}: affinity should be \
         per client IP, not global\n{}",
        lab.diagnostics()
    );
}

/// sessionAffinity ClientIP: one source always reaches the same backend; distinct sources spread.
#[test]
fn session_affinity_client_ip_pins_each_source_to_one_backend() {
    testkit::needs_root!();
    check_session_affinity("aff", Backend::Nft);
}

/// The same on the legacy back end (xt_recent).
#[test]
fn session_affinity_client_ip_legacy_backend() {
    testkit::needs_root!();
    check_session_affinity("affleg", Backend::Legacy);
}

// ---------------------------------------------------------------------------------------------
// 4. Terminating endpoints
// ---------------------------------------------------------------------------------------------

/// No ready endpoint: pa and pb serving+terminating, pc terminating and not serving.
const TERM_FALLBACK_IP: &str = "10.96.0.50";
/// pa ready, pb serving+terminating, pc not serving.
const TERM_MIXED_IP: &str = "10.96.0.51";
/// pb and pc terminating, not serving.
const TERM_DEAD_IP: &str = "10.96.0.52";

fn terminating_lab(tag: &str) -> Lab {
    let objects = vec![
        node4(),
        Service::cluster_ip("term-fallback", &[TERM_FALLBACK_IP]).yaml(),
        endpoint_slice(
            "term-fallback",
            &[
                Endpoint::local(POD_A).terminating(true),
                Endpoint::remote(POD_B).terminating(true),
                Endpoint::local(POD_C).terminating(false),
            ],
        ),
        Service::cluster_ip("term-mixed", &[TERM_MIXED_IP]).yaml(),
        endpoint_slice(
            "term-mixed",
            &[
                Endpoint::local(POD_A),
                Endpoint::local(POD_B).terminating(true),
                Endpoint::local(POD_C).terminating(false),
            ],
        ),
        Service::cluster_ip("term-dead", &[TERM_DEAD_IP]).yaml(),
        endpoint_slice(
            "term-dead",
            &[
                Endpoint::local(POD_B).terminating(false),
                Endpoint::remote(POD_C).terminating(false),
            ],
        ),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("pc", POD_C)
        .client("c");
    lab_with(builder, Backend::Nft, &payload)
}

/// No endpoint is ready: the serving terminating ones still answer (fallback), never the
/// non-serving one.
#[test]
fn terminating_endpoints_serve_when_no_endpoint_is_ready() {
    testkit::needs_root!();
    let lab = terminating_lab("termfb");
    // Both serving ones reached: false failure 2 * 2^-20.
    #[rustfmt::skip]
    let table = [
        Reach("all-terminating Service", Client("c"), TERM_FALLBACK_IP, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// One ready endpoint: only it is used, not the serving terminating one.
#[test]
fn terminating_endpoints_are_unused_while_a_ready_endpoint_exists() {
    testkit::needs_root!();
    let lab = terminating_lab("termmix");
    // A rule set that also used pb / pc: false pass (1/3)^12.
    #[rustfmt::skip]
    let table = [
        Reach("ready + terminating Service", Client("c"), TERM_MIXED_IP, SVC_PORT, 12, &["pa"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// Terminating endpoints that are not serving are never used: with only those, the Service has
/// no endpoints and is refused.
#[test]
fn terminating_endpoints_that_are_not_serving_are_never_used() {
    testkit::needs_root!();
    let lab = terminating_lab("termdead");
    lab.expect_refused(&lab.client("c").ns, None, TERM_DEAD_IP, SVC_PORT);
}

// ---------------------------------------------------------------------------------------------
// 5. Topology-aware routing (zone hints)
// ---------------------------------------------------------------------------------------------

/// pa hinted for zone-a (this node's zone), pb and pc for zone-b.
const TOPO_ZONE_IP: &str = "10.96.0.60";
/// pa zone-a, pb zone-b, pc without hints.
const TOPO_PARTIAL_IP: &str = "10.96.0.61";

fn topology_lab(tag: &str) -> Lab {
    let objects = vec![
        node4(),
        Service::cluster_ip("topo-zone", &[TOPO_ZONE_IP]).yaml(),
        endpoint_slice(
            "topo-zone",
            &[
                Endpoint::remote(POD_A).zone_hints(&["zone-a"]),
                Endpoint::remote(POD_B).zone_hints(&["zone-b"]),
                Endpoint::remote(POD_C).zone_hints(&["zone-b"]),
            ],
        ),
        Service::cluster_ip("topo-partial", &[TOPO_PARTIAL_IP]).yaml(),
        endpoint_slice(
            "topo-partial",
            &[
                Endpoint::remote(POD_A).zone_hints(&["zone-a"]),
                Endpoint::remote(POD_B).zone_hints(&["zone-b"]),
                Endpoint::remote(POD_C),
            ],
        ),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("pc", POD_C)
        .client("c");
    lab_with(builder, Backend::Nft, &payload)
}

/// Every endpoint has a zone hint and one names this node's zone: only that endpoint is used.
#[test]
fn topology_hints_keep_traffic_in_the_node_zone() {
    testkit::needs_root!();
    let lab = topology_lab("topo");
    #[rustfmt::skip]
    let table = [
        Reach("zone-hinted Service", Client("c"), TOPO_ZONE_IP, SVC_PORT, 12, &["pa"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// One ready endpoint lacks a hint: hints are ignored and every endpoint is used.
#[test]
fn topology_hints_are_ignored_when_an_endpoint_lacks_them() {
    testkit::needs_root!();
    let lab = topology_lab("topofb");
    // All three reached: false failure <= 3 * (2/3)^30 ≈ 1.6e-5.
    #[rustfmt::skip]
    let table = [
        Reach("partly hinted Service", Client("c"), TOPO_PARTIAL_IP, SVC_PORT, 30, &["pa", "pb", "pc"], &[MASQ]),
    ];
    check(&lab, &table);
}

// ---------------------------------------------------------------------------------------------
// 6. loadBalancerSourceRanges
// ---------------------------------------------------------------------------------------------

const LB_CLUSTER_IP: &str = "10.96.0.70";
const LB_VIP: &str = "198.51.100.20";
const LB_NODE_PORT: u16 = 30070;

/// An eTP=Cluster LoadBalancer Service whose source ranges admit client c's subnet only. The VIP
/// is a local address of the node (as a cloud LB that delivers packets addressed to the VIP does,
/// e.g. GCE): client d's packets that nothing drops would be refused by the node's own stack, so
/// a time-out proves the KUBE-PROXY-FIREWALL DROP.
fn lb_lab(tag: &str, backend: Backend) -> Lab {
    let objects = vec![
        node4(),
        Service::cluster_ip("lb", &[LB_CLUSTER_IP])
            .load_balancer(LB_NODE_PORT, &[LB_VIP], &["192.168.50.0/24"])
            .yaml(),
        endpoint_slice("lb", &[Endpoint::local(POD_A), Endpoint::remote(POD_B)]),
    ];
    let payload = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .client("c")
        .client("d");
    let lab = lab_with(builder, backend, &payload);
    lab.node
        .exec_ok(["ip", "addr", "add", &format!("{LB_VIP}/32"), "dev", "lo"]);
    lab
}

fn check_lb_source_ranges(lab: &Lab) {
    #[rustfmt::skip]
    let table = [
        Reach("LB VIP from an allowed source", Client("c"), LB_VIP, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(lab, &table);
    lab.expect_dropped(&lab.client("d").ns, None, LB_VIP, SVC_PORT);
}

/// Client c (in the source ranges) reaches the VIP; client d (outside them) is dropped.
#[test]
fn load_balancer_source_ranges_admit_only_listed_clients() {
    testkit::needs_root!();
    let lab = lb_lab("lbsr", Backend::Nft);
    check_lb_source_ranges(&lab);
}

/// The same on the legacy back end.
#[test]
fn load_balancer_source_ranges_legacy_backend() {
    testkit::needs_root!();
    let lab = lb_lab("lbsrleg", Backend::Legacy);
    check_lb_source_ranges(&lab);
}

/// Source ranges do not apply to the Service's NodePort: client d reaches it.
#[test]
fn load_balancer_source_ranges_do_not_apply_to_the_node_port() {
    testkit::needs_root!();
    let lab = lb_lab("lbnp", Backend::Nft);
    #[rustfmt::skip]
    let table = [
        Reach("NodePort of a source-ranged LB from a client outside the ranges", Client("d"), NODE_IP, LB_NODE_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

// ---------------------------------------------------------------------------------------------
// 7. Local-traffic detection, 8. masquerade-all and KUBE-FORWARD
// ---------------------------------------------------------------------------------------------

const WEB_IP: &str = "10.96.0.80";
const WEB_NODE_PORT: u16 = 30080;
/// A pod address of another node (in the cluster CIDR, outside this node's pod CIDR), used as a
/// second source address of client c: "a pod on node-b" reaching the ClusterIP through the node.
const OFF_NODE_POD: &str = "10.244.7.2";

fn web_objects() -> Vec<String> {
    vec![
        node4(),
        Service::cluster_ip("web", &[WEB_IP])
            .node_port(WEB_NODE_PORT)
            .yaml(),
        endpoint_slice("web", &[Endpoint::local(POD_A), Endpoint::local(POD_B)]),
    ]
}

/// Renders `web` with `args`, builds pa, pb and the client pod px (all routed through `vp<name>`
/// veths when `routed`, else bridged), client c with the extra source [`OFF_NODE_POD`], and checks
/// which ClusterIP connections are masqueraded: px never, c always, c-as-off-node-pod when
/// `off_node_masqueraded`.
fn check_local_detection(tag: &str, args: &[&str], routed: bool, off_node_masqueraded: bool) {
    let payload = render(tag, &web_objects(), args);
    let mut builder = Lab::builder(tag).echo_peer().client("c");
    for (name, addr) in [("pa", POD_A), ("pb", POD_B), ("px", POD_X)] {
        builder = if routed {
            builder.routed_pod(name, addr)
        } else {
            builder.pod(name, addr)
        };
    }
    let lab = lab_with(builder, Backend::Nft, &payload);
    lab.add_client_addrs("c", &[OFF_NODE_POD]);
    // MASQUERADE takes the outgoing interface's address: br0's toward a bridged pod; a routed
    // pod's veth has none, so the kernel picks the first suitable node address, also br0's.
    let (off_node, how) = if off_node_masqueraded {
        (MASQ, "masqueraded")
    } else {
        (OFF_NODE_POD, "not masqueraded")
    };
    let (local, outside, other) = (
        format!("{args:?}: ClusterIP from a local pod (not masqueraded)"),
        format!("{args:?}: ClusterIP from outside (masqueraded)"),
        format!("{args:?}: ClusterIP from another node's pod {OFF_NODE_POD} ({how})"),
    );
    #[rustfmt::skip]
    let table = [
        Reach(&local, Pod("px"), WEB_IP, SVC_PORT, 20, &["pa", "pb"], &[POD_X]),
        Reach(&outside, Client("c"), WEB_IP, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
        Reach(&other, ClientAs("c", OFF_NODE_POD), WEB_IP, SVC_PORT, 20, &["pa", "pb"], &[off_node]),
    ];
    check(&lab, &table);
}

/// `--detect-local-mode BridgeInterface --pod-bridge-interface br0`: traffic entering from br0 is
/// local (not masqueraded); anything else (including a pod address arriving over the uplink) is.
#[test]
fn local_detection_bridge_interface() {
    testkit::needs_root!();
    check_local_detection(
        "ldbr",
        &[
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "br0",
        ],
        false,
        true,
    );
}

/// `--detect-local-mode ClusterCIDR --cluster-cidr 10.244.0.0/16`: any source in the cluster CIDR
/// is local, even another node's pod.
#[test]
fn local_detection_cluster_cidr() {
    testkit::needs_root!();
    check_local_detection(
        "ldcc",
        &[
            "--detect-local-mode",
            "ClusterCIDR",
            "--cluster-cidr",
            POD_CIDR,
        ],
        false,
        false,
    );
}

/// `--detect-local-mode NodeCIDR` (Node `spec.podCIDRs: [10.244.1.0/24]`): only this node's pod
/// CIDR is local, so another node's pod is masqueraded although it is in `--cluster-cidr`.
#[test]
fn local_detection_node_cidr() {
    testkit::needs_root!();
    check_local_detection(
        "ldnc",
        &[
            "--detect-local-mode",
            "NodeCIDR",
            "--cluster-cidr",
            POD_CIDR,
        ],
        false,
        true,
    );
}

/// `--detect-local-mode InterfaceNamePrefix --pod-interface-name-prefix vp` with routed pods
/// (node-side veths `vppa`, `vppb`, `vppx`): traffic entering from `vp+` is local.
#[test]
fn local_detection_interface_name_prefix() {
    testkit::needs_root!();
    check_local_detection(
        "ldif",
        &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            testkit::lab::ROUTED_POD_IF_PREFIX,
            "--cluster-cidr",
            POD_CIDR,
        ],
        true,
        true,
    );
}

/// `--masquerade-all`: even a local pod's ClusterIP connection is masqueraded.
#[test]
fn masquerade_all_masquerades_pod_traffic() {
    testkit::needs_root!();
    let tag = "masqall";
    let payload = render(
        tag,
        &web_objects(),
        &["--cluster-cidr", POD_CIDR, "--masquerade-all"],
    );
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("px", POD_X)
        .client("c");
    let lab = lab_with(builder, Backend::Nft, &payload);
    #[rustfmt::skip]
    let table = [
        Reach("--masquerade-all: ClusterIP from a local pod", Pod("px"), WEB_IP, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// With the node's filter FORWARD policy DROP, NodePort and ClusterIP traffic from outside still
/// flows: KUBE-FORWARD accepts the masquerade-marked first packet and the established rest. A
/// direct connection to a pod (no Service, no mark) is dropped, which shows the policy bites.
#[test]
fn kube_forward_accepts_service_traffic_under_a_drop_forward_policy() {
    testkit::needs_root!();
    let tag = "fwd";
    let payload = render(tag, &web_objects(), &["--cluster-cidr", POD_CIDR]);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .client("c");
    let lab = lab_with(builder, Backend::Nft, &payload);
    // The dry-run text sets `:FORWARD ACCEPT`; the policy is the node's, set after the load.
    lab.node
        .exec_ok(["iptables-nft", "-w", "-P", "FORWARD", "DROP"]);
    let c = &lab.client("c").ns;
    lab.expect_dropped(c, None, POD_A, 8080);
    #[rustfmt::skip]
    let table = [
        Reach("NodePort with FORWARD policy DROP", Client("c"), NODE_IP, WEB_NODE_PORT, 20, &["pa", "pb"], &[MASQ]),
        Reach("ClusterIP from outside with FORWARD policy DROP", Client("c"), WEB_IP, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

// ---------------------------------------------------------------------------------------------
// 9. Localhost NodePorts
// ---------------------------------------------------------------------------------------------

/// Renders `web` with `extra`, builds the lab and sets `net.ipv4.conf.all.route_localnet=1` in
/// the node, as the agent will (the dry-run only prints rules).
fn localhost_lab(tag: &str, extra: &[&str]) -> Lab {
    let mut args = vec!["--cluster-cidr", POD_CIDR];
    args.extend_from_slice(extra);
    let payload = render(tag, &web_objects(), &args);
    let builder = Lab::builder(tag)
        .echo_peer()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .client("c");
    let lab = lab_with(builder, Backend::Nft, &payload);
    lab.node.sysctl("net.ipv4.conf.all.route_localnet", "1");
    lab
}

/// Localhost NodePorts on (the default): from the node, 127.0.0.1:<nodePort> is served, and the
/// 127.0.0.1 source is masqueraded to the node's br0 address.
#[test]
fn localhost_node_port_is_served() {
    testkit::needs_root!();
    let lab = localhost_lab("lhnp", &[]);
    #[rustfmt::skip]
    let table = [
        Reach("NodePort on 127.0.0.1 from the node", Node, "127.0.0.1", WEB_NODE_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

/// `--iptables-localhost-nodeports=false`: 127.0.0.1:<nodePort> is not DNATed (the NodePort tail
/// rule excludes 127.0.0.0/8), so the connection reaches the node's own stack, where nothing
/// listens on the port: the kernel answers with a RST and the connection is refused at once. The
/// node-IP NodePort still works from the node.
#[test]
fn localhost_node_port_disabled_is_not_served() {
    testkit::needs_root!();
    let lab = localhost_lab("lhoff", &["--iptables-localhost-nodeports=false"]);
    lab.expect_refused(&lab.node, None, "127.0.0.1", WEB_NODE_PORT);
    #[rustfmt::skip]
    let table = [
        Reach("node-IP NodePort from the node, localhost NodePorts off", Node, NODE_IP, WEB_NODE_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(&lab, &table);
}

// ---------------------------------------------------------------------------------------------
// 10. Dual-stack / IPv6
// ---------------------------------------------------------------------------------------------

const DS_CLUSTER_IP4: &str = "10.96.0.100";
const DS_CLUSTER_IP6: &str = "fd00:10:96::10";
const DS_NODE_PORT: u16 = 30100;

/// A dual-stack NodePort Service (IPv4 + IPv6 cluster IPs, one EndpointSlice per family), the
/// dual-stack Node, rendered for both families.
fn dual_stack_lab(tag: &str, backend: Backend) -> Lab {
    let a6 = pod_ip6(POD_A.parse().unwrap()).to_string();
    let b6 = pod_ip6(POD_B.parse().unwrap()).to_string();
    let objects = vec![
        node(&[NODE_IP, NODE_IP6], &[NODE_POD_CIDR, NODE_POD_CIDR6]),
        Service::cluster_ip("ds", &[DS_CLUSTER_IP4, DS_CLUSTER_IP6])
            .node_port(DS_NODE_PORT)
            .yaml(),
        endpoint_slice("ds", &[Endpoint::local(POD_A), Endpoint::remote(POD_B)]),
        endpoint_slice("ds", &[Endpoint::local(&a6), Endpoint::remote(&b6)]),
    ];
    let v4 = render(tag, &objects, &["--cluster-cidr", POD_CIDR]);
    let v6 = render(
        tag,
        &objects,
        &["--ip-family", "ipv6", "--cluster-cidr", POD_CIDR6],
    );
    assert!(
        v6.contains(&format!("-d {DS_CLUSTER_IP6}/128")),
        "the IPv6 ruleset has no rule for {DS_CLUSTER_IP6}:\n{v6}"
    );
    let lab = Lab::builder(tag)
        .echo_peer()
        .dual_stack()
        .pod("pa", POD_A)
        .pod("pb", POD_B)
        .pod("px", POD_X)
        .client("c")
        .build();
    assert_eq!(lab.node_ip6().to_string(), NODE_IP6);
    load(&lab, backend, IpFamily::V4, &v4);
    load(&lab, backend, IpFamily::V6, &v6);
    lab
}

fn check_dual_stack(lab: &Lab) {
    let br6 = BRIDGE_IP6.to_string();
    let px6 = pod_ip6(POD_X.parse().unwrap()).to_string();
    // The last two: the same Service over IPv4, in the same node.
    #[rustfmt::skip]
    let table = [
        Reach("IPv6 ClusterIP from outside", Client("c"), DS_CLUSTER_IP6, SVC_PORT, 20, &["pa", "pb"], &[&br6]),
        Reach("IPv6 NodePort from outside", Client("c"), NODE_IP6, DS_NODE_PORT, 20, &["pa", "pb"], &[&br6]),
        Reach("IPv6 ClusterIP from a pod", Pod("px"), DS_CLUSTER_IP6, SVC_PORT, 20, &["pa", "pb"], &[&px6]),
        Reach("IPv4 ClusterIP of the dual-stack Service", Client("c"), DS_CLUSTER_IP4, SVC_PORT, 20, &["pa", "pb"], &[MASQ]),
        Reach("IPv4 NodePort of the dual-stack Service", Client("c"), NODE_IP, DS_NODE_PORT, 20, &["pa", "pb"], &[MASQ]),
    ];
    check(lab, &table);
}

/// A dual-stack Service answers on its IPv6 ClusterIP and NodePort (masqueraded from outside, not
/// from a pod) and on its IPv4 ClusterIP and NodePort, with both families' rulesets loaded (nft).
#[test]
fn dual_stack_service_answers_over_ipv6_and_ipv4() {
    testkit::needs_root!();
    let lab = dual_stack_lab("ds", Backend::Nft);
    check_dual_stack(&lab);
}

/// The same on the legacy back end.
#[test]
fn dual_stack_service_legacy_backend() {
    testkit::needs_root!();
    let lab = dual_stack_lab("dsleg", Backend::Legacy);
    check_dual_stack(&lab);
}

/// IPv6 objects covering every rule shape (NodePort eTP=Local, LB with source ranges and
/// affinity, iTP=Local without local endpoints, no endpoints, terminating fallback).
fn ipv6_round_trip_objects() -> Vec<String> {
    let e = |last: u8| format!("fd00:10:244:1::{last}");
    vec![
        node(&[NODE_IP, NODE_IP6], &[NODE_POD_CIDR, NODE_POD_CIDR6]),
        Service::cluster_ip("v6-np", &["fd00:10:96::20"])
            .node_port(30200)
            .external_traffic_policy("Local")
            .yaml(),
        endpoint_slice(
            "v6-np",
            &[Endpoint::local(&e(11)), Endpoint::remote(&e(12))],
        ),
        Service::cluster_ip("v6-lb", &["fd00:10:96::21"])
            .load_balancer(
                30201,
                &["2001:db8::20"],
                &["fd00:192:168:50::/64", "2001:db8:1::/48"],
            )
            .session_affinity(600)
            .yaml(),
        endpoint_slice(
            "v6-lb",
            &[
                Endpoint::local(&e(11)),
                Endpoint::remote(&e(12)),
                Endpoint::remote(&e(13)),
            ],
        ),
        Service::cluster_ip("v6-itp", &["fd00:10:96::22"])
            .internal_traffic_policy("Local")
            .yaml(),
        endpoint_slice("v6-itp", &[Endpoint::remote(&e(12))]),
        Service::cluster_ip("v6-empty", &["fd00:10:96::23"])
            .node_port(30203)
            .yaml(),
        Service::cluster_ip("v6-term", &["fd00:10:96::24"]).yaml(),
        endpoint_slice(
            "v6-term",
            &[
                Endpoint::local(&e(11)).terminating(true),
                Endpoint::local(&e(12)).terminating(false),
            ],
        ),
    ]
}

/// The IPv6 ruleset, for several flag sets, is exactly what `ip6tables-{legacy,nft}-save` prints
/// after loading it into a fresh namespace (filter and nat, in the payload's order).
#[test]
fn ipv6_ruleset_survives_the_kernel_round_trip() {
    testkit::needs_root!();
    let objects = ipv6_round_trip_objects();
    let flag_sets: [&[&str]; 4] = [
        &["--cluster-cidr", POD_CIDR6],
        &["--cluster-cidr", POD_CIDR6, "--masquerade-all"],
        &[
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "br0",
        ],
        &[
            "--detect-local-mode",
            "NodeCIDR",
            "--nodeport-addresses",
            "fd00:192:168:50::/64",
        ],
    ];
    let mut failures = Vec::new();
    for (i, flags) in flag_sets.iter().enumerate() {
        let mut args = vec!["--ip-family", "ipv6"];
        args.extend_from_slice(flags);
        let text = render(&format!("v6rt{i}"), &objects, &args);
        assert!(
            text.contains("DNAT --to-destination [fd00:10:244:1::11]:8080"),
            "{args:?}: no IPv6 DNAT in the rendered text:\n{text}"
        );
        let tables = payload_tables(&text);
        for backend in Backend::ALL {
            let ns = Netns::new(&format!("v6rt{i}-{backend}"));
            if let Err(e) = restore_with(&ns, backend, IpFamily::V6, &[], &text) {
                failures.push(format!("{args:?} [{backend}]: restore rejected it: {e}"));
                continue;
            }
            let saved = save_tables_with(&ns, backend, IpFamily::V6, &tables);
            if saved != text {
                failures.push(format!(
                    "{args:?} [{backend}]: the kernel holds something else (- rendered, + \
                     ip6tables-{backend}-save):\n{}",
                    unified_diff(&text, &saved, "rendered", "saved")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} IPv6 round trip(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
