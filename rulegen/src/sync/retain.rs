//! [`Retain`]: which rendered chains keep their rule text.
//!
//! A 10,000-Service node renders 33 MB of rules. A partial sync needs the text of the few
//! chains that changed, and a full sync can send the rules a chunk at a time; neither needs
//! the whole text at once. Under a policy other than [`Retain::All`] a table fingerprints every
//! chain as it is rendered and drops the text of those the policy does not keep.

use std::sync::Arc;

use crate::render::iptables::chains::ChainName;
use crate::render::ruleset::Ruleset;
use crate::sync::partial::AppliedState;

/// Where a chain goes in a full sync sent in chunks: chains are filled in this order, so every
/// jump in a chunk lands on a chain an earlier chunk (or the same one) filled — the kernel
/// refuses a jump to a chain that does not exist yet, and a half-filled node must never
/// send a packet nowhere.
pub fn apply_rank(name: &ChainName) -> u8 {
    let n = name.as_str();
    if n.starts_with("KUBE-SEP-") {
        1
    } else if n.starts_with("KUBE-SVC-") || n.starts_with("KUBE-SVL-") {
        2
    } else if n.starts_with("KUBE-EXT-") {
        3
    } else if n.starts_with("KUBE-FW-") {
        4
    } else if n == crate::render::iptables::chains::KUBE_NODEPORTS
        || n == crate::render::iptables::chains::KUBE_EXTERNAL_SERVICES
    {
        5
    } else if n == crate::render::iptables::chains::KUBE_SERVICES {
        6
    } else {
        // KUBE-MARK-MASQ, KUBE-POSTROUTING, KUBE-FORWARD, the firewalls, the canary: leaves.
        // (Ranks stay below 7: `plan_chunks` walks them.)
        0
    }
}

/// A chain's place in the fill order of a chunked full sync.
pub type FillKey = (u8, ChainName);

/// The fill-order key of `name`.
pub fn fill_key(name: &ChainName) -> FillKey {
    (apply_rank(name), *name)
}

/// A run of one table's chains in fill order: `from` (inclusive) to `to` (exclusive; `None`
/// means to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The table.
    pub table: &'static str,
    /// The first chain of the run.
    pub from: FillKey,
    /// The first chain after the run, if any.
    pub to: Option<FillKey>,
}

impl Chunk {
    /// Whether chain `name` of `table` is in the run.
    pub fn contains(&self, table: &str, name: &ChainName) -> bool {
        if table != self.table {
            return false;
        }
        let key = fill_key(name);
        key >= self.from && self.to.as_ref().is_none_or(|to| key < *to)
    }
}

/// Splits a full sync of `rs` (rendered under any policy: only names and sizes are read) into
/// chunks of about `max_bytes` of rules each, per table in the ruleset's table order, each
/// table's chains in fill order. Sent in this order, every chunk only jumps to chains that
/// exist.
pub fn plan_chunks(rs: &Ruleset, max_bytes: usize) -> Vec<Chunk> {
    const RANKS: u8 = 7;
    let mut out = Vec::new();
    for t in &rs.tables {
        // A table's chains are sorted by name, so walking them once per rank visits them in
        // fill order without sorting (or copying) 100,000+ keys.
        let ordered = (0..RANKS).flat_map(|rank| {
            t.chain_entries()
                .filter(move |e| apply_rank(e.name) == rank)
                .map(move |e| ((rank, *e.name), e.len + e.name.as_str().len() + 10))
        });
        let mut from = None;
        let mut size = 0;
        for (key, len) in ordered {
            let start = *from.get_or_insert(key);
            if size > 0 && size + len > max_bytes {
                out.push(Chunk {
                    table: t.name,
                    from: start,
                    to: Some(key),
                });
                from = Some(key);
                size = 0;
            }
            size += len;
        }
        if let Some(from) = from {
            out.push(Chunk {
                table: t.name,
                from,
                to: None,
            });
        }
    }
    out
}

/// Which chains keep their rule text after rendering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Retain {
    /// Every chain (the dry-run, golden files, tests).
    #[default]
    All,
    /// None: only names and fingerprints (planning a chunked full sync).
    Nothing,
    /// Chains whose fingerprint differs from what the kernel was last given, and new ones
    /// (a partial sync).
    Changed(Arc<AppliedState>),
    /// One chunk of a full sync.
    Chunk(Chunk),
}

impl Retain {
    /// Whether chain `name` of `table`, whose rules have `fingerprint`, keeps its text.
    pub fn keeps(&self, table: &str, name: &ChainName, fingerprint: u64) -> bool {
        match self {
            Retain::All => true,
            Retain::Nothing => false,
            Retain::Changed(applied) => applied.fingerprint(table, name) != Some(fingerprint),
            Retain::Chunk(chunk) => chunk.contains(table, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_order_puts_jump_targets_first() {
        let order = [
            "KUBE-MARK-MASQ",
            "KUBE-SEP-AAAA",
            "KUBE-SVC-AAAA",
            "KUBE-SVL-AAAA",
            "KUBE-EXT-AAAA",
            "KUBE-FW-AAAA",
            "KUBE-NODEPORTS",
            "KUBE-SERVICES",
        ];
        let keys: Vec<FillKey> = order.iter().map(|n| fill_key(&ChainName::new(n))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    #[test]
    fn a_chunk_holds_its_table_and_range() {
        let c = Chunk {
            table: "nat",
            from: fill_key(&ChainName::new("KUBE-SEP-B")),
            to: Some(fill_key(&ChainName::new("KUBE-SVC-A"))),
        };
        assert!(c.contains("nat", &ChainName::new("KUBE-SEP-B")));
        assert!(c.contains("nat", &ChainName::new("KUBE-SEP-Z")));
        assert!(!c.contains("nat", &ChainName::new("KUBE-SEP-A")));
        assert!(!c.contains("nat", &ChainName::new("KUBE-SVC-A")));
        assert!(!c.contains("filter", &ChainName::new("KUBE-SEP-C")));
    }
}
