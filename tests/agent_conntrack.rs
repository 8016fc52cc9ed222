//! Issue #7: the agent deletes stale UDP conntrack flows, end to end in a lab node namespace. A
//! UDP client keeps one flow (same source port) to a ClusterIP with two backends; the backend its
//! flow is DNATed to is removed from the EndpointSlice; the agent's next sync deletes that flow
//! and the client's next datagram reaches the other backend. (Without the cleanup the flow keeps
//! its DNAT and the removed pod — still running here — keeps answering: the control is the
//! reply before the change.)

mod support;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::agent::AgentProcess;
use support::{Lab, Netns, TempDir};

const OBJECTS_HEAD: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: lab}
spec:
  clusterIP: 10.96.0.53
  clusterIPs: [10.96.0.53]
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
";

fn objects(ips: &[&str]) -> String {
    let mut s = format!(
        "{OBJECTS_HEAD}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns-1, namespace: lab, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nports: [{{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n"
    );
    for ip in ips {
        s.push_str(&format!(
            "- {{addresses: [{ip}], nodeName: node-a, conditions: {{ready: true}}}}\n"
        ));
    }
    s
}

fn write_objects(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// One datagram from the client's fixed source port; the answering pod's name, if any.
fn ask(client: &Netns) -> Option<String> {
    let out = client.exec([
        "sh",
        "-c",
        "echo q | socat -T1 - UDP:10.96.0.53:53,sourceport=40053,reuseaddr",
    ]);
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!reply.is_empty()).then_some(reply)
}

fn wait_for(what: &str, agent: &AgentProcess, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 15 s\nagent log:\n{}", agent.log());
}

#[test]
fn a_udp_client_moves_to_the_remaining_backend_once_its_backend_is_removed() {
    if !support::require_root() {
        return;
    }
    let lab = Lab::builder("agct")
        .pod("pa", "10.244.1.21")
        .pod("pb", "10.244.1.22")
        .client("c")
        .build();
    for pod in ["pa", "pb"] {
        lab.pod(pod).ns.spawn(
            "udp-echo",
            [
                "socat",
                "UDP-LISTEN:5353,fork,reuseaddr",
                &format!("SYSTEM:echo {pod}"),
            ],
        );
    }
    let tmp = TempDir::new("agct");
    let path = tmp.path().join("objects.yaml");
    write_objects(&path, &objects(&["10.244.1.21", "10.244.1.22"]));
    let agent = AgentProcess::start(
        &lab.node,
        &[
            "--objects",
            path.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--iptables-min-sync-period",
            "100ms",
        ],
        &[],
        &tmp.path().join("agent.log"),
    );
    let client = &lab.client("c").ns;
    let mut first = None;
    wait_for("a reply through the ClusterIP", &agent, || {
        first = ask(client);
        first.is_some()
    });
    let first = first.unwrap();
    // The flow sticks: the same source port reaches the same pod.
    for _ in 0..3 {
        assert_eq!(ask(client).as_deref(), Some(first.as_str()));
    }
    let (gone_ip, other) = if first == "pa" {
        ("10.244.1.21", "pb")
    } else {
        ("10.244.1.22", "pa")
    };
    let keep = if first == "pa" {
        "10.244.1.22"
    } else {
        "10.244.1.21"
    };
    let synced = agent.log().matches("rules synced").count();
    write_objects(&path, &objects(&[keep]));
    wait_for("the sync after the change", &agent, || {
        agent.log().matches("rules synced").count() > synced
    });
    wait_for("the stale flow deleted", &agent, || {
        agent.log().contains("deleted stale UDP conntrack flows")
    });
    assert_eq!(
        ask(client).as_deref(),
        Some(other),
        "the flow to the removed pod {gone_ip} must be gone\nagent log:\n{}",
        agent.log()
    );
}
