//! The syncer against the fake peer: only differences are sent, graceful termination, other
//! families and excluded CIDRs, failures and recovery, scale.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rulegen::model::{IpFamily, Protocol};
use rulegen::render::ipvs::{IpvsTable, RealServer, VirtualServer};

use crate::ipvs::attrs::{IP_VS_CONN_F_DROUTE, IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_SCHED_SH_PORT};
use crate::ipvs::diff::{DrainList, KernelService, KernelView, plan};
use crate::ipvs::entry::{IpvsDest, IpvsService, ServiceKey};
use crate::ipvs::error::{IpvsError, IpvsOp, Rejection};
use crate::ipvs::fake::{FakeFailure, FakeIpvs};
use crate::ipvs::handle::IpvsHandle;
use crate::ipvs::sync::{DEFAULT_GRACE_TIMEOUT, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A virtual server with round-robin, no persistence and weight-1 endpoints. Tests build
/// every `VirtualServer` through here (or `with`), so a new field costs one line.
fn vs(protocol: Protocol, addr: &str, port: u16, eps: &[(&str, u16)]) -> VirtualServer {
    let mut real_servers: Vec<RealServer> = eps
        .iter()
        .map(|(a, p)| RealServer {
            addr: ip(a),
            port: *p,
            weight: 1,
        })
        .collect();
    real_servers.sort();
    VirtualServer {
        protocol,
        addr: ip(addr),
        port,
        scheduler: "rr".to_string(),
        persistence: None,
        flags: 0,
        real_servers,
        service: format!("default/svc-{port}:p"),
    }
}

fn tcp(addr: &str, port: u16, eps: &[(&str, u16)]) -> VirtualServer {
    vs(Protocol::Tcp, addr, port, eps)
}

fn with(mut v: VirtualServer, f: impl FnOnce(&mut VirtualServer)) -> VirtualServer {
    f(&mut v);
    v
}

/// A table in rulegen's order (address, port, protocol).
fn table(mut vss: Vec<VirtualServer>) -> IpvsTable {
    let order = |p: Protocol| match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    };
    vss.sort_by_key(|v| (v.addr, v.port, order(v.protocol)));
    IpvsTable {
        virtual_servers: vss,
    }
}

fn key(protocol: Protocol, addr: &str, port: u16) -> ServiceKey {
    ServiceKey {
        protocol,
        addr: ip(addr),
        port,
    }
}

fn syncer() -> IpvsSyncer<FakeIpvs> {
    IpvsSyncer::new(FakeIpvs::new(), IpvsSyncConfig::default())
}

/// Syncs, expecting success.
fn sync(s: &mut IpvsSyncer<FakeIpvs>, t: &IpvsTable, now: Instant) -> IpvsSyncReport {
    s.sync(t, now)
        .unwrap_or_else(|e| panic!("sync failed: {e}"))
}

/// The modifying calls the fake received since the last look, and forgets them.
fn sent(s: &mut IpvsSyncer<FakeIpvs>) -> Vec<String> {
    let log = s.handle().log().to_vec();
    s.handle_mut().reset_calls();
    log
}

fn two_services() -> IpvsTable {
    table(vec![
        tcp("10.96.0.1", 443, &[("10.0.0.1", 6443), ("10.0.0.2", 6443)]),
        vs(
            Protocol::Udp,
            "10.96.0.10",
            53,
            &[("10.244.0.5", 53), ("10.244.1.5", 53)],
        ),
    ])
}

#[test]
fn first_sync_creates_everything() {
    let mut s = syncer();
    let t = two_services();
    let r = sync(&mut s, &t, Instant::now());
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
    assert_eq!((r.services_added, r.dests_added), (2, 4));
    assert_eq!(r.messages_sent, 6);
    assert_eq!(r.dump_requests, 1, "an empty kernel: no destination dumps");
    assert_eq!(
        sent(&mut s),
        [
            "NEW_SERVICE TCP 10.96.0.1:443 rr",
            "NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.1:6443 weight 1",
            "NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.2:6443 weight 1",
            "NEW_SERVICE UDP 10.96.0.10:53 rr",
            "NEW_DEST UDP 10.96.0.10:53 -> 10.244.0.5:53 weight 1",
            "NEW_DEST UDP 10.96.0.10:53 -> 10.244.1.5:53 weight 1",
        ]
    );
}

