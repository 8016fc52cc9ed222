//! Partial syncs: from what the kernel was last given and a new render, the smallest
//! `iptables-restore --noflush` payload that makes the kernel hold the new render.
//!
//! The last applied ruleset is remembered as one fingerprint per chain ([`AppliedState`]), not
//! as its text: at 10,000 Services that is 4 MB instead of 33 MB. A chain whose fingerprint
//! changed, or that is new, is declared (which flushes it) and refilled; a chain that is gone is
//! flushed and deleted; every other chain is left alone, dispatch chains included.
//!
//! Every partial payload also proves the tables were not flushed behind the proxy's back: in
//! each table it flushes the empty `KUBE-PROXY-CANARY` chain (fails when someone deleted the
//! chains) and checks each hook rule with `-C` (fails when someone flushed the built-in chains).
//! A failure aborts that table's transaction, and the caller then does a full sync. Upstream's
//! monitor only polls the mangle canary every sync period; this catches a flushed `nat` too,
//! on the very next sync, at the cost of a few lines in a restore that runs anyway.

use std::fmt;

use crate::model::IpFamily;
use crate::render::iptables::chains::{ChainName, KUBE_PROXY_CANARY};
use crate::render::ruleset::{Ruleset, Table};
use crate::sync::payload::{Payload, Piece};

/// A 64-bit fingerprint of a chain's rule text.
///
/// Only ever compared with the same chain's fingerprint from an earlier render, so it needs to
/// tell versions of one chain apart, not resist attack. Word-at-a-time multiply-xor keeps it at
/// a few milliseconds for a 33 MB ruleset; a single changed word always changes the result
/// (each step is a bijection of the state), and the length is mixed in.
pub fn fingerprint(text: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = text.as_bytes();
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8-byte chunk"));
        h = (h.rotate_left(23) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // Final avalanche (murmur3's fmix64), so nearby inputs do not give nearby fingerprints.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What one table held after the last successful sync.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppliedTable {
    name: &'static str,
    // One fingerprint over every built-in chain's hook rules: a partial sync cannot change
    // those (a `--noflush` restore can only append to a built-in chain).
    builtins: u64,
    // Sorted by name, as the table's chains are.
    chains: Vec<(ChainName, u64)>,
}

/// The fingerprints of a ruleset the kernel was given: what the next partial sync diffs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedState {
    family: IpFamily,
    tables: Vec<AppliedTable>,
}

impl AppliedState {
    /// The fingerprints of `rs`, to keep once the kernel holds it.
    pub fn of(rs: &Ruleset) -> Self {
        AppliedState {
            family: rs.family,
            tables: rs
                .tables
                .iter()
                .map(|t| AppliedTable {
                    name: t.name,
                    builtins: builtin_fingerprint(t),
                    chains: t
                        .chain_entries()
                        .map(|e| (*e.name, e.fingerprint))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The fingerprint the kernel's copy of chain `name` in `table` has, if it has the chain.
    pub fn fingerprint(&self, table: &str, name: &ChainName) -> Option<u64> {
        let t = self.tables.iter().find(|t| t.name == table)?;
        let i = t.chains.binary_search_by(|(n, _)| n.cmp(name)).ok()?;
        Some(t.chains[i].1)
    }

    /// How many owned chains it remembers.
    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }
}

fn builtin_fingerprint(t: &Table) -> u64 {
    let mut all = String::new();
    for b in &t.builtins {
        all.push_str(b.name);
        all.push('\n');
        all.push_str(&b.rules);
    }
    fingerprint(&all)
}

/// Why a partial sync cannot express the change, and a full sync is needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeedsFullSync {
    /// The new ruleset is for the other family.
    #[error("the ruleset's address family changed")]
    Family,
    /// The set of tables changed.
    #[error("the set of tables changed")]
    Tables,
    /// A built-in chain's hook rules changed (they are only ever ensured by a full sync).
    #[error("the hook rules in the built-in chains of table {0} changed")]
    Hooks(&'static str),
    /// A changed chain's text was not retained (the ruleset was rendered under a policy that
    /// does not match this diff).
    #[error("chain {1} of table {0} changed, but its rules were not kept")]
    NotRetained(&'static str, ChainName),
}

/// A partial sync's payload and what it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSync<'a> {
    /// The restore payload.
    pub payload: Payload<'a>,
    /// Chains declared and refilled (changed or new).
    pub chains_written: usize,
    /// Chains flushed and deleted (rendered before, not any more).
    pub chains_deleted: usize,
}

impl fmt::Display for PartialSync<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} chains written, {} deleted, {} bytes",
            self.chains_written,
            self.chains_deleted,
            self.payload.len()
        )
    }
}

