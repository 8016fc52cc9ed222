//! The walk: hooks in the kernel's order, tables in each hook's priority order, chains rule by
//! rule, forking the walk at every random (or affinity) choice.
//!
//! A Service with N endpoints is N chained choices (`--probability 1/N`, then `1/(N-1)` on the
//! way on, …), so nothing here recurses per choice: the ways still to walk wait on a work
//! stack, the nodes they fill sit in an arena until the end, and a run of choices of one kind
//! (each the previous one's way on, with nothing in between) is one N-way choice. The stack
//! use, and the depth of the [`TraceNode`] tree, is then the same for 2 endpoints or 50,000.
//!
//! The order is netfilter's for a connection's first packet: arriving packets cross PREROUTING
//! (raw, mangle, nat), are routed by their possibly translated destination to INPUT (mangle,
//! filter, nat; then IPVS) or FORWARD (mangle, filter), and leave through POSTROUTING (mangle,
//! nat). The node's own packets cross OUTPUT (raw, mangle, nat, IPVS, filter) and POSTROUTING,
//! and come back through INPUT (mangle, filter) when they are for the node itself. IPVS's NAT
//! sends a scheduled packet through OUTPUT's filter and POSTROUTING, as `ip_vs_nat_xmit` does.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::matches::{PacketState, RuleEval, evaluate, parse_mark};
use super::save::{Rule, SavedRuleset};
use super::{
    Branch, Condition, End, NodeContext, Origin, Outcome, Packet, Step, Trace, TraceNode, Verdict,
};

/// How deep jumps may nest before the walk calls it a loop (the kernel allows about this many).
const MAX_DEPTH: usize = 64;
/// How many rules one path may match before the walk gives up.
const MAX_STEPS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pre,
    In,
    InLoopback,
    Forward,
    OutEarly,
    OutLate,
    IpvsOut,
    Post,
}

impl Stage {
    /// The (table, built-in chain) pairs the stage crosses, in priority order.
    fn tables(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Stage::Pre => &[
                ("raw", "PREROUTING"),
                ("mangle", "PREROUTING"),
                ("nat", "PREROUTING"),
            ],
            Stage::In => &[("mangle", "INPUT"), ("filter", "INPUT"), ("nat", "INPUT")],
            Stage::InLoopback => &[("mangle", "INPUT"), ("filter", "INPUT")],
            Stage::Forward => &[("mangle", "FORWARD"), ("filter", "FORWARD")],
            Stage::OutEarly => &[("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT")],
            Stage::OutLate => &[("filter", "OUTPUT")],
            Stage::IpvsOut => &[("mangle", "OUTPUT"), ("filter", "OUTPUT")],
            Stage::Post => &[("mangle", "POSTROUTING"), ("nat", "POSTROUTING")],
        }
    }
}

#[derive(Debug, Clone)]
struct Frame {
    chain: String,
    next_rule: usize,
}

#[derive(Debug, Clone)]
struct Cursor {
    stage: Stage,
    table_idx: usize,
    table: &'static str,
    frames: Vec<Frame>,
    /// Chains the decisive jumps went through (`nat KUBE-SERVICES`, …).
    via: Vec<String>,
    matched: usize,
}

/// A rule that matched on a branch and is still to be applied there.
struct Pending<'r> {
    rule: &'r Rule,
    number: usize,
}

/// Where [`Walker::advance`] stopped a path.
enum Stop<'r> {
    /// The packet's fate.
    Outcome(Outcome),
    /// A rule that matches only some packets.
    Fork(Fork<'r>),
    /// IPVS takes the packet; the walk goes on at this stage.
    Ipvs(Stage),
}

/// A two-way choice: the rule matched (`taken`, the rule still to be applied), or not (`rest`).
struct Fork<'r> {
    pending: Pending<'r>,
    taken: Condition,
    rest: Condition,
    shares: (Option<f64>, Option<f64>),
}

/// What IPVS did with a packet.
enum Scheduled {
    /// No live real server.
    Rejected(Outcome),
    /// One real server: the packet, now for it.
    One(PacketState),
    /// One way per real server: its condition, share and packet.
    Many(Vec<(Condition, Option<f64>, PacketState)>),
}

/// A path still to walk (on the work stack), and the arena slot its node fills.
struct Task<'r> {
    slot: usize,
    cur: Cursor,
    pkt: PacketState,
    share: Option<f64>,
    start: Start<'r>,
}

