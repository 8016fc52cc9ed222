//! `trace`: where one packet goes through this node's rules, rule by rule, with every random
//! branch and its share. The walk is `rulegen::analysis::trace`, over `iptables-save` text — the dry run's
//! render of `--objects`, or a saved ruleset from any node (`--ruleset FILE`, with `--ipsets` and
//! `--ipvs` for an IPVS node), or with neither the node's own kernel (`live`) — so it shows what
//! the rules do, not what the model meant.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use ipnet::IpNet;
use rulegen::analysis::trace::{
    Condition, End, Leaf, NodeContext, Origin, Packet, SavedRuleset, SavedSets,
    SavedVirtualServers, Step, Trace, TraceNode, Verdict,
};
use serde_json::{Value, json};

use crate::dryrun::{ipvs_config, load_model};
use crate::explain::OutputFormat;
use crate::settings::{Flags, ProxyMode, Settings};

mod live;

/// The source port a trace uses when `--src` gives none.
pub const DEFAULT_SOURCE_PORT: u16 = 40000;

/// `trace`'s arguments. Its own flags may come in any order with the dry run's node flags
/// (`--objects`, `--hostname-override`, `--cluster-cidr`, `--config`, `--proxy-mode`, …).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct TraceArgs {
    /// The packet's source, IP[:PORT] ([IPv6]:PORT) [default port: 40000].
    #[arg(long, value_name = "IP[:PORT]")]
    pub src: Option<String>,

    /// The packet's destination, IP:PORT ([IPv6]:PORT).
    #[arg(long, value_name = "IP:PORT")]
    pub dst: Option<String>,

    /// The protocol.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,

    /// Where the packet comes from [default: node if SRC is one of the node's addresses, pod if
    /// it is in the cluster CIDR, else external].
    #[arg(long, value_enum)]
    pub from: Option<FromArg>,

    /// Trace this iptables-save (or ip6tables-save) output instead of rendering --objects.
    #[arg(long, value_name = "FILE")]
    pub ruleset: Option<PathBuf>,

    /// With --ruleset of an IPVS node: its `ipset save` output.
    #[arg(long, value_name = "FILE")]
    pub ipsets: Option<PathBuf>,

    /// With --ruleset of an IPVS node: its `ipvsadm -Sn` output.
    #[arg(long, value_name = "FILE")]
    pub ipvs: Option<PathBuf>,

    /// More addresses of the node (comma-separated, repeatable), besides its Node object's and loopback.
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    pub local_address: Vec<String>,

    /// The interface the packet arrives on [default: a pod's packet matches `-i` rules, an external one does not].
    #[arg(long, value_name = "NAME")]
    pub in_interface: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// The dry run's flags: --objects PATH …, --hostname-override NODE, --cluster-cidr CIDR, --config FILE, ….
    #[command(flatten)]
    pub flags: Flags,
}

/// `trace --proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ProtoArg {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// `trace --from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromArg {
    /// A pod on this node.
    Pod,
    /// The node itself.
    Node,
    /// Outside the node.
    External,
}

/// What `trace` produced: stdout text and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct TraceOutput {
    /// What goes to stdout.
    pub text: String,
    /// Warnings for stderr.
    pub warnings: Vec<crate::Warning>,
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address.
fn parse_endpoint(s: &str, what: &str, default_port: Option<u16>) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        // No connection goes to port 0, nor comes from it (binding port 0 picks another).
        if sa.port() == 0 {
            bail!("{what} {s:?}: port 0 is not a port a connection uses (1 to 65535)");
        }
        return Ok(sa);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return match default_port {
            Some(p) => Ok(SocketAddr::new(ip, p)),
            None => bail!("{what} {s:?} needs a port: IP:PORT ([IPv6]:PORT)"),
        };
    }
    if let Some((_, port)) = s.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        bail!("{what} {s:?}: port {port:?} is not a number from 1 to 65535");
    }
    bail!("{what} {s:?} is not an address (IP:PORT or [IPv6]:PORT)")
}

