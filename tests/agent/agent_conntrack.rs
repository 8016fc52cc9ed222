//! Issue #7: the agent deletes stale UDP conntrack flows, end to end in a lab node namespace. A
//! UDP client keeps one flow (same source port) to a ClusterIP with two backends; the backend its
//! flow is DNATed to is removed from the EndpointSlice; the agent's next sync deletes that flow
//! and the client's next datagram reaches the other backend. (Without the cleanup the flow keeps
//! its DNAT and the removed pod — still running here — keeps answering: the control is the
//! reply before the change.)

use std::time::Duration;

use testkit::agent::{
    AgentProcess, NODE, Port, service_yaml, slice_yaml, wait_for, wait_until, write_objects,
};
use testkit::{Lab, Netns, TempDir};

/// The Service's port: `dns` 53 → 5353/UDP.
const DNS: Port = Port {
    name: "dns",
    port: 53,
    protocol: "UDP",
    target: 5353,
};

/// How long each step may take.
const LIMIT: Duration = Duration::from_secs(15);

/// Service `lab/dns` at 10.96.0.53 with endpoints `ips` on this node.
fn objects(ips: &[&str]) -> String {
    let endpoints: Vec<(&str, &str)> = ips.iter().map(|ip| (*ip, "node-a")).collect();
    format!(
        "{NODE}{}{}",
        service_yaml("dns", "10.96.0.53", DNS),
        slice_yaml("dns", DNS, &endpoints, None)
    )
}

/// One datagram from the client's fixed source port; the answering pod's name, if any.
fn ask(client: &Netns) -> Option<String> {
    let out = client.exec([
        "sh",
        "-c",
        "echo q | socat -T2 - UDP:10.96.0.53:53,sourceport=40053,reuseaddr",
    ]);
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!reply.is_empty()).then_some(reply)
}

/// [`ask`] until a reply comes, at most five times: on a busy machine a forked echo can miss
/// the client's wait, and a lost datagram says nothing about where the flow goes (the same
/// source port keeps the same flow).
fn ask_reply(client: &Netns) -> Option<String> {
    (0..5).find_map(|_| ask(client))
}

#[test]
fn a_udp_client_moves_to_the_remaining_backend_once_its_backend_is_removed() {
    testkit::needs_root!();
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
    let agent = AgentProcess::start_in_lab(
        &lab.node,
        ("--objects", &path),
        &[],
        &[],
        &tmp.path().join("agent.log"),
    );
    let client = &lab.client("c").ns;
    let first = wait_for("a reply through the ClusterIP", LIMIT, &agent, || {
        ask(client)
    });
    // The flow sticks: the same source port reaches the same pod.
    for _ in 0..3 {
        assert_eq!(ask_reply(client).as_deref(), Some(first.as_str()));
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
    // Counted, not just seen: datagrams sent before the first sync leave un-DNATed flows that
    // the first pass already deleted (and logged).
    const DELETED: &str = "deleted stale UDP conntrack flows";
    let synced = agent.log().matches("rules synced").count();
    let deleted = agent.log().matches(DELETED).count();
    write_objects(&path, &objects(&[keep]));
    wait_until("the sync after the change", LIMIT, &agent, || {
        agent.log().matches("rules synced").count() > synced
    });
    wait_until("the stale flow deleted", LIMIT, &agent, || {
        agent.log().matches(DELETED).count() > deleted
    });
    assert_eq!(
        ask_reply(client).as_deref(),
        Some(other),
        "the flow to the removed pod {gone_ip} must be gone\nagent log:\n{}",
        agent.log()
    );
}
