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

use crate::metrics::{Change, Metrics, changes};
use crate::objects::{Objects, Origin};
use crate::settings::{Flags, Settings};
use crate::translate::endpointslices::{NodeNames, digest};
use crate::translate::{self, ServiceDigest, SliceDigest, Translation, services};

/// Upstream's selector: Services and slices handled by another proxy, or headless, are not ours.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The annotation the network-programming latency metric reads; the only one worth keeping.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The three stores the agent renders from.
#[derive(Clone)]
pub struct ApiStores {
    services: Store<ServiceDigest>,
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

    /// The current objects, in the form the translator reads: the Node as the API sent it
    /// (slimmed), Services and EndpointSlices as digests. Shared, not copied.
    pub fn snapshot(&self) -> (Objects, Vec<Arc<ServiceDigest>>, Vec<Arc<SliceDigest>>) {
        (
            Objects::from_shared(Vec::new(), Vec::new(), self.nodes.state()),
            self.services.state(),
            self.endpoint_slices.state(),
        )
    }

    /// This node's Node object, if the API server has one.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.nodes.state().into_iter().next()
    }
}

/// A watch store identifies a digest as it would the object it came from.
macro_rules! lookup_as {
    ($digest:ty, $object:ty) => {
        impl Lookup for $digest {
            type DynamicType = ();

            fn kind(_: &()) -> Cow<'_, str> {
                <$object as k8s_openapi::Resource>::KIND.into()
            }

            fn group(_: &()) -> Cow<'_, str> {
                <$object as k8s_openapi::Resource>::GROUP.into()
            }

            fn version(_: &()) -> Cow<'_, str> {
                <$object as k8s_openapi::Resource>::VERSION.into()
            }

            fn plural(_: &()) -> Cow<'_, str> {
                <$object as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
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
    };
}

lookup_as!(SliceDigest, EndpointSlice);
lookup_as!(ServiceDigest, Service);

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

/// How long [`fetch_translation`] waits for the API server's first lists.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Lists the Services, EndpointSlices and this node's Node once — the watchers' first list,
/// with the agent's selectors and client settings — and translates them, so `explain` and
/// `trace` can read a cluster instead of object files.
pub fn fetch_translation(cli: &Flags, settings: &Settings) -> anyhow::Result<Translation> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = super::run::connect(cli, settings).await?;
        let stores = start(client, &settings.hostname, Arc::new(Notify::new()));
        tokio::time::timeout(LIST_TIMEOUT, stores.wait_until_ready())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the API server did not list Services, EndpointSlices and Nodes within {} s",
                    LIST_TIMEOUT.as_secs()
                )
            })??;
        let (objects, services, slices) = stores.snapshot();
        Ok(translate::translate_digested(
            &objects, &services, &slices, settings,
        ))
    })
}

/// Starts one watcher per kind on `client`, each feeding a store and waking `changed` on every
/// change. The tasks run until the process ends, reconnecting with back-off.
pub fn start(client: Client, node_name: &str, changed: Arc<Notify>) -> ApiStores {
    start_counting(client, node_name, changed, None)
}

/// [`start`], also counting Service and EndpointSlice changes in `metrics` as they arrive.
pub fn start_counting(
    client: Client,
    node_name: &str,
    changed: Arc<Notify>,
    metrics: Option<Arc<Metrics>>,
) -> ApiStores {
    let labels = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let m = metrics.clone();
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        labels.clone(),
        changed.clone(),
        |s: Service| services::digest(&s, &Origin::memory()),
        move |s, change| {
            if let Some(m) = &m {
                changes::service_event(m, s, change)
            }
        },
    );
    let mut names = NodeNames::default();
    let endpoint_slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        labels,
        changed.clone(),
        move |s: EndpointSlice| digest(&s, &Origin::memory(), &mut names),
        move |s, change| {
            if let Some(m) = &metrics {
                changes::endpoint_slice_event(m, s, change)
            }
        },
    );
    let nodes = spawn_reflector(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        changed,
        |mut n: Node| {
            n.slim();
            n
        },
        |_, _| {},
    );
    ApiStores {
        services,
        endpoint_slices,
        nodes,
    }
}

/// A watcher on `api` whose objects, turned into `T` by `keep` as they arrive, fill a store;
/// `observe` sees each object first, with what happened to it.
fn spawn_reflector<K, T>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    mut keep: impl FnMut(K) -> T + Send + 'static,
    mut observe: impl FnMut(&K, Change) + Send + 'static,
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
                watcher::Event::Apply(o) => {
                    observe(&o, Change::Applied);
                    watcher::Event::Apply(keep(o))
                }
                watcher::Event::Delete(o) => {
                    observe(&o, Change::Deleted);
                    watcher::Event::Delete(keep(o))
                }
                watcher::Event::InitApply(o) => {
                    observe(&o, Change::Listed);
                    watcher::Event::InitApply(keep(o))
                }
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

    /// The agent's path (objects digested as they arrive, the Node slimmed) translates exactly
    /// as the dry-run's path (whole objects from files) does.
    #[test]
    fn digests_translate_as_the_objects_do() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a",
                           "conditions": {"ready": true}, "hints": {"forZones": [{"name": "z"}]},
                           "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"},
                           "hostname": "web-0"},
                          {"addresses": ["127.0.0.1"], "nodeName": "node-b"}]
        }))
        .unwrap();
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
            "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "web"}, "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}
        }))
        .unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.1"}],
                       "images": [{"names": ["busybox"], "sizeBytes": 1}]}
        }))
        .unwrap();
        let settings = crate::settings::Settings {
            hostname: "node-a".into(),
            ..Default::default()
        };
        let whole = crate::translate::translate(
            &Objects::from_parts(vec![svc.clone()], vec![slice.clone()], vec![node.clone()]),
            &settings,
        );
        let mut slim_node = node;
        slim_node.slim();
        assert!(slim_node.status.as_ref().unwrap().images.is_none());
        let service_digest = services::digest(&svc, &Origin::memory());
        assert_eq!(service_digest.resource_version.as_deref(), Some("3"));
        let slice_digest = digest(&slice, &Origin::memory(), &mut NodeNames::default());
        assert_eq!(slice_digest.uid.as_deref(), Some("u"));
        let digested = crate::translate::translate_digested(
            &Objects::from_parts(vec![], vec![], vec![slim_node]),
            &[service_digest],
            &[slice_digest],
            &settings,
        );
        assert_eq!(digested, whole);
        assert_eq!(whole.model.services[0].endpoints.len(), 1);
        assert_eq!(
            whole.warnings.len(),
            1,
            "the loopback endpoint: {:?}",
            whole.warnings
        );
    }
}
