//! The health servers over real sockets: the proxy's `/healthz` and `/livez` (status rules,
//! upstream's JSON body and headers), the Services' health-check node ports (opened, closed,
//! 200/503 with the local endpoint count), and, end to end, the real agent on `--objects` files
//! in a lab node namespace serving all of it (and its metrics) as the node's rules change.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use kube_proxy_rs::settings::ProxyMode;
use kube_proxy_rs::telemetry::health::ProxyHealth;
use kube_proxy_rs::telemetry::metrics::Metrics;
use kube_proxy_rs::telemetry::service_health::ServiceHealthServer;
use rulegen::IpFamily;
use testkit::agent::{
    AgentProcess, HTTP, LAB_FLAGS, NODE, failing_restore, nft_nat, service, slice, slice_yaml,
    svc_chains, wait_for, wait_until, write_objects,
};
use testkit::{Netns, TempDir};

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// `GET path` on `addr` (from inside network namespace `ns` when given: a fresh thread
/// `setns`-es into it, so the socket never exists elsewhere), `Connection: close`.
fn get(ns: Option<&Path>, addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let ns = ns.map(Path::to_path_buf);
    let path = path.to_string();
    thread::spawn(move || {
        if let Some(ns) = ns {
            // Only this new thread changes namespace.
            testkit::sock::enter(&ns)?;
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end: {text:?}")))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_string(),
        })
    })
    .join()
    .expect("HTTP client thread")
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Checks `/healthz` or `/livez`'s JSON shape (upstream's `ProxyHealth` through encoding/json).
fn check_body(a: &Answer, healthz: bool) -> serde_json::Value {
    assert_eq!(a.header("content-type"), Some("application/json"), "{a:?}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{a:?}");
    let v = a.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in ["lastUpdated", "currentTime", "healthy"] {
        assert!(keys.contains(&k), "{k} missing: {}", a.body);
    }
    assert_eq!(keys.contains(&"nodeEligible"), healthz, "{}", a.body);
    // The fields in upstream's order (Go marshals struct fields in declaration order).
    assert!(a.body.starts_with("{\"lastUpdated\":\""), "{}", a.body);
    for k in ["lastUpdated", "currentTime"] {
        let t = v[k].as_str().unwrap();
        assert!(
            t.ends_with('Z') && t.len() >= 20,
            "{k} is RFC 3339 UTC: {t}"
        );
    }
    v
}

