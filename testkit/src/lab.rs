//! A lab that carries real packets (kernel-lab.md): a node namespace with a pod bridge, pod
//! namespaces each running a TCP server that answers its own name, and client namespaces joined to
//! the node by a veth pair. Nothing is connected to the root namespace.
//!
//! ```text
//!  client c (192.168.50.2/24) ──veth c-c── node (192.168.50.1/24)   [first client: the node's IP]
//!  client d (192.168.51.2/24) ──veth c-d── node (192.168.51.1/24)
//!                                          node br0 10.244.1.1/24, route 10.96.0.0/12 dev br0
//!  pod pa (10.244.1.11/24) ──veth v-pa (port of br0)──┘
//!  routed pod pr (10.244.1.21/32) ──veth vppr── node (route 10.244.1.21/32 dev vppr)
//! ```
//!
//! Options: [`LabBuilder::echo_peer`] makes every server answer `<name> <peer address>` (so a test
//! sees whether the source was masqueraded, see [`Reply`]); [`LabBuilder::dual_stack`] adds IPv6
//! on every link ([`POD_CIDR6`], clients `fd00:192:168:<50+i>::2/64`); [`LabBuilder::routed_pod`]
//! adds a pod that is not on the bridge but routed through its own veth (`vp<name>`), as
//! Calico-style CNIs do. A "node-originated" client is just [`Lab::node`] passed to the probes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::sock;

/// Pod CIDR of the cluster (`--cluster-cidr`).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The node's pod bridge address (and the pods' default gateway).
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The service range, routed to `br0` in the node so an un-DNATed ClusterIP can be REJECTed.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The port pod servers listen on unless told otherwise.
pub const DEFAULT_POD_PORT: u16 = 8080;
/// IPv6 pod CIDR of the cluster (`--cluster-cidr` for `--ip-family ipv6`).
pub const POD_CIDR6: &str = "fd00:10:244::/56";
/// The node's IPv6 pod bridge address in a [`LabBuilder::dual_stack`] lab.
pub const BRIDGE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x1, 0, 0, 0, 1);
/// The IPv6 service range, routed to `br0` in a dual-stack node.
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// Prefix of the node-side interface of a [`LabBuilder::routed_pod`] (`vp<name>`), for
/// `--detect-local-mode InterfaceNamePrefix`.
pub const ROUTED_POD_IF_PREFIX: &str = "vp";
/// Name and address of the [`LabBuilder::service_trap`] pod.
pub const TRAP_POD: &str = "trap";
/// The trap pod's address.
pub const TRAP_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 254);
/// The port the trap answers on (every Service of the tests uses it).
pub const TRAP_PORT: u16 = 80;
/// Time-out of a connection that is expected to be dropped: the probe reports
/// [`ConnErr::Timeout`] after this long.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// Time-out of a connection that is expected to succeed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The IPv6 address a dual-stack lab gives the pod at `v4` (10.244.1.11 → fd00:10:244:1::11).
pub fn pod_ip6(v4: Ipv4Addr) -> Ipv6Addr {
    format!("fd00:10:244:1::{}", v4.octets()[3])
        .parse()
        .expect("pod IPv6 address")
}

/// Why a [`connect`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnErr {
    /// ECONNREFUSED: a RST or an ICMP port-unreachable (a REJECT) came back.
    Refused,
    /// No answer within the time-out (connect or read).
    Timeout,
    /// EHOSTUNREACH / ENETUNREACH (no route, or an ICMP host/net unreachable).
    Unreachable(String),
    /// Anything else (including failing to enter the namespace).
    Other(String),
}

impl fmt::Display for ConnErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnErr::Refused => f.write_str("connection refused"),
            ConnErr::Timeout => f.write_str("timed out"),
            ConnErr::Unreachable(e) => write!(f, "unreachable: {e}"),
            ConnErr::Other(e) => write!(f, "error: {e}"),
        }
    }
}

