//! Which iptables back end the node uses, decided the way kubernetes-sigs/iptables-wrappers does:
//! kubelet's marker chains first, then whichever back end holds more rules.

use std::time::Duration;

use rulegen::IpFamily;

use crate::backend::{Backend, FamilyTools};
use crate::command::{CommandError, Feed, Launcher};
use crate::hooks::builtin_declared;
use crate::iptables::{DEFAULT_TIMEOUT, Iptables};

/// Chains kubelet (1.17+) creates in the mangle table of the back end it uses.
pub const KUBELET_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// What decided the back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Kubelet's marker chain was found in this back end.
    KubeletChain,
    /// Both back ends were read, and this one holds more (a tie goes to nft).
    RuleCount,
    /// A read failed, so neither could be ruled out: nft, the documented fallback.
    Fallback,
}

/// The back end chosen for one family, and why (for the agent's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The back end to use.
    pub backend: Backend,
    /// What decided it.
    pub evidence: Evidence,
    /// A human-readable account of the evidence.
    pub reason: String,
}

/// What one back end holds, as far as detection needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Holdings {
    /// A kubelet marker chain found in its mangle table.
    kubelet_chain: Option<&'static str>,
    /// Rules in built-in chains plus user chains: what counts as "holding rules".
    size: usize,
}

/// Picks the back end for `family`, as kubernetes-sigs/iptables-wrappers does, but reading
/// only what the decision needs (a node with 10,000 Services made `iptables-nft-save` run for
/// minutes and crash):
/// 1. nft, if its mangle table has a kubelet chain ([`KUBELET_CHAINS`]), asked with
///    `nft list chain` (milliseconds at any size);
/// 2. legacy, if `iptables-legacy-save` (all tables: naming `-t mangle` would make the legacy
///    kernel create that table; streamed, never held) declares one;
/// 3. otherwise the back end holding more: rules in built-in chains plus user chains (the
///    nft side read with `nft list chains` and `iptables-nft -S` of each built-in chain, the
///    legacy side from the same streamed save); a tie goes to nft.
///
/// Only reads. A read that fails is never taken for an empty back end: when the kubelet
/// chains do not decide and either side could not be read, the result is nft with
/// [`Evidence::Fallback`] and the failures in the reason.
pub async fn detect_backend(launcher: &Launcher, family: IpFamily) -> Detection {
    detect_backend_within(launcher, family, DEFAULT_TIMEOUT).await
}

/// [`detect_backend`], each tool call killed after `timeout`.
pub async fn detect_backend_within(
    launcher: &Launcher,
    family: IpFamily,
    timeout: Duration,
) -> Detection {
    let mut errors = Vec::new();
    let nft_chain = match nft_kubelet_chain(launcher, family, timeout).await {
        Ok(found) => found,
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    if let Some(chain) = nft_chain {
        return Detection {
            backend: Backend::Nft,
            evidence: Evidence::KubeletChain,
            reason: format!("nft's mangle table has kubelet's {chain} chain"),
        };
    }
    let legacy = match legacy_holdings(launcher, family, timeout).await {
        Ok(h) => Some(h),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    if let Some(chain) = legacy.as_ref().and_then(|h| h.kubelet_chain) {
        return Detection {
            backend: Backend::Legacy,
            evidence: Evidence::KubeletChain,
            reason: format!(
                "{} has kubelet's {chain} chain (and nft has none)",
                Backend::Legacy.save(family)
            ),
        };
    }
    let nft = match nft_size(launcher, family, timeout).await {
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let (Some(legacy), Some(n), true) = (legacy, nft, errors.is_empty()) else {
        return Detection {
            backend: Backend::Nft,
            evidence: Evidence::Fallback,
            reason: format!(
                "could not decide (no kubelet chain found, and reading failed: {}); using nft, the fallback",
                errors.join("; ")
            ),
        };
    };
    let l = legacy.size;
    let backend = if l > n { Backend::Legacy } else { Backend::Nft };
    let reason = format!(
        "no kubelet chain in either back end; legacy holds {l} rule(s) and chain(s), nft {n}: {}",
        if l > n {
            "legacy has more"
        } else if l == n {
            "a tie goes to nft"
        } else {
            "nft has more"
        }
    );
    Detection {
        backend,
        evidence: Evidence::RuleCount,
        reason,
    }
}

/// The kubelet chain nft's mangle table holds, if any; an error when nft could not say.
async fn nft_kubelet_chain(
    launcher: &Launcher,
    family: IpFamily,
    timeout: Duration,
) -> Result<Option<&'static str>, CommandError> {
    for chain in KUBELET_CHAINS {
        let args = ["list", "chain", family.nft_family(), "mangle", chain];
        let done = launcher.output("nft", &args, None, timeout).await?;
        if done.status.success() {
            return Ok(Some(chain));
        }
        // nft says ENOENT both for a missing chain and for a missing table: either way,
        // no such chain. Anything else is a failure to read, not an answer.
        if !done.stderr.contains("No such file or directory") {
            return Err(CommandError::Failed {
                command: launcher.display("nft", &args),
                status: done.status,
                stderr: done.stderr,
            });
        }
    }
    Ok(None)
}

/// The legacy back end's kubelet chain and size, from one streamed `iptables-legacy-save`.
async fn legacy_holdings(
    launcher: &Launcher,
    family: IpFamily,
    timeout: Duration,
) -> Result<Holdings, CommandError> {
    let program = Backend::Legacy.save(family);
    let mut holdings = Holdings::default();
    let mut builtins: Vec<String> = Vec::new();
    let mut count = |line: &str| {
        if line.starts_with('*') {
            builtins.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if let Some(b) = builtin_declared(decl) {
                builtins.push(b.to_string());
            } else {
                holdings.size += 1;
            }
            if holdings.kubelet_chain.is_none() {
                holdings.kubelet_chain = KUBELET_CHAINS.into_iter().find(|c| *c == name);
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default();
            if builtins.iter().any(|b| b == chain) {
                holdings.size += 1;
            }
        }
    };
    let done = launcher
        .exchange(&program, &[], Feed::Nothing, Some(&mut count), timeout)
        .await?;
    if !done.status.success() {
        return Err(CommandError::Failed {
            command: launcher.display(&program, &[]),
            status: done.status,
            stderr: done.stderr,
        });
    }
    Ok(holdings)
}

/// The nft back end's size: user chains of iptables-nft's tables plus the rules of their
/// built-in chains.
async fn nft_size(
    launcher: &Launcher,
    family: IpFamily,
    timeout: Duration,
) -> Result<usize, CommandError> {
    let ipt = Iptables::new(Backend::Nft, family)
        .with_launcher(launcher.clone())
        .with_timeout(timeout);
    let listing = ipt.list_chains().await?;
    let mut size = 0;
    for (table, chains) in listing
        .iter()
        .filter(|(t, _)| IPTABLES_TABLES.contains(&t.as_str()))
    {
        for c in chains {
            if c.policy.is_some() {
                size += ipt.chain_rules(table, &c.name).await?.lines().count();
            } else {
                size += 1;
            }
        }
    }
    Ok(size)
}

/// The tables iptables-nft creates (an nft family may also hold others', e.g. nftables mode's
/// `kube-proxy` or a firewall's: not iptables rules).
const IPTABLES_TABLES: [&str; 5] = ["raw", "mangle", "filter", "nat", "security"];
