//! Proves the in-process test API server (`testkit/src/apiserver`) against kube-rs itself: lists with
//! kube-proxy's selectors, paging, writes and their errors, `watcher` events, `reflector`
//! convergence across 410 re-lists, API server restarts, a late start, bookmarks and a
//! kubeconfig file. Each test is bounded by a time-out so a hang fails fast.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;
use testkit::apiserver::{ApiServer, Kind};

/// kube-proxy's selector for Services and EndpointSlices (cmd/kube-proxy/app/server.go).
const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Runs a test body with a hard time limit.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out (hang?)");
}

/// Polls `f` every 20 ms until it holds (the enclosing `bounded` limits the wait).
async fn eventually(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn service(ns: &str, name: &str, labels: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn slice(ns: &str, name: &str, ip: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap()
}

/// `ns/name@resourceVersion` of every object in a reflector store.
fn store_state<K>(store: &Store<K>) -> BTreeSet<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .map(|o| {
            let m = o.meta();
            format!(
                "{}/{}@{}",
                m.namespace.as_deref().unwrap_or(""),
                m.name.as_deref().unwrap_or(""),
                m.resource_version.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// The same for the server's own data.
fn server_state(server: &ApiServer, kind: Kind) -> BTreeSet<String> {
    server
        .list(kind)
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            format!(
                "{}/{}@{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or(""),
                m["resourceVersion"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Number of (non-watch) list requests on EndpointSlices so far.
fn slice_lists(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| {
            r.contains("/endpointslices") && r.starts_with("GET") && !r.contains("watch=true")
        })
        .count()
}

/// A reflector over all EndpointSlices, driven in the background; returns its store.
fn slice_reflector(server: &ApiServer) -> Store<EndpointSlice> {
    let (store, writer) = reflector::store();
    let stream = watcher(
        Api::<EndpointSlice>::all(server.client()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

async fn next<S: Stream + Unpin>(s: &mut S) -> S::Item {
    s.next().await.expect("stream ended")
}

#[tokio::test]
async fn list_selectors_paging_and_writes() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.apply(&service("default", "plain", json!({})));
        server.apply(&service(
            "default",
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "cilium"}),
        ));
        server.apply(&service(
            "kube-system",
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ));
        server.apply(&service(
            "kube-system",
            "dns",
            json!({"k8s-app": "kube-dns"}),
        ));
        let all: Api<Service> = Api::all(server.client());

        // kube-proxy's selector drops the labelled Services.
        let l = all
            .list(&ListParams::default().labels(PROXY_SELECTOR))
            .await
            .unwrap();
        let names: Vec<_> = l
            .items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["plain", "dns"]);
        assert_eq!(
            l.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
        for (sel, want) in [
            ("k8s-app=kube-dns", 1),
            ("k8s-app!=kube-dns", 3),
            ("k8s-app", 1),
            ("k8s-app in (a,kube-dns),!service.kubernetes.io/headless", 1),
        ] {
            let n = all
                .list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len();
            assert_eq!(n, want, "{sel}");
        }
        let bad = all
            .list(&ListParams::default().labels("a b c"))
            .await
            .unwrap_err();
        assert!(
            matches!(&bad, kube::Error::Api(s) if s.code == 400),
            "{bad:?}"
        );

        // Namespaced list and get; 404 with a Status.
        let ks: Api<Service> = Api::namespaced(server.client(), "kube-system");
        assert_eq!(
            ks.list(&ListParams::default()).await.unwrap().items.len(),
            2
        );
        assert_eq!(
            ks.get("dns").await.unwrap().metadata.name.as_deref(),
            Some("dns")
        );
        let e = ks.get("nope").await.unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
            "{e:?}"
        );

        // Paging: limit + continue, one consistent snapshot even with a write in between.
        let page1 = all.list(&ListParams::default().limit(3)).await.unwrap();
        assert_eq!(page1.items.len(), 3);
        let token = page1.metadata.continue_.clone().expect("continue token");
        server.apply(&service("zzz", "late", json!({})));
        let page2 = all
            .list(&ListParams::default().limit(3).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            page2.items.len(),
            1,
            "snapshot of page 1: the late Service is not in it"
        );
        assert!(page2.metadata.continue_.is_none());
        assert_eq!(
            page2.metadata.resource_version,
            page1.metadata.resource_version
        );
        // A continue token older than the retained history: 410 Expired.
        server.compact();
        let e = all
            .list(&ListParams::default().limit(3).continue_token(&token))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"),
            "{e:?}"
        );

        // Writes: create (201, then 409 AlreadyExists), replace with optimistic concurrency, delete.
        let def: Api<Service> = Api::namespaced(server.client(), "default");
        let created = def
            .create(
                &PostParams::default(),
                &service("default", "new", json!({})),
            )
            .await
            .unwrap();
        let rv = created.metadata.resource_version.clone().unwrap();
        assert_eq!(rv, server.resource_version().to_string());
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        let e = def
            .create(&PostParams::default(), &created)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
            "{e:?}"
        );
        let mut upd = created.clone();
        upd.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
        let replaced = def
            .replace("new", &PostParams::default(), &upd)
            .await
            .unwrap();
        assert_ne!(
            replaced.metadata.resource_version.as_deref(),
            Some(rv.as_str())
        );
        assert_eq!(replaced.metadata.uid, created.metadata.uid);
        let e = def
            .replace("new", &PostParams::default(), &upd)
            .await
            .unwrap_err(); // stale rv
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
            "{e:?}"
        );
        let e = def
            .create(&PostParams::default(), &service("other", "x", json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 400),
            "namespace mismatch: {e:?}"
        );
        let gone = def.delete("new", &DeleteParams::default()).await.unwrap();
        assert!(gone.is_left());
        let e = def
            .delete("new", &DeleteParams::default())
            .await
            .unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 404), "{e:?}");
        assert!(server.get(Kind::Service, "default", "new").is_none());
    })
    .await;
}

