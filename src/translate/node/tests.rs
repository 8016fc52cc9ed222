use std::net::IpAddr;

use rulegen::LocalDetector;

use crate::settings::{DetectLocalMode, Settings};
use crate::translate::testutil::{lines, run, run_with, settings};

const NODES: &str = "---
apiVersion: v1
kind: Node
metadata:
  name: node-2
  labels:
    topology.kubernetes.io/zone: zone-b
spec:
  podCIDRs: [10.244.2.0/24]
---
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    kubernetes.io/hostname: node-1
    topology.kubernetes.io/zone: zone-a
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]
status:
  addresses:
  - type: InternalIP
    address: 192.168.10.11
  - type: Hostname
    address: node-1
  - type: ExternalIP
    address: 203.0.113.11
  - type: InternalIP
    address: \"fd00:192:168:10::11\"
  - type: InternalIP
    address: 192.168.10.11
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn this_node_gives_zone_and_addresses_of_the_family() {
    let t = run(NODES);
    assert!(t.warnings.is_empty(), "{:?}", lines(&t));
    assert_eq!(t.config.node_name, "node-1");
    assert_eq!(t.config.node_zone.as_deref(), Some("zone-a"));
    // Hostname entries are not addresses; the repeat is dropped; IPv6 is for the other family.
    assert_eq!(t.config.node_ips, [ip("192.168.10.11"), ip("203.0.113.11")]);

    let v6 = Settings {
        family: rulegen::IpFamily::V6,
        ..settings()
    };
    assert_eq!(
        run_with(NODES, &v6).config.node_ips,
        [ip("fd00:192:168:10::11")]
    );
}

#[test]
fn no_matching_node_is_fine() {
    let other = Settings {
        hostname: "node-9".into(),
        ..settings()
    };
    let t = run_with(NODES, &other);
    assert!(t.warnings.is_empty());
    assert_eq!(t.config.node_zone, None);
    assert!(t.config.node_ips.is_empty());
}

#[test]
fn node_cidr_mode_uses_pod_cidrs_of_the_family() {
    let s = Settings {
        detect_local_mode: DetectLocalMode::NodeCidr,
        ..settings()
    };
    let t = run_with(NODES, &s);
    assert_eq!(
        t.config.local_detector,
        LocalDetector::Cidrs(vec!["10.244.1.0/24".parse().unwrap()])
    );
    let s6 = Settings {
        family: rulegen::IpFamily::V6,
        ..s.clone()
    };
    assert_eq!(
        run_with(NODES, &s6).config.local_detector,
        LocalDetector::Cidrs(vec!["fd00:10:244:1::/64".parse().unwrap()])
    );
    // node-2 only has spec.podCIDRs; a Node with neither warns and detects nothing.
    let missing = Settings {
        hostname: "node-9".into(),
        ..s
    };
    let t = run_with(NODES, &missing);
    assert_eq!(t.config.local_detector, LocalDetector::None);
    assert_eq!(
        lines(&t),
        [
            "warning: detect-local-mode NodeCIDR: Node node-9 has no podCIDR of the rendered family (IPv4); local traffic is not detected"
        ]
    );
}

#[test]
fn invalid_node_addresses_and_cidrs_are_ignored_with_warnings() {
    let yaml = "apiVersion: v1
kind: Node
metadata:
  name: node-1
spec:
  podCIDRs: [10.244.1.0/33]
status:
  addresses:
  - type: InternalIP
    address: 192.168.10
  - type: InternalIP
    address: 192.168.010.011
";
    let s = Settings {
        detect_local_mode: DetectLocalMode::NodeCidr,
        ..settings()
    };
    let t = run_with(yaml, &s);
    assert_eq!(t.config.node_ips, [ip("192.168.10.11")]);
    assert_eq!(
        lines(&t),
        [
            "warning: Node node-1: ignoring invalid InternalIP \"192.168.10\" (test.yaml:1)",
            "warning: Node node-1: ignoring invalid podCIDR \"10.244.1.0/33\" (test.yaml:1)",
            "warning: detect-local-mode NodeCIDR: Node node-1 has no podCIDR of the rendered family (IPv4); local traffic is not detected",
        ]
    );
}

#[test]
fn duplicate_node_keeps_the_first() {
    let yaml = format!(
        "{NODES}{}",
        &NODES[NODES
            .find("---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-1")
            .unwrap()..]
    );
    let t = run(&yaml);
    assert_eq!(
        lines(&t),
        [
            "warning: skipping Node node-1: it appears more than once; the first one is used (test.yaml:34)"
        ]
    );
    assert_eq!(t.config.node_zone.as_deref(), Some("zone-a"));
}
