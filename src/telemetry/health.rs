//! The proxy's health server (`/healthz`, `/livez` on `--healthz-bind-address`) and the
//! per-Service health-check node ports ([`service`]), as upstream's `pkg/proxy/healthcheck`
//! (`proxy_health.go`, `service_health.go`) serves them.
//!
//! Status rules (upstream's `ProxyHealthServer`): the proxy is healthy unless a change was
//! queued ([`ProxyHealth::queued_update`]) and no sync succeeded ([`ProxyHealth::updated`])
//! within the health timeout since (upstream: twice the sync period). Before the first
//! `updated` it is healthy (starting up). `/healthz` is also 503 when this node is being
//! deleted or is tainted `ToBeDeletedByClusterAutoscaler`, so load balancers drain it first,
//! and while no Node can be known yet (the objects not read: upstream's `NodeEligible` is false
//! without a Node, and upstream serves nothing before it has one); `/livez` ignores the node.

use super::http;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use rulegen::IpFamily;

use crate::telemetry::metrics::{Metrics, family_label};

/// The taint the cluster autoscaler puts on a node before deleting it.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Go's zero `time.Time`, as `encoding/json` writes it.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Looks up this node's Node object (the watch store's, or the files'), at request time.
pub type NodeLookup = Arc<dyn Fn() -> Option<Arc<Node>> + Send + Sync>;

/// Upstream's `NodeEligible`: a node being deleted, or tainted for deletion by the cluster
/// autoscaler, is not eligible for load-balancer traffic.
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    !taints.is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// The Node named `name` among `objects` (the first, if listed twice).
pub fn find_node(objects: &crate::objects::Objects, name: &str) -> Option<Arc<Node>> {
    let node = objects
        .nodes
        .iter()
        .find(|n| n.object.metadata.name.as_deref() == Some(name))?;
    Some(node.object.clone())
}

/// The proxy's health, as upstream's `ProxyHealthServer` tracks it for one IP family.
pub struct ProxyHealth {
    timeout: Duration,
    family: &'static str,
    metrics: Option<Arc<Metrics>>,
    state: Mutex<State>,
    node: Mutex<Option<NodeLookup>>,
}

#[derive(Default)]
struct State {
    last_updated: Option<SystemTime>,
    // When the oldest change not yet synced was queued.
    oldest_pending: Option<Instant>,
    // Whether a Node object was ever seen (one gone since is being deleted).
    node_seen: bool,
}

/// One answer of [`ProxyHealth::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the proxier synced every queued change in time.
    pub healthy: bool,
    /// When it last synced (`None`: never).
    pub last_updated: Option<SystemTime>,
    /// The time of the answer.
    pub current_time: SystemTime,
}

/// RFC 3339 with nanoseconds, trailing zeros trimmed, UTC: Go's `time.Time` in JSON.
pub fn go_time(t: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.to_string(),
        Err(_) => ZERO_TIME.to_string(),
    }
}

