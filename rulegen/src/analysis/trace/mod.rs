//! Where a packet goes: a walk through `iptables-save` text (and, in IPVS mode, `ipset save`
//! and `ipvsadm -Sn` text) the way the kernel's hooks would take a new connection, with every
//! random branch followed.
//!
//! It reads the rules themselves, not the model they were rendered from, so a rendering bug
//! shows up in a trace, and a ruleset saved on any node (kube-proxy's included) can be traced.
//! The walk covers the matches and targets kube-proxy's modes write (addresses, protocols,
//! ports, interfaces, `addrtype`, `mark`, `conntrack`, `statistic`, `recent`, `set`, `ipvs`,
//! `comment`; `MARK`, `DNAT`, `SNAT`, `MASQUERADE`, `REJECT`, `DROP`, `ACCEPT`, `RETURN`, jumps
//! and gotos); anything else is reported as not modelled and assumed not to match.

pub mod save;
pub mod sets;
pub mod virtual_servers;

mod matches;
mod walk;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

pub use save::{SaveParseError, SavedRuleset};
pub use sets::SavedSets;
pub use virtual_servers::SavedVirtualServers;

/// Where a traced packet comes from; it decides the hooks it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A pod on this node: arrives on a pod interface (PREROUTING, then INPUT or FORWARD).
    Pod,
    /// The node itself (OUTPUT, POSTROUTING).
    Node,
    /// Outside the node: arrives on an uplink (PREROUTING, then INPUT or FORWARD).
    External,
}

impl Origin {
    /// `pod`, `node` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Pod => "pod",
            Origin::Node => "node",
            Origin::External => "external",
        }
    }
}

/// The first packet of a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// `tcp`, `udp` or `sctp`.
    pub proto: &'static str,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Where it comes from.
    pub origin: Origin,
    /// The interface it arrives on, if known. Unknown: `-i` rules match a pod's packet (it is
    /// taken to arrive on the local pods' interface) and not an external one.
    pub in_interface: Option<String>,
}

/// What the tracer knows about the node besides its rules.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// Addresses that are local to the node (`addrtype LOCAL`, and routing to INPUT): its
    /// interfaces' addresses; loopback is always local.
    pub local_addresses: Vec<IpNet>,
    /// IPVS mode: the ipsets the rules match against.
    pub sets: Option<SavedSets>,
    /// IPVS mode: the virtual servers (their addresses are bound on `kube-ipvs0`, so local).
    pub virtual_servers: Option<SavedVirtualServers>,
}

impl NodeContext {
    /// Whether `ip` is one of the node's addresses (loopback included).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self.local_addresses.iter().any(|n| n.contains(&ip))
            || self
                .virtual_servers
                .as_ref()
                .is_some_and(|v| v.servers.iter().any(|s| s.address.ip() == ip))
    }
}

/// The walk of one packet: its steps, branching where the rules pick at random.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The packet traced.
    pub packet: Packet,
    /// The walk.
    pub root: TraceNode,
    /// Matches and targets met that the tracer does not model (each once).
    pub not_modelled: Vec<String>,
}

/// A run of steps, ending in an outcome or in branches.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceNode {
    /// What happened, in order.
    pub steps: Vec<Step>,
    /// How it ends.
    pub end: End,
}

/// How a [`TraceNode`] ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The packet's fate.
    Outcome(Outcome),
    /// A choice: each way on. Consecutive choices of one kind (a Service's endpoints'
    /// `--probability` rules, or their `--rcheck` rules) are one choice: a way per rule, then
    /// the way past them all.
    Branches(Vec<Branch>),
}

/// One way on from a branching rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// Why packets go this way.
    pub condition: Condition,
    /// Share of all new connections of this packet's kind that take it; `None` for a path only
    /// returning clients take (affinity).
    pub share: Option<f64>,
    /// The walk from here.
    pub node: TraceNode,
}

