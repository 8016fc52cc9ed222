//! Service and EndpointSlice changes as upstream's change trackers count them: from watch
//! events (the API server) or from the difference between two reads of `--objects` files.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Change, Metrics};
use crate::objects::{Objects, Sourced};

/// The annotation the endpoint controllers set to when the change that produced a slice
/// happened (`endpoints.kubernetes.io/last-change-trigger-time`, RFC 3339).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// A slice's trigger time, if it carries a valid one.
pub fn trigger_time(meta: &ObjectMeta) -> Option<SystemTime> {
    let value = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let ts: k8s_openapi::jiff::Timestamp = value.trim().parse().ok()?;
    Some(SystemTime::from(ts))
}

/// Whether the agent's watches would see this object at all (upstream's informers select
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`).
fn selected(meta: &ObjectMeta) -> bool {
    let labels = meta.labels.as_ref();
    !labels
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

/// Feeds one Service watch event to `metrics`.
pub fn service_event(metrics: &Metrics, svc: &Service, change: Change) {
    let meta = &svc.metadata;
    metrics.service_changed(
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
        change,
    );
}

/// Feeds one EndpointSlice watch event to `metrics`. Slices of an address type the proxy does
/// not handle (FQDN) are not counted, as upstream's tracker returns before counting them.
pub fn endpoint_slice_event(metrics: &Metrics, slice: &EndpointSlice, change: Change) {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return;
    }
    let meta = &slice.metadata;
    let service = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .map(String::as_str)
        .unwrap_or("");
    metrics.endpoint_slice_changed(
        meta.namespace.as_deref().unwrap_or(""),
        service,
        trigger_time(meta),
        change,
    );
}

fn key(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Feeds `metrics` the changes between two reads of the objects, as the watch events the API
/// server would have sent: each Service and EndpointSlice removed, then each added or changed
/// (a removal cannot have come after a change of the same object, nor undo a newer slice's
/// trigger time).
pub fn diff_objects(metrics: &Metrics, old: &Objects, new: &Objects) {
    let (before, after) = (index(&old.services), index(&new.services));
    for (k, svc) in &before {
        if !after.contains_key(k) {
            service_event(metrics, svc, Change::Deleted);
        }
    }
    for (k, svc) in &after {
        if before.get(k).is_none_or(|b| b != svc) {
            service_event(metrics, svc, Change::Applied);
        }
    }

    let (before, after) = (index(&old.endpoint_slices), index(&new.endpoint_slices));
    for (k, slice) in &before {
        if !after.contains_key(k) {
            endpoint_slice_event(metrics, slice, Change::Deleted);
        }
    }
    for (k, slice) in &after {
        if before.get(k).is_none_or(|b| b != slice) {
            endpoint_slice_event(metrics, slice, Change::Applied);
        }
    }
}

/// The objects the watches would see, by namespace and name.
fn index<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    objects: &[Sourced<Arc<T>>],
) -> HashMap<(&str, &str), &T> {
    objects
        .iter()
        .filter(|s| selected(s.object.metadata()))
        .map(|s| (key(s.object.metadata()), &*s.object))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ProxyMode;
    use rulegen::IpFamily;
    use std::time::Duration;

    fn slice(name: &str, ip: &str, trigger: Option<&str>) -> EndpointSlice {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}]
        });
        if let Some(t) = trigger {
            v["metadata"]["annotations"] = serde_json::json!({ TRIGGER_TIME_ANNOTATION: t });
        }
        serde_json::from_value(v).unwrap()
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    #[test]
    fn trigger_times_parse_as_rfc3339() {
        let s = slice("a", "10.0.0.1", Some("2030-01-02T03:04:05.5Z"));
        let t = trigger_time(&s.metadata).unwrap();
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert_eq!(secs, 1_893_553_445.5);
        assert_eq!(
            trigger_time(&slice("a", "10.0.0.1", Some("yesterday")).metadata),
            None
        );
    }

    #[test]
    fn file_reads_diff_like_watch_events() {
        let m = Metrics::new(ProxyMode::Iptables, IpFamily::V4);
        let future = "2999-01-01T00:00:00Z";
        let old = Objects::from_parts(
            vec![service("web", "10.96.0.1"), service("old", "10.96.0.2")],
            vec![
                slice("web-1", "10.0.0.1", None),
                slice("gone", "10.0.0.9", None),
            ],
            vec![],
        );
        let new = Objects::from_parts(
            vec![service("web", "10.96.0.1"), service("new", "10.96.0.3")],
            vec![
                slice("web-1", "10.0.0.2", Some(future)),
                slice("web-2", "10.0.0.3", Some("2000-01-01T00:00:00Z")),
            ],
            vec![],
        );
        diff_objects(&m, &old, &new);
        let text = m.render();
        // "old" removed and "new" added; "web" unchanged.
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_service_changes_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_service_changes_pending 2\n"),
            "{text}"
        );
        // "gone" removed, web-1 changed, web-2 added.
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 3\n"),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 3\n"));
        // Only the trigger time after the agent's start counts (web-2's dates from 2000).
        assert_eq!(m.checkout_changes().len(), 1);
        let after = m.render();
        assert!(after.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 0\n"));
        assert!(after.contains("kubeproxy_sync_proxy_rules_service_changes_pending 0\n"));
        assert!(after.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 3\n"));

        // Deleting a slice forgets its Service's pending trigger times, as upstream does.
        let newer = Objects::from_parts(
            vec![service("web", "10.96.0.1"), service("new", "10.96.0.3")],
            vec![slice("web-1", "10.0.0.2", Some(future))],
            vec![],
        );
        let m2 = Metrics::new(ProxyMode::Iptables, IpFamily::V4);
        let soon = SystemTime::now() + Duration::from_secs(9);
        m2.endpoint_slice_changed("ns", "web", Some(soon), Change::Applied);
        diff_objects(&m2, &new, &newer);
        assert!(
            m2.checkout_changes().is_empty(),
            "web-2's removal forgot web's trigger time"
        );

        // Listed again after a watch restart: counted, but neither pending nor timed again.
        let m3 = Metrics::new(ProxyMode::Iptables, IpFamily::V4);
        endpoint_slice_event(
            &m3,
            &slice("web-1", "10.0.0.2", Some(future)),
            Change::Listed,
        );
        service_event(&m3, &service("web", "10.96.0.1"), Change::Listed);
        let text = m3.render();
        assert!(text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 1\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 0\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_service_changes_total 1\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_service_changes_pending 0\n"));
        assert!(m3.checkout_changes().is_empty());
    }
}
