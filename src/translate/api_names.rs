//! The API server's own rules for the names and labels the proxy reads
//! (`k8s.io/apimachinery/pkg/util/validation`).
//!
//! Objects read from files never passed an API server, and a name reaches rule comments, chain
//! hashes, set members and log lines: a name that breaks these rules is refused where the
//! object enters the model, so no string from an object can become rule syntax.

use std::fmt;

/// `IsDNS1123Label`'s length limit.
pub const DNS1123_LABEL_MAX: usize = 63;
/// `IsDNS1123Subdomain`'s length limit.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// `IsValidLabelValue`'s length limit.
pub const LABEL_VALUE_MAX: usize = 63;

/// Which rule a string broke, worded as the API server words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Namespaces, Service names (KEP-5311's relaxed rule) and port names.
    Dns1123Label,
    /// EndpointSlice and Node names.
    Dns1123Subdomain,
    /// Label values (the service-name label, zones).
    LabelValue,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::Dns1123Label => {
                "a DNS-1123 label (at most 63 characters: lower-case letters, digits and '-', starting and ending with a letter or digit)"
            }
            NameRule::Dns1123Subdomain => {
                "a DNS-1123 subdomain (at most 253 characters: DNS-1123 labels joined by '.')"
            }
            NameRule::LabelValue => {
                "a label value (at most 63 characters: letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
            }
        })
    }
}

impl NameRule {
    /// Whether `value` follows this rule (an empty value is a valid label value only, as for
    /// the API).
    pub fn accepts(self, value: &str) -> bool {
        match self {
            NameRule::Dns1123Label => is_dns1123_label(value),
            NameRule::Dns1123Subdomain => is_dns1123_subdomain(value),
            NameRule::LabelValue => is_label_value(value),
        }
    }

    /// `Ok` when `value` follows the rule, else why not, naming the field and the value
    /// (escaped: the value may hold anything).
    pub fn check(self, field: &str, value: &str) -> Result<(), String> {
        if self.accepts(value) {
            Ok(())
        } else {
            Err(format!("invalid {field} {value:?}: not {self}"))
        }
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// DNS-1123 labels joined by `.`, at most 253 bytes: the rule a node name is held to at start.
fn is_dns1123_subdomain(s: &str) -> bool {
    crate::settings::node_name::check(s).is_ok()
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63 bytes; empty, as for the API.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if b.is_empty() {
        return true;
    }
    b.len() <= LABEL_VALUE_MAX
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// `namespace/name` for a message, escaped like a Rust string when it holds anything a valid
/// name cannot (so a refused object's name can never forge a log line).
pub fn printable(namespace: &str, name: &str) -> String {
    let plain = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    };
    if plain(namespace) && plain(name) {
        format!("{namespace}/{name}")
    } else {
        format!("{:?}", format!("{namespace}/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_api_rule() {
        for ok in ["a", "web", "kube-dns", "0ab", "a1", &"a".repeat(63)] {
            assert!(NameRule::Dns1123Label.accepts(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a\nb",
            "a b",
            "a\"b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!NameRule::Dns1123Label.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn subdomains_follow_the_api_rule() {
        for ok in ["node-a", "web-abc12", "a.b.c", "ip-10-0-0-1.ec2.internal"] {
            assert!(NameRule::Dns1123Subdomain.accepts(ok), "{ok}");
        }
        let long = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert!(NameRule::Dns1123Subdomain.accepts(&long));
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "A.b",
            "a_b",
            "a\tb",
            &format!("{long}.cc"),
        ] {
            assert!(!NameRule::Dns1123Subdomain.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_values_follow_the_api_rule() {
        for ok in ["zone-a", "us-east-1a", "A_b.c", "x"] {
            assert!(NameRule::LabelValue.accepts(ok), "{ok}");
        }
        assert!(NameRule::LabelValue.accepts(""));
        for bad in ["-a", "a.", "a/b", "a b", "a\rb", &"a".repeat(64)] {
            assert!(!NameRule::LabelValue.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_name_is_printed_escaped() {
        assert_eq!(printable("shop", "web"), "shop/web");
        assert_eq!(printable("shop", "a\n-I INPUT"), r#""shop/a\n-I INPUT""#);
        assert_eq!(
            NameRule::Dns1123Label.check("name", "a\nb").unwrap_err(),
            r#"invalid name "a\nb": not a DNS-1123 label (at most 63 characters: lower-case letters, digits and '-', starting and ending with a letter or digit)"#
        );
    }
}
