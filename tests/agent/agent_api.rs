//! The node agent against an API server, end to end, inside a lab node namespace.
//!
//! By default the API server is the in-process test server (`testkit/src/apiserver`), started on
//! loopback INSIDE the node namespace (the agent, running there too, reaches it on 127.0.0.1).
//! Objects are created through the HTTP API with a kube-rs client, as a controller would.
//! With `KUBE_PROXY_RS_E2E_KUBECONFIG` set, the basic test runs against that API server instead
//! (a real cluster or kube-apiserver; the namespace `kprs-e2e` is created and used, and the
//! cluster's service range must contain 10.96.0.0/16).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use testkit::agent::{AgentProcess, in_netns, nft_nat, svc_chains};
use testkit::apiserver::ApiServer;
use testkit::{Lab, Netns, TempDir};

const NS: &str = "kprs-e2e";

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "node-a", "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

/// The agent against the API server in `kubeconfig`, fast-paced for tests.
fn start_agent(node: &Netns, kubeconfig: &Path, log: &Path) -> AgentProcess {
    AgentProcess::start_in_lab(node, ("--kubeconfig", kubeconfig), &[], &[], log)
}

fn nat(node: &str) -> String {
    nft_nat(node)
}

async fn wait_until(
    what: &str,
    limit: Duration,
    agent: &AgentProcess,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}\nagent log:\n{}", agent.log());
}

fn connect(lab: &Lab, ip: &str) -> Result<String, testkit::ConnErr> {
    testkit::connect(&lab.client("c").ns, ip, 80, Duration::from_secs(2))
}

#[test]
fn agent_follows_the_api_server() {
    testkit::needs_root!();
    let lab = Arc::new(testkit::agent::lab("apie", 2));
    let tmp = TempDir::new("apie");
    let kubeconfig = tmp.path().join("kubeconfig");
    let log = tmp.path().join("agent.log");
    let real = std::env::var("KUBE_PROXY_RS_E2E_KUBECONFIG")
        .ok()
        .map(PathBuf::from);
    let node = lab.node.name().to_string();
    let lab2 = lab.clone();
    in_netns(&lab.node, move || async move {
        let lab = lab2;
        let (_server, client, kubeconfig) = match real {
            Some(path) => {
                let cfg = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&path).unwrap(),
                    &Default::default(),
                )
                .await
                .unwrap();
                let client = kube::Client::try_from(cfg).unwrap();
                let ns: Namespace =
                    serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
                let _ = Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &ns)
                    .await;
                (None, client, path)
            }
            None => {
                let server = ApiServer::spawn().await;
                server.write_kubeconfig(&kubeconfig).unwrap();
                let client = server.client();
                (Some(server), client, kubeconfig)
            }
        };
        let agent = start_agent(&lab.node, &kubeconfig, &log);
        let services: Api<Service> = Api::namespaced(client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
        let pp = PostParams::default();

        let created = Instant::now();
        services
            .create(&pp, &service("web", "10.96.0.10"))
            .await
            .unwrap();
        slices
            .create(&pp, &slice("web", &["10.244.1.11", "10.244.1.12"]))
            .await
            .unwrap();
        let took = wait_until(
            "the Service's chains appear",
            Duration::from_secs(10),
            &agent,
            || svc_chains(&nat(&node)) == 1,
        )
        .await;
        eprintln!(
            "Service created -> chains in place: {:?} (agent start included)",
            created.elapsed().min(took)
        );

        // Through the API, an already running agent applies a change (the time it took is printed).
        let t0 = Instant::now();
        services
            .create(&pp, &service("api", "10.96.0.11"))
            .await
            .unwrap();
        slices
            .create(&pp, &slice("api", &["10.244.1.12"]))
            .await
            .unwrap();
        let took = wait_until(
            "the second Service",
            Duration::from_secs(60),
            &agent,
            || svc_chains(&nat(&node)) == 2,
        )
        .await;
        eprintln!(
            "Service created -> chains in place: {took:?} (created {:?} ago)",
            t0.elapsed()
        );
        let answers: std::collections::BTreeSet<String> = (0..20)
            .map(|_| {
                connect(&lab, "10.96.0.10")
                    .unwrap_or_else(|e| panic!("connect: {e:?}\n{}", lab.diagnostics()))
            })
            .collect();
        assert_eq!(answers.len(), 2, "both backends reached: {answers:?}");
        assert_eq!(connect(&lab, "10.96.0.11").unwrap(), "pb");

        // Deleted through the API: its chains go.
        services
            .delete("api", &DeleteParams::default())
            .await
            .unwrap();
        slices
            .delete("api-1", &DeleteParams::default())
            .await
            .unwrap();
        wait_until(
            "the deleted Service's chains go",
            Duration::from_secs(60),
            &agent,
            || svc_chains(&nat(&node)) == 1,
        )
        .await;
        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        slices
            .delete("web-1", &DeleteParams::default())
            .await
            .unwrap();
        wait_until(
            "every Service chain gone",
            Duration::from_secs(60),
            &agent,
            || svc_chains(&nat(&node)) == 0 && nat(&node).contains(":KUBE-SERVICES"),
        )
        .await;
    });
}