#[test]
fn unchanged_table_sends_nothing() {
    let mut s = syncer();
    let t = two_services();
    let now = Instant::now();
    sync(&mut s, &t, now);
    s.handle_mut().reset_calls();
    let r = sync(&mut s, &t, now + Duration::from_secs(1));
    assert!(r.is_noop(), "{r:?}");
    assert_eq!(s.handle().calls().modifying(), 0);
    assert_eq!(
        r.dump_requests, 3,
        "the services, then each desired service's destinations"
    );
    assert_eq!(s.handle().calls().dumps(), 3);
    assert_eq!(
        r,
        IpvsSyncReport {
            dump_requests: 3,
            dump_duration: r.dump_duration,
            apply_duration: r.apply_duration,
            ..IpvsSyncReport::default()
        }
    );
}

#[test]
fn swapped_endpoint_without_connections_is_one_new_and_one_delete() {
    let mut s = syncer();
    let now = Instant::now();
    sync(&mut s, &two_services(), now);
    s.handle_mut().reset_calls();
    let t = table(vec![
        tcp("10.96.0.1", 443, &[("10.0.0.1", 6443), ("10.0.0.3", 6443)]),
        vs(
            Protocol::Udp,
            "10.96.0.10",
            53,
            &[("10.244.0.5", 53), ("10.244.1.5", 53)],
        ),
    ]);
    let r = sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        [
            "NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.3:6443 weight 1",
            "DEL_DEST TCP 10.96.0.1:443 -> 10.0.0.2:6443",
        ]
    );
    assert_eq!((r.dests_added, r.dests_deleted, r.dests_drained), (1, 1, 0));
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
}

#[test]
fn removed_endpoint_with_connections_drains_at_weight_zero() {
    let mut s = syncer();
    let now = Instant::now();
    sync(&mut s, &two_services(), now);
    let k = key(Protocol::Tcp, "10.96.0.1", 443);
    assert!(s.handle_mut().set_conns(&k, ip("10.0.0.2"), 6443, 2, 1));
    s.handle_mut().reset_calls();

    let t = table(vec![
        tcp("10.96.0.1", 443, &[("10.0.0.1", 6443)]),
        vs(
            Protocol::Udp,
            "10.96.0.10",
            53,
            &[("10.244.0.5", 53), ("10.244.1.5", 53)],
        ),
    ]);
    let r = sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        ["SET_DEST TCP 10.96.0.1:443 -> 10.0.0.2:6443 weight 0"]
    );
    assert_eq!((r.dests_drained, r.draining), (1, 1));
    assert!(s.is_draining(&k, ip("10.0.0.2"), 6443));

    // Still connected: the next syncs and drains leave it alone.
    let r = sync(&mut s, &t, now + Duration::from_secs(30));
    assert!(r.is_noop(), "{r:?}");
    let r = s.drain(now + Duration::from_secs(60)).unwrap();
    assert!(r.is_noop(), "{r:?}");
    assert_eq!(r.dump_requests, 1);
    assert_eq!(s.draining(), 1);

    // Its connections end: the periodic drain deletes it.
    assert!(s.handle_mut().set_conns(&k, ip("10.0.0.2"), 6443, 0, 0));
    let r = s.drain(now + Duration::from_secs(120)).unwrap();
    assert_eq!(
        sent(&mut s),
        ["DEL_DEST TCP 10.96.0.1:443 -> 10.0.0.2:6443"]
    );
    assert_eq!(
        (r.drained_deleted, r.drain_timed_out, r.draining),
        (1, 0, 0)
    );
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
    // Nothing left to drain: no dumps.
    let r = s.drain(now + Duration::from_secs(180)).unwrap();
    assert_eq!(r.dump_requests, 0);
}

/// Which table a draining row syncs: the service with both endpoints, or with 10.0.0.2 gone.
#[derive(Clone, Copy, Debug)]
enum Eps {
    /// 10.0.0.1:80 and 10.0.0.2:80.
    Both,
    /// 10.0.0.1:80 only: 10.0.0.2 is the leaving endpoint.
    One,
}

/// The draining rows' service, 10.96.0.1:80, with `eps`.
fn drain_table(eps: Eps) -> IpvsTable {
    match eps {
        Eps::Both => table(vec![tcp(
            "10.96.0.1",
            80,
            &[("10.0.0.1", 80), ("10.0.0.2", 80)],
        )]),
        Eps::One => table(vec![tcp("10.96.0.1", 80, &[("10.0.0.1", 80)])]),
    }
}

/// A report counter a row checks; named so a failure says which one.
#[derive(Clone, Copy, Debug)]
enum Count {
    DestsDeleted,
    DestsDrained,
    DestsRestored,
    DrainedDeleted,
    DrainTimedOut,
    Draining,
}

