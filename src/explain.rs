//! `explain SERVICE`: what this node's iptables rules (or, with `--proxy-mode ipvs`, its IPVS
//! virtual servers, ipsets and rules) do with one Service, for a person (aligned text) or a tool
//! (`--output json`). The analysis is `rulegen::analysis::explain` (`rulegen::analysis::explain::ipvs`), built from
//! the renderer's own decisions; this module finds the Service, resolves the flags as the dry
//! run does, and formats.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use rulegen::analysis::explain::ipvs::IpvsExplanation;
use rulegen::analysis::explain::{
    EndpointSet, Exclusion, Masquerade, Origin, PathKind, PortExplanation, SetKind, Verdict,
};
use rulegen::{IpFamily, Model, TrafficPolicy};
use serde_json::{Value, json};

use crate::dryrun::load_model;
use crate::settings::{Flags, ProxyMode, Settings};

mod ipvs;

/// `explain`'s arguments: SERVICE, `--output`, and the node flags (before or after SERVICE).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ExplainArgs {
    /// NAMESPACE/NAME, or NAMESPACE/NAME:PORT (a port name or number).
    pub service: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// The dry run's flags: --objects PATH …, --hostname-override NODE, --cluster-cidr CIDR, --config FILE, ….
    #[command(flatten)]
    pub flags: Flags,
}

/// `explain --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for a person.
    #[default]
    Text,
    /// JSON for tools.
    Json,
}

/// What `explain` produced: stdout text and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct ExplainOutput {
    /// What goes to stdout.
    pub text: String,
    /// Warnings for stderr.
    pub warnings: Vec<crate::Warning>,
}

/// Runs `explain` without printing anything: resolves the flags, loads and translates the objects,
/// finds the Service and formats its explanation.
pub fn render(outer: &Flags, args: &ExplainArgs) -> anyhow::Result<ExplainOutput> {
    if !outer.is_default() {
        bail!(
            "give the node flags after `explain SERVICE` (kube-proxy-rs explain NS/NAME --objects PATH …)"
        );
    }
    let flags = &args.flags;
    let output = args.output;
    let (settings, mut warnings) = Settings::from_flags(flags)?;
    let translation = if flags.objects.is_empty() {
        // No files: the cluster's objects, listed once as the agent would.
        crate::agent::api::fetch_translation(flags, &settings).context(
            "explain reads --objects PATH (a YAML/JSON file or a directory) or the API server \
             (--kubeconfig FILE, KUBECONFIG, or in a pod)",
        )?
    } else {
        load_model(&flags.objects, &settings)?
    };
    warnings.extend(translation.warnings);
    let ports = select(&translation.model, &args.service)?;
    let no_cluster_ip = || {
        anyhow::anyhow!(
            "{} has no {} cluster IP on this node's proxier (try --ip-family)",
            args.service,
            family_name(translation.config.family)
        )
    };
    let node = &translation.config.node_name;
    let text = match settings.mode {
        ProxyMode::Iptables => {
            let explained: Vec<PortExplanation> = ports
                .iter()
                .filter_map(|&i| {
                    rulegen::analysis::explain::explain_port(
                        &translation.model.services[i],
                        &translation.config,
                    )
                })
                .collect();
            if explained.is_empty() {
                return Err(no_cluster_ip());
            }
            match output {
                OutputFormat::Text => text(&explained, node),
                OutputFormat::Json => pretty(&json(&explained, node))?,
            }
        }
        ProxyMode::Ipvs => {
            // The same render the dry run prints, so explain reads what the node would hold.
            let render = rulegen::render::ipvs::render(
                &translation.model,
                &translation.config,
                &crate::dryrun::ipvs_config(&settings),
            )
            .context("cannot render the IPVS dataplane")?;
            let explained: Vec<IpvsExplanation> = ports
                .iter()
                .filter_map(|&i| {
                    rulegen::analysis::explain::ipvs::explain_port(
                        &translation.model.services[i],
                        &translation.config,
                        &render,
                    )
                })
                .collect();
            if explained.is_empty() {
                return Err(no_cluster_ip());
            }
            match output {
                OutputFormat::Text => ipvs::text(&explained, node),
                OutputFormat::Json => pretty(&ipvs::json(&explained, node))?,
            }
        }
    };
    Ok(ExplainOutput { text, warnings })
}

