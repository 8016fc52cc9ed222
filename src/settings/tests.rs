use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::settings::flags::parse_for_test;

fn resolve_args(args: &[&str]) -> anyhow::Result<(Settings, Vec<String>)> {
    let (s, w) = Settings::from_flags(&parse_for_test(args))?;
    Ok((s, w.iter().map(ToString::to_string).collect()))
}

fn err(args: &[&str]) -> String {
    format!("{:#}", resolve_args(args).unwrap_err())
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A config file in the temp dir, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(tag: &str, body: &str) -> ConfigFile {
        let p = std::env::temp_dir().join(format!(
            "kube-proxy-rs-settings-{tag}-{}.yaml",
            std::process::id()
        ));
        std::fs::write(
            &p,
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
            ),
        )
        .unwrap();
        ConfigFile(p)
    }

    /// A config file holding exactly `text`.
    fn raw(tag: &str, text: &str) -> ConfigFile {
        let p = std::env::temp_dir().join(format!(
            "kube-proxy-rs-settings-{tag}-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        ConfigFile(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn flags_resolve_with_upstream_defaults() {
    let (s, w) = resolve_args(&["--hostname-override", "Node-1 "]).unwrap();
    assert!(w.is_empty());
    assert_eq!(
        s,
        Settings {
            hostname: "node-1".into(),
            ..Settings::default()
        }
    );
}

#[test]
fn flags_are_parsed_and_masked() {
    let (s, _) = resolve_args(&[
        "--hostname-override=node-1",
        "--cluster-cidr=10.244.0.1/16,fd00:10:244::/56",
        "--nodeport-addresses=192.168.10.0/24,127.0.0.1/8",
        "--masquerade-all",
        "--iptables-masquerade-bit=0",
        "--iptables-localhost-nodeports=false",
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix=veth",
        "--proxy-mode=iptables",
        "--ip-family=ipv6",
    ])
    .unwrap();
    assert_eq!(
        s.cluster_cidrs,
        nets(&["10.244.0.0/16", "fd00:10:244::/56"])
    );
    assert_eq!(
        s.nodeport_addresses,
        nets(&["192.168.10.0/24", "127.0.0.0/8"])
    );
    assert!(s.masquerade_all && !s.localhost_nodeports);
    assert_eq!(s.masquerade_bit, 0);
    assert_eq!(s.detect_local_mode, DetectLocalMode::InterfaceNamePrefix);
    assert_eq!(s.pod_interface_name_prefix, "veth");
    assert_eq!(s.family, IpFamily::V6);
}

#[test]
fn masquerade_bit_out_of_range_is_an_error() {
    for bit in ["40", "32", "-1"] {
        assert_eq!(
            err(&["--hostname-override=n", "--iptables-masquerade-bit", bit]),
            format!("--iptables-masquerade-bit {bit} is out of range: it must be between 0 and 31")
        );
    }
}

#[test]
fn bad_cidrs_are_errors() {
    assert_eq!(
        err(&["--hostname-override=n", "--cluster-cidr=10.244.0.0/33"]),
        "--cluster-cidr: invalid CIDR \"10.244.0.0/33\""
    );
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--cluster-cidr=10.244.0.0/16,10.245.0.0/16"
        ]),
        "--cluster-cidr: \"10.244.0.0/16,10.245.0.0/16\" must hold at most one CIDR per IP family"
    );
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--nodeport-addresses=192.168.10.0/24,192.168.1.1"
        ]),
        "--nodeport-addresses: invalid CIDR \"192.168.1.1\""
    );
    assert!(
        err(&["--hostname-override=n", "--nodeport-addresses=primary"])
            .contains("not supported yet")
    );
}

#[test]
fn proxy_modes_other_than_iptables_and_ipvs_are_refused() {
    assert_eq!(
        err(&["--hostname-override=n", "--proxy-mode=nftables"]),
        "--proxy-mode \"nftables\" is not supported yet (use iptables or ipvs)"
    );
    assert_eq!(
        err(&["--hostname-override=n", "--proxy-mode=userspace"]),
        "--proxy-mode \"userspace\" is invalid (use iptables or ipvs)"
    );
    assert!(resolve_args(&["--hostname-override=n", "--proxy-mode="]).is_ok());
}

