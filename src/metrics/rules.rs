//! How many rules the proxy owns per table (`kubeproxy_sync_proxy_rules_iptables_total`) and
//! how many the last sync wrote (`…_iptables_last`), as upstream counts them: the rules of the
//! proxy's own chains, not the hook jumps in the built-in chains.
//!
//! A partial sync renders only the changed chains' rules, so the others' counts are kept from
//! the sync that last wrote them, keyed by the chain's fingerprint (a chain's count follows
//! from its text, and its fingerprint from that text): one 16-byte map entry per chain, about
//! 2 MB at 10,000 Services × 10 endpoints. A full sync starts the map over; between full syncs,
//! entries of chains gone are dropped once they outnumber the live ones.

use std::collections::HashMap;

use rulegen::Ruleset;

/// Rule counts by chain fingerprint.
#[derive(Debug, Default)]
pub struct RuleCounts {
    counts: HashMap<u64, u32>,
}

/// One table's counts after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCount {
    /// `filter` or `nat`.
    pub table: &'static str,
    /// Rules in the proxy's chains of the table.
    pub total: u64,
    /// Rules the sync wrote.
    pub written: u64,
}

/// Tables upstream reports (`mangle` holds only the empty canary chain and is not reported).
const REPORTED: [&str; 2] = ["filter", "nat"];

fn lines(text: &str) -> u32 {
    text.bytes().filter(|b| *b == b'\n').count() as u32
}

impl RuleCounts {
    /// A full sync starts: every chain is rendered (and recorded) again, so the previous counts
    /// go now rather than after it (never two maps at once).
    pub fn begin_full(&mut self) {
        self.counts = HashMap::new();
    }

    /// Records the rules of every chain `rs` kept the text of (a partial sync's changed chains,
    /// or one chunk of a full sync).
    pub fn observe(&mut self, rs: &Ruleset) {
        for t in rs.tables.iter().filter(|t| REPORTED.contains(&t.name)) {
            for c in t.chain_entries() {
                if let Some(rules) = c.rules {
                    self.counts.insert(c.fingerprint, lines(rules));
                }
            }
        }
    }

    /// The counts of `rs` after a successful sync: `full` when every chain was written (and
    /// recorded since [`Self::begin_full`]), else a partial sync whose changed chains `rs`
    /// still holds. `None` when a chain's count is unknown (a partial sync without a full one
    /// before it: cannot happen in the agent).
    pub fn after_sync(&mut self, rs: &Ruleset, full: bool) -> Option<Vec<TableCount>> {
        if !full {
            self.observe(rs);
        }
        let mut out = Vec::new();
        let mut chains = 0;
        for t in rs.tables.iter().filter(|t| REPORTED.contains(&t.name)) {
            let (mut total, mut written) = (0u64, 0u64);
            for c in t.chain_entries() {
                let n = u64::from(*self.counts.get(&c.fingerprint)?);
                total += n;
                if full || c.rules.is_some() {
                    written += n;
                }
                chains += 1;
            }
            out.push(TableCount {
                table: t.name,
                total,
                written,
            });
        }
        if self.counts.len() > 2 * chains + 1024 {
            self.keep_only(rs);
        }
        Some(out)
    }

    /// Drops the counts of chains `rs` no longer has.
    fn keep_only(&mut self, rs: &Ruleset) {
        let mut live = HashMap::with_capacity(self.counts.len() / 2);
        for t in rs.tables.iter().filter(|t| REPORTED.contains(&t.name)) {
            for c in t.chain_entries() {
                if let Some(n) = self.counts.get(&c.fingerprint) {
                    live.insert(c.fingerprint, *n);
                }
            }
        }
        self.counts = live;
    }

    /// How many chain counts are kept.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no count is kept.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rulegen::render::iptables::chains::ChainName;
    use rulegen::{AppliedState, Retain, Table};
    use std::sync::Arc;

