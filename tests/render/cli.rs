//! The `--dry-run` command line, run as a user would: the built binary on files in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("kube-proxy-rs-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN).args(args).output().unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn dry_run(objects: &[&Path], extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "--dry-run".into(),
        "--hostname-override".into(),
        "node-1".into(),
    ];
    for o in objects {
        args.push("--objects".into());
        args.push(o.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run(args)
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: NodePort
  clusterIP: 10.96.12.34
  clusterIPs: [10.96.12.34]
  ports:
  - name: http
    port: 80
    targetPort: 8080
    nodePort: 30080
    protocol: TCP
";

const WEB_SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x7k2p
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
- addresses: [10.244.2.7]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-2
";

const BAD: &str = "apiVersion: v1
kind: Service
metadata:
  name: bad
  namespace: shop
spec:
  clusterIP: 1.2.3
  ports:
  - port: 80
";

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    topology.kubernetes.io/zone: zone-a
spec:
  podCIDRs: [10.244.1.0/24]
status:
  addresses:
  - type: InternalIP
    address: 192.168.10.11
";

/// The web Service rendered: its cluster-IP capture rule and both endpoints' DNATs.
fn assert_web_rendered(r: &Run) {
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(r.stdout.starts_with("*mangle\n"), "{}", r.stdout);
    assert!(r.stdout.contains("COMMIT\n*filter\n"), "{}", r.stdout);
    assert!(r.stdout.ends_with("COMMIT\n"), "{}", r.stdout);
    assert!(
        r.stdout.lines().any(|l| l.starts_with("-A KUBE-SERVICES -d 10.96.12.34/32 -p tcp -m comment --comment \"shop/web:http cluster IP\"")
            && l.contains("-j KUBE-SVC-")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("-j DNAT --to-destination 10.244.1.5:8080"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("-j DNAT --to-destination 10.244.2.7:8080"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("-m tcp --dport 30080"), "{}", r.stdout);
}

#[test]
fn renders_services_with_their_endpoints() {
    let dir = Scratch::new("render");
    let f = dir.write("objects.yaml", &format!("{WEB}---\n{WEB_SLICE}---\n{NODE}"));
    let r = dry_run(&[&f], &["--cluster-cidr", "10.244.0.0/16"]);
    assert_web_rendered(&r);
    assert_eq!(r.stderr, "");
    // Traffic from outside the cluster CIDR is masqueraded.
    assert!(
        r.stdout.contains("! -s 10.244.0.0/16 -d 10.96.12.34/32"),
        "{}",
        r.stdout
    );
}

#[test]
fn stdout_is_exactly_the_rendered_save_text() {
    let dir = Scratch::new("exact");
    let f = dir.write("objects.yaml", &format!("{WEB}---\n{WEB_SLICE}"));
    let r = dry_run(&[&f], &[]);
    let mut cli = kube_proxy_rs::Cli::default();
    cli.flags.dry_run = true;
    cli.flags.objects = vec![f.clone()];
    cli.flags.configuration.hostname_override = Some("node-1".into());
    let out = kube_proxy_rs::commands::dryrun::render(&cli).unwrap();
    assert_eq!(r.stdout, out.save_text);
}

#[test]
fn broken_yaml_fails_naming_file_and_line() {
    let dir = Scratch::new("broken");
    let f = dir.write(
        "broken.yaml",
        &format!(
            "{WEB}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [oops\n  namespace: shop\n"
        ),
    );
    let r = dry_run(&[&f], &[]);
    assert_ne!(r.code, Some(0));
    assert_eq!(r.stdout, "");
    // The bad flow sequence opens on line 20 and the parser gives up on line 20 or 21.
    let at = |line: u32| format!("error: {}:{line}: ", f.display());
    assert!(
        r.stderr.starts_with(&at(20)) || r.stderr.starts_with(&at(21)),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_kind_is_noted_and_skipped() {
    let dir = Scratch::new("kind");
    let f = dir.write(
        "objects.yaml",
        &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec: {{}}\n---\n{WEB}---\n{WEB_SLICE}"),
    );
    let r = dry_run(&[&f], &[]);
    assert_web_rendered(&r);
    assert_eq!(
        r.stderr,
        format!(
            "note: skipping Deployment shop/web: kube-proxy does not read this kind ({}:1)\n",
            f.display()
        )
    );
}

#[test]
fn a_bad_service_is_skipped_and_the_good_one_rendered() {
    let dir = Scratch::new("bad");
    let f = dir.write("objects.yaml", &format!("{BAD}---\n{WEB}---\n{WEB_SLICE}"));
    let r = dry_run(&[&f], &[]);
    assert_web_rendered(&r);
    assert_eq!(
        r.stderr,
        format!(
            "warning: skipping Service shop/bad: invalid clusterIP \"1.2.3\": not an IP address ({}:1)\n",
            f.display()
        )
    );
    assert!(!r.stdout.contains("shop/bad"), "{}", r.stdout);
}

#[test]
fn an_object_of_the_wrong_shape_is_skipped_with_its_line() {
    let dir = Scratch::new("shape");
    let typed = WEB
        .replace("name: web\n", "name: typed\n")
        .replace("port: 80\n", "port: \"abc\"\n");
    let f = dir.write(
        "objects.yaml",
        &format!("{typed}---\n{WEB}---\n{WEB_SLICE}"),
    );
    let r = dry_run(&[&f], &[]);
    assert_web_rendered(&r);
    assert_eq!(
        r.stderr,
        format!(
            "warning: skipping Service shop/typed: spec.ports[0].port: invalid i32 ({}:12)\n",
            f.display()
        )
    );
}

#[test]
fn masquerade_bit_out_of_range_is_an_error() {
    let dir = Scratch::new("bit");
    let f = dir.write("objects.yaml", WEB);
    let r = dry_run(&[&f], &["--iptables-masquerade-bit", "40"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "error: --iptables-masquerade-bit 40 is out of range: it must be between 0 and 31\n"
    );
}

#[test]
fn masquerade_bit_changes_the_mark() {
    let dir = Scratch::new("bit15");
    let f = dir.write("objects.yaml", WEB);
    let r = dry_run(&[&f], &["--iptables-masquerade-bit", "15"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("-j MARK --set-xmark 0x8000/0x8000"),
        "{}",
        r.stdout
    );
}

#[test]
fn kubectl_list_loads() {
    let dir = Scratch::new("list");
    let item = |doc: &str| -> String {
        doc.lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("- {l}\n")
                } else {
                    format!("  {l}\n")
                }
            })
            .collect()
    };
    let f = dir.write(
        "list.yaml",
        &format!(
            "apiVersion: v1\nitems:\n{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
            item(WEB),
            item(WEB_SLICE)
        ),
    );
    let r = dry_run(&[&f], &[]);
    assert_web_rendered(&r);
    assert_eq!(r.stderr, "");
}

#[test]
fn directory_of_files_and_repeated_objects_flags_load() {
    let dir = Scratch::new("dir");
    dir.write("objects/10-service.yaml", WEB);
    dir.write("objects/20-slice.yml", WEB_SLICE);
    dir.write("objects/notes.txt", "not yaml: [");
    let node = dir.write("node.yaml", NODE);
    let r = dry_run(&[&dir.0.join("objects"), &node], &[]);
    assert_web_rendered(&r);
    assert_eq!(r.stderr, "");
}

// Without --dry-run the agent starts; these inputs make it stop before it touches any iptables
// table (the agent's real runs are in tests/agent_*.rs, inside lab namespaces).
#[test]
fn agent_with_an_unreadable_kubeconfig_stops_before_touching_the_kernel() {
    let r = run([
        "--hostname-override",
        "node-1",
        "--kubeconfig",
        "/nonexistent/kube-proxy-rs/kubeconfig",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("cannot read kubeconfig"), "{}", r.stderr);
    assert!(!r.stderr.contains("back end chosen"), "{}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn agent_rejects_a_bad_sync_period() {
    let r = run([
        "--hostname-override",
        "node-1",
        "--kubeconfig",
        "/nonexistent/kube-proxy-rs/kubeconfig",
        "--iptables-sync-period",
        "30",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--iptables-sync-period"), "{}", r.stderr);
}

/// Issue #15: these made a payload the kernel refuses, or one that fails every sync, yet were
/// accepted at start; now the dry run and the agent stop on them before anything is rendered.
#[test]
fn unusable_interface_and_node_names_stop_the_start() {
    let dir = Scratch::new("names");
    let f = dir.write("objects.yaml", WEB);
    let r = dry_run(
        &[&f],
        &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            "veth -j ACCEPT",
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.starts_with(
            "error: --pod-interface-name-prefix \"veth -j ACCEPT\" is not an interface-name prefix"
        ),
        "{}",
        r.stderr
    );
    // The agent too, before it touches the kernel.
    let r = run([
        "--hostname-override",
        "node-1",
        "--kubeconfig",
        "/nonexistent/kube-proxy-rs/kubeconfig",
        "--detect-local-mode",
        "BridgeInterface",
        "--pod-bridge-interface",
        "a-very-long-bridge0",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--pod-bridge-interface \"a-very-long-bridge0\" is not an interface name"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("back end chosen"), "{}", r.stderr);
    let r = run([
        "--dry-run",
        "--objects",
        &f.display().to_string(),
        "--hostname-override",
        "node_1",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("error: --hostname-override \"node_1\" is not a node name"),
        "{}",
        r.stderr
    );
}

#[test]
fn dry_run_needs_objects() {
    let r = run(["--dry-run", "--hostname-override", "node-1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--objects"), "{}", r.stderr);
}

#[test]
fn other_proxy_modes_are_refused() {
    let dir = Scratch::new("mode");
    let f = dir.write("objects.yaml", WEB);
    let r = dry_run(&[&f], &["--proxy-mode", "nftables"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "error: --proxy-mode \"nftables\" is not supported yet (use iptables or ipvs)\n"
    );
}

#[test]
fn localhost_nodeports_can_be_turned_off() {
    let dir = Scratch::new("localhost");
    let f = dir.write("objects.yaml", WEB);
    let on = dry_run(&[&f], &[]);
    let off = dry_run(&[&f], &["--iptables-localhost-nodeports=false"]);
    assert_eq!((on.code, off.code), (Some(0), Some(0)), "{}", off.stderr);
    // Without localhost node ports the tail rule excludes 127.0.0.0/8.
    assert!(!on.stdout.contains("! -d 127.0.0.0/8"), "{}", on.stdout);
    assert!(off.stdout.contains("! -d 127.0.0.0/8"), "{}", off.stdout);
}

#[test]
fn config_file_is_read_and_hostname_override_still_wins() {
    let dir = Scratch::new("config");
    let f = dir.write("objects.yaml", &format!("{WEB}---\n{WEB_SLICE}"));
    let cfg = dir.write(
        "config.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: node-2\nclusterCIDR: 10.244.0.0/16\nmode: \"\"\niptables:\n  masqueradeBit: 15\n",
    );
    let cfg_arg = cfg.display().to_string();
    let r = dry_run(
        &[&f],
        &["--config", &cfg_arg, "--iptables-masquerade-bit", "3"],
    );
    assert_web_rendered(&r);
    assert!(r.stdout.contains("0x8000/0x8000"), "{}", r.stdout);
    assert!(r.stdout.contains("! -s 10.244.0.0/16"), "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "warning: --iptables-masquerade-bit is ignored because --config is given (as upstream kube-proxy does)\n"
    );
}

#[test]
fn ipv6_family_renders_only_ipv6_addresses() {
    let dir = Scratch::new("ipv6");
    let svc = WEB.replace(
        "  clusterIPs: [10.96.12.34]\n",
        "  clusterIPs: [10.96.12.34, \"fd00:10:96::c\"]\n",
    );
    let slice6 = WEB_SLICE
        .replace("web-x7k2p", "web-v6")
        .replace("addressType: IPv4", "addressType: IPv6")
        .replace("10.244.1.5", "\"fd00:10:244:1::5\"")
        .replace("10.244.2.7", "\"fd00:10:244:2::7\"");
    let f = dir.write(
        "objects.yaml",
        &format!("{svc}---\n{WEB_SLICE}---\n{slice6}"),
    );
    let r = dry_run(&[&f], &["--ip-family", "ipv6"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("-d fd00:10:96::c/128"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("--to-destination [fd00:10:244:1::5]:8080"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("10.244.1.5"), "{}", r.stdout);
}

/// `--proxy-mode ipvs --dry-run` prints three parts under `# ipvsadm`, `# ipset`, `# iptables`;
/// `--dry-run-part` prints exactly one of them, without its header.
#[test]
fn ipvs_dry_run_parts_are_the_sections_of_the_whole() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/loadbalancer");
    let objects = case.join("objects.yaml");
    let base = ["--proxy-mode", "ipvs"];
    let whole = dry_run(&[&objects], &base);
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    let headers: Vec<&str> = whole
        .stdout
        .lines()
        .filter(|l| l.starts_with("# "))
        .collect();
    assert_eq!(headers, ["# ipvsadm", "# ipset", "# iptables"]);
    let mut joined = String::new();
    for part in ["ipvsadm", "ipset", "iptables"] {
        let one = dry_run(
            &[&objects],
            &[&base[..], &["--dry-run-part", part]].concat(),
        );
        assert_eq!(one.code, Some(0), "{}", one.stderr);
        assert!(!one.stdout.is_empty(), "{part} is empty");
        assert!(
            !one.stdout.contains("# "),
            "{part} has a header:\n{}",
            one.stdout
        );
        joined.push_str(&format!("# {part}\n{}", one.stdout));
    }
    assert_eq!(joined, whole.stdout);
}

#[test]
fn ipvs_parts_need_ipvs_mode_and_unknown_parts_are_refused() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/loadbalancer");
    let objects = case.join("objects.yaml");
    let r = dry_run(&[&objects], &["--dry-run-part", "ipset"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("need --proxy-mode ipvs"), "{}", r.stderr);
    let r = dry_run(&[&objects], &["--dry-run-part", "iptables"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("*mangle\n"), "{}", r.stdout);
    let r = dry_run(
        &[&objects],
        &["--proxy-mode", "ipvs", "--dry-run-part", "nft"],
    );
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("invalid value 'nft'"), "{}", r.stderr);
}

/// `--write-config-to FILE` writes the effective configuration and exits; the dry run with
/// `--config FILE` renders exactly what the flags rendered, without a warning.
#[test]
fn write_config_to_round_trips_through_the_dry_run() {
    let dir = Scratch::new("write-config");
    let objects = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/example");
    let config = dir.0.join("config.conf");
    let flags = [
        "--hostname-override=node-a",
        "--cluster-cidr=10.244.0.0/16",
        "--masquerade-all",
        "--nodeport-addresses=192.168.0.0/16",
    ];
    let w = run(["--write-config-to", config.to_str().unwrap()]
        .into_iter()
        .chain(flags));
    assert_eq!(w.code, Some(0), "{}", w.stderr);
    assert!(w.stdout.is_empty());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"),
        "{text}"
    );
    assert!(text.contains("masqueradeAll: true\n"), "{text}");
    let by_flags = run(["--dry-run", "--objects", objects.to_str().unwrap()]
        .into_iter()
        .chain(flags));
    let by_file = run([
        "--dry-run",
        "--objects",
        objects.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--hostname-override=node-a",
    ]);
    assert_eq!(by_file.code, Some(0), "{}", by_file.stderr);
    assert_eq!(by_file.stderr, "");
    assert_eq!(by_file.stdout, by_flags.stdout);
    let stdout = run(["--write-config-to", "-", "--hostname-override=node-a"]);
    assert!(stdout.stdout.contains("kind: KubeProxyConfiguration\n"));
}
