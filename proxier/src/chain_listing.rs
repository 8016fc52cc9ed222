//! Reading a large node's iptables tables in time proportional to what a sync needs.
//!
//! `iptables-nft-save` translates every rule of a table back into iptables syntax through
//! libxtables: at 10,000 Services (110,000 chains) `iptables-nft-save -t nat` ran 207 s with an
//! unlimited stack and died of SIGSEGV with the default one. A full sync needs far less: every
//! chain's name (to find stale ones) and the few built-in chains' rules (the hooks). On the nft
//! back end, `nft list chains ip` lists every chain of every table in about 2 s at that size,
//! and `iptables-nft -t TABLE -S CHAIN` prints one chain in tens of milliseconds; together they
//! give the same outline the save would. The legacy back end has no such shortcut but no such
//! problem: its save of the same node takes under 2 s, and is streamed, never held whole.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{Backend, FamilyTools};
use crate::command::{CommandError, Feed};
use crate::hooks::builtin_declared;
use crate::iptables::{Iptables, LOCK_WAIT_SECONDS};

/// One chain as `nft list chains` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChain {
    /// Its name.
    pub name: String,
    /// For a base chain (a built-in one of iptables-nft's tables), its policy in iptables'
    /// spelling (`ACCEPT`, `DROP`); `None` for a regular chain.
    pub policy: Option<String>,
}

/// Every table's chains, by table name, in listing order.
pub type ChainListing = BTreeMap<String, Vec<ListedChain>>;

/// Parses `nft list chains FAMILY`: `table ip nat {`, then `chain NAME {`, for a base chain a
/// `type … hook … policy accept;` line, and `}`.
pub fn parse_chain_listing(text: &str) -> ChainListing {
    let mut out = ChainListing::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            // `table ip nat {`: the name is the last word before the brace.
            let name = rest.trim_end_matches('{').split_whitespace().nth(1);
            table = name.map(|n| unquote(n).to_string());
            if let Some(n) = &table {
                out.entry(n.clone()).or_default();
            }
        } else if let Some(rest) = t.strip_prefix("chain ") {
            let name = unquote(rest.trim_end_matches('{').trim());
            if let Some(tab) = &table {
                out.entry(tab.clone()).or_default().push(ListedChain {
                    name: name.to_string(),
                    policy: None,
                });
            }
        } else if t.starts_with("type ")
            && t.contains(" hook ")
            && let Some(tab) = &table
            && let Some(last) = out.get_mut(tab).and_then(|c| c.last_mut())
        {
            let policy = t
                .split("policy ")
                .nth(1)
                .map(|p| p.trim_end_matches(';').trim().to_ascii_uppercase())
                .unwrap_or_else(|| "ACCEPT".to_string());
            last.policy = Some(policy);
        }
    }
    out
}

/// Whether `e` says the program is not installed: not found when started directly, or `ip
/// netns exec`'s "exec of … failed: No such file or directory" when started through it.
fn not_installed(e: &CommandError) -> bool {
    match e {
        CommandError::Spawn { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        CommandError::Failed { stderr, .. } => {
            stderr.contains("exec of") && stderr.contains("No such file or directory")
        }
        _ => false,
    }
}

/// Each `-A` line's chain and the chain it jumps or goes to.
fn jumps(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let rest = l.strip_prefix("-A ")?;
        let from = rest.split(' ').next()?;
        let to = rest
            .split_whitespace()
            .skip_while(|w| *w != "-j" && *w != "-g")
            .nth(1)?;
        Some((from, to))
    })
}

/// nft quotes names it cannot print bare (newer versions): `"KUBE-SVC-…"`.
fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// Which chains' rules a table read returns, besides every chain's declaration.
pub trait RulesOf: Fn(&str, bool) -> bool + Sync {}
impl<F: Fn(&str, bool) -> bool + Sync> RulesOf for F {}

