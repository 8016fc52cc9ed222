//! Health-check node ports of `externalTrafficPolicy: Local` LoadBalancer Services
//! (`spec.healthCheckNodePort`), as upstream's `service_health.go` serves them: one HTTP
//! listener per Service on every node address (or on each `--nodeport-addresses` address of
//! the node), answering any path with 200 while this node has ready endpoints of the Service
//! and the proxy is healthy, 503 otherwise, and the local endpoint count in the body and in
//! `X-Load-Balancing-Endpoint-Weight`. Load balancers send traffic only to nodes answering 200.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use rulegen::plan::endpoints;
use rulegen::{IpFamily, Model, RenderConfig};
use tokio::task::JoinHandle;

use super::{ProxyHealth, http};

/// A Service by namespace and name.
pub type ServiceName = (String, String);

/// What the health checks serve, from one translation: each Service's health-check node port
/// and its count of local ready endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealthState {
    /// Health-check node port of each Service that has one (upstream's
    /// `svcPortMap.HealthCheckNodePorts()`).
    pub ports: BTreeMap<ServiceName, u16>,
    /// Distinct addresses of this node's ready endpoints of each of those Services (upstream's
    /// `endpointsMap.LocalReadyEndpoints()`).
    pub local_endpoints: BTreeMap<ServiceName, usize>,
}

impl ServiceHealthState {
    /// The health checks of `model` for a proxier of `cfg.family` on node `cfg.node_name`: only
    /// Service ports with a cluster IP of that family, and endpoints of that family, count.
    pub fn of(model: &Model, cfg: &RenderConfig) -> Self {
        let family = cfg.family;
        let mut out = ServiceHealthState::default();
        let mut local: HashMap<ServiceName, HashSet<IpAddr>> = HashMap::new();
        // Every port of a Service carries its health-check node port (a Service-wide field).
        for sp in &model.services {
            let Some(port) = sp.health_check_node_port else {
                continue;
            };
            if !sp.cluster_ips.iter().any(|ip| family.contains(ip)) {
                continue;
            }
            let name = (sp.name.namespace.clone(), sp.name.name.clone());
            out.ports.insert(name.clone(), port);
            let ips = local.entry(name).or_default();
            for e in &sp.endpoints {
                if e.ready
                    && family.contains(&e.ip)
                    && !cfg.node_name.is_empty()
                    && e.node_name.as_deref() == Some(cfg.node_name.as_str())
                {
                    ips.insert(e.ip);
                }
            }
        }
        out.local_endpoints = local
            .into_iter()
            .filter(|(_, ips)| !ips.is_empty())
            .map(|(name, ips)| (name, ips.len()))
            .collect();
        out
    }
}

/// Counts the Services (`per_service`, IPVS mode: distinct Services) or Service ports
/// (iptables mode) with a Local traffic policy that have endpoints but none on this node:
/// `(internal, external)` for `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
pub fn no_local_endpoints(model: &Model, cfg: &RenderConfig, per_service: bool) -> (u64, u64) {
    let family = cfg.family;
    let mut internal: HashSet<(&str, &str, usize)> = HashSet::new();
    let mut external: HashSet<(&str, &str, usize)> = HashSet::new();
    for (i, sp) in model.services.iter().enumerate() {
        if !endpoints::uses_local_endpoints(sp)
            || !sp.cluster_ips.iter().any(|ip| family.contains(ip))
        {
            continue;
        }
        let eps: Vec<&rulegen::Endpoint> = sp
            .endpoints
            .iter()
            .filter(|e| family.contains(&e.ip))
            .collect();
        let cat = endpoints::categorize(sp, &eps, &cfg.node_name, cfg.node_zone.as_deref());
        if !cat.has_any || !cat.local.is_empty() {
            continue;
        }
        let key = (
            sp.name.namespace.as_str(),
            sp.name.name.as_str(),
            if per_service { 0 } else { i },
        );
        if endpoints::internal_policy_local(sp) {
            internal.insert(key);
        }
        if endpoints::external_policy_local(sp) {
            external.insert(key);
        }
    }
    (internal.len() as u64, external.len() as u64)
}

struct Instance {
    port: u16,
    endpoints: usize,
    servers: Vec<JoinHandle<()>>,
}

type Shared = Arc<Mutex<HashMap<ServiceName, Instance>>>;

