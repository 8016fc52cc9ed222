//! Kubernetes objects → the renderer's model: [`rulegen::Model`] and [`rulegen::RenderConfig`].
//!
//! Mirrors upstream's change trackers (`pkg/proxy/serviceport.go`, `endpointslicecache.go`):
//! what upstream skips is skipped here with a note, and an invalid object is skipped with a
//! warning naming it instead of failing the run. The result does not depend on input order.

pub mod api_names;
pub mod endpointslices;
pub mod node;
pub mod render_config;
pub mod services;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use rulegen::{Model, RenderConfig};

use crate::objects::Objects;
use crate::settings::Settings;
pub use crate::warning::Warning;
pub use endpointslices::SliceDigest;
pub use services::ServiceDigest;

/// Objects carrying this label belong to another proxy (upstream's informers filter them out).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Objects carrying this label are headless (upstream's informers filter them out).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The Node label naming its zone, for topology hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

/// What [`translate`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Every proxied service port with its endpoints, sorted by name and protocol.
    pub model: Model,
    /// The render settings for `settings.family`.
    pub config: RenderConfig,
    /// Notes and warnings, in a stable order.
    pub warnings: Vec<Warning>,
}

/// Translates `objects` for the node and family in `settings`. Never fails: bad objects are
/// skipped with a warning.
pub fn translate(objects: &Objects, settings: &Settings) -> Translation {
    let services: Vec<ServiceDigest> = objects
        .services
        .iter()
        .map(|s| services::digest(&s.object, &s.origin))
        .collect();
    let mut names = endpointslices::NodeNames::default();
    let slices: Vec<SliceDigest> = objects
        .endpoint_slices
        .iter()
        .map(|s| endpointslices::digest(&s.object, &s.origin, &mut names))
        .collect();
    translate_digested(objects, &services, &slices, settings)
}

/// Like [`translate`], with Services and EndpointSlices already digested (the agent's watch
/// stores keep them that way); of `objects` only the Nodes are read.
pub fn translate_digested<S: Borrow<ServiceDigest>, D: Borrow<SliceDigest>>(
    objects: &Objects,
    services: &[S],
    slices: &[D],
    settings: &Settings,
) -> Translation {
    let mut warnings = Vec::new();
    let node = node::find(objects, &settings.hostname, &mut warnings);
    let all_services: BTreeSet<ServiceKey> = services
        .iter()
        .map(|s| {
            let s = s.borrow();
            (s.namespace.clone(), s.name.clone())
        })
        .collect();
    let mut services: BTreeMap<ServiceKey, Vec<rulegen::ServicePort>> =
        services::translate_all(services, &mut warnings);
    endpointslices::attach_digests(
        &mut services,
        &all_services,
        slices,
        &settings.hostname,
        &mut warnings,
    );

    let mut ports: Vec<rulegen::ServicePort> = services.into_values().flatten().collect();
    ports.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    let config = render_config::build(settings, node.as_ref(), &mut warnings);
    Translation {
        model: Model { services: ports },
        config,
        warnings,
    }
}

/// The label `key` of an object, if present (an empty value still counts as present).
fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// `ns/name` of an object, escaped when it holds what no valid name can.
fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    api_names::printable(
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

#[cfg(test)]
pub(crate) mod testutil;
