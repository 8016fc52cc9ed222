//! Settings + this node's Node → [`RenderConfig`] for one family.

use rulegen::{IpFamily, LocalDetector, RenderConfig};

use super::node::NodeInfo;
use crate::settings::{DetectLocalMode, Settings};
use crate::warning::Warning;

/// Builds the render settings for `settings.family`. CIDR lists are cut to that family, as
/// each of upstream's per-family proxiers does.
pub fn build(
    settings: &Settings,
    node: Option<&NodeInfo>,
    warnings: &mut Vec<Warning>,
) -> RenderConfig {
    let family = settings.family;
    let local_detector = match settings.detect_local_mode {
        DetectLocalMode::ClusterCidr => {
            let cidrs: Vec<_> = settings
                .cluster_cidrs
                .iter()
                .filter(|c| family.contains_net(c))
                .copied()
                .collect();
            if cidrs.is_empty() && !settings.cluster_cidrs.is_empty() {
                warnings.push(Warning::note(format!(
                    "no cluster CIDR of the rendered family ({}); local traffic is not detected",
                    family_name(family)
                )));
            }
            cidrs_or_none(cidrs)
        }
        DetectLocalMode::NodeCidr => {
            let cidrs: Vec<_> = node
                .map(|n| {
                    n.pod_cidrs
                        .iter()
                        .filter(|c| family.contains_net(c))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            if cidrs.is_empty() {
                // Upstream waits for the Node's podCIDRs; a dry run can only say they are missing.
                warnings.push(Warning::warn(format!(
                    "detect-local-mode NodeCIDR: Node {} has no podCIDR of the rendered family ({}); local traffic is not detected",
                    settings.hostname,
                    family_name(family)
                )));
            }
            cidrs_or_none(cidrs)
        }
        DetectLocalMode::BridgeInterface => {
            LocalDetector::BridgeInterface(settings.pod_bridge_interface.clone())
        }
        DetectLocalMode::InterfaceNamePrefix => {
            LocalDetector::InterfaceNamePrefix(settings.pod_interface_name_prefix.clone())
        }
    };
    RenderConfig {
        family,
        node_name: settings.hostname.clone(),
        node_zone: node.and_then(|n| n.zone.clone()),
        node_ips: node
            .map(|n| {
                n.ips
                    .iter()
                    .filter(|ip| family.contains(ip))
                    .copied()
                    .collect()
            })
            .unwrap_or_default(),
        nodeport_addresses: settings
            .nodeport_addresses
            .iter()
            .filter(|n| family.contains_net(n))
            .copied()
            .collect(),
        local_detector,
        masquerade_all: settings.masquerade_all,
        masquerade_bit: settings.masquerade_bit,
        localhost_nodeports: settings.localhost_nodeports,
        // Upstream reads the sysctl; the agent sets it from this setting before the first sync.
        conntrack_tcp_be_liberal: settings.conntrack.tcp_be_liberal,
        ..RenderConfig::default()
    }
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// No CIDR means no detector (upstream's no-op detector), not "match nothing".
fn cidrs_or_none(cidrs: Vec<ipnet::IpNet>) -> LocalDetector {
    if cidrs.is_empty() {
        LocalDetector::None
    } else {
        LocalDetector::Cidrs(cidrs)
    }
}

#[cfg(test)]
mod tests;
