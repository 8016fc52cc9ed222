//! `trace`'s output: the walk as indented text with every branch and its share, then the
//! outcomes; or the same as JSON.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use ipnet::IpNet;
use rulegen::analysis::trace::{Condition, End, Leaf, Origin, Step, Trace, TraceNode, Verdict};
use serde_json::{Value, json};

pub(crate) fn percent(share: f64) -> String {
    let p = share * 100.0;
    let s = format!("{p:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn origin_text(o: Origin) -> &'static str {
    match o {
        Origin::Pod => "a pod on this node",
        Origin::Node => "this node",
        Origin::External => "outside the node",
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Delivered {
            destination,
            translated,
            ipvs,
            local,
            masquerade,
        } => {
            let place = if *local { "this node" } else { "forwarded" };
            let how = match (translated, ipvs) {
                (true, true) => "via IPVS, ",
                (true, false) => "",
                (false, _) => "not translated, ",
            };
            let source = if *masquerade {
                "source masqueraded"
            } else {
                "source kept"
            };
            format!("delivered to {destination} ({how}{place}), {source}")
        }
        Verdict::Rejected { table, chain, .. } => {
            format!("REJECT in {table} {chain}: refused at once")
        }
        Verdict::Dropped { table, chain, .. } => {
            format!("DROP in {table} {chain}: no answer")
        }
    }
}

fn condition_text(c: &Condition, share: Option<f64>) -> String {
    let share = share.map_or_else(|| "returning".to_string(), percent);
    match c {
        Condition::Random {
            probability,
            taken: true,
        } => format!("{share}: --probability {probability:.11} matched"),
        Condition::Random { taken: false, .. } => {
            format!("{share}: no --probability rule matched")
        }
        Condition::Recent {
            list,
            seconds,
            returning: true,
        } => {
            let within = seconds.map_or(String::new(), |s| format!(" within {s} s"));
            format!("{share}: a client sent to {list}{within}")
        }
        Condition::Recent {
            returning: false, ..
        } => format!("{share}: a new client"),
        Condition::Scheduler {
            scheduler,
            real_server,
            weight,
            total_weight,
        } => format!(
            "{share}: scheduler {scheduler} picks {real_server} (weight {weight} of {total_weight})"
        ),
    }
}

/// Human-readable walk.
/// The walk as text: every rule matched, each branch with its share, then the outcomes.
pub fn text(trace: &Trace, local: &[IpNet], source: &str) -> String {
    let p = &trace.packet;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} -> {}: a new connection from {}",
        p.proto,
        p.src,
        p.dst,
        origin_text(p.origin)
    );
    let locals: Vec<String> = local.iter().map(addr_text).collect();
    let _ = writeln!(
        out,
        "{source}; this node's addresses: {} (and loopback)",
        if locals.is_empty() {
            "none known (add --local-address)".to_string()
        } else {
            locals.join(", ")
        }
    );
    out.push('\n');
    write_node(&mut out, &trace.root, 0, 0);
    out.push('\n');
    summary(&mut out, trace);
    if !trace.not_modelled.is_empty() {
        let _ = writeln!(
            out,
            "\nNot modelled (assumed not to match): {}",
            trace.not_modelled.join("; ")
        );
    }
    out
}