#[test]
fn healthz_and_livez_follow_the_status_rules() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let metrics = Metrics::new(ProxyMode::Iptables, IpFamily::V4);
    let timeout = Duration::from_millis(300);
    let health = ProxyHealth::new(timeout, IpFamily::V4, Some(metrics.clone()));
    let addr = health.serve(local(0)).expect("bound on an ephemeral port");
    assert_ne!(addr.port(), 0);

    // Fresh, no Node known yet (the objects are not read): the proxier is healthy (starting
    // up), but the node is not eligible, so /healthz is 503 (upstream's `NodeEligible` without
    // a Node); /livez does not look at the node.
    let a = get(None, addr, "/healthz").unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    let v = check_body(&a, true);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["nodeEligible"], false);
    assert!(v.get("status").is_none(), "{}", a.body);
    assert_eq!(v["lastUpdated"], "0001-01-01T00:00:00Z", "{}", a.body);
    assert_eq!(get(None, addr, "/livez").unwrap().status, 200);

    // The Node is known: healthy, no per-family status yet, the node eligible.
    let node = |json| {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json).unwrap();
        Some(Arc::new(node))
    };
    let current = Arc::new(std::sync::Mutex::new(node(
        serde_json::json!({"metadata": {"name": "node-a"}}),
    )));
    let c = current.clone();
    health.set_node_lookup(Arc::new(move || c.lock().unwrap().clone()));
    let a = get(None, addr, "/healthz").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let v = check_body(&a, true);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["nodeEligible"], true);
    assert!(v.get("status").is_none(), "{}", a.body);
    assert_eq!(
        v["lastUpdated"], v["currentTime"],
        "a healthy answer reports now"
    );

    // After the first sync: per-family status, still 200.
    health.updated();
    let a = get(None, addr, "/healthz").unwrap();
    assert_eq!(a.status, 200);
    let v = check_body(&a, true);
    assert_eq!(v["status"]["IPv4"]["healthy"], true, "{}", a.body);
    let synced_at = v["status"]["IPv4"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();

    // A change queued and not synced: fine within the timeout, 503 after it.
    health.queued_update();
    assert_eq!(get(None, addr, "/healthz").unwrap().status, 200);
    assert_eq!(get(None, addr, "/livez").unwrap().status, 200);
    thread::sleep(timeout + Duration::from_millis(100));
    let a = get(None, addr, "/healthz").unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    let v = check_body(&a, true);
    assert_eq!(v["healthy"], false);
    assert_eq!(v["status"]["IPv4"]["healthy"], false);
    assert_eq!(
        v["lastUpdated"], synced_at,
        "an unhealthy answer reports the last sync"
    );
    let a = get(None, addr, "/livez").unwrap();
    assert_eq!(a.status, 503);
    check_body(&a, false);

    // Synced again: healthy.
    health.updated();
    assert_eq!(get(None, addr, "/healthz").unwrap().status, 200);
    assert_eq!(get(None, addr, "/livez").unwrap().status, 200);

    // The node is tainted for deletion: /healthz 503 (node not eligible), /livez still 200.
    *current.lock().unwrap() = node(serde_json::json!({
        "metadata": {"name": "node-a"},
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
    }));
    let a = get(None, addr, "/healthz").unwrap();
    assert_eq!(a.status, 503);
    let v = check_body(&a, true);
    assert_eq!(v["nodeEligible"], false);
    assert_eq!(v["healthy"], true, "the proxier itself is healthy");
    assert_eq!(get(None, addr, "/livez").unwrap().status, 200);

    // Anything else: Go's 404.
    let a = get(None, addr, "/metrics").unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "404 page not found\n");

    // Every answer was counted by code.
    let text = metrics.render();
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 4\n"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1\n"),
        "{text}"
    );
}

fn name(ns: &str, n: &str) -> (String, String) {
    (ns.to_string(), n.to_string())
}

#[test]
fn service_health_ports_open_close_and_count_local_endpoints() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let health = ProxyHealth::new(Duration::from_millis(200), IpFamily::V4, None);
    health.updated();
    let server =
        ServiceHealthServer::new(Some(vec![Ipv4Addr::LOCALHOST.into()]), Some(health.clone()));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());

    rt.block_on(server.sync_services(&BTreeMap::from([
        (name("shop", "web"), p1),
        (name("shop", "api"), p2),
    ])));
    assert_eq!(server.open().len(), 2);

    // Open, but no local endpoints yet: 503 with upstream's body and headers.
    let a = get(None, local(p1), "/").unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("x-load-balancing-endpoint-weight"), Some("0"));
    assert_eq!(
        a.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}"
    );

    // Two local endpoints for web (any path answers), none for api.
    server.sync_endpoints(&BTreeMap::from([
        (name("shop", "web"), 2),
        (name("other", "x"), 5),
    ]));
    let a = get(None, local(p1), "/healthz").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["localEndpoints"], 2);
    assert_eq!(a.header("x-load-balancing-endpoint-weight"), Some("2"));
    let a = get(None, local(p2), "/").unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["service"]["name"], "api");
    assert_eq!(a.json()["localEndpoints"], 0);

    // The proxy is unhealthy: 503 even with local endpoints.
    health.queued_update();
    thread::sleep(Duration::from_millis(300));
    let a = get(None, local(p1), "/").unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["serviceProxyHealthy"], false);
    assert_eq!(a.json()["localEndpoints"], 2);
    health.updated();
    assert_eq!(get(None, local(p1), "/").unwrap().status, 200);

    // api goes away, web moves to another port: api's and web's old ports close.
    rt.block_on(server.sync_services(&BTreeMap::from([(name("shop", "web"), p3)])));
    for p in [p1, p2] {
        let e = get(None, local(p), "/").expect_err("closed");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {p}: {e}"
        );
    }
    // A reopened check starts without endpoints until the next endpoint sync.
    assert_eq!(get(None, local(p3), "/").unwrap().status, 503);
    server.sync_endpoints(&BTreeMap::from([(name("shop", "web"), 1)]));
    let a = get(None, local(p3), "/").unwrap();
    assert_eq!(
        (a.status, a.json()["localEndpoints"].as_u64()),
        (200, Some(1))
    );

    // A port another process holds: logged and retried at the next sync, the others served.
    let squatter = TcpListener::bind(local(p1)).unwrap();
    rt.block_on(server.sync_services(&BTreeMap::from([
        (name("shop", "web"), p3),
        (name("shop", "db"), p1),
    ])));
    assert_eq!(server.open().len(), 1);
    drop(squatter);
    rt.block_on(server.sync_services(&BTreeMap::from([
        (name("shop", "web"), p3),
        (name("shop", "db"), p1),
    ])));
    assert_eq!(server.open().len(), 2);
    assert_eq!(
        get(None, local(p1), "/").unwrap().json()["service"]["name"],
        "db"
    );

    // Nothing left: every port closed.
    rt.block_on(server.sync_services(&BTreeMap::new()));
    assert!(server.open().is_empty());
    assert!(get(None, local(p3), "/").is_err());
}

