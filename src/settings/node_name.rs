//! Node names, checked at start. The API server only admits Nodes named by a DNS-1123
//! subdomain, so a name that is not one can never match this node's Node object or its
//! endpoints' `nodeName`, and it goes into the Node watch's field selector, where a `,` or a `=`
//! would change what is asked for.

use std::fmt;

/// The longest DNS-1123 subdomain.
pub const MAX_LEN: usize = 253;

/// Why a string is not a node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeNameError {
    /// Nothing given.
    Empty,
    /// More than [`MAX_LEN`] bytes.
    TooLong(usize),
    /// A character other than a lower-case letter, a digit, `-` or `.`.
    Character(char),
    /// A dot-separated part that is empty or starts or ends with `-`.
    Label(String),
}

impl fmt::Display for NodeNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a node name is a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'): ",
        )?;
        match self {
            NodeNameError::Empty => f.write_str("it is empty"),
            NodeNameError::TooLong(len) => {
                write!(f, "it is {len} bytes long, at most {MAX_LEN} fit")
            }
            NodeNameError::Character(c) => write!(f, "it holds {c:?}"),
            NodeNameError::Label(l) => write!(
                f,
                "its part {l:?} must start and end with a letter or a digit"
            ),
        }
    }
}

impl std::error::Error for NodeNameError {}

/// Checks `name` is a DNS-1123 subdomain, as the API server checks a Node's name.
pub fn check(name: &str) -> Result<(), NodeNameError> {
    if name.is_empty() {
        return Err(NodeNameError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(NodeNameError::TooLong(name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '.'))
    {
        return Err(NodeNameError::Character(c));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    match name
        .split('.')
        .find(|l| !edge_ok(l.chars().next()) || !edge_ok(l.chars().last()))
    {
        Some(label) => Err(NodeNameError::Label(label.to_string())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_1123_subdomains_are_node_names() {
        for name in [
            "node-a",
            "n",
            "worker-7.example",
            "ip-10-0-0-1.ec2.internal",
            "0",
        ] {
            assert_eq!(check(name), Ok(()), "{name}");
        }
        assert_eq!(check(&"a".repeat(MAX_LEN)), Ok(()));
    }

    #[test]
    fn other_names_are_errors() {
        use NodeNameError::*;
        for (name, want) in [
            ("", Empty),
            ("Node-A", Character('N')),
            ("node_a", Character('_')),
            ("node a", Character(' ')),
            ("a,metadata.name!=b", Character(',')),
            ("-node", Label("-node".into())),
            ("node-", Label("node-".into())),
            ("node..a", Label(String::new())),
            (".node", Label(String::new())),
        ] {
            assert_eq!(check(name), Err(want), "{name:?}");
        }
        assert_eq!(check(&"a".repeat(MAX_LEN + 1)), Err(TooLong(MAX_LEN + 1)));
    }
}
