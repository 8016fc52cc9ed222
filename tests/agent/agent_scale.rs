//! Scale run of the node agent (run by hand; figures go in the closing notes):
//!
//! ```sh
//! cargo test --release --test agent agent_scale:: -- --ignored --nocapture
//! KPRS_SCALE_SERVICES=1000 cargo test --release --test agent agent_scale:: -- --ignored --nocapture
//! KPRS_SCALE_BACKEND=legacy cargo test --release --test agent agent_scale:: -- --ignored --nocapture
//! KPRS_SCALE_WRAPPER="heaptrack -o /tmp/agent" cargo test --release --test agent agent_scale:: -- --ignored --nocapture
//! ```
//!
//! N Services (default 10,000) × 10 endpoints served by the test API server inside a lab node
//! namespace; the agent syncs them into that namespace's nft tables. Reports the time from start
//! to the first complete sync, the agent's peak RSS, and the time from one EndpointSlice change
//! to its rules being applied (five changes, each past the previous sync's min-sync-period).

use std::fs;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use testkit::apiserver::ApiServer;
use testkit::{Netns, TempDir};

fn objects(
    i: u32,
    endpoints_per_service: u32,
    generation: u32,
) -> (serde_json::Value, serde_json::Value) {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc{i}"), "namespace": format!("ns{}", i % 100)},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    });
    let eps: Vec<_> = (0..endpoints_per_service)
        .map(|e| {
            let n = i * endpoints_per_service + e + generation;
            serde_json::json!({
                "addresses": [format!("10.{}.{}.{}", 128 + n / 65536 % 64, n / 256 % 256, n % 256)],
                "nodeName": format!("node-{}", e % 3),
                "conditions": {"ready": true}
            })
        })
        .collect();
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc{i}-1"), "namespace": format!("ns{}", i % 100),
                     "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    });
    (svc, slice)
}

fn synced_count(log: &str) -> usize {
    log.lines().filter(|l| l.contains("rules synced")).count()
}