#[test]
fn ipvs_mode_and_its_settings_resolve() {
    let (s, w) = resolve_args(&[
        "--hostname-override=n",
        "--proxy-mode=ipvs",
        "--ipvs-scheduler=wlc",
        "--ipvs-exclude-cidrs=10.0.0.1/8, 192.168.0.0/16",
    ])
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(s.mode, ProxyMode::Ipvs);
    assert_eq!(s.ipvs_scheduler, "wlc");
    assert_eq!(
        s.ipvs_exclude_cidrs,
        nets(&["10.0.0.0/8", "192.168.0.0/16"])
    );
    let (s, _) = resolve_args(&["--hostname-override=n", "--proxy-mode=ipvs"]).unwrap();
    assert_eq!(s.ipvs_scheduler, "rr");
    assert_eq!(
        err(&["--hostname-override=n", "--ipvs-scheduler=roundrobin"]),
        "--ipvs-scheduler \"roundrobin\" is not an IPVS scheduler (use one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos)"
    );
    assert_eq!(
        err(&["--hostname-override=n", "--ipvs-exclude-cidrs=10.0.0.0/33"]),
        "--ipvs-exclude-cidrs: invalid CIDR \"10.0.0.0/33\""
    );
    let cfg = ConfigFile::new(
        "ipvs",
        "mode: ipvs\nipvs:\n  scheduler: sh\n  excludeCIDRs: [\"172.16.0.0/12\"]\n  strictARP: true\n",
    );
    let (s, w) = resolve_args(&["--config", cfg.path(), "--hostname-override=n"]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        (
            s.mode,
            s.ipvs_scheduler.as_str(),
            s.ipvs_exclude_cidrs,
            s.ipvs_strict_arp
        ),
        (ProxyMode::Ipvs, "sh", nets(&["172.16.0.0/12"]), true)
    );
    let (s, _) = resolve_args(&["--hostname-override=n", "--ipvs-strict-arp"]).unwrap();
    assert!(s.ipvs_strict_arp);
    assert!(!Settings::default().ipvs_strict_arp);
}

#[test]
fn ipvs_config_fields_not_supported_yet_warn_unless_zero() {
    let cfg = ConfigFile::new(
        "ipvs-unsupported",
        "mode: ipvs\nipvs:\n  syncPeriod: 15s\n  minSyncPeriod: 0s\n  tcpTimeout: 900s\n  udpTimeout: 0s\n",
    );
    let (s, w) = resolve_args(&["--config", cfg.path(), "--hostname-override=n"]).unwrap();
    assert_eq!(
        w,
        [format!(
            "warning: {}: ipvs.tcpTimeout is not supported yet and is ignored (the kernel's default applies)",
            cfg.path()
        )]
    );
    // The sync periods are read; kubeadm's `0s` means the default.
    assert_eq!(s.sync_period, Duration::from_secs(15));
    assert_eq!(s.min_sync_period, DEFAULT_MIN_SYNC_PERIOD);
}

#[test]
fn sync_periods_follow_the_mode_and_are_validated() {
    let (s, _) = resolve_args(&[
        "--hostname-override=n",
        "--iptables-sync-period=1m",
        "--iptables-min-sync-period=0s",
        "--ipvs-sync-period=5s",
    ])
    .unwrap();
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(60), Duration::ZERO)
    );
    let (s, _) = resolve_args(&[
        "--hostname-override=n",
        "--proxy-mode=ipvs",
        "--ipvs-sync-period=5s",
    ])
    .unwrap();
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(5), DEFAULT_MIN_SYNC_PERIOD)
    );
    assert_eq!(
        err(&["--hostname-override=n", "--iptables-sync-period=0s"]),
        "--iptables-sync-period must be above zero"
    );
    assert!(
        err(&["--hostname-override=n", "--iptables-sync-period=soon"])
            .starts_with("--iptables-sync-period: invalid duration")
    );
}

