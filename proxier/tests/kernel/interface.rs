//! `kube-ipvs0` over rtnetlink against the real kernel, each test in a network namespace it
//! creates (`testkit::Netns`, deleted on drop, also on panic).
//!
//! The code under test opens its rtnetlink socket in the calling thread's namespace, so each
//! test runs it on a thread of its own that first enters the test's namespace (`setns`) and
//! checks it got there; nothing here runs in the root namespace. The kernel's view is read back
//! independently with `ip -o addr show`.
//!
//! This machine's kernel has no dummy driver, so a bridge called kube-ipvs0 stands in for the
//! dummy link (as the link is never set up, both only hold addresses); the test of `ensure` on
//! a missing link checks whichever outcome the kernel allows.

#[allow(dead_code)]
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use proxier::interface::{DummyInterface, IPVS_INTERFACE, InterfaceError, local_addresses_except};
use rulegen::IpFamily;
use testkit::netns::{Netns, in_ns};

/// A namespace with loopback up and a bridge called kube-ipvs0 standing in for the dummy.
fn ns_with_stand_in(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.exec_ok(["ip", "link", "add", IPVS_INTERFACE, "type", "bridge"]);
    ns
}

/// `ip -o addr show dev <dev>`: each address as `ip/prefix`, by family.
fn kernel_addrs(ns: &Netns, dev: &str, family: IpFamily) -> BTreeSet<String> {
    let out = ns.exec_ok(["ip", "-o", "addr", "show", "dev", dev]);
    let key = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    let mut addrs = BTreeSet::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == key {
                addrs.insert(
                    words
                        .next()
                        .expect("an address after inet/inet6")
                        .to_string(),
                );
            }
        }
    }
    addrs
}

fn link_index(ns: &Netns, dev: &str) -> u32 {
    let out = ns.exec_ok(["ip", "-o", "link", "show", "dev", dev]);
    out.split(':').next().unwrap().trim().parse().unwrap()
}

fn v4s(n: u32) -> Vec<IpAddr> {
    // 10.96.0.1 onwards, as cluster IPs are.
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)))
        .collect()
}

fn v6s(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16 + 1,
            ))
        })
        .collect()
}

fn with_prefix(ips: &[IpAddr]) -> BTreeSet<String> {
    ips.iter()
        .map(|ip| match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        })
        .collect()
}

fn sorted(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn binds_and_unbinds_2000_addresses_of_each_family() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-bind");
    let (v4, v6) = (v4s(2000), v6s(2000));
    let dev = DummyInterface::new(IPVS_INTERFACE);
    let (t4, t6) = in_ns(&ns, || {
        let start = Instant::now();
        assert_eq!(dev.bind(IpFamily::V4, &v4).unwrap(), 2000);
        let t4 = start.elapsed();
        let start = Instant::now();
        assert_eq!(dev.bind(IpFamily::V6, &v6).unwrap(), 2000);
        (t4, start.elapsed())
    });
    eprintln!("bind 2000 IPv4 addresses: {t4:?}; 2000 IPv6 addresses: {t6:?}");
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V4),
        with_prefix(&v4)
    );
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V6),
        with_prefix(&v6)
    );
    // The link is left as it was: not set up.
    let link = ns.exec_ok(["ip", "-o", "link", "show", "dev", IPVS_INTERFACE]);
    assert!(link.contains("state DOWN"), "{link}");

    in_ns(&ns, || {
        assert_eq!(dev.addresses(IpFamily::V4).unwrap(), sorted(&v4));
        assert_eq!(dev.addresses(IpFamily::V6).unwrap(), sorted(&v6));
        // Everything is bound already; the other family's addresses in the list are ignored.
        let start = Instant::now();
        assert_eq!(
            dev.bind(IpFamily::V4, &[v4.clone(), v6.clone()].concat())
                .unwrap(),
            0
        );
        eprintln!("bind 2000 IPv4 addresses again: {:?}", start.elapsed());
        assert_eq!(dev.bind(IpFamily::V6, &v6).unwrap(), 0);
        // Keep the first 1500 IPv4 addresses; IPv6 is untouched by an IPv4 unbind.
        let start = Instant::now();
        assert_eq!(dev.unbind_surplus(IpFamily::V4, &v4[..1500]).unwrap(), 500);
        eprintln!("unbind 500 of 2000 IPv4 addresses: {:?}", start.elapsed());
    });
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V4),
        with_prefix(&v4[..1500])
    );
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V6),
        with_prefix(&v6)
    );

    in_ns(&ns, || {
        // Wanted addresses of the other family do not keep anything.
        let keep = [&v6[..100], &v4[..]].concat();
        assert_eq!(dev.unbind_surplus(IpFamily::V6, &keep).unwrap(), 1900);
        assert_eq!(dev.unbind_surplus(IpFamily::V6, &keep).unwrap(), 0);
        assert_eq!(dev.unbind_surplus(IpFamily::V4, &v4[..1500]).unwrap(), 0);
    });
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V4),
        with_prefix(&v4[..1500])
    );
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V6),
        with_prefix(&v6[..100])
    );

    // Emptying both families.
    in_ns(&ns, || {
        assert_eq!(dev.unbind_surplus(IpFamily::V4, &[]).unwrap(), 1500);
        assert_eq!(dev.unbind_surplus(IpFamily::V6, &[]).unwrap(), 100);
        assert!(dev.addresses(IpFamily::V4).unwrap().is_empty());
        assert!(dev.addresses(IpFamily::V6).unwrap().is_empty());
    });
    assert!(kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V4).is_empty());
    assert!(kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V6).is_empty());
}

