//! The rules that do not belong to one service port: the hooks in the built-in chains, the
//! fixed chains (`KUBE-FORWARD`, `KUBE-POSTROUTING`, `KUBE-MARK-MASQ`, `KUBE-FIREWALL`) and
//! the node-port tail of `KUBE-SERVICES`; and the assembly of the `filter` and `nat` tables.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::chains::{
    ChainName, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_CANARY, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
};
use super::{Renderer, rule};
use crate::config::RenderConfig;
use crate::plan::NodePortDestinations;
use crate::render::ruleset::{Ruleset, Table};

/// `--ctstate NEW`, which most filter hooks match on.
const NEW: &str = " -m conntrack --ctstate NEW";

/// `-A FROM EXTRA [-m comment --comment C] -j TO`: one hook rule.
fn hook(out: &mut String, from: &str, extra: &str, comment: Option<&str>, to: &str) {
    rule::start(out, from);
    rule::raw(out, extra);
    if let Some(c) = comment {
        rule::comment(out, c);
    }
    rule::jump(out, to);
    rule::end(out);
}

impl Renderer<'_> {
    /// The node-port tail rule(s), which must stay last in nat KUBE-SERVICES.
    fn node_port_tail(&mut self) {
        let tail_comment =
            "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
        let v6 = self.v6();
        match &self.node.node_port_destinations {
            NodePortDestinations::EveryLocalAddress { loopback } => {
                let out = &mut self.nat_services;
                rule::start(out, KUBE_SERVICES);
                if v6 {
                    rule::dst_net(out, true, &IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)));
                } else if !loopback {
                    rule::dst_net(out, true, &"127.0.0.0/8".parse().expect("valid CIDR"));
                }
                rule::comment(out, tail_comment);
                rule::raw(out, " -m addrtype --dst-type LOCAL");
                rule::jump(out, KUBE_NODEPORTS);
                rule::end(out);
            }
            NodePortDestinations::Addresses(ips) => {
                for ip in ips {
                    let out = &mut self.nat_services;
                    rule::start(out, KUBE_SERVICES);
                    rule::dst_ip(out, false, ip);
                    rule::comment(out, tail_comment);
                    rule::jump(out, KUBE_NODEPORTS);
                    rule::end(out);
                }
            }
        }
    }

    /// The finished `filter` and `nat` tables.
    pub(super) fn into_ruleset(mut self) -> Ruleset {
        self.node_port_tail();
        let filter = self.filter_table();
        let nat = self.nat_table();
        Ruleset {
            family: self.cfg.family,
            tables: vec![filter, nat],
        }
    }

    fn filter_table(&mut self) -> Table {
        let v4_firewall = self.node.localhost_node_ports;
        let mut filter = std::mem::replace(&mut self.filter, Table::new("filter", &[]));
        filter_hooks(&mut filter, v4_firewall);
        filter.add_chain(
            ChainName::new(KUBE_FORWARD),
            &forward_chain(self.cfg, &self.mark),
        );
        filter.add_chain(ChainName::new(KUBE_SERVICES), &self.filter_services);
        filter.add_chain(
            ChainName::new(KUBE_EXTERNAL_SERVICES),
            &self.filter_external,
        );
        filter.add_chain(ChainName::new(KUBE_NODEPORTS), &self.filter_nodeports);
        filter.add_chain(ChainName::new(KUBE_PROXY_FIREWALL), &self.filter_firewall);
        if v4_firewall {
            filter.add_chain(ChainName::new(KUBE_FIREWALL), &localnet_firewall_chain());
        }
        filter.add_chain(ChainName::new(KUBE_PROXY_CANARY), "");
        filter.seal();
        filter
    }

    fn nat_table(&mut self) -> Table {
        let mark = &self.mark;
        let mut nat = std::mem::replace(&mut self.nat, Table::new("nat", &[]));
        let portals = Some("kubernetes service portals");
        hook(
            &mut nat.builtins[0].rules,
            "PREROUTING",
            "",
            portals,
            KUBE_SERVICES,
        );
        hook(
            &mut nat.builtins[2].rules,
            "OUTPUT",
            "",
            portals,
            KUBE_SERVICES,
        );
        hook(
            &mut nat.builtins[3].rules,
            "POSTROUTING",
            "",
            Some("kubernetes postrouting rules"),
            KUBE_POSTROUTING,
        );
        let mut post = String::new();
        rule::start(&mut post, KUBE_POSTROUTING);
        rule::raw(
            &mut post,
            &format!(" -m mark ! --mark {mark}/{mark} -j RETURN"),
        );
        rule::end(&mut post);
        rule::start(&mut post, KUBE_POSTROUTING);
        rule::raw(&mut post, &format!(" -j MARK --set-xmark {mark}/0x0"));
        rule::end(&mut post);
        rule::start(&mut post, KUBE_POSTROUTING);
        rule::comment(&mut post, "kubernetes service traffic requiring SNAT");
        rule::jump(&mut post, "MASQUERADE");
        if self.cfg.random_fully {
            rule::raw(&mut post, " --random-fully");
        }
        rule::end(&mut post);
        let mut masq = String::new();
        rule::start(&mut masq, KUBE_MARK_MASQ);
        rule::raw(&mut masq, &format!(" -j MARK --set-xmark {mark}/{mark}"));
        rule::end(&mut masq);
        nat.add_chain(ChainName::new(KUBE_POSTROUTING), &post);
        nat.add_chain(ChainName::new(KUBE_MARK_MASQ), &masq);
        nat.add_chain(ChainName::new(KUBE_SERVICES), &self.nat_services);
        nat.add_chain(ChainName::new(KUBE_NODEPORTS), &self.nat_nodeports);
        nat.add_chain(ChainName::new(KUBE_PROXY_CANARY), "");
        nat.seal();
        nat
    }
}

