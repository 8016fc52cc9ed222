//! Renders the iptables-mode ruleset (`filter` and `nat`) for one address family, rule for rule
//! what upstream kube-proxy's `syncProxyRules` writes, in `iptables-save`'s canonical spelling.

pub mod chains;
pub mod hash;
pub mod probability;
pub mod rule;

mod fixed;
mod port;

use std::net::IpAddr;
use std::ops::Range;

use crate::config::{LocalDetector, RenderConfig};
use crate::model::{Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName};
use crate::plan::{Categorized, NodePlan, PortPlan};
use crate::render::iptables::probability::ProbabilityCache;
use crate::render::ruleset::{Ruleset, Table};
use crate::sync::retain::Retain;
use chains::{ChainName, KUBE_PROXY_CANARY, ServiceChains};
use port::Port;

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
    let [mut mangle, filter, nat] = reuse_tables(out, retain);
    mangle.add_chain(ChainName::new(KUBE_PROXY_CANARY), "");
    mangle.seal();
    let mut r = Renderer::new(cfg, filter, nat);

    let ports = ports_of_family(model, cfg);
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

/// `out`'s mangle, filter and nat tables emptied for reuse (new ones where it has none), each
/// keeping only what `retain` keeps.
fn reuse_tables(out: &mut Ruleset, retain: &Retain) -> [Table; 3] {
    let mut take = |name: &'static str, builtins: &[&'static str]| {
        let mut t = match out.tables.iter().position(|t| t.name == name) {
            Some(i) => {
                let mut t = out.tables.swap_remove(i);
                t.clear();
                t
            }
            None => Table::new(name, builtins),
        };
        t.set_retain(retain.clone());
        t
    };
    [
        take(
            "mangle",
            &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        ),
        take("filter", &["INPUT", "FORWARD", "OUTPUT"]),
        take("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    ]
}

/// The service ports this family's proxier has, with their cluster IP, in upstream's order.
fn ports_of_family<'m>(model: &'m Model, cfg: &RenderConfig) -> Vec<(&'m ServicePort, IpAddr)> {
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

    ports
}

/// The mark kube-proxy sets on packets to masquerade, as `iptables-save` prints it.
pub(crate) fn mark_text(bit: u8) -> String {
    format!("{:#x}", 1u32 << bit)
}

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
    node: NodePlan,
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
        Renderer {
            cfg,
            mark: mark_text(cfg.masquerade_bit),
            scratch: Scratch::default(),
            large_cluster: false,
            node: NodePlan::new(cfg),
            probabilities: ProbabilityCache::default(),
            filter_services: String::new(),
            filter_external: String::new(),
            filter_nodeports: String::new(),
            filter_firewall: String::new(),
            nat_services: String::new(),
            nat_nodeports: String::new(),
            filter,
            nat,
        }
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
        let cat = std::mem::take(&mut sc.cat);
        let plan = PortPlan::with_sets(sp, cluster_ip, self.cfg, &self.node, &sc.eps, cat);
        let hasher = hash::EndpointHasher::new(&sp.name, proto);
        for &i in &plan.endpoints.all_reachable {
            let info = &mut sc.infos[i];
            info.sep = chains::endpoint_chain_with(&hasher, &sc.addrs[info.addr.clone()]);
        }
        let port = Port {
            plan: &plan,
            name: &name,
            chains: ServiceChains::new(&sp.name, proto),
            sc: &sc,
        };
        self.port_rules(&port);
        sc.cat = plan.endpoints;
        self.scratch = sc;
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
