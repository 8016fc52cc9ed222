//! Services → service ports (upstream `newBaseServiceInfo` and `ShouldSkipService`).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use rulegen::{Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy};

use super::api_names::{NameRule, printable};
use super::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ServiceKey, label};
use crate::addr::{parse_cidr_sloppy, parse_ip_sloppy};
use crate::objects::Origin;
use crate::warning::Warning;

/// The API default of `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
/// The largest `timeoutSeconds` the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86400;

/// Why a Service yields no service ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Upstream skips it by design (ExternalName, headless, another proxy's); a note.
    Expected(String),
    /// Something in it is invalid; a warning.
    Invalid(String),
}

/// A Service reduced to its translated ports (or why it has none), translated once when it
/// arrives: the agent's watch store keeps these instead of the API objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDigest {
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
    ports: Result<Vec<ServicePort>, Skip>,
}

/// Translates one Service, read from `origin`, into its [`ServiceDigest`].
pub fn digest(svc: &Service, origin: &Origin) -> ServiceDigest {
    let (namespace, name) = service_key(svc);
    ServiceDigest {
        namespace,
        name,
        resource_version: svc.metadata.resource_version.clone(),
        uid: svc.metadata.uid.clone(),
        origin: origin.clone(),
        ports: translate(svc),
    }
}

/// Every Service's ports, keyed by namespace/name. The first of two Services with the same
/// key wins (as a later apply would have replaced it, the input is inconsistent; we say so).
pub fn translate_all<D: Borrow<ServiceDigest>>(
    services: &[D],
    warnings: &mut Vec<Warning>,
) -> BTreeMap<ServiceKey, Vec<ServicePort>> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for d in services {
        let d = d.borrow();
        let origin = &d.origin;
        let what = printable(&d.namespace, &d.name);
        let key = (d.namespace.clone(), d.name.clone());
        if !seen.insert(key.clone()) {
            warnings.push(Warning::warn(format!(
                "skipping Service {what}: it appears more than once; the first one is used ({origin})"
            )));
            continue;
        }
        match &d.ports {
            Ok(ports) => {
                out.insert(key, ports.clone());
            }
            Err(Skip::Expected(why)) => warnings.push(Warning::note(format!(
                "skipping Service {what}: {why} ({origin})"
            ))),
            Err(Skip::Invalid(why)) => warnings.push(Warning::warn(format!(
                "skipping Service {what}: {why} ({origin})"
            ))),
        }
    }
    out
}