fn addr_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn write_node(out: &mut String, node: &TraceNode, base: usize, start_depth: usize) {
    // Lines of a chain `d` jumps deep sit at `origin + 2 + 2d`; a hook resets the origin to
    // `base`. A branch's walk starts inside a chain, so its first rules line up under the label.
    let mut origin = base as isize - 2 - 2 * start_depth as isize;
    let at = |origin: isize, extra: usize| -> usize {
        (origin + extra as isize).max(base as isize) as usize
    };
    let mut last_jump: Option<(usize, String)> = None;
    for step in &node.steps {
        match step {
            Step::Hook { table, chain } => {
                origin = base as isize;
                let _ = writeln!(out, "{:base$}{table} {chain}", "");
                last_jump = None;
            }
            Step::Rule {
                table,
                chain,
                number,
                text,
                depth,
            } => {
                if *depth > 0
                    && last_jump
                        .as_ref()
                        .is_some_and(|(d, c)| d + 1 == *depth && c == chain)
                {
                    let _ = writeln!(out, "{:w$}{table} {chain}", "", w = at(origin, 2 * depth));
                }
                let _ = writeln!(
                    out,
                    "{:w$}[{number}] {text}",
                    "",
                    w = at(origin, 2 + 2 * depth)
                );
                last_jump = jump_target(text).map(|t| (*depth, t));
            }
            Step::Return { chain, depth } => {
                if last_jump
                    .as_ref()
                    .is_some_and(|(d, c)| d + 1 == *depth && c == chain)
                {
                    // Nothing matched inside: say so on the jump's line.
                    out.pop();
                    out.push_str("   (nothing matched)\n");
                }
                last_jump = None;
            }
            Step::Note { depth, text } => {
                let indent = if text.starts_with("routing:") || text.starts_with("IPVS:") {
                    base
                } else {
                    at(origin, 2 + 2 * depth)
                };
                let _ = writeln!(out, "{:indent$}{text}", "");
                last_jump = None;
            }
        }
    }
    match &node.end {
        End::Outcome(o) => {
            let _ = writeln!(out, "{:base$}=> {}", "", verdict_text(&o.verdict));
        }
        End::Branches(branches) => {
            let kind = match &branches[0].condition {
                Condition::Random { .. } => "at random",
                Condition::Recent { .. } => "by session affinity",
                Condition::Scheduler { .. } => "by the IPVS scheduler",
            };
            // The chain the choice is made in: the first rule of the first way.
            let first_rule = branches[0].node.steps.iter().find_map(|s| match s {
                Step::Rule {
                    table,
                    chain,
                    depth,
                    ..
                } => Some((table, chain, *depth)),
                _ => None,
            });
            let (indent, depth) = match (first_rule, &branches[0].condition) {
                (
                    Some((table, chain, depth)),
                    Condition::Random { .. } | Condition::Recent { .. },
                ) => {
                    if depth > 0
                        && last_jump
                            .as_ref()
                            .is_some_and(|(d, c)| d + 1 == depth && c == chain)
                    {
                        let _ =
                            writeln!(out, "{:w$}{table} {chain}", "", w = at(origin, 2 * depth));
                    }
                    (at(origin, 2 + 2 * depth), depth)
                }
                _ => (base, 0),
            };
            let _ = writeln!(out, "{:indent$}{} ways, {kind}:", "", branches.len());
            for (i, b) in branches.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{:indent$}({}) {}",
                    "",
                    i + 1,
                    condition_text(&b.condition, b.share)
                );
                write_node(out, &b.node, indent + 4, depth);
            }
        }
    }
}

/// The chain a rule's `-j`/`-g` names, if it is not a built-in target.
fn jump_target(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            let t = words.next()?;
            return (!matches!(
                t,
                "ACCEPT" | "DROP" | "REJECT" | "RETURN" | "MARK" | "DNAT" | "SNAT" | "MASQUERADE"
            ))
            .then(|| t.to_string());
        }
    }
    None
}

/// The outcomes, new connections first (merged by fate, with their summed share), then what
/// returning clients get.
fn summary(out: &mut String, trace: &Trace) {
    let leaves = trace.leaves();
    // (verdict, via) → summed share, in the walk's order; the indexes find a fate met before
    // without a scan (a Service may have 50,000 endpoints, each its own fate).
    let mut fresh: Vec<((String, String), f64)> = Vec::new();
    let mut fresh_index: HashMap<(String, String), usize> = HashMap::new();
    let mut returning: Vec<(String, String)> = Vec::new();
    let mut returning_seen: HashSet<(String, String)> = HashSet::new();
    for Leaf { share, outcome } in &leaves {
        let key = (verdict_text(&outcome.verdict), via_text(&outcome.via));
        match share {
            Some(s) => match fresh_index.get(&key) {
                Some(&i) => fresh[i].1 += s,
                None => {
                    fresh_index.insert(key.clone(), fresh.len());
                    fresh.push((key, *s));
                }
            },
            None => {
                if returning_seen.insert(key.clone()) {
                    returning.push(key);
                }
            }
        }
    }
    let line = |out: &mut String, share: &str, (verdict, via): &(String, String)| {
        let _ = writeln!(out, "  {share:>7}  {verdict}");
        if !via.is_empty() {
            let _ = writeln!(out, "           via {via}");
        }
    };
    let _ = writeln!(out, "New connections:");
    for (key, share) in &fresh {
        line(out, &percent(*share), key);
    }
    if !returning.is_empty() {
        let _ = writeln!(
            out,
            "Returning clients (session affinity) keep their endpoint:"
        );
        for key in &returning {
            line(out, "", key);
        }
    }
}

