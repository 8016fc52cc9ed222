//! The iptables rules IPVS mode still needs: masquerading, node-port and load-balancer handling
//! through ipset matches, the source-range firewall and `KUBE-IPVS-FILTER`, rule for rule what
//! upstream's `writeIptablesRules` writes, in `iptables-save`'s spelling.
//!
//! Rules tied to a set are left out while the set is empty (upstream looks at the desired
//! members, not the kernel's); everything else is always there. The whole part is small and is
//! restored in full on every sync, as upstream does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::ipsets::{IpSets, SetId};
use crate::config::RenderConfig;
use crate::model::{IpFamily, Protocol};
use crate::render::iptables::chains::{
    ChainName, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
};
use crate::render::iptables::rule;
use crate::render::iptables::{detector_match, mark_text};
use crate::render::ruleset::{Ruleset, Table};

/// IPVS mode's node-port chain (iptables mode's is `KUBE-NODEPORTS`), in nat and in filter.
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
/// nat: load-balancer traffic, masqueraded unless its policy is Local.
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// filter: drops load-balancer traffic from outside its source ranges.
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter: refuses new connections to `kube-ipvs0` addresses on ports no Service has.
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: drops the node's own connections to a load balancer whose source ranges exclude it.
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// One rule line under construction.
struct Line<'a> {
    out: &'a mut String,
}

impl<'a> Line<'a> {
    fn new(out: &'a mut String, chain: &str) -> Self {
        rule::start(out, chain);
        Line { out }
    }

    fn raw(self, text: &str) -> Self {
        rule::raw(self.out, text);
        self
    }

    fn comment(self, text: &str) -> Self {
        rule::comment(self.out, text);
        self
    }

    /// ` -m set --match-set NAME FLAGS`.
    fn set(self, sets: &IpSets, id: SetId, flags: &str) -> Self {
        self.out.push_str(" -m set --match-set ");
        self.out.push_str(&sets.get(id).name);
        self.out.push(' ');
        self.out.push_str(flags);
        self
    }

    fn jump(self, target: &str) {
        rule::jump(self.out, target);
        rule::end(self.out);
    }
}

/// The protocol number, as libxt_ipvs prints `--vproto`.
fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The `filter` and `nat` tables of IPVS mode for `cfg.family`, given the sets they match on.
pub fn ruleset(cfg: &RenderConfig, sets: &IpSets) -> Ruleset {
    let mark = mark_text(cfg.masquerade_bit);
    Ruleset {
        family: cfg.family,
        tables: vec![filter_table(cfg, sets, &mark), nat_table(cfg, sets, &mark)],
    }
}

/// Set matches that ACCEPT in `KUBE-SERVICES` traffic from outside or to the node itself.
const FROM_OUTSIDE: &str = " -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL";
/// A destination that is one of the node's addresses (each `kube-ipvs0` address is one).
const TO_NODE: &str = " -m addrtype --dst-type LOCAL";

/// `-A FROM -m comment --comment C -j TO`: one hook rule.
fn hook(out: &mut String, from: &str, comment: &str, to: &str) {
    Line::new(out, from).comment(comment).jump(to);
}

