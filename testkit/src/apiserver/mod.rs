//! An in-process Kubernetes API server for tests (`mod apiserver;` in a test file).
//!
//! Serves Services, EndpointSlices and Nodes over plain HTTP/1.1 on loopback with the real API's
//! JSON and semantics, enough for kube-rs's `watcher` / `reflector` and for the agent binary
//! (through [`ApiServer::write_kubeconfig`]):
//!
//! - list (`labelSelector`, `fieldSelector=metadata.name=X`, `limit` + `continue` over one
//!   consistent snapshot, `resourceVersion` + `resourceVersionMatch`), get;
//! - watch (`watch=true`, `resourceVersion`, `allowWatchBookmarks`, `timeoutSeconds`,
//!   `sendInitialEvents`): newline-delimited JSON events over a chunked response, replaying the
//!   retained history after the given version, then live; periodic BOOKMARKs; a version older
//!   than the history gets an `ERROR` event with a 410 `Expired` Status, as the real server does;
//! - create (POST, 409 AlreadyExists), update (PUT, 409 Conflict on a stale
//!   `metadata.resourceVersion`), delete (DELETE, returns the object).
//!
//! Fault injection: [`ApiServer::stop`] / [`ApiServer::start`] (same port, same data),
//! [`ApiServer::compact`], [`ApiServer::close_watches`], [`ApiServer::stopped`] +
//! [`ApiServer::start_after`] ("API server unreachable at start").
//!
//! Layout: [`store`] (objects, resourceVersions, history), [`select`] (selectors), [`http`]
//! (routing, handlers, watch streams), this file (lifecycle and the in-process API).
#![allow(dead_code)]

pub mod http;
pub mod select;
pub mod store;

pub use store::{ApiError, Kind};

use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{Store, WriteMode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Changes kept for watches and paged lists before the oldest are compacted away.
pub const DEFAULT_HISTORY: usize = 1000;
/// How often a watch that asked for bookmarks gets one (the real server: about a minute).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// A test API server. Dropping it stops it.
pub struct ApiServer {
    inner: Arc<Inner>,
}

/// State shared by the handle, the accept loop and the request handlers.
pub struct Inner {
    addr: SocketAddr,
    store: Mutex<Store>,
    /// Bumped by `close_watches()`; every open watch ends (cleanly) when it changes.
    closer: tokio::sync::watch::Sender<u64>,
    running: Mutex<Option<Running>>,
    bookmark_interval: Mutex<Duration>,
    requests: Mutex<Vec<String>>,
}

/// A listening server: the accept loop and the way to tell it to die.
struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Locks, ignoring poisoning (a panicking test thread must not wedge the server).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn bookmark_interval(&self) -> Duration {
        *lock(&self.bookmark_interval)
    }

    fn log_request(&self, method: &hyper::Method, uri: &hyper::Uri) {
        lock(&self.requests).push(format!("{method} {uri}"));
    }
}

impl ApiServer {
    /// A server listening on a random loopback port.
    pub async fn spawn() -> ApiServer {
        ApiServer::spawn_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind 127.0.0.1:0")
    }

    /// A server listening on `addr` (port 0: a random one).
    pub async fn spawn_on(addr: SocketAddr) -> io::Result<ApiServer> {
        let listener = TcpListener::bind(addr).await?;
        let server = ApiServer::new(listener.local_addr()?);
        server.inner.listen(listener);
        Ok(server)
    }

    /// A server that is not listening yet, on a free loopback port reserved now (bound and
    /// released, so a client can be configured with it). Call [`start`](Self::start) or
    /// [`start_after`](Self::start_after) to bring it up.
    pub fn stopped() -> ApiServer {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        ApiServer::new(l.local_addr().expect("local_addr"))
    }

