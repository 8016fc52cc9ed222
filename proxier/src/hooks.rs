//! Ensuring the hook rules in the built-in chains (`PREROUTING -j KUBE-SERVICES`, …): check each
//! one with `iptables -C`, insert the missing ones so the chain ends up holding them in the
//! order given, and never add one twice.

use std::collections::BTreeMap;
use std::fmt;

use rulegen::sync::restore::{Hook, split_args};
use thiserror::Error;

use crate::command::CommandError;
use crate::iptables::{Iptables, LOCK_WAIT_SECONDS};

/// A hook that could not be checked or inserted.
#[derive(Debug, Error)]
#[error("could not {action} hook `{}`: {source}", show(.table, .chain, .args))]
pub struct HookError {
    /// `check`, `list the chain of` or `insert`.
    pub action: &'static str,
    /// The hook's table.
    pub table: String,
    /// The hook's built-in chain.
    pub chain: String,
    /// The hook's rule arguments.
    pub args: Vec<String>,
    /// What the tool reported.
    #[source]
    pub source: CommandError,
}

/// What [`Iptables::ensure_hooks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookReport {
    /// Hooks found in the saved rules given, so not checked again.
    pub seen_in_save: usize,
    /// Hooks checked with one `iptables -C` call each.
    pub checked: usize,
    /// Hooks that were missing and were inserted.
    pub inserted: usize,
}

/// The rules of the built-in chains (`INPUT`, `PREROUTING`, …) as an `iptables-save` printed
/// them, each as its argument list: lets a sync that has just saved the tables skip the
/// `iptables -C` calls (each one reads a whole table) when every hook is already there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltinRules {
    rules: BTreeMap<(String, String), Vec<Vec<String>>>,
}

/// The chain a saved declaration line (`:NAME POLICY [p:b]`, without the `:`) declares, when it
/// is a built-in chain (it has a policy; user chains show `-`).
pub(crate) fn builtin_declared(decl: &str) -> Option<&str> {
    let mut words = decl.split_whitespace();
    match (words.next(), words.next()) {
        (Some(name), Some(policy)) if policy != "-" => Some(name),
        _ => None,
    }
}

impl BuiltinRules {
    /// Adds the built-in chains' rules of one `iptables-save` dump (any number of tables).
    pub fn add_save(&mut self, save: &str) {
        let mut table = String::new();
        let mut builtins: Vec<String> = Vec::new();
        for line in save.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_string();
                builtins.clear();
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = builtin_declared(decl) {
                    builtins.push(name.to_string());
                    self.rules
                        .entry((table.clone(), name.to_string()))
                        .or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
                if builtins.iter().any(|b| b == chain) {
                    self.rules
                        .entry((table.clone(), chain.to_string()))
                        .or_default()
                        .push(split_args(args));
                }
            }
        }
    }

    /// Whether the saved chain of `hook` holds exactly its rule.
    pub fn contains(&self, hook: &Hook) -> bool {
        self.rules
            .get(&(hook.table.to_string(), hook.chain.to_string()))
            .is_some_and(|rules| rules.contains(&hook.args))
    }
}

impl Iptables {
    /// Makes every hook present, each chain holding its hooks in the order of `hooks` (the
    /// order [`rulegen::Ruleset::hooks`] gives). Present hooks are left where they are; a
    /// missing one goes right before the next hook of its chain that is there, else right after
    /// the previous one, else at the top (as upstream's prepend does on a fresh node). Rules
    /// that are not hooks are never touched. Running it twice inserts nothing the second time.
    ///
    /// A chain whose hooks all appear in `saved` (rules saved since the last change to the
    /// built-in chains) is not checked again; any other chain's hooks are each checked with
    /// `iptables -C` before anything is inserted.
    pub async fn ensure_hooks(
        &self,
        hooks: &[Hook],
        saved: Option<&BuiltinRules>,
    ) -> Result<HookReport, HookError> {
        let mut report = HookReport::default();
        for group in group_by_chain(hooks) {
            if let Some(saved) = saved
                && group.iter().all(|h| saved.contains(h))
            {
                report.seen_in_save += group.len();
                continue;
            }
            let mut present = Vec::with_capacity(group.len());
            for h in &group {
                present.push(self.check_hook(h).await?);
                report.checked += 1;
            }
            if present.iter().all(|p| *p) {
                continue;
            }
            let mut rules = self.hook_chain_rules(group[0]).await?;
            for i in (0..group.len()).rev() {
                if present[i] {
                    continue;
                }
                let at = insert_index(&rules, &group, &present, i);
                self.insert_hook(group[i], at + 1).await?;
                rules.insert(at, group[i].args.clone());
                present[i] = true;
                report.inserted += 1;
            }
        }
        Ok(report)
    }

