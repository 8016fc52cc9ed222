//! Objects from the API server: a watcher and reflector store per kind, with upstream's
//! selectors, so the agent always holds the latest Services, EndpointSlices and its own Node.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::objects::Objects;

/// Upstream's selector: Services and slices handled by another proxy, or headless, are not ours.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The annotation the network-programming latency metric reads; the only one worth keeping.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The three stores the agent renders from.
#[derive(Clone)]
pub struct ApiStores {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
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

    /// A copy of the current objects, in the form the translator reads.
    pub fn snapshot(&self) -> Objects {
        Objects::from_shared(
            self.services.state(),
            self.endpoint_slices.state(),
            self.nodes.state(),
        )
    }
}

/// Drops what the agent never reads, so 10,000 Services do not cost their managedFields.
fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == TRIGGER_TIME_ANNOTATION);
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
    );
    let endpoint_slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        labels,
        changed.clone(),
    );
    let nodes = spawn_reflector(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        changed,
    );
    ApiStores {
        services,
        endpoint_slices,
        nodes,
    }
}

fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
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
