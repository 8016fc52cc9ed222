//! `rulegen` turns a plain model of Services and endpoints into the exact ruleset kube-proxy's
//! iptables mode would hold on a node, as `iptables-save` prints it.
//!
//! It is pure: no I/O, no Kubernetes types, no async. The same model and config always give
//! byte-identical output, whatever order the model lists its services and endpoints in.

pub mod chains;
pub mod cleanup;
pub mod config;
pub mod conntrack;
pub mod endpoints;
pub mod explain;
pub mod hash;
pub mod iptables;
pub mod ipvs;
pub mod model;
pub mod partial;
pub mod payload;
pub mod probability;
pub mod restore;
pub mod retain;
pub mod ruleset;
#[cfg(any(test, feature = "scenario"))]
pub mod scenario;
pub mod trace;
pub mod untrusted;

pub use config::{LocalDetector, RenderConfig};
pub use iptables::{RenderError, render, render_into, render_into_with};
pub use model::{
    Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName, SessionAffinity,
    TrafficPolicy,
};
pub use partial::{AppliedState, NeedsFullSync, PartialSync};
pub use payload::{Payload, Piece};
pub use retain::Retain;
pub use ruleset::{Ruleset, Table};
