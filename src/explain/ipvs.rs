//! `explain` in IPVS mode: formats `rulegen::analysis::explain::ipvs`'s reading of the IPVS render as
//! aligned text or JSON, in the iptables-mode output's layout where the two say the same thing.

use std::fmt::Write as _;

use rulegen::TrafficPolicy;
use rulegen::analysis::explain::ipvs::{
    IpvsExplanation, IpvsMasquerade, IpvsOrigin, IpvsPath, IpvsVerdict, Membership, Selection,
    addr_port, scheduler_flags,
};
use rulegen::render::ipvs::VirtualServer;
use serde_json::{Value, json};

use super::{Header, conditions, exclusion, exclusion_json, path_kind, table, write_header};

fn origin(o: IpvsOrigin) -> &'static str {
    match o {
        IpvsOrigin::Any => "any source",
        IpvsOrigin::LocalPod => "local pods",
        IpvsOrigin::NotLocalPod => "not local pods",
        IpvsOrigin::FromServiceAddress => "Service addresses",
        IpvsOrigin::OtherSources => "other sources",
        IpvsOrigin::InSourceRanges => "in source ranges",
        IpvsOrigin::ThisNode => "this node",
        IpvsOrigin::OutsideSourceRanges => "outside source ranges",
    }
}

fn masquerade(m: Option<IpvsMasquerade>, v: IpvsVerdict) -> &'static str {
    if v != IpvsVerdict::RealServers {
        return "-";
    }
    match m {
        None => "kept",
        Some(IpvsMasquerade::MasqueradeAll) => "masqueraded (--masquerade-all)",
        Some(IpvsMasquerade::NotFromLocalPod) => "masqueraded (not from a local pod)",
        Some(IpvsMasquerade::FromServiceAddress) => "masqueraded (from a Service address)",
        Some(IpvsMasquerade::NodePort)
        | Some(IpvsMasquerade::ExternalIp)
        | Some(IpvsMasquerade::LoadBalancer) => "masqueraded (externalTrafficPolicy: Cluster)",
        Some(IpvsMasquerade::NodePortNumber) => "masqueraded (its port is also a node port)",
    }
}

fn selection_text(s: Selection) -> &'static str {
    match s {
        Selection::Cluster => "cluster-wide",
        Selection::Local => "this node's",
        Selection::LocalFallback => "fallback: cluster-wide",
    }
}

fn selection_json(s: Selection) -> &'static str {
    match s {
        Selection::Cluster => "Cluster",
        Selection::Local => "Local",
        Selection::LocalFallback => "LocalFallbackToCluster",
    }
}

fn verdict(p: &IpvsPath, v: IpvsVerdict) -> String {
    match v {
        IpvsVerdict::RealServers => {
            let n = p
                .virtual_servers
                .first()
                .map_or(0, |vs| vs.real_servers.len());
            let which = match p.selection {
                Selection::Cluster => "",
                Selection::Local => " (this node's)",
                Selection::LocalFallback => " (fallback: cluster-wide)",
            };
            format!("{n} real server{}{which}", if n == 1 { "" } else { "s" })
        }
        IpvsVerdict::NoRealServers => "no real servers: refused".into(),
        IpvsVerdict::DropSourceRanges => "DROP (KUBE-SOURCE-RANGES-FIREWALL)".into(),
        IpvsVerdict::DropNodeAccess => "DROP (KUBE-IPVS-OUT-FILTER)".into(),
    }
}

fn verdict_json(v: IpvsVerdict) -> &'static str {
    match v {
        IpvsVerdict::RealServers => "RealServers",
        IpvsVerdict::NoRealServers => "NoRealServers",
        IpvsVerdict::DropSourceRanges => "DropSourceRanges",
        IpvsVerdict::DropNodeAccess => "DropNodeAccess",
    }
}

/// `tcp 10.96.0.10:53`, or every virtual server of a path after one protocol word.
fn virtual_servers(x: &IpvsExplanation, p: &IpvsPath) -> String {
    if p.virtual_servers.is_empty() {
        return format!("{} {} on no node address", x.protocol, p.port);
    }
    let addrs: Vec<String> = p
        .virtual_servers
        .iter()
        .map(|vs| addr_port(&vs.addr, vs.port))
        .collect();
    format!("{} {}", x.protocol, addrs.join(", "))
}

/// `rr`, `mh, mh-port`, `rr, persistent 600s`.
fn scheduler(vs: &VirtualServer) -> String {
    let mut parts = vec![vs.scheduler.clone()];
    parts.extend(scheduler_flags(vs).iter().map(|f| f.to_string()));
    if let Some(t) = vs.persistence {
        parts.push(format!("persistent {t}s"));
    }
    parts.join(", ")
}