#[test]
fn agent_waits_for_an_unreachable_api_server_then_syncs() {
    testkit::needs_root!();
    let lab = testkit::agent::lab("apiu", 1);
    let tmp = TempDir::new("apiu");
    let kubeconfig = tmp.path().join("kubeconfig");
    let log = tmp.path().join("agent.log");
    let node = lab.node.name().to_string();
    let node_ns = lab.node.name().to_string();
    let _ = node_ns;
    let lab = Arc::new(lab);
    let lab2 = lab.clone();
    in_netns(&lab.node, move || async move {
        let server = ApiServer::stopped();
        server.write_kubeconfig(&kubeconfig).unwrap();
        server.apply(&service("web", "10.96.0.10"));
        server.apply(&slice("web", &["10.244.1.11"]));
        let agent = start_agent(&lab2.node, &kubeconfig, &log);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            svc_chains(&nat(&node)),
            0,
            "nothing may be applied before the initial list"
        );
        assert!(
            !nat(&node).contains(":KUBE-SERVICES"),
            "the agent must not touch the kernel before it has a complete view:\n{}",
            agent.log()
        );
        server.start().await.unwrap();
        wait_until(
            "sync once the API server is up",
            Duration::from_secs(15),
            &agent,
            || svc_chains(&nat(&node)) == 1,
        )
        .await;
        assert_eq!(connect(&lab2, "10.96.0.10").unwrap(), "pa");
    });
}

#[test]
fn agent_rides_out_an_api_server_restart_and_410_gone_without_flapping() {
    testkit::needs_root!();
    let lab = Arc::new(testkit::agent::lab("apir", 2));
    let tmp = TempDir::new("apir");
    let kubeconfig = tmp.path().join("kubeconfig");
    let log = tmp.path().join("agent.log");
    let node = lab.node.name().to_string();
    let lab2 = lab.clone();
    in_netns(&lab.node, move || async move {
        let server = ApiServer::spawn().await;
        server.write_kubeconfig(&kubeconfig).unwrap();
        server.apply(&service("web", "10.96.0.10"));
        server.apply(&slice("web", &["10.244.1.11"]));
        let agent = start_agent(&lab2.node, &kubeconfig, &log);
        wait_until("first sync", Duration::from_secs(10), &agent, || {
            svc_chains(&nat(&node)) == 1
        })
        .await;

        // A watcher checks many times a second that the Service's rules never disappear.
        let missing = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let checker = {
            let (missing, stop, node) = (missing.clone(), stop.clone(), node.clone());
            thread::spawn(move || {
                let mut checks = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    if !nat(&node).contains("-j KUBE-SVC-") {
                        missing.fetch_add(1, Ordering::SeqCst);
                    }
                    checks += 1;
                }
                checks
            })
        };

        // The API server dies: rules stay; a change made meanwhile arrives after it returns.
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            svc_chains(&nat(&node)),
            1,
            "rules stay while the API server is down"
        );
        server.apply(&slice("web", &["10.244.1.11", "10.244.1.12"]));
        server.start().await.unwrap();
        wait_until(
            "converged after the API server came back",
            Duration::from_secs(20),
            &agent,
            || {
                nat(&node)
                    .lines()
                    .filter(|l| l.starts_with(":KUBE-SEP-"))
                    .count()
                    == 2
            },
        )
        .await;

        // 410 Gone: while the watches are down, changes happen and the history they would
        // resume from is compacted away; the agent's watchers get 410, re-list and converge.
        let lists = |server: &ApiServer| {
            server
                .requests()
                .iter()
                .filter(|r| r.starts_with("GET") && r.contains("services") && !r.contains("watch="))
                .count()
        };
        let lists_before = lists(&server);
        server.stop().await;
        server.apply(&service("api", "10.96.0.11"));
        server.apply(&slice("api", &["10.244.1.12"]));
        server.compact();
        server.start().await.unwrap();
        wait_until(
            "converged after 410 Gone",
            Duration::from_secs(20),
            &agent,
            || svc_chains(&nat(&node)) == 2,
        )
        .await;
        assert!(
            lists(&server) > lists_before,
            "the agent re-listed Services after 410: {:?}",
            server.requests()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let checks = checker.join().unwrap();
        assert!(checks > 10, "the checker ran ({checks} checks)");
        assert_eq!(
            missing.load(Ordering::SeqCst),
            0,
            "the Service's rules went missing during a fault:\n{}",
            agent.log()
        );
        let answers: std::collections::BTreeSet<String> = (0..20)
            .map(|_| connect(&lab2, "10.96.0.10").unwrap())
            .collect();
        assert_eq!(answers.len(), 2, "{answers:?}");
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .filter(|r| r.contains("endpointslices") && !r.contains("watch"))
                .count()
                >= 2,
            "the agent re-listed: {requests:?}"
        );
    });
}
