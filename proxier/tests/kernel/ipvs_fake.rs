//! The IPVS syncer through the public API, against the fake peer: a seeded random walk of
//! desired tables, connection counts and clock, checking after every sync that the kernel holds
//! exactly the desired table plus destinations that are legitimately draining, and that an
//! immediate resync sends nothing. No root or kernel IPVS needed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proxier::ipvs::{FakeIpvs, IpvsHandle, IpvsSyncConfig, IpvsSyncer, ServiceKey};
use rulegen::model::Protocol;
use rulegen::render::ipvs::{IpvsTable, RealServer, VirtualServer};

/// A small deterministic generator (64-bit LCG), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const SERVICES: u8 = 16;
const ENDPOINTS: u8 = 6;

fn service_key(i: u8) -> ServiceKey {
    ServiceKey {
        protocol: match i % 3 {
            0 | 1 => Protocol::Tcp,
            _ => Protocol::Udp,
        },
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, i)),
        port: 80,
    }
}

fn endpoint(j: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 0, j + 1))
}

/// The desired state: which services exist, their endpoints, their scheduler.
#[derive(Clone)]
struct World {
    present: Vec<bool>,
    endpoints: Vec<Vec<bool>>,
    lc: Vec<bool>,
}

impl World {
    fn table(&self) -> IpvsTable {
        let mut vss = Vec::new();
        for i in 0..SERVICES {
            if !self.present[i as usize] {
                continue;
            }
            let k = service_key(i);
            let real_servers = (0..ENDPOINTS)
                .filter(|j| self.endpoints[i as usize][*j as usize])
                .map(|j| RealServer {
                    addr: endpoint(j),
                    port: 8080,
                    weight: 1,
                })
                .collect();
            vss.push(VirtualServer {
                protocol: k.protocol,
                addr: k.addr,
                port: k.port,
                scheduler: if self.lc[i as usize] { "lc" } else { "rr" }.to_string(),
                persistence: None,
                flags: 0,
                real_servers,
                service: format!("default/s{i}:http"),
            });
        }
        IpvsTable {
            virtual_servers: vss,
        }
    }
}

/// The kernel holds the desired table, plus only destinations that are draining: TCP, weight
/// 0, with connections, and on the syncer's list.
fn check(s: &IpvsSyncer<FakeIpvs>, t: &IpvsTable) {
    let fake = s.handle();
    assert_eq!(fake.service_count(), t.virtual_servers.len());
    let mut lingering = 0;
    for v in &t.virtual_servers {
        let k = ServiceKey {
            protocol: v.protocol,
            addr: v.addr,
            port: v.port,
        };
        let svc = fake.service(&k).expect("desired service present");
        assert_eq!(svc.scheduler, v.scheduler);
        let dests = fake.dests(&k).unwrap();
        for rs in &v.real_servers {
            let d = dests
                .iter()
                .find(|d| d.addr == rs.addr && d.port == rs.port)
                .unwrap_or_else(|| panic!("{k}: {} missing", rs.addr));
            assert_eq!(d.weight, rs.weight, "{k}: {d}");
            assert!(
                !s.is_draining(&k, d.addr, d.port),
                "{k}: {d} desired yet draining"
            );
        }
        for d in &dests {
            if v.real_servers
                .iter()
                .any(|rs| rs.addr == d.addr && rs.port == d.port)
            {
                continue;
            }
            assert_eq!(k.protocol, Protocol::Tcp, "{k}: {d} lingers");
            assert_eq!(d.weight, 0, "{k}: {d} lingers with weight");
            assert!(d.connections() > 0, "{k}: {d} lingers without connections");
            assert!(
                s.is_draining(&k, d.addr, d.port),
                "{k}: {d} not on the list"
            );
            lingering += 1;
        }
    }
    assert_eq!(
        s.draining(),
        lingering,
        "the list holds exactly the lingering destinations"
    );
}

