//! `rulegen` turns a plain model of Services and endpoints into what kube-proxy would hold on a
//! node — iptables mode's ruleset as `iptables-save` prints it, or IPVS mode's virtual servers,
//! ipsets and iptables rules — and analyses those rules (`explain`, `trace`).
//!
//! The flow is model → per-port plan → render: [`plan`] decides once per service port which
//! addresses, endpoint sets, chains or virtual servers, masquerade points and verdicts it has;
//! each mode under [`render`](mod@render) turns those decisions into its own text; [`sync`] works out what
//! to send to the kernel (partial and chunked payloads, cleanup, stale conntrack flows);
//! [`analysis`] explains a Service from the same plan and walks packets through saved rules.
//!
//! It is pure: no I/O, no Kubernetes types, no async. The same model and config always give
//! byte-identical output, whatever order the model lists its services and endpoints in.

pub mod analysis;
pub mod config;
pub mod model;
pub mod plan;
pub mod render;
#[cfg(any(test, feature = "scenario"))]
pub mod scenario;
pub mod sync;
#[cfg(test)]
mod test_fixtures;
pub mod untrusted;

pub use config::{LocalDetector, RenderConfig};
pub use model::{
    Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName, SessionAffinity,
    TrafficPolicy,
};
pub use render::iptables::{RenderError, render, render_into, render_into_with};
pub use render::ruleset::{Ruleset, Table};
pub use sync::partial::{AppliedState, NeedsFullSync, PartialSync};
pub use sync::payload::{Payload, Piece};
pub use sync::retain::Retain;
