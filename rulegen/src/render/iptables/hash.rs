//! Chain-name hashing, bit-for-bit as upstream kube-proxy does it, so a node can be taken over
//! from kube-proxy without renaming a single chain.

use sha2::{Digest, Sha256};

use crate::model::{Protocol, ServicePortName};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first 16 characters of base32(`digest`), RFC 4648 upper-case alphabet.
fn base32_16(digest: &[u8]) -> [u8; 16] {
    // 10 bytes are exactly 16 base32 characters, so only those need encoding.
    let mut out = [0u8; 16];
    for (group, chunk) in digest[..10].chunks(5).enumerate() {
        let mut v: u64 = 0;
        for b in chunk {
            v = (v << 8) | *b as u64;
        }
        for i in 0..8 {
            out[group * 8 + i] = BASE32[((v >> (35 - 5 * i)) & 31) as usize];
        }
    }
    out
}

fn hasher(name: &ServicePortName, protocol: Protocol) -> Sha256 {
    // Same bytes as upstream's `servicePortName.String() + protocol`, without building the string.
    let mut h = Sha256::new();
    h.update(name.namespace.as_bytes());
    h.update(b"/");
    h.update(name.name.as_bytes());
    if !name.port.is_empty() {
        h.update(b":");
        h.update(name.port.as_bytes());
    }
    h.update(protocol.as_str().as_bytes());
    h
}

/// The 16-character hash shared by a service port's SVC, SVL, EXT and FW chains.
pub fn service_port_hash(name: &ServicePortName, protocol: Protocol) -> [u8; 16] {
    base32_16(&hasher(name, protocol).finalize())
}

/// The 16-character hash of one endpoint's SEP chain; `endpoint` is `IP:port` or `[IP]:port`.
pub fn endpoint_hash(name: &ServicePortName, protocol: Protocol, endpoint: &str) -> [u8; 16] {
    EndpointHasher::new(name, protocol).hash(endpoint)
}

/// Hashes many endpoints of one service port, feeding the shared prefix to SHA-256 only once.
#[derive(Clone)]
pub struct EndpointHasher(Sha256);

impl EndpointHasher {
    /// A hasher for the endpoints of `name`/`protocol`.
    pub fn new(name: &ServicePortName, protocol: Protocol) -> Self {
        EndpointHasher(hasher(name, protocol))
    }

    /// The 16-character SEP hash of `endpoint` (`IP:port` or `[IP]:port`).
    pub fn hash(&self, endpoint: &str) -> [u8; 16] {
        let mut h = self.0.clone();
        h.update(endpoint.as_bytes());
        base32_16(&h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: [u8; 16]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn service_hash_matches_upstream() {
        let n = ServicePortName::new("ns1", "svc1", "p80");
        assert_eq!(s(service_port_hash(&n, Protocol::Tcp)), "XPGD46QRK7WJZT7O");
        let n = ServicePortName::new("ns2", "svc2", "p80");
        assert_eq!(s(service_port_hash(&n, Protocol::Tcp)), "GNZBNJ2PO5MGZ6GT");
        let n = ServicePortName::new("ns2", "svc2", "p8080");
        assert_eq!(s(service_port_hash(&n, Protocol::Tcp)), "2VJB64SDSIJUP5T6");
    }

    #[test]
    fn endpoint_hash_matches_upstream() {
        let n = ServicePortName::new("ns1", "svc1", "p80");
        assert_eq!(
            s(endpoint_hash(&n, Protocol::Tcp, "10.180.0.1:80")),
            "SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            s(endpoint_hash(&n, Protocol::Tcp, "10.0.0.0:80")),
            "DKGQUZGBKLTPAR56"
        );
        let n = ServicePortName::new("ns5", "svc5", "p80");
        assert_eq!(
            s(endpoint_hash(&n, Protocol::Tcp, "10.180.0.3:80")),
            "I77PXRDZVX7PMWMN"
        );
    }

    #[test]
    fn base32_agrees_with_a_reference_encoder() {
        let n = ServicePortName::new("default", "kubernetes", "https");
        let digest = hasher(&n, Protocol::Tcp).finalize();
        let reference = data_encoding::BASE32.encode(&digest);
        assert_eq!(s(base32_16(&digest)), reference[..16]);
    }

    #[test]
    fn unnamed_port_drops_the_colon_and_protocol_matters() {
        let unnamed = ServicePortName::new("ns1", "svc1", "");
        let direct = base32_16(&Sha256::digest(b"ns1/svc1tcp"));
        assert_eq!(service_port_hash(&unnamed, Protocol::Tcp), direct);
        assert_ne!(
            service_port_hash(&unnamed, Protocol::Tcp),
            service_port_hash(&unnamed, Protocol::Udp)
        );
    }
}
