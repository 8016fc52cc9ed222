//! The fake answers as `ip_vs_genl_set_cmd` does.

use std::net::{IpAddr, Ipv4Addr};

use rulegen::model::Protocol;

use crate::ipvs::attrs::{IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_HASHED, IP_VS_SVC_F_PERSISTENT};
use crate::ipvs::entry::{IpvsDest, IpvsService};
use crate::ipvs::error::{IpvsError, IpvsOp, Rejection};
use crate::ipvs::fake::{FakeFailure, FakeIpvs};
use crate::ipvs::handle::IpvsHandle;

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(addr: &str, port: u16) -> IpvsService {
    IpvsService::new(Protocol::Tcp, v4(addr), port, "rr", 0, 0)
}

fn dest(addr: &str, port: u16, weight: u32) -> IpvsDest {
    IpvsDest::masq(v4(addr), port, weight)
}

fn rejection<T: std::fmt::Debug>(r: Result<T, IpvsError>) -> Rejection {
    r.unwrap_err().rejection().expect("a kernel rejection")
}

#[test]
fn services_follow_the_kernel() {
    let mut f = FakeIpvs::new();
    let s = svc("10.96.0.1", 443);
    f.new_service(&s).unwrap();
    assert_eq!(rejection(f.new_service(&s)), Rejection::Exists);
    let other = svc("10.96.0.2", 443);
    assert_eq!(rejection(f.set_service(&other)), Rejection::NoService);
    assert_eq!(rejection(f.del_service(&other)), Rejection::NoService);

    // Same address and port, another protocol: another service.
    let udp = IpvsService::new(Protocol::Udp, v4("10.96.0.1"), 443, "rr", 0, 0);
    f.new_service(&udp).unwrap();
    assert_eq!(f.service_count(), 2);

    let mut changed = s.clone();
    changed.scheduler = "lc".to_string();
    changed.flags = IP_VS_SVC_F_PERSISTENT;
    changed.timeout = 10800;
    f.set_service(&changed).unwrap();
    let dumped = f.services().unwrap();
    let got = dumped.iter().find(|d| d.key() == s.key()).unwrap();
    assert_eq!(got.scheduler, "lc");
    assert_eq!(got.timeout, 10800);
    assert_eq!(got.flags, IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_HASHED);
    assert!(got.stats.is_some(), "dumps carry counters");

    f.del_service(&s).unwrap();
    assert_eq!(f.service_count(), 1);
}

#[test]
fn scheduler_and_netmask_checks() {
    let mut f = FakeIpvs::new();
    let mut bad = svc("10.96.0.1", 80);
    bad.scheduler = "fastest".to_string();
    assert_eq!(rejection(f.new_service(&bad)), Rejection::NotFound);
    bad.scheduler = "a-name-longer-than-15".to_string();
    assert_eq!(
        rejection(f.new_service(&bad)),
        Rejection::Other(libc::EINVAL)
    );

    let mut v6 = IpvsService::new(Protocol::Tcp, "fd00::1".parse().unwrap(), 80, "rr", 0, 0);
    assert_eq!(v6.netmask, 128);
    v6.netmask = 0xffff_ffff;
    assert_eq!(
        rejection(f.new_service(&v6)),
        Rejection::Other(libc::EINVAL)
    );
    v6.netmask = 64;
    f.new_service(&v6).unwrap();

    // SET_SERVICE checks the scheduler too.
    let mut changed = v6.clone();
    changed.scheduler = "nope".to_string();
    assert_eq!(rejection(f.set_service(&changed)), Rejection::NotFound);
    assert_eq!(f.services().unwrap()[0].scheduler, "rr");
}

