//! Whether one rule's conditions hold for the packet as it is at that point of the walk.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::save::{Match, ModuleOption, Rule};
use super::sets::SetKey;
use super::{NodeContext, Origin};

/// The packet as the walk has made it so far.
#[derive(Debug, Clone)]
pub(super) struct PacketState {
    pub proto: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub origin: Origin,
    pub in_interface: Option<String>,
    /// The packet was generated here and has not looped back in (no input interface).
    pub outgoing: bool,
    pub mark: u32,
    pub dnat: bool,
    pub snat: bool,
    /// The IPVS virtual server (protocol, address) that took it, once one has.
    pub ipvs: Option<(&'static str, SocketAddr)>,
}

/// The verdict of a rule's conditions.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RuleEval {
    NoMatch,
    Match,
    /// Matches with this probability.
    Random(f64),
    /// Matches for a client on this recent list.
    Recent {
        list: String,
        seconds: Option<u32>,
    },
    /// A condition the tracer cannot decide: assumed not to match.
    NotModelled(String),
}

enum One {
    Yes,
    No,
    Random(f64),
    Recent(String, Option<u32>),
    Unknown(String),
}

fn flag(b: bool) -> One {
    if b { One::Yes } else { One::No }
}

fn negate(o: One, negated: bool) -> One {
    match (o, negated) {
        (One::Yes, true) => One::No,
        (One::No, true) => One::Yes,
        (o, _) => o,
    }
}

fn net_contains(spec: &str, ip: IpAddr) -> Option<bool> {
    if let Ok(n) = spec.parse::<IpNet>() {
        return Some(n.contains(&ip));
    }
    spec.parse::<IpAddr>().ok().map(|a| a == ip)
}

fn proto_number(p: &str) -> Option<&'static str> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Some("tcp"),
        "udp" | "17" => Some("udp"),
        "sctp" | "132" => Some("sctp"),
        "all" | "0" => Some("all"),
        _ => None,
    }
}

fn port_in(spec: &str, port: u16) -> Option<bool> {
    match spec.split_once(':') {
        Some((lo, hi)) => {
            let lo = if lo.is_empty() { 0 } else { lo.parse().ok()? };
            let hi = if hi.is_empty() {
                65535
            } else {
                hi.parse().ok()?
            };
            Some((lo..=hi).contains(&port))
        }
        None => spec.parse::<u16>().ok().map(|p| p == port),
    }
}

fn interface_matches(name: &str, actual: &str) -> bool {
    match name.strip_suffix('+') {
        Some(prefix) => actual.starts_with(prefix),
        None => actual == name,
    }
}

/// Decides `rule`'s conditions for `pkt`.
pub(super) fn evaluate(rule: &Rule, pkt: &PacketState, node: &NodeContext) -> RuleEval {
    let mut branch: Option<RuleEval> = None;
    let mut unknown: Option<String> = None;
    for m in &rule.matches {
        let one = evaluate_one(m, pkt, node);
        match one {
            One::Yes => {}
            One::No => return RuleEval::NoMatch,
            One::Random(p) => {
                branch.get_or_insert(RuleEval::Random(p));
            }
            One::Recent(list, seconds) => {
                branch.get_or_insert(RuleEval::Recent { list, seconds });
            }
            One::Unknown(what) => {
                unknown.get_or_insert(what);
            }
        }
    }
    if let Some(what) = unknown {
        return RuleEval::NotModelled(what);
    }
    branch.unwrap_or(RuleEval::Match)
}

