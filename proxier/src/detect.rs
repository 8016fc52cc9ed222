//! Which iptables back end the node uses, decided the way kubernetes-sigs/iptables-wrappers does:
//! kubelet's marker chains first, then whichever back end holds more rules.

use crate::backend::{Backend, Family};
use crate::command::Launcher;
use crate::iptables::DEFAULT_TIMEOUT;

/// Chains kubelet (1.17+) creates in the mangle table of the back end it uses.
pub const KUBELET_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// The back end chosen for one family, and why (for the agent's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The back end to use.
    pub backend: Backend,
    /// A human-readable account of the evidence.
    pub reason: String,
}

/// Picks the back end for `family`:
/// 1. nft, if `iptables-nft-save -t mangle` declares a kubelet chain ([`KUBELET_CHAINS`]);
/// 2. legacy, if `iptables-legacy-save` (all tables: `-t mangle` would make the legacy kernel
///    create that table) declares one;
/// 3. otherwise the back end whose save holds more rule lines (`-…`); a tie goes to nft.
///
/// Only reads. A tool that fails counts as holding nothing; the failure is named in the reason.
pub async fn detect_backend(launcher: &Launcher, family: Family) -> Detection {
    let mut notes = Vec::new();
    let mut save = async |backend: Backend, args: &[&str]| {
        let program = backend.save(family);
        match launcher.run(&program, args, None, DEFAULT_TIMEOUT).await {
            Ok(out) => out,
            Err(e) => {
                notes.push(format!("{e}"));
                String::new()
            }
        }
    };
    let nft_mangle = save(Backend::Nft, &["-t", "mangle"]).await;
    if let Some(chain) = kubelet_chain(&nft_mangle) {
        return Detection {
            backend: Backend::Nft,
            reason: format!(
                "{} -t mangle has kubelet's {chain} chain",
                Backend::Nft.save(family)
            ),
        };
    }
    let legacy = save(Backend::Legacy, &[]).await;
    if let Some(chain) = kubelet_chain(&legacy) {
        return Detection {
            backend: Backend::Legacy,
            reason: format!(
                "{} has kubelet's {chain} chain (and nft has none)",
                Backend::Legacy.save(family)
            ),
        };
    }
    let nft = save(Backend::Nft, &[]).await;
    let (l, n) = (rule_lines(&legacy), rule_lines(&nft));
    let backend = if l > n { Backend::Legacy } else { Backend::Nft };
    let mut reason = format!(
        "no kubelet chain in either back end; legacy holds {l} rule(s), nft {n}: {}",
        if l > n {
            "legacy has more"
        } else if l == n {
            "a tie goes to nft"
        } else {
            "nft has more"
        }
    );
    if !notes.is_empty() {
        reason.push_str(&format!(" (ignored errors: {})", notes.join("; ")));
    }
    Detection { backend, reason }
}

/// The first kubelet marker chain a save declares.
fn kubelet_chain(save: &str) -> Option<&'static str> {
    save.lines().find_map(|l| {
        let name = l.strip_prefix(':')?.split_whitespace().next()?;
        KUBELET_CHAINS.into_iter().find(|c| *c == name)
    })
}

/// How many rules a save holds (lines starting with `-`).
fn rule_lines(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with('-')).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kubelet_chains_only_as_declarations() {
        assert_eq!(
            kubelet_chain(
                "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
            ),
            Some("KUBE-KUBELET-CANARY")
        );
        assert_eq!(
            kubelet_chain("*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n"),
            Some("KUBE-IPTABLES-HINT")
        );
        assert_eq!(
            kubelet_chain("-A X -m comment --comment KUBE-KUBELET-CANARY\n"),
            None
        );
        assert_eq!(kubelet_chain(":KUBE-KUBELET-CANARY-X - [0:0]\n"), None);
    }

    #[test]
    fn counts_rule_lines() {
        assert_eq!(
            rule_lines("*nat\n:A - [0:0]\n-A A -j B\n-A B -j C\nCOMMIT\n# x\n"),
            2
        );
    }
}
