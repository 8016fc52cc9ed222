//! Reading rules back: `explain` (what the render does with a Service, from its plan) and
//! `trace` (a walk of saved rules, sets and virtual servers).

pub mod explain;
pub mod trace;
