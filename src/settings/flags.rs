//! The command line's flags. Names and spellings follow upstream kube-proxy (pflag), so existing
//! manifests keep working: `--flag value`, `--flag=value`, and Go-style booleans (`--flag=false`).
//!
//! The flags that set a config-file field are that field ([`KubeProxyConfiguration`], flattened
//! here); the rest are the run's own (`--dry-run`, `--objects`, `--config`, …). The top level,
//! `explain` and `trace` all flatten [`Flags`], so they take the same node flags.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use rulegen::IpFamily;

use super::config_file::KubeProxyConfiguration;

/// Every flag of a run: the node's settings, where its objects come from, and what to do.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// Which of the flags below the command line gave.
    // First: the fields after it take their values out of the matches as they are read.
    #[command(flatten)]
    pub given: Given,

    /// Render the ruleset for the objects in --objects and print it as iptables-save would; touch nothing.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub dry_run: bool,

    /// A YAML/JSON file or directory of Services, EndpointSlices and Nodes (repeatable).
    #[arg(long = "objects", value_name = "PATH")]
    pub objects: Vec<PathBuf>,

    /// The settings a config file also holds, as flags (`--config` overrides most of them).
    #[command(flatten)]
    pub configuration: KubeProxyConfiguration,

    /// A KubeProxyConfiguration file; most of the flags above are then ignored, as upstream does.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The address family to render (kube-proxy-rs only; upstream renders both).
    #[arg(long, default_value = "ipv4", value_parser = PossibleValuesParser::new([
        PossibleValue::new("ipv4").help("Render for iptables"),
        PossibleValue::new("ipv6").help("Render for ip6tables"),
    ]).map(|s| ip_family(&s)))]
    pub ip_family: IpFamily,

    /// With --dry-run in ipvs mode, print only this part: ipvsadm, ipset or iptables.
    #[arg(long, value_enum, value_name = "PART")]
    pub dry_run_part: Option<DryRunPart>,

    /// The API server's address; overrides the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Write the effective configuration (flags and defaults) to FILE as a KubeProxyConfiguration, and exit.
    #[arg(long, value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,

    /// Set up the node (sysctls) and exit: for the privileged init container of an unprivileged DaemonSet.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub init_only: bool,

    /// Remove every chain, set, virtual server and interface kube-proxy (or kube-proxy-rs) created, and exit.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub cleanup: bool,

    /// Upstream flags accepted for compatibility that have no effect here (a warning says so).
    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

impl Flags {
    /// Whether no flag differs from its default (which flags were typed aside).
    pub fn is_default(&self) -> bool {
        let values = Flags {
            given: Given::default(),
            ..self.clone()
        };
        values == Flags::default()
    }

    /// The flags given that set a config-file field, as (clap id, `--name`), in definition order.
    pub fn given_settings(&self) -> Vec<(String, String)> {
        self.given
            .flags_of(KubeProxyConfiguration::augment_args(Command::new("")))
    }

    /// The upstream flags given that have no effect here, as `--name`, in definition order.
    pub fn given_ignored(&self) -> Vec<String> {
        self.given
            .flags_of(IgnoredFlags::augment_args(Command::new("")))
            .into_iter()
            .map(|(_, flag)| flag)
            .collect()
    }
}

/// `--ip-family`'s two spellings.
fn ip_family(s: &str) -> IpFamily {
    match s {
        "ipv6" => IpFamily::V6,
        _ => IpFamily::V4,
    }
}

/// Upstream kube-proxy flags that manifests pass and kube-proxy-rs has no use for: accepted (so
/// a DaemonSet keeps starting) and reported as ignored.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredFlags {
    /// Accepted, no effect: the proxy does not bind one address for everything.
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,
    /// Accepted, no effect.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<String>,
    /// Accepted, no effect (set the container's oom_score_adj in the manifest instead).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub oom_score_adj: Option<String>,
    /// Accepted, no effect: no pprof handlers.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub profiling: Option<String>,
    /// Accepted, no effect: no feature gates change behaviour here.
    #[arg(long, value_name = "GATES")]
    pub feature_gates: Option<String>,
    /// Accepted, no effect: the watch caches never resync.
    #[arg(long, value_name = "DURATION")]
    pub config_sync_period: Option<String>,
    /// Accepted, no effect: the client speaks JSON.
    #[arg(long, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,
    /// Accepted, no effect.
    #[arg(long, value_name = "VERSION")]
    pub show_hidden_metrics_for_version: Option<String>,
    /// Accepted, no effect yet: IPVS's TCP time-out is left as the kernel has it.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,
    /// Accepted, no effect yet: IPVS's TCP FIN time-out is left as the kernel has it.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,
    /// Accepted, no effect yet: IPVS's UDP time-out is left as the kernel has it.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,
}

/// The ids of the arguments the command line itself gave (clap's value sources), so that a
/// default or an absent flag is never mistaken for one the user typed.
// Flattened into `Flags`: it adds no argument, and reads the matches of its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given(BTreeSet<String>);

impl Given {
    /// Whether the argument with clap id `id` came from the command line.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    /// The given arguments among `cmd`'s, as (id, `--long`), in `cmd`'s order.
    fn flags_of(&self, cmd: Command) -> Vec<(String, String)> {
        cmd.get_arguments()
            .filter(|a| self.contains(a.get_id().as_str()))
            .map(|a| {
                let id = a.get_id().to_string();
                let flag = match (a.get_long(), a.get_short()) {
                    (Some(long), _) => format!("--{long}"),
                    (None, Some(short)) => format!("-{short}"),
                    (None, None) => id.clone(),
                };
                (id, flag)
            })
            .collect()
    }
}

