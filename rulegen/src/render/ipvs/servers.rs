//! The virtual-server table kube-proxy's IPVS mode holds for a model, and its `ipvsadm -Sn` text.
//!
//! What upstream's IPVS proxier creates (`pkg/proxy/ipvs/proxier.go`, and
//! `shared/reference/upstream-iptables.md` §4.1): one virtual server per cluster IP:port, per
//! external IP:port, per load-balancer IP:port and per node IP × node port, each with weight-1
//! masquerading real servers; session affinity is IPVS persistence with the affinity timeout.
//! Destinations under a Local traffic policy (internal for the cluster IP, external for the
//! rest) use the local endpoints, and fall back to the cluster's when the node has none
//! (unlike iptables mode, which drops).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::config::RenderConfig;
use crate::model::{Endpoint, Model, Protocol, SessionAffinity};
use crate::plan::endpoints::{self, Categorized};

/// `--ipvs-scheduler`'s default.
pub const DEFAULT_SCHEDULER: &str = "rr";

/// `IP_VS_SVC_F_SCHED2` (`include/uapi/linux/ip_vs.h`): for `mh`, hash the source port too.
/// Upstream sets it whenever the scheduler is `mh` (its `FlagSourceHash`).
pub const SCHED_FLAG_MH_PORT: u32 = 0x10;

/// One real server of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    /// The endpoint's address.
    pub addr: IpAddr,
    /// The endpoint's port.
    pub port: u16,
    /// Its weight (upstream: always 1; 0 while it drains).
    pub weight: u32,
}

/// One IPVS virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The service address (cluster, external, load-balancer or node IP).
    pub addr: IpAddr,
    /// The service port (or node port).
    pub port: u16,
    /// The scheduler (`--ipvs-scheduler`).
    pub scheduler: String,
    /// Persistence timeout in seconds, for ClientIP session affinity.
    pub persistence: Option<u32>,
    /// Scheduler flags (`IP_VS_SVC_F_SCHED*` bits; persistence is not one of them).
    pub flags: u32,
    /// Its real servers, sorted.
    pub real_servers: Vec<RealServer>,
    /// `namespace/name:port`, for messages.
    pub service: String,
}

/// A node's whole virtual-server table, sorted by address, port and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsTable {
    /// The virtual servers.
    pub virtual_servers: Vec<VirtualServer>,
}

/// The virtual servers `model` needs on this node (`cfg` gives the family, node name and
/// addresses, and the node-port address filter).
pub fn virtual_servers(model: &Model, cfg: &RenderConfig, scheduler: &str) -> IpvsTable {
    let mut table: BTreeMap<(IpAddr, u16, u8), VirtualServer> = BTreeMap::new();
    let node_addrs = node_port_addresses(cfg);
    for sp in &model.services {
        let Some(cluster_ip) = sp.cluster_ips.iter().find(|ip| cfg.family.contains(ip)) else {
            continue;
        };
        let mut eps: Vec<&Endpoint> = sp
            .endpoints
            .iter()
            .filter(|e| cfg.family.contains(&e.ip))
            .collect();
        eps.sort_by_key(|e| (e.ip, e.port));
        let cat = endpoints::categorize(sp, &eps, &cfg.node_name, cfg.node_zone.as_deref());
        let internal = policy_real_servers(endpoints::internal_policy_local(sp), &eps, &cat);
        let external = policy_real_servers(endpoints::external_policy_local(sp), &eps, &cat);
        let mut add = |addr: IpAddr, port: u16, rs: &Vec<RealServer>| {
            table
                .entry((addr, port, protocol_order(sp.protocol)))
                .or_insert_with(|| VirtualServer {
                    protocol: sp.protocol,
                    addr,
                    port,
                    scheduler: scheduler.to_string(),
                    persistence: match sp.session_affinity {
                        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
                        SessionAffinity::None => None,
                    },
                    flags: if scheduler == "mh" {
                        SCHED_FLAG_MH_PORT
                    } else {
                        0
                    },
                    real_servers: rs.clone(),
                    service: sp.name.to_string(),
                });
        };
        add(*cluster_ip, sp.port, &internal);
        for ip in sp
            .external_ips
            .iter()
            .chain(&sp.load_balancer_ips)
            .filter(|ip| cfg.family.contains(ip))
        {
            add(*ip, sp.port, &external);
        }
        if let Some(node_port) = sp.node_port {
            for ip in &node_addrs {
                add(*ip, node_port, &external);
            }
        }
    }
    IpvsTable {
        virtual_servers: table.into_values().collect(),
    }
}

/// The real servers under a traffic policy: for Local, the local endpoints, or the cluster's
/// when there are none (upstream's `syncEndpoint`, PR #97081: unlike iptables mode, which
/// drops); for Cluster, the cluster's. A Local-only Service has no cluster endpoints at all.
fn policy_real_servers(local: bool, eps: &[&Endpoint], cat: &Categorized) -> Vec<RealServer> {
    if local && !cat.local.is_empty() {
        real_servers(eps, &cat.local)
    } else {
        real_servers(eps, &cat.cluster)
    }
}

fn real_servers(eps: &[&Endpoint], picked: &[usize]) -> Vec<RealServer> {
    let mut out: Vec<RealServer> = picked
        .iter()
        .map(|&i| RealServer {
            addr: eps[i].ip,
            port: eps[i].port,
            weight: 1,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The node addresses node ports are served on: the node's addresses of this family inside
/// `--nodeport-addresses` (all of them when it is empty), loopback excluded.
pub(crate) fn node_port_addresses(cfg: &RenderConfig) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cfg
        .node_ips
        .iter()
        .filter(|ip| cfg.family.contains(ip) && !ip.is_loopback())
        .filter(|ip| {
            cfg.nodeport_addresses.is_empty()
                || cfg.nodeport_addresses.iter().any(|n| n.contains(*ip))
        })
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}

pub(crate) fn protocol_order(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

/// `ipvsadm`'s protocol option for a virtual service.
fn protocol_flag(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    }
}

/// `IP:port`, `[IP]:port` for IPv6, as `ipvsadm -Sn` prints addresses.
fn addr_port(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl IpvsTable {
    /// The table as `ipvsadm -Sn` prints it (and `ipvsadm -R` reads it): each virtual service
    /// (`-A`) followed by its real servers (`-a`, masquerading), in the table's order.
    pub fn write_ipvsadm<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for vs in &self.virtual_servers {
            let service = addr_port(&vs.addr, vs.port);
            let proto = protocol_flag(vs.protocol);
            write!(out, "-A {proto} {service} -s {}", vs.scheduler)?;
            if let Some(timeout) = vs.persistence {
                write!(out, " -p {timeout}")?;
            }
            if vs.flags & SCHED_FLAG_MH_PORT != 0 {
                out.write_str(" -b mh-port")?;
            }
            out.write_char('\n')?;
            for rs in &vs.real_servers {
                writeln!(
                    out,
                    "-a {proto} {service} -r {} -m -w {}",
                    addr_port(&rs.addr, rs.port),
                    rs.weight
                )?;
            }
        }
        Ok(())
    }

    /// [`IpvsTable::write_ipvsadm`] into a string.
    pub fn to_ipvsadm_text(&self) -> String {
        let mut s = String::new();
        self.write_ipvsadm(&mut s)
            .expect("writing to a String cannot fail");
        s
    }
}

#[cfg(test)]
mod tests;