#[test]
fn addresses_bound_by_others_count_and_surplus_goes_whatever_its_prefix() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-foreign");
    for (a, extra) in [
        ("10.0.0.1/32", &[][..]),
        ("10.1.0.1/24", &[][..]),
        ("127.0.0.2/32", &[][..]),
        ("fd00::1/128", &["nodad"][..]),
        ("fe80::1/64", &["nodad"][..]),
    ] {
        let mut args = vec!["ip", "addr", "add", a, "dev", IPVS_INTERFACE];
        args.extend(extra);
        ns.exec_ok(args);
    }
    let dev = DummyInterface::new(IPVS_INTERFACE);
    in_ns(&ns, || {
        // Loopback and link-local addresses do not count, as upstream's isValidForSet.
        assert_eq!(
            dev.addresses(IpFamily::V4).unwrap(),
            [ip("10.0.0.1"), ip("10.1.0.1")]
        );
        assert_eq!(dev.addresses(IpFamily::V6).unwrap(), [ip("fd00::1")]);
        // 10.0.0.1 is there, and so is 10.1.0.1 (as a /24): only 10.0.0.2 is new. Duplicates
        // in the list are added once.
        let wanted = [
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.1.0.1"),
            ip("10.0.0.2"),
        ];
        assert_eq!(dev.bind(IpFamily::V4, &wanted).unwrap(), 1);
        assert_eq!(dev.bind(IpFamily::V6, &[ip("fd00::1")]).unwrap(), 0);
        // Only 10.0.0.2 is wanted: 10.0.0.1 and the /24 go, 127.0.0.2 stays.
        assert_eq!(
            dev.unbind_surplus(IpFamily::V4, &[ip("10.0.0.2")]).unwrap(),
            2
        );
        // fd00::1 goes, fe80::1 stays.
        assert_eq!(dev.unbind_surplus(IpFamily::V6, &[]).unwrap(), 1);
    });
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V4),
        BTreeSet::from(["10.0.0.2/32".to_string(), "127.0.0.2/32".to_string()])
    );
    assert_eq!(
        kernel_addrs(&ns, IPVS_INTERFACE, IpFamily::V6),
        BTreeSet::from(["fe80::1/64".to_string()])
    );
}