/// Pretty JSON with a final newline.
fn pretty(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Runs `explain` and prints it; exit 1 (with close matches) when the Service is not found.
pub fn run(outer: &Flags, args: &ExplainArgs) -> ExitCode {
    crate::dryrun::print_output(render(outer, args).map(|out| (out.text, out.warnings)))
}

/// The indices of the service ports `query` (`ns/name` or `ns/name:port`) names, or an error
/// that lists the closest Services or the Service's ports.
pub fn select(model: &Model, query: &str) -> anyhow::Result<Vec<usize>> {
    let (ns, rest) = query
        .split_once('/')
        .with_context(|| format!("{query:?}: name the Service as NAMESPACE/NAME[:PORT]"))?;
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (rest, None),
    };
    let of_service: Vec<usize> = (0..model.services.len())
        .filter(|&i| {
            let n = &model.services[i].name;
            n.namespace == ns && n.name == name
        })
        .collect();
    if of_service.is_empty() {
        let mut names: Vec<String> = model
            .services
            .iter()
            .map(|sp| format!("{}/{}", sp.name.namespace, sp.name.name))
            .collect();
        names.dedup();
        let want = format!("{ns}/{name}");
        let mut close: Vec<(usize, &String)> = names
            .iter()
            .map(|n| (distance(n, &want), n))
            .filter(|(d, n)| {
                let short = n.split_once('/').map_or(n.as_str(), |(_, s)| s);
                *d <= 3 || distance(short, name) <= 2 || (!name.is_empty() && short.contains(name))
            })
            .collect();
        close.sort();
        let list: Vec<&str> = close.iter().take(5).map(|(_, n)| n.as_str()).collect();
        if list.is_empty() {
            bail!("Service {want} not found (no Service with a similar name either)");
        }
        bail!(
            "Service {want} not found; did you mean: {}",
            list.join(", ")
        );
    }
    let Some(port) = port else {
        return Ok(of_service);
    };
    let chosen: Vec<usize> = of_service
        .iter()
        .copied()
        .filter(|&i| {
            let sp = &model.services[i];
            sp.name.port == port || port.parse::<u16>().is_ok_and(|p| p == sp.port)
        })
        .collect();
    if chosen.is_empty() {
        let ports: Vec<String> = of_service
            .iter()
            .map(|&i| {
                let sp = &model.services[i];
                match sp.name.port.as_str() {
                    "" => format!("{} ({})", sp.port, sp.protocol),
                    n => format!("{n} ({} {})", sp.port, sp.protocol),
                }
            })
            .collect();
        bail!(
            "Service {ns}/{name} has no port {port:?}; its ports: {}",
            ports.join(", ")
        );
    }
    Ok(chosen)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn policy(p: TrafficPolicy) -> &'static str {
    match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    }
}

fn path_kind(k: PathKind) -> &'static str {
    match k {
        PathKind::ClusterIp => "cluster IP",
        PathKind::NodePort => "node port",
        PathKind::ExternalIp => "external IP",
        PathKind::LoadBalancerIp => "load balancer",
    }
}

fn origin(o: Origin) -> &'static str {
    match o {
        Origin::Any => "any source",
        Origin::LocalPod => "local pods",
        Origin::NotLocalPod => "not local pods",
        Origin::ThisNode => "this node",
        Origin::Elsewhere => "elsewhere",
        Origin::OutsideSourceRanges => "outside source ranges",
    }
}

fn masquerade(m: Option<Masquerade>, v: Verdict) -> &'static str {
    if !matches!(v, Verdict::Endpoints(_)) {
        return "-";
    }
    match m {
        None => "kept",
        Some(Masquerade::MasqueradeAll) => "masqueraded (--masquerade-all)",
        Some(Masquerade::NotFromLocalPod) => "masqueraded (not from a local pod)",
        Some(Masquerade::ExternalCluster) => "masqueraded (externalTrafficPolicy: Cluster)",
        Some(Masquerade::FromThisNode) => "masqueraded (from this node)",
    }
}

fn set_of(x: &PortExplanation, k: SetKind) -> Option<&EndpointSet> {
    match k {
        SetKind::Cluster => x.cluster_set.as_ref(),
        SetKind::Local => x.local_set.as_ref(),
    }
}

fn verdict(x: &PortExplanation, v: Verdict) -> String {
    match v {
        Verdict::Endpoints(k) => {
            let n = set_of(x, k).map_or(0, |s| s.members.len());
            let which = match k {
                SetKind::Cluster => "cluster",
                SetKind::Local => "local",
            };
            format!("{which} set, {n} endpoint{}", if n == 1 { "" } else { "s" })
        }
        Verdict::RejectNoEndpoints => "REJECT (no endpoints)".into(),
        Verdict::DropNoLocalEndpoints => "DROP (no local endpoints)".into(),
        Verdict::DropFirewall => "DROP (KUBE-PROXY-FIREWALL)".into(),
    }
}

