//! The IPVS generic-netlink family's constants and attribute types.
//!
//! Every number here comes from the kernel's `include/uapi/linux/ip_vs.h` (torvalds/linux) unless
//! a comment says otherwise; the wire form of each attribute (its width and byte order) from what
//! `net/netfilter/ipvs/ip_vs_ctl.c` puts and gets (`ip_vs_genl_fill_service`,
//! `ip_vs_genl_fill_dest`, `ip_vs_genl_parse_service`, `ip_vs_genl_parse_dest`,
//! `ip_vs_genl_fill_stats[64]`), cross-checked with ipvsadm's `libipvs/libipvs.c`
//! (`ipvs_nl_fill_service_attr`, `ipvs_nl_fill_dest_attr`, `ipvs_parse_stats`).
//!
//! Nested attributes are emitted without `NLA_F_NESTED`, as the kernel's own dumps
//! (`nla_nest_start_noflag`) and ipvsadm (libnl's `nla_nest_start`) do; the kernel parses them
//! with `nla_parse_nested_deprecated`, which accepts either. Parsing masks the flag off.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator, Parseable,
    emit_u16, emit_u16_be, emit_u32, emit_u64, parse_u8, parse_u16, parse_u16_be, parse_u32,
    parse_u64,
};

/// `IPVS_GENL_NAME`: the generic-netlink family name.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;

/// `IPVS_CMD_NEW_SERVICE`: add a service (also the command of each service in a dump).
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
/// `IPVS_CMD_SET_SERVICE`: modify a service.
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
/// `IPVS_CMD_DEL_SERVICE`: delete a service and its destinations.
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
/// `IPVS_CMD_GET_SERVICE`: get one service, or dump them all with `NLM_F_DUMP`.
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
/// `IPVS_CMD_NEW_DEST`: add a destination (also the command of each one in a dump).
pub const IPVS_CMD_NEW_DEST: u8 = 5;
/// `IPVS_CMD_SET_DEST`: modify a destination.
pub const IPVS_CMD_SET_DEST: u8 = 6;
/// `IPVS_CMD_DEL_DEST`: delete a destination.
pub const IPVS_CMD_DEL_DEST: u8 = 7;
/// `IPVS_CMD_GET_DEST`: dump one service's destinations (dump only).
pub const IPVS_CMD_GET_DEST: u8 = 8;
/// `IPVS_CMD_FLUSH`: delete every service (17th in the command enum, after the daemon, config,
/// info and zero commands).
pub const IPVS_CMD_FLUSH: u8 = 17;

/// `IPVS_CMD_ATTR_SERVICE`: the nested service attribute.
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
/// `IPVS_CMD_ATTR_DEST`: the nested destination attribute.
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

/// `IPVS_SVC_ATTR_AF`: address family, u16.
pub const IPVS_SVC_ATTR_AF: u16 = 1;
/// `IPVS_SVC_ATTR_PROTOCOL`: IP protocol number, u16.
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
/// `IPVS_SVC_ATTR_ADDR`: `union nf_inet_addr`, 16 bytes, an IPv4 address in the first 4.
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
/// `IPVS_SVC_ATTR_PORT`: port, big-endian u16 (`nla_put_be16`).
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
/// `IPVS_SVC_ATTR_FWMARK`: firewall mark of a fwmark service, u32.
pub const IPVS_SVC_ATTR_FWMARK: u16 = 5;
/// `IPVS_SVC_ATTR_SCHED_NAME`: NUL-terminated scheduler name (at most 15 characters).
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
/// `IPVS_SVC_ATTR_FLAGS`: `struct ip_vs_flags { u32 flags; u32 mask; }`, host order.
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
/// `IPVS_SVC_ATTR_TIMEOUT`: persistence timeout in seconds, u32.
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
/// `IPVS_SVC_ATTR_NETMASK`: persistence netmask, u32 (see [`NETMASK_V4`], [`NETMASK_V6`]).
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;
/// `IPVS_SVC_ATTR_STATS`: nested 32-bit statistics.
pub const IPVS_SVC_ATTR_STATS: u16 = 10;
/// `IPVS_SVC_ATTR_PE_NAME`: NUL-terminated persistence-engine name.
pub const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
/// `IPVS_SVC_ATTR_STATS64`: nested 64-bit statistics.
pub const IPVS_SVC_ATTR_STATS64: u16 = 12;

