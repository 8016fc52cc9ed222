//! A rendered ruleset: tables of chains holding rule lines, printed exactly as `iptables-save`
//! prints them (built-in chains first, then the others sorted by name, counters `[0:0]`).

use std::ops::Range;

use crate::chains::ChainName;
use crate::model::IpFamily;

/// One built-in chain (`INPUT`, `PREROUTING`, …) with the hook rules the proxy puts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinChain {
    /// The chain's name.
    pub name: &'static str,
    /// Its rule lines, each `-A NAME …\n`.
    pub rules: String,
}

/// One table (`filter`, `nat`) as the proxy renders it.
///
/// The owned chains' rules live in one text buffer, each chain a range of it: a large node has
/// 100,000+ chains, and one allocation per chain cost more than writing the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `filter`, `nat` or `mangle`.
    pub name: &'static str,
    /// The built-in chains, in the kernel's order.
    pub builtins: Vec<BuiltinChain>,
    text: String,
    // Sorted by name once `seal` has run.
    chains: Vec<(ChainName, Range<usize>)>,
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
        }
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
        let at = self.text.len();
        self.chains.push((name, at..at));
    }

    /// The buffer the current chain's rule lines are appended to.
    pub fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }

    /// Closes the chain opened by `begin_chain`.
    pub fn end_chain(&mut self) {
        let end = self.text.len();
        if let Some(last) = self.chains.last_mut() {
            last.1.end = end;
        }
    }

    /// Adds a whole owned chain at once.
    pub fn add_chain(&mut self, name: ChainName, rules: &str) {
        self.begin_chain(name);
        self.text.push_str(rules);
        self.end_chain();
    }

    /// Sorts the owned chains by name, as `iptables-save` lists them. Call after the last chain.
    ///
    /// Panics if a chain was added twice: that is a renderer bug, and restoring it would fail.
    pub fn seal(&mut self) {
        // Sorting by precomputed integer keys: comparing names directly was a tenth of the
        // render time at 100,000 chains.
        self.chains.sort_by_cached_key(|c| c.0.sort_key());
        if let Some(w) = self.chains.windows(2).find(|w| w[0].0 == w[1].0) {
            panic!("chain {} rendered twice in table {}", w[0].0, self.name);
        }
    }

    /// The rule lines of a chain (built-in or owned), if the table has it.
    pub fn chain_rules(&self, name: &str) -> Option<&str> {
        if let Some(b) = self.builtins.iter().find(|b| b.name == name) {
            return Some(&b.rules);
        }
        let key = ChainName::parse(name)?;
        let i = self.chains.binary_search_by(|c| c.0.cmp(&key)).ok()?;
        Some(&self.text[self.chains[i].1.clone()])
    }

    /// The owned chains in name order, each with its rule lines.
    pub fn chains(&self) -> impl Iterator<Item = (&ChainName, &str)> {
        self.chains.iter().map(|(n, r)| (n, &self.text[r.clone()]))
    }

    /// How many rules the table holds (built-in hooks included).
    pub fn rule_count(&self) -> usize {
        let count = |s: &str| s.bytes().filter(|b| *b == b'\n').count();
        self.builtins.iter().map(|b| count(&b.rules)).sum::<usize>() + count(&self.text)
    }

    /// Appends this table in `iptables-save` form.
    pub fn write_save_text(&self, out: &mut String) {
        out.reserve(self.text.len() + 32 * self.chains.len() + 4096);
        out.push('*');
        out.push_str(self.name);
        out.push('\n');
        for b in &self.builtins {
            out.push(':');
            out.push_str(b.name);
            out.push_str(" ACCEPT [0:0]\n");
        }
        for (name, _) in &self.chains {
            out.push(':');
            out.push_str(name.as_str());
            out.push_str(" - [0:0]\n");
        }
        for b in &self.builtins {
            out.push_str(&b.rules);
        }
        for (_, range) in &self.chains {
            out.push_str(&self.text[range.clone()]);
        }
        out.push_str("COMMIT\n");
    }
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
        let mut out = String::new();
        for t in &self.tables {
            t.write_save_text(&mut out);
        }
        out
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
        t.write_save_text(&mut s);
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
