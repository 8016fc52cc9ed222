//! Which endpoints each traffic policy may use, as upstream's `CategorizeEndpoints` decides.

use crate::model::{Endpoint, ServicePort, TrafficPolicy};

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

/// Topology hints are honoured only when every ready endpoint has one and one names our zone.
fn can_use_topology(endpoints: &[&Endpoint], zone: Option<&str>) -> bool {
    let Some(zone) = zone else { return false };
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        match &ep.zone_hints {
            Some(hints) if !hints.is_empty() => {
                if hints.iter().any(|h| h == zone) {
                    has_for_zone = true;
                }
            }
            _ => return false,
        }
    }
    has_for_zone
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
        use_topology = can_use_topology(endpoints, node_zone);
        let in_zone = |e: &Endpoint| {
            e.zone_hints
                .as_ref()
                .is_some_and(|h| node_zone.is_some_and(|z| h.iter().any(|x| x == z)))
        };
        select(&mut out.cluster, &|e| {
            e.ready && (!use_topology || in_zone(e))
        });
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