    /// `iptables -C`: whether the hook is in its chain.
    async fn check_hook(&self, h: &Hook) -> Result<bool, HookError> {
        let mut args = vec!["-w", LOCK_WAIT_SECONDS, "-t", h.table, "-C", h.chain];
        args.extend(h.args.iter().map(String::as_str));
        let program = self.backend.iptables(self.family);
        let done = self
            .launcher
            .output(&program, &args, None, self.timeout)
            .await
            .map_err(|e| hook_error("check", h, e))?;
        match done.status.code() {
            Some(0) => Ok(true),
            // "Bad rule (does a matching rule exist in that chain?)"
            Some(1) => Ok(false),
            _ => Err(hook_error(
                "check",
                h,
                CommandError::Failed {
                    command: self.launcher.display(&program, &args),
                    status: done.status,
                    stderr: done.stderr,
                },
            )),
        }
    }

    /// `iptables -S CHAIN`: the chain's rules, each as its argument list after `-A CHAIN`.
    async fn hook_chain_rules(&self, h: &Hook) -> Result<Vec<Vec<String>>, HookError> {
        let out = self
            .chain_rules(h.table, h.chain)
            .await
            .map_err(|e| hook_error("list the chain of", h, e))?;
        let prefix = format!("-A {} ", h.chain);
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(split_args)
            .collect())
    }

    /// `iptables -I CHAIN NUMBER …`.
    async fn insert_hook(&self, h: &Hook, number: usize) -> Result<(), HookError> {
        let number = number.to_string();
        let mut args = vec![
            "-w",
            LOCK_WAIT_SECONDS,
            "-t",
            h.table,
            "-I",
            h.chain,
            &number,
        ];
        args.extend(h.args.iter().map(String::as_str));
        tracing::debug!(
            table = h.table,
            chain = h.chain,
            position = %number,
            rule = %h.args.join(" "),
            "inserting hook"
        );
        self.launcher
            .run(
                &self.backend.iptables(self.family),
                &args,
                None,
                self.timeout,
            )
            .await
            .map(drop)
            .map_err(|e| hook_error("insert", h, e))
    }
}

/// The hooks of each (table, chain), in order of first appearance, each group in list order.
fn group_by_chain(hooks: &[Hook]) -> Vec<Vec<&Hook>> {
    let mut groups: Vec<Vec<&Hook>> = Vec::new();
    for h in hooks {
        match groups
            .iter_mut()
            .find(|g| g[0].table == h.table && g[0].chain == h.chain)
        {
            Some(g) => g.push(h),
            None => groups.push(vec![h]),
        }
    }
    groups
}

/// Where (0-based, in `rules`) hook `i` of `group` goes: before the first later hook found in
/// the chain, else after the nearest earlier one found there, else at the top.
fn insert_index(rules: &[Vec<String>], group: &[&Hook], present: &[bool], i: usize) -> usize {
    let find = |j: usize| {
        present[j]
            .then(|| rules.iter().position(|r| *r == group[j].args))
            .flatten()
    };
    (i + 1..group.len())
        .find_map(find)
        .or_else(|| (0..i).rev().find_map(|j| find(j).map(|k| k + 1)))
        .unwrap_or(0)
}

fn hook_error(action: &'static str, h: &Hook, source: CommandError) -> HookError {
    HookError {
        action,
        table: h.table.to_string(),
        chain: h.chain.to_string(),
        args: h.args.clone(),
        source,
    }
}

