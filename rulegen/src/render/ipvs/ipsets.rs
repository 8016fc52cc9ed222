//! The ipsets of IPVS mode: which sets exist, what each holds for a model, and their text as
//! `ipset save` prints it and as an `ipset restore` script that replaces them atomically.
//!
//! Names, types and contents follow upstream (`pkg/proxy/ipvs/ipset.go` and the per-service loop
//! of `syncProxyRules`): all 17 sets always exist; a Service without endpoints still has its
//! entries (only `KUBE-LOOP-BACK` depends on endpoints); on IPv6 every name's `KUBE-` becomes
//! `KUBE-6-`, cut to 31 characters.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::Planned;
use crate::config::RenderConfig;
use crate::model::{IpFamily, Model, Protocol};
use crate::plan::{NodePlan, PortPlan};

/// The kernel's limit on a set name (`IPSET_MAXNAMELEN` − 1).
pub const MAX_NAME_LEN: usize = 31;

/// How a set stores its members (the `ipset` type name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `hash:ip`: an address.
    HashIp,
    /// `hash:ip,port`: address, protocol and port.
    HashIpPort,
    /// `hash:ip,port,ip`: address, protocol, port and a second address.
    HashIpPortIp,
    /// `hash:ip,port,net`: address, protocol, port and a network.
    HashIpPortNet,
    /// `bitmap:port`: a port (any protocol), 0–65535.
    BitmapPort,
}

impl SetKind {
    /// The type as `ipset` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashIpPort => "hash:ip,port",
            SetKind::HashIpPortIp => "hash:ip,port,ip",
            SetKind::HashIpPortNet => "hash:ip,port,net",
            SetKind::BitmapPort => "bitmap:port",
        }
    }
}