impl FromArgMatches for Given {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Given(
            matches
                .ids()
                .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_string())
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.extend(Self::from_arg_matches(matches)?.0);
        Ok(())
    }
}

impl Args for Given {
    fn augment_args(cmd: Command) -> Command {
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        cmd
    }
}

/// `--dry-run-part`: one part of an IPVS-mode dry run, in its tool's save format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRunPart {
    /// The virtual servers, as `ipvsadm -Sn` prints them (loadable by `ipvsadm -R`).
    Ipvsadm,
    /// The ipsets, as `ipset save` prints them (loadable by `ipset restore`).
    Ipset,
    /// The iptables rules, as `iptables-save` prints them (loadable by `iptables-restore`).
    Iptables,
}

/// Go's `strconv.ParseBool`, which pflag uses for boolean flags.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

/// `args` parsed as a command line's flags (for tests).
#[cfg(test)]
pub(crate) fn parse_for_test(args: &[&str]) -> Flags {
    try_parse_for_test(args).unwrap()
}

/// `args` parsed as a command line's flags, or clap's error (for tests).
#[cfg(test)]
pub(crate) fn try_parse_for_test(args: &[&str]) -> Result<Flags, clap::Error> {
    let matches = Flags::augment_args(Command::new("kube-proxy-rs"))
        .try_get_matches_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied()))?;
    Flags::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_contract_flags() {
        let f = parse_for_test(&[
            "--dry-run",
            "--objects",
            "a.yaml",
            "--objects=dir",
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--nodeport-addresses",
            "10.0.0.0/8,192.168.0.0/16",
            "--masquerade-all",
            "--iptables-masquerade-bit",
            "15",
            "--config",
            "c.yaml",
        ]);
        let c = &f.configuration;
        assert!(f.dry_run);
        assert_eq!(f.objects, [PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert_eq!(c.hostname_override.as_deref(), Some("node-1"));
        assert_eq!(c.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(
            c.node_port_addresses.as_deref(),
            Some(&["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()][..])
        );
        assert_eq!(c.iptables.masquerade_all, Some(true));
        assert_eq!(c.iptables.masquerade_bit, Some(15));
        assert_eq!(f.config, Some(PathBuf::from("c.yaml")));
        assert_eq!(f.ip_family, IpFamily::V4);
    }

    #[test]
    fn go_style_booleans() {
        let f = parse_for_test(&[
            "--iptables-localhost-nodeports=false",
            "--masquerade-all=true",
            "--dry-run=false",
        ]);
        assert_eq!(f.configuration.iptables.localhost_node_ports, Some(false));
        assert_eq!(f.configuration.iptables.masquerade_all, Some(true));
        assert!(!f.dry_run);
        assert_eq!(
            parse_for_test(&[])
                .configuration
                .iptables
                .localhost_node_ports,
            None
        );
        assert!(try_parse_for_test(&["--masquerade-all=maybe"]).is_err());
    }

    #[test]
    fn later_flags_are_accepted() {
        let f = parse_for_test(&[
            "--ip-family",
            "ipv6",
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "cbr0",
            "--pod-interface-name-prefix",
            "veth",
            "--proxy-mode",
            "iptables",
        ]);
        let c = &f.configuration;
        assert_eq!(f.ip_family, IpFamily::V6);
        assert_eq!(c.detect_local_mode.as_deref(), Some("BridgeInterface"));
        assert_eq!(c.detect_local.bridge_interface.as_deref(), Some("cbr0"));
        assert_eq!(
            c.detect_local.interface_name_prefix.as_deref(),
            Some("veth")
        );
        assert_eq!(c.mode.as_deref(), Some("iptables"));
        assert!(try_parse_for_test(&["--ip-family", "ipv5"]).is_err());
    }

    #[test]
    fn negative_masquerade_bit_parses_so_settings_can_reject_it_clearly() {
        assert_eq!(
            parse_for_test(&["--iptables-masquerade-bit", "-1"])
                .configuration
                .iptables
                .masquerade_bit,
            Some(-1)
        );
    }

    /// Defaults and absent flags are not "given"; typed ones are, even when they repeat the
    /// default, in the definition's order whatever the command line's.
    #[test]
    fn given_flags_come_from_the_value_sources() {
        let f = parse_for_test(&[
            "--oom-score-adj=-999",
            "--kube-api-burst=3",
            "--masquerade-all=false",
            "--cluster-cidr=10.0.0.0/8",
            "-v=2",
            "--profiling",
        ]);
        let names: Vec<String> = f.given_settings().into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            names,
            [
                "--cluster-cidr",
                "--masquerade-all",
                "--kube-api-burst",
                "--v"
            ]
        );
        assert_eq!(f.given_ignored(), ["--oom-score-adj", "--profiling"]);
        let f = parse_for_test(&[]);
        assert!(f.given_settings().is_empty() && f.given_ignored().is_empty());
        assert!(f.is_default());
        assert!(parse_for_test(&["--ip-family=ipv4"]).is_default());
        assert!(!parse_for_test(&["--objects=x"]).is_default());
    }
}