const TAINTED_NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}
status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}
";

const HC_PORT: u16 = 32100;

fn lb_service() -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: lab}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: 192.0.2.10}}]}}}}\n"
    )
}

/// The Service's slice: endpoints `(ip, node)`, stamped with the trigger time `now`.
fn lb_slice(eps: &[(&str, &str)]) -> String {
    let now = k8s_openapi::jiff::Timestamp::try_from(SystemTime::now()).unwrap();
    slice_yaml("lb", HTTP, eps, Some(&now.to_string()))
}

/// The value of series `series` (name and labels exactly as exposed) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Rules in the proxy's own chains of a saved table (not the built-in chains' hooks).
fn owned_rules(saved: &str) -> f64 {
    const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    saved
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|l| !BUILTIN.contains(&l.split(' ').next().unwrap_or("")))
        .count() as f64
}

#[test]
fn the_agent_serves_health_checks_health_and_metrics() {
    testkit::needs_root!();
    let lab = testkit::agent::lab("hck", 1);
    let tmp = TempDir::new("hck");
    let objects = tmp.path().join("objects.yaml");
    let local_and_remote = [("10.244.1.11", "node-a"), ("10.244.1.12", "node-b")];
    write_objects(
        &objects,
        &format!("{NODE}{}{}", lb_service(), lb_slice(&local_and_remote)),
    );

    // `iptables-nft-restore` that fails while a marker file exists (only the agent's PATH has
    // it, and the agent runs inside the lab's node namespace).
    let marker = tmp.path().join("fail-restore");
    let path = failing_restore(tmp.path(), &marker, false);

    // The default addresses: health on every address (0.0.0.0:10256), metrics on localhost.
    let agent = AgentProcess::start_in_lab(
        &lab.node,
        ("--objects", &objects),
        &["--iptables-sync-period", "1s"],
        &[path],
        &tmp.path().join("agent.log"),
    );
    let client = lab.client("c").ns.path();
    let node_ns = lab.node.path();
    let node_ip = lab.node_ip();
    let hc = SocketAddr::from((node_ip, HC_PORT));
    let healthz = SocketAddr::from((node_ip, 10256));
    let metrics = local(10249);
    let limit = Duration::from_secs(10);
    let log = || agent.log();
    let scrape = || {
        get(Some(&node_ns), metrics, "/metrics")
            .map(|a| a.body)
            .unwrap_or_default()
    };

    // A load balancer's health check from outside the node: 200, one local endpoint.
    let a = wait_for("health check served", limit, &agent, || {
        get(Some(&client), hc, "/").ok().filter(|a| a.status == 200)
    });
    assert_eq!(a.json()["localEndpoints"], 1, "{a:?}");
    assert_eq!(a.json()["service"]["namespace"], "lab");
    assert_eq!(a.header("x-load-balancing-endpoint-weight"), Some("1"));

    // The proxy's health from outside the node.
    let a = get(Some(&client), healthz, "/healthz").unwrap();
    assert_eq!(a.status, 200, "{a:?}\n{}", log());
    let v = check_body(&a, true);
    assert_eq!(
        (
            v["nodeEligible"].clone(),
            v["status"]["IPv4"]["healthy"].clone()
        ),
        (true.into(), true.into())
    );
    assert_eq!(get(Some(&client), healthz, "/livez").unwrap().status, 200);

    // Metrics on the node's localhost only.
    assert!(
        get(
            Some(&client),
            SocketAddr::from((node_ip, 10249)),
            "/metrics"
        )
        .is_err()
    );
    let first = scrape();
    let ip4 = "{ip_family=\"IPv4\"}";
    let count =
        |text: &str, name: &str| sample(text, &format!("{name}_count{ip4}")).unwrap_or(-1.0);
    assert!(
        count(&first, "kubeproxy_sync_full_proxy_rules_duration_seconds") >= 1.0,
        "{first}"
    );
    // The objects' trigger time predates the agent: not a latency it caused (upstream ignores
    // trigger times before its start too).
    assert_eq!(
        count(&first, "kubeproxy_network_programming_duration_seconds"),
        0.0,
        "{first}"
    );
    assert!(sample(&first, "kubeproxy_sync_proxy_rules_service_changes_total").unwrap() >= 1.0);
    assert!(sample(&first, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap() >= 1.0);
    assert!(
        sample(
            &first,
            &format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip4}")
        )
        .unwrap()
            > 1e9
    );
    // The rule counts are the kernel's: every rule of the proxy's chains, per table.
    wait_for("rule counts match the kernel", limit, &agent, || {
        let text = scrape();
        let nat = sample(
            &text,
            "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"nat\"}",
        )?;
        (nat == owned_rules(&nft_nat(lab.node.name())) && nat > 0.0).then_some(())
    });
    let filter =
        String::from_utf8(lab.node.exec(["iptables-nft-save", "-t", "filter"]).stdout).unwrap();
    assert_eq!(
        sample(
            &scrape(),
            "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"filter\"}"
        ),
        Some(owned_rules(&filter)),
        "{filter}"
    );

    // The local endpoint goes: 503, and the Service has no local endpoints (external policy).
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            lb_service(),
            lb_slice(&[("10.244.1.12", "node-b")])
        ),
    );
    let a = wait_for("health check 503", limit, &agent, || {
        get(Some(&client), hc, "/").ok().filter(|a| a.status == 503)
    });
    assert_eq!(a.json()["localEndpoints"], 0);
    assert_eq!(a.json()["serviceProxyHealthy"], true);
    let second = wait_for("the change counted", limit, &agent, || {
        let t = scrape();
        (count(&t, "kubeproxy_network_programming_duration_seconds")
            > count(&first, "kubeproxy_network_programming_duration_seconds"))
        .then_some(t)
    });
    assert!(
        count(
            &second,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds"
        ) >= 1.0,
        "{second}"
    );
    assert!(
        sample(&second, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap()
            > sample(&first, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap()
    );
    assert_eq!(
        sample(
            &second,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"}"
        ),
        Some(1.0),
        "{second}"
    );

    // Restores fail while a change waits: the failures are counted, and after twice the sync
    // period (2 s) /healthz and /livez turn 503, and so do the health checks.
    fs::write(&marker, "").unwrap();
    write_objects(
        &objects,
        &format!("{NODE}{}{}", lb_service(), lb_slice(&local_and_remote)),
    );
    let a = wait_for("healthz 503", limit, &agent, || {
        get(Some(&client), healthz, "/healthz")
            .ok()
            .filter(|a| a.status == 503)
    });
    let v = check_body(&a, true);
    assert_eq!(v["healthy"], false, "{}", a.body);
    assert_eq!(get(Some(&client), healthz, "/livez").unwrap().status, 503);
    let a = get(Some(&client), hc, "/").unwrap();
    assert_eq!(
        (a.status, a.json()["serviceProxyHealthy"].clone()),
        (503, false.into())
    );
    let failing = scrape();
    assert!(
        sample(
            &failing,
            &format!("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip4}")
        )
        .unwrap()
            >= 1.0,
        "{failing}"
    );
    assert!(
        sample(
            &failing,
            &format!("kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip4}")
        )
        .unwrap()
            >= 1.0,
        "{failing}"
    );

    // The restores work again: healthy, and the endpoint is back.
    fs::remove_file(&marker).unwrap();
    wait_for("healthz 200 again", limit, &agent, || {
        get(Some(&client), healthz, "/healthz")
            .ok()
            .filter(|a| a.status == 200)
    });
    let a = wait_for("health check 200 again", limit, &agent, || {
        get(Some(&client), hc, "/").ok().filter(|a| a.status == 200)
    });
    assert_eq!(a.json()["localEndpoints"], 1);

    // The autoscaler is about to delete the node: /healthz 503 (not eligible), /livez 200.
    write_objects(
        &objects,
        &format!(
            "{TAINTED_NODE}{}{}",
            lb_service(),
            lb_slice(&local_and_remote)
        ),
    );
    let a = wait_for("healthz 503 for the tainted node", limit, &agent, || {
        get(Some(&client), healthz, "/healthz")
            .ok()
            .filter(|a| a.status == 503)
    });
    assert_eq!(check_body(&a, true)["nodeEligible"], false);
    assert_eq!(get(Some(&client), healthz, "/livez").unwrap().status, 200);

    // The Service is deleted: its health check port closes.
    write_objects(&objects, NODE);
    wait_for("health check port closed", limit, &agent, || {
        get(Some(&client), hc, "/").is_err().then_some(())
    });
    let last = scrape();
    assert!(
        sample(&last, "kubeproxy_sync_proxy_rules_service_changes_total").unwrap()
            > sample(&first, "kubeproxy_sync_proxy_rules_service_changes_total").unwrap(),
        "{last}"
    );
}

/// IPVS mode, in the VM (this kernel has no IPVS): the agent serves the health-check node port
/// of a Local LoadBalancer (200 with its local endpoint, then 503 once the endpoint moves to
/// another node), `/healthz`, and IPVS mode's metric families.
#[test]
fn ipvs_mode_serves_health_checks_and_metrics() {
    let dir = TempDir::new("ipvs-health");
    let d = dir.path().display().to_string();
    let v1 = format!(
        "{NODE}{}{}",
        lb_service(),
        lb_slice(&[("10.244.1.11", "node-a"), ("10.244.1.12", "node-b")])
    );
    let v2 = format!(
        "{NODE}{}{}",
        lb_service(),
        lb_slice(&[("10.244.1.12", "node-b")])
    );
    fs::write(dir.path().join("v1.yaml"), v1).unwrap();
    fs::write(dir.path().join("v2.yaml"), v2).unwrap();
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let get = |name: &str, url: &str| {
        format!(
            "echo \"{name} $(curl -s -o /run/{name}.body -D /run/{name}.head -w '%{{http_code}}' {url}) \
             weight=$(grep -i '^x-load-balancing-endpoint-weight:' /run/{name}.head | tr -d '\\r' | cut -d' ' -f2) \
             body=$(tr -d '\\n\\t ' < /run/{name}.body)\"\n"
        )
    };
    let script = format!(
        "ip link add eth0 type dummy\nip link set eth0 up\nip addr add 192.168.50.1/24 dev eth0\n\
         cp {d}/v1.yaml /run/objects.yaml\n\
         {bin} --objects /run/objects.yaml --hostname-override node-a --cluster-cidr 10.244.0.0/16 \
         --proxy-mode ipvs --ipvs-min-sync-period 100ms > /run/agent.log 2>&1 &\nAGENT=$!\n\
         i=0; while ! grep -q 'rules synced' /run/agent.log && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         sleep 0.3\n{}{}\
         curl -s http://127.0.0.1:10249/metrics > /run/metrics\n\
         echo \"families $(grep '^# TYPE' /run/metrics | cut -d' ' -f3 | sort | tr '\\n' ' ')\"\n\
         cp {d}/v2.yaml /run/objects.yaml\n\
         i=0; while [ \"$(curl -s -o /dev/null -w '%{{http_code}}' http://192.168.50.1:{HC_PORT}/)\" != 503 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         {}\
         kill $AGENT; wait $AGENT\ncat /run/agent.log\n",
        get("hc1", &format!("http://192.168.50.1:{HC_PORT}/")),
        get("healthz", "http://192.168.50.1:10256/healthz"),
        get("hc2", &format!("http://192.168.50.1:{HC_PORT}/")),
    );
    let out = testkit::vm::run_in_vm(&script, 512);
    let line = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line:\n{out}"))
            .to_string()
    };
    let hc1 = line("hc1");
    assert!(hc1.starts_with("200 weight=1 "), "{hc1}\n{out}");
    assert!(hc1.contains("\"localEndpoints\":1"), "{hc1}");
    let healthz = line("healthz");
    assert!(healthz.starts_with("200 "), "{healthz}\n{out}");
    assert!(healthz.contains("\"nodeEligible\":true"), "{healthz}");
    let hc2 = line("hc2");
    assert!(hc2.starts_with("503 weight=0 "), "{hc2}\n{out}");
    let families = line("families");
    assert!(
        families.contains("kubeproxy_sync_proxy_rules_duration_seconds"),
        "{families}"
    );
    assert!(
        families.contains("kubeproxy_sync_proxy_rules_iptables_restore_failures_total"),
        "{families}"
    );
    assert!(
        !families.contains("kubeproxy_sync_full_proxy_rules_duration_seconds"),
        "IPVS mode has no full/partial syncs: {families}"
    );
}