    fn new(addr: SocketAddr) -> ApiServer {
        ApiServer {
            inner: Arc::new(Inner {
                addr,
                store: Mutex::new(Store::new(DEFAULT_HISTORY)),
                closer: tokio::sync::watch::channel(0).0,
                running: Mutex::new(None),
                bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
                requests: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Where it listens (loopback, a port chosen at start and kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kube-rs configuration for this server (no TLS, no auth).
    pub fn client_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("server URL is a valid URI"))
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.client_config()).expect("kube client for the test server")
    }

    /// A kubeconfig pointing at this server (`server: http://127.0.0.1:PORT`, context "test").
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    \
             namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`, for `--kubeconfig FILE`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Whether it accepts connections now (between `start` and `stop`).
    pub fn is_running(&self) -> bool {
        lock(&self.inner.running).is_some()
    }

    /// (Re)starts listening on the same address, with the same data. No-op if running.
    pub async fn start(&self) -> io::Result<()> {
        self.inner.start().await
    }

    /// Starts listening after `delay`, in the background ("API server not up yet").
    pub fn start_after(&self, delay: Duration) -> JoinHandle<io::Result<()>> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner.start().await
        })
    }

    /// The API server dies: closes the listener and every open connection, watches included.
    /// Data and history are kept; in-process writes keep working. Returns once it is closed.
    pub async fn stop(&self) {
        let running = lock(&self.inner.running).take();
        if let Some(r) = running {
            let _ = r.shutdown.send(());
            let _ = r.task.await;
        }
    }

    /// Ends every open watch cleanly (as a watch timeout would); clients re-watch from their
    /// last resourceVersion.
    pub fn close_watches(&self) {
        self.inner.closer.send_modify(|n| *n += 1);
    }

    /// Drops the change history: a watch from, or a continue token of, any older
    /// resourceVersion now gets 410 Expired.
    pub fn compact(&self) {
        self.inner.store().compact();
    }

    /// How often a watch that asked for bookmarks gets one, from now on.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *lock(&self.inner.bookmark_interval) = every.max(Duration::from_millis(10));
    }

    /// The current (last written) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store().rv()
    }

    /// Creates or replaces an object (a k8s-openapi value or JSON with `kind`), as a write through
    /// the API would: bumps the resourceVersion and notifies watches. Returns the stored object.
    /// Panics on an object that is not a valid Service, EndpointSlice or Node.
    #[track_caller]
    pub fn apply<T: Serialize>(&self, obj: &T) -> Value {
        self.try_apply(obj)
            .unwrap_or_else(|e| panic!("apiserver apply: {}", e.message))
    }

    /// [`apply`](Self::apply), returning the API error instead of panicking.
    pub fn try_apply<T: Serialize>(&self, obj: &T) -> Result<Value, ApiError> {
        let v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let kind = v["kind"]
            .as_str()
            .and_then(Kind::from_kind)
            .ok_or_else(|| ApiError::bad_request(format!("unsupported kind {}", v["kind"])))?;
        self.inner.store().write(kind, None, v, WriteMode::Upsert)
    }

    /// Deletes an object (`ns` is ignored for Nodes); returns it, or None if absent.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { ns } else { "" };
        self.inner
            .store()
            .delete(kind, &(ns.to_string(), name.to_string()))
            .ok()
    }

    /// The stored object of `kind` named `ns/name` (`ns` is ignored for Nodes), if any.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { ns } else { "" };
        self.inner
            .store()
            .get(kind, &(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a kind, sorted by namespace/name.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        let snap = self.inner.store().snapshot(kind, None).unwrap_or_default();
        snap.into_values().collect()
    }

    /// Every request served so far, as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner.requests).clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Tell the accept loop to close everything; it finishes on its own.
        if let Some(r) = lock(&self.inner.running).take() {
            let _ = r.shutdown.send(());
        }
    }
}

impl Inner {
    async fn start(self: &Arc<Self>) -> io::Result<()> {
        if lock(&self.running).is_some() {
            return Ok(());
        }
        // The old listener is closed by now; retry briefly in case the OS is slow to free it.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.listen(listener);
        Ok(())
    }

    fn listen(self: &Arc<Self>, listener: TcpListener) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(self.clone(), listener, rx));
        let old = lock(&self.running).replace(Running { shutdown: tx, task });
        if let Some(old) = old {
            let _ = old.shutdown.send(());
        }
    }
}

/// The accept loop. Each connection is a task in `conns`; on shutdown the listener is dropped
/// and every connection task aborted and awaited, so their sockets are closed on return.
async fn serve(inner: Arc<Inner>, listener: TcpListener, mut shutdown: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| http::handle(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}