#[tokio::test]
async fn watcher_events_init_apply_delete() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.apply(&slice("default", "web-1", "10.0.0.1"));
        let api: Api<EndpointSlice> = Api::all(server.client());
        let mut w = watcher(api, watcher::Config::default()).boxed();
        assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
        match next(&mut w).await.unwrap() {
            watcher::Event::InitApply(s) => assert_eq!(s.metadata.name.as_deref(), Some("web-1")),
            e => panic!("want InitApply, got {e:?}"),
        }
        assert!(matches!(
            next(&mut w).await.unwrap(),
            watcher::Event::InitDone
        ));

        let ns: Api<EndpointSlice> = Api::namespaced(server.client(), "default");
        ns.create(
            &PostParams::default(),
            &slice("default", "web-2", "10.0.0.2"),
        )
        .await
        .unwrap();
        match next(&mut w).await.unwrap() {
            watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("web-2")),
            e => panic!("want Apply, got {e:?}"),
        }
        ns.delete("web-1", &DeleteParams::default()).await.unwrap();
        match next(&mut w).await.unwrap() {
            watcher::Event::Delete(s) => {
                assert_eq!(s.metadata.name.as_deref(), Some("web-1"));
                assert_eq!(
                    s.metadata.resource_version,
                    Some(server.resource_version().to_string())
                );
            }
            e => panic!("want Delete, got {e:?}"),
        }
        // In-process writes notify watches too.
        server.apply(&slice("default", "web-2", "10.0.0.9"));
        assert!(matches!(
            next(&mut w).await.unwrap(),
            watcher::Event::Apply(_)
        ));
        server
            .delete(Kind::EndpointSlice, "default", "web-2")
            .unwrap();
        assert!(matches!(
            next(&mut w).await.unwrap(),
            watcher::Event::Delete(_)
        ));

        // Streaming lists (sendInitialEvents + the initial-events-end bookmark) work as well.
        server.apply(&slice("default", "web-3", "10.0.0.3"));
        let api: Api<EndpointSlice> = Api::all(server.client());
        let mut s = watcher(api, watcher::Config::default().streaming_lists()).boxed();
        assert!(matches!(next(&mut s).await.unwrap(), watcher::Event::Init));
        assert!(matches!(
            next(&mut s).await.unwrap(),
            watcher::Event::InitApply(_)
        ));
        assert!(matches!(
            next(&mut s).await.unwrap(),
            watcher::Event::InitDone
        ));
    })
    .await;
}

#[tokio::test]
async fn reflector_converges_after_writes() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        for i in 0..5 {
            server.apply(&slice("default", &format!("s{i}"), "10.0.0.1"));
        }
        let store = slice_reflector(&server);
        store.wait_until_ready().await.unwrap();
        assert_eq!(
            store_state(&store),
            server_state(&server, Kind::EndpointSlice)
        );
        let ns: Api<EndpointSlice> = Api::namespaced(server.client(), "default");
        ns.delete("s0", &DeleteParams::default()).await.unwrap();
        server.apply(&slice("default", "s1", "10.0.0.2"));
        server.apply(&slice("other", "s9", "10.0.0.3"));
        server.delete(Kind::EndpointSlice, "default", "s4");
        eventually(|| store_state(&store) == server_state(&server, Kind::EndpointSlice)).await;
        assert_eq!(store.state().len(), 4);
    })
    .await;
}

