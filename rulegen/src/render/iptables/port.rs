//! One service port's rules, written from its [`PortPlan`]: the captures in the dispatch chains
//! (`KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`, `KUBE-PROXY-FIREWALL`), then
//! its own chains (`KUBE-EXT-*`, `KUBE-FW-*`, `KUBE-SVC-*`, `KUBE-SVL-*`, `KUBE-SEP-*`).

use std::net::IpAddr;

use super::chains::{
    ChainName, KUBE_EXTERNAL_SERVICES, KUBE_MARK_MASQ, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL,
    KUBE_SERVICES, ServiceChains,
};
use super::{Renderer, Scratch, capture, recent_suffix, rule};
use crate::config::LocalDetector;
use crate::model::{Protocol, SessionAffinity};
use crate::plan::{ClusterIpMasquerade, EndpointSet, PortPlan, Target, Unserved};

/// A filter-table verdict for a destination without usable endpoints: comment suffix and target.
type FilterVerdict = (&'static str, &'static str);

/// One service port being written: its plan and the names its rules use.
pub(super) struct Port<'p, 's> {
    /// The decisions.
    pub plan: &'p PortPlan<'p>,
    /// `namespace/name:port`, every rule's comment.
    pub name: &'p str,
    /// The per-service chain names.
    pub chains: ServiceChains,
    /// The endpoints' strings and `KUBE-SEP-*` names.
    pub sc: &'s Scratch<'s>,
}

impl Port<'_, '_> {
    /// The selection chain of an endpoint set.
    fn chain(&self, set: EndpointSet) -> ChainName {
        match set {
            EndpointSet::Cluster => self.chains.svc,
            EndpointSet::Local => self.chains.svl,
        }
    }

    /// Where load-balancer traffic enters: the firewall chain when there is one.
    fn lb_chain(&self) -> ChainName {
        if self.plan.decisions.firewall {
            self.chains.fw
        } else {
            self.chains.ext
        }
    }
}