/// `IPVS_DEST_ATTR_ADDR`: `union nf_inet_addr`, 16 bytes.
pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
/// `IPVS_DEST_ATTR_PORT`: big-endian u16.
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
/// `IPVS_DEST_ATTR_FWD_METHOD`: forwarding method (`IP_VS_CONN_F_*` & 7), u32.
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
/// `IPVS_DEST_ATTR_WEIGHT`: u32 (the kernel's `int`; negative is `ERANGE`).
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
/// `IPVS_DEST_ATTR_U_THRESH`: upper connection threshold, u32.
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
/// `IPVS_DEST_ATTR_L_THRESH`: lower connection threshold, u32.
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
/// `IPVS_DEST_ATTR_ACTIVE_CONNS`: u32, dumps only.
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
/// `IPVS_DEST_ATTR_INACT_CONNS`: u32, dumps only.
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
/// `IPVS_DEST_ATTR_PERSIST_CONNS`: u32, dumps only.
pub const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
/// `IPVS_DEST_ATTR_STATS`: nested 32-bit statistics.
pub const IPVS_DEST_ATTR_STATS: u16 = 10;
/// `IPVS_DEST_ATTR_ADDR_FAMILY`: the destination's own family, u16 (kernel ≥ 4.x; optional).
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
/// `IPVS_DEST_ATTR_STATS64`: nested 64-bit statistics.
pub const IPVS_DEST_ATTR_STATS64: u16 = 12;
/// `IPVS_DEST_ATTR_TUN_TYPE`: tunnel type, u8 (`nla_put_u8`).
pub const IPVS_DEST_ATTR_TUN_TYPE: u16 = 13;
/// `IPVS_DEST_ATTR_TUN_PORT`: tunnel port, big-endian u16.
pub const IPVS_DEST_ATTR_TUN_PORT: u16 = 14;
/// `IPVS_DEST_ATTR_TUN_FLAGS`: tunnel flags, u16.
pub const IPVS_DEST_ATTR_TUN_FLAGS: u16 = 15;

/// `IPVS_STATS_ATTR_CONNS`: connections scheduled (u32 in `STATS`, u64 in `STATS64`).
pub const IPVS_STATS_ATTR_CONNS: u16 = 1;
/// `IPVS_STATS_ATTR_INPKTS`: incoming packets.
pub const IPVS_STATS_ATTR_INPKTS: u16 = 2;
/// `IPVS_STATS_ATTR_OUTPKTS`: outgoing packets.
pub const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
/// `IPVS_STATS_ATTR_INBYTES`: incoming bytes (u64 in both).
pub const IPVS_STATS_ATTR_INBYTES: u16 = 4;
/// `IPVS_STATS_ATTR_OUTBYTES`: outgoing bytes (u64 in both).
pub const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;
/// `IPVS_STATS_ATTR_CPS`: current connection rate.
pub const IPVS_STATS_ATTR_CPS: u16 = 6;
/// `IPVS_STATS_ATTR_INPPS`: current incoming packet rate.
pub const IPVS_STATS_ATTR_INPPS: u16 = 7;
/// `IPVS_STATS_ATTR_OUTPPS`: current outgoing packet rate.
pub const IPVS_STATS_ATTR_OUTPPS: u16 = 8;
/// `IPVS_STATS_ATTR_INBPS`: current incoming byte rate.
pub const IPVS_STATS_ATTR_INBPS: u16 = 9;
/// `IPVS_STATS_ATTR_OUTBPS`: current outgoing byte rate.
pub const IPVS_STATS_ATTR_OUTBPS: u16 = 10;
/// `IPVS_STATS_ATTR_PAD`: alignment padding `nla_put_u64_64bit` may insert; skipped.
pub const IPVS_STATS_ATTR_PAD: u16 = 11;

