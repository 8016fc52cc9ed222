//! The renderers' last line against rule injection: every string a render writes that came from
//! an object or a flag is checked here before a single rule is written.
//!
//! The translator already refuses names the API server would refuse; this check does not trust
//! that. A control character (a newline above all) in a name would end the rule it is written
//! into and start one of the caller's choosing, and whitespace in an interface name would add
//! options to the rule: either refuses the whole render, so nothing half-written is applied.

use crate::config::{LocalDetector, RenderConfig};
use crate::model::Model;

/// A string that cannot be written into a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to render {field} {value}: {reason}")]
pub struct UnsafeText {
    /// Which field held it (`"service name"`, `"pod interface prefix"`, …).
    pub field: &'static str,
    /// The value, escaped so that printing it is safe.
    pub value: String,
    /// What is wrong with it.
    pub reason: UnsafeReason,
}

/// Why a string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeReason {
    /// It holds a control character (U+0000–U+001F, U+007F–U+009F).
    #[error("it holds a control character")]
    ControlCharacter,
    /// An interface name that the kernel would refuse or that would split the rule.
    #[error("not an interface name (1-15 bytes, no whitespace, '/', ':' or quotes)")]
    InterfaceName,
}

/// Checks every string of `model` and `cfg` that a render may write or print.
pub fn check(model: &Model, cfg: &RenderConfig) -> Result<(), UnsafeText> {
    for sp in &model.services {
        text("service namespace", &sp.name.namespace)?;
        text("service name", &sp.name.name)?;
        text("service port name", &sp.name.port)?;
        for ep in &sp.endpoints {
            if let Some(node) = &ep.node_name {
                text("endpoint node name", node)?;
            }
            for zone in ep.zone_hints().into_iter().flatten() {
                text("endpoint zone hint", zone)?;
            }
            for node in ep.node_hints().into_iter().flatten() {
                text("endpoint node hint", node)?;
            }
        }
    }
    text("node name", &cfg.node_name)?;
    if let Some(zone) = &cfg.node_zone {
        text("node zone", zone)?;
    }
    match &cfg.local_detector {
        LocalDetector::BridgeInterface(name) => interface("pod bridge interface", name, 15)?,
        // Written with a '+' appended, which takes the last of the 15 bytes.
        LocalDetector::InterfaceNamePrefix(p) => interface("pod interface prefix", p, 14)?,
        LocalDetector::None | LocalDetector::Cidrs(_) => {}
    }
    Ok(())
}

/// Refuses a string with a control character.
pub fn text(field: &'static str, value: &str) -> Result<(), UnsafeText> {
    if value.chars().any(char::is_control) {
        return Err(UnsafeText {
            field,
            value: format!("{value:?}"),
            reason: UnsafeReason::ControlCharacter,
        });
    }
    Ok(())
}

/// Refuses what cannot be an interface name of at most `max` bytes in an `-i` match.
pub fn interface(field: &'static str, value: &str, max: usize) -> Result<(), UnsafeText> {
    text(field, value)?;
    let bad = value.is_empty()
        || value.len() > max
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | ':' | '"' | '\'' | '\\'));
    if bad {
        return Err(UnsafeText {
            field,
            value: format!("{value:?}"),
            reason: UnsafeReason::InterfaceName,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName};

    fn port(ns: &str, name: &str, port: &str) -> ServicePort {
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        ServicePort::cluster_ip(ServicePortName::new(ns, name, port), Protocol::Tcp, ip, 80)
    }

    #[test]
    fn a_newline_anywhere_refuses_the_render() {
        let cfg = RenderConfig::default();
        let ok = Model {
            services: vec![port("shop", "web", "http")],
        };
        assert_eq!(check(&ok, &cfg), Ok(()));
        for (ns, name, p, field) in [
            ("sh\nop", "web", "http", "service namespace"),
            ("shop", "a\n-I INPUT 1 -j ACCEPT", "http", "service name"),
            ("shop", "web", "h\rttp", "service port name"),
            ("shop", "web", "h\u{85}", "service port name"),
        ] {
            let m = Model {
                services: vec![port(ns, name, p)],
            };
            let e = check(&m, &cfg).unwrap_err();
            assert_eq!((e.field, e.reason), (field, UnsafeReason::ControlCharacter));
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let mut sp = port("shop", "web", "http");
        let mut ep = Endpoint::ready("10.0.0.1".parse().unwrap(), 80);
        ep.node_name = Some("node\n".into());
        sp.endpoints.push(ep);
        let m = Model { services: vec![sp] };
        assert_eq!(check(&m, &cfg).unwrap_err().field, "endpoint node name");
    }

    #[test]
    fn interface_names_that_would_split_a_rule_are_refused() {
        let mut cfg = RenderConfig::default();
        for (detector, ok) in [
            (LocalDetector::InterfaceNamePrefix("veth".into()), true),
            (
                LocalDetector::InterfaceNamePrefix("veth -j ACCEPT".into()),
                false,
            ),
            (LocalDetector::InterfaceNamePrefix("a".repeat(15)), false),
            (LocalDetector::BridgeInterface("cni0".into()), true),
            (LocalDetector::BridgeInterface("a".repeat(15)), true),
            (LocalDetector::BridgeInterface("a".repeat(16)), false),
            (LocalDetector::BridgeInterface(String::new()), false),
            (LocalDetector::BridgeInterface("br\"0".into()), false),
        ] {
            cfg.local_detector = detector.clone();
            assert_eq!(check(&Model::default(), &cfg).is_ok(), ok, "{detector:?}");
        }
    }
}
