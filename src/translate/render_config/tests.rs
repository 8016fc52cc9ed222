use rulegen::{IpFamily, LocalDetector, RenderConfig};

use crate::settings::{DetectLocalMode, Settings};
use crate::translate::render_config::build;
use crate::translate::testutil::settings;

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn config(s: &Settings) -> (RenderConfig, Vec<String>) {
    let mut w = Vec::new();
    let c = build(s, None, &mut w);
    (c, w.iter().map(ToString::to_string).collect())
}

#[test]
fn defaults_match_upstream() {
    let (c, w) = config(&settings());
    assert!(w.is_empty());
    assert_eq!(
        c,
        RenderConfig {
            node_name: "node-1".into(),
            ..RenderConfig::default()
        }
    );
    assert_eq!(c.local_detector, LocalDetector::None);
    assert_eq!(c.masquerade_bit, 14);
    assert!(c.localhost_nodeports && !c.masquerade_all);
}

#[test]
fn cidr_lists_are_cut_to_the_family() {
    let s = Settings {
        cluster_cidrs: nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        nodeport_addresses: nets(&["192.168.10.0/24", "fd00:192:168:10::/64", "127.0.0.0/8"]),
        ..settings()
    };
    let (c, _) = config(&s);
    assert_eq!(
        c.local_detector,
        LocalDetector::Cidrs(nets(&["10.244.0.0/16"]))
    );
    assert_eq!(
        c.nodeport_addresses,
        nets(&["192.168.10.0/24", "127.0.0.0/8"])
    );
    let (c6, _) = config(&Settings {
        family: IpFamily::V6,
        ..s
    });
    assert_eq!(c6.family, IpFamily::V6);
    assert_eq!(
        c6.local_detector,
        LocalDetector::Cidrs(nets(&["fd00:10:244::/56"]))
    );
    assert_eq!(c6.nodeport_addresses, nets(&["fd00:192:168:10::/64"]));
}

#[test]
fn cluster_cidr_of_the_other_family_only_gives_no_detector_and_a_note() {
    let (c, w) = config(&Settings {
        cluster_cidrs: nets(&["fd00:10:244::/56"]),
        ..settings()
    });
    assert_eq!(c.local_detector, LocalDetector::None);
    assert_eq!(
        w,
        ["note: no cluster CIDR of the rendered family (IPv4); local traffic is not detected"]
    );
}

#[test]
fn interface_detectors_and_flags() {
    let (c, _) = config(&Settings {
        detect_local_mode: DetectLocalMode::BridgeInterface,
        pod_bridge_interface: "cbr0".into(),
        masquerade_all: true,
        masquerade_bit: 3,
        localhost_nodeports: false,
        ..settings()
    });
    assert_eq!(
        c.local_detector,
        LocalDetector::BridgeInterface("cbr0".into())
    );
    assert!(c.masquerade_all && !c.localhost_nodeports);
    assert_eq!(c.masquerade_bit, 3);
    let (c, _) = config(&Settings {
        detect_local_mode: DetectLocalMode::InterfaceNamePrefix,
        pod_interface_name_prefix: "veth".into(),
        ..settings()
    });
    assert_eq!(
        c.local_detector,
        LocalDetector::InterfaceNamePrefix("veth".into())
    );
}