impl Renderer<'_> {
    /// The filter verdict for traffic `target` does not serve (REJECT or DROP).
    fn filter_verdict(&self, target: &Target) -> Option<FilterVerdict> {
        target.unserved.map(|why| match why {
            Unserved::NoEndpoints => (" has no endpoints", self.reject_target()),
            Unserved::NoLocalEndpoints => (" has no local endpoints", " -j DROP"),
        })
    }

    /// Every rule of one service port, in upstream's order within each chain.
    pub(super) fn port_rules(&mut self, port: &Port) {
        self.capture_cluster_ip(port);
        self.capture_external_ips(port);
        self.capture_load_balancer_ips(port);
        self.capture_node_port(port);
        self.accept_health_check(port);
        if port.plan.decisions.external_dispatch {
            self.external_chain(port);
        }
        if port.plan.decisions.firewall {
            self.firewall_chain(port);
        }
        let d = &port.plan.decisions;
        let internal_entry = |set| d.internal.set == set && d.internal.served();
        if d.cluster_selection {
            self.endpoint_selection(
                port,
                EndpointSet::Cluster,
                internal_entry(EndpointSet::Cluster),
            );
        }
        if d.local_selection {
            self.endpoint_selection(port, EndpointSet::Local, internal_entry(EndpointSet::Local));
        }
        self.endpoint_chains(port);
    }

    fn capture_cluster_ip(&mut self, port: &Port) {
        let (sp, name) = (port.plan.port, port.name);
        let cluster_ip = port.plan.addresses.cluster_ip;
        let internal = &port.plan.decisions.internal;
        if internal.served() {
            let out = &mut self.nat_services;
            capture(out, KUBE_SERVICES, &cluster_ip, sp, &[name, " cluster IP"]);
            rule::jump(out, port.chain(internal.set).as_str());
            rule::end(out);
        } else if let Some((why, target)) = self.filter_verdict(internal) {
            let out = &mut self.filter_services;
            capture(out, KUBE_SERVICES, &cluster_ip, sp, &[name, why]);
            rule::raw(out, target);
            rule::end(out);
        }
    }

    fn capture_external_ips(&mut self, port: &Port) {
        let (sp, name) = (port.plan.port, port.name);
        let external_filter = self.filter_verdict(&port.plan.decisions.external);
        for ip in &port.plan.addresses.external_ips {
            if port.plan.decisions.has_endpoints {
                let out = &mut self.nat_services;
                capture(out, KUBE_SERVICES, ip, sp, &[name, " external IP"]);
                rule::jump(out, port.chains.ext.as_str());
                rule::end(out);
            }
            if let Some((why, target)) = external_filter {
                let out = &mut self.filter_external;
                capture(out, KUBE_EXTERNAL_SERVICES, ip, sp, &[name, why]);
                rule::raw(out, target);
                rule::end(out);
            }
        }
    }

    fn capture_load_balancer_ips(&mut self, port: &Port) {
        let (sp, name) = (port.plan.port, port.name);
        let d = &port.plan.decisions;
        let lb_ips = &port.plan.addresses.load_balancer_ips;
        for ip in lb_ips {
            if d.has_endpoints {
                let out = &mut self.nat_services;
                capture(out, KUBE_SERVICES, ip, sp, &[name, " loadbalancer IP"]);
                rule::jump(out, port.lb_chain().as_str());
                rule::end(out);
            }
            if d.firewall {
                let out = &mut self.filter_firewall;
                let comment = [name, " traffic not accepted by ", port.chains.fw.as_str()];
                capture(out, KUBE_PROXY_FIREWALL, ip, sp, &comment);
                rule::jump(out, "DROP");
                rule::end(out);
            }
        }
        if let Some((why, target)) = self.filter_verdict(&d.external) {
            for ip in lb_ips {
                let out = &mut self.filter_external;
                capture(out, KUBE_EXTERNAL_SERVICES, ip, sp, &[name, why]);
                rule::raw(out, target);
                rule::end(out);
            }
        }
    }

    fn capture_node_port(&mut self, port: &Port) {
        let Some(node_port) = port.plan.addresses.node_port else {
            return;
        };
        let (proto, name) = (port.plan.port.protocol, port.name);
        if port.plan.decisions.has_endpoints {
            let out = &mut self.nat_nodeports;
            rule::start(out, KUBE_NODEPORTS);
            rule::proto(out, proto);
            rule::comment(out, name);
            rule::dport(out, proto, node_port);
            rule::jump(out, port.chains.ext.as_str());
            rule::end(out);
        }
        if let Some((why, target)) = self.filter_verdict(&port.plan.decisions.external) {
            let out = &mut self.filter_external;
            rule::start(out, KUBE_EXTERNAL_SERVICES);
            rule::proto(out, proto);
            rule::comment_parts(out, &[name, why]);
            rule::raw(out, " -m addrtype --dst-type LOCAL");
            rule::dport(out, proto, node_port);
            rule::raw(out, target);
            rule::end(out);
        }
    }

    /// Accepts the health-check node port whether or not there are local endpoints.
    fn accept_health_check(&mut self, port: &Port) {
        if let Some(hc) = port.plan.addresses.health_check_node_port {
            let out = &mut self.filter_nodeports;
            rule::start(out, KUBE_NODEPORTS);
            rule::proto(out, Protocol::Tcp);
            rule::comment_parts(out, &[port.name, " health check node port"]);
            rule::dport(out, Protocol::Tcp, hc);
            rule::jump(out, "ACCEPT");
            rule::end(out);
        }
    }

    /// `KUBE-EXT-*`: masquerade (Cluster policy) or the Local policy's short-circuits, then
    /// the external policy's selection chain.
    fn external_chain(&mut self, port: &Port) {
        let (name, chains) = (port.name, &port.chains);
        let ext = chains.ext.as_str();
        let external_local = port.plan.policies.external_local;
        let detector = (external_local && self.node.has_local_detector).then(|| {
            let mut m = String::new();
            self.detector_match(&mut m, false);
            m
        });
        self.nat.begin_chain(chains.ext);
        let out = self.nat.text_mut();
        if !external_local {
            rule::start(out, ext);
            let comment = ["masquerade traffic for ", name, " external destinations"];
            rule::comment_parts(out, &comment);
            rule::jump(out, KUBE_MARK_MASQ);
            rule::end(out);
        } else {
            if let Some(m) = detector {
                rule::start(out, ext);
                rule::raw(out, &m);
                rule::comment_parts(out, &["pod traffic for ", name, " external destinations"]);
                rule::jump(out, chains.svc.as_str());
                rule::end(out);
            }
            rule::start(out, ext);
            let comment = [
                "masquerade LOCAL traffic for ",
                name,
                " external destinations",
            ];
            rule::comment_parts(out, &comment);
            rule::raw(out, " -m addrtype --src-type LOCAL");
            rule::jump(out, KUBE_MARK_MASQ);
            rule::end(out);
            rule::start(out, ext);
            let comment = ["route LOCAL traffic for ", name, " external destinations"];
            rule::comment_parts(out, &comment);
            rule::raw(out, " -m addrtype --src-type LOCAL");
            rule::jump(out, chains.svc.as_str());
            rule::end(out);
        }
        let external = &port.plan.decisions.external;
        if external.served() {
            rule::start(out, ext);
            rule::jump(out, port.chain(external.set).as_str());
            rule::end(out);
        }
        self.nat.end_chain();
    }

    /// `KUBE-FW-*`: the source ranges (and the node's own VIP) to `KUBE-EXT-*`; the rest falls
    /// through to `KUBE-PROXY-FIREWALL`'s DROP.
    fn firewall_chain(&mut self, port: &Port) {
        let (name, chains) = (port.name, &port.chains);
        let fw = chains.fw.as_str();
        self.nat.begin_chain(chains.fw);
        let out = self.nat.text_mut();
        let comment: [&str; 2] = [name, " loadbalancer IP"];
        for net in &port.plan.addresses.source_ranges {
            rule::start(out, fw);
            rule::src_net(out, false, net);
            rule::comment_parts(out, &comment);
            rule::jump(out, chains.ext.as_str());
            rule::end(out);
        }
        // A node reaching its own VIP loops back with the VIP as source.
        if port.plan.decisions.firewall_admits_node {
            for ip in &port.plan.addresses.load_balancer_ips {
                rule::start(out, fw);
                rule::src_ip(out, false, ip);
                rule::comment_parts(out, &comment);
                rule::jump(out, chains.ext.as_str());
                rule::end(out);
            }
        }
        rule::start(out, fw);
        let comment = [
            "other traffic to ",
            name,
            " will be dropped by KUBE-PROXY-FIREWALL",
        ];
        rule::comment_parts(out, &comment);
        rule::end(out);
        self.nat.end_chain();
    }

    /// Writes a KUBE-SVC/SVL chain: the internal masquerade rule (when this is the chain
    /// cluster-IP traffic enters), affinity checks, then one random jump per endpoint.
    fn endpoint_selection(&mut self, port: &Port, set: EndpointSet, is_internal_entry: bool) {
        let (sp, name, sc) = (port.plan.port, port.name, port.sc);
        let cluster_ip = port.plan.addresses.cluster_ip;
        let selected = port.plan.members(set);
        let chain = port.chain(set);
        let large = self.large_cluster;
        let chain_str = chain.as_str();
        let mut masq_prefix = String::new();
        let masq = is_internal_entry
            && match port.plan.decisions.cluster_ip_masquerade {
                ClusterIpMasquerade::All => true,
                ClusterIpMasquerade::NotFromLocalPod => {
                    self.write_not_local_capture(&mut masq_prefix, &cluster_ip);
                    true
                }
                ClusterIpMasquerade::NoDetector => false,
            };
        self.nat.begin_chain(chain);
        let out = self.nat.text_mut();
        if masq {
            if masq_prefix.is_empty() {
                capture(out, chain_str, &cluster_ip, sp, &[name, " cluster IP"]);
            } else {
                rule::start(out, chain_str);
                rule::raw(out, &masq_prefix);
                rule::proto(out, sp.protocol);
                rule::comment_parts(out, &[name, " cluster IP"]);
                rule::dport(out, sp.protocol, sp.port);
            }
            rule::jump(out, KUBE_MARK_MASQ);
            rule::end(out);
        }
        if let Some(timeout_seconds) = port.plan.decisions.affinity_seconds {
            for &i in selected {
                let info = &sc.infos[i];
                rule::start(out, chain_str);
                if !large {
                    rule::comment_parts(out, &[name, " -> ", &sc.addrs[info.addr.clone()]]);
                }
                rule::raw(out, " -m recent --rcheck --seconds ");
                rule::push_u32(out, timeout_seconds);
                rule::raw(out, " --reap --name ");
                rule::raw(out, info.sep.as_str());
                rule::raw(out, recent_suffix(self.cfg.family));
                rule::jump(out, info.sep.as_str());
                rule::end(out);
            }
        }
        let n = selected.len();
        for (k, &i) in selected.iter().enumerate() {
            let info = &sc.infos[i];
            rule::start(out, chain_str);
            if !large {
                rule::comment_parts(out, &[name, " -> ", &sc.addrs[info.addr.clone()]]);
            }
            if k + 1 < n {
                rule::raw(out, " -m statistic --mode random --probability ");
                rule::raw(out, self.probabilities.get(n - k));
            }
            rule::jump(out, info.sep.as_str());
            rule::end(out);
        }
        self.nat.end_chain();
    }

    /// One KUBE-SEP chain per reachable endpoint: hairpin masquerade, then DNAT.
    fn endpoint_chains(&mut self, port: &Port) {
        let (sp, name, sc) = (port.plan.port, port.name, port.sc);
        let (fam, proto) = (self.cfg.family, sp.protocol);
        let large = self.large_cluster;
        for &i in &port.plan.endpoints.all_reachable {
            let info = &sc.infos[i];
            let sep = info.sep.as_str();
            self.nat.begin_chain(info.sep);
            let out = self.nat.text_mut();
            rule::start(out, sep);
            rule::src_ip(out, false, &sp.endpoints[info.index].ip);
            if !large {
                rule::comment(out, name);
            }
            rule::jump(out, KUBE_MARK_MASQ);
            rule::end(out);
            rule::start(out, sep);
            rule::proto(out, proto);
            if !large {
                rule::comment(out, name);
            }
            if let SessionAffinity::ClientIp { .. } = sp.session_affinity {
                rule::raw(out, " -m recent --set --name ");
                rule::raw(out, sep);
                rule::raw(out, recent_suffix(fam));
            }
            rule::raw(out, " -m ");
            rule::raw(out, proto.as_str());
            rule::raw(out, " -j DNAT --to-destination ");
            rule::raw(out, &sc.addrs[info.addr.clone()]);
            rule::end(out);
            self.nat.end_chain();
        }
    }

    /// `! -s CIDR -d IP` or `-d IP ! -i IFACE`: the "not from a local pod" match before `-p`.
    fn write_not_local_capture(&self, out: &mut String, ip: &IpAddr) {
        // iptables-save prints -s, -d, -i in that order, so where the detector's match goes
        // depends on its kind.
        if let LocalDetector::Cidrs(_) = self.cfg.local_detector {
            self.detector_match(out, true);
            rule::dst_ip(out, false, ip);
        } else {
            rule::dst_ip(out, false, ip);
            self.detector_match(out, true);
        }
    }
}
