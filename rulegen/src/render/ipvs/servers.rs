//! The virtual-server table kube-proxy's IPVS mode holds for a model, and its `ipvsadm -Sn` text.
//!
//! What upstream's IPVS proxier creates (`pkg/proxy/ipvs/proxier.go`,
//! `syncService` and `syncEndpoint`): one virtual server per cluster IP:port, per
//! external IP:port, per load-balancer IP:port and per node IP × node port, each with weight-1
//! masquerading real servers; session affinity is IPVS persistence with the affinity timeout.
//! Destinations under a Local traffic policy (internal for the cluster IP, external for the
//! rest) use the local endpoints, and fall back to the cluster's when the node has none
//! (unlike iptables mode, which drops).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::Planned;
use crate::config::RenderConfig;
use crate::model::{Endpoint, Model, Protocol};
use crate::plan::{NodePlan, PortPlan, Selection};

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
    let node = NodePlan::new(cfg);
    table_from_plans(&super::plan_ports(model, cfg, &node), &node, scheduler)
}

/// The virtual-server table of the service ports `planned` (in the model's order: the first
/// port to claim an address, port and protocol owns its virtual server).
pub(crate) fn table_from_plans(planned: &[Planned], node: &NodePlan, scheduler: &str) -> IpvsTable {
    let mut table: BTreeMap<(IpAddr, u16, u8), VirtualServer> = BTreeMap::new();
    for Planned { plan, eps } in planned {
        let sp = plan.port;
        let internal = selected_real_servers(plan, eps, plan.policies.internal_local);
        let external = selected_real_servers(plan, eps, plan.policies.external_local);
        let mut add = |addr: IpAddr, port: u16, rs: &Vec<RealServer>| {
            table
                .entry((addr, port, protocol_order(sp.protocol)))
                .or_insert_with(|| virtual_server(plan, addr, port, scheduler, rs));
        };
        let a = &plan.addresses;
        add(a.cluster_ip, a.port, &internal);
        for ip in a.external_ips.iter().chain(&a.load_balancer_ips) {
            add(*ip, a.port, &external);
        }
        if let Some(node_port) = a.node_port {
            for ip in &node.node_port_ips {
                add(*ip, node_port, &external);
            }
        }
    }
    IpvsTable {
        virtual_servers: table.into_values().collect(),
    }
}

fn virtual_server(
    plan: &PortPlan,
    addr: IpAddr,
    port: u16,
    scheduler: &str,
    real_servers: &[RealServer],
) -> VirtualServer {
    VirtualServer {
        protocol: plan.port.protocol,
        addr,
        port,
        scheduler: scheduler.to_string(),
        persistence: plan.decisions.affinity_seconds,
        flags: if scheduler == "mh" {
            SCHED_FLAG_MH_PORT
        } else {
            0
        },
        real_servers: real_servers.to_vec(),
        service: plan.port.name.to_string(),
    }
}

/// The real servers under a traffic policy: for Local, the local endpoints, or the cluster's
/// when there are none (upstream's `syncEndpoint`, PR #97081: unlike iptables mode, which
/// drops); for Cluster, the cluster's. A Local-only Service has no cluster endpoints at all.
fn selected_real_servers(plan: &PortPlan, eps: &[&Endpoint], local: bool) -> Vec<RealServer> {
    match plan.selection(local) {
        Selection::Local => real_servers(eps, &plan.endpoints.local),
        Selection::Cluster | Selection::LocalFallback => real_servers(eps, &plan.endpoints.cluster),
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
