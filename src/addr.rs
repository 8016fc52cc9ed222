//! IP and CIDR parsing with the leniency of Kubernetes' `netutils.ParseIPSloppy`/`ParseCIDRSloppy`.
//!
//! Objects stored before Go 1.17 may hold IPv4 octets with leading zeros (`172.30.0.041`). Go used
//! to read those as decimal and Kubernetes keeps doing so for compatibility, so we must too; the
//! result is printed canonically (`172.30.0.41`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Parses an IP address like `ParseIPSloppy`: decimal IPv4 octets may carry leading zeros.
///
/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) comes back as IPv4, as Go's `To4()` treats it.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(s) {
        return Some(IpAddr::V4(v4));
    }
    // Go's parser accepts no zone and no brackets; neither does std's.
    let v6: Ipv6Addr = s.parse().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Parses a CIDR like `ParseCIDRSloppy` and returns its network (host bits cleared), as Go does.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    // Go's dtoi: decimal digits only, no sign; bound the length so parsing cannot overflow.
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    // Unlike a single IP, a mapped IPv6 CIDR stays IPv6 in Go (its mask is 16 bytes long).
    let ip = match parse_ipv4_sloppy(addr) {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(addr.parse().ok()?),
    };
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

/// Four dot-separated decimal octets, leading zeros allowed, each at most 255.
fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros are what makes this sloppy; strip them so long runs cannot overflow.
        let digits = part.trim_start_matches('0');
        if digits.len() > 3 {
            return None;
        }
        let value: u16 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        *octet = u8::try_from(value).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<String> {
        parse_ip_sloppy(s).map(|i| i.to_string())
    }

    fn cidr(s: &str) -> Option<String> {
        parse_cidr_sloppy(s).map(|n| n.to_string())
    }

    #[test]
    fn ipv4_leading_zeros_are_decimal_and_canonicalised() {
        assert_eq!(ip("172.30.0.041").as_deref(), Some("172.30.0.41"));
        assert_eq!(ip("010.096.000.010").as_deref(), Some("10.96.0.10"));
        assert_eq!(ip("10.96.0.0001").as_deref(), Some("10.96.0.1"));
    }

    #[test]
    fn invalid_ipv4_is_rejected() {
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.256",
            "1.2..4",
            "1.2.3.-4",
            " 1.2.3.4",
            "1.2.3.4 ",
            "",
            "a.b.c.d",
            "None",
        ] {
            assert_eq!(ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        assert_eq!(ip("fd00:10:96::1").as_deref(), Some("fd00:10:96::1"));
        assert_eq!(ip("FD00:0010:0096::0001").as_deref(), Some("fd00:10:96::1"));
        assert_eq!(ip("::ffff:10.96.0.1").as_deref(), Some("10.96.0.1"));
        assert_eq!(ip("fe80::1%eth0"), None);
        assert_eq!(ip("[::1]"), None);
    }

    #[test]
    fn cidrs_are_masked_and_sloppy() {
        assert_eq!(cidr("172.30.0.041/24").as_deref(), Some("172.30.0.0/24"));
        assert_eq!(cidr("10.244.1.7/16").as_deref(), Some("10.244.0.0/16"));
        assert_eq!(cidr("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(
            cidr("fd00:10:244::5/64").as_deref(),
            Some("fd00:10:244::/64")
        );
        assert_eq!(cidr("10.0.0.0/08").as_deref(), Some("10.0.0.0/8"));
    }

    #[test]
    fn invalid_cidrs_are_rejected() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "fd00::/129",
            "10.0.0/8",
            "/8",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(cidr(bad), None, "{bad:?}");
        }
    }
}