/// `IP:port`, `[IP]:port`, or `port N on <text>` for a destination that is not one address.
fn destination(addr: &str, port: u16) -> String {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Err(_) => format!("{port} on {addr}"),
    }
}

fn exclusion(e: &Exclusion) -> String {
    match e {
        Exclusion::NotReady => "out: not ready".into(),
        Exclusion::TerminatingNotServing => "out: terminating".into(),
        Exclusion::TerminatingWithReady => "out: terminating, ready ones exist".into(),
        Exclusion::TopologyHints { zones, nodes } => {
            let mut s = String::from("out: hints for ");
            let mut parts = Vec::new();
            if !nodes.is_empty() {
                parts.push(format!("node {}", nodes.join(",")));
            }
            if !zones.is_empty() {
                parts.push(format!("zone {}", zones.join(",")));
            }
            s.push_str(&parts.join(", "));
            s
        }
        Exclusion::OtherNode(Some(n)) => format!("out: on {n}"),
        Exclusion::OtherNode(None) => "out: no nodeName".into(),
    }
}

fn share(s: &EndpointSet) -> String {
    let p = format!("{:.2}", s.share() * 100.0);
    let p = p.trim_end_matches('0').trim_end_matches('.');
    format!("{p}%")
}

/// Lays out rows as columns two spaces apart, each line indented by `indent`.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c + 1 < r.len() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// What opens one port's explanation, in either mode.
pub(crate) struct Header<'a> {
    pub name: &'a rulegen::ServicePortName,
    pub protocol: rulegen::Protocol,
    pub port: u16,
    pub family: IpFamily,
    /// Appended to the first line (`, IPVS mode`).
    pub mode: &'a str,
    pub internal_policy: TrafficPolicy,
    pub external_policy: TrafficPolicy,
    pub affinity_seconds: Option<u32>,
    pub local_traffic: Option<&'a str>,
}

impl Header<'_> {
    /// The port's identity and policies as JSON fields, shared by both modes' output.
    pub(crate) fn json(&self) -> serde_json::Map<String, Value> {
        let v = json!({
            "service": format!("{}/{}", self.name.namespace, self.name.name),
            "port": self.name.port,
            "protocol": self.protocol.as_str(),
            "servicePort": self.port,
            "family": family_name(self.family),
            "internalTrafficPolicy": policy(self.internal_policy),
            "externalTrafficPolicy": policy(self.external_policy),
            "sessionAffinityTimeoutSeconds": self.affinity_seconds,
            "localTraffic": self.local_traffic,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("json! of an object literal"),
        }
    }
}

/// An endpoint's conditions as the CONDITIONS column shows them.
pub(crate) fn conditions(ready: bool, serving: bool, terminating: bool) -> String {
    let mut conds = vec![if ready { "ready" } else { "not ready" }];
    if terminating {
        conds.push(if serving {
            "serving, terminating"
        } else {
            "terminating"
        });
    }
    conds.join(", ")
}

/// Writes the port's name line, its policies and affinity, and how local pods are told apart.
pub(crate) fn write_header(out: &mut String, h: &Header<'_>, node: &str) {
    let _ = writeln!(
        out,
        "{} ({} {}, {}) on node {}{}",
        h.name,
        h.protocol,
        h.port,
        family_name(h.family),
        if node.is_empty() { "(unnamed)" } else { node },
        h.mode
    );
    let affinity = match h.affinity_seconds {
        None => "None".to_string(),
        Some(s) => format!("ClientIP, {s}s"),
    };
    let _ = writeln!(
        out,
        "  internalTrafficPolicy {}, externalTrafficPolicy {}, sessionAffinity {}",
        policy(h.internal_policy),
        policy(h.external_policy),
        affinity
    );
    if let Some(d) = h.local_traffic {
        let _ = writeln!(out, "  local pods: {d}");
    }
    out.push('\n');
}

