//! A rendered ruleset: tables of chains holding rule lines, printed exactly as `iptables-save`
//! prints them (built-in chains first, then the others sorted by name, counters `[0:0]`).

use std::fmt;
use std::ops::Range;

use crate::model::IpFamily;
use crate::render::iptables::chains::ChainName;
use crate::sync::partial::fingerprint;
use crate::sync::retain::Retain;

/// One built-in chain (`INPUT`, `PREROUTING`, …) with the hook rules the proxy puts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinChain {
    /// The chain's name.
    pub name: &'static str,
    /// Its rule lines, each `-A NAME …\n`.
    pub rules: String,
}

/// One owned chain of a [`Table`]: its name, where its rules sit in the table's text, and the
/// fingerprint of those rules (kept even when the text is not, see [`Retain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    name: ChainName,
    // Whether `start..start + len` still holds the rules (see `Retain`).
    kept: bool,
    start: u32,
    len: u32,
    fingerprint: u64,
}

impl Chain {
    fn range(&self) -> Range<usize> {
        if self.kept {
            self.start as usize..(self.start + self.len) as usize
        } else {
            0..0
        }
    }
}

/// One table (`filter`, `nat`) as the proxy renders it.
///
/// The owned chains' rules live in one text buffer, each chain a range of it: a large node has
/// 100,000+ chains, and one allocation per chain cost more than writing the rules. Under a
/// [`Retain`] policy other than `All`, chains it does not keep are fingerprinted and their text
/// dropped as soon as they are rendered, so a large node's render never holds it all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `filter`, `nat` or `mangle`.
    pub name: &'static str,
    /// The built-in chains, in the kernel's order.
    pub builtins: Vec<BuiltinChain>,
    text: String,
    // Sorted by name once `seal` has run.
    chains: Vec<Chain>,
    retain: Retain,
}

