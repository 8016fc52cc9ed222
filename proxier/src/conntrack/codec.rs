//! The few ctnetlink messages the reconciler speaks, written and read by hand (no allocation per
//! flow): the filtered `IPCTNL_MSG_CT_GET` dump, the flows it returns, and
//! `IPCTNL_MSG_CT_DELETE` by original tuple. Layouts: `include/uapi/linux/netfilter/
//! nfnetlink_conntrack.h` and `net/netfilter/nf_conntrack_netlink.c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rulegen::IpFamily;
use rulegen::sync::conntrack::Flow;

/// `struct nlmsghdr`'s length.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`'s length.
const NFGENMSG_LEN: usize = 4;

/// `NLMSG_ERROR`: an acknowledgement, or a request's failure.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;

/// `NFNL_SUBSYS_CTNETLINK`, the high byte of every conntrack message type.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: a flow, as a dump returns each one.
const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`: with `NLM_F_DUMP`, the whole table.
const IPCTNL_MSG_CT_GET: u16 = 1;
/// `IPCTNL_MSG_CT_DELETE`: one flow, named by its tuple.
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// The netlink message type of ctnetlink message `msg`.
const fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// The attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_filter
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// `CTA_FILTER_F_CTA_PROTO_NUM` (`net/netfilter/nf_internals.h`, part of the ABI): filter the
/// dump on the original tuple's layer-4 protocol.
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;

/// The `AF_*` value of a family, as `nfgenmsg.nfgen_family` carries it.
pub(crate) fn af(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => libc::AF_INET as u8,
        IpFamily::V6 => libc::AF_INET6 as u8,
    }
}

/// One flow of the conntrack table, as a dump describes it: the tuple fields the staleness
/// rules read, and what a deletion must echo to name exactly this flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConntrackEntry {
    /// The flow's tuples.
    pub flow: Flow,
    /// `CTA_ID`: the kernel's id of the flow; a deletion carrying it spares a newer flow that
    /// reuses the tuple.
    pub id: Option<u32>,
    /// `CTA_ZONE`, when the flow is not in the default zone.
    pub zone: Option<u16>,
    /// `CTA_TUPLE_ZONE` of the original tuple (directional zones).
    pub tuple_zone: Option<u16>,
}

/// A ctnetlink message being written into a datagram.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    /// Starts a message of `kind` with `flags` and `seq`, and its `nfgenmsg` for `family`.
    fn new(out: &'a mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8) -> Writer<'a> {
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        // nfgenmsg: family, NFNETLINK_V0, res_id 0 (big-endian).
        out.extend_from_slice(&[family, 0, 0, 0]);
        Writer { out, start }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.out.extend_from_slice(&len.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(value);
        self.pad();
    }

    /// Opens a nested attribute; close it with [`Writer::end_nest`].
    fn nest(&mut self, kind: u16) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(&0u16.to_ne_bytes());
        self.out
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.out.len() - at) as u16;
        self.out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let aligned = self.out.len().next_multiple_of(4);
        self.out.resize(aligned, 0);
    }

    /// Sets the message's length (its attributes keep it aligned for the next one).
    fn finish(self) {
        let len = (self.out.len() - self.start) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

fn ip_bytes(ip: &IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => {
            b.copy_from_slice(&a.octets());
            (b, 16)
        }
    }
}

/// Appends a dump request of the table's `family` flows. With `udp_only` it asks the kernel to
/// return only UDP flows (`CTA_FILTER` on the original tuple's protocol, Linux 5.8+; an older
/// kernel ignores the attribute and returns every flow, which the reader filters anyway).
pub(crate) fn dump_request(out: &mut Vec<u8>, seq: u32, family: IpFamily, udp_only: bool) {
    use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
    let mut w = Writer::new(
        out,
        ct_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        af(family),
    );
    if udp_only {
        let tuple = w.nest(CTA_TUPLE_ORIG);
        let proto = w.nest(CTA_TUPLE_PROTO);
        w.attr(CTA_PROTO_NUM, &[rulegen::sync::conntrack::IPPROTO_UDP]);
        w.end_nest(proto);
        w.end_nest(tuple);
        let filter = w.nest(CTA_FILTER);
        w.attr(
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes(),
        );
        w.end_nest(filter);
    }
    w.finish();
}

/// Appends a request deleting `entry`, named by its original tuple (and its zone and id, as
/// the dump gave them), with `flags` (`NLM_F_REQUEST`, and `NLM_F_ACK` when wanted).
pub(crate) fn delete_request(out: &mut Vec<u8>, seq: u32, flags: u16, entry: &ConntrackEntry) {
    let f = &entry.flow;
    let family = match f.orig_src {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    };
    let (src_kind, dst_kind) = match family {
        IpFamily::V4 => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        IpFamily::V6 => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
    };
    let mut w = Writer::new(out, ct_type(IPCTNL_MSG_CT_DELETE), flags, seq, af(family));
    let tuple = w.nest(CTA_TUPLE_ORIG);
    let ip = w.nest(CTA_TUPLE_IP);
    let (src, n) = ip_bytes(&f.orig_src);
    w.attr(src_kind, &src[..n]);
    let (dst, n) = ip_bytes(&f.orig_dst);
    w.attr(dst_kind, &dst[..n]);
    w.end_nest(ip);
    let proto = w.nest(CTA_TUPLE_PROTO);
    w.attr(CTA_PROTO_NUM, &[f.proto]);
    w.attr(CTA_PROTO_SRC_PORT, &f.orig_sport.to_be_bytes());
    w.attr(CTA_PROTO_DST_PORT, &f.orig_dport.to_be_bytes());
    w.end_nest(proto);
    if let Some(z) = entry.tuple_zone {
        w.attr(CTA_TUPLE_ZONE, &z.to_be_bytes());
    }
    w.end_nest(tuple);
    if let Some(z) = entry.zone {
        w.attr(CTA_ZONE, &z.to_be_bytes());
    }
    if let Some(id) = entry.id {
        w.attr(CTA_ID, &id.to_be_bytes());
    }
    w.finish();
}

/// One message of a reply datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `NLMSG_ERROR`: 0 for an acknowledgement, else the (positive) errno.
    Ack(i32),
    /// `NLMSG_DONE`, with the dump's status (negative on failure).
    Done(i32),
    /// A flow of the dump; `None` when it is not a complete flow of `family` (another family
    /// from a kernel that does not filter, or a protocol without ports).
    Flow(Option<ConntrackEntry>),
    /// Anything else.
    Other,
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

fn malformed(what: impl Into<String>) -> Malformed {
    Malformed(what.into())
}

/// Calls `each` with every message of a reply datagram: its sequence number, its flags and
/// what it is. Flows of another family than `family` come as `Reply::Flow(None)`.
pub(crate) fn parse_datagram(
    buf: &[u8],
    family: IpFamily,
    mut each: impl FnMut(u32, u16, Reply),
) -> Result<(), Malformed> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let h = &buf[off..];
        let len = u32::from_ne_bytes(h[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(h[4..6].try_into().unwrap());
        let flags = u16::from_ne_bytes(h[6..8].try_into().unwrap());
        let seq = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > h.len() {
            return Err(malformed(format!(
                "message length {len} with {} bytes left",
                h.len()
            )));
        }
        let payload = &h[NLMSG_HDRLEN..len];
        let status = || -> Result<i32, Malformed> {
            payload
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                .ok_or_else(|| malformed("status shorter than 4 bytes"))
        };
        let reply = match kind {
            NLMSG_ERROR => Reply::Ack(-status()?),
            NLMSG_DONE => Reply::Done(if payload.len() >= 4 { status()? } else { 0 }),
            k if k == ct_type(IPCTNL_MSG_CT_NEW) => Reply::Flow(parse_flow(payload, family)?),
            _ => Reply::Other,
        };
        each(seq, flags, reply);
        off += len.next_multiple_of(4);
    }
    Ok(())
}

/// The attributes in `buf`: (type without flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes(buf[off..off + 2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[off + 2..off + 4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            off = buf.len();
            return Some(Err(malformed(format!("attribute {kind} of length {len}"))));
        }
        let value = &buf[off + 4..off + len];
        off += len.next_multiple_of(4);
        Some(Ok((kind, value)))
    })
}

/// One direction's tuple: addresses, protocol, ports, zone.
#[derive(Debug, Default, Clone, Copy)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    zone: Option<u16>,
}

fn be16(v: &[u8]) -> Result<u16, Malformed> {
    v.get(..2)
        .map(|b| u16::from_be_bytes(b.try_into().unwrap()))
        .ok_or_else(|| malformed("16-bit attribute too short"))
}

fn be32(v: &[u8]) -> Result<u32, Malformed> {
    v.get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        .ok_or_else(|| malformed("32-bit attribute too short"))
}

fn v4(v: &[u8]) -> Result<IpAddr, Malformed> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("IPv4 address too short"))?;
    Ok(IpAddr::V4(Ipv4Addr::from(b)))
}

fn v6(v: &[u8]) -> Result<IpAddr, Malformed> {
    let b: [u8; 16] = v
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("IPv6 address too short"))?;
    Ok(IpAddr::V6(Ipv6Addr::from(b)))
}

fn parse_tuple(buf: &[u8]) -> Result<Tuple, Malformed> {
    let mut t = Tuple::default();
    for a in attrs(buf) {
        let (kind, value) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in attrs(value) {
                    let (kind, value) = a?;
                    match kind {
                        CTA_IP_V4_SRC => t.src = Some(v4(value)?),
                        CTA_IP_V4_DST => t.dst = Some(v4(value)?),
                        CTA_IP_V6_SRC => t.src = Some(v6(value)?),
                        CTA_IP_V6_DST => t.dst = Some(v6(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(value) {
                    let (kind, value) = a?;
                    match kind {
                        CTA_PROTO_NUM => {
                            t.proto =
                                Some(*value.first().ok_or_else(|| malformed("empty protonum"))?)
                        }
                        CTA_PROTO_SRC_PORT => t.sport = Some(be16(value)?),
                        CTA_PROTO_DST_PORT => t.dport = Some(be16(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => t.zone = Some(be16(value)?),
            _ => {}
        }
    }
    Ok(t)
}

/// A dumped flow (the payload of an `IPCTNL_MSG_CT_NEW`, `nfgenmsg` first).
fn parse_flow(payload: &[u8], family: IpFamily) -> Result<Option<ConntrackEntry>, Malformed> {
    let Some(&nfgen_family) = payload.first() else {
        return Err(malformed("flow without nfgenmsg"));
    };
    if payload.len() < NFGENMSG_LEN {
        return Err(malformed("flow without nfgenmsg"));
    }
    if nfgen_family != af(family) {
        return Ok(None);
    }
    let (mut orig, mut reply) = (None, None);
    let (mut id, mut zone) = (None, None);
    for a in attrs(&payload[NFGENMSG_LEN..]) {
        let (kind, value) = a?;
        match kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            CTA_ID => id = Some(be32(value)?),
            CTA_ZONE => zone = Some(be16(value)?),
            _ => {}
        }
    }
    let (Some(o), Some(r)) = (orig, reply) else {
        return Ok(None);
    };
    let flow = (|| {
        Some(Flow {
            proto: o.proto?,
            orig_src: o.src?,
            orig_dst: o.dst?,
            orig_sport: o.sport?,
            orig_dport: o.dport?,
            reply_src: r.src?,
            reply_sport: r.sport?,
        })
    })();
    Ok(flow
        .filter(|f| family.contains(&f.orig_src))
        .map(|flow| ConntrackEntry {
            flow,
            id,
            zone,
            tuple_zone: o.zone,
        }))
}

/// A dumped flow as the kernel writes it (`IPCTNL_MSG_CT_NEW` with both tuples, status,
/// timeout, id and zone), for the tests of the reader.
#[cfg(test)]
pub(crate) fn flow_message(out: &mut Vec<u8>, seq: u32, flags: u16, e: &ConntrackEntry) {
    let f = &e.flow;
    let family = IpFamily::of(&f.orig_src);
    let (src_kind, dst_kind) = match family {
        IpFamily::V4 => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        IpFamily::V6 => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
    };
    let mut w = Writer::new(out, ct_type(IPCTNL_MSG_CT_NEW), flags, seq, af(family));
    let tuple = |w: &mut Writer, kind, src, dst, sport: u16, dport: u16, zone: Option<u16>| {
        let t = w.nest(kind);
        let ip = w.nest(CTA_TUPLE_IP);
        let (b, n) = ip_bytes(&src);
        w.attr(src_kind, &b[..n]);
        let (b, n) = ip_bytes(&dst);
        w.attr(dst_kind, &b[..n]);
        w.end_nest(ip);
        let p = w.nest(CTA_TUPLE_PROTO);
        w.attr(CTA_PROTO_NUM, &[f.proto]);
        w.attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
        w.attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        w.end_nest(p);
        if let Some(z) = zone {
            w.attr(CTA_TUPLE_ZONE, &z.to_be_bytes());
        }
        w.end_nest(t);
    };
    tuple(
        &mut w,
        CTA_TUPLE_ORIG,
        f.orig_src,
        f.orig_dst,
        f.orig_sport,
        f.orig_dport,
        e.tuple_zone,
    );
    tuple(
        &mut w,
        CTA_TUPLE_REPLY,
        f.reply_src,
        f.orig_src,
        f.reply_sport,
        f.orig_sport,
        None,
    );
    w.attr(3, &0x188u32.to_be_bytes()); // CTA_STATUS
    w.attr(7, &29u32.to_be_bytes()); // CTA_TIMEOUT
    w.attr(8, &0u32.to_be_bytes()); // CTA_MARK
    w.attr(11, &1u32.to_be_bytes()); // CTA_USE
    if let Some(id) = e.id {
        w.attr(CTA_ID, &id.to_be_bytes());
    }
    if let Some(z) = e.zone {
        w.attr(CTA_ZONE, &z.to_be_bytes());
    }
    w.finish();
}