#[test]
fn ensure_uses_the_existing_link_and_creates_a_dummy_only_where_the_kernel_can() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-ensure");
    let bridge = link_index(&ns, IPVS_INTERFACE);
    // Whether this kernel can make a dummy link at all, asked independently through `ip`.
    let probe = ns.exec(["ip", "link", "add", "kprs-probe", "type", "dummy"]);
    let has_dummy = probe.status.success();
    if std::path::Path::new("/sys/module/dummy").exists() {
        assert!(
            has_dummy,
            "/sys/module/dummy exists but `ip link add type dummy` failed"
        );
    }
    if has_dummy {
        ns.exec_ok(["ip", "link", "del", "kprs-probe"]);
    }
    let missing = DummyInterface::new("kprs-dummy0");
    let (existing, created) = in_ns(&ns, || {
        let existing = DummyInterface::new(IPVS_INTERFACE);
        assert_eq!(existing.index().unwrap(), Some(bridge));
        assert_eq!(missing.index().unwrap(), None);
        (existing.ensure().unwrap(), missing.ensure())
    });
    assert_eq!(existing, bridge, "ensure() must use the link that is there");
    // The existing link is used as it is: still a bridge.
    let link = ns.exec_ok(["ip", "-d", "-o", "link", "show", "dev", IPVS_INTERFACE]);
    assert!(link.contains("bridge"), "{link}");
    if has_dummy {
        let index = created.expect("a kernel with dummy support creates the link");
        assert_eq!(index, link_index(&ns, "kprs-dummy0"));
        let link = ns.exec_ok(["ip", "-d", "-o", "link", "show", "dev", "kprs-dummy0"]);
        assert!(link.contains("dummy"), "{link}");
        assert!(
            link.contains("state DOWN"),
            "left down as upstream leaves it: {link}"
        );
        assert!(!link.contains(",UP"), "{link}");
        assert_eq!(in_ns(&ns, || missing.ensure().unwrap()), index);
    } else {
        let err = created.expect_err("this kernel has no dummy driver");
        assert!(
            matches!(err, InterfaceError::NoDummySupport { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "cannot create kprs-dummy0: the kernel has no dummy interface support (modprobe dummy)"
        );
        assert!(
            !ns.exec(["ip", "link", "show", "dev", "kprs-dummy0"])
                .status
                .success()
        );
    }
}

#[test]
fn local_addresses_except_lists_the_other_interfaces_only() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-local");
    ns.exec_ok([
        "ip", "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b",
    ]);
    ns.exec_ok(["ip", "addr", "add", "192.0.2.1/24", "dev", "veth-a"]);
    ns.exec_ok([
        "ip",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "veth-a",
        "nodad",
    ]);
    ns.exec_ok([
        "ip",
        "addr",
        "add",
        "fe80::1234/64",
        "dev",
        "veth-a",
        "nodad",
    ]);
    ns.exec_ok(["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"]);
    ns.exec_ok(["ip", "link", "set", "veth-a", "up"]);
    ns.exec_ok(["ip", "link", "set", "veth-b", "up"]);
    // The loopback and link-local addresses the filter must drop are really there.
    let lo = kernel_addrs(&ns, "lo", IpFamily::V4);
    assert!(lo.contains("127.0.0.1/8"), "{lo:?}");
    assert!(kernel_addrs(&ns, "lo", IpFamily::V6).contains("::1/128"));
    assert!(kernel_addrs(&ns, "veth-a", IpFamily::V6).contains("fe80::1234/64"));

    let (v4, v6, all_v4) = in_ns(&ns, || {
        let dev = DummyInterface::new(IPVS_INTERFACE);
        assert_eq!(dev.bind(IpFamily::V4, &[ip("10.96.0.1")]).unwrap(), 1);
        assert_eq!(dev.bind(IpFamily::V6, &[ip("fd00::1")]).unwrap(), 1);
        (
            local_addresses_except(IPVS_INTERFACE, IpFamily::V4).unwrap(),
            local_addresses_except(IPVS_INTERFACE, IpFamily::V6).unwrap(),
            local_addresses_except("kprs-none", IpFamily::V4).unwrap(),
        )
    });
    // A non-loopback address on lo counts (as upstream's); 127.0.0.1 does not.
    assert_eq!(v4, [ip("192.0.2.1"), ip("198.51.100.7")]);
    assert_eq!(v6, [ip("2001:db8::1")]);
    // With no interface of that name, kube-ipvs0's addresses are local like any other.
    assert_eq!(
        all_v4,
        [ip("10.96.0.1"), ip("192.0.2.1"), ip("198.51.100.7")]
    );
}

#[test]
fn delete_removes_the_link_and_a_missing_link_is_reported() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-delete");
    let dev = DummyInterface::new(IPVS_INTERFACE);
    let (first, second, bind, unbind, addrs) = in_ns(&ns, || {
        assert_eq!(dev.bind(IpFamily::V4, &[ip("10.96.0.1")]).unwrap(), 1);
        (
            dev.delete().unwrap(),
            dev.delete().unwrap(),
            dev.bind(IpFamily::V4, &[ip("10.96.0.1")]),
            dev.unbind_surplus(IpFamily::V4, &[]),
            dev.addresses(IpFamily::V4),
        )
    });
    assert!(first, "the link was there");
    assert!(!second, "and is gone after the first delete");
    assert!(
        !ns.exec(["ip", "link", "show", "dev", IPVS_INTERFACE])
            .status
            .success()
    );
    for err in [bind.unwrap_err(), unbind.unwrap_err(), addrs.unwrap_err()] {
        assert!(matches!(err, InterfaceError::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), "interface kube-ipvs0 does not exist");
    }
}

#[test]
fn a_kernel_refusal_names_the_address() {
    testkit::needs_root!();
    let ns = ns_with_stand_in("if-refuse");
    // With IPv6 off on the link the kernel refuses every IPv6 address (EACCES).
    ns.sysctl(&format!("net.ipv6.conf.{IPVS_INTERFACE}.disable_ipv6"), "1");
    let dev = DummyInterface::new(IPVS_INTERFACE);
    let err = in_ns(&ns, || {
        let wanted = [ip("fd00::1"), ip("fd00::2")];
        dev.bind(IpFamily::V6, &wanted).unwrap_err()
    });
    assert_eq!(err.errno(), Some(libc::EACCES), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("RTM_NEWADDR fd00::1 on kube-ipvs0: "),
        "{err}"
    );
}
