//! `--cleanup` on the real kernel, in a network namespace the test creates: a node that ran
//! kube-proxy (iptables mode's `golden/example` ruleset, IPVS mode's sets) next to other
//! components' chains; afterwards none of kube-proxy's hooks, chains or sets are left, and the
//! others' are untouched. (IPVS virtual servers and `kube-ipvs0` need the VM: `tests/vm/ipvs_vm.rs`.)

use std::path::Path;

use testkit::Netns;

#[test]
fn cleanup_removes_kube_proxy_s_rules_and_sets_and_nothing_else() {
    testkit::needs_root!();
    let ns = Netns::new("cleanup");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("golden/example/expected.iptables")).unwrap();
    // Other components' chains and hooks, in the same tables.
    // Other components' chains and hooks: kubelet's canary, Docker, kube-router's network
    // policy chains (also named KUBE-*), and a CNI hostport chain that uses KUBE-MARK-MASQ.
    let others = "*filter\n:KUBE-KUBELET-CANARY - [0:0]\n:DOCKER-USER - [0:0]\n\
                  :KUBE-ROUTER-INPUT - [0:0]\n:KUBE-NWPLCY-ABC - [0:0]\n\
                  -A INPUT -j KUBE-ROUTER-INPUT\n-A KUBE-ROUTER-INPUT -j KUBE-NWPLCY-ABC\n\
                  -A FORWARD -j DOCKER-USER\nCOMMIT\n*nat\n:DOCKER - [0:0]\n\
                  :CNI-HOSTPORT-SETMARK - [0:0]\n-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ\n\
                  -A PREROUTING -j DOCKER\nCOMMIT\n";
    let ipvs = std::fs::read_to_string(root.join("golden/example/expected.ipvs")).unwrap();
    let sets: String = ipvs
        .split("# ipset\n")
        .nth(1)
        .unwrap()
        .split("# iptables\n")
        .next()
        .unwrap()
        .to_string();
    // Every tool runs inside the test's namespace (`ip netns exec`).
    let load = |tool: &[&str], input: &str| {
        let out = ns.exec_input(tool, input.as_bytes());
        assert!(
            out.status.success(),
            "{tool:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    load(&["iptables-restore", "-w", "--noflush"], &example);
    load(&["iptables-restore", "-w", "--noflush"], others);
    load(&["ipset", "restore"], &sets);
    ns.exec_ok(["ipset", "create", "other-set", "hash:ip"]);
    let before = ns.exec_ok(["iptables-save"]);
    assert!(before.contains(":KUBE-SVC-"), "{before}");

    let out = ns.exec([
        env!("CARGO_BIN_EXE_kube-proxy-rs"),
        "--cleanup",
        "--hostname-override=node-a",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let after = ns.exec_ok(["iptables-save"]);
    let kube: Vec<&str> = after
        .lines()
        .filter(|l| {
            l.contains("KUBE-")
                && !l.contains("KUBE-KUBELET-CANARY")
                && !l.contains("KUBE-FIREWALL")
                && !l.contains("KUBE-ROUTER-")
                && !l.contains("KUBE-NWPLCY-")
                && !l.contains("KUBE-MARK-MASQ")
        })
        .collect();
    assert!(kube.is_empty(), "left behind: {kube:?}\n{after}");
    for kept in [
        ":KUBE-KUBELET-CANARY",
        ":DOCKER-USER",
        "-A FORWARD -j DOCKER-USER",
        "-A PREROUTING -j DOCKER",
        "-A INPUT -j KUBE-ROUTER-INPUT",
        "-A KUBE-ROUTER-INPUT -j KUBE-NWPLCY-ABC",
        // Still used by the CNI chain: kept whole, rule included.
        "-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
    ] {
        assert!(after.contains(kept), "{kept} was removed:\n{after}");
    }
    let sets_after = ns.exec_ok(["ipset", "list", "-n"]);
    assert_eq!(sets_after.trim(), "other-set", "{sets_after}");
    // Nothing left to do: a second run succeeds and changes nothing.
    let again = ns.exec([
        env!("CARGO_BIN_EXE_kube-proxy-rs"),
        "--cleanup",
        "--hostname-override=node-a",
    ]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        ns.exec_ok(["iptables-save"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        after.lines().filter(|l| !l.starts_with('#')).count()
    );
}