#[test]
fn destinations_follow_the_kernel() {
    let mut f = FakeIpvs::new();
    let s = svc("10.96.0.1", 443);
    let d = dest("10.244.0.5", 6443, 1);
    // Any destination command on a missing service: ESRCH.
    assert_eq!(rejection(f.new_dest(&s, &d)), Rejection::NoService);
    assert_eq!(rejection(f.set_dest(&s, &d)), Rejection::NoService);
    assert_eq!(rejection(f.del_dest(&s, &d)), Rejection::NoService);
    // A dump of a missing service's destinations is empty.
    assert_eq!(f.destinations(&s).unwrap(), Vec::new());

    f.new_service(&s).unwrap();
    f.new_dest(&s, &d).unwrap();
    assert_eq!(rejection(f.new_dest(&s, &d)), Rejection::Exists);
    let missing = dest("10.244.0.6", 6443, 1);
    assert_eq!(rejection(f.set_dest(&s, &missing)), Rejection::NotFound);
    assert_eq!(rejection(f.del_dest(&s, &missing)), Rejection::NotFound);

    let mut heavier = d.clone();
    heavier.weight = 5;
    f.set_dest(&s, &heavier).unwrap();
    assert!(f.set_conns(&s.key().unwrap(), d.addr, d.port, 4, 6));
    let got = f.destinations(&s).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].weight, 5);
    assert_eq!(got[0].connections(), 10);

    let mut negative = d.clone();
    negative.weight = u32::MAX; // -1 as the kernel's int
    assert_eq!(
        rejection(f.set_dest(&s, &negative)),
        Rejection::Other(libc::ERANGE)
    );
    let mut thresholds = missing.clone();
    thresholds.lower_threshold = 10;
    assert_eq!(
        rejection(f.new_dest(&s, &thresholds)),
        Rejection::Other(libc::ERANGE)
    );
    let v6 = IpvsDest::masq("fd00::5".parse().unwrap(), 80, 1);
    assert_eq!(
        rejection(f.new_dest(&s, &v6)),
        Rejection::Other(libc::EINVAL)
    );
    let mut tunnelled = v6.clone();
    tunnelled.fwd_method = IP_VS_CONN_F_TUNNEL;
    f.new_dest(&s, &tunnelled).unwrap();

    f.del_dest(&s, &d).unwrap();
    assert_eq!(f.dest_count(), 1);
}

#[test]
fn calls_are_counted_and_logged() {
    let mut f = FakeIpvs::new();
    let s = svc("10.96.0.1", 443);
    f.services().unwrap();
    f.new_service(&s).unwrap();
    let _ = f.new_service(&s);
    f.new_dest(&s, &dest("10.244.0.5", 6443, 1)).unwrap();
    f.destinations(&s).unwrap();
    let c = f.calls();
    assert_eq!(
        (c.get_services, c.get_dests, c.new_service, c.new_dest),
        (1, 1, 2, 1)
    );
    assert_eq!(c.modifying(), 3);
    assert_eq!(c.dumps(), 2);
    assert_eq!(
        f.log(),
        [
            "NEW_SERVICE TCP 10.96.0.1:443 rr",
            "NEW_SERVICE TCP 10.96.0.1:443 rr",
            "NEW_DEST TCP 10.96.0.1:443 -> 10.244.0.5:6443 weight 1",
        ]
    );
    f.reset_calls();
    assert_eq!(f.calls().modifying(), 0);
    assert!(f.log().is_empty());
    assert_eq!(f.service_count(), 1, "the table stays");
}

#[test]
fn injected_failures_fire_once_and_change_nothing() {
    let mut f = FakeIpvs::new();
    let s = svc("10.96.0.1", 443);
    f.fail_next(IpvsOp::NewService, FakeFailure::Errno(libc::ENOMEM));
    f.fail_next(IpvsOp::GetServices, FakeFailure::Socket);
    let err = f.new_service(&s).unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Other(libc::ENOMEM)));
    assert_eq!(f.service_count(), 0);
    assert!(matches!(f.services(), Err(IpvsError::Socket(_))));
    f.new_service(&s).unwrap();
    assert_eq!(f.services().unwrap().len(), 1);
    assert_eq!(f.calls().new_service, 2);
}

#[test]
fn ipvsadm_text_matches_rulegen_format() {
    let mut f = FakeIpvs::new();
    let a = IpvsService::new(Protocol::Udp, v4("10.96.0.10"), 53, "rr", 0, 0);
    let b = IpvsService::new(
        Protocol::Tcp,
        v4("10.96.0.10"),
        53,
        "rr",
        IP_VS_SVC_F_PERSISTENT,
        10800,
    );
    let c = IpvsService::new(
        Protocol::Tcp,
        IpAddr::V6("fd00::1".parse().unwrap()),
        80,
        "sh",
        0,
        0,
    );
    for s in [&a, &b, &c] {
        f.new_service(s).unwrap();
    }
    f.new_dest(&a, &dest("10.244.1.2", 53, 1)).unwrap();
    f.new_dest(&a, &dest("10.244.0.2", 53, 0)).unwrap();
    f.new_dest(&c, &IpvsDest::masq("fd00::2".parse().unwrap(), 8080, 1))
        .unwrap();
    let mut fwm = IpvsService::new(
        Protocol::Tcp,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
        "rr",
        0,
        0,
    );
    fwm.fwmark = 7;
    f.insert_service(fwm);
    assert_eq!(
        f.to_ipvsadm(),
        "-A -t 10.96.0.10:53 -s rr -p 10800\n\
         -A -u 10.96.0.10:53 -s rr\n\
         -a -u 10.96.0.10:53 -r 10.244.0.2:53 -m -w 0\n\
         -a -u 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1\n\
         -A -t [fd00::1]:80 -s sh\n\
         -a -t [fd00::1]:80 -r [fd00::2]:8080 -m -w 1\n\
         -A -f 7 -s rr\n"
    );
}