/// `(namespace, name)` of a Service.
pub fn service_key(svc: &Service) -> ServiceKey {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// One Service's ports with everything the rules need (no endpoints yet), or why there are none.
pub fn translate(svc: &Service) -> Result<Vec<ServicePort>, Skip> {
    // The name parts reach rule comments and chain hashes: refused before anything is read.
    let (namespace, name) = service_key(svc);
    NameRule::Dns1123Label
        .check("namespace", &namespace)
        .and_then(|()| NameRule::Dns1123Label.check("name", &name))
        .map_err(Skip::Invalid)?;
    if let Some(v) = label(&svc.metadata, LABEL_SERVICE_PROXY_NAME) {
        return Err(Skip::Expected(format!(
            "it is labelled {LABEL_SERVICE_PROXY_NAME}={v:?} (served by another proxy)"
        )));
    }
    if label(&svc.metadata, LABEL_HEADLESS).is_some() {
        return Err(Skip::Expected(format!("it is labelled {LABEL_HEADLESS}")));
    }
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| Skip::Invalid("it has no spec".to_string()))?;
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return Err(Skip::Expected(
            "type ExternalName has no proxy rules".to_string(),
        ));
    }

    let cluster_ips = cluster_ips(spec)?;

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .map(|s| {
            parse_ip_sloppy(s).ok_or_else(|| {
                Skip::Invalid(format!("invalid externalIP {s:?}: not an IP address"))
            })
        })
        .collect::<Result<Vec<IpAddr>, Skip>>()?;
    let load_balancer_ips = load_balancer_ips(svc)?;
    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|s| {
            // Upstream trims before parsing (TestBadIPs has " 203.0.113.0/25").
            parse_cidr_sloppy(s.trim()).ok_or_else(|| {
                Skip::Invalid(format!("invalid loadBalancerSourceRange {s:?}: not a CIDR"))
            })
        })
        .collect::<Result<Vec<IpNet>, Skip>>()?;

    // Upstream's ExternalPolicyLocal: eTP only counts for Services reachable from outside.
    let externally_accessible = matches!(svc_type, "LoadBalancer" | "NodePort")
        || (svc_type == "ClusterIP" && !external_ips.is_empty());
    let external_traffic_policy = if externally_accessible {
        policy(spec.external_traffic_policy.as_deref())
    } else {
        TrafficPolicy::Cluster
    };
    let internal_traffic_policy = policy(spec.internal_traffic_policy.as_deref());
    let session_affinity = session_affinity(spec)?;

    // Upstream serves a health check only for LoadBalancer Services with eTP=Local
    // (`NeedsHealthCheck`); 0 means "not allocated".
    let health_check_node_port =
        if svc_type == "LoadBalancer" && external_traffic_policy == TrafficPolicy::Local {
            match spec.health_check_node_port {
                None | Some(0) => None,
                Some(p) => Some(port_number(p).ok_or_else(|| {
                    Skip::Invalid(format!("healthCheckNodePort {p} is out of range (1-65535)"))
                })?),
            }
        } else {
            None
        };

    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (index, p) in spec.ports.iter().flatten().enumerate() {
        let port_name = p.name.clone().unwrap_or_default();
        let what = if port_name.is_empty() {
            format!("ports[{index}]")
        } else {
            format!("port {port_name:?}")
        };
        if !port_name.is_empty() {
            NameRule::Dns1123Label
                .check(&format!("ports[{index}].name"), &port_name)
                .map_err(Skip::Invalid)?;
        }
        let protocol =
            protocol(p.protocol.as_deref()).map_err(|e| Skip::Invalid(format!("{what}: {e}")))?;
        let port = port_number(p.port).ok_or_else(|| {
            Skip::Invalid(format!("{what}: port {} is out of range (1-65535)", p.port))
        })?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(n).ok_or_else(|| {
                Skip::Invalid(format!("{what}: nodePort {n} is out of range (1-65535)"))
            })?),
        };
        // Two ports with one name and protocol would share chain names; the API forbids it.
        if !seen.insert((port_name.clone(), protocol)) {
            return Err(Skip::Invalid(format!(
                "{what}: a second {protocol} port with the same name"
            )));
        }
        ports.push(ServicePort {
            name: ServicePortName::new(namespace.clone(), name.clone(), port_name),
            protocol,
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            external_traffic_policy,
            internal_traffic_policy,
            session_affinity,
            health_check_node_port,
            endpoints: Vec::new(),
        });
    }
    Ok(ports)
}

/// `spec.clusterIPs` (one per family), falling back to `spec.clusterIP`.
fn cluster_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Vec<IpAddr>, Skip> {
    let listed: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    // Upstream decides "headless" on spec.clusterIP alone; clusterIPs[0] always equals it.
    let primary = spec
        .cluster_ip
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(listed.first().copied())
        .unwrap_or("");
    match primary {
        "None" => {
            return Err(Skip::Expected(
                "it is headless (clusterIP None)".to_string(),
            ));
        }
        "" => return Err(Skip::Expected("it has no clusterIP (headless)".to_string())),
        _ => {}
    }
    listed
        .into_iter()
        .map(|s| {
            parse_ip_sloppy(s)
                .ok_or_else(|| Skip::Invalid(format!("invalid clusterIP {s:?}: not an IP address")))
        })
        .collect()
}

/// `status.loadBalancer.ingress[].ip` where `ipMode` is VIP or unset; hostname-only entries and
/// `ipMode: Proxy` entries get no rules (KEP-1860).
fn load_balancer_ips(svc: &Service) -> Result<Vec<IpAddr>, Skip> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut ips = Vec::new();
    for ing in ingress.into_iter().flatten() {
        let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        ips.push(parse_ip_sloppy(ip).ok_or_else(|| {
            Skip::Invalid(format!(
                "invalid loadBalancer ingress IP {ip:?}: not an IP address"
            ))
        })?);
    }
    Ok(ips)
}

fn session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> Result<SessionAffinity, Skip> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Ok(SessionAffinity::None);
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let timeout_seconds = match timeout {
        None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        Some(t) => u32::try_from(t)
            .ok()
            .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(t))
            .ok_or_else(|| {
                Skip::Invalid(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range (1-{MAX_AFFINITY_TIMEOUT_SECONDS})"
                ))
            })?,
    };
    Ok(SessionAffinity::ClientIp { timeout_seconds })
}

/// `Local`, else Cluster (upstream compares to Local only).
fn policy(value: Option<&str>) -> TrafficPolicy {
    match value {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

/// A Service or EndpointSlice protocol: TCP (the default), UDP or SCTP, spelled as the API does.
pub fn protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?} (use TCP, UDP or SCTP)")),
    }
}

/// A port number in 1..=65535.
pub fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests;