/// Opens a TCP connection from inside `ns` to `ip:port`, reads until the server closes, and returns
/// what it said (trailing whitespace trimmed). The socket is created by a fresh thread that has
/// `setns`-ed into `ns`, so it never exists in the root namespace; if entering the namespace fails,
/// no connection is attempted. `timeout` bounds the connect and, separately, the read.
pub fn connect(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<String, ConnErr> {
    connect_from(ns, None, ip, port, timeout)
}

/// [`connect`] with the socket bound to source address `src` first (port chosen by the kernel),
/// so one client namespace can act as many clients. `src: None` is exactly [`connect`].
pub fn connect_from(
    ns: &Netns,
    src: Option<IpAddr>,
    ip: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, ConnErr> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|e| ConnErr::Other(format!("bad IP {ip:?}: {e}")))?;
    if let Some(src) = src
        && src.is_ipv4() != ip.is_ipv4()
    {
        return Err(ConnErr::Other(format!(
            "source {src} and destination {ip} differ in family"
        )));
    }
    let dst = SocketAddr::new(ip, port);
    let path = ns.path();
    thread::spawn(move || {
        // Only this new thread enters the namespace; it ends when this closure returns.
        sock::enter(&path).map_err(|e| ConnErr::Other(e.to_string()))?;
        let mut stream = match src {
            None => TcpStream::connect_timeout(&dst, timeout),
            Some(src) => sock::connect_bound(SocketAddr::new(src, 0), dst, timeout),
        }
        .map_err(classify)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| ConnErr::Other(e.to_string()))?;
        let mut buf = String::new();
        stream.read_to_string(&mut buf).map_err(classify)?;
        Ok(buf.trim_end().to_string())
    })
    .join()
    .unwrap_or_else(|_| Err(ConnErr::Other("connect thread panicked".into())))
}

/// What an [`LabBuilder::echo_peer`] server answered: its pod name and the source address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The pod that answered.
    pub backend: String,
    /// The source address it saw.
    pub peer: IpAddr,
}

impl Reply {
    /// Parses `<name> <peer>`; socat prints an IPv6 peer as `[0000:…:0001]`.
    pub fn parse(text: &str) -> Result<Reply, String> {
        let mut parts = text.split_whitespace();
        let (Some(backend), Some(peer), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("expected `<name> <peer address>`, got {text:?}"));
        };
        let peer = peer
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|e| format!("bad peer address in {text:?}: {e}"))?;
        Ok(Reply {
            backend: backend.to_string(),
            peer,
        })
    }
}

/// Where a series of connections went: backend name → count, and every source address the
/// backends saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// How many connections each backend answered.
    pub backends: BTreeMap<String, u32>,
    /// Every source address the backends saw.
    pub peers: BTreeSet<IpAddr>,
}

impl Tally {
    /// The set of backends reached.
    pub fn reached(&self) -> BTreeSet<&str> {
        self.backends.keys().map(String::as_str).collect()
    }

    /// How many connections were answered.
    pub fn total(&self) -> u32 {
        self.backends.values().sum()
    }
}

fn classify(e: std::io::Error) -> ConnErr {
    match e.kind() {
        ErrorKind::ConnectionRefused => ConnErr::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ConnErr::Timeout,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            ConnErr::Unreachable(e.to_string())
        }
        _ => ConnErr::Other(e.to_string()),
    }
}

/// A pod: its own namespace, `eth0` bridged into the node's `br0`, a server per port answering
/// its name.
pub struct Pod {
    /// Its name (and its server's answer).
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address ([`pod_ip6`]) in a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
    /// The ports its servers listen on.
    pub ports: Vec<u16>,
    /// Routed through its own veth `vp<name>` rather than bridged into `br0`.
    pub routed: bool,
    /// Its namespace.
    pub ns: Netns,
}

