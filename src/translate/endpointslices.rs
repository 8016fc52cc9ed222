//! EndpointSlices → the endpoints of each service port (upstream `endpointslicecache.go`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use rulegen::{Endpoint, Protocol, ServicePort};

use super::services::{port_number, protocol, service_key};
use super::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, ServiceKey, label, ns_name,
};
use crate::addr::parse_ip_sloppy;
use crate::objects::{Objects, Sourced};
use crate::warning::Warning;

/// One usable port of a slice.
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// Fills in the endpoints of `services` from every EndpointSlice in `objects`.
///
/// Slices join their Service by the `kubernetes.io/service-name` label in the same namespace
/// and are read in name order; the same `IP:port` in two slices counts once (see [`rank`]).
pub fn attach(
    services: &mut BTreeMap<ServiceKey, Vec<ServicePort>>,
    objects: &Objects,
    node_name: &str,
    warnings: &mut Vec<Warning>,
) {
    let all_services: BTreeSet<ServiceKey> = objects
        .services
        .iter()
        .map(|s| service_key(&s.object))
        .collect();
    for (key, slices) in group(objects, warnings) {
        let Some(ports) = services.get_mut(&key) else {
            // A Service that was skipped keeps its slices unused; one that is missing is worth a note.
            if !all_services.contains(&key) {
                for s in &slices {
                    warnings.push(Warning::note(format!(
                        "EndpointSlice {} belongs to Service {}/{}, which is not among the objects ({})",
                        ns_name(&s.object.metadata),
                        key.0,
                        key.1,
                        s.origin
                    )));
                }
            }
            continue;
        };
        merge(ports, &slices, node_name, warnings);
    }
}

/// Usable slices grouped by Service, each group sorted by slice name.
fn group<'a>(
    objects: &'a Objects,
    warnings: &mut Vec<Warning>,
) -> BTreeMap<ServiceKey, Vec<&'a Sourced<Arc<EndpointSlice>>>> {
    let mut groups: BTreeMap<ServiceKey, BTreeMap<String, &Sourced<Arc<EndpointSlice>>>> =
        BTreeMap::new();
    for sourced in &objects.endpoint_slices {
        let slice = &sourced.object;
        let meta = &slice.metadata;
        let what = || format!("EndpointSlice {}", ns_name(meta));
        let origin = &sourced.origin;
        if let Some(v) = label(meta, LABEL_SERVICE_PROXY_NAME) {
            warnings.push(Warning::note(format!(
                "skipping {}: it is labelled {LABEL_SERVICE_PROXY_NAME}={v:?} (served by another proxy) ({origin})",
                what()
            )));
            continue;
        }
        if label(meta, LABEL_HEADLESS).is_some() {
            warnings.push(Warning::note(format!(
                "skipping {}: it is labelled {LABEL_HEADLESS} ({origin})",
                what()
            )));
            continue;
        }
        let Some(service) = label(meta, LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
            warnings.push(Warning::warn(format!(
                "skipping {}: it has no {LABEL_SERVICE_NAME} label ({origin})",
                what()
            )));
            continue;
        };
        match slice.address_type.as_str() {
            "IPv4" | "IPv6" => {}
            // Upstream ignores FQDN slices: there is no address to DNAT to.
            "FQDN" => {
                warnings.push(Warning::note(format!(
                    "skipping {}: addressType FQDN ({origin})",
                    what()
                )));
                continue;
            }
            other => {
                warnings.push(Warning::warn(format!(
                    "skipping {}: invalid addressType {other:?} ({origin})",
                    what()
                )));
                continue;
            }
        }
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            service.to_string(),
        );
        let name = meta.name.clone().unwrap_or_default();
        let group = groups.entry(key).or_default();
        if group.contains_key(&name) {
            warnings.push(Warning::warn(format!(
                "skipping {}: it appears more than once; the first one is used ({origin})",
                what()
            )));
            continue;
        }
        group.insert(name, sourced);
    }
    groups
        .into_iter()
        .map(|(k, g)| (k, g.into_values().collect()))
        .collect()
}

