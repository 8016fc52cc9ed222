//! Chain names: the fixed ones kube-proxy owns and the hashed per-service ones.

use std::cmp::Ordering;
use std::fmt;

use crate::model::{Protocol, ServicePortName};
use crate::render::iptables::hash::{EndpointHasher, endpoint_hash, service_port_hash};

/// The longest chain name the kernel accepts.
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// An iptables chain name (1 to 28 printable ASCII characters, as the kernel requires).
///
/// Stored inline and compared as two integers: a 10,000-Service ruleset has 100,000+ chains, and
/// allocating and `memcmp`-sorting them dominated rendering time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainName {
    // Zero-padded, so ordering the padded bytes is ordering the names.
    bytes: [u8; 32],
    len: u8,
}

impl ChainName {
    /// The name `s`, or `None` if it is empty, longer than 28 bytes, or has a space or control byte.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > MAX_CHAIN_NAME_LEN || !b.iter().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        Some(Self::from_valid(&[b]))
    }

    /// The name `s`; panics on an invalid name (for the fixed names this crate writes).
    pub fn new(s: &str) -> Self {
        Self::parse(s).unwrap_or_else(|| panic!("invalid chain name {s:?}"))
    }

    /// Joins already-valid pieces (prefix + hash) without checking them again.
    pub(crate) fn from_valid(parts: &[&[u8]]) -> Self {
        debug_assert!(parts.iter().all(|p| p.iter().all(|c| c.is_ascii_graphic())));
        let mut bytes = [0u8; 32];
        let mut len = 0;
        for p in parts {
            bytes[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        debug_assert!(len <= MAX_CHAIN_NAME_LEN);
        ChainName {
            bytes,
            len: len as u8,
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor only stores printable ASCII (checked in `parse`, constant
        // prefixes and base32 digits in `from_valid`), so the bytes are valid UTF-8. The checked
        // conversion showed up as 6% of rendering time.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[..self.len as usize]) }
    }

    /// An integer key whose order is the names' byte order (cheaper to sort by than the names).
    pub fn sort_key(&self) -> (u128, u128) {
        let mut hi = [0u8; 16];
        let mut lo = [0u8; 16];
        hi.copy_from_slice(&self.bytes[..16]);
        lo.copy_from_slice(&self.bytes[16..]);
        (u128::from_be_bytes(hi), u128::from_be_bytes(lo))
    }
}

impl Ord for ChainName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for ChainName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl AsRef<str> for ChainName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// nat and filter: dispatch on service addresses.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// nat: dispatch on node ports; filter: accept health-check node ports.
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// nat: masquerade marked packets.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: set the masquerade mark.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: reject or drop external destinations with no usable endpoints.
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter: drop INVALID, accept marked and established forwarded traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter: drop load-balancer traffic the KUBE-FW chains did not accept.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: kubelet's martian drop for localhost node ports (route_localnet mitigation).
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// mangle, filter and nat: an empty chain whose disappearance shows the tables were flushed.
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// Prefixes of the per-service chains this proxy owns (used to find stale ones).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The hashed chain names of one service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceChains {
    /// `KUBE-SVC-*`: Cluster-policy endpoint selection.
    pub svc: ChainName,
    /// `KUBE-SVL-*`: Local-policy endpoint selection.
    pub svl: ChainName,
    /// `KUBE-EXT-*`: external destinations.
    pub ext: ChainName,
    /// `KUBE-FW-*`: load-balancer source ranges.
    pub fw: ChainName,
}

impl ServiceChains {
    /// The four chain names of `name`/`protocol`.
    pub fn new(name: &ServicePortName, protocol: Protocol) -> Self {
        let h = service_port_hash(name, protocol);
        ServiceChains {
            svc: ChainName::from_valid(&[b"KUBE-SVC-", &h]),
            svl: ChainName::from_valid(&[b"KUBE-SVL-", &h]),
            ext: ChainName::from_valid(&[b"KUBE-EXT-", &h]),
            fw: ChainName::from_valid(&[b"KUBE-FW-", &h]),
        }
    }
}

/// `KUBE-SEP-*` of one endpoint (`IP:port` or `[IP]:port`) of a service port.
pub fn endpoint_chain(name: &ServicePortName, protocol: Protocol, endpoint: &str) -> ChainName {
    ChainName::from_valid(&[b"KUBE-SEP-", &endpoint_hash(name, protocol, endpoint)])
}

/// `KUBE-SEP-*` of `endpoint` with a prepared [`EndpointHasher`] (the renderer's fast path).
pub fn endpoint_chain_with(hasher: &EndpointHasher, endpoint: &str) -> ChainName {
    ChainName::from_valid(&[b"KUBE-SEP-", &hasher.hash(endpoint)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_follow_upstream() {
        let n = ServicePortName::new("ns1", "svc1", "p80");
        let c = ServiceChains::new(&n, Protocol::Tcp);
        assert_eq!(c.svc.as_str(), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(c.ext.as_str(), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(c.fw.as_str(), "KUBE-FW-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&n, Protocol::Tcp, "10.180.0.1:80").as_str(),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn ordering_is_byte_order() {
        let mut names: Vec<ChainName> = [
            "KUBE-SVC-B",
            "KUBE-SEP-Z",
            "KUBE-FW-A",
            "KUBE-SERVICES",
            "A",
            "KUBE-SVC-A",
        ]
        .iter()
        .map(|s| ChainName::new(s))
        .collect();
        names.sort();
        let mut strs: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let mut expected = strs.clone();
        expected.sort();
        assert_eq!(strs, expected);
        strs.dedup();
        assert_eq!(strs.len(), 6);
    }

    #[test]
    fn invalid_names_are_refused() {
        assert!(ChainName::parse("").is_none());
        assert!(ChainName::parse("A-NAME-THAT-IS-FAR-TOO-LONG-X").is_none());
        assert!(ChainName::parse("has space").is_none());
        assert!(ChainName::parse("KUBE-SVC-XPGD46QRK7WJZT7O").is_some());
    }
}