/// A client namespace joined to the node by its own veth pair and /24.
pub struct Client {
    /// Its name.
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// The node's address on this client's link.
    pub node_ip: Ipv4Addr,
    /// The client's IPv6 address (`fd00:192:168:<50+i>::2`) in a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
    /// The node's IPv6 address on this link (`fd00:192:168:<50+i>::1`) in a dual-stack lab.
    pub node_ip6: Option<Ipv6Addr>,
    /// Its namespace.
    pub ns: Netns,
}

/// The lab. Drop deletes every namespace (killing the servers first).
pub struct Lab {
    /// The node namespace (the rules go here).
    pub node: Netns,
    /// The pods, in the order they were added.
    pub pods: Vec<Pod>,
    /// The clients, in the order they were added.
    pub clients: Vec<Client>,
    /// Whether every link also has IPv6.
    pub dual_stack: bool,
}

/// Gives `ns`'s `eth0` the IPv6 address `addr/64` (no duplicate address detection, so it is usable
/// at once) and a default route via `gateway`.
fn eth0_ipv6(ns: &Netns, addr: Ipv6Addr, gateway: Ipv6Addr) {
    let (addr, gateway) = (format!("{addr}/64"), gateway.to_string());
    ns.exec_ok(["ip", "-6", "addr", "add", &addr, "dev", "eth0", "nodad"]);
    ns.exec_ok(["ip", "-6", "route", "add", "default", "via", &gateway]);
}

/// Builder: `Lab::builder("cip").pod("pa", "10.244.1.11").client("c").build()`.
pub struct LabBuilder {
    tag: String,
    pods: Vec<PodSpec>,
    clients: Vec<String>,
    echo_peer: bool,
    dual_stack: bool,
    service_trap: bool,
}

struct PodSpec {
    name: String,
    ip: Ipv4Addr,
    ports: Vec<u16>,
    routed: bool,
}

impl Lab {
    /// A builder for a lab whose namespaces are tagged `tag`.
    pub fn builder(tag: &str) -> LabBuilder {
        LabBuilder {
            tag: tag.to_string(),
            pods: Vec::new(),
            clients: Vec::new(),
            echo_peer: false,
            dual_stack: false,
            service_trap: false,
        }
    }

