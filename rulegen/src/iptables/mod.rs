//! Renders the iptables-mode ruleset (`filter` and `nat`) for one address family, rule for rule
//! what upstream kube-proxy's `syncProxyRules` writes, in `iptables-save`'s canonical spelling.

pub mod rule;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ipnet::IpNet;

use crate::chains::{
    self, ChainName, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ,
    KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_PROXY_CANARY, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
    ServiceChains,
};
use crate::config::{LocalDetector, RenderConfig};
use crate::endpoints::{self, Categorized};
use crate::model::{
    Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName, SessionAffinity,
};
use crate::probability::ProbabilityCache;
use crate::retain::Retain;
use crate::ruleset::{Ruleset, Table};

/// Above this many endpoints upstream drops per-endpoint comments to shrink the payload.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

/// Why a render was refused (the whole config is unusable; single bad objects never get here).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// `--iptables-masquerade-bit` outside 0..=31.
    #[error("masquerade bit {0} is out of range (0-31)")]
    MasqueradeBit(u8),
    /// A string from an object or a flag would change the rules' syntax.
    #[error(transparent)]
    UnsafeText(#[from] crate::untrusted::UnsafeText),
}

/// Renders `model` for `cfg.family` into the tables kube-proxy's iptables mode owns.
pub fn render(model: &Model, cfg: &RenderConfig) -> Result<Ruleset, RenderError> {
    let mut out = Ruleset {
        family: cfg.family,
        tables: Vec::new(),
    };
    render_into(model, cfg, &mut out)?;
    Ok(out)
}

/// Like [`render`], but reuses `out`'s buffers (a previous, no longer needed ruleset): an agent
/// that renders on every sync then writes into memory it already owns instead of faulting in
/// tens of megabytes each time.
pub fn render_into(
    model: &Model,
    cfg: &RenderConfig,
    out: &mut Ruleset,
) -> Result<(), RenderError> {
    render_into_with(model, cfg, out, &Retain::All)
}

/// Like [`render_into`], keeping the rule text only of the chains `retain` keeps (the others
/// keep their names and fingerprints): how the agent renders a large node without holding its
/// whole ruleset in memory.
pub fn render_into_with(
    model: &Model,
    cfg: &RenderConfig,
    out: &mut Ruleset,
    retain: &Retain,
) -> Result<(), RenderError> {
    if cfg.masquerade_bit > 31 {
        return Err(RenderError::MasqueradeBit(cfg.masquerade_bit));
    }
    crate::untrusted::check(model, cfg)?;
    let mut take = |name: &'static str, builtins: &[&'static str]| match out
        .tables
        .iter()
        .position(|t| t.name == name)
    {
        Some(i) => {
            let mut t = out.tables.swap_remove(i);
            t.clear();
            t
        }
        None => Table::new(name, builtins),
    };
    let mut take = |name, builtins: &[&'static str]| {
        let mut t = take(name, builtins);
        t.set_retain(retain.clone());
        t
    };
    let mut mangle = take(
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    );
    mangle.add_chain(ChainName::new(KUBE_PROXY_CANARY), "");
    mangle.seal();
    let filter = take("filter", &["INPUT", "FORWARD", "OUTPUT"]);
    let nat = take("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]);
    let mut r = Renderer::new(cfg, filter, nat);

    // Only service ports with a cluster IP of this family exist for this family's proxier.
    let mut ports: Vec<(&ServicePort, IpAddr)> = model
        .services
        .iter()
        .filter_map(|sp| {
            sp.cluster_ips
                .iter()
                .find(|ip| cfg.family.contains(ip))
                .map(|ip| (sp, *ip))
        })
        .collect();
    fn key<'a>(p: &(&'a ServicePort, IpAddr)) -> (&'a ServicePortName, Protocol) {
        (&p.0.name, p.0.protocol)
    }
    // A model kept in order (as the translator keeps it) skips the string sort.
    if !ports.is_sorted_by(|a, b| key(a) <= key(b)) {
        ports.sort_by(|a, b| key(a).cmp(&key(b)));
    }

    let total_endpoints: usize = ports
        .iter()
        .map(|(sp, _)| {
            sp.endpoints
                .iter()
                .filter(|e| cfg.family.contains(&e.ip))
                .count()
        })
        .sum();
    r.large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;

    // Roughly what each endpoint and service costs in nat text; one up-front allocation (none
    // when most text is dropped as it is rendered: the point there is to stay small).
    let text = match retain {
        Retain::All => total_endpoints * 400 + ports.len() * 600,
        _ => 0,
    };
    r.nat.reserve(text, total_endpoints + ports.len() * 3);
    r.nat_services.reserve(ports.len() * 160);
    for (sp, cluster_ip) in &ports {
        r.service_port(sp, *cluster_ip);
    }
    let mut rendered = r.into_ruleset();
    // mangle first: a restore commits table by table, so a partial sync's canary check there
    // stops before anything is committed when every table was flushed.
    rendered.tables.insert(0, mangle);
    // The policy only matters while rendering; holding on to it would keep a partial sync's
    // fingerprints (megabytes) alive until the next render.
    for t in &mut rendered.tables {
        t.set_retain(Retain::All);
    }
    *out = rendered;
    Ok(())
}

