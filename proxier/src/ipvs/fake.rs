//! An in-memory IPVS table that answers as the kernel does, for tests.
//!
//! The answers follow `ip_vs_genl_set_cmd` and the functions it calls in
//! `net/netfilter/ipvs/ip_vs_ctl.c`:
//!
//! - every command but NEW_SERVICE on a service that does not exist: `ESRCH`;
//! - NEW_SERVICE of an existing service, NEW_DEST of an existing destination: `EEXIST`;
//! - SET_DEST or DEL_DEST of a missing destination: `ENOENT`;
//! - an unknown scheduler: `ENOENT`; a scheduler name over 15 bytes, or an IPv6 netmask outside
//!   1–128: `EINVAL`; a negative weight (over `i32::MAX` as u32) or a lower threshold above the
//!   upper one: `ERANGE`; a masquerading destination of another family than its service
//!   (mixed families need tunnelling): `EINVAL`;
//! - a GET_DEST dump of a missing service is empty, not an error;
//! - dumps report [`IP_VS_SVC_F_HASHED`] in every service's flags, and counters.
//!
//! Dumps come in a stable order (by family, fwmark, protocol, address, port; destinations by
//! address and port), unlike the kernel's hash order. Every call is counted, every modifying one
//! logged, connection counts can be set per destination, and failures injected.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;

use rulegen::model::Protocol;

use super::attrs::{IP_VS_SCHEDNAME_MAXLEN, IP_VS_SVC_F_HASHED, IP_VS_SVC_F_PERSISTENT, IpvsStats};
use super::entry::{AddrPort, IpvsDest, IpvsService, ServiceKey, family_of, protocol_of};
use super::error::{IpvsError, IpvsOp};
use super::handle::{IpvsHandle, dest_target};

/// The schedulers a stock kernel has (`net/netfilter/ipvs/ip_vs_*.c`), and "none".
pub const KERNEL_SCHEDULERS: [&str; 15] = [
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
    "none",
];

/// What an injected failure makes a call return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFailure {
    /// The kernel refuses the request with this errno (an [`IpvsError::Rejected`]).
    Errno(i32),
    /// The socket fails (an [`IpvsError::Socket`]), as when the connection breaks.
    Socket,
}

/// How many calls of each operation the fake received (failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `GET_SERVICE` dumps.
    pub get_services: usize,
    /// `GET_DEST` dumps.
    pub get_dests: usize,
    /// `NEW_SERVICE`.
    pub new_service: usize,
    /// `SET_SERVICE`.
    pub set_service: usize,
    /// `DEL_SERVICE`.
    pub del_service: usize,
    /// `NEW_DEST`.
    pub new_dest: usize,
    /// `SET_DEST`.
    pub set_dest: usize,
    /// `DEL_DEST`.
    pub del_dest: usize,
}

impl CallCounts {
    /// The modifying calls (everything but the dumps).
    pub fn modifying(&self) -> usize {
        self.new_service
            + self.set_service
            + self.del_service
            + self.new_dest
            + self.set_dest
            + self.del_dest
    }

    /// The dumps.
    pub fn dumps(&self) -> usize {
        self.get_services + self.get_dests
    }

    fn bump(&mut self, op: IpvsOp) {
        match op {
            IpvsOp::ResolveFamily => {}
            IpvsOp::GetServices => self.get_services += 1,
            IpvsOp::GetDests => self.get_dests += 1,
            IpvsOp::NewService => self.new_service += 1,
            IpvsOp::SetService => self.set_service += 1,
            IpvsOp::DelService => self.del_service += 1,
            IpvsOp::NewDest => self.new_dest += 1,
            IpvsOp::SetDest => self.set_dest += 1,
            IpvsOp::DelDest => self.del_dest += 1,
        }
    }
}

/// How the kernel finds a service: by family and fwmark, or family, protocol, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SvcId {
    af: u16,
    fwmark: u32,
    protocol: u16,
    addr: IpAddr,
    port: u16,
}

fn id_of(svc: &IpvsService) -> SvcId {
    if svc.fwmark != 0 {
        SvcId {
            af: family_of(&svc.addr),
            fwmark: svc.fwmark,
            protocol: 0,
            addr: svc.addr,
            port: 0,
        }
    } else {
        SvcId {
            af: family_of(&svc.addr),
            fwmark: 0,
            protocol: svc.protocol,
            addr: svc.addr,
            port: svc.port,
        }
    }
}