fn membership(m: &Membership) -> String {
    match m {
        Membership::RealServer { weight } => format!("weight {weight}"),
        Membership::Excluded(e) => exclusion(e),
        Membership::OtherOwner => "out: another port owns the virtual server".into(),
        Membership::NoVirtualServer => "no virtual server".into(),
    }
}

fn membership_json(m: &Membership) -> Value {
    match m {
        Membership::RealServer { weight } => json!({"realServer": true, "weight": weight}),
        Membership::Excluded(e) => json!({
            "realServer": false,
            "excluded": exclusion_json(&Some(e.clone())),
        }),
        Membership::OtherOwner => json!({
            "realServer": false,
            "excluded": {"reason": "OtherServiceOwnsVirtualServer"},
        }),
        Membership::NoVirtualServer => json!({
            "realServer": false,
            "excluded": {"reason": "NoVirtualServer"},
        }),
    }
}

/// The aligned text explanation of `ports` in IPVS mode.
pub fn text(ports: &[IpvsExplanation], node: &str) -> String {
    let mut out = String::new();
    let mut loopback_sets: Vec<&str> = Vec::new();
    for (n, x) in ports.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        write_header(&mut out, &header(x), node);

        let mut rows = vec![vec![
            "VIRTUAL SERVER".to_string(),
            "PATH".into(),
            "SCHEDULER".into(),
            "FROM".into(),
            "GOES TO".into(),
            "SOURCE".into(),
            "MATCHED BY".into(),
        ]];
        for p in &x.paths {
            let first = vec![
                virtual_servers(x, p),
                path_kind(p.kind).to_string(),
                p.virtual_servers.first().map_or("-".into(), scheduler),
            ];
            if p.routes.is_empty() {
                rows.push(first);
                continue;
            }
            for (i, r) in p.routes.iter().enumerate() {
                let mut row = if i == 0 {
                    first.clone()
                } else {
                    vec![String::new(); 3]
                };
                row.extend([
                    origin(r.origin).to_string(),
                    verdict(p, r.verdict),
                    masquerade(r.masquerade, r.verdict).to_string(),
                    r.matched.join(" > "),
                ]);
                rows.push(row);
            }
        }
        table(&mut out, "  ", &rows);
        for p in x.paths.iter().filter(|p| !p.source_ranges.is_empty()) {
            let _ = writeln!(
                out,
                "  load-balancer source ranges: {}",
                p.source_ranges.join(", ")
            );
        }
        let persistence = x
            .paths
            .iter()
            .flat_map(|p| &p.virtual_servers)
            .find_map(|vs| vs.persistence);
        if let Some(t) = persistence {
            let _ = writeln!(
                out,
                "  a client IP keeps its real server while it comes back within {t}s (IPVS persistence)"
            );
        }
        notes(&mut out, x);
        out.push('\n');

        if x.endpoints.is_empty() {
            out.push_str(
                "  no endpoints: the virtual servers have no real servers, and connections fail\n  (IPVS answers port unreachable)\n",
            );
        } else {
            let mut head = vec!["ENDPOINT".to_string(), "NODE".into(), "CONDITIONS".into()];
            head.push(format!(
                "CLUSTER IP ({})",
                selection_text(x.internal_selection)
            ));
            if let Some(s) = x.external_selection {
                let kinds: Vec<String> = x.paths[1..]
                    .iter()
                    .map(|p| path_kind(p.kind).to_uppercase())
                    .collect();
                head.push(format!("{} ({})", kinds.join(", "), selection_text(s)));
            }
            let mut rows = vec![head];
            for e in &x.endpoints {
                let mut row = vec![
                    e.address.clone(),
                    e.node.clone().unwrap_or_else(|| "-".into()),
                    conditions(e.ready, e.serving, e.terminating),
                    membership(&e.internal),
                ];
                row.extend(e.external.as_ref().map(membership));
                rows.push(row);
            }
            table(&mut out, "  ", &rows);
        }
        out.push('\n');

        let mut rows = vec![vec!["IPSET".to_string(), "MEMBER".into()]];
        for m in &x.ipset_members {
            rows.push(vec![m.set.clone(), m.member.clone()]);
        }
        table(&mut out, "  ", &rows);
        for m in &x.ipset_members {
            if m.set.ends_with("LOOP-BACK") && !loopback_sets.contains(&m.set.as_str()) {
                loopback_sets.push(&m.set);
            }
        }
    }
    if ports
        .iter()
        .flat_map(|x| &x.paths)
        .flat_map(|p| &p.virtual_servers)
        .any(|vs| !vs.real_servers.is_empty())
    {
        out.push_str(
            "\nEach virtual server's scheduler picks one of its real servers and forwards to it by NAT\n\
             (ipvsadm -m).",
        );
        if let Some(set) = loopback_sets.first() {
            let _ = write!(
                out,
                " An endpoint on this node that reaches itself through the Service is always\n\
                 masqueraded (its {set} member).",
            );
        }
        out.push('\n');
    }
    out
}