#[test]
fn conntrack_logging_client_and_servers_resolve() {
    let (s, w) = resolve_args(&["--hostname-override=n"]).unwrap();
    assert!(w.is_empty());
    assert_eq!(s.conntrack, ConntrackSettings::default());
    assert_eq!(s.conntrack.max_per_core, 32768);
    assert_eq!(
        s.conntrack.tcp_established_timeout,
        Duration::from_secs(86400)
    );
    assert_eq!(
        s.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        s.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    let (s, _) = resolve_args(&[
        "--hostname-override=n",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-close-wait=30m",
        "--conntrack-tcp-be-liberal",
        "--conntrack-udp-timeout=45s",
        "--logging-format=json",
        "-v=3",
        "--healthz-bind-address=",
        "--metrics-bind-address=0.0.0.0",
        "--kube-api-qps=20",
        "--kube-api-burst=40",
    ])
    .unwrap();
    assert_eq!(s.conntrack.max_per_core, 0);
    assert_eq!(
        s.conntrack.tcp_close_wait_timeout,
        Duration::from_secs(1800)
    );
    assert!(s.conntrack.tcp_be_liberal);
    assert_eq!(s.conntrack.udp_timeout, Duration::from_secs(45));
    assert_eq!((s.log_format, s.verbosity), (LogFormat::Json, 3));
    assert_eq!(s.healthz_bind_address, None);
    assert_eq!(
        s.metrics_bind_address,
        Some("0.0.0.0:10249".parse().unwrap())
    );
    assert_eq!((s.kube_api_qps, s.kube_api_burst), (Some(20.0), Some(40)));
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--metrics-bind-address=localhost:x"
        ]),
        "--metrics-bind-address: \"localhost:x\" is not an IP:port (e.g. 127.0.0.1:10249)"
    );
    assert_eq!(
        err(&["--hostname-override=n", "--logging-format=yaml"]),
        "--logging-format \"yaml\" is invalid (use text or json)"
    );
    assert_eq!(
        err(&["--hostname-override=n", "--conntrack-min=-1"]),
        "--conntrack-min -1 must not be negative"
    );
}

#[test]
fn with_a_config_file_logging_flags_still_count_and_the_file_decides_the_rest() {
    let cfg = ConfigFile::new(
        "logging",
        "logging:\n  format: json\n  verbosity: 2\nconntrack:\n  maxPerCore: 0\n  tcpBeLiberal: true\n\
         clientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 0\n  burst: 0\n\
         iptables:\n  syncPeriod: 10s\nhealthzBindAddress: 0.0.0.0:10300\nmetricsBindAddress: \"\"\n",
    );
    let (s, w) = resolve_args(&[
        "--config",
        cfg.path(),
        "--hostname-override=n",
        "-v=4",
        "--conntrack-min=5",
        "--oom-score-adj=-999",
    ])
    .unwrap();
    assert_eq!((s.log_format, s.verbosity), (LogFormat::Json, 4));
    assert_eq!(s.conntrack.max_per_core, 0);
    assert_eq!(s.conntrack.min, ConntrackSettings::default().min);
    assert!(s.conntrack.tcp_be_liberal);
    assert_eq!(
        s.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!((s.kube_api_qps, s.kube_api_burst), (None, None));
    assert_eq!(s.sync_period, Duration::from_secs(10));
    assert_eq!(
        s.healthz_bind_address,
        Some("0.0.0.0:10300".parse().unwrap())
    );
    // An empty field in the file means the default (kubeadm writes "").
    assert_eq!(
        s.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert_eq!(
        w,
        [
            "warning: --conntrack-min is ignored because --config is given (as upstream kube-proxy does)",
            "warning: --oom-score-adj is accepted for compatibility and has no effect"
        ]
    );
}

#[test]
fn detect_local_mode_needs_its_interface() {
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--detect-local-mode=BridgeInterface"
        ]),
        "--pod-bridge-interface must be set when --detect-local-mode is BridgeInterface"
    );
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--detect-local-mode=InterfaceNamePrefix"
        ]),
        "--pod-interface-name-prefix must be set when --detect-local-mode is InterfaceNamePrefix"
    );
    assert!(
        err(&["--hostname-override=n", "--detect-local-mode=clustercidr"])
            .contains("invalid detect-local-mode")
    );
    let (s, _) = resolve_args(&["--hostname-override=n", "--detect-local-mode=NodeCIDR"]).unwrap();
    assert_eq!(s.detect_local_mode, DetectLocalMode::NodeCidr);
}

