//! EndpointSlices → the endpoints of each service port (upstream `endpointslicecache.go`).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use rulegen::{Endpoint, Protocol, ServicePort};

use super::api_names::{NameRule, printable};
use super::services::{port_number, protocol};
use super::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, ServiceKey, label, ns_name,
};
use crate::addr::parse_ip_sloppy;
use crate::objects::Origin;
use crate::warning::Warning;

/// One usable port of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// An EndpointSlice reduced to what the proxy reads, parsed once when it arrives.
///
/// The agent's watch store keeps these instead of the API objects: a k8s-openapi endpoint is
/// about 450 bytes in memory, its parsed form under 100, and at 100,000 endpoints the
/// difference was a third of the agent's peak. What is skipped and why is kept as the warnings
/// the translation reports, so a digest translates exactly as the object would.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceDigest {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.resourceVersion`, for the watch store.
    pub resource_version: Option<String>,
    /// `metadata.uid`, for the watch store.
    pub uid: Option<String>,
    /// Where it was read from.
    pub origin: Origin,
    /// The name of the Service it belongs to, or the note or warning that skips it.
    service: Result<String, Warning>,
    ports: Vec<SlicePort>,
    port_warnings: Vec<Warning>,
    endpoints: Vec<Endpoint>,
    endpoint_warnings: Vec<Warning>,
}

/// Shares node names between the endpoints of every slice it digests.
#[derive(Debug, Default)]
pub struct NodeNames(HashSet<Arc<str>>);

impl NodeNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        self.0.insert(n.clone());
        n
    }
}