/// The rules, sets and virtual servers to walk, and the node facts from the objects.
struct Loaded {
    rules: SavedRuleset,
    /// The live node's chains not read yet, read as the walk enters them (nft back end).
    fetcher: Option<(live::ChainFetcher, tokio::runtime::Runtime)>,
    sets: Option<SavedSets>,
    virtual_servers: Option<SavedVirtualServers>,
    node_ips: Vec<IpAddr>,
    cluster_cidrs: Vec<IpNet>,
    source: String,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Runs `trace` without printing anything.
pub fn render(outer: &Flags, args: &TraceArgs) -> anyhow::Result<TraceOutput> {
    if !outer.is_default() {
        bail!(
            "give the node flags after `trace` (kube-proxy-rs trace --src … --dst … --objects PATH …)"
        );
    }
    let src = parse_endpoint(
        args.src.as_deref().context("trace needs --src IP[:PORT]")?,
        "--src",
        Some(DEFAULT_SOURCE_PORT),
    )?;
    let dst = parse_endpoint(
        args.dst.as_deref().context("trace needs --dst IP:PORT")?,
        "--dst",
        None,
    )?;
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("--src {src} and --dst {dst} are of different address families");
    }
    let mut flags = args.flags.clone();
    if dst.is_ipv6() {
        // An IPv6 packet is traced through the IPv6 rules.
        flags.ip_family = rulegen::IpFamily::V6;
    }
    let (settings, mut warnings) = Settings::from_flags(&flags)?;
    let mut loaded = load(&flags, &settings, args, &mut warnings)?;
    let mut local: Vec<IpNet> = loaded.node_ips.iter().map(|ip| IpNet::from(*ip)).collect();
    for a in &args.local_address {
        let ip: IpAddr = a
            .trim()
            .parse()
            .with_context(|| format!("--local-address {a:?} is not an IP address"))?;
        local.push(IpNet::from(ip));
    }
    local.sort();
    local.dedup();
    let node = NodeContext {
        local_addresses: local.clone(),
        sets: loaded.sets,
        virtual_servers: loaded.virtual_servers,
    };
    let origin = match args.from {
        Some(FromArg::Pod) => Origin::Pod,
        Some(FromArg::Node) => Origin::Node,
        Some(FromArg::External) => Origin::External,
        None if node.is_local(src.ip()) => Origin::Node,
        None if loaded.cluster_cidrs.iter().any(|n| n.contains(&src.ip())) => Origin::Pod,
        None => Origin::External,
    };
    let packet = Packet {
        proto: match args.proto {
            ProtoArg::Tcp => "tcp",
            ProtoArg::Udp => "udp",
            ProtoArg::Sctp => "sctp",
        },
        src,
        dst,
        origin,
        in_interface: args.in_interface.clone(),
    };
    let mut trace = rulegen::analysis::trace::trace(&loaded.rules, &packet, &node);
    // Walk again while the walk enters chains not read yet; each round reads at least one
    // more, and a path is only as deep as the chains it jumps through.
    if let Some((fetcher, rt)) = &mut loaded.fetcher {
        while fetcher.read_entered(rt, &trace)? {
            loaded.rules =
                SavedRuleset::parse(&fetcher.text()).context("cannot read this node's rules")?;
            trace = rulegen::analysis::trace::trace(&loaded.rules, &packet, &node);
        }
    }
    let text = match args.output {
        OutputFormat::Text => text(&trace, &local, &loaded.source),
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&to_json(&trace, &local, &loaded.source))?;
            s.push('\n');
            s
        }
    };
    Ok(TraceOutput { text, warnings })
}