impl Table {
    /// A table with these built-in chains and no owned chains.
    pub fn new(name: &'static str, builtins: &[&'static str]) -> Self {
        Table {
            name,
            builtins: builtins
                .iter()
                .map(|b| BuiltinChain {
                    name: b,
                    rules: String::new(),
                })
                .collect(),
            text: String::new(),
            chains: Vec::new(),
            retain: Retain::All,
        }
    }

    /// Sets which chains keep their rule text from now on (default: all of them).
    pub fn set_retain(&mut self, retain: Retain) {
        self.retain = retain;
    }

    /// Whether every owned chain still holds its rule text (the table prints as it renders).
    pub fn is_complete(&self) -> bool {
        self.chains.iter().all(|c| c.kept)
    }

    /// Empties the table but keeps its allocations, so the next render writes into warm memory.
    pub fn clear(&mut self) {
        self.text.clear();
        self.chains.clear();
        for b in &mut self.builtins {
            b.rules.clear();
        }
    }

    /// Reserves room for `bytes` of rule text and `chains` chains.
    pub fn reserve(&mut self, bytes: usize, chains: usize) {
        self.text.reserve(bytes);
        self.chains.reserve(chains);
    }

    /// Starts a new owned chain; rules written with `text_mut` until `end_chain` belong to it.
    pub fn begin_chain(&mut self, name: ChainName) {
        let at = u32::try_from(self.text.len()).expect("rule text under 4 GiB");
        self.chains.push(Chain {
            name,
            kept: true,
            start: at,
            len: 0,
            fingerprint: 0,
        });
    }

    /// The buffer the current chain's rule lines are appended to.
    pub fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }

    /// Closes the chain opened by `begin_chain`.
    pub fn end_chain(&mut self) {
        let Some(last) = self.chains.last_mut() else {
            return;
        };
        let start = last.start as usize;
        let rules = &self.text[start..];
        last.len = u32::try_from(rules.len()).expect("rule text under 4 GiB");
        last.fingerprint = fingerprint(rules);
        if !self.retain.keeps(self.name, &last.name, last.fingerprint) {
            last.kept = false;
            self.text.truncate(start);
        }
    }

    /// Adds a whole owned chain at once.
    pub fn add_chain(&mut self, name: ChainName, rules: &str) {
        self.begin_chain(name);
        self.text.push_str(rules);
        self.end_chain();
    }

    /// Frees the rule text, keeping every chain's name and fingerprint (as if nothing had been
    /// retained): what a caller holds on to after sending a chunk.
    pub fn drop_text(&mut self) {
        self.text = String::new();
        for c in &mut self.chains {
            c.kept = false;
        }
    }

    /// Sorts the owned chains by name, as `iptables-save` lists them. Call after the last chain.
    ///
    /// Panics if a chain was added twice: that is a renderer bug, and restoring it would fail.
    pub fn seal(&mut self) {
        // Sorting by precomputed integer keys: comparing names directly was a tenth of the
        // render time at 100,000 chains.
        // Sort by the first 16 bytes only (prefix and 7 hash characters: practically unique),
        // then settle the rare ties by the rest: half the bytes to move than a full key.
        let mut keys: Vec<(u128, u32)> = self
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.sort_key().0, i as u32))
            .collect();
        keys.sort_unstable();
        let mut start = 0;
        while start < keys.len() {
            let mut end = start + 1;
            while end < keys.len() && keys[end].0 == keys[start].0 {
                end += 1;
            }
            if end - start > 1 {
                let chains = &self.chains;
                keys[start..end].sort_unstable_by_key(|k| chains[k.1 as usize].name.sort_key());
            }
            start = end;
        }
        // Apply the permutation in place, cycle by cycle: a sorted copy of the chain list was
        // 6 MB at the agent's peak (it happens when the table's text is at its largest).
        let order: Vec<u32> = keys.into_iter().map(|k| k.1).collect();
        let mut done = vec![false; order.len()];
        for start in 0..order.len() {
            if done[start] {
                continue;
            }
            // Position `i` must receive the element now at `order[i]`.
            let mut i = start;
            let first = self.chains[start];
            loop {
                done[i] = true;
                let from = order[i] as usize;
                if from == start {
                    self.chains[i] = first;
                    break;
                }
                self.chains[i] = self.chains[from];
                i = from;
            }
        }
        if let Some(w) = self.chains.windows(2).find(|w| w[0].name == w[1].name) {
            panic!("chain {} rendered twice in table {}", w[0].name, self.name);
        }
    }

    /// The rule lines of a chain (built-in or owned), if the table has it.
    pub fn chain_rules(&self, name: &str) -> Option<&str> {
        if let Some(b) = self.builtins.iter().find(|b| b.name == name) {
            return Some(&b.rules);
        }
        self.owned_chain(name).map(|(_, r)| r)
    }

    /// An owned chain's stored name and rule lines, if the table has it (the lines are empty
    /// when the table's [`Retain`] policy dropped them).
    pub fn owned_chain(&self, name: &str) -> Option<(&ChainName, &str)> {
        let key = ChainName::parse(name)?;
        let i = self.chains.binary_search_by(|c| c.name.cmp(&key)).ok()?;
        let c = &self.chains[i];
        Some((&c.name, &self.text[c.range()]))
    }

    /// The owned chains in name order, each with its rule lines (empty for a chain whose text
    /// was not retained).
    pub fn chains(&self) -> impl Iterator<Item = (&ChainName, &str)> {
        self.chains.iter().map(|c| (&c.name, &self.text[c.range()]))
    }

    /// The owned chains in name order: name, rule lines if retained, fingerprint, and the size
    /// the rule lines have (retained or not).
    pub fn chain_entries(&self) -> impl Iterator<Item = ChainEntry<'_>> {
        self.chains.iter().map(|c| ChainEntry {
            name: &c.name,
            rules: c.kept.then(|| &self.text[c.range()]),
            fingerprint: c.fingerprint,
            len: c.len as usize,
        })
    }

    /// How many owned chains the table holds.
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// How many rules the table holds (built-in hooks included).
    pub fn rule_count(&self) -> usize {
        let count = |s: &str| s.bytes().filter(|b| *b == b'\n').count();
        self.builtins.iter().map(|b| count(&b.rules)).sum::<usize>() + count(&self.text)
    }

    /// Writes this table in `iptables-save` form to `out` (a `String`, or a sink that streams
    /// to a pipe: the text of a large node is tens of megabytes, not worth copying once more).
    pub fn write_save_text<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        out.write_char('*')?;
        out.write_str(self.name)?;
        out.write_char('\n')?;
        for b in &self.builtins {
            out.write_char(':')?;
            out.write_str(b.name)?;
            out.write_str(" ACCEPT [0:0]\n")?;
        }
        debug_assert!(
            self.is_complete(),
            "printing a table whose text was dropped"
        );
        for c in &self.chains {
            out.write_char(':')?;
            out.write_str(c.name.as_str())?;
            out.write_str(" - [0:0]\n")?;
        }
        for b in &self.builtins {
            out.write_str(&b.rules)?;
        }
        for c in &self.chains {
            out.write_str(&self.text[c.range()])?;
        }
        out.write_str("COMMIT\n")
    }

    /// How many bytes `write_save_text` writes (to size a buffer once).
    pub fn save_text_len(&self) -> usize {
        let header = 1 + self.name.len() + 1;
        let builtins: usize = self
            .builtins
            .iter()
            .map(|b| 1 + b.name.len() + 14 + b.rules.len())
            .sum();
        let decls: usize = self
            .chains
            .iter()
            .map(|c| 1 + c.name.as_str().len() + 9)
            .sum();
        header + builtins + decls + self.text.len() + 7
    }
}