fn id_of_key(key: &ServiceKey) -> SvcId {
    id_of(&IpvsService::new(
        key.protocol,
        key.addr,
        key.port,
        "",
        0,
        0,
    ))
}

#[derive(Debug, Clone)]
struct FakeService {
    /// As last set; flags without `HASHED`.
    svc: IpvsService,
    dests: BTreeMap<(IpAddr, u16), IpvsDest>,
}

/// The in-memory IPVS peer.
#[derive(Debug, Default)]
pub struct FakeIpvs {
    services: BTreeMap<SvcId, FakeService>,
    calls: CallCounts,
    log: Vec<String>,
    failures: VecDeque<(IpvsOp, FakeFailure)>,
}

impl FakeIpvs {
    /// An empty table.
    pub fn new() -> FakeIpvs {
        FakeIpvs::default()
    }

    /// The calls received so far.
    pub fn calls(&self) -> CallCounts {
        self.calls
    }

    /// The modifying calls received so far, in order, one line each
    /// (`SET_DEST TCP 10.96.0.10:53 -> 10.244.0.5:53 weight 0`).
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// Forgets the counters and the log (the table stays).
    pub fn reset_calls(&mut self) {
        self.calls = CallCounts::default();
        self.log.clear();
    }

    /// Makes the next call of `op` fail with `failure` (queued: several injections of the same
    /// operation fail its next calls in turn). The failed call changes nothing.
    pub fn fail_next(&mut self, op: IpvsOp, failure: FakeFailure) {
        self.failures.push_back((op, failure));
    }

    /// Adds a service directly (not counted): one another program created, or a previous run
    /// left. Flags are stored without `HASHED`, as the kernel does.
    pub fn insert_service(&mut self, svc: IpvsService) {
        let mut svc = svc;
        svc.flags &= !IP_VS_SVC_F_HASHED;
        svc.stats = None;
        self.services.insert(
            id_of(&svc),
            FakeService {
                svc,
                dests: BTreeMap::new(),
            },
        );
    }

    /// Adds a destination directly (not counted), with whatever connection counts it carries;
    /// false if the service does not exist.
    pub fn insert_dest(&mut self, svc: &IpvsService, dest: IpvsDest) -> bool {
        match self.services.get_mut(&id_of(svc)) {
            Some(s) => {
                s.dests.insert((dest.addr, dest.port), dest);
                true
            }
            None => false,
        }
    }

    /// Sets a destination's active and inactive connection counts; false if it does not exist.
    pub fn set_conns(
        &mut self,
        key: &ServiceKey,
        addr: IpAddr,
        port: u16,
        active: u32,
        inactive: u32,
    ) -> bool {
        match self
            .services
            .get_mut(&id_of_key(key))
            .and_then(|s| s.dests.get_mut(&(addr, port)))
        {
            Some(d) => {
                d.active_conns = active;
                d.inactive_conns = inactive;
                true
            }
            None => false,
        }
    }

    /// The service with `key`, as a dump would show it.
    pub fn service(&self, key: &ServiceKey) -> Option<IpvsService> {
        self.services.get(&id_of_key(key)).map(dumped_service)
    }

    /// The destinations of the service with `key`, as a dump would show them.
    pub fn dests(&self, key: &ServiceKey) -> Option<Vec<IpvsDest>> {
        self.services
            .get(&id_of_key(key))
            .map(|s| s.dests.values().map(dumped_dest).collect())
    }

    /// The number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The number of destinations over all services.
    pub fn dest_count(&self) -> usize {
        self.services.values().map(|s| s.dests.len()).sum()
    }