#[tokio::test]
async fn relist_after_compaction() {
    bounded(15, async {
        let server = ApiServer::spawn().await;
        server.apply(&slice("default", "a", "10.0.0.1"));
        server.apply(&slice("default", "b", "10.0.0.2"));
        // Record the raw watcher events alongside the reflector.
        let (store, writer) = reflector::store();
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let stream = watcher(
            Api::<EndpointSlice>::all(server.client()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer);
        tokio::spawn(stream.for_each(move |e| {
            let _ = tx.send(match e {
                Ok(watcher::Event::Init) => "init".to_string(),
                Ok(_) => "event".to_string(),
                Err(e) => format!("error: {e}"),
            });
            async {}
        }));
        store.wait_until_ready().await.unwrap();
        assert_eq!(slice_lists(&server), 1);

        // 1) Changes the watcher cannot see (other kind), compaction, then the watch is closed:
        //    the re-watch from its old resourceVersion gets 410 and it re-lists.
        server.apply(&service("default", "web", json!({})));
        server.compact();
        server.close_watches();
        let mut seen = Vec::new();
        while seen.iter().filter(|e| *e == "init").count() < 2 {
            seen.push(events.recv().await.unwrap());
        }
        assert!(
            seen.iter()
                .any(|e| e.contains("410") || e.contains("too old")),
            "{seen:?}"
        );
        eventually(|| slice_lists(&server) == 2).await;
        eventually(|| store_state(&store) == server_state(&server, Kind::EndpointSlice)).await;

        // 2) Changes made while the server is down, then compacted: nothing is lost on re-list
        //    (the deleted slice leaves the store, the new and modified ones arrive).
        server.stop().await;
        server.delete(Kind::EndpointSlice, "default", "a").unwrap();
        server.apply(&slice("default", "b", "10.0.0.22"));
        server.apply(&slice("default", "c", "10.0.0.3"));
        server.compact();
        server.start().await.unwrap();
        eventually(|| store_state(&store) == server_state(&server, Kind::EndpointSlice)).await;
        assert_eq!(slice_lists(&server), 3);
        let ips: BTreeSet<String> = store
            .state()
            .iter()
            .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
            .collect();
        assert_eq!(
            ips,
            ["10.0.0.22".to_string(), "10.0.0.3".to_string()].into()
        );
    })
    .await;
}

#[tokio::test]
async fn watcher_reconnects_after_restart() {
    bounded(15, async {
        let server = ApiServer::spawn().await;
        server.apply(&slice("default", "a", "10.0.0.1"));
        let store = slice_reflector(&server);
        store.wait_until_ready().await.unwrap();
        let addr = server.addr();

        server.stop().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
        server.apply(&slice("default", "b", "10.0.0.2"));
        server.delete(Kind::EndpointSlice, "default", "a");
        // The open watch died with the server: nothing is delivered while it is down.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.state().len(), 1);
        assert_eq!(store.state()[0].metadata.name.as_deref(), Some("a"));
        server.start().await.unwrap();
        assert_eq!(server.addr(), addr);
        eventually(|| store_state(&store) == server_state(&server, Kind::EndpointSlice)).await;
        // Resumed from its resourceVersion (history intact): no second list.
        assert_eq!(slice_lists(&server), 1);
        // And live events flow again on the new connection.
        server.apply(&slice("default", "c", "10.0.0.3"));
        eventually(|| store_state(&store) == server_state(&server, Kind::EndpointSlice)).await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_at_start_then_up() {
    bounded(15, async {
        let server = ApiServer::stopped();
        server.apply(&slice("default", "a", "10.0.0.1"));
        let store = slice_reflector(&server);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.state().is_empty());
        server.start_after(Duration::from_millis(200));
        store.wait_until_ready().await.unwrap();
        assert_eq!(
            store_state(&store),
            server_state(&server, Kind::EndpointSlice)
        );
    })
    .await;
}

#[tokio::test]
async fn node_field_selector() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.apply(&node("node-1"));
        server.apply(&node("node-2"));
        let nodes: Api<Node> = Api::all(server.client());
        let l = nodes
            .list(&ListParams::default().fields("metadata.name=node-2"))
            .await
            .unwrap();
        assert_eq!(l.items.len(), 1);
        assert_eq!(l.items[0].metadata.name.as_deref(), Some("node-2"));
        assert!(l.items[0].metadata.namespace.is_none());
        assert_eq!(
            nodes.get("node-1").await.unwrap().metadata.name.as_deref(),
            Some("node-1")
        );
        let e = nodes
            .list(&ListParams::default().fields("spec.foo=x"))
            .await
            .unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 400), "{e:?}");

        // A reflector on this node only (as kube-proxy watches its Node).
        let (store, writer) = reflector::store();
        let cfg = watcher::Config::default().fields("metadata.name=node-1");
        tokio::spawn(
            watcher(nodes.clone(), cfg)
                .reflect(writer)
                .for_each(|_| async {}),
        );
        store.wait_until_ready().await.unwrap();
        assert_eq!(store.state().len(), 1);
        let mut n1 = node("node-1");
        n1.metadata.labels = Some([("topology.kubernetes.io/zone".into(), "z1".into())].into());
        server.apply(&n1);
        server.apply(&node("node-3"));
        eventually(|| {
            let s = store.state();
            s.len() == 1
                && s[0]
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("topology.kubernetes.io/zone"))
        })
        .await;
        server.delete(Kind::Node, "", "node-1");
        eventually(|| store.state().is_empty()).await;
    })
    .await;
}

