//! What the agent shows of itself: upstream's `kubeproxy_*` metrics, `/healthz` and `/livez`, the
//! Services' health-check node ports, and the HTTP server (with its open-file budget) they share.

pub mod fdlimit;
pub mod health;
pub(crate) mod http;
pub mod metrics;
pub mod service_health;
pub mod sync;