    /// A ruleset of `chains` (table, name, rules), rendered under `retain`.
    fn ruleset(chains: &[(&str, &str, &str)], retain: Retain) -> Ruleset {
        let mut tables = vec![
            Table::new("filter", &["INPUT"]),
            Table::new("nat", &["PREROUTING"]),
        ];
        for t in &mut tables {
            t.set_retain(retain.clone());
        }
        for (table, name, rules) in chains {
            let t = tables.iter_mut().find(|t| t.name == *table).unwrap();
            t.add_chain(ChainName::new(name), rules);
        }
        tables[1].builtins[0]
            .rules
            .push_str("-A PREROUTING -j KUBE-SERVICES\n");
        for t in &mut tables {
            t.seal();
        }
        Ruleset {
            family: rulegen::IpFamily::V4,
            tables,
        }
    }

    const FORWARD: (&str, &str, &str) = ("filter", "KUBE-FORWARD", "-A KUBE-FORWARD -j ACCEPT\n");
    const SERVICES: (&str, &str, &str) = (
        "nat",
        "KUBE-SERVICES",
        "-A KUBE-SERVICES -j KUBE-SVC-A\n-A KUBE-SERVICES -j KUBE-SVC-B\n",
    );

    #[test]
    fn full_then_partial_counts_follow_the_chains() {
        let mut c = RuleCounts::default();
        let svc_a = ("nat", "KUBE-SVC-A", "-A KUBE-SVC-A -j KUBE-SEP-A\n");
        let full = ruleset(&[FORWARD, SERVICES, svc_a], Retain::All);
        c.begin_full();
        c.observe(&full);
        let counts = c.after_sync(&full, true).unwrap();
        let count = |table, total, written| TableCount {
            table,
            total,
            written,
        };
        assert_eq!(
            counts,
            vec![count("filter", 1, 1), count("nat", 3, 3)],
            "the hook jump in PREROUTING is not counted"
        );

        // KUBE-SVC-A gains a rule: a partial render keeps only its text.
        let applied = Arc::new(AppliedState::of(&full));
        let svc_a2 = (
            "nat",
            "KUBE-SVC-A",
            "-A KUBE-SVC-A -j KUBE-SEP-A\n-A KUBE-SVC-A -j KUBE-SEP-B\n",
        );
        let partial = ruleset(&[FORWARD, SERVICES, svc_a2], Retain::Changed(applied));
        let counts = c.after_sync(&partial, false).unwrap();
        assert_eq!(counts, vec![count("filter", 1, 0), count("nat", 4, 2)]);

        // A partial render whose unchanged chain was never counted: unknown, not a guess.
        let mut blank = RuleCounts::default();
        let unchanged = ruleset(
            &[FORWARD, SERVICES, svc_a2],
            Retain::Changed(Arc::new(AppliedState::of(&partial_all(svc_a2)))),
        );
        assert_eq!(blank.after_sync(&unchanged, false), None);
    }

    #[test]
    fn counts_of_chains_gone_are_dropped_eventually() {
        let mut c = RuleCounts::default();
        let full = ruleset(&[FORWARD, SERVICES], Retain::All);
        c.begin_full();
        c.observe(&full);
        c.after_sync(&full, true).unwrap();
        // 3,000 changes of one chain between full syncs: the map stays bounded.
        for i in 0..3000 {
            let rules = format!("-A KUBE-SVC-A -j KUBE-SEP-{i}\n");
            let applied = Arc::new(AppliedState::of(&full));
            let rs = ruleset(
                &[FORWARD, SERVICES, ("nat", "KUBE-SVC-A", rules.as_str())],
                Retain::Changed(applied),
            );
            let counts = c.after_sync(&rs, false).unwrap();
            assert_eq!(counts[1].total, 3);
        }
        assert!(c.len() <= 2 * 3 + 1024 + 1, "{}", c.len());
    }

    fn partial_all(svc: (&'static str, &'static str, &'static str)) -> Ruleset {
        ruleset(&[FORWARD, SERVICES, svc], Retain::All)
    }
}