#[test]
fn hostname_defaults_to_the_machine_lower_cased() {
    let none = KubeProxyConfiguration::default();
    let s = resolve(&none, &Source::default(), IpFamily::V4, || {
        Ok("Worker-7.Example".into())
    })
    .unwrap();
    assert_eq!(s.hostname, "worker-7.example");
    let e = resolve(&none, &Source::default(), IpFamily::V4, || Ok("  ".into())).unwrap_err();
    assert!(e.to_string().contains("--hostname-override"), "{e}");
}

#[test]
fn config_file_wins_over_flags_except_hostname_override() {
    let cfg = ConfigFile::new(
        "precedence",
        "hostnameOverride: Config-Node\nclusterCIDR: 10.244.0.0/16\nnodePortAddresses: [192.168.10.0/24]\ndetectLocalMode: BridgeInterface\ndetectLocal:\n  bridgeInterface: cbr0\nmode: iptables\niptables:\n  masqueradeAll: true\n  masqueradeBit: 12\n  localhostNodePorts: false\n",
    );
    let (s, w) = resolve_args(&[
        "--config",
        cfg.path(),
        "--cluster-cidr=10.0.0.0/8",
        "--masquerade-all=false",
    ])
    .unwrap();
    assert_eq!(s.hostname, "config-node");
    assert_eq!(s.cluster_cidrs, nets(&["10.244.0.0/16"]));
    assert_eq!(s.nodeport_addresses, nets(&["192.168.10.0/24"]));
    assert_eq!(s.detect_local_mode, DetectLocalMode::BridgeInterface);
    assert_eq!(s.pod_bridge_interface, "cbr0");
    assert!(s.masquerade_all && !s.localhost_nodeports);
    assert_eq!(s.masquerade_bit, 12);
    assert_eq!(
        w,
        [
            "warning: --cluster-cidr is ignored because --config is given (as upstream kube-proxy does)",
            "warning: --masquerade-all is ignored because --config is given (as upstream kube-proxy does)",
        ]
    );

    let (s, _) =
        resolve_args(&["--config", cfg.path(), "--hostname-override", "Flag-Node"]).unwrap();
    assert_eq!(s.hostname, "flag-node");
}

#[test]
fn config_file_values_are_validated_and_named() {
    let cfg = ConfigFile::new("bit", "iptables:\n  masqueradeBit: 33\n");
    assert_eq!(
        err(&["--config", cfg.path(), "--hostname-override=n"]),
        format!(
            "iptables.masqueradeBit (in {}) 33 is out of range: it must be between 0 and 31",
            cfg.path()
        )
    );
    let cfg = ConfigFile::new("mode", "mode: nftables\n");
    assert!(err(&["--config", cfg.path(), "--hostname-override=n"]).contains("not supported yet"));
}

#[test]
fn config_file_type_errors_and_broken_yaml_are_fatal_with_line_and_column() {
    let cfg = ConfigFile::new("type", "iptables:\n  masqueradeAll: sometimes\n");
    let e = err(&["--config", cfg.path(), "--hostname-override=n"]);
    assert!(
        e.starts_with(&format!("{}:4:18: iptables.masqueradeAll: ", cfg.path())),
        "{e}"
    );
    let cfg = ConfigFile::new("broken", "mode: iptables\n  clusterCIDR: 10.0.0.0/8\n");
    let e = err(&["--config", cfg.path(), "--hostname-override=n"]);
    assert!(e.starts_with(&format!("{}:4:", cfg.path())), "{e}");
}