    /// The table as `rulegen::render::ipvs::IpvsTable::to_ipvsadm_text` writes one (`-A`/`-a` lines,
    /// services by address, port and protocol, destinations by address and port), so a test
    /// can compare the fake with a desired table. Fwmark services come last as `-A -f MARK`.
    pub fn to_ipvsadm(&self) -> String {
        let mut order: Vec<&FakeService> = self.services.values().collect();
        order.sort_by_key(|s| {
            (
                s.svc.fwmark != 0,
                s.svc.fwmark,
                s.svc.addr,
                s.svc.port,
                proto_order(s.svc.protocol),
            )
        });
        let mut out = String::new();
        for s in order {
            let svc = &s.svc;
            let (proto, service) = if svc.fwmark != 0 {
                ("-f".to_string(), svc.fwmark.to_string())
            } else {
                (
                    proto_flag(svc.protocol),
                    AddrPort(svc.addr, svc.port).to_string(),
                )
            };
            write!(out, "-A {proto} {service} -s {}", svc.scheduler).unwrap();
            if svc.flags & IP_VS_SVC_F_PERSISTENT != 0 {
                write!(out, " -p {}", svc.timeout).unwrap();
            }
            out.push('\n');
            for d in s.dests.values() {
                writeln!(
                    out,
                    "-a {proto} {service} -r {} {} -w {}",
                    AddrPort(d.addr, d.port),
                    d.fwd_flag(),
                    d.weight
                )
                .unwrap();
            }
        }
        out
    }

    /// Counts the call and takes an injected failure for it, if one is queued.
    fn enter(&mut self, op: IpvsOp, target: impl Fn() -> String) -> Result<(), IpvsError> {
        self.calls.bump(op);
        let Some(i) = self.failures.iter().position(|(o, _)| *o == op) else {
            return Ok(());
        };
        let (_, failure) = self.failures.remove(i).expect("found above");
        Err(match failure {
            FakeFailure::Errno(e) => IpvsError::rejected(op, target(), e),
            FakeFailure::Socket => IpvsError::Socket(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("injected failure of {op}"),
            )),
        })
    }

    fn existing(&mut self, op: IpvsOp, svc: &IpvsService) -> Result<&mut FakeService, IpvsError> {
        self.services
            .get_mut(&id_of(svc))
            .ok_or_else(|| IpvsError::rejected(op, svc.to_string(), libc::ESRCH))
    }
}

fn proto_order(p: u16) -> u8 {
    match protocol_of(p) {
        Some(Protocol::Tcp) => 0,
        Some(Protocol::Udp) => 1,
        Some(Protocol::Sctp) => 2,
        None => 3,
    }
}

fn proto_flag(p: u16) -> String {
    match protocol_of(p) {
        Some(Protocol::Tcp) => "-t".to_string(),
        Some(Protocol::Udp) => "-u".to_string(),
        Some(Protocol::Sctp) => "--sctp-service".to_string(),
        None => format!("--proto-{p}"),
    }
}

fn dumped_service(s: &FakeService) -> IpvsService {
    let mut svc = s.svc.clone();
    svc.flags |= IP_VS_SVC_F_HASHED;
    svc.stats = Some(IpvsStats::default());
    svc
}

fn dumped_dest(d: &IpvsDest) -> IpvsDest {
    let mut d = d.clone();
    d.stats = Some(IpvsStats::default());
    d
}

/// `ip_vs_add_service` / `ip_vs_edit_service`'s checks of a service's settings.
fn check_service(op: IpvsOp, svc: &IpvsService) -> Result<(), IpvsError> {
    let err = |e| Err(IpvsError::rejected(op, svc.to_string(), e));
    // NLA_NUL_STRING with .len = IP_VS_SCHEDNAME_MAXLEN - 1.
    if svc.scheduler.len() > IP_VS_SCHEDNAME_MAXLEN - 1 {
        return err(libc::EINVAL);
    }
    if !KERNEL_SCHEDULERS.contains(&svc.scheduler.as_str()) {
        return err(libc::ENOENT);
    }
    if svc.addr.is_ipv6() && !(1..=128).contains(&svc.netmask) {
        return err(libc::EINVAL);
    }
    Ok(())
}

/// `ip_vs_add_dest` / `ip_vs_edit_dest`'s checks, and the mixed-family rule of
/// `ip_vs_genl_set_cmd`.
fn check_dest(op: IpvsOp, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
    let err = |e| Err(IpvsError::rejected(op, dest_target(svc, dest), e));
    if dest.weight > i32::MAX as u32 || dest.lower_threshold > dest.upper_threshold {
        return err(libc::ERANGE);
    }
    if family_of(&dest.addr) != family_of(&svc.addr)
        && dest.fwd_method != super::attrs::IP_VS_CONN_F_TUNNEL
    {
        return err(libc::EINVAL);
    }
    Ok(())
}

