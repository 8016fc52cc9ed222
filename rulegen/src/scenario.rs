//! Random walks over a [`Model`], for tests that check partial syncs against full renders.
//!
//! Deterministic for a seed (its own xorshift generator: no dependency, same steps on every
//! machine), and every model it produces is one a real API server would accept: cluster IPs in
//! 10.96.0.0/16, node ports in 30000–32767, endpoints in 10.244.0.0/16, health-check node ports
//! only on Local-policy load balancers.

use std::net::{IpAddr, Ipv4Addr};

use crate::model::{
    Endpoint, Model, Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy,
};

/// The node the walk's "local" endpoints run on.
pub const NODE: &str = "node-a";

/// A seeded random walk of model changes.
#[derive(Debug, Clone)]
pub struct Scenario {
    state: u64,
    next_service: u32,
    next_endpoint: u32,
    /// The current model, kept sorted by service port name.
    pub model: Model,
}

impl Scenario {
    /// A walk from an empty model.
    pub fn new(seed: u64) -> Self {
        Scenario {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            next_service: 0,
            next_endpoint: 0,
            model: Model::default(),
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn endpoint(&mut self) -> Endpoint {
        let n = self.next_endpoint;
        self.next_endpoint += 1;
        let ip = Ipv4Addr::new(10, 244, (n / 250 % 256) as u8, (n % 250 + 1) as u8);
        let mut e = Endpoint::ready(IpAddr::V4(ip), 8080);
        e.node_name = Some(if self.chance(40) { NODE } else { "node-b" }.into());
        e
    }

    fn service(&mut self) -> ServicePort {
        let n = self.next_service;
        self.next_service += 1;
        let ip = Ipv4Addr::new(10, 96, (n / 250 % 256) as u8, (n % 250 + 1) as u8);
        let protocol = if self.chance(20) {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new(format!("ns{}", n % 3), format!("svc{n}"), "p"),
            protocol,
            IpAddr::V4(ip),
            80,
        );
        if self.chance(40) {
            sp.node_port = Some(30000 + (n % 2700) as u16);
        }
        if self.chance(15) {
            sp.external_ips
                .push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, (n % 250 + 1) as u8)));
        }
        if sp.node_port.is_some() && self.chance(40) {
            sp.load_balancer_ips
                .push(IpAddr::V4(Ipv4Addr::new(203, 0, 113, (n % 250 + 1) as u8)));
            if self.chance(50) {
                sp.load_balancer_source_ranges
                    .push("198.51.100.0/24".parse().expect("valid CIDR"));
            }
        }
        let count = self.below(4);
        for _ in 0..count {
            let e = self.endpoint();
            sp.endpoints.push(e);
        }
        sp
    }

    fn insert(&mut self, sp: ServicePort) {
        let at = self
            .model
            .services
            .partition_point(|s| (&s.name, s.protocol) < (&sp.name, sp.protocol));
        self.model.services.insert(at, sp);
    }

    /// Applies one random change and says what it was.
    pub fn step(&mut self) -> String {
        let services = self.model.services.len() as u64;
        if services < 3 || self.chance(12) {
            let sp = self.service();
            let what = format!("add {}", sp.name);
            self.insert(sp);
            return what;
        }
        let i = self.below(services) as usize;
        let kind = self.below(11);
        let e = self.endpoint();
        let roll = self.next();
        let sp = &mut self.model.services[i];
        let name = sp.name.to_string();
        let pick = |len: usize| (roll % len.max(1) as u64) as usize;
        match kind {
            0 => {
                self.model.services.remove(i);
                format!("remove {name}")
            }
            1 | 2 => {
                sp.endpoints.push(e);
                format!("{name}: add an endpoint")
            }
            3 if !sp.endpoints.is_empty() => {
                sp.endpoints.remove(pick(sp.endpoints.len()));
                format!("{name}: remove an endpoint")
            }
            4 if !sp.endpoints.is_empty() => {
                let at = pick(sp.endpoints.len());
                let ep = &mut sp.endpoints[at];
                // ready → terminating (still serving) → not serving → ready again.
                match (ep.ready, ep.serving) {
                    (true, _) => {
                        ep.ready = false;
                        ep.terminating = true;
                    }
                    (false, true) => ep.serving = false,
                    (false, false) => {
                        ep.ready = true;
                        ep.serving = true;
                        ep.terminating = false;
                    }
                }
                format!("{name}: endpoint condition changed")
            }
            5 => {
                sp.port = if sp.port == 80 { 8443 } else { 80 };
                format!("{name}: port now {}", sp.port)
            }
            6 if sp.node_port.is_some() => {
                let flip = match sp.external_traffic_policy {
                    TrafficPolicy::Cluster => TrafficPolicy::Local,
                    TrafficPolicy::Local => TrafficPolicy::Cluster,
                };
                sp.external_traffic_policy = flip;
                // A health-check node port exists exactly on Local load balancers.
                sp.health_check_node_port = (flip == TrafficPolicy::Local
                    && !sp.load_balancer_ips.is_empty())
                .then(|| 32000 + (roll % 700) as u16);
                format!("{name}: externalTrafficPolicy {flip:?}")
            }
            7 => {
                sp.session_affinity = match sp.session_affinity {
                    SessionAffinity::None => SessionAffinity::ClientIp {
                        timeout_seconds: 10800,
                    },
                    SessionAffinity::ClientIp { .. } => SessionAffinity::None,
                };
                format!("{name}: affinity {:?}", sp.session_affinity)
            }
            8 => {
                sp.internal_traffic_policy = match sp.internal_traffic_policy {
                    TrafficPolicy::Cluster => TrafficPolicy::Local,
                    TrafficPolicy::Local => TrafficPolicy::Cluster,
                };
                format!(
                    "{name}: internalTrafficPolicy {:?}",
                    sp.internal_traffic_policy
                )
            }
            9 => {
                sp.node_port = match sp.node_port {
                    Some(_) if sp.load_balancer_ips.is_empty() => {
                        sp.external_traffic_policy = TrafficPolicy::Cluster;
                        sp.health_check_node_port = None;
                        None
                    }
                    _ => Some(30000 + (roll % 2700) as u16),
                };
                format!("{name}: nodePort {:?}", sp.node_port)
            }
            _ if !sp.endpoints.is_empty() => {
                let at = pick(sp.endpoints.len());
                let ep = &mut sp.endpoints[at];
                ep.node_name = Some(
                    if ep.node_name.as_deref() == Some(NODE) {
                        "node-b"
                    } else {
                        NODE
                    }
                    .into(),
                );
                format!("{name}: an endpoint moved node")
            }
            _ => {
                sp.endpoints.clear();
                format!("{name}: all endpoints gone")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_walk_and_names_stay_unique() {
        let mut a = Scenario::new(7);
        let mut b = Scenario::new(7);
        for _ in 0..200 {
            assert_eq!(a.step(), b.step());
        }
        assert_eq!(a.model, b.model);
        let mut names: Vec<_> = a.model.services.iter().map(|s| &s.name).collect();
        let n = names.len();
        assert!(n >= 3);
        names.dedup();
        assert_eq!(names.len(), n, "sorted and unique");
        assert_ne!(Scenario::new(8).step(), "", "steps describe themselves");
    }
}