fn nat_table(cfg: &RenderConfig, sets: &IpSets, mark: &str) -> Table {
    let mut nat = Table::new("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]);
    for (i, from, comment, to) in [
        (0, "PREROUTING", "kubernetes service portals", KUBE_SERVICES),
        (2, "OUTPUT", "kubernetes service portals", KUBE_SERVICES),
        (
            3,
            "POSTROUTING",
            "kubernetes postrouting rules",
            KUBE_POSTROUTING,
        ),
    ] {
        hook(&mut nat.builtins[i].rules, from, comment, to);
    }
    let mut mark_masq = String::new();
    Line::new(&mut mark_masq, KUBE_MARK_MASQ)
        .raw(&format!(" -j MARK --set-xmark {mark}/{mark}"))
        .out
        .push('\n');
    nat.add_chain(ChainName::new(KUBE_SERVICES), &nat_services(cfg, sets));
    nat.add_chain(
        ChainName::new(KUBE_POSTROUTING),
        &nat_postrouting(cfg, sets, mark),
    );
    nat.add_chain(ChainName::new(KUBE_NODE_PORT), &nat_node_port(sets));
    nat.add_chain(ChainName::new(KUBE_LOAD_BALANCER), &nat_load_balancer(sets));
    nat.add_chain(ChainName::new(KUBE_MARK_MASQ), &mark_masq);
    nat.seal();
    nat
}

/// nat `KUBE-SERVICES`: loopback sources return, then the masquerade marks by set, the
/// node-port jump, and the ACCEPTs.
fn nat_services(cfg: &RenderConfig, sets: &IpSets) -> String {
    let empty = |id| sets.is_empty(id);
    let mut services = String::new();
    let localhost: IpNet = if cfg.family == IpFamily::V6 {
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST))
    } else {
        IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix")
    };
    {
        let l = Line::new(&mut services, KUBE_SERVICES);
        rule::src_net(l.out, false, &localhost);
        l.jump("RETURN");
    }
    if !empty(SetId::LoadBalancer) {
        Line::new(&mut services, KUBE_SERVICES)
            .comment(SetId::LoadBalancer.comment())
            .set(sets, SetId::LoadBalancer, "dst,dst")
            .jump(KUBE_LOAD_BALANCER);
    }
    if !empty(SetId::ClusterIp) {
        // iptables-save prints the detector's `! -s`/`! -i` before the match modules.
        let mut detector = String::new();
        let has_detector = !cfg.masquerade_all && detector_match(cfg, &mut detector, true);
        let flags = if cfg.masquerade_all || has_detector {
            "dst,dst"
        } else {
            "src,dst"
        };
        Line::new(&mut services, KUBE_SERVICES)
            .raw(&detector)
            .comment(SetId::ClusterIp.comment())
            .set(sets, SetId::ClusterIp, flags)
            .jump(KUBE_MARK_MASQ);
    }
    if !empty(SetId::ExternalIp) {
        for (extra, target) in [
            ("", KUBE_MARK_MASQ),
            (FROM_OUTSIDE, "ACCEPT"),
            (TO_NODE, "ACCEPT"),
        ] {
            Line::new(&mut services, KUBE_SERVICES)
                .comment(SetId::ExternalIp.comment())
                .set(sets, SetId::ExternalIp, "dst,dst")
                .raw(extra)
                .jump(target);
        }
    }
    if !empty(SetId::ExternalIpLocal) {
        for extra in [FROM_OUTSIDE, TO_NODE] {
            Line::new(&mut services, KUBE_SERVICES)
                .comment(SetId::ExternalIpLocal.comment())
                .set(sets, SetId::ExternalIpLocal, "dst,dst")
                .raw(extra)
                .jump("ACCEPT");
        }
    }
    Line::new(&mut services, KUBE_SERVICES)
        .raw(TO_NODE)
        .jump(KUBE_NODE_PORT);
    for id in [SetId::ClusterIp, SetId::LoadBalancer] {
        if !empty(id) {
            Line::new(&mut services, KUBE_SERVICES)
                .set(sets, id, "dst,dst")
                .jump("ACCEPT");
        }
    }
    services
}

/// nat `KUBE-POSTROUTING`: hairpin masquerade, then masquerade of marked packets.
fn nat_postrouting(cfg: &RenderConfig, sets: &IpSets, mark: &str) -> String {
    let mut postrouting = String::new();
    if !sets.is_empty(SetId::LoopBack) {
        Line::new(&mut postrouting, KUBE_POSTROUTING)
            .comment(SetId::LoopBack.comment())
            .set(sets, SetId::LoopBack, "dst,dst,src")
            .jump("MASQUERADE");
    }
    Line::new(&mut postrouting, KUBE_POSTROUTING)
        .raw(&format!(" -m mark ! --mark {mark}/{mark}"))
        .jump("RETURN");
    Line::new(&mut postrouting, KUBE_POSTROUTING)
        .raw(&format!(" -j MARK --set-xmark {mark}/0x0"))
        .out
        .push('\n');
    Line::new(&mut postrouting, KUBE_POSTROUTING)
        .comment("kubernetes service traffic requiring SNAT")
        .raw(" -j MASQUERADE")
        .raw(if cfg.random_fully {
            " --random-fully"
        } else {
            ""
        })
        .out
        .push('\n');
    postrouting
}

