//! `kube-ipvs0`, the interface IPVS mode binds service addresses to so that the kernel takes
//! packets for them as local, and the node's other addresses. Upstream's counterpart is
//! `pkg/proxy/ipvs/netlink_linux.go`; what it does is kept here:
//!
//! - The link is a `dummy` that is never set up: it stays DOWN (`<BROADCAST,NOARP>`), and one
//!   link serves both IP families (`EnsureDummyDevice`).
//! - An address is bound as a /32 (IPv4) or /128 (IPv6) with no label, scope or flags;
//!   `EEXIST` means it was bound already (`EnsureAddressBind`). Unbinding ignores `ENXIO` and
//!   `EADDRNOTAVAIL` (`UnbindAddress`).
//! - The addresses that count, on kube-ipvs0 or elsewhere, are those of one family, leaving out
//!   loopback addresses and IPv6 link-local ones (`isValidForSet`).
//!
//! Everything goes over a blocking `NETLINK_ROUTE` socket opened by each call, so it acts on
//! the network namespace of the calling thread (the agent calls from `spawn_blocking`). Each
//! call resolves the link once and dumps the addresses once, then sends only the additions or
//! deletions needed, up to [`WINDOW`] requests per datagram, and reads every request's
//! acknowledgement before the next datagram. Binding 2,000 addresses takes about 25 ms; past
//! that the kernel's own cost dominates, as it walks the link's address list on every addition
//! and deletion (10,000 IPv4 addresses: about 0.5 s).

use crate::netlink::set_recv_timeout;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkBuffer, NetlinkMessage, Parseable,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkHeader, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rulegen::IpFamily;
use thiserror::Error;

#[cfg(test)]
mod tests;

/// The name of the interface IPVS mode binds service addresses to.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";

/// How many requests go out in one datagram before their acknowledgements are read. Each
/// acknowledgement takes about 768 bytes of the socket's receive buffer (its `skb`'s true
/// size) until read, so 128 of them stay well inside the default 208 KiB: a kernel that cannot
/// queue an acknowledgement drops it (`ENOBUFS`), and the outcome of that request is lost.
pub const WINDOW: usize = 128;

/// How long a request waits for the kernel's reply before failing, so that a kernel that never
/// answers cannot wedge the blocking thread for good.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The receive buffer asked for (the kernel caps it at twice `net.core.rmem_max`).
const RECV_BUFFER: usize = 1 << 20;

/// How many times an address dump the kernel reports as interrupted (`NLM_F_DUMP_INTR`: the
/// addresses changed while it ran) is retried.
const DUMP_TRIES: usize = 5;

/// `struct nlmsghdr`'s length.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR`: an acknowledgement, or a request's failure.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `RTM_NEWLINK`: a link, as the kernel describes one.
const RTM_NEWLINK: u16 = 16;
/// `RTM_NEWADDR`: an address, as the kernel describes one.
const RTM_NEWADDR: u16 = 20;

/// An rtnetlink request, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterfaceOp {
    /// `RTM_GETLINK` of one link by name.
    GetLink,
    /// `RTM_NEWLINK` of a dummy link.
    NewLink,
    /// `RTM_DELLINK` by name.
    DelLink,
    /// `RTM_GETADDR` dump.
    GetAddresses,
    /// `RTM_NEWADDR`.
    AddAddress,
    /// `RTM_DELADDR`.
    DelAddress,
}

impl fmt::Display for InterfaceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterfaceOp::GetLink => "RTM_GETLINK",
            InterfaceOp::NewLink => "RTM_NEWLINK",
            InterfaceOp::DelLink => "RTM_DELLINK",
            InterfaceOp::GetAddresses => "RTM_GETADDR",
            InterfaceOp::AddAddress => "RTM_NEWADDR",
            InterfaceOp::DelAddress => "RTM_DELADDR",
        })
    }
}