fn show(table: &str, chain: &str, args: &[String]) -> impl fmt::Display {
    format!("-t {table} -A {chain} {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(chain: &'static str, target: &str) -> Hook {
        Hook {
            table: "filter",
            chain,
            args: vec!["-j".into(), target.into()],
        }
    }

    fn rules(targets: &[&str]) -> Vec<Vec<String>> {
        targets
            .iter()
            .map(|t| vec!["-j".to_string(), t.to_string()])
            .collect()
    }

    /// Replays `ensure_hooks`' insertion on a model chain.
    fn ensure(chain: &[&str], wanted: &[&str]) -> Vec<String> {
        let hooks: Vec<Hook> = wanted.iter().map(|t| hook("INPUT", t)).collect();
        let group: Vec<&Hook> = hooks.iter().collect();
        let mut rules = rules(chain);
        let mut present: Vec<bool> = hooks.iter().map(|h| rules.contains(&h.args)).collect();
        for i in (0..group.len()).rev() {
            if !present[i] {
                let at = insert_index(&rules, &group, &present, i);
                rules.insert(at, group[i].args.clone());
                present[i] = true;
            }
        }
        rules.into_iter().map(|r| r[1].clone()).collect()
    }

    #[test]
    fn a_fresh_chain_gets_the_hooks_in_order_above_other_rules() {
        assert_eq!(
            ensure(&["OTHER"], &["A", "B", "C"]),
            ["A", "B", "C", "OTHER"]
        );
        assert_eq!(ensure(&[], &["A", "B", "C"]), ["A", "B", "C"]);
    }

    #[test]
    fn missing_hooks_go_between_their_neighbours() {
        assert_eq!(
            ensure(&["X", "A", "C", "Y"], &["A", "B", "C"]),
            ["X", "A", "B", "C", "Y"]
        );
        assert_eq!(
            ensure(&["X", "B", "Y"], &["A", "B", "C"]),
            ["X", "A", "B", "C", "Y"]
        );
        assert_eq!(
            ensure(&["X", "A", "Y"], &["A", "B", "C"]),
            ["X", "A", "B", "C", "Y"]
        );
    }

    #[test]
    fn present_hooks_are_not_moved_or_duplicated() {
        assert_eq!(ensure(&["C", "A", "B"], &["A", "B", "C"]), ["C", "A", "B"]);
    }

    #[test]
    fn builtin_rules_are_read_from_a_save() {
        let mut saved = BuiltinRules::default();
        saved.add_save(
            "# x\n*filter\n:INPUT ACCEPT [0:0]\n:KUBE-A - [0:0]\n-A INPUT -m comment --comment \"a b\" -j KUBE-A\n-A KUBE-A -j B\nCOMMIT\n",
        );
        saved.add_save("*nat\n:INPUT ACCEPT [0:0]\n-A INPUT -j C\nCOMMIT\n");
        let input = |table: &'static str, args: &[&str]| Hook {
            table,
            chain: "INPUT",
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        assert!(saved.contains(&input(
            "filter",
            &["-m", "comment", "--comment", "a b", "-j", "KUBE-A"]
        )));
        assert!(!saved.contains(&input("filter", &["-j", "KUBE-A"])));
        assert!(!saved.contains(&input("filter", &["-j", "C"])));
        assert!(saved.contains(&input("nat", &["-j", "C"])));
        // Rules of owned chains are not hooks.
        let owned = Hook {
            table: "filter",
            chain: "KUBE-A",
            args: vec!["-j".into(), "B".into()],
        };
        assert!(!saved.contains(&owned));
    }

    #[test]
    fn hooks_are_grouped_per_table_and_chain_in_order() {
        let mut hs = vec![hook("INPUT", "A"), hook("FORWARD", "B"), hook("INPUT", "C")];
        hs.push(Hook {
            table: "nat",
            chain: "INPUT",
            args: vec!["-j".into(), "D".into()],
        });
        let g = group_by_chain(&hs);
        let names: Vec<Vec<&str>> = g
            .iter()
            .map(|g| g.iter().map(|h| h.args[1].as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["A", "C"], vec!["B"], vec!["D"]]);
    }
}
