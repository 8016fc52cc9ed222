//! Restarting the agent on a node that already holds its rules (issue #16), at a size CI
//! affords: whole-table saves (`iptables-nft-save`, which at 10,000 Services runs for minutes
//! and dies of SIGSEGV) are replaced by stand-ins that crash, and the restarted agent must
//! still detect its back end, sync, and leave the kernel equal to the dry run.
//!
//! The 10,000-Service version of this run is `tests/agent/agent_scale.rs`'s `restart_at_scale`
//! (by hand); its figures are in `benches/README.md`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::agent::{AgentProcess, NODE, wait_until};
use testkit::{Backend, Netns, TempDir};

/// `n` ClusterIP Services with `endpoints` endpoints each, as one objects file.
fn objects(n: u32, endpoints: u32) -> String {
    let mut y = String::from(NODE);
    for i in 0..n {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: lab}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{i}-1, namespace: lab, labels: {{kubernetes.io/service-name: svc{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            i / 250,
            i % 250 + 1
        );
        for e in 0..endpoints {
            let k = i * endpoints + e;
            let _ = writeln!(
                y,
                "- {{addresses: [10.{}.{}.{}], nodeName: node-b}}",
                128 + k / 65536,
                k / 256 % 256,
                k % 256
            );
        }
    }
    y
}

/// The dry run of `objects` with the lab's flags.
fn dry_run(objects: &Path) -> String {
    let mut args = vec![
        "--dry-run".as_ref(),
        "--objects".as_ref(),
        objects.as_os_str(),
    ];
    args.extend(testkit::agent::LAB_FLAGS.iter().map(OsStr::new));
    testkit::cli::stdout_of(args)
}

/// A `PATH` whose whole-table save tools crash as `iptables-nft-save` did at 10,000 Services.
fn crashing_saves(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            "#!/bin/sh\necho 'stand-in: crashing as at 10,000 Services' >&2\nkill -SEGV $$\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn kernel(node: &Netns) -> String {
    testkit::save_tables(node, Backend::Nft, &["mangle", "filter", "nat"])
}

#[test]
fn a_restarted_agent_syncs_without_whole_table_saves() {
    testkit::needs_root!();
    let node = Netns::new("restart");
    let tmp = TempDir::new("restart");
    let objects = tmp.path().join("objects.yaml");
    std::fs::write(&objects, objects_text(1000)).unwrap();
    let path = crashing_saves(tmp.path());

    // The first agent fills the node, and is killed as a crash or a rollout would.
    let first = AgentProcess::start_in_lab(
        &node,
        ("--objects", &objects),
        &[],
        &[("PATH", path.clone())],
        &tmp.path().join("first.log"),
    );
    let want = dry_run(&objects);
    wait_until(
        "first agent synced",
        Duration::from_secs(300),
        &first,
        || first.log().contains("rules synced"),
    );
    assert_eq!(kernel(&node), want);
    first.signal(libc::SIGKILL);
    drop(first);

    // The second agent starts on the loaded node with one Service more.
    std::fs::write(&objects, objects_text(1001)).unwrap();
    let want = dry_run(&objects);
    let started = Instant::now();
    let second = AgentProcess::start_in_lab(
        &node,
        ("--objects", &objects),
        &[],
        &[("PATH", path)],
        &tmp.path().join("second.log"),
    );
    wait_until(
        "restarted agent synced",
        Duration::from_secs(300),
        &second,
        || second.log().contains("rules synced"),
    );
    eprintln!(
        "restart -> synced at 1,001 Services: {:?}",
        started.elapsed()
    );
    let log = second.log();
    assert!(log.contains("iptables back end chosen"), "{log}");
    assert!(
        !log.contains("stand-in"),
        "a whole-table save was run:\n{log}"
    );
    assert_eq!(kernel(&node), want);
}

fn objects_text(n: u32) -> String {
    objects(n, 10)
}