/// The mark kube-proxy sets on packets to masquerade, as `iptables-save` prints it.
pub(crate) fn mark_text(bit: u8) -> String {
    format!("{:#x}", 1u32 << bit)
}

/// A filter-table verdict for a destination without usable endpoints: comment suffix and target.
type FilterVerdict = (&'static str, &'static str);

/// One endpoint as the renderer needs it, with its strings computed once.
struct EndpointInfo {
    /// Index into the service port's `endpoints`.
    index: usize,
    /// `IP:port` in the scratch address buffer.
    addr: Range<usize>,
    sep: ChainName,
}

/// Per-service-port working memory, kept across service ports so the hot loop does not allocate.
#[derive(Default)]
struct Scratch<'a> {
    infos: Vec<EndpointInfo>,
    addrs: String,
    eps: Vec<&'a Endpoint>,
    cat: Categorized,
}

struct Renderer<'c> {
    cfg: &'c RenderConfig,
    scratch: Scratch<'c>,
    mark: String,
    large_cluster: bool,
    localhost_nodeports: bool,
    has_detector: bool,
    probabilities: ProbabilityCache,
    // filter dispatch chains
    filter_services: String,
    filter_external: String,
    filter_nodeports: String,
    filter_firewall: String,
    // nat dispatch chains, and every per-service chain
    nat_services: String,
    nat_nodeports: String,
    filter: Table,
    nat: Table,
}

impl<'c> Renderer<'c> {
    fn new(cfg: &'c RenderConfig, filter: Table, nat: Table) -> Self {
        // Localhost node ports exist only for IPv4, and only when the node-port addresses
        // include 127.0.0.1 (an empty list means "all addresses").
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let localhost_nodeports = cfg.family == IpFamily::V4
            && cfg.localhost_nodeports
            && (cfg.nodeport_addresses.is_empty()
                || cfg.nodeport_addresses.iter().any(|n| n.contains(&loopback)));
        let mut r = Renderer {
            cfg,
            mark: mark_text(cfg.masquerade_bit),
            scratch: Scratch::default(),
            large_cluster: false,
            localhost_nodeports,
            has_detector: false,
            probabilities: ProbabilityCache::default(),
            filter_services: String::new(),
            filter_external: String::new(),
            filter_nodeports: String::new(),
            filter_firewall: String::new(),
            nat_services: String::new(),
            nat_nodeports: String::new(),
            filter,
            nat,
        };
        r.has_detector = r.detector_match(&mut String::new(), false);
        r
    }

    fn v6(&self) -> bool {
        self.cfg.family == IpFamily::V6
    }

