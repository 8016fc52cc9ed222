//! The two iptables back ends and two address families, and the binaries each pair uses.

use std::fmt;

/// Which kernel API the iptables tools drive: both exist on a node, but only one may hold rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-legacy`: the x_tables setsockopt API (takes the xtables lock).
    Legacy,
    /// `iptables-nft`: the same rules, stored as nf_tables.
    Nft,
}

/// The address family: `iptables-*` for IPv4, `ip6tables-*` for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Backend {
    /// Both back ends, legacy first.
    pub const ALL: [Backend; 2] = [Backend::Legacy, Backend::Nft];

    /// `legacy` or `nft`, as in the binaries' names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    /// The rule tool: `iptables-legacy`, `ip6tables-nft`, …
    pub fn iptables(self, family: Family) -> String {
        format!("{}-{}", family.tool(), self.name())
    }

    /// The dump tool: `iptables-legacy-save`, `ip6tables-nft-save`, …
    pub fn save(self, family: Family) -> String {
        format!("{}-{}-save", family.tool(), self.name())
    }

    /// The transaction tool: `iptables-nft-restore`, `ip6tables-legacy-restore`, …
    pub fn restore(self, family: Family) -> String {
        format!("{}-{}-restore", family.tool(), self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `iptables` or `ip6tables`.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The `nft` family iptables-nft keeps this family's tables in: `ip` or `ip6`.
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl From<rulegen::IpFamily> for Family {
    fn from(f: rulegen::IpFamily) -> Self {
        match f {
            rulegen::IpFamily::V4 => Family::V4,
            rulegen::IpFamily::V6 => Family::V6,
        }
    }
}

impl From<Family> for rulegen::IpFamily {
    fn from(f: Family) -> Self {
        match f {
            Family::V4 => rulegen::IpFamily::V4,
            Family::V6 => rulegen::IpFamily::V6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(Backend::Nft.restore(Family::V4), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.save(Family::V6), "ip6tables-legacy-save");
        assert_eq!(Backend::Legacy.iptables(Family::V4), "iptables-legacy");
        assert_eq!(Backend::Nft.iptables(Family::V6), "ip6tables-nft");
    }
}