/// `KPRS_SCALE_SERVICES`, 10,000 by default.
fn scale_services() -> u32 {
    std::env::var("KPRS_SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// kubelet's canary in the legacy tables of `node` (run inside its namespace with `ip netns
/// exec`), as on a node whose kubelet uses iptables-legacy, so the agent picks that back end.
fn seed_legacy_canary(node: &Netns) {
    let out = node.exec_input(
        ["iptables-legacy-restore", "-w", "--noflush"],
        b"*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
#[ignore = "a scale measurement (minutes, large); run by hand"]
fn agent_at_scale() {
    testkit::needs_root!();
    let services = scale_services();
    let node = Netns::new("scale");
    // KPRS_SCALE_BACKEND=legacy seeds kubelet's canary in the legacy tables, as on a node whose
    // kubelet uses iptables-legacy, so the agent picks that back end (default: nft).
    if std::env::var("KPRS_SCALE_BACKEND").as_deref() == Ok("legacy") {
        seed_legacy_canary(&node);
    }
    let tmp = TempDir::new("scale");
    let kubeconfig = tmp.path().join("kubeconfig");
    let log = tmp.path().join("agent.log");
    let path = node.path();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let node_name = node.name().to_string();
    let log2 = log.clone();
    let kubeconfig2 = kubeconfig.clone();
    let handle = thread::spawn(move || {
        // Only this thread enters the node's namespace.
        testkit::sock::enter(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = ApiServer::spawn().await;
            server.write_kubeconfig(&kubeconfig2).unwrap();
            let t = Instant::now();
            for i in 0..services {
                let (svc, slice) = objects(i, 10, 0);
                server.apply(&svc);
                server.apply(&slice);
            }
            tx.send(format!(
                "loaded {services} Services + slices into the test API server in {:?}",
                t.elapsed()
            ))
            .unwrap();

            let logf = fs::File::create(&log2).unwrap();
            let start = Instant::now();
            // KPRS_SCALE_WRAPPER="heaptrack -o /tmp/agent" runs the agent under a profiler.
            let wrapper: Vec<String> = std::env::var("KPRS_SCALE_WRAPPER")
                .map(|w| w.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &node_name])
                .args(&wrapper)
                .args([env!("CARGO_BIN_EXE_kube-proxy-rs"), "--kubeconfig"])
                .arg(&kubeconfig2)
                .args([
                    "--hostname-override",
                    "node-0",
                    "--cluster-cidr",
                    "10.128.0.0/10",
                ])
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .unwrap();
            let pid = child.id();
            let mut first = None;
            // Resident size over the start-up, to see which phase peaks.
            let mut timeline = Vec::new();
            while start.elapsed() < Duration::from_secs(600) {
                if synced_count(&fs::read_to_string(&log2).unwrap_or_default()) >= 1 {
                    first = Some(start.elapsed());
                    break;
                }
                if let Some(rss) = fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
                        l.split_whitespace().nth(1)?.parse::<u64>().ok()
                    })
                {
                    timeline.push(format!(
                        "{:.1}s {}M",
                        start.elapsed().as_secs_f64(),
                        rss / 1024
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let step = (timeline.len() / 25).max(1);
            tx.send(format!(
                "resident size during start-up: {}",
                timeline
                    .iter()
                    .step_by(step)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .unwrap();
            let first = first.expect("first sync within 10 minutes");
            tx.send(format!(
                "start -> first complete sync: {first:?} (peak RSS so far {} MiB)",
                peak_rss_kib(pid).unwrap_or(0) / 1024
            ))
            .unwrap();

            let mut latencies = Vec::new();
            for round in 1..=5u32 {
                // Past the 1 s min-sync-period of the previous sync, so each change measures
                // the sync itself, not the pacing.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let before = synced_count(&fs::read_to_string(&log2).unwrap_or_default());
                let (_, slice) = objects(round * 7, 10, 1_000_000 + round);
                let t = Instant::now();
                server.apply(&slice);
                loop {
                    let log = fs::read_to_string(&log2).unwrap_or_default();
                    if synced_count(&log) > before {
                        break;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(300),
                        "change not applied\n{log}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                latencies.push(t.elapsed());
            }
            tx.send(format!(
                "one EndpointSlice change -> applied: {latencies:?}"
            ))
            .unwrap();
            tx.send(format!(
                "agent peak RSS: {} MiB",
                peak_rss_kib(pid).unwrap_or(0) / 1024
            ))
            .unwrap();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let now: Vec<&str> = status
                .lines()
                .filter(|l| l.starts_with("VmRSS") || l.starts_with("Rss"))
                .collect();
            tx.send(format!("agent memory now: {}", now.join(", ")))
                .unwrap();
            let last = fs::read_to_string(&log2).unwrap_or_default();
            for line in last.lines().filter(|l| l.contains("rules synced")).skip(1) {
                let field = |name: &str| log_field(line, name);
                tx.send(format!(
                    "sync: kind {} payload {} B, render {} ms, restore {} ms, total {} ms",
                    field("kind"),
                    field("payload_bytes"),
                    field("render_ms"),
                    field("restore_ms"),
                    field("total_ms")
                ))
                .unwrap();
            }
            let _ = child.kill();
            let _ = child.wait();
        });
    });
    handle.join().unwrap();
    for line in rx.try_iter() {
        eprintln!("{line}");
    }
}

/// The value of `name=` in a log line (the text format colours field names).
fn log_field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .map(|w| {
            w.replace("\u{1b}[3m", "")
                .replace("\u{1b}[0m", "")
                .replace("\u{1b}[2m", "")
        })
        .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_default()
}

/// Polls `log` every 20 ms until a line contains `what` `count` times; how long that took.
fn wait_log(log: &std::path::Path, what: &str, count: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(what)).count() >= count {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "{what:?} not logged within {limit:?}:\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Restart on a loaded node (issue #16), run by hand:
///
/// ```sh
/// cargo test --release --test agent agent_scale::restart_at_scale -- --ignored --nocapture
/// KPRS_SCALE_BACKEND=legacy cargo test --release --test agent agent_scale::restart_at_scale -- --ignored --nocapture
/// ```
///
/// N Services (default 10,000) × 10 endpoints from an objects file: a first agent fills the
/// node and is killed; a second one starts on the loaded node and is timed to its back-end
/// choice and its first sync (a full sync of a loaded node: what the hourly one does too);
/// then `trace` on the live node and `--cleanup` are timed. Nothing here runs a whole-table
/// save of the loaded node (the harness counts chains with `nft list chains` on nft).
#[test]
#[ignore = "a scale measurement (minutes, large); run by hand"]
fn restart_at_scale() {
    testkit::needs_root!();
    let services = scale_services();
    let legacy = std::env::var("KPRS_SCALE_BACKEND").as_deref() == Ok("legacy");
    let node = Netns::new("restart-scale");
    if legacy {
        seed_legacy_canary(&node);
    }
    let tmp = TempDir::new("restart-scale");
    let file = tmp.path().join("objects.json");
    let mut items = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}
    })];
    for i in 0..services {
        let (svc, slice) = objects(i, 10, 0);
        items.push(svc);
        items.push(slice);
    }
    fs::write(
        &file,
        serde_json::to_vec(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        .unwrap(),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let flags = [
        "--hostname-override",
        "node-0",
        "--cluster-cidr",
        "10.128.0.0/10",
    ];
    let start = |log: &std::path::Path| {
        node.command([bin, "--objects", file.to_str().unwrap()])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let backend = if legacy { "legacy" } else { "nft" };
    let mut report = vec![format!(
        "{services} Services x 10 endpoints, {backend} back end"
    )];

    let log1 = tmp.path().join("first.log");
    let mut first = start(&log1);
    let t = wait_log(&log1, "rules synced", 1, Duration::from_secs(1200));
    report.push(format!("empty node -> first sync: {t:?}"));
    let _ = first.kill();
    let _ = first.wait();

    let log2 = tmp.path().join("second.log");
    let t0 = Instant::now();
    let mut second = start(&log2);
    let detected = wait_log(&log2, "iptables back end", 1, Duration::from_secs(1200));
    let synced = wait_log(&log2, "rules synced", 1, Duration::from_secs(1200)) + detected;
    let text = fs::read_to_string(&log2).unwrap();
    let line = text.lines().find(|l| l.contains("rules synced")).unwrap();
    report.push(format!(
        "restart: back end chosen after {detected:?}, first sync after {:?} (its read of the tables {} ms, restore {} ms, total {} ms); peak RSS {} MiB",
        t0.elapsed().min(synced),
        log_field(line, "save_ms"),
        log_field(line, "restore_ms"),
        log_field(line, "total_ms"),
        peak_rss_kib(second.id()).unwrap_or(0) / 1024
    ));
    assert!(!text.contains("error"), "{text}");
    second.signal_term();
    let _ = second.wait();

    let t = Instant::now();
    let out = node
        .command([
            bin,
            "trace",
            "--src",
            "203.0.113.7",
            "--dst",
            "10.96.0.1:80",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report.push(format!("trace on the live node: {:?}", t.elapsed()));

    let t = Instant::now();
    let out = node.command([bin, "--cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report.push(format!("--cleanup: {:?}", t.elapsed()));
    let left = if legacy {
        node.exec_ok(["iptables-legacy-save", "-t", "nat"])
    } else {
        node.exec_ok(["nft", "list", "chains", "ip"])
    };
    assert!(!left.contains("KUBE-SVC-"), "cleanup left service chains");
    for l in report {
        eprintln!("{l}");
    }
}

trait SignalTerm {
    fn signal_term(&self);
}

impl SignalTerm for std::process::Child {
    fn signal_term(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.id() as i32, libc::SIGTERM) };
    }
}