    fn reject_target(&self) -> &'static str {
        if self.v6() {
            " -j REJECT --reject-with icmp6-port-unreachable"
        } else {
            " -j REJECT --reject-with icmp-port-unreachable"
        }
    }

    /// Writes `[!] -s`/`-i` for the local-traffic detector; false when there is no detector.
    fn detector_match(&self, out: &mut String, negated: bool) -> bool {
        detector_match(self.cfg, out, negated)
    }

    fn service_port(&mut self, sp: &'c ServicePort, cluster_ip: IpAddr) {
        let fam = self.cfg.family;
        let name = sp.name.to_string();
        let proto = sp.protocol;

        let mut sc = std::mem::take(&mut self.scratch);
        sc.infos.clear();
        sc.addrs.clear();
        for (index, ep) in sp.endpoints.iter().enumerate() {
            if fam.contains(&ep.ip) {
                let start = sc.addrs.len();
                rule::endpoint_addr(&mut sc.addrs, &ep.ip, ep.port);
                sc.infos.push(EndpointInfo {
                    index,
                    addr: start..sc.addrs.len(),
                    sep: ChainName::new("-"),
                });
            }
        }
        // Upstream orders endpoints by their "IP:port" string.
        let addrs = &sc.addrs;
        sc.infos
            .sort_by(|a, b| addrs[a.addr.clone()].cmp(&addrs[b.addr.clone()]));
        sc.infos
            .dedup_by(|a, b| addrs[a.addr.clone()] == addrs[b.addr.clone()]);
        sc.eps.clear();
        sc.eps
            .extend(sc.infos.iter().map(|i| &sp.endpoints[i.index]));
        endpoints::categorize_into(
            &mut sc.cat,
            sp,
            &sc.eps,
            &self.cfg.node_name,
            self.cfg.node_zone.as_deref(),
        );
        let hasher = crate::hash::EndpointHasher::new(&sp.name, proto);
        for &i in &sc.cat.all_reachable {
            let info = &mut sc.infos[i];
            info.sep = chains::endpoint_chain_with(&hasher, &sc.addrs[info.addr.clone()]);
        }
        self.service_port_rules(sp, cluster_ip, &name, &sc);
        self.scratch = sc;
    }

    fn service_port_rules(
        &mut self,
        sp: &ServicePort,
        cluster_ip: IpAddr,
        name: &str,
        sc: &Scratch,
    ) {
        let fam = self.cfg.family;
        let proto = sp.protocol;
        let cat = &sc.cat;
        let external_ips: Vec<&IpAddr> = sp
            .external_ips
            .iter()
            .filter(|ip| fam.contains(ip))
            .collect();
        let lb_ips: Vec<&IpAddr> = sp
            .load_balancer_ips
            .iter()
            .filter(|ip| fam.contains(ip))
            .collect();
        let source_ranges: Vec<&IpNet> = sp
            .load_balancer_source_ranges
            .iter()
            .filter(|n| fam.contains_net(n))
            .collect();

        let chains = ServiceChains::new(&sp.name, proto);
        let accessible = endpoints::externally_accessible(sp);
        let internal_local = endpoints::internal_policy_local(sp);
        let external_local = endpoints::external_policy_local(sp);

        let uses_cluster_chain = !cat.cluster.is_empty() && endpoints::uses_cluster_endpoints(sp);
        let uses_local_chain = !cat.local.is_empty() && endpoints::uses_local_endpoints(sp);

        let has_endpoints = cat.has_any;
        let (internal_chain, has_internal) = if internal_local {
            (chains.svl, has_endpoints && !cat.local.is_empty())
        } else {
            (chains.svc, has_endpoints)
        };
        let (external_policy_chain, has_external) = if external_local {
            (chains.svl, has_endpoints && !cat.local.is_empty())
        } else {
            (chains.svc, has_endpoints)
        };
        let uses_ext_chain = has_endpoints && accessible;
        let uses_fw_chain = has_endpoints && !lb_ips.is_empty() && !source_ranges.is_empty();
        let lb_chain = if uses_fw_chain { chains.fw } else { chains.ext };

        // Filter-table verdicts for destinations that have no usable endpoints.
        let reject = self.reject_target();
        let (internal_filter, external_filter): (Option<FilterVerdict>, Option<FilterVerdict>) =
            if !has_endpoints {
                (
                    Some((" has no endpoints", reject)),
                    Some((" has no endpoints", reject)),
                )
            } else {
                (
                    (!has_internal).then_some((" has no local endpoints", " -j DROP")),
                    (!has_external).then_some((" has no local endpoints", " -j DROP")),
                )
            };

        // Capture the cluster IP.
        if has_internal {
            let out = &mut self.nat_services;
            capture(out, KUBE_SERVICES, &cluster_ip, sp, &[name, " cluster IP"]);
            rule::jump(out, internal_chain.as_str());
            rule::end(out);
        } else if let Some((why, target)) = internal_filter {
            let out = &mut self.filter_services;
            capture(out, KUBE_SERVICES, &cluster_ip, sp, &[name, why]);
            rule::raw(out, target);
            rule::end(out);
        }

        // Capture external IPs.
        for ip in &external_ips {
            if has_endpoints {
                let out = &mut self.nat_services;
                capture(out, KUBE_SERVICES, ip, sp, &[name, " external IP"]);
                rule::jump(out, chains.ext.as_str());
                rule::end(out);
            }
            if let Some((why, target)) = external_filter {
                let out = &mut self.filter_external;
                capture(out, KUBE_EXTERNAL_SERVICES, ip, sp, &[name, why]);
                rule::raw(out, target);
                rule::end(out);
            }
        }

        // Capture load-balancer IPs.
        for ip in &lb_ips {
            if has_endpoints {
                let out = &mut self.nat_services;
                capture(out, KUBE_SERVICES, ip, sp, &[name, " loadbalancer IP"]);
                rule::jump(out, lb_chain.as_str());
                rule::end(out);
            }
            if uses_fw_chain {
                let out = &mut self.filter_firewall;
                capture(
                    out,
                    KUBE_PROXY_FIREWALL,
                    ip,
                    sp,
                    &[name, " traffic not accepted by ", chains.fw.as_str()],
                );
                rule::jump(out, "DROP");
                rule::end(out);
            }
        }
        if let Some((why, target)) = external_filter {
            for ip in &lb_ips {
                let out = &mut self.filter_external;
                capture(out, KUBE_EXTERNAL_SERVICES, ip, sp, &[name, why]);
                rule::raw(out, target);
                rule::end(out);
            }
        }

        // Capture the node port.
        if let Some(node_port) = sp.node_port {
            if has_endpoints {
                let out = &mut self.nat_nodeports;
                rule::start(out, KUBE_NODEPORTS);
                rule::proto(out, proto);
                rule::comment(out, name);
                rule::dport(out, proto, node_port);
                rule::jump(out, chains.ext.as_str());
                rule::end(out);
            }
            if let Some((why, target)) = external_filter {
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

        // Accept the health-check node port whether or not there are local endpoints.
        if let Some(hc) = sp.health_check_node_port {
            let out = &mut self.filter_nodeports;
            rule::start(out, KUBE_NODEPORTS);
            rule::proto(out, Protocol::Tcp);
            rule::comment_parts(out, &[name, " health check node port"]);
            rule::dport(out, Protocol::Tcp, hc);
            rule::jump(out, "ACCEPT");
            rule::end(out);
        }

        // External destinations.
        if uses_ext_chain {
            let ext = chains.ext.as_str();
            let detector = if external_local && self.has_detector {
                let mut m = String::new();
                self.detector_match(&mut m, false);
                Some(m)
            } else {
                None
            };
            self.nat.begin_chain(chains.ext);
            let out = self.nat.text_mut();
            if !external_local {
                rule::start(out, ext);
                rule::comment_parts(
                    out,
                    &["masquerade traffic for ", name, " external destinations"],
                );
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
                rule::comment_parts(
                    out,
                    &[
                        "masquerade LOCAL traffic for ",
                        name,
                        " external destinations",
                    ],
                );
                rule::raw(out, " -m addrtype --src-type LOCAL");
                rule::jump(out, KUBE_MARK_MASQ);
                rule::end(out);
                rule::start(out, ext);
                rule::comment_parts(
                    out,
                    &["route LOCAL traffic for ", name, " external destinations"],
                );
                rule::raw(out, " -m addrtype --src-type LOCAL");
                rule::jump(out, chains.svc.as_str());
                rule::end(out);
            }
            if has_external {
                rule::start(out, ext);
                rule::jump(out, external_policy_chain.as_str());
                rule::end(out);
            }
            self.nat.end_chain();
        }

        // Load-balancer source ranges.
        if uses_fw_chain {
            let fw = chains.fw.as_str();
            let node_ips = &self.cfg.node_ips;
            self.nat.begin_chain(chains.fw);
            let out = self.nat.text_mut();
            let comment: [&str; 2] = [name, " loadbalancer IP"];
            let mut allow_from_node = false;
            for net in &source_ranges {
                rule::start(out, fw);
                rule::src_net(out, false, net);
                rule::comment_parts(out, &comment);
                rule::jump(out, chains.ext.as_str());
                rule::end(out);
                allow_from_node |= node_ips.iter().any(|ip| net.contains(ip));
            }
            // A node reaching its own VIP loops back with the VIP as source.
            if allow_from_node {
                for ip in &lb_ips {
                    rule::start(out, fw);
                    rule::src_ip(out, false, ip);
                    rule::comment_parts(out, &comment);
                    rule::jump(out, chains.ext.as_str());
                    rule::end(out);
                }
            }
            rule::start(out, fw);
            rule::comment_parts(
                out,
                &[
                    "other traffic to ",
                    name,
                    " will be dropped by KUBE-PROXY-FIREWALL",
                ],
            );
            rule::end(out);
            self.nat.end_chain();
        }

        // Endpoint selection chains; the internal chain starts with its masquerade rule.
        if uses_cluster_chain {
            self.endpoint_selection(
                name,
                sp,
                cluster_ip,
                chains.svc,
                internal_chain == chains.svc && has_internal,
                sc,
                &cat.cluster,
            );
        }
        if uses_local_chain {
            self.endpoint_selection(
                name,
                sp,
                cluster_ip,
                chains.svl,
                internal_chain == chains.svl && has_internal,
                sc,
                &cat.local,
            );
        }

        // One KUBE-SEP chain per reachable endpoint: hairpin masquerade, then DNAT.
        let large = self.large_cluster;
        for &i in &cat.all_reachable {
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

    /// Writes a KUBE-SVC/SVL chain: the internal masquerade rule (when this is the chain
    /// cluster-IP traffic enters), affinity checks, then one random jump per endpoint.
    #[allow(clippy::too_many_arguments)]
    fn endpoint_selection(
        &mut self,
        name: &str,
        sp: &ServicePort,
        cluster_ip: IpAddr,
        chain: ChainName,
        is_internal_entry: bool,
        sc: &Scratch,
        selected: &[usize],
    ) {
        let large = self.large_cluster;
        let chain_str = chain.as_str();
        let mut masq_prefix = String::new();
        let masq = if !is_internal_entry {
            false
        } else if self.cfg.masquerade_all {
            true
        } else if self.has_detector {
            self.write_not_local_capture(&mut masq_prefix, &cluster_ip);
            true
        } else {
            false
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
        if let SessionAffinity::ClientIp { timeout_seconds } = sp.session_affinity {
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

    /// The node-port tail rule(s), which must stay last in nat KUBE-SERVICES.
    fn node_port_tail(&mut self) {
        let cfg = self.cfg;
        let tail_comment =
            "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
        let match_all = cfg.nodeport_addresses.is_empty()
            || cfg.nodeport_addresses.iter().any(|n| n.prefix_len() == 0);
        if match_all {
            let v6 = self.v6();
            let out = &mut self.nat_services;
            rule::start(out, KUBE_SERVICES);
            if v6 {
                rule::dst_net(out, true, &IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)));
            } else if !self.localhost_nodeports {
                rule::dst_net(out, true, &"127.0.0.0/8".parse().expect("valid CIDR"));
            }
            rule::comment(out, tail_comment);
            rule::raw(out, " -m addrtype --dst-type LOCAL");
            rule::jump(out, KUBE_NODEPORTS);
            rule::end(out);
        } else {
            let mut ips: Vec<IpAddr> = cfg
                .node_ips
                .iter()
                .copied()
                .chain([
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ])
                .filter(|ip| cfg.family.contains(ip))
                .filter(|ip| cfg.nodeport_addresses.iter().any(|n| n.contains(ip)))
                .filter(|ip| !ip.is_loopback() || self.localhost_nodeports)
                .collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                let out = &mut self.nat_services;
                rule::start(out, KUBE_SERVICES);
                rule::dst_ip(out, false, &ip);
                rule::comment(out, tail_comment);
                rule::jump(out, KUBE_NODEPORTS);
                rule::end(out);
            }
        }
    }

    fn into_ruleset(mut self) -> Ruleset {
        self.node_port_tail();
        let cfg = self.cfg;
        let mark = self.mark.clone();
        let v4_firewall = self.localhost_nodeports;
        let hook = |out: &mut String, from: &str, extra: &str, comment: Option<&str>, to: &str| {
            rule::start(out, from);
            rule::raw(out, extra);
            if let Some(c) = comment {
                rule::comment(out, c);
            }
            rule::jump(out, to);
            rule::end(out);
        };
        let nc = " -m conntrack --ctstate NEW";

        // filter
        let mut filter = std::mem::replace(&mut self.filter, Table::new("filter", &[]));
        {
            // Upstream prepends every hook, so a fresh node holds them in reverse order.
            let input = &mut filter.builtins[0].rules;
            if v4_firewall {
                hook(input, "INPUT", "", None, KUBE_FIREWALL);
            }
            hook(
                input,
                "INPUT",
                nc,
                Some("kubernetes load balancer firewall"),
                KUBE_PROXY_FIREWALL,
            );
            hook(
                input,
                "INPUT",
                "",
                Some("kubernetes health check service ports"),
                KUBE_NODEPORTS,
            );
            hook(
                input,
                "INPUT",
                nc,
                Some("kubernetes externally-visible service portals"),
                KUBE_EXTERNAL_SERVICES,
            );
            let forward = &mut filter.builtins[1].rules;
            hook(
                forward,
                "FORWARD",
                nc,
                Some("kubernetes load balancer firewall"),
                KUBE_PROXY_FIREWALL,
            );
            hook(
                forward,
                "FORWARD",
                "",
                Some("kubernetes forwarding rules"),
                KUBE_FORWARD,
            );
            hook(
                forward,
                "FORWARD",
                nc,
                Some("kubernetes service portals"),
                KUBE_SERVICES,
            );
            hook(
                forward,
                "FORWARD",
                nc,
                Some("kubernetes externally-visible service portals"),
                KUBE_EXTERNAL_SERVICES,
            );
            let output = &mut filter.builtins[2].rules;
            if v4_firewall {
                hook(output, "OUTPUT", "", None, KUBE_FIREWALL);
            }
            hook(
                output,
                "OUTPUT",
                nc,
                Some("kubernetes load balancer firewall"),
                KUBE_PROXY_FIREWALL,
            );
            hook(
                output,
                "OUTPUT",
                nc,
                Some("kubernetes service portals"),
                KUBE_SERVICES,
            );
        }
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
        filter.add_chain(ChainName::new(KUBE_FORWARD), &forward);
        filter.add_chain(ChainName::new(KUBE_SERVICES), &self.filter_services);
        filter.add_chain(
            ChainName::new(KUBE_EXTERNAL_SERVICES),
            &self.filter_external,
        );
        filter.add_chain(ChainName::new(KUBE_NODEPORTS), &self.filter_nodeports);
        filter.add_chain(ChainName::new(KUBE_PROXY_FIREWALL), &self.filter_firewall);
        if v4_firewall {
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
            filter.add_chain(ChainName::new(KUBE_FIREWALL), &fw);
        }
        filter.add_chain(ChainName::new(KUBE_PROXY_CANARY), "");
        filter.seal();

        // nat
        let mut nat = std::mem::replace(&mut self.nat, Table::new("nat", &[]));
        hook(
            &mut nat.builtins[0].rules,
            "PREROUTING",
            "",
            Some("kubernetes service portals"),
            KUBE_SERVICES,
        );
        hook(
            &mut nat.builtins[2].rules,
            "OUTPUT",
            "",
            Some("kubernetes service portals"),
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
        if cfg.random_fully {
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

        Ruleset {
            family: cfg.family,
            tables: vec![filter, nat],
        }
    }
}

/// Writes `[!] -s`/`-i` for `cfg`'s local-traffic detector; false when there is none.
pub(crate) fn detector_match(cfg: &RenderConfig, out: &mut String, negated: bool) -> bool {
    match &cfg.local_detector {
        LocalDetector::None => false,
        LocalDetector::Cidrs(cidrs) => {
            // Upstream's detector takes one CIDR per family; extra ones are ignored.
            match cidrs.iter().find(|c| cfg.family.contains_net(c)) {
                Some(c) => {
                    rule::src_net(out, negated, c);
                    true
                }
                None => false,
            }
        }
        LocalDetector::BridgeInterface(br) => {
            rule::in_iface(out, negated, br);
            true
        }
        LocalDetector::InterfaceNamePrefix(prefix) => {
            neg_iface_prefix(out, negated, prefix);
            true
        }
    }
}

/// ` [!] -i PREFIX+`: an interface-name prefix match.
fn neg_iface_prefix(out: &mut String, negated: bool, prefix: &str) {
    rule::in_iface(out, negated, prefix);
    out.push('+');
}

/// The options `iptables-save` adds to every `-m recent` rule (its defaults, printed back).
fn recent_suffix(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => " --mask 255.255.255.255 --rsource",
        IpFamily::V6 => " --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource",
    }
}

/// `-d IP -p PROTO -m comment … -m PROTO --dport PORT` after `-A CHAIN`: the service-capture match.
fn capture(out: &mut String, chain: &str, ip: &IpAddr, sp: &ServicePort, comment: &[&str]) {
    rule::start(out, chain);
    rule::dst_ip(out, false, ip);
    rule::proto(out, sp.protocol);
    rule::comment_parts(out, comment);
    rule::dport(out, sp.protocol, sp.port);
}

#[cfg(test)]
mod tests;
