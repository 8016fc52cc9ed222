//! Node set-up (`--init-only`) on the real kernel, in a network namespace the test creates
//! (the `net.*` sysctls it changes are the namespace's own; the host's are never touched), and
//! the JSON log format it logs in.

use testkit::Netns;

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec_ok(["cat", &format!("/proc/sys/{key}")])
        .trim()
        .to_string()
}

#[test]
fn init_only_sets_the_namespace_s_sysctls_and_exits() {
    testkit::needs_root!();
    let ns = Netns::new("init-only");
    ns.exec_ok([
        "sh",
        "-c",
        "echo 0 > /proc/sys/net/ipv4/conf/all/route_localnet",
    ]);
    let out = ns.exec([
        env!("CARGO_BIN_EXE_kube-proxy-rs"),
        "--init-only",
        "--hostname-override=node-a",
        // nf_conntrack_max is global: only the initial namespace may set it.
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=12h",
        "--conntrack-tcp-timeout-close-wait=20m",
        "--conntrack-udp-timeout=40s",
        "--logging-format=json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        sysctl(&ns, "net/netfilter/nf_conntrack_tcp_timeout_established"),
        "43200"
    );
    assert_eq!(
        sysctl(&ns, "net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
        "1200"
    );
    assert_eq!(sysctl(&ns, "net/netfilter/nf_conntrack_udp_timeout"), "40");
    assert_eq!(sysctl(&ns, "net/ipv4/conf/all/route_localnet"), "1");
    // Every log line is one JSON object with a level and a message.
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "node set up (--init-only); exiting" && l["level"] == "INFO"),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["setting"] == "net/ipv4/conf/all/route_localnet"),
        "{stderr}"
    );
}

#[test]
fn init_only_fails_loudly_when_a_setting_cannot_be_applied() {
    testkit::needs_root!();
    let ns = Netns::new("init-only-ro");
    // The default conntrack maximum (32768 × CPUs, at least 131072) differs from the host's
    // here, and a non-initial namespace may not write it: the init container must fail.
    let host_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let ours = (32768 * cpus).max(131072);
    if host_max.trim() == ours.to_string() {
        // Pick another maximum so the write is attempted.
        let out = ns.exec([
            env!("CARGO_BIN_EXE_kube-proxy-rs"),
            "--init-only",
            "--hostname-override=node-a",
            "--conntrack-min=1",
            "--conntrack-max-per-core=1",
        ]);
        assert!(!out.status.success());
        return;
    }
    let out = ns.exec([
        env!("CARGO_BIN_EXE_kube-proxy-rs"),
        "--init-only",
        "--hostname-override=node-a",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nf_conntrack_max"), "{stderr}");
    assert!(stderr.contains("could not be applied"), "{stderr}");
    // The others were still applied.
    assert_eq!(
        sysctl(&ns, "net/netfilter/nf_conntrack_tcp_timeout_established"),
        "86400"
    );
}
