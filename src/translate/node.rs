//! This node's Node object → its zone, addresses and pod CIDRs.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::LABEL_TOPOLOGY_ZONE;
use super::api_names::NameRule;
use crate::addr::{parse_cidr_sloppy, parse_ip_sloppy};
use crate::objects::{Objects, Sourced};
use crate::warning::Warning;

/// What the rules need from this node's Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `status.addresses` of type InternalIP and ExternalIP, both families, in order, no repeats.
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), masked.
    pub pod_cidrs: Vec<IpNet>,
}

/// The Node named `node_name` (the first, if listed twice); `None` when absent, which is fine:
/// the rules then simply have no node addresses or zone.
pub fn find(objects: &Objects, node_name: &str, warnings: &mut Vec<Warning>) -> Option<NodeInfo> {
    let mut matching = objects
        .nodes
        .iter()
        .filter(|n| n.object.metadata.name.as_deref() == Some(node_name));
    let first = matching.next()?;
    for extra in matching {
        warnings.push(Warning::warn(format!(
            "skipping Node {node_name}: it appears more than once; the first one is used ({})",
            extra.origin
        )));
    }
    Some(info(first, warnings))
}

/// A Node name for a message, escaped unless it is a valid name.
fn printable_name(name: &str) -> String {
    if NameRule::Dns1123Subdomain.accepts(name) {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Reads one Node; bad addresses or CIDRs are left out with a warning.
pub fn info(sourced: &Sourced<Arc<Node>>, warnings: &mut Vec<Warning>) -> NodeInfo {
    let node = &sourced.object;
    let name = node.metadata.name.as_deref().unwrap_or("");
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    // The zone is compared with hints and printed by explain: held to the API's label rule.
    let zone = match zone {
        Some(z) if !NameRule::LabelValue.accepts(&z) => {
            warnings.push(Warning::warn(format!(
                "Node {}: ignoring its {LABEL_TOPOLOGY_ZONE} label: {} ({})",
                printable_name(name),
                NameRule::LabelValue.check("zone", &z).unwrap_err(),
                sourced.origin
            )));
            None
        }
        z => z,
    };

    let mut ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addresses.into_iter().flatten() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match parse_ip_sloppy(&a.address) {
            Some(ip) if !ips.contains(&ip) => ips.push(ip),
            Some(_) => {}
            None => warnings.push(Warning::warn(format!(
                "Node {}: ignoring invalid {} {:?} ({})",
                printable_name(name),
                a.type_,
                a.address,
                sourced.origin
            ))),
        }
    }

    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut pod_cidrs = Vec::new();
    for c in listed {
        match parse_cidr_sloppy(c) {
            Some(net) => pod_cidrs.push(net),
            None => warnings.push(Warning::warn(format!(
                "Node {}: ignoring invalid podCIDR {c:?} ({})",
                printable_name(name),
                sourced.origin
            ))),
        }
    }
    NodeInfo {
        zone,
        ips,
        pod_cidrs,
    }
}

#[cfg(test)]
mod tests;
