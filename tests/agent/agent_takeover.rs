//! The agent taking over a node that ran kube-proxy, and repairing tables flushed behind its
//! back — both end to end in a lab (the agent on `--objects` files, inside the lab's node
//! namespace; real connections from a client namespace).

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use testkit::agent::{AgentProcess, nft_nat, svc_chains, wait_until};
use testkit::objects::{self, Endpoint, Service};
use testkit::{Backend, Netns, TempDir};

const WEB_IP: &str = "10.96.0.10";
const OLD_IP: &str = "10.96.0.20";

fn start_agent(node: &Netns, objects: &std::path::Path, log: &std::path::Path) -> AgentProcess {
    AgentProcess::start_in_lab(
        node,
        ("--objects", objects),
        &["--iptables-sync-period", "1s"],
        &[],
        log,
    )
}

/// `iptables-nft-save` of mangle, filter and nat, `#` lines dropped: what the node holds, in
/// the order the dry-run prints the tables. Built-in chains' packet counters (nft counts the
/// lab's traffic in mangle) read `[0:0]`, as the dry-run prints them.
fn node_tables(node: &Netns) -> String {
    let saved = testkit::save_tables(node, Backend::Nft, &["mangle", "filter", "nat"]);
    saved
        .lines()
        .map(|l| match (l.strip_prefix(':'), l.rfind(" [")) {
            (Some(_), Some(at)) => format!("{} [0:0]\n", &l[..at]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// Connects from `client` to `ip:80` over and over until `stop`; counts successes in `ok` and
/// returns the errors.
fn client_loop(client: &Netns, ip: &str, stop: &AtomicBool, ok: &AtomicUsize) -> Vec<String> {
    let mut errors = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match testkit::connect(client, ip, 80, Duration::from_secs(1)) {
            Ok(_) => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => errors.push(format!("{e:?}")),
        }
    }
    errors
}

fn wait_for_count(ok: &AtomicUsize, n: usize) {
    let start = Instant::now();
    while ok.load(Ordering::SeqCst) < n {
        assert!(start.elapsed() < Duration::from_secs(30), "client stalled");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 5: a node with kube-proxy's ruleset — same chain names, a Service that has since been
/// deleted, the hooks in the built-in chains — is taken over without flushing anything first.
/// The stale Service's chains are gone after the first sync, the live Service's rules are
/// exactly the render, no hook is duplicated, and a client connecting to the live ClusterIP
/// throughout never fails.
#[test]
fn agent_takes_over_a_kube_proxy_node_without_a_gap() {
    testkit::needs_root!();
    let node = objects::node(&["192.168.50.1"], &["10.244.1.0/24"]);
    let web = Service::cluster_ip("web", &[WEB_IP]).yaml();
    let web_eps = objects::endpoint_slice(
        "web",
        &[
            Endpoint::local("10.244.1.11"),
            Endpoint::local("10.244.1.12"),
        ],
    );
    let old = Service::cluster_ip("old", &[OLD_IP]).yaml();
    let old_eps = objects::endpoint_slice("old", &[Endpoint::local("10.244.1.12")]);
    let flags = ["--cluster-cidr", "10.244.0.0/16"];
    // What kube-proxy left: the cluster as it was, with `old` still there.
    let before = objects::render(
        "tko-before",
        &[node.clone(), web.clone(), web_eps.clone(), old, old_eps],
        &flags,
    );
    // What the agent must end with: the cluster now.
    let now = [node, web, web_eps];
    let after = objects::render("tko-after", &now, &flags);
    assert_ne!(before, after);

    let lab = testkit::agent::lab("tko", 2);
    testkit::restore(&lab.node, Backend::Nft, &before).unwrap();
    assert_eq!(node_tables(&lab.node), before);
    let stale_svc: Vec<String> = before
        .lines()
        .filter(|l| l.starts_with(":KUBE-S") && !after.contains(*l))
        .map(|l| l[1..].split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(stale_svc.len(), 2, "old's SVC and SEP: {stale_svc:?}");
    assert_eq!(
        testkit::connect(&lab.client("c").ns, OLD_IP, 80, Duration::from_secs(2)).unwrap(),
        "pb",
        "kube-proxy's rules carry traffic before the switch"
    );

    let tmp = TempDir::new("tko");
    let objects_file = tmp.path().join("objects.yaml");
    fs::write(&objects_file, now.join("---\n")).unwrap();
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let (agent, errors) = thread::scope(|scope| {
        let client = scope.spawn(|| client_loop(&lab.client("c").ns, WEB_IP, &stop, &ok));
        wait_for_count(&ok, 5);
        let agent = start_agent(&lab.node, &objects_file, &tmp.path().join("agent.log"));
        wait_until(
            "the agent's first sync",
            Duration::from_secs(10),
            &agent,
            || agent.log().contains("rules synced"),
        );
        // Keep the client going across a few more (partial) syncs.
        wait_for_count(&ok, ok.load(Ordering::SeqCst) + 20);
        stop.store(true, Ordering::SeqCst);
        (agent, client.join().unwrap())
    });
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        errors.is_empty(),
        "{} of {} connections to the live ClusterIP failed during the takeover: {errors:?}\n{}",
        errors.len(),
        ok + errors.len(),
        agent.log()
    );
    assert_eq!(
        node_tables(&lab.node),
        after,
        "after the takeover the node holds exactly the render of the current cluster"
    );
    for chain in &stale_svc {
        assert!(!nft_nat(lab.node.name()).contains(chain.as_str()));
    }
    eprintln!("takeover: {ok} connections, none failed");
}

/// Issue 5: someone flushes the nat table behind the agent's back (`-F` and `-X`, as a
/// firewall reload does); the next periodic sync notices and puts every rule back.
#[test]
fn agent_restores_a_flushed_nat_table_on_its_next_sync() {
    testkit::needs_root!();
    let now = [
        objects::node(&["192.168.50.1"], &["10.244.1.0/24"]),
        Service::cluster_ip("web", &[WEB_IP]).yaml(),
        objects::endpoint_slice("web", &[Endpoint::local("10.244.1.11")]),
    ];
    let expected = objects::render("tkf", &now, &["--cluster-cidr", "10.244.0.0/16"]);
    let lab = testkit::agent::lab("tkf", 1);
    let tmp = TempDir::new("tkf");
    let objects_file = tmp.path().join("objects.yaml");
    fs::write(&objects_file, now.join("---\n")).unwrap();
    let agent = start_agent(&lab.node, &objects_file, &tmp.path().join("agent.log"));
    wait_until("first sync", Duration::from_secs(10), &agent, || {
        node_tables(&lab.node) == expected
    });

    lab.node
        .exec_ok(["iptables-nft", "-w", "5", "-t", "nat", "-F"]);
    lab.node
        .exec_ok(["iptables-nft", "-w", "5", "-t", "nat", "-X"]);
    assert_eq!(svc_chains(&nft_nat(lab.node.name())), 0);
    assert!(
        testkit::connect(&lab.client("c").ns, WEB_IP, 80, Duration::from_millis(500)).is_err(),
        "with nat flushed the ClusterIP goes nowhere"
    );
    // The sync period is 1 s: the next sync must repair it.
    wait_until(
        "the flushed nat table restored",
        Duration::from_secs(60),
        &agent,
        || node_tables(&lab.node) == expected,
    );
    assert!(
        agent.log().contains("flushed behind the proxy's back"),
        "{}",
        agent.log()
    );
    assert_eq!(
        testkit::connect(&lab.client("c").ns, WEB_IP, 80, Duration::from_secs(2)).unwrap(),
        "pa"
    );
}