/// The aligned text explanation of `ports`.
pub fn text(ports: &[PortExplanation], node: &str) -> String {
    let mut out = String::new();
    for (n, x) in ports.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        write_header(&mut out, &header(x), node);
        let mut rows = vec![vec![
            "DESTINATION".to_string(),
            "PATH".into(),
            "FROM".into(),
            "GOES TO".into(),
            "SOURCE".into(),
            "CHAINS".into(),
        ]];
        for p in &x.paths {
            let dests: Vec<String> = p.addresses.iter().map(|a| destination(a, p.port)).collect();
            let dests = if dests.is_empty() {
                format!("{} on no address", p.port)
            } else {
                dests.join(", ")
            };
            for (i, r) in p.routes.iter().enumerate() {
                rows.push(vec![
                    if i == 0 { dests.clone() } else { String::new() },
                    if i == 0 {
                        path_kind(p.kind).into()
                    } else {
                        String::new()
                    },
                    match (p.source_ranges.is_empty(), r.origin) {
                        (true, o) | (false, o @ Origin::OutsideSourceRanges) => origin(o).into(),
                        (false, Origin::Any) => "in source ranges".into(),
                        (false, o) => format!("{} in source ranges", origin(o)),
                    },
                    verdict(x, r.verdict),
                    masquerade(r.masquerade, r.verdict).into(),
                    r.chains.join(" > "),
                ]);
            }
        }
        table(&mut out, "  ", &rows);
        for p in x.paths.iter().filter(|p| !p.source_ranges.is_empty()) {
            let ranges: Vec<String> = p.source_ranges.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  load-balancer source ranges: {}", ranges.join(", "));
        }
        if let Some(hc) = x.health_check_node_port {
            let _ = writeln!(
                out,
                "  health-check node port {hc}: answered by kube-proxy (filter INPUT > KUBE-NODEPORTS accepts it)"
            );
        }
        if let Some(s) = x.affinity_seconds {
            let _ = writeln!(
                out,
                "  a client IP keeps its endpoint for {s}s after its last packet (-m recent in the set's chain)"
            );
        }
        out.push('\n');
        if x.endpoints.is_empty() {
            out.push_str("  no endpoints\n");
            continue;
        }
        let set_head = |k: &str, s: &EndpointSet| match s.chain {
            Some(c) => format!("{k} ({c})"),
            None => format!("{k} (no chain: empty)"),
        };
        let mut head = vec!["ENDPOINT".to_string(), "NODE".into(), "CONDITIONS".into()];
        head.extend(x.cluster_set.as_ref().map(|s| set_head("CLUSTER SET", s)));
        head.extend(x.local_set.as_ref().map(|s| set_head("LOCAL SET", s)));
        head.push("CHAIN".into());
        let mut rows = vec![head];
        for (i, e) in x.endpoints.iter().enumerate() {
            let mut row = vec![
                e.address.clone(),
                e.node.clone().unwrap_or_else(|| "-".into()),
                conditions(e.ready, e.serving, e.terminating),
            ];
            let cell = |s: &EndpointSet, why: &Option<Exclusion>| match why {
                Some(w) => exclusion(w),
                None if s.members.contains(&i) => share(s),
                None => "-".into(),
            };
            row.extend(x.cluster_set.as_ref().map(|s| cell(s, &e.cluster_excluded)));
            row.extend(x.local_set.as_ref().map(|s| cell(s, &e.local_excluded)));
            row.push(e.sep.map_or_else(|| "-".to_string(), |c| c.to_string()));
            rows.push(row);
        }
        table(&mut out, "  ", &rows);
    }
    if ports
        .iter()
        .any(|x| x.endpoints.iter().any(|e| e.sep.is_some()))
    {
        out.push_str(
            "\nEach set picks one of its endpoints at random, in equal shares. An endpoint that reaches\n\
             itself through the Service is always masqueraded (a hairpin rule in its endpoint chain).\n",
        );
    }
    out
}

fn set_json(x: &PortExplanation, s: &Option<EndpointSet>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "chain": s.chain.map(|c| c.to_string()),
            "endpoints": s.members.iter().map(|&i| json!({
                "address": x.endpoints[i].address,
                "probability": s.share(),
            })).collect::<Vec<_>>(),
        }),
    }
}

fn exclusion_json(e: &Option<Exclusion>) -> Value {
    match e {
        None => Value::Null,
        Some(Exclusion::NotReady) => json!({"reason": "NotReady"}),
        Some(Exclusion::TerminatingNotServing) => json!({"reason": "TerminatingNotServing"}),
        Some(Exclusion::TerminatingWithReady) => json!({"reason": "TerminatingWithReadyEndpoints"}),
        Some(Exclusion::TopologyHints { zones, nodes }) => {
            json!({"reason": "TopologyHints", "forZones": zones, "forNodes": nodes})
        }
        Some(Exclusion::OtherNode(n)) => json!({"reason": "OtherNode", "node": n}),
    }
}

