//! `ipset save` text read back into sets the tracer can test a packet against (`-m set
//! --match-set NAME dst,dst,src`), for the types kube-proxy's IPVS mode creates.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::save::SaveParseError;

/// The sets of one `ipset save` text, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedSets {
    /// Sets by name.
    pub sets: BTreeMap<String, SavedSet>,
}

/// One set: its type and members as `ipset save` spells them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedSet {
    /// `hash:ip,port`, `bitmap:port`, ….
    pub kind: String,
    /// Members, as written after `add NAME`.
    pub members: Vec<String>,
}

/// The packet fields a set lookup reads.
#[derive(Debug, Clone, Copy)]
pub struct SetKey {
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: &'static str,
}

impl SavedSets {
    /// Parses `ipset save` text (`create` and `add` lines; others are errors).
    pub fn parse(text: &str) -> Result<SavedSets, SaveParseError> {
        let mut out = SavedSets::default();
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| SaveParseError {
                line: n + 1,
                message,
            };
            let mut parts = line.split_whitespace();
            match parts.next() {
                None => {}
                Some(c) if c.starts_with('#') => {}
                Some("create") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("create without a name".into()))?;
                    let kind = parts
                        .next()
                        .ok_or_else(|| err("create without a type".into()))?;
                    out.sets.entry(name.to_string()).or_default().kind = kind.to_string();
                }
                Some("add") => {
                    let (Some(name), Some(member)) = (parts.next(), parts.next()) else {
                        return Err(err("add needs a set and a member".into()));
                    };
                    let set = out
                        .sets
                        .get_mut(name)
                        .ok_or_else(|| err(format!("add to {name}, which no create line made")))?;
                    set.members.push(member.to_string());
                }
                Some(other) => return Err(err(format!("unexpected {other:?} in ipset save text"))),
            }
        }
        Ok(out)
    }

    /// Whether the packet's fields picked by `dirs` (`dst,dst,src`) are a member of `name`.
    /// `None` when the set is unknown or of a type the tracer does not model.
    pub fn contains(&self, name: &str, dirs: &str, key: &SetKey) -> Option<bool> {
        let set = self.sets.get(name)?;
        let dirs: Vec<&str> = dirs.split(',').collect();
        let addr = |i: usize| -> Option<IpAddr> {
            match *dirs.get(i)? {
                "src" => Some(key.src),
                "dst" => Some(key.dst),
                _ => None,
            }
        };
        let port = |i: usize| -> Option<u16> {
            match *dirs.get(i)? {
                "src" => Some(key.src_port),
                "dst" => Some(key.dst_port),
                _ => None,
            }
        };
        let dims: Vec<&str> = set.kind.split(':').nth(1)?.split(',').collect();
        let base = set.kind.split(':').next()?;
        let found = set.members.iter().any(|m| {
            let fields: Vec<&str> = m.split(',').collect();
            fields.len() == dims.len()
                && dims.iter().enumerate().all(|(i, dim)| {
                    let f = fields[i];
                    match *dim {
                        "ip" => addr(i).is_some_and(|a| ip_member(f, a)),
                        "net" => addr(i).is_some_and(|a| net_member(f, a)),
                        "port" => port(i).is_some_and(|p| port_member(f, p, key.proto, base)),
                        _ => false,
                    }
                })
        });
        let modelled = dims.iter().all(|d| matches!(*d, "ip" | "net" | "port"))
            && (0..dims.len()).all(|i| addr(i).is_some());
        modelled.then_some(found)
    }
}

fn ip_member(field: &str, a: IpAddr) -> bool {
    // hash:ip members may be written as a CIDR that expands to addresses.
    net_member(field, a)
}

fn net_member(field: &str, a: IpAddr) -> bool {
    if let Ok(ip) = field.parse::<IpAddr>() {
        return ip == a;
    }
    field.parse::<IpNet>().is_ok_and(|n| n.contains(&a))
}

fn port_member(field: &str, p: u16, proto: &str, base: &str) -> bool {
    // bitmap:port members are bare ports (the protocol is not part of the set); hash types
    // write `proto:port`.
    let (member_proto, port) = match field.split_once(':') {
        Some((pr, po)) => (Some(pr), po),
        None => (None, field),
    };
    if base == "hash" && member_proto.is_some_and(|mp| mp != proto) {
        return false;
    }
    match port.split_once('-') {
        Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&p),
            _ => false,
        },
        None => port.parse::<u16>() == Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_by_type_and_direction() {
        let sets = SavedSets::parse(
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
             add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n\
             create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n\
             add KUBE-NODE-PORT-TCP 30080\n\
             create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet\n\
             add KUBE-LOAD-BALANCER-SOURCE-CIDR 198.51.100.20,tcp:443,203.0.113.0/24\n\
             create KUBE-LOOP-BACK hash:ip,port,ip family inet\n\
             add KUBE-LOOP-BACK 10.244.1.5,udp:53,10.244.1.5\n",
        )
        .unwrap();
        let key = |src: &str, dst: &str, dport: u16, proto| SetKey {
            src: src.parse().unwrap(),
            src_port: 40000,
            dst: dst.parse().unwrap(),
            dst_port: dport,
            proto,
        };
        let dns = key("10.244.1.9", "10.96.0.10", 53, "udp");
        assert_eq!(
            sets.contains("KUBE-CLUSTER-IP", "dst,dst", &dns),
            Some(true)
        );
        let dns_tcp = key("10.244.1.9", "10.96.0.10", 53, "tcp");
        assert_eq!(
            sets.contains("KUBE-CLUSTER-IP", "dst,dst", &dns_tcp),
            Some(false)
        );
        assert_eq!(
            sets.contains(
                "KUBE-NODE-PORT-TCP",
                "dst",
                &key("1.2.3.4", "192.168.0.10", 30080, "tcp")
            ),
            Some(true)
        );
        let lb_in = key("203.0.113.9", "198.51.100.20", 443, "tcp");
        let lb_out = key("192.0.2.9", "198.51.100.20", 443, "tcp");
        let cidr = "KUBE-LOAD-BALANCER-SOURCE-CIDR";
        assert_eq!(sets.contains(cidr, "dst,dst,src", &lb_in), Some(true));
        assert_eq!(sets.contains(cidr, "dst,dst,src", &lb_out), Some(false));
        let hairpin = key("10.244.1.5", "10.244.1.5", 53, "udp");
        assert_eq!(
            sets.contains("KUBE-LOOP-BACK", "dst,dst,src", &hairpin),
            Some(true)
        );
        assert_eq!(sets.contains("KUBE-MISSING", "dst", &hairpin), None);
        assert!(SavedSets::parse("add X 1.2.3.4\n").is_err());
    }
}