/// Where a [`Task`] starts.
enum Start<'r> {
    /// With these steps, applying `pending` first (the way where a choice's rule matched).
    Fresh {
        pending: Option<Pending<'r>>,
        steps: Vec<Step>,
    },
    /// Already walked to `stop` (a way on past a choice that did not continue the choice).
    Stopped { steps: Vec<Step>, stop: Stop<'r> },
}

/// A node of the tree while it is built: its ways name other slots, not nodes.
#[derive(Default)]
struct Slot {
    steps: Vec<Step>,
    end: SlotEnd,
}

/// How a [`Slot`] ends.
#[derive(Default)]
enum SlotEnd {
    /// Its task has not been walked yet.
    #[default]
    Unwalked,
    Outcome(Outcome),
    /// (condition, share, slot) of each way.
    Branches(Vec<(Condition, Option<f64>, usize)>),
}

/// Walks packets through one ruleset.
pub(super) struct Walker<'a> {
    rules: &'a SavedRuleset,
    node: &'a NodeContext,
    not_modelled: RefCell<BTreeSet<String>>,
}

enum Applied {
    Continue,
    End(Outcome),
}

enum Transition {
    Next(Stage),
    Deliver,
    Ipvs(Stage),
}

impl<'a> Walker<'a> {
    pub(super) fn new(rules: &'a SavedRuleset, node: &'a NodeContext) -> Self {
        Walker {
            rules,
            node,
            not_modelled: RefCell::new(BTreeSet::new()),
        }
    }

    pub(super) fn run(&self, packet: &Packet) -> Trace {
        let pkt = PacketState {
            proto: packet.proto,
            src: packet.src,
            dst: packet.dst,
            origin: packet.origin,
            in_interface: packet.in_interface.clone(),
            outgoing: packet.origin == Origin::Node,
            mark: 0,
            dnat: false,
            snat: false,
            ipvs: None,
        };
        let stage = if packet.origin == Origin::Node {
            Stage::OutEarly
        } else {
            Stage::Pre
        };
        let cursor = Cursor {
            stage,
            table_idx: 0,
            table: "",
            frames: Vec::new(),
            via: Vec::new(),
            matched: 0,
        };
        let mut arena = vec![Slot::default()];
        let mut work = vec![Task {
            slot: 0,
            cur: cursor,
            pkt,
            share: Some(1.0),
            start: Start::Fresh {
                pending: None,
                steps: Vec::new(),
            },
        }];
        while let Some(task) = work.pop() {
            let slot = task.slot;
            arena[slot] = self.walk_node(task, &mut arena, &mut work);
        }
        Trace {
            packet: packet.clone(),
            root: assemble(arena),
            not_modelled: self.not_modelled.borrow().iter().cloned().collect(),
        }
    }