fn evaluate_one(m: &Match, pkt: &PacketState, node: &NodeContext) -> One {
    match m {
        Match::Source { negated, net } => match net_contains(net, pkt.src.ip()) {
            Some(b) => negate(flag(b), *negated),
            None => One::Unknown(format!("-s {net}")),
        },
        Match::Destination { negated, net } => match net_contains(net, pkt.dst.ip()) {
            Some(b) => negate(flag(b), *negated),
            None => One::Unknown(format!("-d {net}")),
        },
        Match::Protocol { negated, proto } => match proto_number(proto) {
            Some("all") => negate(One::Yes, *negated),
            Some(p) => negate(flag(p == pkt.proto), *negated),
            None => One::Unknown(format!("-p {proto}")),
        },
        Match::InInterface { negated, name } => {
            let hit = if pkt.outgoing {
                false
            } else {
                match &pkt.in_interface {
                    Some(actual) => interface_matches(name, actual),
                    // Unknown: a pod's packet comes in on the local pods' interface, an
                    // external one does not.
                    None => pkt.origin == Origin::Pod,
                }
            };
            negate(flag(hit), *negated)
        }
        Match::OutInterface { negated, name } => {
            One::Unknown(format!("{}-o {name}", if *negated { "! " } else { "" }))
        }
        Match::Module { name, options } => module(name, options, pkt, node),
    }
}

