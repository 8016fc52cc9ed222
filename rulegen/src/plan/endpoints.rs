//! Which endpoints each traffic policy may use, as upstream's `CategorizeEndpoints` decides,
//! and the orders the modes list a port's endpoints in.

use crate::model::{Endpoint, IpFamily, ServicePort, TrafficPolicy};

/// The port's endpoints of `family` in iptables mode's order: by their `IP:port` text
/// (upstream sorts the strings), one per address (the renderer computes the same order into
/// reused buffers).
pub fn by_address_text(sp: &ServicePort, family: IpFamily) -> Vec<(String, &Endpoint)> {
    let mut eps: Vec<(String, &Endpoint)> = sp
        .endpoints
        .iter()
        .filter(|e| family.contains(&e.ip))
        .map(|e| (e.addr_string(), e))
        .collect();
    eps.sort_by(|a, b| a.0.cmp(&b.0));
    eps.dedup_by(|a, b| a.0 == b.0);
    eps
}

/// The port's endpoints of `family` in IPVS mode's order: by address and port (its real
/// servers are deduplicated later, as upstream's are).
pub fn by_address(sp: &ServicePort, family: IpFamily) -> Vec<&Endpoint> {
    let mut eps: Vec<&Endpoint> = sp
        .endpoints
        .iter()
        .filter(|e| family.contains(&e.ip))
        .collect();
    eps.sort_by_key(|e| (e.ip, e.port));
    eps
}

/// The endpoint sets one service port's chains are built from, as indices into the endpoint
/// list given to [`categorize`] (which is sorted, so index order is upstream's order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for Cluster-policy traffic (`KUBE-SVC-*`).
    pub cluster: Vec<usize>,
    /// Endpoints for Local-policy traffic (`KUBE-SVL-*`).
    pub local: Vec<usize>,
    /// Every endpoint some chain can reach (one `KUBE-SEP-*` each).
    pub all_reachable: Vec<usize>,
    /// Whether the service has any usable endpoint at all (else REJECT).
    pub has_any: bool,
}

/// Whether a service port accepts traffic on node ports, external IPs or load-balancer IPs.
pub fn externally_accessible(sp: &ServicePort) -> bool {
    sp.node_port.is_some() || !sp.external_ips.is_empty() || !sp.load_balancer_ips.is_empty()
}

/// `externalTrafficPolicy: Local` on a service port that has external destinations.
pub fn external_policy_local(sp: &ServicePort) -> bool {
    externally_accessible(sp) && sp.external_traffic_policy == TrafficPolicy::Local
}

/// `internalTrafficPolicy: Local`.
pub fn internal_policy_local(sp: &ServicePort) -> bool {
    sp.internal_traffic_policy == TrafficPolicy::Local
}

/// Whether the port needs a Cluster endpoint set (also needed for eTP=Local short-circuits).
pub fn uses_cluster_endpoints(sp: &ServicePort) -> bool {
    !internal_policy_local(sp) || externally_accessible(sp)
}

/// Whether the port needs a Local endpoint set.
pub fn uses_local_endpoints(sp: &ServicePort) -> bool {
    internal_policy_local(sp) || external_policy_local(sp)
}

/// Which topology filter applies to a service port's Cluster endpoint set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    /// No filtering.
    None,
    /// Only endpoints hinted for this node (`trafficDistribution: PreferSameNode`).
    SameNode,
    /// Only endpoints hinted for this node's zone (`PreferSameZone`/`PreferClose`, topology hints).
    SameZone,
}

fn hinted(hints: Option<&[String]>, want: Option<&str>) -> bool {
    match (hints, want) {
        (Some(h), Some(w)) => h.iter().any(|x| x == w),
        _ => false,
    }
}