impl Count {
    fn of(self, r: &IpvsSyncReport) -> usize {
        match self {
            Count::DestsDeleted => r.dests_deleted,
            Count::DestsDrained => r.dests_drained,
            Count::DestsRestored => r.dests_restored,
            Count::DrainedDeleted => r.drained_deleted,
            Count::DrainTimedOut => r.drain_timed_out,
            Count::Draining => r.draining,
        }
    }
}

/// What a sync or drain must do: the calls it sends (`None`: not checked) and report counts.
#[derive(Clone, Copy, Debug)]
struct Expect {
    sent: Option<&'static [&'static str]>,
    counts: &'static [(Count, usize)],
    noop: bool,
}

/// A sync or drain that must change nothing.
const NOOP: Expect = Expect {
    sent: Some(&[]),
    counts: &[],
    noop: true,
};

/// A sync whose calls and counts are not the point.
const ANY: Expect = counts(&[]);

/// A sync or drain that sends exactly `sent` and reports `counts`.
const fn sends(sent: &'static [&'static str], counts: &'static [(Count, usize)]) -> Expect {
    Expect {
        sent: Some(sent),
        counts,
        noop: false,
    }
}

/// A sync or drain that reports `counts`, whatever it sends.
const fn counts(counts: &'static [(Count, usize)]) -> Expect {
    Expect {
        sent: None,
        counts,
        noop: false,
    }
}

/// One step of a draining row, after its setup left 10.0.0.2 leaving.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Syncs `eps` at `secs` after the start.
    Sync(Eps, u64, Expect),
    /// Runs the periodic drain at `secs` after the start.
    Drain(u64, Expect),
    /// The leaving endpoint's (active, inactive) connections change.
    Conns(u32, u32),
    /// Someone else (ipvsadm -d) deletes the leaving endpoint.
    DeletedBehindOurBack,
    /// The setup again: sync both, give 10.0.0.2 the row's connections, sync one.
    Setup,
    /// How many destinations the syncer tracks as draining.
    Draining(usize),
    /// Whether the leaving endpoint is tracked as draining.
    IsDraining(bool),
    /// The leaving endpoint's active connections in the kernel.
    ActiveConns(u32),
    /// The kernel holds exactly `eps`.
    KernelIs(Eps),
}

/// A draining scenario: 10.96.0.1:80 loses 10.0.0.2 while it has `conns`, then `steps`.
struct DrainRow {
    name: &'static str,
    grace: Option<u64>,
    conns: (u32, u32),
    steps: &'static [Step],
}

const DEL_LEAVING: &[&str] = &["DEL_DEST TCP 10.96.0.1:80 -> 10.0.0.2:80"];

/// The rows: a test per scenario became a row named as the test was.
const DRAIN_ROWS: &[DrainRow] = &[
    DrainRow {
        name: "a_sync_also_deletes_drained_destinations",
        grace: None,
        conns: (0, 4),
        steps: &[
            Step::Draining(1),
            Step::Conns(0, 0),
            Step::Sync(
                Eps::One,
                5,
                sends(
                    DEL_LEAVING,
                    &[
                        (Count::DrainedDeleted, 1),
                        (Count::DestsDeleted, 0),
                        (Count::Draining, 0),
                    ],
                ),
            ),
        ],
    },
    DrainRow {
        name: "draining_ends_at_the_grace_timeout",
        grace: Some(300),
        conns: (1, 0),
        steps: &[
            Step::Drain(299, NOOP),
            Step::Sync(Eps::One, 299, NOOP),
            Step::Draining(1),
            Step::Drain(
                300,
                sends(
                    DEL_LEAVING,
                    &[
                        (Count::DrainedDeleted, 1),
                        (Count::DrainTimedOut, 1),
                        (Count::Draining, 0),
                    ],
                ),
            ),
        ],
    },
    DrainRow {
        name: "the_grace_timeout_also_applies_at_sync",
        grace: None,
        conns: (1, 0),
        steps: &[Step::Sync(
            Eps::One,
            DEFAULT_GRACE_TIMEOUT.as_secs(),
            sends(
                DEL_LEAVING,
                &[(Count::DrainedDeleted, 1), (Count::DrainTimedOut, 1)],
            ),
        )],
    },
    DrainRow {
        name: "a_returning_endpoint_is_restored_not_recreated",
        grace: None,
        conns: (3, 0),
        steps: &[
            Step::IsDraining(true),
            Step::Sync(
                Eps::Both,
                10,
                sends(
                    &["SET_DEST TCP 10.96.0.1:80 -> 10.0.0.2:80 weight 1"],
                    &[(Count::DestsRestored, 1), (Count::Draining, 0)],
                ),
            ),
            Step::IsDraining(false),
            // Its connections survived (a delete and re-add would have reset them).
            Step::ActiveConns(3),
            Step::KernelIs(Eps::Both),
            // It is an ordinary destination again: its next removal drains it anew.
            Step::Sync(Eps::One, 20, counts(&[(Count::DestsDrained, 1)])),
        ],
    },
    DrainRow {
        name: "a_draining_destination_deleted_behind_our_back_is_forgotten",
        grace: None,
        conns: (1, 0),
        steps: &[
            Step::DeletedBehindOurBack,
            Step::Drain(0, NOOP),
            Step::Draining(0),
            // The same through a sync.
            Step::Sync(Eps::Both, 0, ANY),
            Step::Setup,
            Step::DeletedBehindOurBack,
            Step::Sync(Eps::One, 0, NOOP),
            Step::Draining(0),
        ],
    },
];