#[tokio::test]
async fn raw_watch_bookmarks_selector_transitions_and_410() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.set_bookmark_interval(Duration::from_millis(100));
        let svc = server.apply(&service("default", "web", json!({})));
        let rv0 = svc["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let api: Api<Service> = Api::all(server.client());
        let wp = WatchParams::default().labels(PROXY_SELECTOR).timeout(5);
        let mut w = api.watch(&wp, &rv0).await.unwrap().boxed();

        // Gaining the excluded label is a DELETED for this selector, losing it an ADDED.
        server.apply(&service(
            "default",
            "web",
            json!({"service.kubernetes.io/headless": ""}),
        ));
        server.apply(&service("default", "web", json!({})));
        let rv_now = server.resource_version().to_string();
        let mut got = Vec::new();
        loop {
            match next(&mut w).await.unwrap() {
                WatchEvent::Deleted(s) => {
                    got.push(format!("DELETED@{}", s.metadata.resource_version.unwrap()))
                }
                WatchEvent::Added(s) => {
                    got.push(format!("ADDED@{}", s.metadata.resource_version.unwrap()))
                }
                WatchEvent::Modified(_) => got.push("MODIFIED".into()),
                WatchEvent::Bookmark(b) => {
                    assert_eq!(b.metadata.resource_version, rv_now);
                    break;
                }
                WatchEvent::Error(e) => panic!("{e:?}"),
            }
        }
        let rv1 = (rv0.parse::<u64>().unwrap() + 1).to_string();
        assert_eq!(got, [format!("DELETED@{rv1}"), format!("ADDED@{rv_now}")]);

        // Watching from a compacted resourceVersion: one ERROR event (410 Expired), then the end.
        server.compact();
        server.apply(&service("default", "web2", json!({})));
        let mut w = api
            .watch(&WatchParams::default(), &rv0)
            .await
            .unwrap()
            .boxed();
        match next(&mut w).await {
            Ok(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("want a 410 ERROR event, got {other:?}"),
        }
        assert!(w.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn kubeconfig_file_and_version() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.apply(&node("node-1"));
        let dir = std::env::temp_dir().join(format!("kprs-apiserver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        server.write_kubeconfig(&path).unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        assert_eq!(
            cfg.cluster_url.to_string().trim_end_matches('/'),
            server.url()
        );
        let client = kube::Client::try_from(cfg).unwrap();
        let v = client.apiserver_version().await.unwrap();
        assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
        let nodes: Api<Node> = Api::all(client);
        assert_eq!(
            nodes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        std::fs::remove_dir_all(&dir).ok();
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_a_status() {
    bounded(10, async {
        let server = ApiServer::spawn().await;
        server.apply(&service("default", "web", json!({})));
        let client = server.client();
        let cases: [(&str, &str, &str, u16); 10] = [
            ("GET", "/api/v1/pods", "", 404),
            ("GET", "/api/v1/namespaces/default/nodes", "", 404),
            ("GET", "/api/v1/services?limit=abc", "", 400),
            (
                "GET",
                "/api/v1/services?watch=true&resourceVersion=x",
                "",
                400,
            ),
            ("GET", "/api/v1/services?fieldSelector=spec.x%3Dy", "", 400),
            ("GET", "/api/v1/services?continue=garbage", "", 400),
            (
                "POST",
                "/api/v1/namespaces/default/services",
                "{not json",
                400,
            ),
            (
                "POST",
                "/api/v1/namespaces/default/services",
                r#"{"kind":"Node","metadata":{"name":"n"}}"#,
                400,
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/services/web",
                r#"{"metadata":{"name":"other"}}"#,
                400,
            ),
            ("DELETE", "/api/v1/namespaces/default/services", "", 405),
        ];
        for (method, uri, body, code) in cases {
            let req = hyper::Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(body.as_bytes().to_vec())
                .unwrap();
            match client.request_text(req).await {
                Err(kube::Error::Api(s)) => assert_eq!(s.code, code, "{method} {uri}: {s:?}"),
                other => panic!("{method} {uri}: want a {code} Status, got {other:?}"),
            }
        }
        // The server is still serving.
        let all: Api<Service> = Api::all(client);
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            1
        );
    })
    .await;
}