/// A health server whose node is known and eligible, and which has synced once: it answers 200.
fn eligible_health() -> Arc<ProxyHealth> {
    let health = ProxyHealth::new(Duration::from_secs(60), IpFamily::V4, None);
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "node-a"}})).unwrap();
    let node = Arc::new(node);
    health.set_node_lookup(Arc::new(move || Some(node.clone())));
    health.updated();
    health
}

/// The first line of what the server sent back to a client that wrote `request`, waited
/// `delay` (spinning: a sleep would be far longer) and then shut its write side down
/// (`printf … | socat`, `nc -N`, load-balancer checkers), read until the server closes.
fn half_closed_exchange(stream: &mut TcpStream, request: &str, delay: Duration) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        std::hint::spin_loop();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// Whether `status_line` is a 200 (HTTP/1.0 requests get an HTTP/1.0 answer).
fn answered(status_line: &str) -> bool {
    status_line.starts_with("HTTP/1.") && status_line.ends_with(" 200 OK")
}

/// A client that sends its request and shuts its write side down is answered, as Go's server
/// answers it. Whether the server notices the FIN before it has written its answer is a race,
/// so 1,000 clients, HTTP/1.0 and 1.1, with and without `Connection: close`, each shutting
/// down 0 to 1 ms after its request (spread evenly, so the window is hit on a fast machine or
/// a loaded one: without half-close support 1 to 20 % of them went unanswered).
#[test]
fn half_closed_clients_are_answered() {
    let requests = [
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n",
        "GET /livez HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = {
        let _enter = rt.enter();
        eligible_health().serve(local(0)).unwrap()
    };
    let mut unanswered = Vec::new();
    for i in 0..1000 {
        let request = requests[i % requests.len()];
        let delay = Duration::from_micros((i as u64 % 50) * 20);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let status = half_closed_exchange(&mut stream, request, delay);
        if !answered(&status) {
            unanswered.push((i, status));
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of 1000 unanswered: {unanswered:?}",
        unanswered.len()
    );
}

/// An `--objects` file the agent cannot parse.
const UNPARSEABLE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: [web\n";

/// The agent started on an objects file it cannot parse has no rules to apply: its `/healthz`
/// says so (503, upstream's body: no Node known, so not eligible; no sync yet, so no
/// per-family status) until the file is fixed and the rules are in place.
#[test]
fn healthz_is_not_ready_while_the_objects_cannot_be_read() {
    testkit::needs_root!();
    let node = Netns::new("nrd");
    let tmp = TempDir::new("nrd");
    let objects = tmp.path().join("objects.yaml");
    write_objects(&objects, UNPARSEABLE);
    let mut args = vec!["--objects", objects.to_str().unwrap()];
    args.extend(LAB_FLAGS);
    let agent = AgentProcess::start(&node, &args, &[], &tmp.path().join("agent.log"));
    let ns = node.path();
    let healthz = local(10256);
    let limit = Duration::from_secs(30);

    wait_until("the file read and rejected", limit, &agent, || {
        agent.log().contains("cannot read objects")
    });
    // Every answer while the file stays unreadable (several polls of it) is not ready.
    for _ in 0..5 {
        let a = get(Some(&ns), healthz, "/healthz").unwrap();
        assert_eq!(a.status, 503, "{a:?}\n{}", agent.log());
        let v = check_body(&a, true);
        assert_eq!(v["nodeEligible"], false, "{}", a.body);
        assert_eq!(
            v["healthy"], true,
            "upstream: no sync yet is not a late one"
        );
        assert_eq!(v["lastUpdated"], "0001-01-01T00:00:00Z", "{}", a.body);
        assert!(v.get("status").is_none(), "{}", a.body);
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(svc_chains(&nft_nat(node.name())), 0);
    // /livez is upstream's too: the proxier is not late, only not started.
    assert_eq!(get(Some(&ns), healthz, "/livez").unwrap().status, 200);

    // Fixed: the rules are applied and the node is ready.
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11"])
        ),
    );
    let a = wait_for(
        "healthz 200 once the objects are read",
        limit,
        &agent,
        || {
            get(Some(&ns), healthz, "/healthz")
                .ok()
                .filter(|a| a.status == 200)
        },
    );
    let v = check_body(&a, true);
    assert_eq!(v["nodeEligible"], true, "{}", a.body);
    wait_until("the rules applied", limit, &agent, || {
        svc_chains(&nft_nat(node.name())) == 1
    });
}

/// A Slowloris attacker: holds connections to `addr` (from inside a namespace) that each sent
/// part of a request and never finish it, reopening those the server closes while told to.
struct Slowloris {
    reopen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Slowloris {
    /// Opens `n` connections to `addr` from inside `ns`, then every 100 ms reopens up to
    /// `per_round` of those the server closed (for at most ten minutes).
    fn start(ns: &Netns, addr: SocketAddr, n: usize, per_round: usize) -> Slowloris {
        let (reopen, stop) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let open = Arc::new(AtomicUsize::new(0));
        let (r, s, o, path) = (reopen.clone(), stop.clone(), open.clone(), ns.path());
        let thread = thread::spawn(move || {
            // Only this thread changes namespace.
            testkit::sock::enter(&path).unwrap();
            let connect = || -> Option<TcpStream> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                // No blank line: the request never ends.
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: attacker\r\n")
                    .ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| connect()).collect();
            for _ in 0..6000 {
                o.store(conns.iter().flatten().count(), Ordering::Relaxed);
                if s.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
                let mut budget = per_round;
                for c in conns.iter_mut() {
                    let mut buf = [0u8; 256];
                    let alive = c.as_mut().is_some_and(|s| {
                        matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    });
                    if alive {
                        continue;
                    }
                    *c = None;
                    if budget > 0 && r.load(Ordering::Relaxed) {
                        budget -= 1;
                        *c = connect();
                    }
                }
            }
        });
        Slowloris {
            reopen,
            stop,
            open,
            thread: Some(thread),
        }
    }

    /// How many of its connections the server had not closed at the last look.
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stops opening connections (those still open stay open).
    fn hold(&self) {
        self.reopen.store(false, Ordering::Relaxed);
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `(soft, hard)` open-file limits of process `pid`.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// More slow HTTP clients than the agent may open files never stop it syncing: started with a
/// low soft open-file limit under a higher hard one (systemd, some container runtimes), it
/// raises the soft limit to the hard one, holds at most a bounded share of it for the clients
/// of one server, so a Service change is applied and `/metrics` answers while an attacker
/// keeps 600 partial requests (more than the hard limit) against `:10256`; once the attacker
/// stops opening new ones, its held connections time out and `/healthz` answers again.
#[test]
fn slow_http_clients_never_exhaust_the_agents_files() {
    testkit::needs_root!();
    const SOFT: u64 = 256;
    const HARD: u64 = 512;
    let node = Netns::new("fdx");
    let tmp = TempDir::new("fdx");
    let objects = tmp.path().join("objects.yaml");
    let web = format!(
        "{NODE}{}{}",
        service("web", "10.96.0.10"),
        slice("web", &["10.244.1.11"])
    );
    write_objects(&objects, &web);
    let mut args = vec!["--objects", objects.to_str().unwrap()];
    args.extend(LAB_FLAGS);
    let agent = AgentProcess::start_limited(
        &node,
        &args,
        &[],
        &tmp.path().join("agent.log"),
        Some((SOFT, HARD)),
    );
    let pid = agent.child.id();
    let ns = node.path();
    let (healthz, metrics) = (local(10256), local(10249));
    let limit = Duration::from_secs(30);
    wait_until("first sync", limit, &agent, || {
        svc_chains(&nft_nat(node.name())) == 1
    });
    wait_for("healthz 200", limit, &agent, || {
        get(Some(&ns), healthz, "/healthz")
            .ok()
            .filter(|a| a.status == 200)
    });

    let attack = Slowloris::start(&node, healthz, 600, 64);
    wait_until("the attack under way", limit, &agent, || attack.open() > 0);
    // A change during the attack is applied.
    write_objects(
        &objects,
        &format!(
            "{web}{}{}",
            service("api", "10.96.0.11"),
            slice("api", &["10.244.1.12"])
        ),
    );
    wait_until("a sync during the attack", limit, &agent, || {
        svc_chains(&nft_nat(node.name())) == 2
    });
    // The other servers keep their own connections.
    let a = get(Some(&ns), metrics, "/metrics").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let fds = open_fds(pid);
    eprintln!(
        "during the attack: {} attacker connections open, the agent holds {fds} files",
        attack.open()
    );
    assert!(
        fds < (HARD / 2) as usize,
        "the agent holds {fds} files of {HARD}"
    );
    assert!(
        !agent.log().contains("Too many open files"),
        "{}",
        agent.log()
    );

    // The attacker stops opening connections: those it holds time out, and /healthz answers.
    attack.hold();
    let start = Instant::now();
    wait_for(
        "healthz answers after the attack",
        Duration::from_secs(90),
        &agent,
        || {
            get(Some(&ns), healthz, "/healthz")
                .ok()
                .filter(|a| a.status == 200)
        },
    );
    eprintln!(
        "/healthz answered {:?} after the attacker stopped ({} of its connections still open)",
        start.elapsed(),
        attack.open()
    );
    drop(attack);
    assert_eq!(
        nofile_limits(pid),
        (HARD, HARD),
        "the soft limit is raised to the hard one"
    );
}
