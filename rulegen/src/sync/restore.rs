//! What the node agent sends to the kernel: the `iptables-restore --noflush` payload of a full
//! sync, the hook rules that must be ensured separately in the built-in chains, and the chain
//! names found in an `iptables-save` dump (to find stale chains to delete).
//!
//! A `--noflush` restore can only append to a built-in chain, so re-sending the hooks on every
//! sync would duplicate them; upstream ensures each hook with check-then-insert instead, and so
//! does the agent. Everything else the proxy owns is declared in the payload (which flushes it)
//! and refilled, in one atomic transaction per table.

use std::collections::BTreeMap;
use std::fmt;

use crate::render::iptables::chains::{ChainName, SERVICE_CHAIN_PREFIXES};
use crate::render::ruleset::Ruleset;
use crate::sync::payload::{Payload, Piece};

/// One hook rule in a built-in chain, as the agent ensures it (`iptables -t TABLE -C/-I CHAIN …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub table: &'static str,
    /// The built-in chain (`INPUT`, `PREROUTING`, …).
    pub chain: &'static str,
    /// The rule's arguments after `-A CHAIN`, split the way a shell would (quotes removed).
    pub args: Vec<String>,
}

/// Splits a saved rule's text into arguments: whitespace separates, double quotes group, and a
/// backslash escapes the next character (the quoting `iptables-save` produces).
pub fn split_args(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_arg = true;
            }
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    out.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        out.push(cur);
    }
    out
}

impl Ruleset {
    /// The hook rules of every built-in chain, in the order the chain should hold them.
    pub fn hooks(&self) -> Vec<Hook> {
        let mut out = Vec::new();
        for t in &self.tables {
            for b in &t.builtins {
                for line in b.rules.lines() {
                    let prefix = format!("-A {} ", b.name);
                    if let Some(rest) = line.strip_prefix(&prefix) {
                        out.push(Hook {
                            table: t.name,
                            chain: b.name,
                            args: split_args(rest),
                        });
                    }
                }
            }
        }
        out
    }

    /// The `iptables-restore --noflush` payload of a full sync: per table, every owned chain
    /// declared and refilled, then each chain in `stale` (found on the node, not rendered any
    /// more) flushed and deleted. Built-in chains are left alone (see [`Ruleset::hooks`]).
    ///
    /// Of a ruleset rendered under a [`Retain`](crate::Retain) policy, only the chains whose
    /// rules were kept are written (one chunk of a chunked full sync), and a table with nothing
    /// to write is left out.
    pub fn full_payload<'a>(&'a self, stale: &'a StaleChains) -> Payload<'a> {
        let mut p = Payload::default();
        p.pieces
            .reserve(self.tables.iter().map(|t| 2 * t.chain_count() + 2).sum());
        for t in &self.tables {
            let gone = stale.get(t.name).map(Vec::as_slice).unwrap_or_default();
            let kept = || t.chain_entries().filter_map(|e| Some((e.name, e.rules?)));
            if kept().next().is_none() && gone.is_empty() {
                continue;
            }
            p.push(Piece::Table(t.name));
            for (name, _) in kept() {
                p.push(Piece::Declare(name));
            }
            for name in gone {
                p.push(Piece::Declare(name));
            }
            for (_, rules) in kept() {
                p.push(Piece::Rules(rules));
            }
            for name in gone {
                p.push(Piece::Delete(name));
            }
            p.push(Piece::Commit);
        }
        p
    }

    /// Writes [`Ruleset::full_payload`] to `out`.
    pub fn write_full_restore<W: fmt::Write>(
        &self,
        stale: &StaleChains,
        out: &mut W,
    ) -> fmt::Result {
        self.full_payload(stale).write_to(out)
    }

    /// The chains the proxy owns in `table` that exist on the node (per `existing`) but are not
    /// rendered here any more: per-service chains (`KUBE-SVC-`, `KUBE-SEP-`, …) only, so that a
    /// node taken over from kube-proxy loses its stale Services and nothing else.
    pub fn stale_chains(&self, existing: &SavedChains) -> StaleChains {
        let mut out = StaleChains::new();
        for t in &self.tables {
            let Some(names) = existing.get(t.name) else {
                continue;
            };
            let gone: Vec<ChainName> = names
                .iter()
                .filter(|n| {
                    SERVICE_CHAIN_PREFIXES
                        .iter()
                        .any(|p| n.as_str().starts_with(p))
                })
                .filter(|n| t.chain_rules(n.as_str()).is_none())
                .copied()
                .collect();
            if !gone.is_empty() {
                out.insert(t.name.to_string(), gone);
            }
        }
        out
    }
}