fn load(
    cli: &Flags,
    settings: &Settings,
    args: &TraceArgs,
    warnings: &mut Vec<crate::Warning>,
) -> anyhow::Result<Loaded> {
    let family = match settings.family {
        rulegen::IpFamily::V4 => "IPv4",
        rulegen::IpFamily::V6 => "IPv6",
    };
    let mut node_ips = Vec::new();
    let mut rendered = None;
    let mut source = String::new();
    // Objects from files, or from the API server when one is named; else the live kernel.
    let from_api =
        cli.objects.is_empty() && (settings.kubeconfig.is_some() || cli.master.is_some());
    if !cli.objects.is_empty() || from_api {
        let translation = if from_api {
            crate::agent::api::fetch_translation(cli, settings)
                .context("cannot list the objects from the API server")?
        } else {
            load_model(&cli.objects, settings)?
        };
        warnings.extend(translation.warnings.iter().cloned());
        node_ips = translation.config.node_ips.clone();
        source = format!(
            "rules rendered for node {} ({} mode, {family})",
            translation.config.node_name,
            match settings.mode {
                ProxyMode::Iptables => "iptables",
                ProxyMode::Ipvs => "IPVS",
            }
        );
        rendered = Some(match settings.mode {
            ProxyMode::Iptables => (
                rulegen::render(&translation.model, &translation.config)
                    .context("cannot render the ruleset")?
                    .to_save_text(),
                None,
                None,
            ),
            ProxyMode::Ipvs => {
                let r = rulegen::render::ipvs::render(
                    &translation.model,
                    &translation.config,
                    &ipvs_config(settings),
                )
                .context("cannot render the IPVS dataplane")?;
                (
                    r.ruleset.to_save_text(),
                    Some(r.sets.to_save_text()),
                    Some(r.table.to_ipvsadm_text()),
                )
            }
        });
    }
    if rendered.is_none() && args.ruleset.is_none() {
        if args.ipsets.is_some() || args.ipvs.is_some() {
            bail!("--ipsets and --ipvs go with --ruleset");
        }
        // Neither objects nor a file: this node's own kernel.
        let node = live::read(settings.family)?;
        let rules = SavedRuleset::parse(&node.rules).context("cannot read this node's rules")?;
        return Ok(Loaded {
            rules,
            fetcher: node.fetcher,
            sets: node.sets,
            virtual_servers: node.virtual_servers,
            node_ips: node.addresses,
            cluster_cidrs: settings.cluster_cidrs.clone(),
            source: node.source,
        });
    }
    let (rules_text, sets_text, vs_text) = match &args.ruleset {
        Some(path) => {
            source = format!("rules from {}", path.display());
            let sets = args
                .ipsets
                .as_ref()
                .map(|p| read(p, "--ipsets"))
                .transpose()?;
            let vs = args.ipvs.as_ref().map(|p| read(p, "--ipvs")).transpose()?;
            (read(path, "--ruleset")?, sets, vs)
        }
        None => {
            if args.ipsets.is_some() || args.ipvs.is_some() {
                bail!("--ipsets and --ipvs go with --ruleset (with --objects they are rendered)");
            }
            rendered.expect("objects given when there is no ruleset")
        }
    };
    let rules = SavedRuleset::parse(&rules_text).context("cannot read the ruleset")?;
    let sets = sets_text
        .map(|t| SavedSets::parse(&t).context("cannot read the ipsets"))
        .transpose()?;
    let virtual_servers = vs_text
        .map(|t| SavedVirtualServers::parse(&t).context("cannot read the IPVS virtual servers"))
        .transpose()?;
    Ok(Loaded {
        rules,
        fetcher: None,
        sets,
        virtual_servers,
        node_ips,
        cluster_cidrs: settings.cluster_cidrs.clone(),
        source,
    })
}

/// Runs `trace` and prints it.
pub fn run(outer: &Flags, args: &TraceArgs) -> ExitCode {
    crate::dryrun::print_output(render(outer, args).map(|out| (out.text, out.warnings)))
}

fn percent(share: f64) -> String {
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
fn text(trace: &Trace, local: &[IpNet], source: &str) -> String {
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
fn to_json(trace: &Trace, local: &[IpNet], source: &str) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_flags_are_taken_from_anywhere_among_the_node_flags() {
        #[derive(clap::Parser)]
        struct Trace {
            #[command(flatten)]
            args: TraceArgs,
        }
        let parsed = <Trace as clap::Parser>::try_parse_from([
            "trace",
            "--objects",
            "x.yaml",
            "--dst",
            "10.0.0.1:80",
            "--hostname-override",
            "n",
            "--from=pod",
        ])
        .unwrap();
        let args = parsed.args;
        assert_eq!(args.dst.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(args.from, Some(FromArg::Pod));
        assert_eq!(args.flags.objects, [PathBuf::from("x.yaml")]);
        assert_eq!(
            args.flags.configuration.hostname_override.as_deref(),
            Some("n")
        );
    }

    #[test]
    fn endpoints_parse_with_and_without_ports() {
        assert_eq!(
            parse_endpoint("10.0.0.1", "--src", Some(40000)).unwrap(),
            "10.0.0.1:40000".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("fd00::1", "--src", Some(1)).unwrap(),
            "[fd00::1]:1".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("[fd00::1]:53", "--dst", None).unwrap(),
            "[fd00::1]:53".parse().unwrap()
        );
        let e = parse_endpoint("10.0.0.1", "--dst", None).unwrap_err();
        assert!(e.to_string().contains("needs a port"), "{e}");
        let e = parse_endpoint("10.0.0.1:99999", "--dst", None).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
        assert!(parse_endpoint("ten.0.0.1:80", "--dst", None).is_err());
    }

    #[test]
    fn percentages_are_short() {
        assert_eq!(percent(1.0 / 3.0), "33.33%");
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(1.0), "100%");
    }
}