impl Iptables {
    /// Reads `tables` as `iptables-save -t TABLE` would print them, each with every chain's
    /// declaration but only the rules of the chains `rules_of(name, builtin)` selects: the
    /// outline a full sync needs (`|_, builtin| builtin`), or more for `--cleanup`.
    ///
    /// On the nft back end this lists chains with `nft` once and prints each selected chain
    /// with `iptables-nft -S`, never running `iptables-nft-save` (see the module docs); a table
    /// the kernel does not hold reads as one without chains. On the legacy back end it streams
    /// each table's save and keeps only what is selected.
    pub async fn read_tables(
        &self,
        tables: &[&str],
        rules_of: &dyn RulesOf,
    ) -> Result<Vec<String>, CommandError> {
        match self.backend {
            Backend::Nft => {
                let listing = match self.list_chains().await {
                    Ok(l) => l,
                    // A node with iptables-nft but without the `nft` tool (Debian's iptables
                    // does not pull it in): the save it is, as before, with its time limit.
                    Err(e) if not_installed(&e) => {
                        tracing::warn!(
                            "`nft` is not installed: reading the tables with {} (slow on large nodes)",
                            self.backend.save(self.family)
                        );
                        let mut out = Vec::with_capacity(tables.len());
                        for table in tables {
                            out.push(self.stream_save(table, rules_of).await?);
                        }
                        return Ok(out);
                    }
                    Err(e) => return Err(e),
                };
                let mut out = Vec::with_capacity(tables.len());
                for table in tables {
                    let chains = listing.get(*table).map(Vec::as_slice).unwrap_or(&[]);
                    out.push(self.outline_from_listing(table, chains, rules_of).await?);
                }
                Ok(out)
            }
            Backend::Legacy => {
                let mut out = Vec::with_capacity(tables.len());
                for table in tables {
                    out.push(self.stream_save(table, rules_of).await?);
                }
                Ok(out)
            }
        }
    }

    /// One table as `--cleanup` needs it ([`rulegen::sync::cleanup::cleanup_payload`]): every
    /// chain's declaration, the rules of the built-in chains (the hooks to delete) and of other
    /// components' chains, and of every kube-proxy chain those use, with what that uses in
    /// turn (such chains are left in place). On the nft back end kube-proxy's own chains are
    /// otherwise not read: at 10,000 Services that is 110,000 chains nobody needs the rules of.
    pub async fn read_table_for_cleanup(&self, table: &str) -> Result<String, CommandError> {
        use rulegen::sync::cleanup::owned;
        if self.backend == Backend::Legacy {
            let mut all = self.read_tables(&[table], &|_, _| true).await?;
            return Ok(all.pop().unwrap_or_default());
        }
        let mut text = self
            .read_tables(&[table], &|name, builtin| builtin || !owned(name))
            .await?
            .pop()
            .unwrap_or_default();
        let declared: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let builtin: BTreeSet<String> = text
            .lines()
            .filter_map(|l| builtin_declared(l.strip_prefix(':')?))
            .map(str::to_string)
            .collect();
        // Seeds: kube-proxy chains that other components' (non-built-in) chains jump to.
        let mut todo: Vec<String> = jumps(&text)
            .filter(|(from, to)| !builtin.contains(*from) && !owned(from) && owned(to))
            .map(|(_, to)| to.to_string())
            .collect();
        let mut fetched = BTreeSet::new();
        let mut extra = String::new();
        while let Some(chain) = todo.pop() {
            if !declared.contains(&chain) || !fetched.insert(chain.clone()) {
                continue;
            }
            let rules = self.chain_rules(table, &chain).await?;
            todo.extend(jumps(&rules).map(|(_, to)| to.to_string()));
            extra.push_str(&rules);
        }
        if let Some(at) = text.rfind("COMMIT\n") {
            text.insert_str(at, &extra);
        }
        Ok(text)
    }

    /// `nft list chains ip|ip6`, parsed.
    pub async fn list_chains(&self) -> Result<ChainListing, CommandError> {
        let text = self
            .launcher
            .run(
                "nft",
                &["list", "chains", self.family.nft_family()],
                None,
                self.timeout,
            )
            .await?;
        Ok(parse_chain_listing(&text))
    }