fn module(name: &str, options: &[ModuleOption], pkt: &PacketState, node: &NodeContext) -> One {
    let mut result = One::Yes;
    let mut and = |o: One| {
        // The first No wins; otherwise keep the first branch or unknown.
        match (&result, o) {
            (One::No, _) => {}
            (_, One::No) => result = One::No,
            (One::Yes, o) => result = o,
            _ => {}
        }
    };
    match name {
        "comment" => {}
        "tcp" | "udp" | "sctp" => {
            if pkt.proto != name {
                return One::No;
            }
            for o in options {
                let hit = match o.name.as_str() {
                    "dport" | "destination-port" => port_in(o.value(), pkt.dst.port()),
                    "sport" | "source-port" => port_in(o.value(), pkt.src.port()),
                    // The first packet of a new TCP connection is a SYN.
                    "syn" => Some(true),
                    _ => None,
                };
                and(match hit {
                    Some(b) => negate(flag(b), o.negated),
                    None => One::Unknown(format!("-m {name} --{}", o.name)),
                });
            }
        }
        "multiport" => {
            for o in options {
                let ports: &[u16] = match o.name.as_str() {
                    "dports" | "destination-ports" => &[pkt.dst.port()],
                    "sports" | "source-ports" => &[pkt.src.port()],
                    "ports" => &[pkt.dst.port(), pkt.src.port()],
                    _ => &[],
                };
                if ports.is_empty() {
                    and(One::Unknown(format!("-m multiport --{}", o.name)));
                    continue;
                }
                let specs: Vec<&str> = o.value().split(',').collect();
                let hit = ports
                    .iter()
                    .any(|p| specs.iter().any(|s| port_in(s, *p) == Some(true)));
                and(negate(flag(hit), o.negated));
            }
        }
        "addrtype" => {
            for o in options {
                let ip = match o.name.as_str() {
                    "dst-type" => pkt.dst.ip(),
                    "src-type" => pkt.src.ip(),
                    _ => {
                        and(One::Unknown(format!("-m addrtype --{}", o.name)));
                        continue;
                    }
                };
                let mut hit = Some(false);
                for ty in o.value().split(',') {
                    let this = match ty {
                        "LOCAL" => Some(node.is_local(ip)),
                        "UNICAST" => Some(!ip.is_multicast() && !is_broadcast(ip)),
                        "MULTICAST" => Some(ip.is_multicast()),
                        "BROADCAST" => Some(is_broadcast(ip)),
                        _ => None,
                    };
                    hit = match (hit, this) {
                        (Some(a), Some(b)) => Some(a || b),
                        _ => None,
                    };
                }
                and(match hit {
                    Some(b) => negate(flag(b), o.negated),
                    None => One::Unknown(format!("-m addrtype --{} {}", o.name, o.value())),
                });
            }
        }
        "mark" => {
            for o in options {
                if o.name != "mark" {
                    and(One::Unknown(format!("-m mark --{}", o.name)));
                    continue;
                }
                match parse_mark(o.value()) {
                    Some((value, mask)) => and(negate(flag(pkt.mark & mask == value), o.negated)),
                    None => and(One::Unknown(format!("-m mark --mark {}", o.value()))),
                }
            }
        }
        "conntrack" | "state" => {
            for o in options {
                if o.name != "ctstate" && o.name != "state" {
                    and(One::Unknown(format!("-m {name} --{}", o.name)));
                    continue;
                }
                // The traced packet opens a new connection.
                let hit = o.value().split(',').any(|s| match s {
                    "NEW" => true,
                    "DNAT" => pkt.dnat,
                    "SNAT" => pkt.snat,
                    _ => false,
                });
                and(negate(flag(hit), o.negated));
            }
        }
        "statistic" => {
            let mode = options.iter().find(|o| o.name == "mode").map(|o| o.value());
            let p = options
                .iter()
                .find(|o| o.name == "probability")
                .and_then(|o| o.value().parse::<f64>().ok().map(|p| (p, o.negated)));
            match (mode, p) {
                (Some("random"), Some((p, negated))) => {
                    and(One::Random(if negated { 1.0 - p } else { p }))
                }
                _ => and(One::Unknown("-m statistic (not --mode random)".into())),
            }
        }
        "recent" => {
            let list = options
                .iter()
                .find(|o| o.name == "name")
                .map_or("DEFAULT".to_string(), |o| o.value().to_string());
            let seconds = options
                .iter()
                .find(|o| o.name == "seconds")
                .and_then(|o| o.value().parse().ok());
            if options
                .iter()
                .any(|o| matches!(o.name.as_str(), "rcheck" | "update"))
            {
                and(One::Recent(list, seconds));
            }
            // `--set` (and `--remove`) always match: they record the client.
        }
        "set" => {
            for o in options {
                if o.name != "match-set" {
                    // Counter and flag options of the set match do not change a first packet.
                    continue;
                }
                let (Some(set), Some(dirs)) = (o.values.first(), o.values.get(1)) else {
                    and(One::Unknown("-m set --match-set without a set".into()));
                    continue;
                };
                let key = SetKey {
                    src: pkt.src.ip(),
                    src_port: pkt.src.port(),
                    dst: pkt.dst.ip(),
                    dst_port: pkt.dst.port(),
                    proto: pkt.proto,
                };
                match node.sets.as_ref().and_then(|s| s.contains(set, dirs, &key)) {
                    Some(b) => and(negate(flag(b), o.negated)),
                    None => and(One::Unknown(format!(
                        "-m set --match-set {set} (no contents for it: give --ipsets)"
                    ))),
                }
            }
        }
        "ipvs" => {
            for o in options {
                let hit = match (o.name.as_str(), pkt.ipvs) {
                    ("ipvs", v) => Some(v.is_some()),
                    (_, None) => Some(false),
                    ("vproto", Some((p, _))) => proto_number(o.value()).map(|q| q == p),
                    ("vaddr", Some((_, a))) => net_contains(o.value(), a.ip()),
                    ("vport", Some((_, a))) => o.value().parse::<u16>().ok().map(|p| p == a.port()),
                    // IPVS connections are seen in the original direction here.
                    ("vdir", Some(_)) => Some(o.value() == "ORIGINAL"),
                    ("vmethod", Some(_)) => Some(o.value() == "MASQ"),
                    _ => None,
                };
                and(match hit {
                    Some(b) => negate(flag(b), o.negated),
                    None => One::Unknown(format!("-m ipvs --{}", o.name)),
                });
            }
        }
        other => and(One::Unknown(format!("-m {other}"))),
    }
    result
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// `0x4000/0x4000` → (value, mask); a bare value has an all-ones mask.
pub(super) fn parse_mark(spec: &str) -> Option<(u32, u32)> {
    let num = |s: &str| -> Option<u32> {
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    };
    match spec.split_once('/') {
        Some((v, m)) => Some((num(v)?, num(m)?)),
        None => Some((num(spec)?, u32::MAX)),
    }
}
