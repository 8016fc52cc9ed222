//! Services and destinations as the kernel holds them, and their attribute encodings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::DecodeError;
use rulegen::model::Protocol;

use super::attrs::{
    AF_INET, AF_INET6, DestAttr, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_HASHED,
    IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IpvsFlags, IpvsStats, NETMASK_V4, NETMASK_V6, SvcAttr,
};

/// The protocol number IPVS uses for `p`.
pub fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// The protocol a number stands for, if it is one kube-proxy uses.
pub fn protocol_of(n: u16) -> Option<Protocol> {
    match n {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The `AF_*` value of an address.
pub fn family_of(addr: &IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// An address as `union nf_inet_addr`: IPv4 in the first four bytes, the rest zero.
pub fn inet_addr_bytes(addr: &IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address of family `af` in a `union nf_inet_addr`.
pub fn inet_addr_from(af: u16, b: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match af {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*b))),
        other => Err(DecodeError::from(format!("unknown address family {other}"))),
    }
}

/// What identifies a virtual service kube-proxy manages: protocol, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The virtual address.
    pub addr: IpAddr,
    /// The virtual port.
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol.as_str().to_uppercase(),
            AddrPort(self.addr, self.port)
        )
    }
}

/// `IP:port`, `[IP]:port` for IPv6.
#[derive(Debug, Clone, Copy)]
pub struct AddrPort(pub IpAddr, pub u16);

impl fmt::Display for AddrPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// A virtual service: the kernel's `struct ip_vs_service` as userspace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsService {
    /// IP protocol number (meaningless for a fwmark service).
    pub protocol: u16,
    /// The virtual address; its family is the service's (`IPVS_SVC_ATTR_AF`). Unspecified for a
    /// fwmark service.
    pub addr: IpAddr,
    /// The virtual port.
    pub port: u16,
    /// The firewall mark of a fwmark service; 0 for an address service.
    pub fwmark: u32,
    /// The scheduler (`rr`, `wrr`, `lc`, `sh`, `mh`, …).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags (as dumped: including [`IP_VS_SVC_F_HASHED`]).
    pub flags: u32,
    /// Persistence timeout in seconds (0 when not persistent).
    pub timeout: u32,
    /// Persistence netmask ([`NETMASK_V4`] or a prefix length for IPv6).
    pub netmask: u32,
    /// The persistence engine, if any (`sip`).
    pub pe_name: Option<String>,
    /// Counters, in dumps (64-bit ones preferred).
    pub stats: Option<IpvsStats>,
}

impl IpvsService {
    /// An address service kube-proxy would create: the given scheduler, flags and timeout,
    /// upstream's netmask for the family, no persistence engine.
    pub fn new(
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
        scheduler: &str,
        flags: u32,
        timeout: u32,
    ) -> IpvsService {
        IpvsService {
            protocol: protocol_number(protocol),
            addr,
            port,
            fwmark: 0,
            scheduler: scheduler.to_string(),
            flags,
            timeout,
            netmask: match addr {
                IpAddr::V4(_) => NETMASK_V4,
                IpAddr::V6(_) => NETMASK_V6,
            },
            pe_name: None,
            stats: None,
        }
    }

    /// Its key, if it is an address service of TCP, UDP or SCTP (fwmark services and other
    /// protocols are never kube-proxy's).
    pub fn key(&self) -> Option<ServiceKey> {
        if self.fwmark != 0 {
            return None;
        }
        Some(ServiceKey {
            protocol: protocol_of(self.protocol)?,
            addr: self.addr,
            port: self.port,
        })
    }

    /// Its flags without the kernel-owned [`IP_VS_SVC_F_HASHED`].
    pub fn user_flags(&self) -> u32 {
        self.flags & !IP_VS_SVC_F_HASHED
    }

