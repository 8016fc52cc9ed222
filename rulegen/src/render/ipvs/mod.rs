//! IPVS mode (issue #6): what kube-proxy's IPVS mode holds on a node for a model — the
//! virtual-server table ([`servers`]), the ipsets ([`ipsets`]), the addresses bound to
//! `kube-ipvs0`, and the few iptables rules that mode still needs ([`rules`]).
//!
//! Upstream reference: `pkg/proxy/ipvs/proxier.go` (`syncProxyRules`, `writeIptablesRules`) and
//! `shared/reference/upstream-iptables.md` §4.1.

pub mod ipsets;
pub mod rules;
pub mod servers;

use std::net::IpAddr;

pub use ipsets::{IpSet, IpSets, SetId, SetKind};
pub use servers::{
    DEFAULT_SCHEDULER, IpvsTable, RealServer, SCHED_FLAG_MH_PORT, VirtualServer, virtual_servers,
};

use crate::config::RenderConfig;
use crate::model::Model;
use crate::render::iptables::RenderError;
use crate::render::ruleset::Ruleset;

/// The settings only IPVS mode has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// `--ipvs-scheduler` (rr when not given).
    pub scheduler: String,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        IpvsConfig {
            scheduler: DEFAULT_SCHEDULER.to_string(),
        }
    }
}

/// Everything IPVS mode puts on a node for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsRender {
    /// The virtual servers and their real servers.
    pub table: IpvsTable,
    /// The ipsets' members.
    pub sets: IpSets,
    /// The `filter` and `nat` rules.
    pub ruleset: Ruleset,
    /// The addresses `kube-ipvs0` holds (cluster IPs, and external and load-balancer IPs that
    /// are not already the node's), sorted; the same as `KUBE-IPVS-IPS`.
    pub bound_addresses: Vec<IpAddr>,
}

/// Renders IPVS mode's dataplane for `model` on the node `cfg` describes.
pub fn render(
    model: &Model,
    cfg: &RenderConfig,
    ipvs: &IpvsConfig,
) -> Result<IpvsRender, RenderError> {
    if cfg.masquerade_bit > 31 {
        return Err(RenderError::MasqueradeBit(cfg.masquerade_bit));
    }
    crate::untrusted::check(model, cfg)?;
    crate::untrusted::text("IPVS scheduler", &ipvs.scheduler)?;
    let sets = IpSets::for_model(model, cfg);
    let mut bound_addresses: Vec<IpAddr> = sets
        .get(SetId::IpvsIps)
        .entries
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    bound_addresses.sort();
    Ok(IpvsRender {
        table: virtual_servers(model, cfg, &ipvs.scheduler),
        ruleset: rules::ruleset(cfg, &sets),
        sets,
        bound_addresses,
    })
}
