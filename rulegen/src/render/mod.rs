//! Each mode's render: a service port's [`crate::plan::PortPlan`] in, the mode's own text out.

pub mod iptables;
pub mod ipvs;
pub mod ruleset;