/// nat `KUBE-NODE-PORT`: Local-policy node ports return, the others are masqueraded.
fn nat_node_port(sets: &IpSets) -> String {
    let mut node_port = String::new();
    for (proto, local, all, flags) in [
        (
            Protocol::Tcp,
            SetId::NodePortLocalTcp,
            SetId::NodePortTcp,
            "dst",
        ),
        (
            Protocol::Udp,
            SetId::NodePortLocalUdp,
            SetId::NodePortUdp,
            "dst",
        ),
        (
            Protocol::Sctp,
            SetId::NodePortLocalSctp,
            SetId::NodePortSctp,
            "dst,dst",
        ),
    ] {
        for (id, target) in [(local, "RETURN"), (all, KUBE_MARK_MASQ)] {
            if !sets.is_empty(id) {
                let l = Line::new(&mut node_port, KUBE_NODE_PORT);
                rule::proto(l.out, proto);
                l.comment(id.comment()).set(sets, id, flags).jump(target);
            }
        }
    }
    node_port
}

/// nat `KUBE-LOAD-BALANCER`: Local-policy load balancers return, the others are masqueraded.
fn nat_load_balancer(sets: &IpSets) -> String {
    let mut load_balancer = String::new();
    if !sets.is_empty(SetId::LoadBalancerLocal) {
        Line::new(&mut load_balancer, KUBE_LOAD_BALANCER)
            .comment(SetId::LoadBalancerLocal.comment())
            .set(sets, SetId::LoadBalancerLocal, "dst,dst")
            .jump("RETURN");
    }
    Line::new(&mut load_balancer, KUBE_LOAD_BALANCER).jump(KUBE_MARK_MASQ);
    load_balancer
}

fn filter_table(cfg: &RenderConfig, sets: &IpSets, mark: &str) -> Table {
    let mut filter = Table::new("filter", &["INPUT", "FORWARD", "OUTPUT"]);
    // Upstream prepends each hook in turn, so a fresh node holds them in reverse order.
    for (i, from, comment, to) in [
        (
            0,
            "INPUT",
            "kubernetes ipvs access filter",
            KUBE_IPVS_FILTER,
        ),
        (0, "INPUT", "kube-proxy firewall rules", KUBE_PROXY_FIREWALL),
        (0, "INPUT", "kubernetes health check rules", KUBE_NODE_PORT),
        (
            1,
            "FORWARD",
            "kube-proxy firewall rules",
            KUBE_PROXY_FIREWALL,
        ),
        (1, "FORWARD", "kubernetes forwarding rules", KUBE_FORWARD),
        (
            2,
            "OUTPUT",
            "kubernetes ipvs access filter",
            KUBE_IPVS_OUT_FILTER,
        ),
    ] {
        hook(&mut filter.builtins[i].rules, from, comment, to);
    }
    let mut forward = String::new();
    Line::new(&mut forward, KUBE_FORWARD)
        .comment("kubernetes forwarding rules")
        .raw(&format!(" -m mark --mark {mark}/{mark}"))
        .jump("ACCEPT");
    Line::new(&mut forward, KUBE_FORWARD)
        .comment("kubernetes forwarding conntrack rule")
        .raw(" -m conntrack --ctstate RELATED,ESTABLISHED")
        .jump("ACCEPT");
    let mut filter_node_port = String::new();
    Line::new(&mut filter_node_port, KUBE_NODE_PORT)
        .comment(SetId::HealthCheckNodePort.comment())
        .set(sets, SetId::HealthCheckNodePort, "dst")
        .jump("ACCEPT");
    let mut firewall = String::new();
    if !sets.is_empty(SetId::LoadBalancerFw) {
        Line::new(&mut firewall, KUBE_PROXY_FIREWALL)
            .comment(SetId::LoadBalancerFw.comment())
            .set(sets, SetId::LoadBalancerFw, "dst,dst")
            .jump(KUBE_SOURCE_RANGES_FIREWALL);
    }
    filter.add_chain(ChainName::new(KUBE_FORWARD), &forward);
    filter.add_chain(ChainName::new(KUBE_NODE_PORT), &filter_node_port);
    filter.add_chain(ChainName::new(KUBE_PROXY_FIREWALL), &firewall);
    filter.add_chain(
        ChainName::new(KUBE_SOURCE_RANGES_FIREWALL),
        &source_ranges_firewall(sets),
    );
    filter.add_chain(ChainName::new(KUBE_IPVS_FILTER), &ipvs_filter(cfg, sets));
    filter.add_chain(ChainName::new(KUBE_IPVS_OUT_FILTER), &ipvs_out_filter(sets));
    filter.seal();
    filter
}

