use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::settings::ConntrackSettings;

/// A fake `/proc/sys` tree with the files a node has.
fn tree(tag: &str, files: &[&str]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("kprs-nodesetup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for f in files {
        let p = root.join("proc/sys").join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "0\n").unwrap();
    }
    root
}

fn read(root: &Path, key: &str) -> String {
    std::fs::read_to_string(root.join("proc/sys").join(key))
        .unwrap()
        .trim()
        .to_string()
}

fn settings(mode: ProxyMode) -> Settings {
    Settings {
        hostname: "n".into(),
        mode,
        conntrack: ConntrackSettings {
            max_per_core: 0,
            tcp_established_timeout: Duration::from_secs(3600),
            tcp_close_wait_timeout: Duration::ZERO,
            ..ConntrackSettings::default()
        },
        ..Settings::default()
    }
}

#[test]
fn iptables_mode_sets_route_localnet_and_the_conntrack_time_outs() {
    let root = tree(
        "ipt",
        &[
            "net/ipv4/conf/all/route_localnet",
            "net/netfilter/nf_conntrack_tcp_timeout_established",
        ],
    );
    let report = set_up(&settings(ProxyMode::Iptables), &Sysctls::at(&root), false);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.changed.len(), 2);
    assert_eq!(read(&root, "net/ipv4/conf/all/route_localnet"), "1");
    assert_eq!(
        read(&root, "net/netfilter/nf_conntrack_tcp_timeout_established"),
        "3600"
    );
    // Without localhost node ports (or on IPv6) route_localnet is left alone.
    let root2 = tree("ipt2", &["net/ipv4/conf/all/route_localnet"]);
    let mut s = settings(ProxyMode::Iptables);
    s.localhost_nodeports = false;
    s.conntrack.tcp_established_timeout = Duration::ZERO;
    let report = set_up(&s, &Sysctls::at(&root2), false);
    assert!(report.changed.is_empty() && report.failed.is_empty());
    assert_eq!(read(&root2, "net/ipv4/conf/all/route_localnet"), "0");
    for r in [root, root2] {
        let _ = std::fs::remove_dir_all(r);
    }
}

#[test]
fn ipvs_mode_sets_its_sysctls_and_strict_arp_and_reports_what_failed() {
    // No nf_conntrack_tcp_timeout_established file: that one fails, the rest still apply.
    let root = tree(
        "ipvs",
        &[
            "net/ipv4/vs/conntrack",
            "net/ipv4/vs/expire_nodest_conn",
            "net/ipv4/vs/expire_quiescent_template",
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/arp_ignore",
            "net/ipv4/conf/all/arp_announce",
        ],
    );
    let mut s = settings(ProxyMode::Ipvs);
    s.ipvs_strict_arp = true;
    let report = set_up(&s, &Sysctls::at(&root), true);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(
        report.failed[0]
            .to_string()
            .contains("nf_conntrack_tcp_timeout_established")
    );
    assert_eq!(report.changed.len(), 6);
    assert_eq!(read(&root, "net/ipv4/conf/all/arp_announce"), "2");
    assert_eq!(read(&root, "net/ipv4/vs/conntrack"), "1");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn the_conntrack_maximum_scales_with_cpus_above_the_floor() {
    let s = Settings {
        hostname: "n".into(),
        ..Settings::default()
    };
    assert_eq!(conntrack_limits(&s, 2).max, 131072);
    assert_eq!(conntrack_limits(&s, 16).max, 16 * 32768);
    assert_eq!(
        conntrack_limits(&s, 16).tcp_established_timeout,
        Duration::from_secs(86400)
    );
}

#[test]
fn without_ipvs_loaded_its_sysctls_are_left_and_nothing_fails_for_them() {
    // No net/ipv4/vs directory at all, as before ip_vs is loaded.
    let root = tree(
        "no-ipvs",
        &[
            "net/ipv4/ip_forward",
            "net/netfilter/nf_conntrack_tcp_timeout_established",
        ],
    );
    let report = set_up(&settings(ProxyMode::Ipvs), &Sysctls::at(&root), false);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(read(&root, "net/ipv4/ip_forward"), "1");
    let report = set_up(&settings(ProxyMode::Ipvs), &Sysctls::at(&root), true);
    assert_eq!(report.failed.len(), 3, "{:?}", report.failed);
    let _ = std::fs::remove_dir_all(root);
}
