//! Objects from the API server: a watcher and reflector store per kind, with upstream's
//! selectors, so the agent always holds the latest Services, EndpointSlices and its own Node.

use std::sync::Arc;

use std::borrow::Cow;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Lookup, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::objects::{Objects, Origin};
use crate::translate::SliceDigest;
use crate::translate::endpointslices::{NodeNames, digest};

/// Upstream's selector: Services and slices handled by another proxy, or headless, are not ours.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The annotation the network-programming latency metric reads; the only one worth keeping.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The three stores the agent renders from.
#[derive(Clone)]
pub struct ApiStores {
    services: Store<Service>,
    endpoint_slices: Store<SliceDigest>,
    nodes: Store<Node>,
}

impl ApiStores {
    /// Waits until every store has finished its initial list: rendering before that would
    /// wipe the rules of every Service not listed yet.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        self.services.wait_until_ready().await?;
        self.endpoint_slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        Ok(())
    }

    /// The current objects, in the form the translator reads: Services and the Node as the
    /// API sent them (slimmed), EndpointSlices as digests. Shared, not copied.
    pub fn snapshot(&self) -> (Objects, Vec<Arc<SliceDigest>>) {
        (
            Objects::from_shared(self.services.state(), Vec::new(), self.nodes.state()),
            self.endpoint_slices.state(),
        )
    }
}

/// The watch store identifies a digest as it would the EndpointSlice it came from.
impl Lookup for SliceDigest {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(self.name.as_str().into())
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(self.namespace.as_str().into())
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
}

/// Drops what the agent never reads before an object is stored: at 10,000 Services the stores
/// are most of the agent's memory. What is kept is exactly what `translate` reads.
pub trait Slim: Resource {
    /// Clears the fields the proxy never reads.
    fn slim(&mut self) {
        let meta = self.meta_mut();
        meta.managed_fields = None;
        meta.owner_references = None;
        meta.finalizers = None;
        meta.generate_name = None;
        meta.uid = None;
        meta.creation_timestamp = None;
        meta.generation = None;
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.retain(|k, _| k == TRIGGER_TIME_ANNOTATION);
        }
        self.slim_kind();
    }

    /// The kind-specific part.
    fn slim_kind(&mut self) {}
}

impl Slim for Service {
    fn slim_kind(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.selector = None;
        }
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
        }
    }
}

impl Slim for EndpointSlice {
    fn slim_kind(&mut self) {
        for ep in &mut self.endpoints {
            ep.target_ref = None;
            ep.hostname = None;
            ep.deprecated_topology = None;
        }
    }
}

impl Slim for Node {
    fn slim_kind(&mut self) {
        // A Node's status lists its images and conditions: kilobytes the proxy never reads.
        if let Some(status) = self.status.as_mut() {
            status.images = None;
            status.conditions = None;
            status.node_info = None;
            status.volumes_attached = None;
            status.volumes_in_use = None;
            status.allocatable = None;
            status.capacity = None;
        }
    }
}

/// Starts one watcher per kind on `client`, each feeding a store and waking `changed` on every
/// change. The tasks run until the process ends, reconnecting with back-off.
pub fn start(client: Client, node_name: &str, changed: Arc<Notify>) -> ApiStores {
    let labels = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        labels.clone(),
        changed.clone(),
        |mut s: Service| {
            s.slim();
            s
        },
    );
    let mut names = NodeNames::default();
    let endpoint_slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        labels,
        changed.clone(),
        move |s: EndpointSlice| digest(&s, &Origin::memory(), &mut names),
    );
    let nodes = spawn_reflector(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        changed,
        |mut n: Node| {
            n.slim();
            n
        },
    );
    ApiStores {
        services,
        endpoint_slices,
        nodes,
    }
}

/// A watcher on `api` whose objects, turned into `T` by `keep` as they arrive, fill a store.
fn spawn_reflector<K, T>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    mut keep: impl FnMut(K) -> T + Send + 'static,
) -> Store<T>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    T: Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .map_ok(move |event| match event {
                watcher::Event::Apply(o) => watcher::Event::Apply(keep(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(keep(o)),
                watcher::Event::InitApply(o) => watcher::Event::InitApply(keep(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            }),
    );
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => {
                    changed.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_keeps_what_translation_reads() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "t", "other": "x"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a",
                           "conditions": {"ready": true}, "hints": {"forZones": [{"name": "z"}]},
                           "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"},
                           "hostname": "web-0"}]
        }))
        .unwrap();
        let mut slim = slice.clone();
        slim.slim();
        assert!(slim.metadata.owner_references.is_none());
        assert_eq!(slim.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("7"));
        assert!(slim.endpoints[0].target_ref.is_none());
        // Everything the translator reads renders the same before and after.
        let settings = crate::settings::Settings {
            hostname: "node-a".into(),
            ..Default::default()
        };
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let mut slim_svc = svc.clone();
        slim_svc.slim();
        let before = crate::translate::translate(
            &Objects::from_parts(vec![svc], vec![slice], vec![]),
            &settings,
        );
        let after = crate::translate::translate(
            &Objects::from_parts(vec![slim_svc], vec![slim], vec![]),
            &settings,
        );
        assert_eq!(before.model, after.model);
        assert_eq!(before.model.services[0].endpoints.len(), 1);
    }
}