/// filter `KUBE-SOURCE-RANGES-FIREWALL`: allowed sources return, the rest is dropped.
fn source_ranges_firewall(sets: &IpSets) -> String {
    let mut source_ranges = String::new();
    for id in [SetId::LoadBalancerSourceCidr, SetId::LoadBalancerSourceIp] {
        if !sets.is_empty(id) {
            Line::new(&mut source_ranges, KUBE_SOURCE_RANGES_FIREWALL)
                .comment(id.comment())
                .set(sets, id, "dst,dst,src")
                .jump("RETURN");
        }
    }
    Line::new(&mut source_ranges, KUBE_SOURCE_RANGES_FIREWALL).jump("DROP");
    source_ranges
}

/// filter `KUBE-IPVS-OUT-FILTER`: the node's own connections to load balancers whose source
/// ranges leave it out are dropped.
fn ipvs_out_filter(sets: &IpSets) -> String {
    let mut out_filter = String::new();
    for (ip, proto, port) in &sets.no_node_access {
        let l = Line::new(&mut out_filter, KUBE_IPVS_OUT_FILTER);
        rule::src_ip(l.out, false, ip);
        // libxt_ipvs saves `--vproto` first, as a number, and a host `--vaddr` bare.
        l.out.push_str(" -m ipvs --vproto ");
        rule::push_u32(l.out, u32::from(proto_number(*proto)));
        l.out.push_str(" --vaddr ");
        rule::push_ip(l.out, ip);
        l.out.push_str(" --vport ");
        rule::push_u32(l.out, u32::from(*port));
        l.jump("DROP");
    }
    out_filter
}

/// filter `KUBE-IPVS-FILTER`: Service addresses return, other new connections to a
/// `kube-ipvs0` address are rejected.
fn ipvs_filter(cfg: &RenderConfig, sets: &IpSets) -> String {
    let mut ipvs_filter = String::new();
    for (id, flags) in [
        (SetId::LoadBalancer, "dst,dst"),
        (SetId::ClusterIp, "dst,dst"),
        (SetId::ExternalIp, "dst,dst"),
        (SetId::ExternalIpLocal, "dst,dst"),
        (SetId::HealthCheckNodePort, "dst"),
    ] {
        Line::new(&mut ipvs_filter, KUBE_IPVS_FILTER)
            .set(sets, id, flags)
            .jump("RETURN");
    }
    Line::new(&mut ipvs_filter, KUBE_IPVS_FILTER)
        .raw(" -m conntrack --ctstate NEW")
        .set(sets, SetId::IpvsIps, "dst")
        .raw(if cfg.family == IpFamily::V6 {
            " -j REJECT --reject-with icmp6-port-unreachable"
        } else {
            " -j REJECT --reject-with icmp-port-unreachable"
        })
        .out
        .push('\n');
    ipvs_filter
}

#[cfg(test)]
mod tests;