/// Parses one EndpointSlice, read from `origin`, into its [`SliceDigest`].
pub fn digest(slice: &EndpointSlice, origin: &Origin, names: &mut NodeNames) -> SliceDigest {
    let meta = &slice.metadata;
    let mut port_warnings = Vec::new();
    let mut endpoint_warnings = Vec::new();
    let service = membership(slice, origin);
    let (ports, endpoints) = if service.is_ok() {
        (
            slice_ports(slice, origin, &mut port_warnings),
            slice_endpoints(slice, origin, names, &mut endpoint_warnings),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    SliceDigest {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
        uid: meta.uid.clone(),
        origin: origin.clone(),
        service,
        ports,
        port_warnings,
        endpoints,
        endpoint_warnings,
    }
}

impl SliceDigest {
    fn ns_name(&self) -> String {
        printable(&self.namespace, &self.name)
    }
}

/// Fills in the endpoints of `services` from every digested EndpointSlice.
///
/// Slices join their Service by the `kubernetes.io/service-name` label in the same namespace
/// and are read in name order; the same `IP:port` in two slices counts once (see [`rank`]).
pub fn attach_digests<D: Borrow<SliceDigest>>(
    services: &mut BTreeMap<ServiceKey, Vec<ServicePort>>,
    all_services: &BTreeSet<ServiceKey>,
    digests: &[D],
    node_name: &str,
    warnings: &mut Vec<Warning>,
) {
    for (key, slices) in group(digests, warnings) {
        let Some(ports) = services.get_mut(&key) else {
            // A Service that was skipped keeps its slices unused; one that is missing is worth a note.
            if !all_services.contains(&key) {
                for s in &slices {
                    warnings.push(Warning::note(format!(
                        "EndpointSlice {} belongs to Service {}/{}, which is not among the objects ({})",
                        s.ns_name(),
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
fn group<'a, D: Borrow<SliceDigest>>(
    digests: &'a [D],
    warnings: &mut Vec<Warning>,
) -> BTreeMap<ServiceKey, Vec<&'a SliceDigest>> {
    let mut groups: BTreeMap<ServiceKey, BTreeMap<&str, &SliceDigest>> = BTreeMap::new();
    for d in digests {
        let d = d.borrow();
        let service = match &d.service {
            Ok(s) => s,
            Err(w) => {
                warnings.push(w.clone());
                continue;
            }
        };
        let group = groups
            .entry((d.namespace.clone(), service.clone()))
            .or_default();
        if group.contains_key(d.name.as_str()) {
            warnings.push(Warning::warn(format!(
                "skipping EndpointSlice {}: it appears more than once; the first one is used ({})",
                d.ns_name(),
                d.origin
            )));
            continue;
        }
        group.insert(&d.name, d);
    }
    groups
        .into_iter()
        .map(|(k, g)| (k, g.into_values().collect()))
        .collect()
}

/// The Service a slice belongs to, or why it is skipped (the labels upstream's informers filter
/// on, a missing service-name label, an address type without addresses to DNAT to).
fn membership(slice: &EndpointSlice, origin: &Origin) -> Result<String, Warning> {
    let meta = &slice.metadata;
    let what = || format!("EndpointSlice {}", ns_name(meta));
    if let Some(v) = label(meta, LABEL_SERVICE_PROXY_NAME) {
        return Err(Warning::note(format!(
            "skipping {}: it is labelled {LABEL_SERVICE_PROXY_NAME}={v:?} (served by another proxy) ({origin})",
            what()
        )));
    }
    if label(meta, LABEL_HEADLESS).is_some() {
        return Err(Warning::note(format!(
            "skipping {}: it is labelled {LABEL_HEADLESS} ({origin})",
            what()
        )));
    }
    // The names reach warnings and join the slice to a Service whose name reaches the rules.
    let names = NameRule::Dns1123Label
        .check("namespace", meta.namespace.as_deref().unwrap_or(""))
        .and_then(|()| {
            NameRule::Dns1123Subdomain.check("name", meta.name.as_deref().unwrap_or(""))
        });
    if let Err(why) = names {
        return Err(Warning::warn(format!(
            "skipping {}: {why} ({origin})",
            what()
        )));
    }
    let Some(service) = label(meta, LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
        return Err(Warning::warn(format!(
            "skipping {}: it has no {LABEL_SERVICE_NAME} label ({origin})",
            what()
        )));
    };
    if let Err(why) = NameRule::LabelValue.check(&format!("{LABEL_SERVICE_NAME} label"), service) {
        return Err(Warning::warn(format!(
            "skipping {}: {why} ({origin})",
            what()
        )));
    }
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" => Ok(service.to_string()),
        // Upstream ignores FQDN slices: there is no address to DNAT to.
        "FQDN" => Err(Warning::note(format!(
            "skipping {}: addressType FQDN ({origin})",
            what()
        ))),
        other => Err(Warning::warn(format!(
            "skipping {}: invalid addressType {other:?} ({origin})",
            what()
        ))),
    }
}

/// Adds the endpoints of `slices` (one Service's, in name order) to its `ports`.
fn merge(
    ports: &mut [ServicePort],
    slices: &[&SliceDigest],
    node_name: &str,
    warnings: &mut Vec<Warning>,
) {
    // Index of each endpoint in its port's list, by `IP:port`, for de-duplication.
    let mut index: Vec<HashMap<(IpAddr, u16), usize>> = vec![HashMap::new(); ports.len()];
    for slice in slices {
        warnings.extend(slice.port_warnings.iter().cloned());
        warnings.extend(slice.endpoint_warnings.iter().cloned());
        for sp in &slice.ports {
            let Some(target) = ports
                .iter()
                .position(|p| p.name.port == sp.name && p.protocol == sp.protocol)
            else {
                continue;
            };
            let list = &mut ports[target].endpoints;
            list.reserve(slice.endpoints.len());
            for template in &slice.endpoints {
                let ep = Endpoint {
                    port: sp.port,
                    ..template.clone()
                };
                match index[target].get(&(ep.ip, ep.port)) {
                    None => {
                        index[target].insert((ep.ip, ep.port), list.len());
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
        // Grown by doubling: at 100,000 endpoints the slack was 5 MB of the agent's peak.
        p.endpoints.shrink_to_fit();
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
    slice: &EndpointSlice,
    origin: &Origin,
    warnings: &mut Vec<Warning>,
) -> Vec<SlicePort> {
    let mut out = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let skip = |why: String| {
            Warning::warn(format!(
                "EndpointSlice {}: skipping ports[{i}]: {why} ({})",
                ns_name(&slice.metadata),
                origin
            ))
        };
        // A nil name cannot be matched to a service port (upstream ignores such ports).
        let Some(name) = p.name.clone() else {
            warnings.push(skip("it has no name".to_string()));
            continue;
        };
        if !name.is_empty()
            && let Err(why) = NameRule::Dns1123Label.check("name", &name)
        {
            warnings.push(skip(why));
            continue;
        }
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
    slice: &EndpointSlice,
    origin: &Origin,
    names: &mut NodeNames,
    warnings: &mut Vec<Warning>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let skip = |why: String| {
            Warning::warn(format!(
                "EndpointSlice {}: skipping endpoints[{i}]: {why} ({})",
                ns_name(&slice.metadata),
                origin
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
        // Node names and hints are compared with this node's and printed by explain.
        if let Err(why) = endpoint_names(ep) {
            warnings.push(skip(why));
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
            node_name: ep.node_name.as_deref().map(|n| names.get(n)),
            hints: (zone_hints.is_some() || node_hints.is_some()).then(|| {
                Box::new(rulegen::model::Hints {
                    zones: zone_hints,
                    nodes: node_hints,
                })
            }),
        });
    }
    out
}

/// Checks the names an endpoint carries against the API's rules for them.
fn endpoint_names(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Result<(), String> {
    if let Some(node) = &ep.node_name {
        NameRule::Dns1123Subdomain.check("nodeName", node)?;
    }
    if let Some(zone) = &ep.zone {
        NameRule::LabelValue.check("zone", zone)?;
    }
    if let Some(hints) = &ep.hints {
        for z in hints.for_zones.iter().flatten() {
            NameRule::LabelValue.check("hints.forZones[].name", &z.name)?;
        }
        for n in hints.for_nodes.iter().flatten() {
            NameRule::Dns1123Subdomain.check("hints.forNodes[].name", &n.name)?;
        }
    }
    Ok(())
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
    } else if match ip {
        // The API's ValidateEndpointIP also refuses link-local multicast.
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    } {
        Some("link-local multicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