/// Checks a sync's or drain's outcome against `e`; `at` names the row and step on failure.
fn check(s: &mut IpvsSyncer<FakeIpvs>, r: &IpvsSyncReport, e: &Expect, at: &str) {
    let got = sent(s);
    if let Some(want) = e.sent {
        assert_eq!(got, want, "{at}: calls sent");
    }
    for (count, want) in e.counts {
        assert_eq!(count.of(r), *want, "{at}: {count:?} in {r:?}");
    }
    if e.noop {
        assert!(r.is_noop(), "{at}: not a no-op: {r:?}");
    }
}

/// Runs one draining row, naming it and the failing step in every assertion.
fn run_drain_row(row: &DrainRow) {
    let config = IpvsSyncConfig {
        grace_timeout: row.grace.map_or(DEFAULT_GRACE_TIMEOUT, Duration::from_secs),
        ..IpvsSyncConfig::default()
    };
    let mut s = IpvsSyncer::new(FakeIpvs::new(), config);
    let now = Instant::now();
    let k = key(Protocol::Tcp, "10.96.0.1", 80);
    let leaving = ip("10.0.0.2");
    let setup = |s: &mut IpvsSyncer<FakeIpvs>| {
        sync(s, &drain_table(Eps::Both), now);
        s.handle_mut()
            .set_conns(&k, leaving, 80, row.conns.0, row.conns.1);
        sync(s, &drain_table(Eps::One), now);
        s.handle_mut().reset_calls();
    };
    setup(&mut s);
    for (i, step) in row.steps.iter().enumerate() {
        let at = format!("{} step {i} {step:?}", row.name);
        let secs = Duration::from_secs;
        match *step {
            Step::Sync(eps, t, ref e) => {
                let r = sync(&mut s, &drain_table(eps), now + secs(t));
                check(&mut s, &r, e, &at);
            }
            Step::Drain(t, ref e) => {
                let r = s.drain(now + secs(t)).unwrap();
                check(&mut s, &r, e, &at);
            }
            Step::Conns(active, inactive) => {
                assert!(
                    s.handle_mut().set_conns(&k, leaving, 80, active, inactive),
                    "{at}"
                );
            }
            Step::DeletedBehindOurBack => {
                let svc = s.handle().service(&k).unwrap();
                s.handle_mut()
                    .del_dest(&svc, &IpvsDest::masq(leaving, 80, 0))
                    .unwrap();
                s.handle_mut().reset_calls();
            }
            Step::Setup => setup(&mut s),
            Step::Draining(n) => assert_eq!(s.draining(), n, "{at}"),
            Step::IsDraining(b) => assert_eq!(s.is_draining(&k, leaving, 80), b, "{at}"),
            Step::ActiveConns(n) => {
                let d = s.handle().dests(&k).unwrap();
                assert_eq!(d[1].active_conns, n, "{at}");
            }
            Step::KernelIs(eps) => assert_eq!(
                s.handle().to_ipvsadm(),
                drain_table(eps).to_ipvsadm_text(),
                "{at}"
            ),
        }
    }
}

#[test]
fn draining_rows() {
    for row in DRAIN_ROWS {
        run_drain_row(row);
    }
}

#[test]
fn the_default_grace_timeout_is_fifteen_minutes() {
    assert_eq!(
        IpvsSyncConfig::default().grace_timeout,
        DEFAULT_GRACE_TIMEOUT
    );
    assert_eq!(DEFAULT_GRACE_TIMEOUT, Duration::from_secs(900));
}

