//! The two iptables back ends, the tool names of the two address families, and the binaries
//! each pair uses.

use std::fmt;

use rulegen::IpFamily;

/// Which kernel API the iptables tools drive: both exist on a node, but only one may hold rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-legacy`: the x_tables setsockopt API (takes the xtables lock).
    Legacy,
    /// `iptables-nft`: the same rules, stored as nf_tables.
    Nft,
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
    pub fn iptables(self, family: IpFamily) -> String {
        format!("{}-{}", family.tool(), self.name())
    }

    /// The dump tool: `iptables-legacy-save`, `ip6tables-nft-save`, …
    pub fn save(self, family: IpFamily) -> String {
        format!("{}-{}-save", family.tool(), self.name())
    }

    /// The transaction tool: `iptables-nft-restore`, `ip6tables-legacy-restore`, …
    pub fn restore(self, family: IpFamily) -> String {
        format!("{}-{}-restore", family.tool(), self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tool names of an address family: `iptables-*` for IPv4, `ip6tables-*` for IPv6.
pub trait FamilyTools {
    /// `iptables` or `ip6tables`.
    fn tool(self) -> &'static str;
    /// The `nft` family iptables-nft keeps this family's tables in: `ip` or `ip6`.
    fn nft_family(self) -> &'static str;
    /// `IPv4` or `IPv6`, as logs and errors name it.
    fn label(self) -> &'static str;
}

impl FamilyTools for IpFamily {
    fn tool(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }

    fn nft_family(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    fn label(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(Backend::Nft.restore(IpFamily::V4), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.save(IpFamily::V6), "ip6tables-legacy-save");
        assert_eq!(Backend::Legacy.iptables(IpFamily::V4), "iptables-legacy");
        assert_eq!(Backend::Nft.iptables(IpFamily::V6), "ip6tables-nft");
    }
}