/// `IP_VS_SVC_F_PERSISTENT`: persistent service (ClientIP session affinity).
pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every hashed service; ignored when comparing.
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling.
pub const IP_VS_SVC_F_ONEPACKET: u32 = 0x0004;
/// `IP_VS_SVC_F_SCHED1`: scheduler flag 1.
pub const IP_VS_SVC_F_SCHED1: u32 = 0x0008;
/// `IP_VS_SVC_F_SCHED2`: scheduler flag 2.
pub const IP_VS_SVC_F_SCHED2: u32 = 0x0010;
/// `IP_VS_SVC_F_SCHED3`: scheduler flag 3.
pub const IP_VS_SVC_F_SCHED3: u32 = 0x0020;
/// `IP_VS_SVC_F_SCHED_SH_FALLBACK` (= `SCHED1`): sh/mh fall back to another server.
pub const IP_VS_SVC_F_SCHED_SH_FALLBACK: u32 = IP_VS_SVC_F_SCHED1;
/// `IP_VS_SVC_F_SCHED_SH_PORT` (= `SCHED2`): sh/mh hash the source port too. Upstream
/// kube-proxy sets it for `mh` (`FlagSourceHash = 0x10`, `pkg/proxy/ipvs/util/ipvs.go`).
pub const IP_VS_SVC_F_SCHED_SH_PORT: u32 = IP_VS_SVC_F_SCHED2;

/// `IP_VS_CONN_F_FWD_MASK`: the forwarding-method bits of a destination's connection flags.
pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
/// `IP_VS_CONN_F_MASQ`: masquerading (NAT), the only method kube-proxy uses.
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
/// `IP_VS_CONN_F_LOCALNODE`: local node.
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
/// `IP_VS_CONN_F_TUNNEL`: tunnelling.
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
/// `IP_VS_CONN_F_DROUTE`: direct routing.
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;

/// `IP_VS_SCHEDNAME_MAXLEN`: the scheduler name's buffer, NUL included.
pub const IP_VS_SCHEDNAME_MAXLEN: usize = 16;

/// `AF_INET` (`linux/socket.h`), the value of `IPVS_SVC_ATTR_AF` for IPv4.
pub const AF_INET: u16 = libc::AF_INET as u16;
/// `AF_INET6` (`linux/socket.h`).
pub const AF_INET6: u16 = libc::AF_INET6 as u16;

/// `IPPROTO_TCP` (`linux/in.h`).
pub const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
/// `IPPROTO_SCTP`.
pub const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

/// The persistence netmask upstream gives IPv4 services (`toIPVSService` in
/// `pkg/proxy/ipvs/util/ipvs_linux.go`; ipvsadm's default `-M 255.255.255.255`).
pub const NETMASK_V4: u32 = 0xffff_ffff;
/// The persistence "netmask" of IPv6 services: a prefix length, 1–128 (`ip_vs_add_service`
/// rejects anything else with `EINVAL`). Sent in host order, as ipvsadm's `NLA_PUT_U32` and
/// moby/ipvs's `nl.Uint32Attr` do; the kernel casts it straight back (`(__force __u32)`).
pub const NETMASK_V6: u32 = 128;

/// `struct ip_vs_flags`: the flags to set and the mask of which ones to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpvsFlags {
    /// The flag values.
    pub flags: u32,
    /// Which flags this message changes; the kernel keeps the others (`ip_vs_genl_parse_service`).
    pub mask: u32,
}

/// A service's or destination's traffic counters (`struct ip_vs_kstats` as dumped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpvsStats {
    /// Connections scheduled.
    pub conns: u64,
    /// Incoming packets.
    pub inpkts: u64,
    /// Outgoing packets.
    pub outpkts: u64,
    /// Incoming bytes.
    pub inbytes: u64,
    /// Outgoing bytes.
    pub outbytes: u64,
    /// Connection rate (per second).
    pub cps: u64,
    /// Incoming packet rate.
    pub inpps: u64,
    /// Outgoing packet rate.
    pub outpps: u64,
    /// Incoming byte rate.
    pub inbps: u64,
    /// Outgoing byte rate.
    pub outbps: u64,
}

