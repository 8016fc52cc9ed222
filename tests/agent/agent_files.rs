//! The node agent end to end, with objects from files (`--objects` without `--dry-run`), inside
//! a lab node namespace: it applies the rules, follows file changes, heals a failed restore, and
//! never leaves the node without rules — not at SIGTERM, not across a SIGKILL and restart.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use testkit::agent::{
    AgentProcess, NODE, failing_restore, nft_nat, service, slice, svc_chains, wait_until,
    write_objects,
};
use testkit::{Netns, TempDir};

/// The agent on `objects`, fast-paced for tests (a full sync every 2 s), with `envs`.
fn start_agent(node: &Netns, objects: &Path, envs: &[(&str, String)], log: &Path) -> AgentProcess {
    AgentProcess::start_in_lab(
        node,
        ("--objects", objects),
        &["--iptables-sync-period", "2s"],
        envs,
        log,
    )
}

fn nat(node: &Netns) -> String {
    nft_nat(node.name())
}

#[test]
fn agent_applies_follows_files_and_keeps_rules_on_sigterm() {
    testkit::needs_root!();
    let lab = testkit::agent::lab("agf", 2);
    let tmp = TempDir::new("agf");
    let objects = tmp.path().join("objects.yaml");
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11", "10.244.1.12"])
        ),
    );
    let mut agent = start_agent(&lab.node, &objects, &[], &tmp.path().join("agent.log"));

    let took = wait_until("first sync", Duration::from_secs(10), &agent, || {
        svc_chains(&nat(&lab.node)) == 1
    });
    eprintln!("first sync after {took:?}");
    let client = &lab.client("c").ns;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = testkit::connect(client, "10.96.0.10", 80, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect: {e:?}\n{}", lab.diagnostics()));
        seen.insert(answer);
    }
    assert_eq!(
        seen.len(),
        2,
        "both backends answer through the agent's rules: {seen:?}"
    );

    // A second Service appears, the first loses an endpoint: applied; the time it took is
    // printed (speed is the benches' job, not a test's limit).
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11"]),
            service("api", "10.96.0.11"),
            slice("api", &["10.244.1.12"])
        ),
    );
    let took = wait_until(
        "second Service applied",
        Duration::from_secs(60),
        &agent,
        || {
            let n = nat(&lab.node);
            svc_chains(&n) == 2 && n.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count() == 2
        },
    );
    eprintln!("file change applied after {took:?}");
    for _ in 0..10 {
        assert_eq!(
            testkit::connect(client, "10.96.0.10", 80, Duration::from_secs(2)).unwrap(),
            "pa"
        );
    }
    assert_eq!(
        testkit::connect(client, "10.96.0.11", 80, Duration::from_secs(2)).unwrap(),
        "pb"
    );

    // A broken file keeps the last good rules (never an empty node).
    write_objects(
        &objects,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    );
    thread::sleep(Duration::from_millis(800));
    assert_eq!(
        svc_chains(&nat(&lab.node)),
        2,
        "a broken file must not remove rules"
    );

    // The Service is deleted: its chains go.
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11"])
        ),
    );
    wait_until(
        "deleted Service's chains removed",
        Duration::from_secs(60),
        &agent,
        || svc_chains(&nat(&lab.node)) == 1,
    );

    // SIGTERM: the agent exits cleanly and the rules stay.
    let before = nat(&lab.node);
    agent.signal(libc::SIGTERM);
    let status = agent.child.wait().unwrap();
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        agent.log()
    );
    assert_eq!(
        nat(&lab.node),
        before,
        "rules must stay in place after SIGTERM"
    );
    assert_eq!(
        testkit::connect(client, "10.96.0.10", 80, Duration::from_secs(2)).unwrap(),
        "pa"
    );
}

#[test]
fn agent_heals_a_failed_restore_and_survives_sigkill_without_a_gap() {
    testkit::needs_root!();
    let lab = testkit::agent::lab("agk", 2);
    let tmp = TempDir::new("agk");
    let objects = tmp.path().join("objects.yaml");
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11"])
        ),
    );

    // Fault injection: an `iptables-nft-restore` first in the agent's PATH that fails once
    // while a marker file exists, and otherwise runs the real tool.
    let marker = tmp.path().join("fail-restore");
    let path = failing_restore(tmp.path(), &marker, true);
    let mut agent = start_agent(&lab.node, &objects, &[path], &tmp.path().join("agent1.log"));
    wait_until("first sync", Duration::from_secs(10), &agent, || {
        svc_chains(&nat(&lab.node)) == 1
    });
    let good = nat(&lab.node);

    // One restore fails: the old rules stay; the retry heals it.
    fs::write(&marker, "").unwrap();
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.11", "10.244.1.12"])
        ),
    );
    wait_until(
        "the injected failure is consumed",
        Duration::from_secs(60),
        &agent,
        || !marker.exists(),
    );
    assert_eq!(
        svc_chains(&nat(&lab.node)),
        1,
        "after a failed restore the old rules stay"
    );
    let _ = good;
    wait_until(
        "the retry applies the change",
        Duration::from_secs(60),
        &agent,
        || {
            nat(&lab.node)
                .lines()
                .filter(|l| l.starts_with(":KUBE-SEP-"))
                .count()
                == 2
        },
    );
    assert!(
        agent.log().contains("injected failure"),
        "the failure is logged:\n{}",
        agent.log()
    );

    // SIGKILL and restart, while a watcher checks the rules many times a second: they are
    // never missing, and the restarted agent applies the newest objects.
    let missing = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (missing, checks, stop) = (missing.clone(), checks.clone(), stop.clone());
        let node = lab.node.name().to_string();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &node, "iptables-nft-save", "-t", "nat"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if !text.contains("-j KUBE-SVC-") {
                    missing.fetch_add(1, Ordering::SeqCst);
                }
                checks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while checks.load(Ordering::SeqCst) < 3 {
        thread::sleep(Duration::from_millis(10));
    }
    agent.signal(libc::SIGKILL);
    let _ = agent.child.wait();
    write_objects(
        &objects,
        &format!(
            "{NODE}{}{}",
            service("web", "10.96.0.10"),
            slice("web", &["10.244.1.12"])
        ),
    );
    let agent2 = start_agent(&lab.node, &objects, &[], &tmp.path().join("agent2.log"));
    wait_until(
        "the restarted agent applies the newest objects",
        Duration::from_secs(10),
        &agent2,
        || {
            let n = nat(&lab.node);
            n.contains("10.244.1.12:8080") && !n.contains("10.244.1.11:8080")
        },
    );
    let after_restart = checks.load(Ordering::SeqCst);
    while checks.load(Ordering::SeqCst) < after_restart + 3 {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_eq!(
        missing.load(Ordering::SeqCst),
        0,
        "a check found no service rules during the restart"
    );
    assert_eq!(
        testkit::connect(
            &lab.client("c").ns,
            "10.96.0.10",
            80,
            Duration::from_secs(2)
        )
        .unwrap(),
        "pb"
    );
}