/// Stale chains to delete, per table name.
pub type StaleChains = BTreeMap<String, Vec<ChainName>>;

/// The user-defined chains an `iptables-save` dump declares, per table name.
pub type SavedChains = BTreeMap<String, Vec<ChainName>>;

/// Reads the chain declarations (`:NAME - [p:b]`) of an `iptables-save` dump; built-in chains
/// (those with a policy) are skipped.
pub fn saved_chains(save_text: &str) -> SavedChains {
    let mut out = SavedChains::new();
    let mut table: Option<String> = None;
    for line in save_text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim().to_string());
            out.entry(name.trim().to_string()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
                continue;
            };
            if policy != "-" {
                continue;
            }
            if let (Some(t), Some(chain)) = (&table, ChainName::parse(name)) {
                out.entry(t.clone()).or_default().push(chain);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RenderConfig;
    use crate::model::{Endpoint, Model, Protocol, ServicePort, ServicePortName};

    fn ruleset(names: &[&str]) -> Ruleset {
        let services = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut sp = ServicePort::cluster_ip(
                    ServicePortName::new("ns", *n, "p"),
                    Protocol::Tcp,
                    format!("10.96.0.{}", i + 1).parse().unwrap(),
                    80,
                );
                sp.endpoints.push(Endpoint::ready(
                    format!("10.244.0.{}", i + 1).parse().unwrap(),
                    8080,
                ));
                sp
            })
            .collect();
        crate::render(&Model { services }, &RenderConfig::default()).unwrap()
    }

    #[test]
    fn split_args_undoes_save_quoting() {
        assert_eq!(
            split_args(r#"-m comment --comment "a b \"c\"" -j X"#),
            vec!["-m", "comment", "--comment", "a b \"c\"", "-j", "X"]
        );
        assert_eq!(
            split_args(r#"--comment "" -j Y"#),
            vec!["--comment", "", "-j", "Y"]
        );
    }

    #[test]
    fn hooks_come_from_builtin_chains_in_order() {
        let rs = ruleset(&["a"]);
        let hooks = rs.hooks();
        let input: Vec<&Hook> = hooks.iter().filter(|h| h.chain == "INPUT").collect();
        assert_eq!(input[0].args, vec!["-j", "KUBE-FIREWALL"]);
        assert_eq!(
            input.last().unwrap().args.last().unwrap(),
            "KUBE-EXTERNAL-SERVICES"
        );
        assert!(
            hooks
                .iter()
                .any(|h| h.table == "nat" && h.chain == "POSTROUTING")
        );
    }

    #[test]
    fn full_restore_omits_builtins_and_deletes_stale_chains() {
        let old = ruleset(&["a", "b"]);
        let new = ruleset(&["a"]);
        let existing = saved_chains(&old.to_save_text());
        let stale = new.stale_chains(&existing);
        let nat_stale = &stale["nat"];
        assert_eq!(nat_stale.len(), 2, "b's SVC and SEP: {nat_stale:?}");
        assert!(!stale.contains_key("filter"));
        let mut payload = String::new();
        new.write_full_restore(&stale, &mut payload).unwrap();
        assert!(!payload.contains(":INPUT"));
        assert!(!payload.contains("-A PREROUTING"));
        for c in nat_stale {
            assert!(payload.contains(&format!(":{c} - [0:0]\n")));
            assert!(payload.contains(&format!("-X {c}\n")));
        }
        // -X comes after every rule, once nothing refers to the chain any more.
        let first_x = payload.find("-X ").unwrap();
        assert!(payload[first_x..].lines().all(|l| l.starts_with("-X ")
            || l == "COMMIT"
            || l.starts_with("*")
            || l.starts_with(':')));
    }

    #[test]
    fn only_service_chains_are_ever_stale() {
        let rs = ruleset(&[]);
        let existing = saved_chains(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:MY-CHAIN - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
        );
        let stale = rs.stale_chains(&existing);
        assert_eq!(
            stale["nat"],
            vec![ChainName::new("KUBE-SVC-AAAAAAAAAAAAAAAA")]
        );
    }
}