#[test]
fn udp_and_sctp_destinations_are_deleted_at_once() {
    let mut s = syncer();
    let now = Instant::now();
    let t1 = table(vec![
        vs(
            Protocol::Udp,
            "10.96.0.10",
            53,
            &[("10.0.0.1", 53), ("10.0.0.2", 53)],
        ),
        vs(
            Protocol::Sctp,
            "10.96.0.11",
            9,
            &[("10.0.0.1", 9), ("10.0.0.2", 9)],
        ),
    ]);
    let t2 = table(vec![
        vs(Protocol::Udp, "10.96.0.10", 53, &[("10.0.0.1", 53)]),
        vs(Protocol::Sctp, "10.96.0.11", 9, &[("10.0.0.1", 9)]),
    ]);
    sync(&mut s, &t1, now);
    s.handle_mut().set_conns(
        &key(Protocol::Udp, "10.96.0.10", 53),
        ip("10.0.0.2"),
        53,
        5,
        5,
    );
    s.handle_mut().set_conns(
        &key(Protocol::Sctp, "10.96.0.11", 9),
        ip("10.0.0.2"),
        9,
        5,
        5,
    );
    s.handle_mut().reset_calls();
    let r = sync(&mut s, &t2, now);
    assert_eq!(
        sent(&mut s),
        [
            "DEL_DEST UDP 10.96.0.10:53 -> 10.0.0.2:53",
            "DEL_DEST SCTP 10.96.0.11:9 -> 10.0.0.2:9",
        ]
    );
    assert_eq!((r.dests_deleted, r.dests_drained, r.draining), (2, 0, 0));
}

#[test]
fn scheduler_and_persistence_changes_set_the_service() {
    let mut s = syncer();
    let now = Instant::now();
    let base = tcp("10.96.0.1", 443, &[("10.0.0.1", 6443)]);
    sync(&mut s, &table(vec![base.clone()]), now);
    s.handle_mut().reset_calls();

    let lc = with(base.clone(), |v| v.scheduler = "lc".to_string());
    let r = sync(&mut s, &table(vec![lc.clone()]), now);
    assert_eq!(sent(&mut s), ["SET_SERVICE TCP 10.96.0.1:443 lc"]);
    assert_eq!((r.services_changed, r.messages_sent), (1, 1));

    let sticky = with(lc, |v| v.persistence = Some(10800));
    let t = table(vec![sticky]);
    sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        ["SET_SERVICE TCP 10.96.0.1:443 lc flags 0x1 timeout 10800"]
    );
    let k = key(Protocol::Tcp, "10.96.0.1", 443);
    let got = s.handle().service(&k).unwrap();
    assert_eq!(got.user_flags(), IP_VS_SVC_F_PERSISTENT);
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
    // The kernel's HASHED flag does not count as a difference.
    assert!(sync(&mut s, &t, now).is_noop());
}

#[test]
fn scheduler_flags_are_sent_and_compared() {
    let mut s = syncer();
    let now = Instant::now();
    let mh = with(tcp("10.96.0.1", 443, &[("10.0.0.1", 6443)]), |v| {
        v.scheduler = "mh".to_string();
        v.flags = IP_VS_SVC_F_SCHED_SH_PORT;
    });
    let t = table(vec![mh.clone()]);
    sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s)[0],
        "NEW_SERVICE TCP 10.96.0.1:443 mh flags 0x10"
    );
    assert!(sync(&mut s, &t, now).is_noop());
    // Persistence adds its own flag to the scheduler's.
    let sticky = table(vec![with(mh, |v| v.persistence = Some(60))]);
    sync(&mut s, &sticky, now);
    assert_eq!(
        sent(&mut s),
        ["SET_SERVICE TCP 10.96.0.1:443 mh flags 0x11 timeout 60"]
    );
    assert!(sync(&mut s, &sticky, now).is_noop());
}

#[test]
fn removed_services_are_deleted_outright() {
    let mut s = syncer();
    let now = Instant::now();
    sync(&mut s, &two_services(), now);
    // One of its destinations is draining when the whole service goes.
    let k = key(Protocol::Tcp, "10.96.0.1", 443);
    s.handle_mut().set_conns(&k, ip("10.0.0.2"), 6443, 1, 0);
    let one_ep = table(vec![
        tcp("10.96.0.1", 443, &[("10.0.0.1", 6443)]),
        vs(
            Protocol::Udp,
            "10.96.0.10",
            53,
            &[("10.244.0.5", 53), ("10.244.1.5", 53)],
        ),
    ]);
    sync(&mut s, &one_ep, now);
    assert_eq!(s.draining(), 1);
    s.handle_mut().reset_calls();

    let t = table(vec![vs(
        Protocol::Udp,
        "10.96.0.10",
        53,
        &[("10.244.0.5", 53), ("10.244.1.5", 53)],
    )]);
    let r = sync(&mut s, &t, now);
    assert_eq!(sent(&mut s), ["DEL_SERVICE TCP 10.96.0.1:443"]);
    assert_eq!((r.services_deleted, r.draining), (1, 0));
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
    // Nothing is left to drain, so the periodic drain has nothing to dump.
    assert_eq!(s.drain(now).unwrap().dump_requests, 0);
}