#[test]
fn config_file_unknown_fields_warn() {
    let cfg = ConfigFile::new("unknown", "clusterCidr: 10.244.0.0/16\n");
    let (s, w) = resolve_args(&["--config", cfg.path(), "--hostname-override=n"]).unwrap();
    assert!(s.cluster_cidrs.is_empty());
    assert_eq!(
        w,
        [format!(
            "warning: {}: unknown field \"clusterCidr\" ignored",
            cfg.path()
        )]
    );
}

/// `--write-config-to`'s file, read back with `--config`, gives the same settings, without a
/// warning (every field written is one we read).
#[test]
fn the_effective_config_reads_back_as_the_same_settings() {
    for args in [
        vec!["--hostname-override=node-a"],
        vec![
            "--hostname-override=node-a",
            "--proxy-mode=ipvs",
            "--ipvs-scheduler=wlc",
            "--ipvs-exclude-cidrs=10.1.0.0/16,192.168.5.0/24",
            "--ipvs-strict-arp",
            "--ipvs-sync-period=45s",
            "--ipvs-min-sync-period=2s",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses=192.168.0.0/16",
            "--masquerade-all",
            "--iptables-masquerade-bit=9",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cbr0",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-close-wait=90s",
            "--conntrack-udp-timeout-stream=2m",
            "--conntrack-tcp-be-liberal",
            "--logging-format=json",
            "-v=5",
            "--healthz-bind-address=127.0.0.1:10300",
            "--metrics-bind-address=0.0.0.0:10249",
            "--kubeconfig=/etc/kp.conf",
            "--kube-api-qps=7.5",
            "--kube-api-burst=12",
        ],
    ] {
        let (want, _) = resolve_args(&args).unwrap();
        let text = crate::settings::write::effective_yaml(&want, "node-a");
        let file = ConfigFile::raw("effective", &text);
        let (got, warnings) = resolve_args(&["--config", file.path()]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}\n{text}");
        assert_eq!(got, want, "{text}");
    }
}

/// Issue #15: `--pod-interface-name-prefix "veth -j ACCEPT"` was accepted and made a payload the
/// kernel refused ("multiple -j flags not allowed"), and a `--pod-bridge-interface` longer than
/// 15 bytes failed every sync. From flags and from the config file, both now stop the start.
#[test]
fn interface_names_are_checked_as_the_kernel_and_iptables_take_them() {
    let prefix = err(&[
        "--hostname-override=n",
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix",
        "veth -j ACCEPT",
    ]);
    assert!(
        prefix.starts_with(
            "--pod-interface-name-prefix \"veth -j ACCEPT\" is not an interface-name prefix: it holds ' '"
        ),
        "{prefix}"
    );
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface",
            "a-very-long-bridge0",
        ]),
        "--pod-bridge-interface \"a-very-long-bridge0\" is not an interface name: it is 19 bytes long, and at most 15 fit"
    );
    let cfg = ConfigFile::new(
        "bridge-name",
        "detectLocalMode: BridgeInterface\ndetectLocal:\n  bridgeInterface: \"cbr0:1\"\n",
    );
    let e = err(&["--config", cfg.path(), "--hostname-override=n"]);
    assert!(
        e.starts_with(&format!(
            "detectLocal.bridgeInterface (in {}) \"cbr0:1\" is not an interface name: it holds ':'",
            cfg.path()
        )),
        "{e}"
    );
    let cfg = ConfigFile::new(
        "prefix-name",
        "detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: veth+\n",
    );
    assert_eq!(
        err(&["--config", cfg.path(), "--hostname-override=n"]),
        format!(
            "detectLocal.interfaceNamePrefix (in {}) \"veth+\" is not an interface-name prefix: it ends in `+`; give the prefix alone, the `+` is added",
            cfg.path()
        )
    );
    // Good names still resolve; a mode's interface that the mode does not use is not checked
    // (it reaches no rule, and upstream accepts it).
    let (s, _) = resolve_args(&[
        "--hostname-override=n",
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix=lxc",
        "--pod-bridge-interface=not a name",
    ])
    .unwrap();
    assert_eq!(s.pod_interface_name_prefix, "lxc");
}