impl Ruleset {
    /// The payload that turns a kernel holding `applied` into one holding `self`, with the
    /// canary and hook checks described in the [module docs](self).
    pub fn partial_payload<'a>(
        &'a self,
        applied: &'a AppliedState,
    ) -> Result<PartialSync<'a>, NeedsFullSync> {
        if applied.family != self.family {
            return Err(NeedsFullSync::Family);
        }
        if applied.tables.len() != self.tables.len()
            || applied
                .tables
                .iter()
                .zip(&self.tables)
                .any(|(a, t)| a.name != t.name)
        {
            return Err(NeedsFullSync::Tables);
        }
        let mut out = PartialSync {
            payload: Payload::default(),
            chains_written: 0,
            chains_deleted: 0,
        };
        for (t, old) in self.tables.iter().zip(&applied.tables) {
            if builtin_fingerprint(t) != old.builtins {
                return Err(NeedsFullSync::Hooks(t.name));
            }
            let (written, deleted) =
                diff(t, &old.chains).map_err(|n| NeedsFullSync::NotRetained(t.name, n))?;
            out.chains_written += written.len();
            out.chains_deleted += deleted.len();
            let p = &mut out.payload;
            p.push(Piece::Table(t.name));
            for (name, _) in &written {
                p.push(Piece::Declare(name));
            }
            for name in &deleted {
                p.push(Piece::Declare(name));
            }
            if let Some((canary, _)) = t.owned_chain(KUBE_PROXY_CANARY) {
                p.push(Piece::Flush(canary));
            }
            for b in &t.builtins {
                for line in b.rules.split_inclusive('\n') {
                    let rule = line.trim_end_matches('\n');
                    if let Some(rest) = rule.strip_prefix("-A ") {
                        p.push(Piece::Check(rest));
                    }
                }
            }
            for (_, rules) in &written {
                p.push(Piece::Rules(rules));
            }
            for name in deleted {
                p.push(Piece::Delete(name));
            }
            p.push(Piece::Commit);
        }
        Ok(out)
    }
}

/// The chains of `t` that differ from `old` (new or changed, with their rules) and the chains of
/// `old` that `t` lacks; both in name order. A merge of two sorted lists: O(chains). Fails with
/// the name of a changed chain whose rules were not retained.
#[allow(clippy::type_complexity)]
fn diff<'a>(
    t: &'a Table,
    old: &'a [(ChainName, u64)],
) -> Result<(Vec<(&'a ChainName, &'a str)>, Vec<&'a ChainName>), ChainName> {
    let mut written = Vec::new();
    let mut deleted = Vec::new();
    let mut old = old.iter().peekable();
    for e in t.chain_entries() {
        while let Some((o, _)) = old.next_if(|(o, _)| o < e.name) {
            deleted.push(o);
        }
        match old.next_if(|(o, _)| o == e.name) {
            Some((_, fp)) if *fp == e.fingerprint => {}
            _ => written.push((e.name, e.rules.ok_or(*e.name)?)),
        }
    }
    deleted.extend(old.map(|(o, _)| o));
    Ok((written, deleted))
}

#[cfg(test)]
mod tests;