/// Services a v4 syncer must not delete: IPv6 ones, excluded ones, fwmark ones, and ones of
/// protocols kube-proxy never uses.
fn foreign_services(f: &mut FakeIpvs) -> Vec<IpvsService> {
    let v6 = IpvsService::new(Protocol::Tcp, ip("fd00::1"), 80, "rr", 0, 0);
    let excluded = IpvsService::new(Protocol::Tcp, ip("192.168.7.1"), 80, "wlc", 0, 0);
    let mut fwmark = IpvsService::new(Protocol::Tcp, ip("0.0.0.0"), 0, "rr", 0, 0);
    fwmark.fwmark = 9;
    let mut gre = IpvsService::new(Protocol::Tcp, ip("10.96.0.99"), 0, "rr", 0, 0);
    gre.protocol = 47;
    let all = vec![v6, excluded, fwmark, gre];
    for svc in &all {
        f.insert_service(svc.clone());
        f.insert_dest(svc, IpvsDest::masq(ip("10.1.1.1"), 80, 3));
    }
    all
}

#[test]
fn other_family_excluded_and_foreign_services_are_left_alone() {
    let mut fake = FakeIpvs::new();
    foreign_services(&mut fake);
    let stale = IpvsService::new(Protocol::Tcp, ip("10.96.0.50"), 80, "rr", 0, 0);
    fake.insert_service(stale);
    let before = fake.to_ipvsadm();
    let mut s = IpvsSyncer::new(
        fake,
        IpvsSyncConfig {
            exclude_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
            ..IpvsSyncConfig::default()
        },
    );
    let r = sync(&mut s, &IpvsTable::default(), Instant::now());
    assert_eq!(sent(&mut s), ["DEL_SERVICE TCP 10.96.0.50:80"]);
    assert_eq!(r.services_deleted, 1);
    let after = s.handle().to_ipvsadm();
    assert_eq!(after, before.replace("-A -t 10.96.0.50:80 -s rr\n", ""));
    assert_eq!(s.handle().service_count(), 4);
}

#[test]
fn an_ipv6_syncer_deletes_only_ipv6_services() {
    let mut fake = FakeIpvs::new();
    for a in ["10.96.0.1", "fd00::1"] {
        fake.insert_service(IpvsService::new(Protocol::Tcp, ip(a), 80, "rr", 0, 0));
    }
    let mut s = IpvsSyncer::new(
        fake,
        IpvsSyncConfig {
            family: IpFamily::V6,
            ..IpvsSyncConfig::default()
        },
    );
    let t = table(vec![tcp("fd00::2", 443, &[("fd00:244::5", 8443)])]);
    sync(&mut s, &t, Instant::now());
    assert_eq!(
        sent(&mut s),
        [
            "NEW_SERVICE TCP [fd00::2]:443 rr",
            "NEW_DEST TCP [fd00::2]:443 -> [fd00:244::5]:8443 weight 1",
            "DEL_SERVICE TCP [fd00::1]:80",
        ]
    );
    assert!(
        s.handle()
            .service(&key(Protocol::Tcp, "10.96.0.1", 80))
            .is_some()
    );
    assert_eq!(
        s.handle()
            .service(&key(Protocol::Tcp, "fd00::2", 443))
            .unwrap()
            .netmask,
        128
    );
}

#[test]
fn a_restarted_syncer_adopts_the_kernels_draining_state() {
    // A previous run left one endpoint at weight 0 with connections (it was draining) and one
    // desired endpoint at weight 0 (it came back while the agent was down).
    let mut fake = FakeIpvs::new();
    let svc = IpvsService::new(Protocol::Tcp, ip("10.96.0.1"), 80, "rr", 0, 0);
    fake.insert_service(svc.clone());
    fake.insert_dest(&svc, IpvsDest::masq(ip("10.0.0.1"), 80, 0));
    let mut leaving = IpvsDest::masq(ip("10.0.0.2"), 80, 0);
    leaving.active_conns = 2;
    fake.insert_dest(&svc, leaving);
    let mut s = IpvsSyncer::new(fake, IpvsSyncConfig::default());
    let now = Instant::now();
    let t = table(vec![tcp("10.96.0.1", 80, &[("10.0.0.1", 80)])]);
    let r = sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        ["SET_DEST TCP 10.96.0.1:80 -> 10.0.0.1:80 weight 1"]
    );
    assert_eq!((r.dests_changed, r.dests_drained, r.draining), (1, 1, 1));
    assert!(s.is_draining(&key(Protocol::Tcp, "10.96.0.1", 80), ip("10.0.0.2"), 80));
}