/// The open health-check listeners (upstream's `ServiceHealthServer`).
pub struct ServiceHealthServer {
    // Where each listener binds; an unspecified address means every address.
    node_ips: Vec<IpAddr>,
    proxy: Option<Arc<ProxyHealth>>,
    services: Shared,
}

impl ServiceHealthServer {
    /// Health checks on every node address (`node_ips` `None`) or on each of `node_ips` (the
    /// node's addresses inside `--nodeport-addresses`); their status also needs the proxy to be
    /// healthy when `proxy` is given.
    pub fn new(node_ips: Option<Vec<IpAddr>>, proxy: Option<Arc<ProxyHealth>>) -> Self {
        // Go treats 0.0.0.0 as every address of both families.
        let node_ips = node_ips.unwrap_or_else(|| vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        ServiceHealthServer {
            node_ips,
            proxy,
            services: Arc::default(),
        }
    }

    /// The addresses a health check listens on for `--nodeport-addresses` `cidrs`, out of the
    /// node's `local` addresses (upstream's `GetNodeIPs`); `None` (every address) when no CIDR
    /// is of `family`.
    pub fn listen_addresses(
        cidrs: &[ipnet::IpNet],
        family: IpFamily,
        local: &[IpAddr],
    ) -> Option<Vec<IpAddr>> {
        let cidrs: Vec<_> = cidrs.iter().filter(|c| family.contains_net(c)).collect();
        if cidrs.is_empty() {
            return None;
        }
        let mut out: Vec<IpAddr> = local
            .iter()
            .copied()
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .collect();
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// Makes the open health checks those of `ports` (upstream's `SyncServices`): closes the
    /// ones of Services gone or whose port changed, opens the new ones. A port that cannot be
    /// bound is logged and tried again on the next call. Call inside the runtime.
    pub async fn sync_services(&self, ports: &BTreeMap<ServiceName, u16>) {
        let mut closing = Vec::new();
        {
            let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
            services.retain(|name, inst| {
                let keep = ports.get(name) == Some(&inst.port);
                if !keep {
                    let service = format!("{}/{}", name.0, name.1);
                    tracing::info!(service, port = inst.port, "closing health check");
                    closing.append(&mut inst.servers);
                }
                keep
            });
        }
        // Wait until the closed listeners are gone, so their ports can be bound again at once.
        for server in closing {
            server.abort();
            let _ = server.await;
        }
        for (name, &port) in ports {
            if self
                .services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
            {
                continue;
            }
            match self.listen(name, port) {
                Ok(servers) => {
                    let service = format!("{}/{}", name.0, name.1);
                    tracing::info!(service, port, "opening health check");
                    self.services
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            name.clone(),
                            Instance {
                                port,
                                endpoints: 0,
                                servers,
                            },
                        );
                }
                Err(e) => tracing::error!(
                    service = %format!("{}/{}", name.0, name.1),
                    port,
                    error = %e,
                    "failed to start health check; retrying at the next sync"
                ),
            }
        }
    }

    /// Opens one listener per node address; none stays open when one fails.
    fn listen(&self, name: &ServiceName, port: u16) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut listeners = Vec::new();
        for ip in &self.node_ips {
            listeners.push(http::bind(SocketAddr::new(*ip, port))?);
        }
        Ok(listeners
            .into_iter()
            .map(|l| http::spawn(l, self.handler(name.clone())))
            .collect())
    }

    fn handler(&self, name: ServiceName) -> http::Handler {
        let services = self.services.clone();
        let proxy = self.proxy.clone();
        Arc::new(move |_req| {
            let count = match services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
            {
                Some(inst) => inst.endpoints,
                // Closed while this connection was open: Go's handler writes nothing (200).
                None => return http::reply(200, http::TEXT, ""),
            };
            let proxy_healthy = proxy.as_ref().is_none_or(|p| p.health().healthy);
            let code = if count != 0 && proxy_healthy {
                200
            } else {
                503
            };
            let mut r = http::reply(code, http::JSON, body(&name, count, proxy_healthy));
            r.headers_mut().insert(
                HeaderName::from_static("x-load-balancing-endpoint-weight"),
                HeaderValue::from(count),
            );
            r
        })
    }