/// Issue #15: the node name goes into the Node watch's field selector and is compared with
/// Node and endpoint names, which the API server keeps to DNS-1123 subdomains.
#[test]
fn the_node_name_must_be_a_dns_1123_subdomain() {
    assert_eq!(
        err(&["--hostname-override", "node_1"]),
        "--hostname-override \"node_1\" is not a node name: a node name is a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'): it holds '_'"
    );
    assert!(
        err(&["--hostname-override", "a,metadata.name!=b"]).contains("it holds ','"),
        "a field selector cannot be widened"
    );
    let cfg = ConfigFile::new("node-name", "hostnameOverride: \"-node\"\n");
    assert!(
        err(&["--config", cfg.path()]).starts_with(&format!(
            "hostnameOverride (in {}) \"-node\" is not a node name",
            cfg.path()
        )),
        "{}",
        err(&["--config", cfg.path()])
    );
    // The flag still wins over the file's, and is what is checked.
    assert!(resolve_args(&["--config", cfg.path(), "--hostname-override=Node-1"]).is_ok());
    let none = KubeProxyConfiguration::default();
    let e = resolve(&none, &Source::default(), IpFamily::V4, || {
        Ok("build_box".into())
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("this machine's hostname \"build_box\" is not a node name")
            && e.to_string().ends_with("set --hostname-override"),
        "{e}"
    );
}

/// The conntrack counts are written to the kernel's `nf_conntrack_max`, an int; a count near
/// u64's limit also overflowed when scaled by the CPUs.
#[test]
fn conntrack_counts_beyond_the_kernels_int_are_refused() {
    assert_eq!(
        err(&[
            "--hostname-override=n",
            "--conntrack-max-per-core",
            "9223372036854775807"
        ]),
        "--conntrack-max-per-core 9223372036854775807 is above 2147483647, the most the kernel's nf_conntrack_max holds"
    );
    let cfg = ConfigFile::new("conntrack-min", "conntrack:\n  min: 4294967296\n");
    assert_eq!(
        err(&["--config", cfg.path(), "--hostname-override=n"]),
        format!(
            "conntrack.min (in {}) 4294967296 is above 2147483647, the most the kernel's nf_conntrack_max holds",
            cfg.path()
        )
    );
    let (s, _) = resolve_args(&["--hostname-override=n", "--conntrack-min=2147483647"]).unwrap();
    assert_eq!(s.conntrack.min, 2_147_483_647);
}

/// The flags `--config` overrides are found by clap's value sources: a flag given with its
/// default value is still reported, one not given is not, and the flags that count over the
/// file (`--hostname-override`, `--logging-format`, `-v`) are never reported.
#[test]
fn ignored_flags_are_the_given_ones_the_file_covers() {
    let cfg = ConfigFile::new("given", "");
    let (s, w) = resolve_args(&[
        "--config",
        cfg.path(),
        "--hostname-override=n",
        "--logging-format=json",
        "-v=3",
        "--iptables-masquerade-bit=14",
        "--kube-api-burst=10",
        "--bind-address=0.0.0.0",
    ])
    .unwrap();
    assert_eq!((s.log_format, s.verbosity), (LogFormat::Json, 3));
    assert_eq!(
        w,
        [
            "warning: --iptables-masquerade-bit is ignored because --config is given (as upstream kube-proxy does)",
            "warning: --kube-api-burst is ignored because --config is given (as upstream kube-proxy does)",
            "warning: --bind-address is accepted for compatibility and has no effect",
        ]
    );
}

/// A section written as `null` is the section with nothing set, as before.
#[test]
fn null_sections_are_empty() {
    let cfg = ConfigFile::new("null-sections", "iptables: null\nconntrack:\nipvs: ~\n");
    let (s, w) = resolve_args(&["--config", cfg.path(), "--hostname-override=n"]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        s,
        Settings {
            hostname: "n".into(),
            ..Settings::default()
        }
    );
}