#[test]
fn a_refused_request_is_skipped_and_retried_next_time() {
    let mut s = syncer();
    let now = Instant::now();
    let t = two_services();
    s.handle_mut()
        .fail_next(IpvsOp::NewDest, FakeFailure::Errno(libc::ENOMEM));
    let err = s.sync(&t, now).unwrap_err();
    let IpvsError::Incomplete {
        failed,
        first,
        report,
    } = err
    else {
        panic!("not incomplete: {err}")
    };
    assert_eq!(failed, 1);
    assert_eq!(first.rejection(), Some(Rejection::Other(libc::ENOMEM)));
    assert_eq!(
        first.to_string(),
        format!(
            "NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.1:6443: {} (errno {})",
            std::io::Error::from_raw_os_error(libc::ENOMEM),
            libc::ENOMEM
        )
    );
    // Everything else went through.
    assert_eq!((report.services_added, report.dests_added), (2, 3));
    assert_eq!(report.messages_sent, 6);
    s.handle_mut().reset_calls();

    let r = sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        ["NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.1:6443 weight 1"]
    );
    assert_eq!(r.dests_added, 1);
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
}

#[test]
fn a_refused_service_skips_its_destinations() {
    let mut s = syncer();
    let now = Instant::now();
    let t = table(vec![
        with(tcp("10.96.0.1", 80, &[("10.0.0.1", 80)]), |v| {
            v.scheduler = "bogus".to_string()
        }),
        tcp("10.96.0.2", 80, &[("10.0.0.1", 80)]),
    ]);
    let err = s.sync(&t, now).unwrap_err();
    let IpvsError::Incomplete { failed, first, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*failed, 1);
    assert_eq!(first.rejection(), Some(Rejection::NotFound));
    assert_eq!(
        sent(&mut s),
        [
            "NEW_SERVICE TCP 10.96.0.1:80 bogus",
            "NEW_SERVICE TCP 10.96.0.2:80 rr",
            "NEW_DEST TCP 10.96.0.2:80 -> 10.0.0.1:80 weight 1",
        ]
    );
}

#[test]
fn a_socket_failure_ends_the_sync_and_the_next_one_finishes_it() {
    let mut s = syncer();
    let now = Instant::now();
    let t = two_services();
    s.handle_mut()
        .fail_next(IpvsOp::NewDest, FakeFailure::Socket);
    let err = s.sync(&t, now).unwrap_err();
    assert!(matches!(err, IpvsError::Socket(_)), "{err}");
    // It stopped at the failure.
    assert_eq!(
        sent(&mut s),
        [
            "NEW_SERVICE TCP 10.96.0.1:443 rr",
            "NEW_DEST TCP 10.96.0.1:443 -> 10.0.0.1:6443 weight 1",
        ]
    );
    let r = sync(&mut s, &t, now);
    assert_eq!((r.services_added, r.dests_added), (1, 4));
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
    assert!(sync(&mut s, &t, now).is_noop());
}

#[test]
fn a_failed_dump_sends_nothing() {
    let mut s = syncer();
    let now = Instant::now();
    let t = two_services();
    sync(&mut s, &t, now);
    // Drop one endpoint, so a sync would have something to send.
    let t2 = table(vec![tcp("10.96.0.1", 443, &[("10.0.0.1", 6443)])]);
    s.handle_mut().reset_calls();
    s.handle_mut()
        .fail_next(IpvsOp::GetDests, FakeFailure::Socket);
    let err = s.sync(&t2, now).unwrap_err();
    assert!(matches!(err, IpvsError::Socket(_)), "{err}");
    assert_eq!(s.handle().calls().modifying(), 0);
    assert_eq!(s.handle().calls().get_dests, 1);

    s.handle_mut()
        .fail_next(IpvsOp::GetServices, FakeFailure::Errno(libc::EPERM));
    let err = s.sync(&t2, now).unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::PermissionDenied));
    assert_eq!(s.handle().calls().modifying(), 0);

    // The next sync does all of it.
    let r = sync(&mut s, &t2, now);
    assert_eq!((r.services_deleted, r.dests_deleted), (1, 1));
    assert_eq!(s.handle().to_ipvsadm(), t2.to_ipvsadm_text());
}

