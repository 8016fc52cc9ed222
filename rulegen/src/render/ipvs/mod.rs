//! IPVS mode (issue #6): what kube-proxy's IPVS mode holds on a node for a model — the
//! virtual-server table ([`servers`]), the ipsets ([`ipsets`]), the addresses bound to
//! `kube-ipvs0`, and the few iptables rules that mode still needs ([`rules`]).
//!
//! Upstream reference: `pkg/proxy/ipvs/proxier.go` (`syncProxyRules`, `writeIptablesRules`).

pub mod ipsets;
pub mod rules;
pub mod servers;

use std::net::IpAddr;

pub use ipsets::{IpSet, IpSets, SetId, SetKind};
pub use servers::{
    DEFAULT_SCHEDULER, IpvsTable, RealServer, SCHED_FLAG_MH_PORT, VirtualServer, virtual_servers,
};

use crate::config::RenderConfig;
use crate::model::Endpoint;
use crate::model::Model;
use crate::plan::{NodePlan, PortPlan, endpoints};
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
    let node = NodePlan::new(cfg);
    let planned = plan_ports(model, cfg, &node);
    let sets = IpSets::from_plans(&planned, cfg, &node);
    let mut bound_addresses: Vec<IpAddr> = sets
        .get(SetId::IpvsIps)
        .entries
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    bound_addresses.sort();
    Ok(IpvsRender {
        table: servers::table_from_plans(&planned, &node, &ipvs.scheduler),
        ruleset: rules::ruleset(cfg, &sets),
        sets,
        bound_addresses,
    })
}

/// One service port's plan, with the endpoints its indices point into (IPVS mode's order).
pub(crate) struct Planned<'m> {
    /// The plan.
    pub plan: PortPlan<'m>,
    /// The port's endpoints of the family, by address and port.
    pub eps: Vec<&'m Endpoint>,
}

/// The plan of every service port with a cluster IP of the family, in the model's order.
pub(crate) fn plan_ports<'m>(
    model: &'m Model,
    cfg: &RenderConfig,
    node: &NodePlan,
) -> Vec<Planned<'m>> {
    model
        .services
        .iter()
        .filter_map(|sp| {
            let eps = endpoints::by_address(sp, cfg.family);
            let plan = PortPlan::new(sp, cfg, node, &eps)?;
            Some(Planned { plan, eps })
        })
        .collect()
}