/// One counter inside a stats nest, with the width it is put with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatsNla {
    kind: u16,
    value: u64,
    wide: bool,
}

impl Nla for StatsNla {
    fn value_len(&self) -> usize {
        if self.wide { 8 } else { 4 }
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        if self.wide {
            emit_u64(buffer, self.value).expect("8-byte buffer");
        } else {
            // The 32-bit nest truncates, as the kernel's `(u32)kstats->conns` does.
            emit_u32(buffer, self.value as u32).expect("4-byte buffer");
        }
    }
}

impl IpvsStats {
    /// The nest's counters: `STATS` puts bytes as u64 and the rest as u32
    /// (`ip_vs_genl_fill_stats`), `STATS64` everything as u64 (`ip_vs_genl_fill_stats64`).
    fn nlas(&self, all_wide: bool) -> [StatsNla; 10] {
        let n = |kind, value, wide| StatsNla {
            kind,
            value,
            wide: wide || all_wide,
        };
        [
            n(IPVS_STATS_ATTR_CONNS, self.conns, false),
            n(IPVS_STATS_ATTR_INPKTS, self.inpkts, false),
            n(IPVS_STATS_ATTR_OUTPKTS, self.outpkts, false),
            n(IPVS_STATS_ATTR_INBYTES, self.inbytes, true),
            n(IPVS_STATS_ATTR_OUTBYTES, self.outbytes, true),
            n(IPVS_STATS_ATTR_CPS, self.cps, false),
            n(IPVS_STATS_ATTR_INPPS, self.inpps, false),
            n(IPVS_STATS_ATTR_OUTPPS, self.outpps, false),
            n(IPVS_STATS_ATTR_INBPS, self.inbps, false),
            n(IPVS_STATS_ATTR_OUTBPS, self.outbps, false),
        ]
    }

    fn nest_len(&self, all_wide: bool) -> usize {
        self.nlas(all_wide).as_slice().buffer_len()
    }

    fn emit_nest(&self, all_wide: bool, buffer: &mut [u8]) {
        self.nlas(all_wide).as_slice().emit(buffer)
    }

    /// Parses a stats nest. Each counter may be 4 or 8 bytes wide (so both nests parse the
    /// same way); padding and unknown counters are skipped.
    fn parse_nest(payload: &[u8]) -> Result<IpvsStats, DecodeError> {
        let mut s = IpvsStats::default();
        for nla in NlasIterator::new(payload) {
            let nla = nla.context("malformed IPVS stats attribute")?;
            let v = nla.value();
            let value = match v.len() {
                4 => u64::from(parse_u32(v)?),
                8 => parse_u64(v)?,
                // Statistics are informational: a counter of a width this code does not know
                // (a newer kernel) is skipped rather than failing the whole dump.
                _ => continue,
            };
            match nla.kind() {
                IPVS_STATS_ATTR_CONNS => s.conns = value,
                IPVS_STATS_ATTR_INPKTS => s.inpkts = value,
                IPVS_STATS_ATTR_OUTPKTS => s.outpkts = value,
                IPVS_STATS_ATTR_INBYTES => s.inbytes = value,
                IPVS_STATS_ATTR_OUTBYTES => s.outbytes = value,
                IPVS_STATS_ATTR_CPS => s.cps = value,
                IPVS_STATS_ATTR_INPPS => s.inpps = value,
                IPVS_STATS_ATTR_OUTPPS => s.outpps = value,
                IPVS_STATS_ATTR_INBPS => s.inbps = value,
                IPVS_STATS_ATTR_OUTBPS => s.outbps = value,
                _ => {}
            }
        }
        Ok(s)
    }
}

/// `union nf_inet_addr` as a value: 16 bytes, an IPv4 address in the first four. Shorter
/// attributes are zero-extended, as the kernel's `nla_memcpy` into a zeroed union does.
fn parse_inet_addr(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    if v.len() > 16 {
        return Err(DecodeError::invalid_ip_address(v.len()));
    }
    let mut a = [0u8; 16];
    a[..v.len()].copy_from_slice(v);
    Ok(a)
}