    /// Walks one node of the tree: its steps up to an outcome or a choice. The ways of a choice
    /// get slots of their own and go on the work stack rather than being walked here.
    fn walk_node(&self, task: Task<'a>, arena: &mut Vec<Slot>, work: &mut Vec<Task<'a>>) -> Slot {
        let Task {
            mut cur,
            mut pkt,
            share,
            start,
            ..
        } = task;
        let (mut steps, mut stop) = match start {
            Start::Fresh { pending, mut steps } => {
                let stop = self.advance(&mut cur, &mut pkt, share, pending, &mut steps);
                (steps, stop)
            }
            Start::Stopped { steps, stop } => (steps, stop),
        };
        loop {
            let fork = match stop {
                Stop::Outcome(o) => {
                    return Slot {
                        steps,
                        end: SlotEnd::Outcome(o),
                    };
                }
                Stop::Ipvs(next) => match self.ipvs(&mut cur, &pkt, share, next, &mut steps) {
                    Scheduled::Rejected(o) => {
                        return Slot {
                            steps,
                            end: SlotEnd::Outcome(o),
                        };
                    }
                    Scheduled::One(p) => {
                        // One real server: no choice, the same path goes on.
                        pkt = p;
                        stop = self.advance(&mut cur, &mut pkt, share, None, &mut steps);
                        continue;
                    }
                    Scheduled::Many(ways) => {
                        let mut branches = Vec::with_capacity(ways.len());
                        for (condition, s, p) in ways {
                            let slot = new_slot(arena);
                            let note = ipvs_destination(p.dst);
                            work.push(Task {
                                slot,
                                cur: cur.clone(),
                                pkt: p,
                                share: s,
                                start: Start::Fresh {
                                    pending: None,
                                    steps: vec![note],
                                },
                            });
                            branches.push((condition, s, slot));
                        }
                        return Slot {
                            steps,
                            end: SlotEnd::Branches(branches),
                        };
                    }
                },
                Stop::Fork(fork) => fork,
            };
            let mut branches = Vec::new();
            let mut fork = fork;
            loop {
                let Fork {
                    pending,
                    taken,
                    rest,
                    shares: (taken_share, rest_share),
                } = fork;
                let slot = new_slot(arena);
                work.push(Task {
                    slot,
                    cur: cur.clone(),
                    pkt: pkt.clone(),
                    share: taken_share,
                    start: Start::Fresh {
                        pending: Some(pending),
                        steps: Vec::new(),
                    },
                });
                branches.push((taken, taken_share, slot));
                // The way on past the rule: when it meets another choice of the same kind
                // before anything else happens, that choice's ways join this list.
                let mut rest_steps = Vec::new();
                let next = self.advance(&mut cur, &mut pkt, rest_share, None, &mut rest_steps);
                match next {
                    Stop::Fork(f) if rest_steps.is_empty() && same_choice(&f.taken, &rest) => {
                        fork = f;
                    }
                    next => {
                        let slot = new_slot(arena);
                        work.push(Task {
                            slot,
                            cur,
                            pkt,
                            share: rest_share,
                            start: Start::Stopped {
                                steps: rest_steps,
                                stop: next,
                            },
                        });
                        branches.push((rest, rest_share, slot));
                        return Slot {
                            steps,
                            end: SlotEnd::Branches(branches),
                        };
                    }
                }
            }
        }
    }