/// The condition of a [`Branch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `-m statistic --mode random --probability P` matched (`taken`) or not.
    Random {
        /// The rule's probability.
        probability: f64,
        /// Whether this branch is the one where the rule matched.
        taken: bool,
    },
    /// `-m recent --rcheck`: a client sent to `list` within `seconds` (affinity) or not.
    Recent {
        /// The recent list (the endpoint chain's name).
        list: String,
        /// The affinity window.
        seconds: Option<u32>,
        /// Whether this branch is the returning client's.
        returning: bool,
    },
    /// IPVS picks this real server (`weight` of `total_weight`).
    Scheduler {
        /// The scheduler.
        scheduler: String,
        /// The real server.
        real_server: SocketAddr,
        /// Its weight.
        weight: u32,
        /// The sum of the live real servers' weights.
        total_weight: u32,
    },
}

/// One thing that happened to the packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The packet enters a built-in chain of a table (`nat PREROUTING`).
    Hook {
        /// The table.
        table: String,
        /// The built-in chain.
        chain: String,
    },
    /// A rule matched.
    Rule {
        /// The table.
        table: String,
        /// The chain holding it.
        chain: String,
        /// 1-based position in the chain.
        number: usize,
        /// Its `-A …` text.
        text: String,
        /// How many jumps deep (0: the built-in chain).
        depth: usize,
    },
    /// The walk reached the end of a user chain (or a RETURN) and goes back to the caller.
    Return {
        /// The chain left.
        chain: String,
        /// Depth of the chain left.
        depth: usize,
    },
    /// Something that is not a rule: a routing decision, a DNAT applied, IPVS.
    Note {
        /// Depth to print it at.
        depth: usize,
        /// What happened.
        text: String,
    },
}

/// Where a path ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What happens to the packet.
    pub verdict: Verdict,
    /// The chains that led there (`KUBE-SERVICES > KUBE-SVC-… > KUBE-SEP-…`), nat and
    /// filter jumps in the order taken.
    pub via: Vec<String>,
}

/// The packet's fate.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It is delivered, to a socket on the node (`local`) or forwarded.
    Delivered {
        /// Its destination after DNAT or IPVS.
        destination: SocketAddr,
        /// Whether the destination was rewritten (DNAT or IPVS).
        translated: bool,
        /// Whether IPVS did it.
        ipvs: bool,
        /// The node is the destination.
        local: bool,
        /// The source is rewritten (MASQUERADE or SNAT) on the way out.
        masquerade: bool,
    },
    /// A REJECT (the sender is told at once), or IPVS finding no real server.
    Rejected {
        /// The table (`ipvs` for IPVS).
        table: String,
        /// The chain.
        chain: String,
        /// The rule, or what IPVS did.
        rule: String,
    },
    /// A DROP (the sender hears nothing), or a DROP policy.
    Dropped {
        /// The table.
        table: String,
        /// The chain.
        chain: String,
        /// The rule, or `policy DROP`.
        rule: String,
    },
}

/// One leaf of a trace, flattened: its share and fate.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf<'a> {
    /// The share of new connections that end here; `None` for returning-client paths.
    pub share: Option<f64>,
    /// The outcome.
    pub outcome: &'a Outcome,
}

impl Trace {
    /// Every leaf of the walk, depth first.
    pub fn leaves(&self) -> Vec<Leaf<'_>> {
        // An explicit stack: the tree may be as deep as the rules nest choices.
        let mut out = Vec::new();
        let mut stack = vec![(&self.root, Some(1.0))];
        while let Some((node, share)) = stack.pop() {
            match &node.end {
                End::Outcome(o) => out.push(Leaf { share, outcome: o }),
                End::Branches(bs) => stack.extend(
                    bs.iter()
                        .rev()
                        .map(|b| (&b.node, b.share.filter(|_| share.is_some()))),
                ),
            }
        }
        out
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Delivered {
                destination,
                local,
                masquerade,
                ..
            } => {
                write!(f, "{destination}")?;
                if *local {
                    f.write_str(" (this node)")?;
                }
                f.write_str(if *masquerade {
                    ", source masqueraded"
                } else {
                    ", source kept"
                })
            }
            Verdict::Rejected { table, chain, .. } => write!(f, "REJECT in {table} {chain}"),
            Verdict::Dropped { table, chain, .. } => write!(f, "DROP in {table} {chain}"),
        }
    }
}

/// Walks `packet` through `rules` on the node `node` describes.
pub fn trace(rules: &SavedRuleset, packet: &Packet, node: &NodeContext) -> Trace {
    walk::Walker::new(rules, node).run(packet)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_flows;
