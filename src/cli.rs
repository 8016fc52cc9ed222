//! Command-line flags. Names and spellings follow upstream kube-proxy (pflag), so existing
//! manifests keep working: `--flag value`, `--flag=value`, and Go-style booleans (`--flag=false`).
//!
//! Flags are kept raw here (`Option` = "not given") because `--config` decides which of them
//! count; [`crate::settings::Settings`] resolves them into the values a render uses.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// kube-proxy-rs command line.
// `explain` (and later `trace`) are subcommands next to these flags (`command` below); the
// flags stay top-level as upstream's do, and `explain` takes them after its SERVICE.
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "kube-proxy-rs",
    version,
    about = "A drop-in replacement for Kubernetes' kube-proxy (iptables and IPVS modes)"
)]
pub struct Cli {
    /// Render the ruleset for the objects in --objects and print it as iptables-save would; touch nothing.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub dry_run: bool,

    /// A YAML/JSON file or directory of Services, EndpointSlices and Nodes (repeatable).
    #[arg(long = "objects", value_name = "PATH")]
    pub objects: Vec<PathBuf>,

    /// The node's name; defaults to the machine's hostname, lower-cased.
    #[arg(long, value_name = "NODE")]
    pub hostname_override: Option<String>,

    /// The cluster's pod CIDR(s), comma-separated, one per family; traffic from outside it is masqueraded.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// The addresses NodePorts are served on, as CIDRs; default: every local address.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub nodeport_addresses: Option<Vec<String>>,

    /// SNAT all traffic sent to cluster IPs.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub masquerade_all: Option<bool>,

    /// The fwmark bit (0-31) that marks packets for masquerading [default: 14].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub iptables_masquerade_bit: Option<i64>,

    /// A KubeProxyConfiguration file; most of the flags above are then ignored, as upstream does.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The address family to render (kube-proxy-rs only; upstream renders both).
    #[arg(long, value_enum, default_value_t = IpFamilyArg::Ipv4)]
    pub ip_family: IpFamilyArg,

    /// How traffic from local pods is recognised: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// The bridge local pods hang off (--detect-local-mode BridgeInterface).
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// The interface-name prefix of local pods (--detect-local-mode InterfaceNamePrefix).
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// Accept NodePort connections on 127.0.0.1 (IPv4 only) [default: true].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub iptables_localhost_nodeports: Option<bool>,

    /// The proxy mode: iptables (default) or ipvs.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// With --dry-run in ipvs mode, print only this part: ipvsadm, ipset or iptables.
    #[arg(long, value_enum, value_name = "PART")]
    pub dry_run_part: Option<DryRunPart>,

    /// The IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh, …) [default: rr].
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// CIDRs whose IPVS virtual servers the proxy never deletes (comma-separated).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub ipvs_exclude_cidrs: Option<Vec<String>>,

    /// Path to a kubeconfig file (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The API server's address; overrides the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Queries per second to the API server [default: 5].
    #[arg(long, value_name = "QPS")]
    pub kube_api_qps: Option<String>,

    /// Burst of queries to the API server [default: 10].
    #[arg(long, value_name = "N")]
    pub kube_api_burst: Option<u32>,

    /// The longest time between two syncs (a Go duration, e.g. 30s) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// The shortest time between two syncs (e.g. 1s) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// IPVS mode: set arp_ignore=1 and arp_announce=2, so the node does not answer ARP for the
    /// addresses on kube-ipvs0 (needed by MetalLB's L2 mode).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub ipvs_strict_arp: Option<bool>,

    /// IPVS mode: the longest time between two syncs (e.g. 30s) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,

    /// IPVS mode: the shortest time between two syncs (e.g. 1s) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,

    /// Where /healthz and /livez are served, IP:port [default: 0.0.0.0:10256]; empty disables.
    #[arg(long, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,

    /// Where /metrics is served, IP:port [default: 127.0.0.1:10249]; empty disables.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,

    /// The most conntrack entries per CPU; 0 leaves the limit as it is [default: 32768].
    #[arg(long, value_name = "N")]
    pub conntrack_max_per_core: Option<i64>,

    /// The floor for --conntrack-max-per-core × CPUs [default: 131072].
    #[arg(long, value_name = "N")]
    pub conntrack_min: Option<i64>,

    /// The conntrack time-out of established TCP connections; 0 leaves it [default: 24h0m0s].
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,

