//! The plain model the renderer consumes: service ports and their endpoints, free of Kubernetes types.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// A transport protocol a Service port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name iptables and the chain hashes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address family one ruleset is rendered for (`iptables` or `ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpFamily {
    /// IPv4, rendered for `iptables`.
    #[default]
    V4,
    /// IPv6, rendered for `ip6tables`.
    V6,
}

impl IpFamily {
    /// The family an address belongs to.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Whether `ip` belongs to this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// Whether the network `net` belongs to this family.
    pub fn contains_net(self, net: &IpNet) -> bool {
        self.contains(&net.addr())
    }
}

/// `namespace/name:port` — the identity of one port of one Service, as upstream prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name; empty for the single unnamed port.
    pub port: String,
}

impl ServicePortName {
    /// Builds a name from its three parts.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: impl Into<String>,
    ) -> Self {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Upstream drops the ':' with the name when the port is unnamed.
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// How a Service routes traffic of one origin (`externalTrafficPolicy` / `internalTrafficPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// `sessionAffinity` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SessionAffinity {
    /// No affinity.
    #[default]
    None,
    /// Stick a client IP to one endpoint for this many seconds.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (API default 10800).
        timeout_seconds: u32,
    },
}

/// One endpoint (address and target port) of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The port traffic is DNATed to.
    pub port: u16,
    /// `conditions.ready` (nil means true).
    pub ready: bool,
    /// `conditions.serving` (nil means true, as upstream reads it).
    pub serving: bool,
    /// `conditions.terminating` (nil means false).
    pub terminating: bool,
    /// `nodeName`, when the slice carries it (shared: a cluster has far fewer nodes than
    /// endpoints, and one copy per endpoint was megabytes at 100,000 endpoints).
    pub node_name: Option<Arc<str>>,
    /// Topology hints, when the slice carries any for this endpoint (boxed: most endpoints
    /// have none, and inline they doubled the size of every endpoint).
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Hints {
    /// `hints.forZones`, when present and not empty.
    pub zones: Option<Vec<String>>,
    /// `hints.forNodes` (PreferSameNode), when present and not empty.
    pub nodes: Option<Vec<String>>,
}

impl Endpoint {
    /// A ready endpoint with no node and no hints.
    pub fn ready(ip: IpAddr, port: u16) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            hints: None,
        }
    }

    /// `hints.forZones`, if any.
    pub fn zone_hints(&self) -> Option<&[String]> {
        self.hints.as_ref()?.zones.as_deref()
    }

    /// `hints.forNodes`, if any.
    pub fn node_hints(&self) -> Option<&[String]> {
        self.hints.as_ref()?.nodes.as_deref()
    }

    /// `IP:port`, or `[IP]:port` for IPv6: the form DNAT targets, comments and SEP hashes use.
    pub fn addr_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{}:{}", ip, self.port),
            IpAddr::V6(ip) => format!("[{}]:{}", ip, self.port),
        }
    }
}

/// One port of one Service, with everything that decides its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Its identity.
    pub name: ServicePortName,
    /// Its protocol.
    pub protocol: Protocol,
    /// The cluster IP (per family; a Service may have one of each).
    pub cluster_ips: Vec<IpAddr>,
    /// `port`.
    pub port: u16,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` whose `ipMode` is VIP or unset.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.sessionAffinity`.
    pub session_affinity: SessionAffinity,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// Endpoints from every EndpointSlice of the Service for this port.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// A ClusterIP service port with no endpoints and default policies.
    pub fn cluster_ip(
        name: ServicePortName,
        protocol: Protocol,
        cluster_ip: IpAddr,
        port: u16,
    ) -> Self {
        ServicePort {
            name,
            protocol,
            cluster_ips: vec![cluster_ip],
            port,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: SessionAffinity::None,
            health_check_node_port: None,
            endpoints: Vec::new(),
        }
    }
}

/// Everything the renderer needs: the node's service ports (any order; rendering sorts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Every proxied service port.
    pub services: Vec<ServicePort>,
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A large node holds two copies of 100,000+ endpoints (the watch store's digests and the
    /// model): every byte here is 200 KB there.
    #[test]
    fn an_endpoint_stays_small() {
        assert!(
            std::mem::size_of::<Endpoint>() <= 48,
            "{}",
            std::mem::size_of::<Endpoint>()
        );
    }
}