    /// Its attributes as a request carries them: the order and set ipvsadm's
    /// `ipvs_nl_fill_service_attr` sends (the kernel needs all of them for NEW and SET; for the
    /// other commands it reads only the identifying ones). The flags go with a full mask, so the
    /// kernel's flags become exactly ours.
    pub fn to_attrs(&self) -> Vec<SvcAttr> {
        let mut a = Vec::with_capacity(9);
        a.push(SvcAttr::Af(family_of(&self.addr)));
        if self.fwmark != 0 {
            a.push(SvcAttr::Fwmark(self.fwmark));
        } else {
            a.push(SvcAttr::Protocol(self.protocol));
            a.push(SvcAttr::Addr(inet_addr_bytes(&self.addr)));
            a.push(SvcAttr::Port(self.port));
        }
        a.push(SvcAttr::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.pe_name {
            a.push(SvcAttr::PeName(pe.clone()));
        }
        a.push(SvcAttr::Flags(IpvsFlags {
            flags: self.flags,
            mask: !0,
        }));
        a.push(SvcAttr::Timeout(self.timeout));
        a.push(SvcAttr::Netmask(self.netmask));
        a
    }

    /// The attributes of a dumped service, as the kernel's `ip_vs_genl_fill_service` puts them
    /// (stats included), for the fake peer and the tests.
    pub fn to_dump_attrs(&self) -> Vec<SvcAttr> {
        // The kernel reports its flags with a full mask, as `to_attrs` sends ours.
        let mut a = self.to_attrs();
        if let Some(s) = self.stats {
            a.push(SvcAttr::Stats(s));
            a.push(SvcAttr::Stats64(s));
        }
        a
    }

    /// A service from its attributes. The family and either the fwmark or the
    /// protocol-address-port triple are required (as in `ip_vs_genl_parse_service`); the rest
    /// default to empty or zero when missing.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<IpvsService, DecodeError> {
        let mut af = None;
        let mut protocol = None;
        let mut addr = None;
        let mut port = None;
        let mut fwmark = 0;
        let mut svc = IpvsService {
            protocol: 0,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            fwmark: 0,
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
            netmask: 0,
            pe_name: None,
            stats: None,
        };
        let mut stats32 = None;
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => protocol = Some(*v),
                SvcAttr::Addr(v) => addr = Some(*v),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Fwmark(v) => fwmark = *v,
                SvcAttr::SchedName(s) => svc.scheduler = s.clone(),
                // As ipvsadm reads it: `flags.flags & flags.mask`.
                SvcAttr::Flags(f) => svc.flags = f.flags & f.mask,
                SvcAttr::Timeout(v) => svc.timeout = *v,
                SvcAttr::Netmask(v) => svc.netmask = *v,
                SvcAttr::PeName(s) => svc.pe_name = Some(s.clone()),
                SvcAttr::Stats(s) => stats32 = Some(*s),
                SvcAttr::Stats64(s) => svc.stats = Some(*s),
                SvcAttr::Other(_) => {}
            }
        }
        let af = af.ok_or_else(|| DecodeError::from("service without IPVS_SVC_ATTR_AF"))?;
        svc.stats = svc.stats.or(stats32);
        if fwmark != 0 {
            svc.fwmark = fwmark;
            svc.addr = inet_addr_from(af, &[0; 16])?;
            return Ok(svc);
        }
        match (protocol, addr, port) {
            (Some(p), Some(a), Some(port)) => {
                svc.protocol = p;
                svc.addr = inet_addr_from(af, &a)?;
                svc.port = port;
                Ok(svc)
            }
            _ => Err(DecodeError::from(
                "service without a fwmark or a protocol, address and port",
            )),
        }
    }
}

impl fmt::Display for IpvsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fwmark != 0 {
            return write!(f, "FWM {}", self.fwmark);
        }
        match protocol_of(self.protocol) {
            Some(p) => write!(f, "{}", p.as_str().to_uppercase())?,
            None => write!(f, "proto {}", self.protocol)?,
        }
        write!(f, " {}", AddrPort(self.addr, self.port))
    }
}

/// A destination (real server) of a service: the kernel's `struct ip_vs_dest` as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsDest {
    /// Its address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// Forwarding method, `IP_VS_CONN_F_*` & [`IP_VS_CONN_F_FWD_MASK`].
    pub fwd_method: u32,
    /// Its weight (0: no new connections).
    pub weight: u32,
    /// Upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// Lower connection threshold.
    pub lower_threshold: u32,
    /// Active (established) connections, in dumps.
    pub active_conns: u32,
    /// Inactive connections, in dumps.
    pub inactive_conns: u32,
    /// Persistence templates, in dumps.
    pub persist_conns: u32,
    /// Counters, in dumps (64-bit ones preferred).
    pub stats: Option<IpvsStats>,
}

