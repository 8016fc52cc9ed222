//! A lab that carries real packets (kernel-lab.md): a node namespace with a pod bridge, pod
//! namespaces each running a TCP server that answers its own name, and client namespaces joined to
//! the node by a veth pair. Nothing is connected to the root namespace.
//!
//! ```text
//!  client c (192.168.50.2/24) ──veth── node (192.168.50.1/24)   [first client: the node's IP]
//!  client d (192.168.51.2/24) ──veth── node (192.168.51.1/24)
//!                                      node br0 10.244.1.1/24, route 10.96.0.0/12 dev br0
//!  pod pa (10.244.1.11/24) ──veth (port of br0)──┘
//! ```

use std::fmt;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;

/// Pod CIDR of the cluster (`--cluster-cidr`).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The node's pod bridge address (and the pods' default gateway).
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The service range, routed to `br0` in the node so an un-DNATed ClusterIP can be REJECTed.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The port pod servers listen on unless told otherwise.
pub const DEFAULT_POD_PORT: u16 = 8080;

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
    let ip: IpAddr = ip
        .parse()
        .map_err(|e| ConnErr::Other(format!("bad IP {ip:?}: {e}")))?;
    let addr = SocketAddr::new(ip, port);
    let path = ns.path();
    thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| ConnErr::Other(format!("open {}: {e}", path.display())))?;
        // SAFETY: setns on a valid namespace fd; CLONE_NEWNET only affects this (new) thread,
        // which ends when this closure returns.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(ConnErr::Other(format!(
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        drop(file);
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(classify)?;
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
    pub name: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<u16>,
    pub ns: Netns,
}

/// A client namespace joined to the node by its own veth pair and /24.
pub struct Client {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node's address on this client's link.
    pub node_ip: Ipv4Addr,
    pub ns: Netns,
}

/// The lab. Drop deletes every namespace (killing the servers first).
pub struct Lab {
    pub node: Netns,
    pub pods: Vec<Pod>,
    pub clients: Vec<Client>,
}

/// Builder: `Lab::builder("cip").pod("pa", "10.244.1.11").client("c").build()`.
pub struct LabBuilder {
    tag: String,
    pods: Vec<(String, Ipv4Addr, Vec<u16>)>,
    clients: Vec<String>,
}

impl Lab {
    pub fn builder(tag: &str) -> LabBuilder {
        LabBuilder {
            tag: tag.to_string(),
            pods: Vec::new(),
            clients: Vec::new(),
        }
    }

    #[track_caller]
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in the lab"))
    }

    #[track_caller]
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
        for p in &self.pods {
            s.push_str(&format!("==== pod {} server log ====\n", p.name));
            for port in &p.ports {
                s.push_str(&p.ns.log(&format!("server-{port}")));
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
    pub fn pod_ports(mut self, name: &str, ip: &str, ports: &[u16]) -> Self {
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
        self.pods.push((name.to_string(), ip, ports.to_vec()));
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

    /// Creates the namespaces, links and servers; returns once every server answers.
    pub fn build(self) -> Lab {
        let node = Netns::new(&format!("{}-node", self.tag));
        node.exec_ok(["ip", "link", "add", "br0", "type", "bridge"]);
        node.exec_ok([
            "ip",
            "addr",
            "add",
            &format!("{BRIDGE_IP}/24"),
            "dev",
            "br0",
        ]);
        node.exec_ok(["ip", "link", "set", "br0", "up"]);
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.bridge.bridge-nf-call-iptables", "1");
        // Without a route an un-DNATed ClusterIP fails with "no route to host" before any REJECT.
        node.exec_ok(["ip", "route", "add", SERVICE_CIDR, "dev", "br0"]);
        let mut lab = Lab {
            node,
            pods: Vec::new(),
            clients: Vec::new(),
        };

        for (name, ip, ports) in self.pods {
            let ns = Netns::new(&format!("{}-{name}", self.tag));
            let host_if = format!("v-{name}");
            // Both ends are created straight into their namespaces (ip runs inside the node).
            lab.node.exec_ok([
                "ip",
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]);
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
            ns.exec_ok(["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.exec_ok(["ip", "link", "set", "eth0", "up"]);
            ns.exec_ok([
                "ip",
                "route",
                "add",
                "default",
                "via",
                &BRIDGE_IP.to_string(),
            ]);
            for port in &ports {
                ns.spawn(
                    &format!("server-{port}"),
                    [
                        "socat".to_string(),
                        format!("TCP-LISTEN:{port},fork,reuseaddr"),
                        format!("EXEC:echo {name}"),
                    ],
                );
            }
            lab.pods.push(Pod {
                name,
                ip,
                ports,
                ns,
            });
        }

        for (i, name) in self.clients.into_iter().enumerate() {
            let ns = Netns::new(&format!("{}-{name}", self.tag));
            let subnet = 50 + u8::try_from(i).expect("too many clients");
            let node_ip = Ipv4Addr::new(192, 168, subnet, 1);
            let ip = Ipv4Addr::new(192, 168, subnet, 2);
            let host_if = format!("c-{name}");
            lab.node.exec_ok([
                "ip",
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]);
            lab.node.exec_ok([
                "ip",
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                &host_if,
            ]);
            lab.node.exec_ok(["ip", "link", "set", &host_if, "up"]);
            ns.exec_ok(["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.exec_ok(["ip", "link", "set", "eth0", "up"]);
            ns.exec_ok(["ip", "route", "add", "default", "via", &node_ip.to_string()]);
            lab.clients.push(Client {
                name,
                ip,
                node_ip,
                ns,
            });
        }

        // Wait until every server answers its name (asked from inside its own pod).
        for pod in &lab.pods {
            for &port in &pod.ports {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let r = connect(
                        &pod.ns,
                        &pod.ip.to_string(),
                        port,
                        Duration::from_millis(500),
                    );
                    match r {
                        Ok(ref s) if *s == pod.name => break,
                        _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                        other => panic!(
                            "server of pod {} on port {port} not ready: {other:?}\nlog: {}",
                            pod.name,
                            pod.ns.log(&format!("server-{port}"))
                        ),
                    }
                }
            }
        }
        lab
    }
}