    /// The conntrack time-out of TCP connections in CLOSE_WAIT; 0 leaves it [default: 1h0m0s].
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,

    /// Set nf_conntrack_tcp_be_liberal (and leave out the INVALID-drop rule, as upstream).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// The conntrack time-out of UDP flows; 0 leaves it [default: 0].
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,

    /// The conntrack time-out of UDP streams; 0 leaves it [default: 0].
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,

    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub logging_format: Option<String>,

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

    /// Log verbosity (0-10), as upstream's -v.
    #[arg(short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u8>,

    /// A subcommand (`explain`); without one the flags above run the dry run or the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
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

/// Upstream kube-proxy flags that manifests pass and kube-proxy-rs has no use for: accepted (so
/// a DaemonSet keeps starting) and reported as ignored.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
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

impl IgnoredFlags {
    /// The flags given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.bind_address.is_some(), "--bind-address"),
            (
                self.bind_address_hard_fail.is_some(),
                "--bind-address-hard-fail",
            ),
            (self.oom_score_adj.is_some(), "--oom-score-adj"),
            (self.profiling.is_some(), "--profiling"),
            (self.feature_gates.is_some(), "--feature-gates"),
            (self.config_sync_period.is_some(), "--config-sync-period"),
            (
                self.kube_api_content_type.is_some(),
                "--kube-api-content-type",
            ),
            (
                self.show_hidden_metrics_for_version.is_some(),
                "--show-hidden-metrics-for-version",
            ),
            (self.ipvs_tcp_timeout.is_some(), "--ipvs-tcp-timeout"),
            (self.ipvs_tcpfin_timeout.is_some(), "--ipvs-tcpfin-timeout"),
            (self.ipvs_udp_timeout.is_some(), "--ipvs-udp-timeout"),
        ]
        .into_iter()
        .filter(|(g, _)| *g)
        .map(|(_, f)| f)
        .collect()
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

/// `--ip-family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum IpFamilyArg {
    /// Render for iptables.
    #[default]
    Ipv4,
    /// Render for ip6tables.
    Ipv6,
}

impl From<IpFamilyArg> for rulegen::IpFamily {
    fn from(f: IpFamilyArg) -> Self {
        match f {
            IpFamilyArg::Ipv4 => rulegen::IpFamily::V4,
            IpFamilyArg::Ipv6 => rulegen::IpFamily::V6,
        }
    }
}

/// Go's `strconv.ParseBool`, which pflag uses for boolean flags.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn dry_run_contract_flags() {
        let cli = parse(&[
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
        assert!(cli.dry_run);
        assert_eq!(cli.objects, [PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert_eq!(cli.hostname_override.as_deref(), Some("node-1"));
        assert_eq!(cli.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(
            cli.nodeport_addresses.as_deref(),
            Some(&["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()][..])
        );
        assert_eq!(cli.masquerade_all, Some(true));
        assert_eq!(cli.iptables_masquerade_bit, Some(15));
        assert_eq!(cli.config, Some(PathBuf::from("c.yaml")));
        assert_eq!(cli.ip_family, IpFamilyArg::Ipv4);
    }

    #[test]
    fn go_style_booleans() {
        let cli = parse(&[
            "--iptables-localhost-nodeports=false",
            "--masquerade-all=true",
            "--dry-run=false",
        ]);
        assert_eq!(cli.iptables_localhost_nodeports, Some(false));
        assert_eq!(cli.masquerade_all, Some(true));
        assert!(!cli.dry_run);
        assert_eq!(parse(&[]).iptables_localhost_nodeports, None);
        assert!(Cli::try_parse_from(["kube-proxy-rs", "--masquerade-all=maybe"]).is_err());
    }

    #[test]
    fn later_flags_are_accepted() {
        let cli = parse(&[
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
        assert_eq!(cli.ip_family, IpFamilyArg::Ipv6);
        assert_eq!(cli.detect_local_mode.as_deref(), Some("BridgeInterface"));
        assert_eq!(cli.pod_bridge_interface.as_deref(), Some("cbr0"));
        assert_eq!(cli.pod_interface_name_prefix.as_deref(), Some("veth"));
        assert_eq!(cli.proxy_mode.as_deref(), Some("iptables"));
    }

    #[test]
    fn negative_masquerade_bit_parses_so_settings_can_reject_it_clearly() {
        assert_eq!(
            parse(&["--iptables-masquerade-bit", "-1"]).iptables_masquerade_bit,
            Some(-1)
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