/// The filter hooks in INPUT, FORWARD and OUTPUT.
fn filter_hooks(filter: &mut Table, v4_firewall: bool) {
    let lb_firewall = Some("kubernetes load balancer firewall");
    let portals = Some("kubernetes service portals");
    let external = Some("kubernetes externally-visible service portals");
    // Upstream prepends every hook, so a fresh node holds them in reverse order.
    let input = &mut filter.builtins[0].rules;
    if v4_firewall {
        hook(input, "INPUT", "", None, KUBE_FIREWALL);
    }
    hook(input, "INPUT", NEW, lb_firewall, KUBE_PROXY_FIREWALL);
    let health = Some("kubernetes health check service ports");
    hook(input, "INPUT", "", health, KUBE_NODEPORTS);
    hook(input, "INPUT", NEW, external, KUBE_EXTERNAL_SERVICES);
    let forward = &mut filter.builtins[1].rules;
    hook(forward, "FORWARD", NEW, lb_firewall, KUBE_PROXY_FIREWALL);
    let forwarding = Some("kubernetes forwarding rules");
    hook(forward, "FORWARD", "", forwarding, KUBE_FORWARD);
    hook(forward, "FORWARD", NEW, portals, KUBE_SERVICES);
    hook(forward, "FORWARD", NEW, external, KUBE_EXTERNAL_SERVICES);
    let output = &mut filter.builtins[2].rules;
    if v4_firewall {
        hook(output, "OUTPUT", "", None, KUBE_FIREWALL);
    }
    hook(output, "OUTPUT", NEW, lb_firewall, KUBE_PROXY_FIREWALL);
    hook(output, "OUTPUT", NEW, portals, KUBE_SERVICES);
}

/// `KUBE-FORWARD`: invalid packets dropped (unless conntrack is liberal), marked and
/// established traffic accepted.
fn forward_chain(cfg: &RenderConfig, mark: &str) -> String {
    let mut forward = String::new();
    if !cfg.conntrack_tcp_be_liberal {
        rule::start(&mut forward, KUBE_FORWARD);
        rule::raw(&mut forward, " -m conntrack --ctstate INVALID -j DROP");
        rule::end(&mut forward);
    }
    rule::start(&mut forward, KUBE_FORWARD);
    rule::comment(&mut forward, "kubernetes forwarding rules");
    rule::raw(
        &mut forward,
        &format!(" -m mark --mark {mark}/{mark} -j ACCEPT"),
    );
    rule::end(&mut forward);
    rule::start(&mut forward, KUBE_FORWARD);
    rule::comment(&mut forward, "kubernetes forwarding conntrack rule");
    rule::raw(
        &mut forward,
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    rule::end(&mut forward);
    forward
}

/// `KUBE-FIREWALL`: with localhost node ports, new connections from outside to 127.0.0.0/8 go.
fn localnet_firewall_chain() -> String {
    let mut fw = String::new();
    let localnet: IpNet = "127.0.0.0/8".parse().expect("valid CIDR");
    rule::start(&mut fw, KUBE_FIREWALL);
    rule::src_net(&mut fw, true, &localnet);
    rule::dst_net(&mut fw, false, &localnet);
    rule::comment(&mut fw, "block incoming localnet connections");
    rule::raw(
        &mut fw,
        " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    );
    rule::end(&mut fw);
    fw
}