/// Why an operation on the interface or the node's addresses failed.
#[derive(Debug, Error)]
pub enum InterfaceError {
    /// The link is missing and the kernel cannot create a `dummy` one (`EOPNOTSUPP`: no
    /// `dummy` driver built in, and none loadable).
    #[error("cannot create {name}: the kernel has no dummy interface support (modprobe dummy)")]
    NoDummySupport {
        /// The interface's name.
        name: String,
    },
    /// The interface does not exist.
    #[error("interface {name} does not exist")]
    NotFound {
        /// The interface's name.
        name: String,
    },
    /// The kernel refused a request. When a batch had several failures, this is the first;
    /// the rest of the batch was still applied.
    #[error("{op} {target}: {}", io::Error::from_raw_os_error(*errno))]
    Rejected {
        /// The request.
        op: InterfaceOp,
        /// What it was about: an interface name, or an address and the interface.
        target: String,
        /// The kernel's errno (positive).
        errno: i32,
    },
    /// The netlink socket failed, or the kernel did not answer in time.
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] io::Error),
    /// A reply could not be understood.
    #[error("rtnetlink reply to {op}: {message}")]
    Decode {
        /// The request it answered.
        op: InterfaceOp,
        /// What was wrong with it.
        message: String,
    },
}

impl InterfaceError {
    /// The kernel's errno, when the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            InterfaceError::Rejected { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A dummy interface holding service addresses, such as [`IPVS_INTERFACE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DummyInterface {
    name: String,
}