#[test]
fn random_walk_keeps_the_kernel_equal_to_the_desired_table() {
    let grace = Duration::from_secs(600);
    let mut s = IpvsSyncer::new(
        FakeIpvs::new(),
        IpvsSyncConfig {
            grace_timeout: grace,
            ..IpvsSyncConfig::default()
        },
    );
    let mut rng = Rng(0x6b70_7273);
    let mut world = World {
        present: vec![true; SERVICES as usize],
        endpoints: vec![vec![true; ENDPOINTS as usize]; SERVICES as usize],
        lc: vec![false; SERVICES as usize],
    };
    let start = Instant::now();
    let mut now = start;
    let mut drained_total = 0;
    for round in 0..300 {
        for i in 0..SERVICES as usize {
            if rng.chance(5) {
                world.present[i] = !world.present[i];
            }
            if rng.chance(3) {
                world.lc[i] = !world.lc[i];
            }
            for j in 0..ENDPOINTS as usize {
                if rng.chance(10) {
                    world.endpoints[i][j] = !world.endpoints[i][j];
                }
            }
        }
        // Traffic comes and goes on whatever the kernel has.
        for i in 0..SERVICES {
            let k = service_key(i);
            for j in 0..ENDPOINTS {
                if rng.chance(20) {
                    let conns = if rng.chance(50) {
                        0
                    } else {
                        rng.below(5) as u32
                    };
                    s.handle_mut().set_conns(&k, endpoint(j), 8080, conns, 0);
                }
            }
        }
        now += Duration::from_secs(rng.below(240));
        let t = world.table();
        let r = s
            .sync(&t, now)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drained_total += r.drained_deleted;
        check(&s, &t);
        assert_eq!(r.draining, s.draining());

        s.handle_mut().reset_calls();
        let again = s.sync(&t, now).unwrap();
        assert!(again.is_noop(), "round {round}: resync sent {again:?}");
        assert_eq!(s.handle().calls().modifying(), 0);

        if rng.chance(30) {
            now += Duration::from_secs(60);
            let r = s.drain(now).unwrap();
            drained_total += r.drained_deleted;
            check(&s, &t);
        }
    }
    assert!(drained_total > 0, "the walk never finished a drain");

    // Every connection ends: one drain empties the list and the kernel is exactly the table.
    let t = world.table();
    for i in 0..SERVICES {
        for j in 0..ENDPOINTS {
            s.handle_mut()
                .set_conns(&service_key(i), endpoint(j), 8080, 0, 0);
        }
    }
    s.drain(now).unwrap();
    assert_eq!(s.draining(), 0);
    assert_eq!(s.handle().to_ipvsadm(), sorted(&t).to_ipvsadm_text());
}

/// The table in rulegen's order (address, port, protocol), as `to_ipvsadm` writes the fake.
fn sorted(t: &IpvsTable) -> IpvsTable {
    let mut t = t.clone();
    t.virtual_servers.sort_by_key(|v| {
        (
            v.addr,
            v.port,
            match v.protocol {
                Protocol::Tcp => 0,
                Protocol::Udp => 1,
                Protocol::Sctp => 2,
            },
        )
    });
    t
}

#[test]
fn the_handle_trait_works_through_a_mutable_reference() {
    // The agent may keep the socket and lend it to a syncer.
    let mut fake = FakeIpvs::new();
    {
        let mut s = IpvsSyncer::new(&mut fake, IpvsSyncConfig::default());
        let t = IpvsTable {
            virtual_servers: vec![VirtualServer {
                protocol: Protocol::Tcp,
                addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
                port: 443,
                scheduler: "rr".to_string(),
                persistence: Some(10800),
                flags: 0,
                real_servers: vec![RealServer {
                    addr: endpoint(0),
                    port: 6443,
                    weight: 1,
                }],
                service: "default/kubernetes:https".to_string(),
            }],
        };
        s.sync(&t, Instant::now()).unwrap();
    }
    assert_eq!(
        fake.to_ipvsadm(),
        "-A -t 10.96.0.1:443 -s rr -p 10800\n-a -t 10.96.0.1:443 -r 10.244.0.1:6443 -m -w 1\n"
    );
    assert_eq!(fake.services().unwrap().len(), 1);
}