/// One owned chain as [`Table::chain_entries`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainEntry<'a> {
    /// Its name.
    pub name: &'a ChainName,
    /// Its rule lines, when the table kept them.
    pub rules: Option<&'a str>,
    /// The fingerprint of its rule lines.
    pub fingerprint: u64,
    /// The length of its rule lines.
    pub len: usize,
}

/// Every table the proxy owns for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family this ruleset is for (`iptables` or `ip6tables`).
    pub family: IpFamily,
    /// The tables, in the order they are printed.
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table called `name`, if rendered.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The whole ruleset as `iptables-save` prints it (no `#` lines), which is also a valid
    /// `iptables-restore` payload.
    pub fn to_save_text(&self) -> String {
        let mut out = String::with_capacity(self.tables.iter().map(Table::save_text_len).sum());
        self.write_save_text(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    /// Writes the whole ruleset in `iptables-save` form to `out`.
    pub fn write_save_text<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for t in &self.tables {
            t.write_save_text(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_print_sorted_with_their_rules() {
        let mut t = Table::new("nat", &["PREROUTING"]);
        t.builtins[0].rules.push_str("-A PREROUTING -j B\n");
        t.add_chain(ChainName::new("B"), "-A B -j A\n");
        t.add_chain(ChainName::new("A"), "");
        t.seal();
        let mut s = String::new();
        t.write_save_text(&mut s).unwrap();
        assert_eq!(s.len(), t.save_text_len());
        assert_eq!(
            s,
            "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A PREROUTING -j B\n-A B -j A\nCOMMIT\n"
        );
        assert_eq!(t.chain_rules("B"), Some("-A B -j A\n"));
        assert_eq!(t.chain_rules("A"), Some(""));
        assert_eq!(t.chain_rules("C"), None);
        assert_eq!(t.rule_count(), 2);
    }

    #[test]
    #[should_panic(expected = "rendered twice")]
    fn duplicate_chains_are_a_bug() {
        let mut t = Table::new("nat", &[]);
        t.add_chain(ChainName::new("A"), "");
        t.add_chain(ChainName::new("A"), "");
        t.seal();
    }
}