impl DummyInterface {
    /// The interface called `name`; nothing is checked or created until a method is called.
    pub fn new(name: &str) -> DummyInterface {
        DummyInterface {
            name: name.to_string(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's index, or `None` when it does not exist.
    pub fn index(&self) -> Result<Option<u32>, InterfaceError> {
        Rtnl::open()?.link_index(&self.name)
    }

    /// Makes sure the interface exists and returns its index: a link of that name is used
    /// whatever its kind; a missing one is created as a `dummy` link and left DOWN, as upstream
    /// leaves it. [`InterfaceError::NoDummySupport`] when the kernel cannot create one.
    pub fn ensure(&self) -> Result<u32, InterfaceError> {
        let mut nl = Rtnl::open()?;
        if let Some(index) = nl.link_index(&self.name)? {
            return Ok(index);
        }
        nl.create_dummy(&self.name)?;
        tracing::info!(interface = %self.name, "created the dummy interface");
        nl.link_index(&self.name)?
            .ok_or_else(|| InterfaceError::NotFound {
                name: self.name.clone(),
            })
    }

    /// The addresses of `family` on the interface, sorted, without loopback and IPv6
    /// link-local ones (upstream's `GetLocalAddresses`).
    pub fn addresses(&self, family: IpFamily) -> Result<Vec<IpAddr>, InterfaceError> {
        let mut nl = Rtnl::open()?;
        let index = nl.require_index(&self.name)?;
        let mut ips: Vec<IpAddr> = nl
            .dump_addresses(family, Some(index))?
            .iter()
            .filter_map(Bound::ip)
            .filter(|ip| counts(ip, family))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        Ok(ips)
    }

    /// Binds every address of `family` in `wanted` that the interface lacks, as a /32 or /128;
    /// addresses of the other family are ignored. Returns how many were added (one another
    /// writer added meanwhile, `EEXIST`, is not counted).
    pub fn bind(&self, family: IpFamily, wanted: &[IpAddr]) -> Result<usize, InterfaceError> {
        let mut nl = Rtnl::open()?;
        let index = nl.require_index(&self.name)?;
        let present = nl.dump_addresses(family, Some(index))?;
        let missing = missing(&present, family, wanted);
        let requests = missing
            .iter()
            .map(|ip| RouteNetlinkMessage::NewAddress(add_request(index, *ip)));
        let errnos = nl.acked(requests, NLM_F_CREATE | NLM_F_EXCL)?;
        let mut added = 0;
        let mut first_error = None;
        for (ip, errno) in missing.iter().zip(errnos) {
            match errno {
                0 => added += 1,
                libc::EEXIST => {}
                _ => {
                    first_error.get_or_insert(InterfaceError::Rejected {
                        op: InterfaceOp::AddAddress,
                        target: format!("{ip} on {}", self.name),
                        errno,
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }

    /// Removes from the interface every address of `family` not in `wanted` (loopback and IPv6
    /// link-local addresses are left alone). Returns how many were removed; one already gone
    /// (`ENXIO`, `EADDRNOTAVAIL`) is not counted.
    pub fn unbind_surplus(
        &self,
        family: IpFamily,
        wanted: &[IpAddr],
    ) -> Result<usize, InterfaceError> {
        let mut nl = Rtnl::open()?;
        let index = nl.require_index(&self.name)?;
        let present = nl.dump_addresses(family, Some(index))?;
        let surplus = surplus(&present, family, wanted);
        let requests = surplus
            .iter()
            .map(|b| RouteNetlinkMessage::DelAddress(del_request(b)));
        let errnos = nl.acked(requests, 0)?;
        let mut removed = 0;
        let mut first_error = None;
        for (b, errno) in surplus.iter().zip(errnos) {
            match errno {
                0 => removed += 1,
                libc::ENXIO | libc::EADDRNOTAVAIL => {}
                _ => {
                    first_error.get_or_insert(InterfaceError::Rejected {
                        op: InterfaceOp::DelAddress,
                        target: format!(
                            "{}/{} on {}",
                            b.ip().map_or_else(|| "?".to_string(), |ip| ip.to_string()),
                            b.prefix_len,
                            self.name
                        ),
                        errno,
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Deletes the interface, and the addresses on it; `false` when it did not exist.
    pub fn delete(&self) -> Result<bool, InterfaceError> {
        Rtnl::open()?.delete_link(&self.name)
    }
}

/// Every address of `family` on the node's interfaces other than `name`, sorted and without
/// duplicates, leaving out loopback and IPv6 link-local addresses (upstream's
/// `GetAllLocalAddressesExcept`): whether an external or load-balancer IP is already local.
/// When `name` does not exist, every interface counts.
pub fn local_addresses_except(name: &str, family: IpFamily) -> Result<Vec<IpAddr>, InterfaceError> {
    let mut nl = Rtnl::open()?;
    let except = nl.link_index(name)?;
    let mut ips: Vec<IpAddr> = nl
        .dump_addresses(family, None)?
        .iter()
        .filter(|b| Some(b.index) != except)
        .filter_map(Bound::ip)
        .filter(|ip| counts(ip, family))
        .collect();
    ips.sort_unstable();
    ips.dedup();
    Ok(ips)
}

/// Whether an address is one upstream's `isValidForSet` keeps: of `family`, not loopback, not
/// IPv6 link-local (fe80::/10).
pub(crate) fn counts(ip: &IpAddr, family: IpFamily) -> bool {
    IpFamily::of(ip) == family && !ip.is_loopback() && !is_link_local_v6(ip)
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// An address as an `RTM_NEWADDR` of a dump describes it: enough to name it in a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bound {
    /// The interface's index.
    pub(crate) index: u32,
    /// The prefix length.
    pub(crate) prefix_len: u8,
    /// `IFA_LOCAL`: the address itself (IPv4; IPv6 only with a peer).
    pub(crate) local: Option<IpAddr>,
    /// `IFA_ADDRESS`: the peer's address, or the address itself when there is no peer.
    pub(crate) address: Option<IpAddr>,
}

impl Bound {
    /// The interface's own address: `IFA_LOCAL` when given, else `IFA_ADDRESS`.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.local.or(self.address)
    }

    fn from_message(msg: &AddressMessage) -> Bound {
        let mut bound = Bound {
            index: msg.header.index,
            prefix_len: msg.header.prefix_len,
            local: None,
            address: None,
        };
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(ip) => bound.local = Some(*ip),
                AddressAttribute::Address(ip) => bound.address = Some(*ip),
                _ => {}
            }
        }
        bound
    }
}

/// The addresses of `family` in `wanted` that `present` lacks, in `wanted`'s order, each once.
pub(crate) fn missing(present: &[Bound], family: IpFamily, wanted: &[IpAddr]) -> Vec<IpAddr> {
    let mut seen: HashSet<IpAddr> = present.iter().filter_map(Bound::ip).collect();
    wanted
        .iter()
        .copied()
        .filter(|ip| IpFamily::of(ip) == family && seen.insert(*ip))
        .collect()
}

/// The addresses in `present` that count for `family` and are not in `wanted`.
pub(crate) fn surplus<'a>(
    present: &'a [Bound],
    family: IpFamily,
    wanted: &[IpAddr],
) -> Vec<&'a Bound> {
    let wanted: HashSet<IpAddr> = wanted.iter().copied().collect();
    present
        .iter()
        .filter(|b| {
            b.ip()
                .is_some_and(|ip| counts(&ip, family) && !wanted.contains(&ip))
        })
        .collect()
}

fn address_family(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

/// `RTM_NEWADDR` of `ip` as a host address on link `index`, as `netlink.AddrAdd` sends it:
/// `IFA_LOCAL` and `IFA_ADDRESS` for IPv4, `IFA_ADDRESS` for IPv6; no label, flags or scope.
pub(crate) fn add_request(index: u32, ip: IpAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = address_family(IpFamily::of(&ip));
    msg.header.prefix_len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    msg.header.index = index;
    if ip.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(ip));
    }
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

/// `RTM_DELADDR` of an address exactly as the dump described it (prefix length, local and
/// peer address), so that it names that one address whatever its prefix.
pub(crate) fn del_request(b: &Bound) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match b.ip() {
        Some(IpAddr::V6(_)) => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
    msg.header.prefix_len = b.prefix_len;
    msg.header.index = b.index;
    if let Some(ip) = b.local {
        msg.attributes.push(AddressAttribute::Local(ip));
    }
    if let Some(ip) = b.address {
        msg.attributes.push(AddressAttribute::Address(ip));
    }
    msg
}

/// A link request naming the link, with `attrs` after its name.
fn link_request(name: &str, attrs: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.extend(attrs);
    msg
}

/// Appends `msg` to `out` as one netlink message with `flags` and `seq`.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let start = out.len();
    out.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut out[start..]);
    // NLMSG_ALIGN: the next message of the datagram starts on a 4-byte boundary.
    out.resize(out.len().next_multiple_of(4), 0);
}

/// One message of a reply datagram, as far as this module cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `NLMSG_ERROR`: 0 for an acknowledgement, else the (positive) errno.
    Ack(i32),
    /// `NLMSG_DONE`, with the dump's status (negative on failure).
    Done(i32),
    /// `RTM_NEWADDR`, and whether the dump was interrupted (`NLM_F_DUMP_INTR`).
    Address(Bound, bool),
    /// `RTM_NEWLINK`: the link's index.
    Link(u32),
    /// Anything else.
    Other,
}

/// The messages of one reply datagram, each with its sequence number.
pub(crate) fn parse_datagram(
    buf: &[u8],
    op: InterfaceOp,
) -> Result<Vec<(u32, Reply)>, InterfaceError> {
    let decode = |e: DecodeError| InterfaceError::Decode {
        op,
        message: e.to_string(),
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let nb = NetlinkBuffer::new_checked(&buf[off..]).map_err(decode)?;
        let len = nb.length() as usize;
        if len < NLMSG_HDRLEN {
            return Err(decode(DecodeError::from(
                "netlink message shorter than its header",
            )));
        }
        let payload = nb.payload();
        let status = || -> Result<i32, InterfaceError> {
            let b: [u8; 4] = payload
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| decode(DecodeError::from("status shorter than 4 bytes")))?;
            Ok(i32::from_ne_bytes(b))
        };
        let reply = match nb.message_type() {
            NLMSG_ERROR => Reply::Ack(-status()?),
            NLMSG_DONE => Reply::Done(if payload.len() >= 4 { status()? } else { 0 }),
            RTM_NEWADDR => {
                let msg = AddressMessage::parse(payload).map_err(decode)?;
                Reply::Address(Bound::from_message(&msg), nb.flags() & NLM_F_DUMP_INTR != 0)
            }
            RTM_NEWLINK => Reply::Link(LinkHeader::parse(payload).map_err(decode)?.index),
            _ => Reply::Other,
        };
        out.push((nb.sequence_number(), reply));
        off += len.next_multiple_of(4);
    }
    Ok(out)
}

/// A blocking rtnetlink socket in the calling thread's network namespace.
struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> Result<Rtnl, InterfaceError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&sock, REPLY_TIMEOUT)?;
        // Each of these only saves work, and an old kernel may lack it: room for more
        // acknowledgements, failures without the request echoed back, and dumps filtered by
        // interface in the kernel (they are filtered here too).
        let _ = sock.set_rx_buf_sz(RECV_BUFFER);
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        // Never 0, which unsolicited messages carry.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Reads one reply datagram, however large.
    fn recv(&mut self, op: InterfaceOp) -> Result<Vec<(u32, Reply)>, InterfaceError> {
        let timed_out = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => InterfaceError::Socket(
                io::Error::new(io::ErrorKind::TimedOut, format!("no reply to {op}")),
            ),
            _ => InterfaceError::Socket(e),
        };
        // A peek with no room reads nothing but tells the datagram's length.
        let size = self
            .sock
            .recv::<&mut [u8]>(&mut &mut [][..], libc::MSG_PEEK | libc::MSG_TRUNC)
            .map_err(timed_out)?;
        if size > self.buf.len() {
            self.buf.resize(size, 0);
        }
        let n = self
            .sock
            .recv(&mut &mut self.buf[..], 0)
            .map_err(timed_out)?;
        parse_datagram(&self.buf[..n], op)
    }

    /// The index of link `name`, `None` when there is none.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>, InterfaceError> {
        let op = InterfaceOp::GetLink;
        let seq = self.next_seq();
        let mut req = Vec::new();
        let msg = RouteNetlinkMessage::GetLink(link_request(name, vec![]));
        encode(msg, NLM_F_REQUEST | NLM_F_ACK, seq, &mut req);
        self.sock.send(&req, 0)?;
        let mut index = None;
        loop {
            for (s, reply) in self.recv(op)? {
                match reply {
                    _ if s != seq => {}
                    Reply::Link(i) => index = Some(i),
                    Reply::Ack(0) => {
                        return index.map(Some).ok_or_else(|| InterfaceError::Decode {
                            op,
                            message: format!("acknowledged without describing {name}"),
                        });
                    }
                    Reply::Ack(libc::ENODEV) => return Ok(None),
                    Reply::Ack(errno) => {
                        return Err(InterfaceError::Rejected {
                            op,
                            target: name.to_string(),
                            errno,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    fn require_index(&mut self, name: &str) -> Result<u32, InterfaceError> {
        self.link_index(name)?
            .ok_or_else(|| InterfaceError::NotFound {
                name: name.to_string(),
            })
    }

    /// Creates a dummy link; one created meanwhile by someone else is fine.
    fn create_dummy(&mut self, name: &str) -> Result<(), InterfaceError> {
        let info = LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]);
        let msg = RouteNetlinkMessage::NewLink(link_request(name, vec![info]));
        match self.acked(std::iter::once(msg), NLM_F_CREATE | NLM_F_EXCL)?[..] {
            [0] | [libc::EEXIST] => Ok(()),
            [libc::EOPNOTSUPP] => Err(InterfaceError::NoDummySupport {
                name: name.to_string(),
            }),
            [errno] => Err(InterfaceError::Rejected {
                op: InterfaceOp::NewLink,
                target: name.to_string(),
                errno,
            }),
            _ => unreachable!("one request, one answer"),
        }
    }

    /// Deletes link `name`; `false` when there was none.
    fn delete_link(&mut self, name: &str) -> Result<bool, InterfaceError> {
        let msg = RouteNetlinkMessage::DelLink(link_request(name, vec![]));
        match self.acked(std::iter::once(msg), 0)?[..] {
            [0] => Ok(true),
            [libc::ENODEV] => Ok(false),
            [errno] => Err(InterfaceError::Rejected {
                op: InterfaceOp::DelLink,
                target: name.to_string(),
                errno,
            }),
            _ => unreachable!("one request, one answer"),
        }
    }

    /// Every address of `family`, of link `index` only when given.
    fn dump_addresses(
        &mut self,
        family: IpFamily,
        index: Option<u32>,
    ) -> Result<Vec<Bound>, InterfaceError> {
        let op = InterfaceOp::GetAddresses;
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            let mut msg = AddressMessage::default();
            msg.header.family = address_family(family);
            msg.header.index = index.unwrap_or(0);
            let mut req = Vec::new();
            encode(
                RouteNetlinkMessage::GetAddress(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                &mut req,
            );
            self.sock.send(&req, 0)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'dump: loop {
                for (s, reply) in self.recv(op)? {
                    match reply {
                        _ if s != seq => {}
                        Reply::Address(b, intr) => {
                            interrupted |= intr;
                            let family_ok = b.ip().is_some_and(|ip| IpFamily::of(&ip) == family);
                            if family_ok && index.is_none_or(|i| i == b.index) {
                                out.push(b);
                            }
                        }
                        Reply::Done(status) if status < 0 => {
                            return Err(InterfaceError::Rejected {
                                op,
                                target: format!("{family:?} addresses"),
                                errno: -status,
                            });
                        }
                        Reply::Done(_) => break 'dump,
                        Reply::Ack(0) => {}
                        Reply::Ack(errno) => {
                            return Err(InterfaceError::Rejected {
                                op,
                                target: format!("{family:?} addresses"),
                                errno,
                            });
                        }
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(InterfaceError::Decode {
            op,
            message: format!("the dump was interrupted {DUMP_TRIES} times in a row"),
        })
    }

    /// Sends `requests` with `NLM_F_ACK` and `extra_flags`, [`WINDOW`] to a datagram, and
    /// returns each one's errno (0 for success), in order.
    fn acked(
        &mut self,
        requests: impl Iterator<Item = RouteNetlinkMessage>,
        extra_flags: u16,
    ) -> Result<Vec<i32>, InterfaceError> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        let mut errnos = Vec::new();
        let mut requests = requests.peekable();
        let mut datagram = Vec::new();
        while requests.peek().is_some() {
            datagram.clear();
            let mut seqs = Vec::with_capacity(WINDOW);
            let mut op = InterfaceOp::GetLink;
            for msg in requests.by_ref().take(WINDOW) {
                op = op_of(&msg);
                let seq = self.next_seq();
                encode(msg, flags, seq, &mut datagram);
                seqs.push(seq);
            }
            self.sock.send(&datagram, 0)?;
            let first = errnos.len();
            errnos.resize(first + seqs.len(), None);
            let mut pending = seqs.len();
            while pending > 0 {
                for (s, reply) in self.recv(op)? {
                    let Reply::Ack(errno) = reply else { continue };
                    let Some(at) = seqs.iter().position(|&q| q == s) else {
                        continue;
                    };
                    if errnos[first + at].is_none() {
                        errnos[first + at] = Some(errno);
                        pending -= 1;
                    }
                }
            }
        }
        Ok(errnos.into_iter().map(|e| e.unwrap_or_default()).collect())
    }
}

fn op_of(msg: &RouteNetlinkMessage) -> InterfaceOp {
    match msg {
        RouteNetlinkMessage::NewLink(_) => InterfaceOp::NewLink,
        RouteNetlinkMessage::DelLink(_) => InterfaceOp::DelLink,
        RouteNetlinkMessage::NewAddress(_) => InterfaceOp::AddAddress,
        RouteNetlinkMessage::DelAddress(_) => InterfaceOp::DelAddress,
        RouteNetlinkMessage::GetAddress(_) => InterfaceOp::GetAddresses,
        _ => InterfaceOp::GetLink,
    }
}