/// Adds the endpoints of `slices` (one Service's, in name order) to its `ports`.
fn merge(
    ports: &mut [ServicePort],
    slices: &[&Sourced<Arc<EndpointSlice>>],
    node_name: &str,
    warnings: &mut Vec<Warning>,
) {
    // Index of each endpoint in its port's list, by `IP:port`, for de-duplication.
    let mut index: Vec<HashMap<String, usize>> = vec![HashMap::new(); ports.len()];
    for sourced in slices {
        let slice_ports = slice_ports(sourced, warnings);
        let endpoints = slice_endpoints(sourced, warnings);
        for sp in &slice_ports {
            let Some(target) = ports
                .iter()
                .position(|p| p.name.port == sp.name && p.protocol == sp.protocol)
            else {
                continue;
            };
            for template in &endpoints {
                let ep = Endpoint {
                    port: sp.port,
                    ..template.clone()
                };
                let key = ep.addr_string();
                let list = &mut ports[target].endpoints;
                match index[target].get(&key) {
                    None => {
                        index[target].insert(key, list.len());
                        list.push(ep);
                    }
                    Some(&i) => {
                        if rank(&ep, node_name) > rank(&list[i], node_name) {
                            list[i] = ep;
                        }
                    }
                }
            }
        }
    }
    for p in ports.iter_mut() {
        p.endpoints.sort_by_cached_key(Endpoint::addr_string);
    }
}

/// Which of two copies of one `IP:port` wins: a non-terminating one (upstream: a pod reusing
/// a terminating pod's IP), then a ready one, then a local one (older upstream); on a tie the
/// copy from the slice first by name. Upstream leaves ties to Go's map order; we must not.
fn rank(ep: &Endpoint, node_name: &str) -> (bool, bool, bool) {
    let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
    (!ep.terminating, ep.ready, local)
}

/// The slice's ports that can carry traffic; the rest are skipped with a warning.
fn slice_ports(
    sourced: &Sourced<Arc<EndpointSlice>>,
    warnings: &mut Vec<Warning>,
) -> Vec<SlicePort> {
    let slice = &sourced.object;
    let mut out = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let skip = |why: String| {
            Warning::warn(format!(
                "EndpointSlice {}: skipping ports[{i}]: {why} ({})",
                ns_name(&slice.metadata),
                sourced.origin
            ))
        };
        // A nil name cannot be matched to a service port (upstream ignores such ports).
        let Some(name) = p.name.clone() else {
            warnings.push(skip("it has no name".to_string()));
            continue;
        };
        let port = match p.port {
            None | Some(0) => {
                warnings.push(skip("it has no port number".to_string()));
                continue;
            }
            Some(n) => match port_number(n) {
                Some(p) => p,
                None => {
                    warnings.push(skip(format!("port {n} is out of range (1-65535)")));
                    continue;
                }
            },
        };
        let protocol = match protocol(p.protocol.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                warnings.push(skip(e));
                continue;
            }
        };
        out.push(SlicePort {
            name,
            protocol,
            port,
        });
    }
    out
}

/// The slice's usable endpoints, with port 0 (filled in per slice port).
fn slice_endpoints(
    sourced: &Sourced<Arc<EndpointSlice>>,
    warnings: &mut Vec<Warning>,
) -> Vec<Endpoint> {
    let slice = &sourced.object;
    let mut out = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let skip = |why: String| {
            Warning::warn(format!(
                "EndpointSlice {}: skipping endpoints[{i}]: {why} ({})",
                ns_name(&slice.metadata),
                sourced.origin
            ))
        };
        // Upstream uses the first address only; the API says the rest are for future use.
        let Some(address) = ep.addresses.first() else {
            warnings.push(skip("it has no addresses".to_string()));
            continue;
        };
        let Some(ip) = parse_ip_sloppy(address) else {
            warnings.push(skip(format!(
                "invalid address {address:?}: not an IP address"
            )));
            continue;
        };
        if let Some(why) = unroutable(&ip) {
            warnings.push(skip(format!("address {address:?} is {why}")));
            continue;
        }
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        // Upstream's endpointslicecache reads a nil serving as true (not as "same as ready",
        // which the API docs suggest); we follow kube-proxy, not the docs.
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let zone_hints = ep
            .hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .filter(|z| !z.is_empty())
            .map(|z| z.iter().map(|z| z.name.clone()).collect());
        let node_hints = ep
            .hints
            .as_ref()
            .and_then(|h| h.for_nodes.as_ref())
            .filter(|n| !n.is_empty())
            .map(|n| n.iter().map(|n| n.name.clone()).collect());
        out.push(Endpoint {
            ip,
            port: 0,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            zone_hints,
            node_hints,
        });
    }
    out
}

/// Addresses the API rejects as endpoints, because DNAT to them cannot work.
fn unroutable(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    } {
        Some("link-local")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
