//! The synthetic cluster every benchmark uses.

use std::net::{IpAddr, Ipv4Addr};

use rulegen::{
    Endpoint, LocalDetector, Model, Protocol, RenderConfig, ServicePort, ServicePortName,
};

/// A kube-proxy-shaped cluster: every 10th Service is a NodePort, endpoints spread over 3 nodes.
pub fn synthetic_model(services: u32, endpoints_per_service: u32) -> Model {
    let mut out = Vec::with_capacity(services as usize);
    for s in 0..services {
        let cluster_ip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + s)); // 10.96.0.0/12
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new(format!("ns{}", s % 100), format!("svc{s}"), "http"),
            Protocol::Tcp,
            cluster_ip,
            80,
        );
        if s % 10 == 0 {
            sp.node_port = Some(30000 + (s / 10 % 2768) as u16);
        }
        for e in 0..endpoints_per_service {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + s * endpoints_per_service + e)); // 10.244/16+
            sp.endpoints.push(Endpoint {
                node_name: Some(format!("node{}", e % 3).into()),
                ..Endpoint::ready(ip, 8080)
            });
        }
        out.push(sp);
    }
    // The translator hands the renderer a model sorted by service-port name; so does this.
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    Model { services: out }
}

/// The renderer's settings for [`synthetic_model`]: node `node0`, pods in 10.244.0.0/16.
pub fn config() -> RenderConfig {
    RenderConfig {
        node_name: "node0".into(),
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

/// `model` with the first endpoint of one Service moved to a fresh address (`round` picks the
/// Service and the address), as one EndpointSlice update does.
pub fn one_endpoint_changed(model: &Model, round: u32) -> Model {
    let mut m = model.clone();
    let i = (round as usize * 7919) % m.services.len();
    m.services[i].endpoints[0].ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + round));
    m
}