    /// `iptables -t TABLE -S CHAIN`: the chain's `-A` lines, as a save prints them.
    pub async fn chain_rules(&self, table: &str, chain: &str) -> Result<String, CommandError> {
        let text = self
            .launcher
            .run(
                &self.backend.iptables(self.family),
                &["-w", LOCK_WAIT_SECONDS, "-t", table, "-S", chain],
                None,
                self.timeout,
            )
            .await?;
        let mut rules = String::new();
        for line in text.lines().filter(|l| l.starts_with("-A ")) {
            rules.push_str(line);
            rules.push('\n');
        }
        Ok(rules)
    }

    async fn outline_from_listing(
        &self,
        table: &str,
        chains: &[ListedChain],
        rules_of: &dyn RulesOf,
    ) -> Result<String, CommandError> {
        let mut text = format!("*{table}\n");
        // Built-in chains first, as the save prints them.
        let (builtin, user): (Vec<&ListedChain>, Vec<&ListedChain>) =
            chains.iter().partition(|c| c.policy.is_some());
        for c in builtin.iter().chain(user.iter()) {
            let policy = c.policy.as_deref().unwrap_or("-");
            text.push_str(&format!(":{} {policy} [0:0]\n", c.name));
        }
        for c in builtin.iter().chain(user.iter()) {
            if rules_of(&c.name, c.policy.is_some()) {
                text.push_str(&self.chain_rules(table, &c.name).await?);
            }
        }
        text.push_str("COMMIT\n");
        Ok(text)
    }

    /// `iptables-legacy-save -t TABLE`, streamed, keeping declarations and selected rules.
    async fn stream_save(
        &self,
        table: &str,
        rules_of: &dyn RulesOf,
    ) -> Result<String, CommandError> {
        let program = self.backend.save(self.family);
        let args = ["-t", table];
        let mut outline = String::new();
        let mut builtins: BTreeSet<String> = BTreeSet::new();
        let mut keep = |line: &str| {
            if line.starts_with('*') {
                builtins.clear();
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = builtin_declared(decl) {
                    builtins.insert(name.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split(' ').next().unwrap_or_default();
                if !rules_of(chain, builtins.contains(chain)) {
                    return;
                }
            } else if line != "COMMIT" {
                return;
            }
            outline.push_str(line);
            outline.push('\n');
        };
        let done = self
            .launcher
            .exchange(
                &program,
                &args,
                Feed::Nothing,
                Some(&mut keep),
                self.timeout,
            )
            .await?;
        if done.status.success() {
            Ok(outline)
        } else {
            Err(CommandError::Failed {
                command: self.launcher.display(&program, &args),
                status: done.status,
                stderr: done.stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table ip mangle {
\tchain PREROUTING {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t}
\tchain KUBE-PROXY-CANARY {
\t}
}
table ip filter {
\tchain INPUT {
\t\ttype filter hook input priority filter; policy drop;
\t}
\tchain \"KUBE-SVC-ABC\" {
\t}
}
table ip kube-proxy {
\tchain services {
\t}
}
";

    #[test]
    fn a_listing_gives_every_table_s_chains_and_base_chain_policies() {
        let l = parse_chain_listing(LISTING);
        assert_eq!(
            l.keys().collect::<Vec<_>>(),
            ["filter", "kube-proxy", "mangle"]
        );
        assert_eq!(
            l["mangle"],
            [
                ListedChain {
                    name: "PREROUTING".into(),
                    policy: Some("ACCEPT".into())
                },
                ListedChain {
                    name: "KUBE-PROXY-CANARY".into(),
                    policy: None
                }
            ]
        );
        assert_eq!(l["filter"][0].policy.as_deref(), Some("DROP"));
        assert_eq!(l["filter"][1].name, "KUBE-SVC-ABC");
        assert!(parse_chain_listing("").is_empty());
    }
}