    /// Walks one path rule by rule, appending to `steps`, until an outcome, a choice or IPVS.
    /// `pending` is a rule matched at a choice, applied first (the way where it matched).
    fn advance(
        &self,
        cur: &mut Cursor,
        pkt: &mut PacketState,
        share: Option<f64>,
        pending: Option<Pending<'a>>,
        steps: &mut Vec<Step>,
    ) -> Stop<'a> {
        if let Some(p) = pending
            && let Applied::End(o) = self.matched(cur, pkt, p.rule, p.number, steps)
        {
            return Stop::Outcome(o);
        }
        loop {
            if cur.frames.is_empty() {
                if let Some(&(table, chain)) = cur.stage.tables().get(cur.table_idx) {
                    cur.table_idx += 1;
                    // An empty built-in chain that accepts does nothing worth a line.
                    let acts = self.rules.chain(table, chain).is_some_and(|c| {
                        !c.rules.is_empty() || c.policy.as_deref() == Some("DROP")
                    });
                    if acts {
                        cur.table = table;
                        steps.push(Step::Hook {
                            table: table.to_string(),
                            chain: chain.to_string(),
                        });
                        cur.frames.push(Frame {
                            chain: chain.to_string(),
                            next_rule: 0,
                        });
                    }
                    continue;
                }
                match self.transition(cur.stage, pkt, steps) {
                    Transition::Next(stage) => {
                        cur.stage = stage;
                        cur.table_idx = 0;
                    }
                    Transition::Deliver => {
                        let local = self.node.is_local(pkt.dst.ip());
                        return Stop::Outcome(Outcome {
                            verdict: Verdict::Delivered {
                                destination: pkt.dst,
                                translated: pkt.dnat || pkt.ipvs.is_some(),
                                ipvs: pkt.ipvs.is_some(),
                                local,
                                masquerade: pkt.snat,
                            },
                            via: cur.via.clone(),
                        });
                    }
                    Transition::Ipvs(next) => return Stop::Ipvs(next),
                }
                continue;
            }
            let table = cur.table;
            let depth = cur.frames.len() - 1;
            let frame = cur.frames.last_mut().expect("checked above");
            let chain_name = frame.chain.clone();
            let Some(chain) = self.rules.chain(table, &chain_name) else {
                cur.frames.pop();
                continue;
            };
            if frame.next_rule >= chain.rules.len() {
                if depth == 0 {
                    if chain.policy.as_deref() == Some("DROP") {
                        return Stop::Outcome(self.end(
                            cur,
                            Verdict::Dropped {
                                table: table.to_string(),
                                chain: chain_name,
                                rule: "policy DROP".into(),
                            },
                        ));
                    }
                    cur.frames.clear();
                } else {
                    steps.push(Step::Return {
                        chain: chain_name,
                        depth,
                    });
                    cur.frames.pop();
                }
                continue;
            }
            let number = frame.next_rule + 1;
            frame.next_rule += 1;
            let rule = &chain.rules[number - 1];
            match evaluate(rule, pkt, self.node) {
                RuleEval::NoMatch => {}
                RuleEval::NotModelled(what) => {
                    steps.push(Step::Note {
                        depth,
                        text: format!(
                            "rule {number} of {table} {chain_name}: {what} is not modelled, assumed not to match"
                        ),
                    });
                    self.not_modelled.borrow_mut().insert(what);
                }
                RuleEval::Match => {
                    if let Applied::End(o) = self.matched(cur, pkt, rule, number, steps) {
                        return Stop::Outcome(o);
                    }
                    if cur.matched > MAX_STEPS || cur.frames.len() > MAX_DEPTH {
                        steps.push(Step::Note {
                            depth,
                            text: "the walk stopped here: too many jumps (a loop in the rules?)"
                                .into(),
                        });
                        return Stop::Outcome(self.end(
                            cur,
                            Verdict::Dropped {
                                table: table.to_string(),
                                chain: chain_name,
                                rule: "walk stopped: loop".into(),
                            },
                        ));
                    }
                }
                RuleEval::Random(p) => {
                    let p = p.clamp(0.0, 1.0);
                    return Stop::Fork(Fork {
                        pending: Pending { rule, number },
                        taken: Condition::Random {
                            probability: p,
                            taken: true,
                        },
                        rest: Condition::Random {
                            probability: p,
                            taken: false,
                        },
                        shares: (share.map(|s| s * p), share.map(|s| s * (1.0 - p))),
                    });
                }
                RuleEval::Recent { list, seconds } => {
                    return Stop::Fork(Fork {
                        pending: Pending { rule, number },
                        taken: Condition::Recent {
                            list: list.clone(),
                            seconds,
                            returning: true,
                        },
                        rest: Condition::Recent {
                            list,
                            seconds,
                            returning: false,
                        },
                        // Only a returning client takes the first way: it has no share of new ones.
                        shares: (None, share),
                    });
                }
            }
        }
    }

    /// The outcome of a path stopped inside a chain: the chains it is in are the way it came.
    fn end(&self, cur: &Cursor, verdict: Verdict) -> Outcome {
        let mut via = cur.via.clone();
        let path: Vec<String> = cur
            .frames
            .iter()
            .map(|f| format!("{} {}", cur.table, f.chain))
            .collect();
        if !path.is_empty() {
            via = path;
        }
        Outcome { verdict, via }
    }

    /// Applies a matched rule's target.
    fn matched(
        &self,
        cur: &mut Cursor,
        pkt: &mut PacketState,
        rule: &Rule,
        number: usize,
        steps: &mut Vec<Step>,
    ) -> Applied {
        cur.matched += 1;
        let table = cur.table;
        let depth = cur.frames.len() - 1;
        let chain = cur.frames[depth].chain.clone();
        steps.push(Step::Rule {
            table: table.to_string(),
            chain: chain.clone(),
            number,
            text: rule.text.clone(),
            depth,
        });
        let Some(target) = &rule.target else {
            return Applied::Continue;
        };
        let note = |steps: &mut Vec<Step>, text: String| steps.push(Step::Note { depth, text });
        let path = |cur: &Cursor| -> Vec<String> {
            cur.frames
                .iter()
                .map(|f| format!("{} {}", table, f.chain))
                .collect()
        };
        match target.name.as_str() {
            "ACCEPT" => {
                note(
                    steps,
                    format!("ACCEPT: the packet leaves the {table} table"),
                );
                cur.frames.clear();
            }
            "DROP" => {
                return Applied::End(Outcome {
                    via: path(cur),
                    verdict: Verdict::Dropped {
                        table: table.to_string(),
                        chain,
                        rule: rule.text.clone(),
                    },
                });
            }
            "REJECT" => {
                return Applied::End(Outcome {
                    via: path(cur),
                    verdict: Verdict::Rejected {
                        table: table.to_string(),
                        chain,
                        rule: rule.text.clone(),
                    },
                });
            }
            "RETURN" => {
                if depth == 0 {
                    cur.frames.clear();
                } else {
                    steps.push(Step::Return { chain, depth });
                    cur.frames.pop();
                }
            }
            "MARK" => {
                let before = pkt.mark;
                for o in &target.options {
                    let Some((v, m)) = parse_mark(o.value()) else {
                        continue;
                    };
                    pkt.mark = match o.name.as_str() {
                        "set-xmark" => (pkt.mark & !m) ^ v,
                        "set-mark" => (pkt.mark & !m) | v,
                        "or-mark" => pkt.mark | v,
                        "and-mark" => pkt.mark & v,
                        "xor-mark" => pkt.mark ^ v,
                        _ => pkt.mark,
                    };
                }
                note(steps, format!("mark {before:#x} -> {:#x}", pkt.mark));
            }
            "DNAT" => {
                let spec = target.option("to-destination").unwrap_or("");
                match to_destination(spec, pkt.dst.port()) {
                    Some(dst) => {
                        pkt.dst = dst;
                        pkt.dnat = true;
                        cur.via = path(cur);
                        note(steps, format!("DNAT: the destination is now {dst}"));
                    }
                    None => {
                        note(
                            steps,
                            format!("DNAT --to-destination {spec:?} is not modelled"),
                        );
                        self.not_modelled
                            .borrow_mut()
                            .insert(format!("DNAT --to-destination {spec}"));
                    }
                }
                cur.frames.clear();
            }
            "SNAT" | "MASQUERADE" => {
                pkt.snat = true;
                let what = match target.option("to-source") {
                    Some(s) => format!("SNAT: the source becomes {s}"),
                    None => {
                        "MASQUERADE: the source becomes the node's address toward the destination"
                            .to_string()
                    }
                };
                note(steps, what);
                cur.frames.clear();
            }
            name => match self.rules.chain(table, name) {
                Some(_) => {
                    if target.goto {
                        cur.frames.pop();
                    }
                    cur.frames.push(Frame {
                        chain: name.to_string(),
                        next_rule: 0,
                    });
                }
                None => {
                    note(
                        steps,
                        format!("target {name} is not modelled: the walk goes on"),
                    );
                    self.not_modelled.borrow_mut().insert(format!("-j {name}"));
                }
            },
        }
        Applied::Continue
    }

    /// Where the packet goes once a stage's tables are done.
    fn transition(&self, stage: Stage, pkt: &mut PacketState, steps: &mut Vec<Step>) -> Transition {
        let local = self.node.is_local(pkt.dst.ip());
        let vs = self.virtual_server(pkt);
        let dst = pkt.dst.ip();
        match stage {
            Stage::Pre => {
                if local {
                    steps.push(route(format!("{dst} is this node's address: INPUT")));
                    Transition::Next(Stage::In)
                } else {
                    steps.push(route(format!("{dst} is not this node's: FORWARD")));
                    Transition::Next(Stage::Forward)
                }
            }
            Stage::In if vs => Transition::Ipvs(Stage::IpvsOut),
            Stage::In | Stage::InLoopback => Transition::Deliver,
            Stage::Forward | Stage::OutLate | Stage::IpvsOut => Transition::Next(Stage::Post),
            Stage::OutEarly if vs => Transition::Ipvs(Stage::OutLate),
            Stage::OutEarly => Transition::Next(Stage::OutLate),
            Stage::Post => {
                if pkt.outgoing && local {
                    steps.push(route(format!(
                        "{dst} is this node's: the packet loops back in (INPUT)"
                    )));
                    pkt.outgoing = false;
                    pkt.in_interface = Some("lo".into());
                    Transition::Next(Stage::InLoopback)
                } else {
                    Transition::Deliver
                }
            }
        }
    }

    fn virtual_server(&self, pkt: &PacketState) -> bool {
        pkt.ipvs.is_none()
            && self
                .node
                .virtual_servers
                .as_ref()
                .is_some_and(|v| v.find(pkt.proto, pkt.dst).is_some())
    }

    /// IPVS takes the packet: the ways on, one per live real server, and the walk goes on at
    /// `next`.
    fn ipvs(
        &self,
        cur: &mut Cursor,
        pkt: &PacketState,
        share: Option<f64>,
        next: Stage,
        steps: &mut Vec<Step>,
    ) -> Scheduled {
        let vs = self
            .node
            .virtual_servers
            .as_ref()
            .and_then(|v| v.find(pkt.proto, pkt.dst))
            .expect("transition checked it");
        let vs_name = format!("{} {}", vs.proto, vs.address);
        let live: Vec<(SocketAddr, u32)> = vs
            .real_servers
            .iter()
            .copied()
            .filter(|(_, w)| *w > 0)
            .collect();
        let persistence = vs
            .persistence
            .map(|p| format!(", persistent {p} s (a returning client keeps its real server)"))
            .unwrap_or_default();
        steps.push(Step::Note {
            depth: 0,
            text: format!(
                "IPVS: virtual server {vs_name}, scheduler {}{persistence}, {} live real server(s)",
                vs.scheduler,
                live.len()
            ),
        });
        cur.via.push(format!("ipvs {vs_name}"));
        cur.stage = next;
        cur.table_idx = 0;
        if live.is_empty() {
            return Scheduled::Rejected(Outcome {
                via: cur.via.clone(),
                verdict: Verdict::Rejected {
                    table: "ipvs".into(),
                    chain: vs_name,
                    rule: "no real server: IPVS answers ICMP port unreachable".into(),
                },
            });
        }
        let total: u32 = live.iter().map(|(_, w)| w).sum();
        let to = |rs: SocketAddr| {
            let mut p = pkt.clone();
            p.ipvs = Some((vs.proto, vs.address));
            p.dst = rs;
            p
        };
        if live.len() == 1 {
            let rs = live[0].0;
            steps.push(ipvs_destination(rs));
            return Scheduled::One(to(rs));
        }
        Scheduled::Many(
            live.iter()
                .map(|&(rs, w)| {
                    let condition = Condition::Scheduler {
                        scheduler: vs.scheduler.clone(),
                        real_server: rs,
                        weight: w,
                        total_weight: total,
                    };
                    let s = share.map(|s| s * f64::from(w) / f64::from(total));
                    (condition, s, to(rs))
                })
                .collect(),
        )
    }
}