/// One of IPVS mode's sets, by its upstream role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    /// `KUBE-LOOP-BACK`: local endpoints, for hairpin masquerade.
    LoopBack,
    /// `KUBE-CLUSTER-IP`: cluster IP + port.
    ClusterIp,
    /// `KUBE-EXTERNAL-IP`: external IP + port (Cluster policy).
    ExternalIp,
    /// `KUBE-EXTERNAL-IP-LOCAL`: external IP + port (Local policy).
    ExternalIpLocal,
    /// `KUBE-LOAD-BALANCER`: load-balancer IP + port.
    LoadBalancer,
    /// `KUBE-LOAD-BALANCER-FW`: load-balancer IP + port with source ranges.
    LoadBalancerFw,
    /// `KUBE-LOAD-BALANCER-LOCAL`: load-balancer IP + port (Local policy).
    LoadBalancerLocal,
    /// `KUBE-LOAD-BALANCER-SOURCE-IP`: load-balancer IP + port + the VIP, when the node may connect.
    LoadBalancerSourceIp,
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR`: load-balancer IP + port + an allowed source range.
    LoadBalancerSourceCidr,
    /// `KUBE-NODE-PORT-TCP`.
    NodePortTcp,
    /// `KUBE-NODE-PORT-LOCAL-TCP`.
    NodePortLocalTcp,
    /// `KUBE-NODE-PORT-UDP`.
    NodePortUdp,
    /// `KUBE-NODE-PORT-LOCAL-UDP`.
    NodePortLocalUdp,
    /// `KUBE-NODE-PORT-SCTP-HASH`: node IP + SCTP node port.
    NodePortSctp,
    /// `KUBE-NODE-PORT-LOCAL-SCTP-HASH`.
    NodePortLocalSctp,
    /// `KUBE-HEALTH-CHECK-NODE-PORT`.
    HealthCheckNodePort,
    /// `KUBE-IPVS-IPS`: every address bound to `kube-ipvs0`.
    IpvsIps,
}

impl SetId {
    /// Every set, in upstream's `ipsetInfo` order (the order they are created and printed in).
    pub const ALL: [SetId; 17] = [
        SetId::LoopBack,
        SetId::ClusterIp,
        SetId::ExternalIp,
        SetId::ExternalIpLocal,
        SetId::LoadBalancer,
        SetId::LoadBalancerFw,
        SetId::LoadBalancerLocal,
        SetId::LoadBalancerSourceIp,
        SetId::LoadBalancerSourceCidr,
        SetId::NodePortTcp,
        SetId::NodePortLocalTcp,
        SetId::NodePortUdp,
        SetId::NodePortLocalUdp,
        SetId::NodePortSctp,
        SetId::NodePortLocalSctp,
        SetId::HealthCheckNodePort,
        SetId::IpvsIps,
    ];

    /// The IPv4 name.
    pub fn base_name(self) -> &'static str {
        match self {
            SetId::LoopBack => "KUBE-LOOP-BACK",
            SetId::ClusterIp => "KUBE-CLUSTER-IP",
            SetId::ExternalIp => "KUBE-EXTERNAL-IP",
            SetId::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            SetId::LoadBalancer => "KUBE-LOAD-BALANCER",
            SetId::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            SetId::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            SetId::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            SetId::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            SetId::NodePortTcp => "KUBE-NODE-PORT-TCP",
            SetId::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            SetId::NodePortUdp => "KUBE-NODE-PORT-UDP",
            SetId::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            SetId::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            SetId::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            SetId::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            SetId::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The set's name for `family` (`KUBE-6-…`, at most 31 characters, on IPv6).
    pub fn name(self, family: IpFamily) -> String {
        match family {
            IpFamily::V4 => self.base_name().to_string(),
            IpFamily::V6 => {
                let mut n = self.base_name().replacen("KUBE-", "KUBE-6-", 1);
                n.truncate(MAX_NAME_LEN);
                n
            }
        }
    }

    /// Its type.
    pub fn kind(self) -> SetKind {
        match self {
            SetId::LoopBack | SetId::LoadBalancerSourceIp => SetKind::HashIpPortIp,
            SetId::LoadBalancerSourceCidr => SetKind::HashIpPortNet,
            SetId::NodePortTcp
            | SetId::NodePortLocalTcp
            | SetId::NodePortUdp
            | SetId::NodePortLocalUdp
            | SetId::HealthCheckNodePort => SetKind::BitmapPort,
            SetId::IpvsIps => SetKind::HashIp,
            _ => SetKind::HashIpPort,
        }
    }

    /// Upstream's description, which the iptables rules carry as their comment.
    pub fn comment(self) -> &'static str {
        match self {
            SetId::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            SetId::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            SetId::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            SetId::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            SetId::LoadBalancer => "Kubernetes service lb portal",
            SetId::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            SetId::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            SetId::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            SetId::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            SetId::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            SetId::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            SetId::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            SetId::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            SetId::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            SetId::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            SetId::HealthCheckNodePort => "Kubernetes health check node port",
            SetId::IpvsIps => "Addresses on the ipvs interface",
        }
    }
}

/// One set and its members, each spelled as `ipset save` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Which set.
    pub id: SetId,
    /// Its name for the family.
    pub name: String,
    /// Its members, sorted.
    pub entries: BTreeSet<String>,
}

/// All of IPVS mode's sets for one family, and a destination the node may not reach through a
/// source-ranged load balancer (upstream's `KUBE-IPVS-OUT-FILTER` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSets {
    /// The family (it decides names and `family inet|inet6`).
    pub family: IpFamily,
    /// The 17 sets, in [`SetId::ALL`] order.
    pub sets: Vec<IpSet>,
    /// Load-balancer VIP, protocol and port whose source ranges leave the node out.
    pub no_node_access: Vec<(IpAddr, Protocol, u16)>,
}

/// `IP,proto:port` as a `hash:ip,port` member.
fn ip_port(ip: &IpAddr, p: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", p.as_str())
}

/// A network as `ipset` prints it: a host-length prefix loses its `/32` or `/128`, so the text
/// matches what the kernel lists (upstream compares text and re-adds such entries every sync).
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

/// `net` as networks `hash:ip,port,net` can hold. The kernel refuses a `/0` there (a member's
/// prefix must be 1 to 32 or 128; `ipset restore` fails with "The value of the CIDR parameter of
/// the IP address is invalid"), so an all-addresses source range becomes its two `/1` halves,
/// which match exactly the same sources. (Upstream adds the `/0` as it is, has it refused, logs
/// that and goes on without it: the range then admits no outside client at all.)
pub fn set_nets(net: &IpNet) -> Vec<IpNet> {
    if net.prefix_len() != 0 {
        return vec![*net];
    }
    let halves = match net {
        IpNet::V4(_) => ["0.0.0.0/1", "128.0.0.0/1"],
        IpNet::V6(_) => ["::/1", "8000::/1"],
    };
    halves
        .iter()
        .map(|h| h.parse().expect("a valid network"))
        .collect()
}

/// The members being collected, one sorted set per [`SetId`].
struct Members {
    entries: Vec<BTreeSet<String>>,
    no_node_access: Vec<(IpAddr, Protocol, u16)>,
}

impl Members {
    fn add(&mut self, id: SetId, e: String) {
        self.entries[id as usize].insert(e);
    }

    /// Every local endpoint, ready or not: upstream does not look at conditions here.
    fn loop_back(&mut self, plan: &PortPlan, cfg: &RenderConfig) {
        let sp = plan.port;
        let p = sp.protocol;
        for e in sp.endpoints.iter().filter(|e| cfg.family.contains(&e.ip)) {
            if !cfg.node_name.is_empty() && e.node_name.as_deref() == Some(&cfg.node_name) {
                self.add(
                    SetId::LoopBack,
                    format!("{},{}:{},{}", e.ip, p.as_str(), e.port, e.ip),
                );
            }
        }
    }

    fn external_ips(&mut self, plan: &PortPlan, cfg: &RenderConfig) {
        let (p, port) = (plan.port.protocol, plan.addresses.port);
        for ip in &plan.addresses.external_ips {
            let id = if plan.policies.external_local {
                SetId::ExternalIpLocal
            } else {
                SetId::ExternalIp
            };
            self.add(id, ip_port(ip, p, port));
            if !cfg.node_ips.contains(ip) {
                self.add(SetId::IpvsIps, ip.to_string());
            }
        }
    }

    /// `primary` is upstream's "primary node IP": the first address of the family the Node
    /// reports; the node may reach a source-ranged load balancer only when it is in a range.
    fn load_balancer_ips(&mut self, plan: &PortPlan, cfg: &RenderConfig, primary: Option<&IpAddr>) {
        let (p, port) = (plan.port.protocol, plan.addresses.port);
        let ranges = &plan.addresses.source_ranges;
        for ip in &plan.addresses.load_balancer_ips {
            let entry = ip_port(ip, p, port);
            self.add(SetId::LoadBalancer, entry.clone());
            if plan.policies.external_local {
                self.add(SetId::LoadBalancerLocal, entry.clone());
            }
            if !ranges.is_empty() {
                self.add(SetId::LoadBalancerFw, entry.clone());
                let mut from_node = false;
                for n in ranges {
                    for member in set_nets(n) {
                        self.add(
                            SetId::LoadBalancerSourceCidr,
                            format!("{entry},{}", net_text(&member)),
                        );
                    }
                    from_node |= primary.is_some_and(|ip| n.contains(ip));
                }
                if from_node {
                    self.add(SetId::LoadBalancerSourceIp, format!("{entry},{ip}"));
                } else {
                    self.no_node_access.push((*ip, p, port));
                }
            }
            if !cfg.node_ips.contains(ip) {
                self.add(SetId::IpvsIps, ip.to_string());
            }
        }
    }

    /// The node-port sets; false when no node address serves node ports, where upstream skips
    /// the rest of the service port (its health-check port too).
    fn node_port(&mut self, plan: &PortPlan, node: &NodePlan) -> bool {
        let Some(node_port) = plan.addresses.node_port else {
            return true;
        };
        if node.node_port_ips.is_empty() {
            return false;
        }
        let p = plan.port.protocol;
        let (all, locals) = match p {
            Protocol::Tcp => (SetId::NodePortTcp, SetId::NodePortLocalTcp),
            Protocol::Udp => (SetId::NodePortUdp, SetId::NodePortLocalUdp),
            Protocol::Sctp => (SetId::NodePortSctp, SetId::NodePortLocalSctp),
        };
        let members: Vec<String> = match p {
            Protocol::Sctp => node
                .node_port_ips
                .iter()
                .map(|ip| ip_port(ip, p, node_port))
                .collect(),
            _ => vec![node_port.to_string()],
        };
        for m in members {
            if plan.policies.external_local {
                self.add(locals, m.clone());
            }
            self.add(all, m);
        }
        true
    }
}

impl IpSets {
    /// The sets `model` needs on this node.
    pub fn for_model(model: &Model, cfg: &RenderConfig) -> IpSets {
        let node = NodePlan::new(cfg);
        Self::from_plans(&super::plan_ports(model, cfg, &node), cfg, &node)
    }

    /// The sets of the service ports `planned`.
    pub(crate) fn from_plans(planned: &[Planned], cfg: &RenderConfig, node: &NodePlan) -> IpSets {
        let family = cfg.family;
        let mut m = Members {
            entries: vec![BTreeSet::new(); SetId::ALL.len()],
            no_node_access: Vec::new(),
        };
        let primary = cfg.node_ips.iter().find(|ip| family.contains(ip));
        for Planned { plan, .. } in planned {
            let a = &plan.addresses;
            m.loop_back(plan, cfg);
            m.add(
                SetId::ClusterIp,
                ip_port(&a.cluster_ip, plan.port.protocol, a.port),
            );
            m.add(SetId::IpvsIps, a.cluster_ip.to_string());
            m.external_ips(plan, cfg);
            m.load_balancer_ips(plan, cfg, primary);
            if !m.node_port(plan, node) {
                continue;
            }
            if let Some(hc) = a.health_check_node_port {
                m.add(SetId::HealthCheckNodePort, hc.to_string());
            }
        }
        let mut no_node_access = m.no_node_access;
        no_node_access
            .sort_by_key(|(ip, p, port)| (*ip, super::servers::protocol_order(*p), *port));
        no_node_access.dedup();
        IpSets {
            family,
            sets: SetId::ALL
                .iter()
                .zip(m.entries)
                .map(|(&id, entries)| IpSet {
                    id,
                    name: id.name(family),
                    entries,
                })
                .collect(),
            no_node_access,
        }
    }

    /// The set `id`.
    pub fn get(&self, id: SetId) -> &IpSet {
        &self.sets[id as usize]
    }

    /// Whether set `id` has no members (upstream leaves out the iptables rules of empty sets).
    pub fn is_empty(&self, id: SetId) -> bool {
        self.get(id).entries.is_empty()
    }

    fn family_word(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "inet",
            IpFamily::V6 => "inet6",
        }
    }

    /// `create NAME TYPE OPTIONS` with upstream's options: as `ipset save` prints it (which
    /// adds `bucketsize 12` to hash types), or for a script (`-exist`, nothing version-specific).
    fn write_create<W: fmt::Write>(
        &self,
        out: &mut W,
        name: &str,
        kind: SetKind,
        as_saved: bool,
    ) -> fmt::Result {
        write!(out, "create {name} {}", kind.as_str())?;
        match kind {
            SetKind::BitmapPort => out.write_str(" range 0-65535")?,
            _ => {
                write!(
                    out,
                    " family {} hashsize 1024 maxelem 65536",
                    self.family_word()
                )?;
                if as_saved {
                    out.write_str(" bucketsize 12")?;
                }
            }
        }
        if !as_saved {
            out.write_str(" -exist")?;
        }
        out.write_char('\n')
    }

    /// The sets as `ipset save` prints them (ipset 7.x), without the random `initval` the kernel
    /// picks for each hash set; `ipset restore` loads it as it is.
    pub fn write_save<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for set in &self.sets {
            self.write_create(out, &set.name, set.id.kind(), true)?;
            for e in &set.entries {
                writeln!(out, "add {} {e}", set.name)?;
            }
        }
        Ok(())
    }

    /// [`IpSets::write_save`] into a string.
    pub fn to_save_text(&self) -> String {
        let mut s = String::new();
        self.write_save(&mut s)
            .expect("writing to a String cannot fail");
        s
    }

    /// An `ipset restore` script that makes every set hold exactly its members, atomically per
    /// set: each is created if missing, a temporary copy is filled, swapped in and destroyed.
    /// A set the iptables rules reference can be swapped but not destroyed, which is why the
    /// live set is never re-created. `temp_prefix` names the copies (`KUBE-TMP-` + a number).
    /// Sets equal to their counterpart in `applied` (what the kernel was last given) are left
    /// out; without `applied`, every set is written.
    pub fn write_restore_script<W: fmt::Write>(
        &self,
        out: &mut W,
        temp_prefix: &str,
        applied: Option<&IpSets>,
    ) -> fmt::Result {
        for i in self.changed(applied) {
            self.write_set_restore(out, temp_prefix, i)?;
        }
        Ok(())
    }

    /// The indexes in [`IpSets::sets`] of the sets that differ from their counterpart in
    /// `applied` (every set without it, or when `applied` is of the other family).
    pub fn changed(&self, applied: Option<&IpSets>) -> Vec<usize> {
        (0..self.sets.len())
            .filter(|&i| {
                !applied
                    .is_some_and(|a| a.family == self.family && a.sets.get(i) == self.sets.get(i))
            })
            .collect()
    }

    /// The part of [`IpSets::write_restore_script`] for the set at `index` alone: a script of
    /// its own, so a set the kernel refuses can be told apart and holds back no other.
    pub fn write_set_restore<W: fmt::Write>(
        &self,
        out: &mut W,
        temp_prefix: &str,
        index: usize,
    ) -> fmt::Result {
        let set = &self.sets[index];
        let kind = set.id.kind();
        // `-exist` on create keeps an existing set as it is (same type), as upstream's does.
        self.write_create(out, &set.name, kind, false)?;
        let tmp = temp_set_name(temp_prefix, index);
        self.write_create(out, &tmp, kind, false)?;
        writeln!(out, "flush {tmp}")?;
        for e in &set.entries {
            writeln!(out, "add {tmp} {e}")?;
        }
        writeln!(out, "swap {tmp} {}", set.name)?;
        writeln!(out, "destroy {tmp}")
    }

    /// How many members all sets hold.
    pub fn entry_count(&self) -> usize {
        self.sets.iter().map(|s| s.entries.len()).sum()
    }
}

/// The temporary copy the restore script fills for the set at `index` (`temp_prefix` + index).
pub fn temp_set_name(temp_prefix: &str, index: usize) -> String {
    format!("{temp_prefix}{index}")
}

/// An `ipset save` text made comparable with [`IpSets::to_save_text`]: the kernel's random
/// `initval`s left out and each set's members sorted (the kernel lists them in hash order).
pub fn comparable_save(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut members: Vec<&str> = Vec::new();
    let flush = |out: &mut String, members: &mut Vec<&str>| {
        members.sort_unstable();
        for m in members.drain(..) {
            out.push_str(m);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with("create ") {
            flush(&mut out, &mut members);
            out.push_str(line.split(" initval ").next().unwrap_or(line));
            out.push('\n');
        } else if line.starts_with("add ") {
            members.push(line);
        }
    }
    flush(&mut out, &mut members);
    out
}

#[cfg(test)]
mod tests;