impl ProxyHealth {
    /// A health tracker for `family` that turns unhealthy when a queued change waits longer
    /// than `timeout`; counts its answers in `metrics` (`kubeproxy_proxy_healthz_total`,
    /// `kubeproxy_proxy_livez_total`) when given.
    pub fn new(timeout: Duration, family: IpFamily, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(ProxyHealth {
            timeout,
            family: family_label(family),
            metrics,
            state: Mutex::new(State::default()),
            node: Mutex::new(None),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets where this node's Node object is read from, once the objects are read (until then
    /// the node is not eligible: nothing about it is known yet).
    pub fn set_node_lookup(&self, lookup: NodeLookup) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(lookup);
    }

    /// A change arrived that needs a sync (upstream's `QueuedUpdate`): the timeout starts now
    /// unless an older change is already waiting.
    pub fn queued_update(&self) {
        let mut s = self.state();
        if s.oldest_pending.is_none() {
            s.oldest_pending = Some(Instant::now());
        }
    }

    /// The rules now reflect every change (upstream's `Updated`): healthy again.
    pub fn updated(&self) {
        let mut s = self.state();
        s.oldest_pending = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// The proxier's health, ignoring the node (upstream's `Health()`).
    pub fn health(&self) -> Health {
        let s = self.state();
        // Before the first update the proxier is starting up: healthy.
        let late = s.last_updated.is_some()
            && s.oldest_pending
                .is_some_and(|t| t.elapsed() >= self.timeout);
        Health {
            healthy: !late,
            last_updated: s.last_updated,
            current_time: SystemTime::now(),
        }
    }

    /// Whether this node may receive load-balancer traffic (upstream's `NodeEligible`). Before
    /// the objects are read (no lookup set): not eligible, as upstream without a Node (an
    /// agent whose objects file cannot be parsed has applied no rules). Once read, before any
    /// Node object was seen: eligible (upstream waits for it at start); once seen and gone:
    /// deleted, not eligible.
    pub fn node_eligible(&self) -> bool {
        let lookup = self.node.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(lookup) = lookup else {
            return false;
        };
        match lookup() {
            Some(node) => {
                self.state().node_seen = true;
                node_eligible(&node)
            }
            None => !self.state().node_seen,
        }
    }

    /// The JSON body of `/healthz` (`node_eligible` given) or `/livez` (`None`), with the
    /// status: upstream's `ProxyHealth` struct through `encoding/json`.
    fn answer(&self, node_eligible: Option<bool>) -> (u16, String) {
        let h = self.health();
        let healthy = h.healthy && node_eligible.unwrap_or(true);
        let current = go_time(h.current_time);
        let proxier_updated = h.last_updated.map(go_time);
        // A healthy answer reports "now" as the last update, as upstream does for
        // compatibility (older releases reported the last sync loop run).
        let last_updated = if healthy {
            current.clone()
        } else {
            proxier_updated.clone().unwrap_or_else(|| ZERO_TIME.into())
        };
        let mut body =
            format!("{{\"lastUpdated\":\"{last_updated}\",\"currentTime\":\"{current}\"");
        if let Some(eligible) = node_eligible {
            body.push_str(&format!(",\"nodeEligible\":{eligible}"));
        }
        body.push_str(&format!(",\"healthy\":{}", h.healthy));
        if let Some(updated) = proxier_updated {
            body.push_str(&format!(
                ",\"status\":{{\"{}\":{{\"lastUpdated\":\"{updated}\",\"healthy\":{}}}}}",
                self.family, h.healthy
            ));
        }
        body.push('}');
        (if healthy { 200 } else { 503 }, body)
    }

    /// `/healthz`: 200 when healthy and the node is eligible, else 503.
    pub fn healthz(&self) -> (u16, String) {
        let (code, body) = self.answer(Some(self.node_eligible()));
        if let Some(m) = &self.metrics {
            m.healthz_answered(code);
        }
        (code, body)
    }

    /// `/livez`: 200 when healthy, else 503 (the node does not matter).
    pub fn livez(&self) -> (u16, String) {
        let (code, body) = self.answer(None);
        if let Some(m) = &self.metrics {
            m.livez_answered(code);
        }
        (code, body)
    }

    /// Serves `/healthz` and `/livez` on `addr` (retrying the bind every 5 s if it fails);
    /// returns the bound address when the first bind succeeded. Call inside the runtime.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Option<SocketAddr> {
        let me = self.clone();
        http::serve_retrying(
            "healthz",
            addr,
            Arc::new(move |req| {
                let (code, body) = match req.uri().path() {
                    "/healthz" => me.healthz(),
                    "/livez" => me.livez(),
                    _ => return http::not_found(),
                };
                http::reply(code, http::JSON, body)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn deleted_or_autoscaler_tainted_nodes_are_not_eligible() {
        assert!(node_eligible(&node(
            serde_json::json!({"metadata": {"name": "a"}})
        )));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"}
        }))));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
        }))));
        assert!(node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]}
        }))));
    }

    #[test]
    fn times_print_as_go_marshals_them() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(go_time(t), "2023-11-14T22:13:20.12Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(go_time(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_late_queued_change_is_unhealthy_until_synced() {
        let h = ProxyHealth::new(Duration::from_millis(50), IpFamily::V4, None);
        // Starting up: a change queued before the first update does not count.
        h.queued_update();
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.health().healthy);
        h.updated();
        h.queued_update();
        assert!(h.health().healthy, "queued, not late yet");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.health().healthy);
        let (code, body) = h.livez();
        assert_eq!(code, 503);
        assert!(body.contains("\"healthy\":false"), "{body}");
        h.updated();
        assert!(h.health().healthy);
    }

    #[test]
    fn a_node_seen_then_gone_is_not_eligible() {
        let h = ProxyHealth::new(Duration::from_secs(60), IpFamily::V4, None);
        let present = Arc::new(Mutex::new(Some(Arc::new(node(
            serde_json::json!({"metadata": {"name": "a"}}),
        )))));
        let p = present.clone();
        assert!(
            !h.node_eligible(),
            "no lookup yet: the objects are not read"
        );
        h.set_node_lookup(Arc::new(move || p.lock().unwrap().clone()));
        assert!(h.node_eligible());
        *present.lock().unwrap() = None;
        assert!(!h.node_eligible());
        let (code, body) = h.healthz();
        assert_eq!(code, 503);
        assert!(body.contains("\"nodeEligible\":false"), "{body}");
        assert!(body.contains("\"healthy\":true"), "{body}");
    }
}