#[test]
fn a_foreign_forwarding_method_or_weight_is_corrected() {
    let mut s = syncer();
    let now = Instant::now();
    let t = table(vec![tcp(
        "10.96.0.1",
        80,
        &[("10.0.0.1", 80), ("10.0.0.2", 80)],
    )]);
    sync(&mut s, &t, now);
    let k = key(Protocol::Tcp, "10.96.0.1", 80);
    let svc = s.handle().service(&k).unwrap();
    let mut dr = IpvsDest::masq(ip("10.0.0.1"), 80, 1);
    dr.fwd_method = IP_VS_CONN_F_DROUTE;
    s.handle_mut().set_dest(&svc, &dr).unwrap();
    s.handle_mut()
        .set_dest(&svc, &IpvsDest::masq(ip("10.0.0.2"), 80, 7))
        .unwrap();
    s.handle_mut().reset_calls();
    let r = sync(&mut s, &t, now);
    assert_eq!(
        sent(&mut s),
        [
            "SET_DEST TCP 10.96.0.1:80 -> 10.0.0.1:80 weight 1",
            "SET_DEST TCP 10.96.0.1:80 -> 10.0.0.2:80 weight 1",
        ]
    );
    assert_eq!(r.dests_changed, 2);
    assert_eq!(s.handle().to_ipvsadm(), t.to_ipvsadm_text());
}

#[test]
fn a_duplicate_virtual_server_is_created_once() {
    let mut s = syncer();
    let a = tcp("10.96.0.1", 80, &[("10.0.0.1", 80)]);
    let t = IpvsTable {
        virtual_servers: vec![a.clone(), a],
    };
    let r = sync(&mut s, &t, Instant::now());
    assert_eq!((r.services_added, r.dests_added), (1, 1));
    assert!(sync(&mut s, &t, Instant::now()).is_noop());
}

/// 10,000 services of 10 endpoints: the pure diff of an unchanged table, and of one with one
/// endpoint changed, stays far from quadratic (10^10 steps would take minutes).
#[test]
fn ten_thousand_services_diff_in_milliseconds() {
    let mut vss = Vec::new();
    for i in 0..10_000u32 {
        let addr = format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 255, i & 255);
        let eps: Vec<(String, u16)> = (0..10u32)
            .map(|j| {
                let n = i * 10 + j;
                (
                    format!("10.{}.{}.{}", 128 + (n >> 16), (n >> 8) & 255, n & 255),
                    8080,
                )
            })
            .collect();
        let eps: Vec<(&str, u16)> = eps.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        vss.push(tcp(&addr, 80, &eps));
    }
    let desired = table(vss);
    let mut kernel: KernelView = HashMap::new();
    for v in &desired.virtual_servers {
        let svc = IpvsService::new(v.protocol, v.addr, v.port, "rr", 0, 0);
        let dests = v
            .real_servers
            .iter()
            .map(|rs| IpvsDest::masq(rs.addr, rs.port, 1))
            .collect();
        kernel.insert(
            svc.key().unwrap(),
            KernelService {
                svc,
                dests: Some(dests),
            },
        );
    }
    let drain = DrainList::default();
    let now = Instant::now();
    let start = Instant::now();
    let p = plan(
        &desired,
        &kernel,
        &drain,
        |_| true,
        now,
        DEFAULT_GRACE_TIMEOUT,
    );
    let unchanged = start.elapsed();
    assert!(p.deletes.is_empty());
    assert!(p.services.iter().all(|s| s.dests.is_empty()));

    let mut changed = desired.clone();
    changed.virtual_servers[5000].real_servers[3].port = 9090;
    let start = Instant::now();
    let p = plan(
        &changed,
        &kernel,
        &drain,
        |_| true,
        now,
        DEFAULT_GRACE_TIMEOUT,
    );
    let one_change = start.elapsed();
    let steps: usize = p.services.iter().map(|s| s.dests.len()).sum();
    assert_eq!(steps, 2, "one NEW_DEST and one DEL_DEST");
    eprintln!("diff of 10,000 x 10: unchanged {unchanged:?}, one change {one_change:?}");
    // Generous for an unoptimised build on a loaded machine; a quadratic diff is minutes.
    assert!(unchanged < Duration::from_secs(2), "{unchanged:?}");
    assert!(one_change < Duration::from_secs(2), "{one_change:?}");

    // And through the syncer and the fake, end to end.
    let mut s = syncer();
    let r = sync(&mut s, &desired, now);
    assert_eq!((r.services_added, r.dests_added), (10_000, 100_000));
    s.handle_mut().reset_calls();
    let r = sync(&mut s, &desired, now);
    assert!(r.is_noop());
    assert_eq!(r.dump_requests, 10_001);
    let r = sync(&mut s, &changed, now);
    assert_eq!(r.messages_sent, 2);
}