    /// Sets each open health check's local endpoint count (upstream's `SyncEndpoints`):
    /// Services not in `counts` have none.
    pub fn sync_endpoints(&self, counts: &BTreeMap<ServiceName, usize>) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for (name, inst) in services.iter_mut() {
            inst.endpoints = counts.get(name).copied().unwrap_or(0);
        }
    }

    /// The open health checks: Service, port, local endpoints.
    pub fn open(&self) -> Vec<(ServiceName, u16, usize)> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = services
            .iter()
            .map(|(n, i)| (n.clone(), i.port, i.endpoints))
            .collect();
        out.sort();
        out
    }
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for inst in services.values() {
            for s in &inst.servers {
                s.abort();
            }
        }
    }
}

/// Upstream's body: its dedented Go template, tabs and all, without a final newline.
fn body(name: &ServiceName, count: usize, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&name.0),
        quote(&name.1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rulegen::{Endpoint, Protocol, ServicePort, ServicePortName, TrafficPolicy};

    fn lb(
        ns: &str,
        name: &str,
        port: &str,
        hc: Option<u16>,
        eps: &[(&str, &str, bool)],
    ) -> ServicePort {
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new(ns, name, port),
            Protocol::Tcp,
            "10.96.0.1".parse().unwrap(),
            80,
        );
        sp.node_port = Some(30080);
        sp.external_traffic_policy = TrafficPolicy::Local;
        sp.health_check_node_port = hc;
        sp.endpoints = eps
            .iter()
            .map(|(ip, node, ready)| Endpoint {
                ready: *ready,
                node_name: Some((*node).into()),
                ..Endpoint::ready(ip.parse().unwrap(), 8080)
            })
            .collect();
        sp
    }

    fn cfg() -> RenderConfig {
        RenderConfig {
            node_name: "node-a".into(),
            ..RenderConfig::default()
        }
    }

    #[test]
    fn local_ready_endpoints_count_once_per_address() {
        let model = Model {
            services: vec![
                lb(
                    "ns",
                    "web",
                    "http",
                    Some(32000),
                    &[("10.0.0.1", "node-a", true), ("10.0.0.2", "node-b", true)],
                ),
                // Same pod on another port: one address.
                lb(
                    "ns",
                    "web",
                    "https",
                    Some(32000),
                    &[("10.0.0.1", "node-a", true), ("10.0.0.3", "node-a", false)],
                ),
                lb(
                    "ns",
                    "none",
                    "",
                    Some(32001),
                    &[("10.0.0.4", "node-b", true)],
                ),
                lb("ns", "cluster", "", None, &[("10.0.0.5", "node-a", true)]),
                // Another family's endpoint does not count for this proxier.
                lb("ns", "v6", "", Some(32002), &[("fd00::1", "node-a", true)]),
            ],
        };
        let s = ServiceHealthState::of(&model, &cfg());
        let name = |n: &str| ("ns".to_string(), n.to_string());
        assert_eq!(
            s.ports,
            BTreeMap::from([
                (name("none"), 32001),
                (name("v6"), 32002),
                (name("web"), 32000)
            ])
        );
        assert_eq!(s.local_endpoints, BTreeMap::from([(name("web"), 1)]));
    }

    #[test]
    fn no_local_endpoints_counts_ports_or_services() {
        let model = Model {
            services: vec![
                lb("ns", "a", "p1", None, &[("10.0.0.1", "node-b", true)]),
                lb("ns", "a", "p2", None, &[("10.0.0.1", "node-b", true)]),
                lb("ns", "b", "", None, &[("10.0.0.2", "node-a", true)]),
                // No endpoints at all: not "no local endpoints".
                lb("ns", "c", "", None, &[]),
            ],
        };
        assert_eq!(no_local_endpoints(&model, &cfg(), false), (0, 2));
        assert_eq!(no_local_endpoints(&model, &cfg(), true), (0, 1));
    }

    #[test]
    fn the_body_is_upstreams_template() {
        assert_eq!(
            body(&("ns".into(), "web".into()), 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&body(&("a".into(), "b".into()), 0, false)).unwrap();
        assert_eq!(v["localEndpoints"], 0);
    }

    #[test]
    fn listen_addresses_follow_nodeport_addresses() {
        let local: Vec<IpAddr> = ["192.168.1.1", "10.0.0.1", "fd00::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            ServiceHealthServer::listen_addresses(&[], IpFamily::V4, &local),
            None
        );
        let cidrs = [
            "192.168.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        assert_eq!(
            ServiceHealthServer::listen_addresses(&cidrs, IpFamily::V4, &local),
            Some(vec!["192.168.1.1".parse::<IpAddr>().unwrap()])
        );
    }
}