    #[track_caller]
    /// The pod named `name` (panics if there is none).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in the lab"))
    }

    #[track_caller]
    /// The client named `name` (panics if there is none).
    pub fn client(&self, name: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no client {name:?} in the lab"))
    }

    /// The node's address: its side of the first client's link (192.168.50.1).
    #[track_caller]
    pub fn node_ip(&self) -> Ipv4Addr {
        self.clients
            .first()
            .expect("the node IP is the first client's link: add a client")
            .node_ip
    }

    /// Connects from client `client` to `ip:port` (see [`connect`]).
    pub fn connect(
        &self,
        client: &str,
        ip: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<String, ConnErr> {
        connect(&self.client(client).ns, ip, port, timeout)
    }

    /// The node's IPv6 address: its side of the first client's link (fd00:192:168:50::1).
    #[track_caller]
    pub fn node_ip6(&self) -> Ipv6Addr {
        self.clients
            .first()
            .and_then(|c| c.node_ip6)
            .expect("the node IPv6 is the first client's link in a dual-stack lab")
    }

    /// Adds source addresses to client `client`'s `eth0` for [`Lab::probe_from`]. Addresses in
    /// the client's /24 are added as /24 (secondary); any other address as /32, plus a /32 route
    /// in the node via the client, so replies to it find their way back.
    pub fn add_client_addrs(&self, client: &str, addrs: &[&str]) {
        let c = self.client(client);
        for a in addrs {
            let ip: Ipv4Addr = a.parse().expect("client IPv4 address");
            let same_subnet = ip.octets()[..3] == c.ip.octets()[..3];
            let plen = if same_subnet { 24 } else { 32 };
            c.ns.exec_ok(["ip", "addr", "add", &format!("{ip}/{plen}"), "dev", "eth0"]);
            if !same_subnet {
                self.node.exec_ok([
                    "ip",
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "via",
                    &c.ip.to_string(),
                ]);
            }
        }
    }

    /// Every address the node holds (`ip -o addr`), any family, any scope.
    pub fn node_addrs(&self) -> BTreeSet<IpAddr> {
        let out = self.node.exec_ok(["ip", "-o", "addr", "show"]);
        out.lines()
            .filter_map(|l| {
                let mut w = l
                    .split_whitespace()
                    .skip_while(|w| *w != "inet" && *w != "inet6");
                w.next()?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// One connection from `from` (a client's, a pod's or the node's namespace), optionally bound
    /// to source `src`, to `ip:port` of an [`LabBuilder::echo_peer`] server.
    pub fn probe_from(
        &self,
        from: &Netns,
        src: Option<&str>,
        ip: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Reply, ConnErr> {
        let src = src.map(|s| s.parse::<IpAddr>().expect("source address"));
        let text = connect_from(from, src, ip, port, timeout)?;
        Reply::parse(&text).map_err(ConnErr::Other)
    }

    /// [`Lab::probe_from`] that must succeed (panics with the diagnostics otherwise).
    #[track_caller]
    pub fn expect_reply(&self, from: &Netns, src: Option<&str>, ip: &str, port: u16) -> Reply {
        match self.probe_from(from, src, ip, port, PROBE_TIMEOUT) {
            Ok(r) => r,
            Err(e) => panic!(
                "connection from {from:?} (source {src:?}) to {ip}:{port} failed: {e}\n{}",
                self.diagnostics()
            ),
        }
    }

    /// `n` connections that must all succeed; where they went.
    #[track_caller]
    pub fn tally(&self, from: &Netns, src: Option<&str>, ip: &str, port: u16, n: u32) -> Tally {
        let mut t = Tally::default();
        for _ in 0..n {
            let r = self.expect_reply(from, src, ip, port);
            *t.backends.entry(r.backend).or_default() += 1;
            t.peers.insert(r.peer);
        }
        t
    }

    /// The connection must be silently dropped: no answer within [`DROP_TIMEOUT`]. A refusal
    /// (RST / ICMP port unreachable), an unreachable error or a reply all fail.
    #[track_caller]
    pub fn expect_dropped(&self, from: &Netns, src: Option<&str>, ip: &str, port: u16) {
        let start = Instant::now();
        let srcip = src.map(|s| s.parse::<IpAddr>().expect("source address"));
        let r = connect_from(from, srcip, ip, port, DROP_TIMEOUT);
        let took = start.elapsed();
        assert!(
            r == Err(ConnErr::Timeout),
            "connection from {from:?} (source {src:?}) to {ip}:{port} should be dropped (time out \
             after {DROP_TIMEOUT:?}), got {r:?} after {took:?}\n{}",
            self.diagnostics()
        );
    }

    /// The connection must be refused at once (RST or ICMP port unreachable).
    #[track_caller]
    pub fn expect_refused(&self, from: &Netns, src: Option<&str>, ip: &str, port: u16) {
        let start = Instant::now();
        let srcip = src.map(|s| s.parse::<IpAddr>().expect("source address"));
        let r = connect_from(from, srcip, ip, port, PROBE_TIMEOUT);
        let took = start.elapsed();
        assert!(
            r == Err(ConnErr::Refused) && took < Duration::from_millis(500),
            "connection from {from:?} (source {src:?}) to {ip}:{port} should be refused at once, \
             got {r:?} after {took:?}\n{}",
            self.diagnostics()
        );
    }

    /// Node state for failure messages: addresses, routes, conntrack, and the rules of both back
    /// ends (`iptables-{legacy,nft}-save`, only one of them should hold anything).
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let mut section = |title: &str, args: &[&str]| {
            let out = self.node.exec(args);
            s.push_str(&format!(
                "==== node: {title} ====\n{}{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        };
        section("ip -br addr", &["ip", "-br", "addr"]);
        section("ip route", &["ip", "route"]);
        section("conntrack -L", &["conntrack", "-L"]);
        section("iptables-nft-save -c", &["iptables-nft-save", "-c"]);
        section("iptables-legacy-save -c", &["iptables-legacy-save", "-c"]);
        if self.dual_stack {
            section("ip -6 route", &["ip", "-6", "route"]);
            section("conntrack -L -f ipv6", &["conntrack", "-L", "-f", "ipv6"]);
            section("ip6tables-nft-save -c", &["ip6tables-nft-save", "-c"]);
            section("ip6tables-legacy-save -c", &["ip6tables-legacy-save", "-c"]);
        }
        for p in &self.pods {
            s.push_str(&format!("==== pod {} server log ====\n", p.name));
            for port in &p.ports {
                s.push_str(&p.ns.log(&format!("server-{port}")));
                s.push_str(&p.ns.log(&format!("server6-{port}")));
            }
        }
        s
    }
}

impl LabBuilder {
    /// A pod `name` (≤ 13 chars) at `ip` (in 10.244.1.0/24) with a server on port 8080.
    pub fn pod(self, name: &str, ip: &str) -> Self {
        self.pod_ports(name, ip, &[DEFAULT_POD_PORT])
    }

    /// A pod with servers on each of `ports`, all answering `name`.
    pub fn pod_ports(self, name: &str, ip: &str, ports: &[u16]) -> Self {
        self.add_pod(name, ip, ports, false)
    }

    /// A pod that is not on the bridge: `ip/32` on its `eth0`, gateway 10.244.1.1 (the node
    /// answers ARP for it, being its address), and in the node a veth `vp<name>` (see
    /// [`ROUTED_POD_IF_PREFIX`]) with a /32 route to the pod. IPv4 only.
    pub fn routed_pod(self, name: &str, ip: &str) -> Self {
        self.add_pod(name, ip, &[DEFAULT_POD_PORT], true)
    }

    fn add_pod(mut self, name: &str, ip: &str, ports: &[u16], routed: bool) -> Self {
        assert!(
            name.len() <= 13 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "pod name must be ≤ 13 alphanumerics (it names an interface): {name:?}"
        );
        let ip: Ipv4Addr = ip.parse().expect("pod IP");
        assert_eq!(
            ip.octets()[..3],
            BRIDGE_IP.octets()[..3],
            "pod IP must be in 10.244.1.0/24"
        );
        self.pods.push(PodSpec {
            name: name.to_string(),
            ip,
            ports: ports.to_vec(),
            routed,
        });
        self
    }

    /// A client `name` (≤ 13 chars). The i-th client gets 192.168.(50+i).2/24, the node .1.
    pub fn client(mut self, name: &str) -> Self {
        assert!(
            name.len() <= 13 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "client name must be ≤ 13 alphanumerics (it names an interface): {name:?}"
        );
        self.clients.push(name.to_string());
        self
    }

    /// Servers answer `<pod name> <peer address>` (socat's `$SOCAT_PEERADDR`) instead of the
    /// bare name: parse it with [`Reply::parse`] or use [`Lab::probe_from`].
    pub fn echo_peer(mut self) -> Self {
        self.echo_peer = true;
        self
    }

    /// IPv6 as well as IPv4 on every link: br0 `fd00:10:244:1::1/64`, pods [`pod_ip6`], client i
    /// `fd00:192:168:<50+i>::2/64` (node `::1`), service route [`SERVICE_CIDR6`] to br0, DAD off,
    /// `net.ipv6.conf.all.forwarding=1` and `net.bridge.bridge-nf-call-ip6tables=1` in the node,
    /// and a second server per port listening on IPv6 only.
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    /// A pod [`TRAP_POD`] at [`TRAP_IP`] that answers `trap <peer>` on port [`TRAP_PORT`] of every
    /// address in [`SERVICE_CIDR`] (a `local` route for the range in the pod), and the node's
    /// service route points at it. Without it, a ClusterIP packet that no rule DNATs or drops
    /// times out (ARP on br0 fails), just like a dropped one; with it, such a packet gets an
    /// answer, so [`Lab::expect_dropped`] proves that a rule dropped it.
    pub fn service_trap(mut self) -> Self {
        self.service_trap = true;
        self.pods.push(PodSpec {
            name: TRAP_POD.to_string(),
            ip: TRAP_IP,
            ports: vec![TRAP_PORT],
            routed: false,
        });
        self
    }

    /// A new namespace; in a dual-stack lab with DAD off before any link exists in it, so every
    /// IPv6 address (link-local ones included) is usable at once.
    fn netns(&self, tag: &str) -> Netns {
        let ns = Netns::new(tag);
        if self.dual_stack {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        }
        ns
    }

    /// Creates the namespaces, links and servers; returns once every server answers.
    pub fn build(self) -> Lab {
        assert!(
            !(self.dual_stack && self.pods.iter().any(|p| p.routed)),
            "routed pods are IPv4 only"
        );
        let node = self.netns(&format!("{}-node", self.tag));
        node.add_bridge("br0", &format!("{BRIDGE_IP}/24"));
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.bridge.bridge-nf-call-iptables", "1");
        // Without a route an un-DNATed ClusterIP fails with "no route to host" before any REJECT.
        if self.service_trap {
            let trap = TRAP_IP.to_string();
            node.exec_ok([
                "ip",
                "route",
                "add",
                SERVICE_CIDR,
                "via",
                &trap,
                "dev",
                "br0",
            ]);
        } else {
            node.exec_ok(["ip", "route", "add", SERVICE_CIDR, "dev", "br0"]);
        }
        if self.dual_stack {
            node.exec_ok([
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{BRIDGE_IP6}/64"),
                "dev",
                "br0",
                "nodad",
            ]);
            node.sysctl("net.ipv6.conf.all.forwarding", "1");
            node.sysctl("net.bridge.bridge-nf-call-ip6tables", "1");
            node.exec_ok(["ip", "-6", "route", "add", SERVICE_CIDR6, "dev", "br0"]);
        }
        if self.pods.iter().any(|p| p.routed) && self.pods.iter().any(|p| !p.routed) {
            // Bridged pods see routed ones as on-link (same /24): the node answers their ARP.
            node.sysctl("net.ipv4.conf.br0.proxy_arp", "1");
        }
        let mut lab = Lab {
            node,
            pods: Vec::new(),
            clients: Vec::new(),
            dual_stack: self.dual_stack,
        };

        for spec in &self.pods {
            let PodSpec {
                name,
                ip,
                ports,
                routed,
            } = spec;
            let ns = self.netns(&format!("{}-{name}", self.tag));
            let host_if = if *routed {
                format!("{ROUTED_POD_IF_PREFIX}{name}")
            } else {
                format!("v-{name}")
            };
            lab.node.add_veth(&host_if, &ns);
            if *routed {
                lab.node.exec_ok(["ip", "link", "set", &host_if, "up"]);
                lab.node
                    .exec_ok(["ip", "route", "add", &format!("{ip}/32"), "dev", &host_if]);
                ns.addr_up("eth0", &format!("{ip}/32"));
                let gw = BRIDGE_IP.to_string();
                ns.exec_ok(["ip", "route", "add", &gw, "dev", "eth0", "scope", "link"]);
                ns.exec_ok(["ip", "route", "add", "default", "via", &gw, "dev", "eth0"]);
            } else {
                lab.node
                    .exec_ok(["ip", "link", "set", &host_if, "master", "br0"]);
                lab.node.exec_ok([
                    "ip",
                    "link",
                    "set",
                    &host_if,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ]);
                lab.node.exec_ok(["ip", "link", "set", &host_if, "up"]);
                ns.eth0_up(&format!("{ip}/24"), &BRIDGE_IP.to_string());
            }
            if self.service_trap && name == TRAP_POD {
                ns.exec_ok(["ip", "route", "add", "local", SERVICE_CIDR, "dev", "lo"]);
            }
            let ip6 = self.dual_stack.then(|| pod_ip6(*ip));
            if let Some(ip6) = ip6 {
                eth0_ipv6(&ns, ip6, BRIDGE_IP6);
            }
            // The answer: the bare name, or `<name> <peer>` through a shell (socat's SYSTEM runs
            // `sh -c` with the connection on stdout and the peer in $SOCAT_PEERADDR).
            let answer = if self.echo_peer {
                format!("SYSTEM:echo {name} $SOCAT_PEERADDR")
            } else {
                format!("EXEC:echo {name}")
            };
            for port in ports {
                let listen = if self.dual_stack {
                    // Two listeners, so an IPv4 peer is not reported as ::ffff:a.b.c.d.
                    ns.spawn(
                        &format!("server6-{port}"),
                        [
                            "socat".to_string(),
                            format!("TCP6-LISTEN:{port},ipv6only=1,fork,reuseaddr"),
                            answer.clone(),
                        ],
                    );
                    format!("TCP4-LISTEN:{port},fork,reuseaddr")
                } else {
                    format!("TCP-LISTEN:{port},fork,reuseaddr")
                };
                ns.spawn(
                    &format!("server-{port}"),
                    ["socat".to_string(), listen, answer.clone()],
                );
            }
            lab.pods.push(Pod {
                name: name.clone(),
                ip: *ip,
                ip6,
                ports: ports.clone(),
                routed: *routed,
                ns,
            });
        }

        for (i, name) in self.clients.iter().enumerate() {
            let ns = self.netns(&format!("{}-{name}", self.tag));
            let subnet = 50 + u8::try_from(i).expect("too many clients");
            let node_ip = Ipv4Addr::new(192, 168, subnet, 1);
            let ip = Ipv4Addr::new(192, 168, subnet, 2);
            let host_if = format!("c-{name}");
            lab.node.add_veth(&host_if, &ns);
            lab.node.addr_up(&host_if, &format!("{node_ip}/24"));
            ns.eth0_up(&format!("{ip}/24"), &node_ip.to_string());
            let (mut ip6, mut node_ip6) = (None, None);
            if self.dual_stack {
                let n6: Ipv6Addr = format!("fd00:192:168:{subnet}::1").parse().unwrap();
                let c6: Ipv6Addr = format!("fd00:192:168:{subnet}::2").parse().unwrap();
                lab.node.exec_ok([
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{n6}/64"),
                    "dev",
                    &host_if,
                    "nodad",
                ]);
                eth0_ipv6(&ns, c6, n6);
                (ip6, node_ip6) = (Some(c6), Some(n6));
            }
            lab.clients.push(Client {
                name: name.clone(),
                ip,
                node_ip,
                ip6,
                node_ip6,
                ns,
            });
        }

        // Wait until every server answers (asked from inside its own pod, on each family).
        for pod in &lab.pods {
            let mut addrs = vec![pod.ip.to_string()];
            addrs.extend(pod.ip6.map(|a| a.to_string()));
            for &port in &pod.ports {
                for addr in &addrs {
                    wait_for_server(pod, addr, port, self.echo_peer);
                }
            }
        }
        lab
    }
}

fn wait_for_server(pod: &Pod, addr: &str, port: u16, echo_peer: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = connect(&pod.ns, addr, port, Duration::from_millis(500));
        let ok = match &r {
            Ok(s) if echo_peer => Reply::parse(s).is_ok_and(|r| r.backend == pod.name),
            Ok(s) => *s == pod.name,
            Err(_) => false,
        };
        if ok {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "server of pod {} on {addr} port {port} not ready: {r:?}\nlog: {}{}",
                pod.name,
                pod.ns.log(&format!("server-{port}")),
                pod.ns.log(&format!("server6-{port}"))
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