/// Lines for what the tables cannot show: fallbacks, the health-check node port, virtual
/// servers another port owns.
fn notes(out: &mut String, x: &IpvsExplanation) {
    if x.internal_selection == Selection::LocalFallback {
        let empty = x.paths[0]
            .virtual_servers
            .iter()
            .all(|vs| vs.real_servers.is_empty());
        out.push_str(if empty {
            "  internalTrafficPolicy Local and no endpoint on this node: the cluster IP has no real servers\n"
        } else {
            "  internalTrafficPolicy Local and no endpoint on this node: the cluster IP takes the\n  cluster's endpoints (IPVS mode's fallback; iptables mode drops)\n"
        });
    }
    if x.external_selection == Some(Selection::LocalFallback)
        && x.external_policy == TrafficPolicy::Local
    {
        out.push_str(
            "  externalTrafficPolicy Local and no endpoint on this node: the external virtual servers take\n  the cluster's endpoints, still without masquerading (IPVS mode's fallback; iptables mode drops)\n",
        );
    }
    if let Some(hc) = x.health_check_node_port {
        let hc = hc.to_string();
        // The set's name for the family, from the members the render holds.
        let set = x
            .ipset_members
            .iter()
            .find(|m| m.member == hc && m.set.ends_with("HEALTH-CHECK-NODE-PORT"))
            .map_or("", |m| m.set.as_str());
        let _ = writeln!(
            out,
            "  health-check node port {hc}: answered by kube-proxy ({set} lets it in)"
        );
    }
    let name = x.name.to_string();
    for vs in x
        .paths
        .iter()
        .flat_map(|p| &p.virtual_servers)
        .filter(|vs| vs.service != name)
    {
        let _ = writeln!(
            out,
            "  {} {} belongs to {}, which claimed it first: its real servers are that port's",
            x.protocol,
            addr_port(&vs.addr, vs.port),
            vs.service
        );
    }
}

/// The JSON explanation of `ports` in IPVS mode.
pub fn json(ports: &[IpvsExplanation], node: &str) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|x| {
            let mut fields = header(x).json();
            let rest = json!({
                "internalSelection": selection_json(x.internal_selection),
                "externalSelection": x.external_selection.map(selection_json),
                "paths": x.paths.iter().map(|p| json!({
                    "kind": format!("{:?}", p.kind),
                    "selection": selection_json(p.selection),
                    "virtualServers": p.virtual_servers.iter().map(|vs| json!({
                        "protocol": vs.protocol.as_str(),
                        "address": vs.addr.to_string(),
                        "port": vs.port,
                        "scheduler": vs.scheduler,
                        "schedulerFlags": scheduler_flags(vs),
                        "persistenceSeconds": vs.persistence,
                        "service": vs.service,
                        "realServers": vs.real_servers.iter().map(|r| json!({
                            "address": addr_port(&r.addr, r.port),
                            "weight": r.weight,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "sourceRanges": p.source_ranges,
                    "routes": p.routes.iter().map(|r| json!({
                        "from": format!("{:?}", r.origin),
                        "matched": r.matched,
                        "masquerade": r.verdict == IpvsVerdict::RealServers && r.masquerade.is_some(),
                        "masqueradeReason": r.masquerade.map(|m| format!("{m:?}")),
                        "verdict": verdict_json(r.verdict),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "endpoints": x.endpoints.iter().map(|e| json!({
                    "address": e.address,
                    "node": e.node,
                    "ready": e.ready,
                    "serving": e.serving,
                    "terminating": e.terminating,
                    "clusterIp": membership_json(&e.internal),
                    "external": e.external.as_ref().map(membership_json),
                })).collect::<Vec<_>>(),
                "healthCheckNodePort": x.health_check_node_port,
                "ipsets": x.ipset_members.iter().map(|m| json!({
                    "set": m.set,
                    "member": m.member,
                })).collect::<Vec<_>>(),
            });
            if let Value::Object(rest) = rest {
                fields.extend(rest);
            }
            Value::Object(fields)
        })
        .collect();
    json!({ "node": node, "mode": "ipvs", "ports": ports })
}

/// The opening lines' facts of one port.
fn header(x: &IpvsExplanation) -> Header<'_> {
    Header {
        name: &x.name,
        protocol: x.protocol,
        port: x.port,
        family: x.family,
        mode: ", IPVS mode",
        internal_policy: x.internal_policy,
        external_policy: x.external_policy,
        affinity_seconds: x.affinity_seconds,
        local_traffic: x.local_traffic.as_deref(),
    }
}
