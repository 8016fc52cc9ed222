//! Small model builders the crate's unit tests share.

use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName};

/// A ready endpoint `10.244.0.LAST:8080` on `node`.
pub(crate) fn ep(last: u8, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::ready(format!("10.244.0.{last}").parse().unwrap(), 8080)
    }
}

/// `ns/web:http`, TCP cluster IP `10.96.0.20:80`, with `eps`.
pub(crate) fn sp(eps: Vec<Endpoint>) -> ServicePort {
    let mut sp = ServicePort::cluster_ip(
        ServicePortName::new("ns", "web", "http"),
        Protocol::Tcp,
        "10.96.0.20".parse().unwrap(),
        80,
    );
    sp.endpoints = eps;
    sp
}