/// `nat PREROUTING > KUBE-SERVICES > …`: the chains that decided, the table named once.
fn via_text(via: &[String]) -> String {
    let mut out = String::new();
    let mut table = "";
    for (i, step) in via.iter().enumerate() {
        let (t, chain) = step.split_once(' ').unwrap_or(("", step));
        if i > 0 {
            out.push_str(" > ");
        }
        if t != table {
            out.push_str(t);
            out.push(' ');
            table = t;
        }
        out.push_str(chain);
    }
    out
}

fn verdict_json(v: &Verdict) -> Value {
    match v {
        Verdict::Delivered {
            destination,
            translated,
            ipvs,
            local,
            masquerade,
        } => json!({
            "verdict": "delivered",
            "destination": destination.to_string(),
            "translated": translated,
            "ipvs": ipvs,
            "local": local,
            "masquerade": masquerade,
        }),
        Verdict::Rejected { table, chain, rule } => json!({
            "verdict": "rejected", "table": table, "chain": chain, "rule": rule,
        }),
        Verdict::Dropped { table, chain, rule } => json!({
            "verdict": "dropped", "table": table, "chain": chain, "rule": rule,
        }),
    }
}

fn condition_json(c: &Condition) -> Value {
    match c {
        Condition::Random { probability, taken } => {
            json!({"kind": "random", "probability": probability, "taken": taken})
        }
        Condition::Recent {
            list,
            seconds,
            returning,
        } => json!({"kind": "affinity", "list": list, "seconds": seconds, "returning": returning}),
        Condition::Scheduler {
            scheduler,
            real_server,
            weight,
            total_weight,
        } => json!({
            "kind": "ipvs-scheduler", "scheduler": scheduler,
            "real_server": real_server.to_string(), "weight": weight, "total_weight": total_weight,
        }),
    }
}

fn node_json(node: &TraceNode) -> Value {
    let steps: Vec<Value> = node
        .steps
        .iter()
        .map(|s| match s {
            Step::Hook { table, chain } => json!({"hook": format!("{table} {chain}")}),
            Step::Rule {
                table,
                chain,
                number,
                text,
                depth,
            } => json!({"table": table, "chain": chain, "rule": number, "text": text, "depth": depth}),
            Step::Return { chain, depth } => json!({"return": chain, "depth": depth}),
            Step::Note { text, .. } => json!({"note": text}),
        })
        .collect();
    match &node.end {
        End::Outcome(o) => {
            let mut v = verdict_json(&o.verdict);
            v["via"] = json!(o.via);
            json!({"steps": steps, "outcome": v})
        }
        End::Branches(bs) => json!({
            "steps": steps,
            "branches": bs.iter().map(|b| json!({
                "condition": condition_json(&b.condition),
                "share": b.share,
                "walk": node_json(&b.node),
            })).collect::<Vec<_>>(),
        }),
    }
}

/// The JSON form: the packet, every outcome (flat, with its share), and the walk as a tree.
/// The walk and its outcomes as JSON, for tools.
pub fn to_json(trace: &Trace, local: &[IpNet], source: &str) -> Value {
    let p = &trace.packet;
    let outcomes: Vec<Value> = trace
        .leaves()
        .iter()
        .map(|l| {
            let mut v = verdict_json(&l.outcome.verdict);
            v["share"] = json!(l.share);
            v["affinity"] = json!(l.share.is_none());
            v["via"] = json!(l.outcome.via);
            v
        })
        .collect();
    json!({
        "packet": {
            "protocol": p.proto,
            "source": p.src.to_string(),
            "destination": p.dst.to_string(),
            "from": p.origin.as_str(),
            "in_interface": p.in_interface,
        },
        "rules": source,
        "local_addresses": local.iter().map(addr_text).collect::<Vec<_>>(),
        "outcomes": outcomes,
        "not_modelled": trace.not_modelled,
        "walk": node_json(&trace.root),
    })
}