/// Whether a way on past a choice (`rest`) meeting choice `next` continues the same choice: a
/// Service's endpoints are one choice, not one nested in the other.
fn same_choice(next: &Condition, rest: &Condition) -> bool {
    matches!(
        (next, rest),
        (Condition::Random { .. }, Condition::Random { .. })
            | (Condition::Recent { .. }, Condition::Recent { .. })
    )
}

/// The arena's nodes as a tree. A node's ways always get slots after its own, so building
/// from the last slot to the first finds every child built, without recursion.
fn assemble(arena: Vec<Slot>) -> TraceNode {
    let mut built: Vec<Option<TraceNode>> = Vec::with_capacity(arena.len());
    built.resize_with(arena.len(), || None);
    for (i, slot) in arena.into_iter().enumerate().rev() {
        let end = match slot.end {
            SlotEnd::Unwalked => unreachable!("every task is walked before the tree is built"),
            SlotEnd::Outcome(o) => End::Outcome(o),
            SlotEnd::Branches(ways) => End::Branches(
                ways.into_iter()
                    .map(|(condition, share, child)| Branch {
                        condition,
                        share,
                        node: built[child]
                            .take()
                            .expect("a child's slot comes after its parent's"),
                    })
                    .collect(),
            ),
        };
        built[i] = Some(TraceNode {
            steps: slot.steps,
            end,
        });
    }
    built[0].take().expect("the root is slot 0")
}

/// A new, empty slot of the arena.
fn new_slot(arena: &mut Vec<Slot>) -> usize {
    arena.push(Slot::default());
    arena.len() - 1
}

/// The step a way IPVS picked starts with.
fn ipvs_destination(rs: SocketAddr) -> Step {
    Step::Note {
        depth: 0,
        text: format!("IPVS: the destination is now {rs} (IPVS NAT forwarding)"),
    }
}

fn route(text: String) -> Step {
    Step::Note {
        depth: 0,
        text: format!("routing: {text}"),
    }
}

/// `--to-destination IP[:PORT]` (`[IPv6]:PORT`; a range takes its first address and port).
fn to_destination(spec: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let (addr, port_spec) = match spec.rsplit_once(':') {
        Some((a, p)) if !a.ends_with(':') => (a, Some(p)),
        _ => (spec, None),
    };
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let first_addr = addr.split('-').next()?;
    let ip: IpAddr = first_addr.parse().ok()?;
    let port = match port_spec {
        Some(p) => p.split('-').next()?.parse().ok()?,
        None => port,
    };
    Some(SocketAddr::new(ip, port))
}