impl IpvsDest {
    /// A masquerading destination with `weight` and no thresholds, as kube-proxy creates them.
    pub fn masq(addr: IpAddr, port: u16, weight: u32) -> IpvsDest {
        IpvsDest {
            addr,
            port,
            fwd_method: IP_VS_CONN_F_MASQ,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persist_conns: 0,
            stats: None,
        }
    }

    /// `ActiveConn + InactiveConn`, the count upstream's graceful termination waits on.
    pub fn connections(&self) -> u64 {
        u64::from(self.active_conns) + u64::from(self.inactive_conns)
    }

    /// Its attributes as a request carries them, in ipvsadm's `ipvs_nl_fill_dest_attr` order.
    pub fn to_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(family_of(&self.addr)),
            DestAttr::Addr(inet_addr_bytes(&self.addr)),
            DestAttr::Port(self.port),
            DestAttr::FwdMethod(self.fwd_method & IP_VS_CONN_F_FWD_MASK),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(self.upper_threshold),
            DestAttr::LowerThreshold(self.lower_threshold),
        ]
    }

    /// The attributes of a dumped destination, in `ip_vs_genl_fill_dest`'s order, for the fake
    /// peer and the tests.
    pub fn to_dump_attrs(&self) -> Vec<DestAttr> {
        let mut a = vec![
            DestAttr::Addr(inet_addr_bytes(&self.addr)),
            DestAttr::Port(self.port),
            DestAttr::FwdMethod(self.fwd_method & IP_VS_CONN_F_FWD_MASK),
            DestAttr::Weight(self.weight),
            DestAttr::TunType(0),
            DestAttr::TunPort(0),
            DestAttr::TunFlags(0),
            DestAttr::UpperThreshold(self.upper_threshold),
            DestAttr::LowerThreshold(self.lower_threshold),
            DestAttr::ActiveConns(self.active_conns),
            DestAttr::InactiveConns(self.inactive_conns),
            DestAttr::PersistConns(self.persist_conns),
            DestAttr::AddrFamily(family_of(&self.addr)),
        ];
        if let Some(s) = self.stats {
            a.push(DestAttr::Stats(s));
            a.push(DestAttr::Stats64(s));
        }
        a
    }

    /// A destination from its attributes; `service_af` is the family to read the address in
    /// when `IPVS_DEST_ATTR_ADDR_FAMILY` is absent (older kernels), as ipvsadm does.
    pub fn from_attrs(attrs: &[DestAttr], service_af: u16) -> Result<IpvsDest, DecodeError> {
        let mut af = service_af;
        let mut addr = None;
        let mut port = None;
        let mut d = IpvsDest::masq(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0);
        let mut stats32 = None;
        for a in attrs {
            match a {
                DestAttr::Addr(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::FwdMethod(v) => d.fwd_method = *v & IP_VS_CONN_F_FWD_MASK,
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::UpperThreshold(v) => d.upper_threshold = *v,
                DestAttr::LowerThreshold(v) => d.lower_threshold = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactiveConns(v) => d.inactive_conns = *v,
                DestAttr::PersistConns(v) => d.persist_conns = *v,
                DestAttr::Stats(s) => stats32 = Some(*s),
                DestAttr::Stats64(s) => d.stats = Some(*s),
                DestAttr::AddrFamily(v) => af = *v,
                DestAttr::TunType(_)
                | DestAttr::TunPort(_)
                | DestAttr::TunFlags(_)
                | DestAttr::Other(_) => {}
            }
        }
        d.stats = d.stats.or(stats32);
        match (addr, port) {
            (Some(a), Some(p)) => {
                d.addr = inet_addr_from(af, &a)?;
                d.port = p;
                Ok(d)
            }
            _ => Err(DecodeError::from("destination without an address and port")),
        }
    }

    /// ipvsadm's forwarding option for the method: `-m`, `-g`, `-i`, or `-l` (local).
    pub fn fwd_flag(&self) -> &'static str {
        match self.fwd_method & IP_VS_CONN_F_FWD_MASK {
            IP_VS_CONN_F_MASQ => "-m",
            IP_VS_CONN_F_DROUTE => "-g",
            IP_VS_CONN_F_TUNNEL => "-i",
            IP_VS_CONN_F_LOCALNODE => "-l",
            _ => "-?",
        }
    }
}

impl fmt::Display for IpvsDest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", AddrPort(self.addr, self.port))
    }
}
