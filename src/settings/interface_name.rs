//! Interface names as the kernel and iptables take them, checked at start. A name the kernel
//! could never give a device matches nothing, and one with a blank or a quote rewrites the
//! iptables-restore payload it is written into (`veth -j ACCEPT` is two more words there), so
//! the kernel would refuse every sync.
//!
//! The kernel's rule is `dev_valid_name` (net/core/dev.c): 1 to 15 bytes (`IFNAMSIZ` less the
//! NUL), not `.` or `..`, no `/`, `:` or byte its `isspace` takes (the ASCII blanks and 0xA0).
//! iptables adds its own: `-i NAME+` matches every name starting with `NAME`, the `+` counted
//! in the 15 bytes; iptables-restore reads a `"` as quoting.

use std::fmt;

/// The longest interface name the kernel gives a device: `IFNAMSIZ` (16) less the NUL.
pub const MAX_LEN: usize = 15;

/// Why a string is not an interface name (or prefix) the rules can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceNameError {
    /// Nothing given.
    Empty,
    /// More bytes than the kernel allows; `max` is less for a prefix (iptables adds a `+`).
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// `.` or `..`, which the kernel refuses (they name directories in sysfs).
    Dots,
    /// A character the kernel refuses in a name (`/`, `:`, a blank) or that iptables-restore
    /// reads as syntax (`"`), or a control character.
    Character(char),
    /// An exact name ending in `+`: iptables would match every name starting with the rest.
    Wildcard,
    /// A prefix ending in `+`: the `+` is added to match names that start with the prefix.
    PlusInPrefix,
}

impl fmt::Display for InterfaceNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceNameError::Empty => f.write_str("it is empty"),
            InterfaceNameError::TooLong { len, max } => {
                write!(f, "it is {len} bytes long, and at most {max} fit")
            }
            InterfaceNameError::Dots => f.write_str("the kernel refuses `.` and `..` as names"),
            InterfaceNameError::Character(c) => write!(
                f,
                "it holds {c:?} (the kernel refuses '/', ':', blanks and control characters in \
                 interface names, and iptables-restore reads '\"' as quoting)"
            ),
            InterfaceNameError::Wildcard => f.write_str(
                "it ends in `+`, which iptables reads as \"any name starting with\" \
                 (for a prefix use --detect-local-mode InterfaceNamePrefix)",
            ),
            InterfaceNameError::PlusInPrefix => {
                f.write_str("it ends in `+`; give the prefix alone, the `+` is added")
            }
        }
    }
}

impl std::error::Error for InterfaceNameError {}

/// Checks an exact interface name, as `-i NAME` matches it.
pub fn check_name(name: &str) -> Result<(), InterfaceNameError> {
    check_common(name, MAX_LEN)?;
    if name == "." || name == ".." {
        return Err(InterfaceNameError::Dots);
    }
    if name.ends_with('+') {
        return Err(InterfaceNameError::Wildcard);
    }
    Ok(())
}

/// Checks an interface-name prefix, as `-i PREFIX+` matches it (so one byte shorter).
pub fn check_prefix(prefix: &str) -> Result<(), InterfaceNameError> {
    check_common(prefix, MAX_LEN - 1)?;
    if prefix.ends_with('+') {
        return Err(InterfaceNameError::PlusInPrefix);
    }
    Ok(())
}

fn check_common(s: &str, max: usize) -> Result<(), InterfaceNameError> {
    if s.is_empty() {
        return Err(InterfaceNameError::Empty);
    }
    if s.len() > max {
        return Err(InterfaceNameError::TooLong { len: s.len(), max });
    }
    let mut utf8 = [0; 4];
    for c in s.chars() {
        // The kernel's isspace also takes the byte 0xA0, which UTF-8 uses inside characters.
        let kernel_blank = c.encode_utf8(&mut utf8).bytes().any(|b| b == 0xa0);
        if matches!(c, '/' | ':' | '"') || c.is_whitespace() || c.is_control() || kernel_blank {
            return Err(InterfaceNameError::Character(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_gives_are_accepted() {
        for name in ["eth0", "cbr0", "br-1a2b3c4d5e6f", "veth.100", "ëth0", "a"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
        for prefix in ["veth", "cali", "azv", "lxc12345678901"] {
            assert_eq!(check_prefix(prefix), Ok(()), "{prefix}");
        }
    }

    #[test]
    fn names_the_kernel_or_iptables_refuse_are_errors() {
        use InterfaceNameError::*;
        for (name, want) in [
            ("", Empty),
            ("abcdefghijklmnop", TooLong { len: 16, max: 15 }),
            (".", Dots),
            ("..", Dots),
            ("eth/0", Character('/')),
            ("eth0:1", Character(':')),
            ("veth -j ACCEPT", Character(' ')),
            ("eth\t0", Character('\t')),
            ("eth\n0", Character('\n')),
            ("eth\"0", Character('"')),
            ("eth\u{1b}0", Character('\u{1b}')),
            ("eth\u{a0}0", Character('\u{a0}')),
            // U+0160 (Š) is C5 A0 in UTF-8: the kernel sees a blank in it.
            ("\u{160}0", Character('\u{160}')),
            ("cbr+", Wildcard),
        ] {
            assert_eq!(check_name(name), Err(want), "{name:?}");
        }
        // The prefix is written with a `+`, which must fit too.
        assert_eq!(
            check_prefix("abcdefghijklmno"),
            Err(TooLong { len: 15, max: 14 })
        );
        assert_eq!(check_prefix("veth+"), Err(PlusInPrefix));
        assert_eq!(check_prefix("veth -j ACCEPT"), Err(Character(' ')));
        assert_eq!(check_prefix(""), Err(Empty));
    }
}