fn log_service(op: IpvsOp, svc: &IpvsService) -> String {
    match op {
        IpvsOp::DelService => format!("{op} {svc}"),
        _ => {
            let mut s = format!("{op} {svc} {}", svc.scheduler);
            if svc.user_flags() != 0 {
                write!(s, " flags {:#x}", svc.user_flags()).unwrap();
            }
            if svc.timeout != 0 {
                write!(s, " timeout {}", svc.timeout).unwrap();
            }
            s
        }
    }
}

fn log_dest(op: IpvsOp, svc: &IpvsService, dest: &IpvsDest) -> String {
    match op {
        IpvsOp::DelDest => format!("{op} {}", dest_target(svc, dest)),
        _ => format!("{op} {} weight {}", dest_target(svc, dest), dest.weight),
    }
}

impl IpvsHandle for FakeIpvs {
    fn services(&mut self) -> Result<Vec<IpvsService>, IpvsError> {
        self.enter(IpvsOp::GetServices, String::new)?;
        Ok(self.services.values().map(dumped_service).collect())
    }

    fn destinations(&mut self, svc: &IpvsService) -> Result<Vec<IpvsDest>, IpvsError> {
        self.enter(IpvsOp::GetDests, || svc.to_string())?;
        Ok(self
            .services
            .get(&id_of(svc))
            .map(|s| s.dests.values().map(dumped_dest).collect())
            .unwrap_or_default())
    }

    fn new_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        let op = IpvsOp::NewService;
        self.log.push(log_service(op, svc));
        self.enter(op, || svc.to_string())?;
        if self.services.contains_key(&id_of(svc)) {
            return Err(IpvsError::rejected(op, svc.to_string(), libc::EEXIST));
        }
        check_service(op, svc)?;
        self.insert_service(svc.clone());
        Ok(())
    }

    fn set_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        let op = IpvsOp::SetService;
        self.log.push(log_service(op, svc));
        self.enter(op, || svc.to_string())?;
        self.existing(op, svc)?;
        check_service(op, svc)?;
        let s = self.existing(op, svc)?;
        s.svc.scheduler = svc.scheduler.clone();
        s.svc.flags = svc.flags & !IP_VS_SVC_F_HASHED;
        s.svc.timeout = svc.timeout;
        s.svc.netmask = svc.netmask;
        s.svc.pe_name = svc.pe_name.clone();
        Ok(())
    }

    fn del_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        let op = IpvsOp::DelService;
        self.log.push(log_service(op, svc));
        self.enter(op, || svc.to_string())?;
        self.existing(op, svc)?;
        self.services.remove(&id_of(svc));
        Ok(())
    }

    fn new_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        let op = IpvsOp::NewDest;
        self.log.push(log_dest(op, svc, dest));
        self.enter(op, || dest_target(svc, dest))?;
        self.existing(op, svc)?;
        check_dest(op, svc, dest)?;
        let s = self.existing(op, svc)?;
        if s.dests.contains_key(&(dest.addr, dest.port)) {
            return Err(IpvsError::rejected(
                op,
                dest_target(svc, dest),
                libc::EEXIST,
            ));
        }
        let mut d = dest.clone();
        d.active_conns = 0;
        d.inactive_conns = 0;
        d.persist_conns = 0;
        d.stats = None;
        s.dests.insert((d.addr, d.port), d);
        Ok(())
    }

    fn set_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        let op = IpvsOp::SetDest;
        self.log.push(log_dest(op, svc, dest));
        self.enter(op, || dest_target(svc, dest))?;
        self.existing(op, svc)?;
        check_dest(op, svc, dest)?;
        let s = self.existing(op, svc)?;
        let Some(d) = s.dests.get_mut(&(dest.addr, dest.port)) else {
            return Err(IpvsError::rejected(
                op,
                dest_target(svc, dest),
                libc::ENOENT,
            ));
        };
        d.fwd_method = dest.fwd_method;
        d.weight = dest.weight;
        d.upper_threshold = dest.upper_threshold;
        d.lower_threshold = dest.lower_threshold;
        Ok(())
    }

    fn del_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        let op = IpvsOp::DelDest;
        self.log.push(log_dest(op, svc, dest));
        self.enter(op, || dest_target(svc, dest))?;
        let s = self.existing(op, svc)?;
        if s.dests.remove(&(dest.addr, dest.port)).is_none() {
            return Err(IpvsError::rejected(
                op,
                dest_target(svc, dest),
                libc::ENOENT,
            ));
        }
        Ok(())
    }
}