/// Upstream's `topologyModeFromHints`: hints are honoured only when every ready endpoint carries
/// one of that kind and at least one names this node (or its zone); otherwise they are ignored.
fn topology_mode(endpoints: &[&Endpoint], node_name: &str, zone: Option<&str>) -> TopologyMode {
    let node = (!node_name.is_empty()).then_some(node_name);
    let (mut all_node, mut for_node) = (true, false);
    let (mut all_zone, mut for_zone) = (true, false);
    for ep in endpoints.iter().filter(|e| e.ready) {
        match ep.node_hints() {
            Some(h) if !h.is_empty() => for_node |= hinted(Some(h), node),
            _ => all_node = false,
        }
        match ep.zone_hints() {
            Some(h) if !h.is_empty() => for_zone |= hinted(Some(h), zone),
            _ => all_zone = false,
        }
    }
    if all_node && for_node {
        TopologyMode::SameNode
    } else if all_zone && for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

/// Splits `endpoints` (already of the rendered family and sorted) into the sets upstream uses.
pub fn categorize(
    sp: &ServicePort,
    endpoints: &[&Endpoint],
    node_name: &str,
    node_zone: Option<&str>,
) -> Categorized {
    let mut out = Categorized::default();
    categorize_into(&mut out, sp, endpoints, node_name, node_zone);
    out
}

/// [`categorize`] into `out`, reusing its allocations (the renderer calls this per service port).
pub fn categorize_into(
    out: &mut Categorized,
    sp: &ServicePort,
    endpoints: &[&Endpoint],
    node_name: &str,
    node_zone: Option<&str>,
) {
    let is_local =
        |e: &Endpoint| !node_name.is_empty() && e.node_name.as_deref() == Some(node_name);
    let select = |into: &mut Vec<usize>, keep: &dyn Fn(&Endpoint) -> bool| {
        into.clear();
        into.extend(
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| keep(e))
                .map(|(i, _)| i),
        );
    };
    out.cluster.clear();
    out.local.clear();
    out.all_reachable.clear();
    out.has_any = false;
    let mut use_topology = false;

    if uses_cluster_endpoints(sp) {
        let mode = topology_mode(endpoints, node_name, node_zone);
        use_topology = mode != TopologyMode::None;
        let node = (!node_name.is_empty()).then_some(node_name);
        let available = |e: &Endpoint| match mode {
            TopologyMode::None => true,
            TopologyMode::SameNode => hinted(e.node_hints(), node),
            TopologyMode::SameZone => hinted(e.zone_hints(), node_zone),
        };
        select(&mut out.cluster, &|e| e.ready && available(e));
        // No ready endpoint anywhere: fall back to serving-and-terminating ones (KEP-1669).
        if out.cluster.is_empty() {
            select(&mut out.cluster, &|e| e.serving && e.terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }

    if !uses_local_endpoints(sp) {
        out.all_reachable.extend_from_slice(&out.cluster);
        return;
    }

    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for e in endpoints {
        if e.ready {
            out.has_any = true;
            local_ready |= is_local(e);
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_serving_terminating |= is_local(e);
        }
    }
    let mut use_terminating = false;
    if local_ready {
        select(&mut out.local, &|e| e.ready && is_local(e));
    } else if local_serving_terminating {
        use_terminating = true;
        select(&mut out.local, &|e| {
            is_local(e) && e.serving && e.terminating
        });
    }

    if !uses_cluster_endpoints(sp) {
        out.all_reachable.extend_from_slice(&out.local);
        return;
    }
    out.all_reachable.extend_from_slice(&out.cluster);
    if use_topology || use_terminating {
        // The local set may then hold endpoints the cluster set lacks; merge the two.
        out.all_reachable.extend_from_slice(&out.local);
        out.all_reachable.sort_unstable();
        out.all_reachable.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn sp() -> ServicePort {
        ServicePort::cluster_ip(
            ServicePortName::new("ns", "svc", "p"),
            Protocol::Tcp,
            "10.96.0.1".parse().unwrap(),
            80,
        )
    }

    fn ep(last: u8, zones: &[&str], nodes: &[&str]) -> Endpoint {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        Endpoint {
            hints: Some(Box::new(crate::model::Hints {
                zones: list(zones),
                nodes: list(nodes),
            })),
            node_name: Some("node-b".into()),
            ..Endpoint::ready(format!("10.244.0.{last}").parse().unwrap(), 80)
        }
    }

    fn cluster(eps: &[Endpoint]) -> Vec<usize> {
        let refs: Vec<&Endpoint> = eps.iter().collect();
        categorize(&sp(), &refs, "node-a", Some("zone-a")).cluster
    }

    #[test]
    fn zone_hints_filter_when_complete() {
        let eps = [ep(1, &["zone-a"], &[]), ep(2, &["zone-b"], &[])];
        assert_eq!(cluster(&eps), vec![0]);
    }

    #[test]
    fn a_missing_hint_disables_topology() {
        let eps = [ep(1, &["zone-a"], &[]), ep(2, &[], &[])];
        assert_eq!(cluster(&eps), vec![0, 1]);
    }

    #[test]
    fn hints_for_other_zones_only_are_ignored() {
        let eps = [ep(1, &["zone-b"], &[]), ep(2, &["zone-c"], &[])];
        assert_eq!(cluster(&eps), vec![0, 1]);
    }

    #[test]
    fn node_hints_win_over_zone_hints() {
        let eps = [
            ep(1, &["zone-a"], &["node-b"]),
            ep(2, &["zone-a"], &["node-a"]),
        ];
        assert_eq!(cluster(&eps), vec![1]);
    }

    #[test]
    fn unready_endpoints_do_not_count_for_hints() {
        let mut unhinted = ep(3, &[], &[]);
        unhinted.ready = false;
        let eps = [ep(1, &["zone-a"], &[]), ep(2, &["zone-b"], &[]), unhinted];
        assert_eq!(cluster(&eps), vec![0]);
    }

    #[test]
    fn terminating_fallback_only_without_ready_endpoints() {
        let mut a = ep(1, &[], &[]);
        a.ready = false;
        a.terminating = true;
        let mut b = ep(2, &[], &[]);
        b.ready = false;
        b.terminating = true;
        b.serving = false;
        assert_eq!(cluster(&[a.clone(), b.clone()]), vec![0]);
        assert_eq!(cluster(&[a, b, ep(3, &[], &[])]), vec![2]);
    }

    #[test]
    fn local_set_falls_back_independently() {
        let mut s = sp();
        s.internal_traffic_policy = TrafficPolicy::Local;
        let mut local_term = ep(1, &[], &[]);
        local_term.node_name = Some("node-a".into());
        local_term.ready = false;
        local_term.terminating = true;
        let remote_ready = ep(2, &[], &[]);
        let refs = [&local_term, &remote_ready];
        let c = categorize(&s, &refs, "node-a", None);
        assert_eq!(c.local, vec![0]);
        assert!(c.cluster.is_empty());
        assert_eq!(c.all_reachable, vec![0]);
        assert!(c.has_any);
    }
}