/// The JSON explanation of `ports`.
pub fn json(ports: &[PortExplanation], node: &str) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|x| {
            let mut fields = header(x).json();
            let rest = json!({
                "paths": x.paths.iter().map(|p| json!({
                    "kind": format!("{:?}", p.kind),
                    "addresses": p.addresses,
                    "port": p.port,
                    "sourceRanges": p.source_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "routes": p.routes.iter().map(|r| json!({
                        "from": format!("{:?}", r.origin),
                        "chains": r.chains,
                        "masquerade": matches!(r.verdict, Verdict::Endpoints(_)) && r.masquerade.is_some(),
                        "masqueradeReason": r.masquerade.map(|m| format!("{m:?}")),
                        "verdict": match r.verdict {
                            Verdict::Endpoints(SetKind::Cluster) => "ClusterSet",
                            Verdict::Endpoints(SetKind::Local) => "LocalSet",
                            Verdict::RejectNoEndpoints => "RejectNoEndpoints",
                            Verdict::DropNoLocalEndpoints => "DropNoLocalEndpoints",
                            Verdict::DropFirewall => "DropFirewall",
                        },
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "healthCheckNodePort": x.health_check_node_port,
                "clusterSet": set_json(x, &x.cluster_set),
                "localSet": set_json(x, &x.local_set),
                "endpoints": x.endpoints.iter().map(|e| json!({
                    "address": e.address,
                    "node": e.node,
                    "ready": e.ready,
                    "serving": e.serving,
                    "terminating": e.terminating,
                    "chain": e.sep.map(|c| c.to_string()),
                    "clusterExcluded": exclusion_json(&e.cluster_excluded),
                    "localExcluded": exclusion_json(&e.local_excluded),
                })).collect::<Vec<_>>(),
                "chains": x.chains.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            if let Value::Object(rest) = rest {
                fields.extend(rest);
            }
            Value::Object(fields)
        })
        .collect();
    json!({ "node": node, "ports": ports })
}

/// The opening lines' facts of one port.
fn header(x: &PortExplanation) -> Header<'_> {
    Header {
        name: &x.name,
        protocol: x.protocol,
        port: x.port,
        family: x.family,
        mode: "",
        internal_policy: x.internal_policy,
        external_policy: x.external_policy,
        affinity_seconds: x.affinity_seconds,
        local_traffic: x.local_traffic.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rulegen::{Protocol, ServicePort, ServicePortName};

    fn model() -> Model {
        let sp = |ns: &str, n: &str, p: &str, port| {
            ServicePort::cluster_ip(
                ServicePortName::new(ns, n, p),
                Protocol::Tcp,
                "10.96.0.1".parse().unwrap(),
                port,
            )
        };
        Model {
            services: vec![
                sp("default", "frontend", "http", 80),
                sp("default", "frontend", "metrics", 9090),
                sp("kube-system", "kube-dns", "dns", 53),
            ],
        }
    }

    #[test]
    fn selects_by_name_port_name_and_number() {
        let m = model();
        assert_eq!(select(&m, "default/frontend").unwrap(), vec![0, 1]);
        assert_eq!(select(&m, "default/frontend:metrics").unwrap(), vec![1]);
        assert_eq!(select(&m, "default/frontend:80").unwrap(), vec![0]);
    }

    #[test]
    fn not_found_lists_close_matches() {
        let m = model();
        let e = select(&m, "default/frontnd").unwrap_err().to_string();
        assert!(e.contains("did you mean: default/frontend"), "{e}");
        let e = select(&m, "default/kube-dns").unwrap_err().to_string();
        assert!(e.contains("kube-system/kube-dns"), "{e}");
        let e = select(&m, "default/frontend:grpc").unwrap_err().to_string();
        assert!(e.contains("http (80 tcp)"), "{e}");
        assert!(select(&m, "frontend").is_err());
    }

    #[test]
    fn output_flag_is_found_among_the_node_flags() {
        #[derive(clap::Parser)]
        struct Explain {
            #[command(flatten)]
            args: ExplainArgs,
        }
        let parsed = <Explain as clap::Parser>::try_parse_from([
            "explain",
            "--objects",
            "x",
            "ns/web",
            "--output=json",
            "--masquerade-all",
        ])
        .unwrap();
        assert_eq!(parsed.args.output, OutputFormat::Json);
        assert_eq!(parsed.args.flags.objects, [std::path::PathBuf::from("x")]);
        assert_eq!(
            parsed.args.flags.configuration.iptables.masquerade_all,
            Some(true)
        );
    }
}
