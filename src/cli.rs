//! The command line: the flags ([`Flags`], defined with the settings they set) and the
//! subcommands (`explain`, `trace`), which take the same flags.

use std::ops::{Deref, DerefMut};

use clap::{Parser, Subcommand};

use crate::settings::{Flags, Settings};
use crate::warning::Warning;

/// kube-proxy-rs command line.
// The flags stay top-level as upstream's do; `explain` and `trace` take them too.
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "kube-proxy-rs",
    version,
    about = "A drop-in replacement for Kubernetes' kube-proxy (iptables and IPVS modes)"
)]
pub struct Cli {
    /// The flags (upstream's, and the dry run's).
    #[command(flatten)]
    pub flags: Flags,

    /// A subcommand (`explain`); without one the flags above run the dry run or the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Beside its subcommand a command line is its flags: `cli.objects` reads as it always did.
impl Deref for Cli {
    type Target = Flags;

    fn deref(&self) -> &Flags {
        &self.flags
    }
}

impl DerefMut for Cli {
    fn deref_mut(&mut self) -> &mut Flags {
        &mut self.flags
    }
}

impl Settings {
    /// Resolves the command line's flags (and its `--config` file): [`Settings::from_flags`].
    pub fn from_cli(cli: &Cli) -> anyhow::Result<(Settings, Vec<Warning>)> {
        Settings::from_flags(&cli.flags)
    }
}

/// Subcommands next to the top-level flags.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show how this node's rules carry a Service: its addresses, endpoints and their shares,
    /// masquerading and chains (with --proxy-mode ipvs: its virtual servers, real servers and ipset
    /// members). Takes the dry run's flags after SERVICE (--objects, --hostname-override, …).
    Explain(crate::explain::ExplainArgs),
    /// Walk one packet through this node's rules: every rule it matches, the jumps, the random
    /// branches with their shares, the DNAT, the masquerade, the REJECT or DROP. Takes --src,
    /// --dst, --proto, --from, and the dry run's flags (--objects …) or --ruleset FILE; with neither, this
    /// node's live rules.
    #[command(
        override_usage = "kube-proxy-rs trace --src IP[:PORT] --dst IP:PORT [OPTIONS] [--objects PATH [NODE FLAGS] | --ruleset FILE]",
        after_help = "NODE FLAGS are the dry run's, in any order among the options above: --objects PATH …, \
                      --hostname-override NODE, --cluster-cidr CIDR, --config FILE, --proxy-mode ipvs, \
                      --ip-family ipv6, --detect-local-mode MODE, --nodeport-addresses CIDR,…, --masquerade-all, …"
    )]
    Trace(crate::trace::TraceArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// `explain` and `trace` take the node flags anywhere among their own.
    #[test]
    fn subcommands_take_the_node_flags_in_any_order() {
        let cli = Cli::try_parse_from([
            "kube-proxy-rs",
            "explain",
            "--objects",
            "a.yaml",
            "ns/web",
            "--output=json",
            "--hostname-override=n",
        ])
        .unwrap();
        let Some(Command::Explain(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.service, "ns/web");
        assert_eq!(args.flags.objects, [std::path::PathBuf::from("a.yaml")]);
        assert!(cli.flags.is_default());
        let cli = Cli::try_parse_from([
            "kube-proxy-rs",
            "trace",
            "--objects=a.yaml",
            "--dst",
            "10.0.0.1:80",
            "--masquerade-all",
            "--src=10.0.0.2",
        ])
        .unwrap();
        let Some(Command::Trace(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.dst.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(args.flags.configuration.iptables.masquerade_all, Some(true));
    }
}