/// A NUL-terminated string: the terminator is part of the attribute (`nla_put_string`).
fn parse_cstring(v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).map_err(DecodeError::from)
}

fn emit_cstring(buffer: &mut [u8], s: &str) {
    buffer[..s.len()].copy_from_slice(s.as_bytes());
    buffer[s.len()] = 0;
}

fn parse_flags(v: &[u8]) -> Result<IpvsFlags, DecodeError> {
    if v.len() != 8 {
        return Err(DecodeError::invalid_number(8, v.len()));
    }
    Ok(IpvsFlags {
        flags: parse_u32(&v[..4])?,
        mask: parse_u32(&v[4..])?,
    })
}

/// An attribute inside `IPVS_CMD_ATTR_SERVICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    /// `IPVS_SVC_ATTR_AF`.
    Af(u16),
    /// `IPVS_SVC_ATTR_PROTOCOL`.
    Protocol(u16),
    /// `IPVS_SVC_ATTR_ADDR`.
    Addr([u8; 16]),
    /// `IPVS_SVC_ATTR_PORT`, in host order here (big-endian on the wire).
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK`.
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`.
    SchedName(String),
    /// `IPVS_SVC_ATTR_FLAGS`.
    Flags(IpvsFlags),
    /// `IPVS_SVC_ATTR_TIMEOUT`.
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`.
    Netmask(u32),
    /// `IPVS_SVC_ATTR_STATS`.
    Stats(IpvsStats),
    /// `IPVS_SVC_ATTR_PE_NAME`.
    PeName(String),
    /// `IPVS_SVC_ATTR_STATS64`.
    Stats64(IpvsStats),
    /// Anything else, kept as is.
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => s.len() + 1,
            SvcAttr::Flags(_) => 8,
            SvcAttr::Stats(s) => s.nest_len(false),
            SvcAttr::Stats64(s) => s.nest_len(true),
            SvcAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => IPVS_SVC_ATTR_AF,
            SvcAttr::Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => IPVS_SVC_ATTR_ADDR,
            SvcAttr::Port(_) => IPVS_SVC_ATTR_PORT,
            SvcAttr::Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SvcAttr::SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags(_) => IPVS_SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            SvcAttr::Stats(_) => IPVS_SVC_ATTR_STATS,
            SvcAttr::PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            SvcAttr::Stats64(_) => IPVS_SVC_ATTR_STATS64,
            SvcAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buffer, *v).expect("sized"),
            SvcAttr::Port(v) => emit_u16_be(buffer, *v).expect("sized"),
            SvcAttr::Addr(a) => buffer.copy_from_slice(a),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                emit_u32(buffer, *v).expect("sized")
            }
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => emit_cstring(buffer, s),
            SvcAttr::Flags(f) => {
                emit_u32(&mut buffer[..4], f.flags).expect("sized");
                emit_u32(&mut buffer[4..], f.mask).expect("sized");
            }
            SvcAttr::Stats(s) => s.emit_nest(false, buffer),
            SvcAttr::Stats64(s) => s.emit_nest(true, buffer),
            SvcAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            IPVS_SVC_ATTR_AF => SvcAttr::Af(parse_u16(v).context("IPVS_SVC_ATTR_AF")?),
            IPVS_SVC_ATTR_PROTOCOL => {
                SvcAttr::Protocol(parse_u16(v).context("IPVS_SVC_ATTR_PROTOCOL")?)
            }
            IPVS_SVC_ATTR_ADDR => SvcAttr::Addr(parse_inet_addr(v).context("IPVS_SVC_ATTR_ADDR")?),
            IPVS_SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(v).context("IPVS_SVC_ATTR_PORT")?),
            IPVS_SVC_ATTR_FWMARK => SvcAttr::Fwmark(parse_u32(v).context("IPVS_SVC_ATTR_FWMARK")?),
            IPVS_SVC_ATTR_SCHED_NAME => {
                SvcAttr::SchedName(parse_cstring(v).context("IPVS_SVC_ATTR_SCHED_NAME")?)
            }
            IPVS_SVC_ATTR_FLAGS => SvcAttr::Flags(parse_flags(v).context("IPVS_SVC_ATTR_FLAGS")?),
            IPVS_SVC_ATTR_TIMEOUT => {
                SvcAttr::Timeout(parse_u32(v).context("IPVS_SVC_ATTR_TIMEOUT")?)
            }
            IPVS_SVC_ATTR_NETMASK => {
                SvcAttr::Netmask(parse_u32(v).context("IPVS_SVC_ATTR_NETMASK")?)
            }
            IPVS_SVC_ATTR_STATS => {
                SvcAttr::Stats(IpvsStats::parse_nest(v).context("IPVS_SVC_ATTR_STATS")?)
            }
            IPVS_SVC_ATTR_PE_NAME => {
                SvcAttr::PeName(parse_cstring(v).context("IPVS_SVC_ATTR_PE_NAME")?)
            }
            IPVS_SVC_ATTR_STATS64 => {
                SvcAttr::Stats64(IpvsStats::parse_nest(v).context("IPVS_SVC_ATTR_STATS64")?)
            }
            _ => SvcAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// An attribute inside `IPVS_CMD_ATTR_DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    /// `IPVS_DEST_ATTR_ADDR`.
    Addr([u8; 16]),
    /// `IPVS_DEST_ATTR_PORT`, in host order here (big-endian on the wire).
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD`.
    FwdMethod(u32),
    /// `IPVS_DEST_ATTR_WEIGHT`.
    Weight(u32),
    /// `IPVS_DEST_ATTR_U_THRESH`.
    UpperThreshold(u32),
    /// `IPVS_DEST_ATTR_L_THRESH`.
    LowerThreshold(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS`.
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS`.
    InactiveConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS`.
    PersistConns(u32),
    /// `IPVS_DEST_ATTR_STATS`.
    Stats(IpvsStats),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY`.
    AddrFamily(u16),
    /// `IPVS_DEST_ATTR_STATS64`.
    Stats64(IpvsStats),
    /// `IPVS_DEST_ATTR_TUN_TYPE`.
    TunType(u8),
    /// `IPVS_DEST_ATTR_TUN_PORT`, in host order here (big-endian on the wire).
    TunPort(u16),
    /// `IPVS_DEST_ATTR_TUN_FLAGS`.
    TunFlags(u16),
    /// Anything else, kept as is.
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) | DestAttr::TunPort(_) => 2,
            DestAttr::TunFlags(_) => 2,
            DestAttr::TunType(_) => 1,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UpperThreshold(_)
            | DestAttr::LowerThreshold(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactiveConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Stats(s) => s.nest_len(false),
            DestAttr::Stats64(s) => s.nest_len(true),
            DestAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => IPVS_DEST_ATTR_ADDR,
            DestAttr::Port(_) => IPVS_DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            DestAttr::UpperThreshold(_) => IPVS_DEST_ATTR_U_THRESH,
            DestAttr::LowerThreshold(_) => IPVS_DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactiveConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            DestAttr::PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            DestAttr::Stats(_) => IPVS_DEST_ATTR_STATS,
            DestAttr::AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            DestAttr::Stats64(_) => IPVS_DEST_ATTR_STATS64,
            DestAttr::TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            DestAttr::TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            DestAttr::TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buffer.copy_from_slice(a),
            DestAttr::Port(v) | DestAttr::TunPort(v) => emit_u16_be(buffer, *v).expect("sized"),
            DestAttr::AddrFamily(v) | DestAttr::TunFlags(v) => emit_u16(buffer, *v).expect("sized"),
            DestAttr::TunType(v) => buffer[0] = *v,
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistConns(v) => emit_u32(buffer, *v).expect("sized"),
            DestAttr::Stats(s) => s.emit_nest(false, buffer),
            DestAttr::Stats64(s) => s.emit_nest(true, buffer),
            DestAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        let u32_of = |name: &str| parse_u32(v).context(format!("IPVS_DEST_ATTR_{name}"));
        Ok(match buf.kind() {
            IPVS_DEST_ATTR_ADDR => {
                DestAttr::Addr(parse_inet_addr(v).context("IPVS_DEST_ATTR_ADDR")?)
            }
            IPVS_DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v).context("IPVS_DEST_ATTR_PORT")?),
            IPVS_DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(u32_of("FWD_METHOD")?),
            IPVS_DEST_ATTR_WEIGHT => DestAttr::Weight(u32_of("WEIGHT")?),
            IPVS_DEST_ATTR_U_THRESH => DestAttr::UpperThreshold(u32_of("U_THRESH")?),
            IPVS_DEST_ATTR_L_THRESH => DestAttr::LowerThreshold(u32_of("L_THRESH")?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(u32_of("ACTIVE_CONNS")?),
            IPVS_DEST_ATTR_INACT_CONNS => DestAttr::InactiveConns(u32_of("INACT_CONNS")?),
            IPVS_DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(u32_of("PERSIST_CONNS")?),
            IPVS_DEST_ATTR_STATS => {
                DestAttr::Stats(IpvsStats::parse_nest(v).context("IPVS_DEST_ATTR_STATS")?)
            }
            IPVS_DEST_ATTR_ADDR_FAMILY => {
                DestAttr::AddrFamily(parse_u16(v).context("IPVS_DEST_ATTR_ADDR_FAMILY")?)
            }
            IPVS_DEST_ATTR_STATS64 => {
                DestAttr::Stats64(IpvsStats::parse_nest(v).context("IPVS_DEST_ATTR_STATS64")?)
            }
            IPVS_DEST_ATTR_TUN_TYPE => {
                DestAttr::TunType(parse_u8(v).context("IPVS_DEST_ATTR_TUN_TYPE")?)
            }
            IPVS_DEST_ATTR_TUN_PORT => {
                DestAttr::TunPort(parse_u16_be(v).context("IPVS_DEST_ATTR_TUN_PORT")?)
            }
            IPVS_DEST_ATTR_TUN_FLAGS => {
                DestAttr::TunFlags(parse_u16(v).context("IPVS_DEST_ATTR_TUN_FLAGS")?)
            }
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// A first-level attribute of an IPVS command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsCmdAttr {
    /// `IPVS_CMD_ATTR_SERVICE`.
    Service(Vec<SvcAttr>),
    /// `IPVS_CMD_ATTR_DEST`.
    Dest(Vec<DestAttr>),
    /// Anything else (daemon, timeouts), kept as is.
    Other(DefaultNla),
}

impl Nla for IpvsCmdAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsCmdAttr::Service(a) => a.as_slice().buffer_len(),
            IpvsCmdAttr::Dest(a) => a.as_slice().buffer_len(),
            IpvsCmdAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            IpvsCmdAttr::Service(_) => IPVS_CMD_ATTR_SERVICE,
            IpvsCmdAttr::Dest(_) => IPVS_CMD_ATTR_DEST,
            IpvsCmdAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            IpvsCmdAttr::Service(a) => a.as_slice().emit(buffer),
            IpvsCmdAttr::Dest(a) => a.as_slice().emit(buffer),
            IpvsCmdAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

/// Parses every attribute in `payload` with `parse`.
fn parse_all<'a, A>(payload: &'a [u8]) -> Result<Vec<A>, DecodeError>
where
    A: Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(payload)
        .map(|nla| nla.and_then(|nla| A::parse(&nla)))
        .collect()
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for IpvsCmdAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        Ok(match buf.kind() {
            IPVS_CMD_ATTR_SERVICE => IpvsCmdAttr::Service(
                parse_all::<SvcAttr>(buf.value()).context("IPVS_CMD_ATTR_SERVICE")?,
            ),
            IPVS_CMD_ATTR_DEST => {
                IpvsCmdAttr::Dest(parse_all::<DestAttr>(buf.value()).context("IPVS_CMD_ATTR_DEST")?)
            }
            _ => IpvsCmdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// Parses a command's attribute stream (the generic-netlink payload after the header).
pub fn parse_cmd_attrs(payload: &[u8]) -> Result<Vec<IpvsCmdAttr>, DecodeError> {
    parse_all::<IpvsCmdAttr>(payload)
}
