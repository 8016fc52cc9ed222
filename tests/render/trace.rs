//! `trace` golden files and its command-line contract.
//!
//! `golden/<case>/expected.trace` (and `expected.trace-ipvs` for `--proxy-mode ipvs`) holds what
//! `kube-proxy-rs trace …` prints for the packets listed in [`GOLDEN`], each under a
//! `$ kube-proxy-rs trace …` line, run with the case's objects and `flags` file.
//! `UPDATE_GOLDEN=1 cargo test --test render trace::` rewrites them; review the diff.
//!
//! The tracer's agreement with the kernel is `tests/kernel/trace_kernel.rs`.

use testkit::cli::{Run, root};
use testkit::golden::{flags, objects_path};
use testkit::iptables::{Backend, restore};
use testkit::objects::{Endpoint, Service, endpoint_slice, node};

use std::fs;
use std::path::{Path, PathBuf};

/// Cases, the mode's file suffix and extra flags, and the packets traced (trace's own flags).
const GOLDEN: &[(&str, &str, &[&str])] = &[
    (
        "example",
        "",
        &[
            "--src 10.244.1.9 --dst 10.100.12.7:80",
            "--src 192.168.0.10 --dst 10.96.0.10:53 --proto udp",
            "--src 203.0.113.7 --dst 192.168.0.10:31443",
            "--src 203.0.113.7 --dst 198.51.100.20:443",
            "--src 192.0.2.50 --dst 198.51.100.20:443",
            "--src 10.244.1.9 --dst 10.100.50.9:8080",
            "--src 127.0.0.1 --dst 127.0.0.1:30080",
            "--src 10.244.1.20 --dst 10.100.12.7:80",
        ],
    ),
    (
        "example",
        "-ipvs",
        &[
            "--src 10.244.1.9 --dst 10.96.0.10:53 --proto udp",
            "--src 192.168.0.10 --dst 10.100.12.7:80",
            "--src 203.0.113.7 --dst 192.168.0.10:30080",
            "--src 192.0.2.50 --dst 198.51.100.20:443",
            "--src 10.244.1.9 --dst 10.100.50.9:8080",
            "--src 10.244.1.9 --dst 10.100.12.7:81",
        ],
    ),
    (
        "etp-local",
        "",
        &[
            "--src 203.0.113.7 --dst 192.168.0.10:30081",
            "--src 10.244.1.9 --dst 198.51.100.10:80",
        ],
    ),
    (
        "etp-local-no-local-endpoints",
        "",
        &[
            "--src 203.0.113.7 --dst 198.51.100.11:80",
            "--src 203.0.113.7 --dst 192.168.0.10:30082",
        ],
    ),
    (
        "session-affinity",
        "",
        &["--src 10.244.1.9 --dst 10.96.12.1:80"],
    ),
    (
        "external-ips",
        "",
        &[
            "--src 203.0.113.7 --dst 192.168.99.22:80",
            "--src 203.0.113.7 --dst 192.168.99.24:80",
        ],
    ),
    (
        "detect-local-bridge-interface",
        "",
        &[
            "--src 10.244.1.9 --dst 10.96.15.2:80 --from pod --in-interface cbr0",
            "--src 10.244.1.9 --dst 10.96.15.2:80 --from pod --in-interface eth0",
        ],
    ),
    (
        "ipv6-only",
        "",
        &["--src fd00:10:244:1::9 --dst [fd00:10:96::a]:53 --proto udp"],
    ),
    // A source range of every address admits clients from both halves of the address space.
    (
        "loadbalancer-source-ranges-all-addresses",
        "",
        &[
            "--src 8.8.8.8 --dst 198.51.100.8:80",
            "--src 200.1.2.3 --dst 198.51.100.9:443",
        ],
    ),
    (
        "loadbalancer-source-ranges-all-addresses",
        "-ipvs",
        &[
            "--src 8.8.8.8 --dst 198.51.100.8:80",
            "--src 200.1.2.3 --dst 198.51.100.9:443",
            "--src [2001:db8:5::1] --dst [2001:db8:100::8]:53 --proto udp --ip-family ipv6",
            "--src [fe80::1] --dst [2001:db8:100::9]:443 --ip-family ipv6",
        ],
    ),
];

fn trace(args: &[String]) -> Run {
    testkit::cli::run(std::iter::once("trace").chain(args.iter().map(String::as_str)))
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The packet flags, then the case's objects and flags (and `--proxy-mode ipvs` for `-ipvs`).
fn case_args(case: &str, mode: &str, packet: &str) -> Vec<String> {
    let dir = Path::new("golden").join(case);
    let mut args = words(packet);
    args.push("--objects".into());
    args.push(objects_path(&dir).display().to_string());
    args.extend(flags(&root().join(&dir)));
    if mode == "-ipvs" {
        args.extend(words("--proxy-mode ipvs"));
    }
    args
}

#[test]
fn golden_traces() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for (case, mode, packets) in GOLDEN {
        let mut text = String::new();
        for (i, packet) in packets.iter().enumerate() {
            let r = trace(&case_args(case, mode, packet));
            assert_eq!(r.code, Some(0), "{case}{mode} {packet}: {}", r.stderr);
            assert_eq!(r.stderr, "", "{case}{mode} {packet}: no warnings expected");
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&format!("$ kube-proxy-rs trace {packet}\n"));
            text.push_str(&r.stdout);
        }
        let path = root()
            .join("golden")
            .join(case)
            .join(format!("expected.trace{mode}"));
        files.push((path, text));
    }
    for (path, text) in files {
        if update {
            fs::write(&path, &text).unwrap();
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!(
                "{} differs (UPDATE_GOLDEN=1 to rewrite):\n{}",
                path.display(),
                testkit::unified_diff(&want, &text, "expected", "trace")
            )),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn json(args: &[String]) -> serde_json::Value {
    let r = trace(args);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str(&r.stdout).expect("JSON output")
}

/// (destination or verdict, share) of every new-connection outcome.
fn outcomes(v: &serde_json::Value) -> Vec<(String, f64, bool)> {
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| !o["affinity"].as_bool().unwrap())
        .map(|o| {
            let what = match o["verdict"].as_str().unwrap() {
                "delivered" => o["destination"].as_str().unwrap().to_string(),
                v => format!(
                    "{v} {} {}",
                    o["table"].as_str().unwrap(),
                    o["chain"].as_str().unwrap()
                ),
            };
            (
                what,
                o["share"].as_f64().unwrap(),
                o["masquerade"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn json_lists_every_outcome_with_its_share() {
    let mut args = case_args("example", "", "--src 10.244.1.9 --dst 10.100.60.1:9090");
    args.extend(words("--output json"));
    let v = json(&args);
    assert_eq!(v["packet"]["from"], "pod");
    assert_eq!(v["packet"]["source"], "10.244.1.9:40000");
    let got = outcomes(&v);
    let dsts: Vec<&str> = got.iter().map(|(d, _, _)| d.as_str()).collect();
    assert_eq!(
        dsts,
        [
            "10.244.1.50:9090",
            "10.244.2.51:9090",
            "10.244.3.52:9090",
            "10.244.3.53:9090"
        ]
    );
    for (d, share, masq) in &got {
        assert!((share - 0.25).abs() < 1e-9, "{d}: {share}");
        assert!(!masq, "{d}: a local pod keeps its source");
    }
    assert!(v["walk"]["steps"].as_array().unwrap().len() >= 2);
}

#[test]
fn a_saved_ruleset_is_traced_as_it_is() {
    // The golden ruleset read back from a file traces like the render, and an edit to it shows.
    let saved = fs::read_to_string(root().join("golden/example/expected.iptables")).unwrap();
    let dir = std::env::temp_dir().join(format!("kprs-trace-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let edited = dir.join("edited.rules");
    fs::write(
        &edited,
        saved.replace(
            "--to-destination 10.244.2.21:8080",
            "--to-destination 10.244.2.99:8080",
        ),
    )
    .unwrap();
    let from_file = json(&words(&format!(
        "--src 203.0.113.7 --dst 192.168.0.10:30080 --ruleset {} --local-address 192.168.0.10 --output json",
        root().join("golden/example/expected.iptables").display()
    )));
    let rendered = json(&case_args(
        "example",
        "",
        "--src 203.0.113.7 --dst 192.168.0.10:30080 --output json",
    ));
    assert_eq!(outcomes(&from_file), outcomes(&rendered));
    assert!(outcomes(&rendered).iter().all(|(_, _, m)| *m));
    let edited = json(&words(&format!(
        "--src 203.0.113.7 --dst 192.168.0.10:30080 --ruleset {} --local-address 192.168.0.10 --output json",
        edited.display()
    )));
    let dsts: Vec<String> = outcomes(&edited).into_iter().map(|o| o.0).collect();
    assert!(dsts.contains(&"10.244.2.99:8080".to_string()), "{dsts:?}");
    // Without the node's address the node port is not this node's: nothing takes the packet.
    let unknown_node = json(&words(&format!(
        "--src 203.0.113.7 --dst 192.168.0.10:30080 --ruleset {} --output json",
        root().join("golden/example/expected.iptables").display()
    )));
    assert_eq!(
        outcomes(&unknown_node),
        [("192.168.0.10:30080".to_string(), 1.0, false)]
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_ipvs_node_is_traced_from_its_three_saved_parts() {
    let dir = std::env::temp_dir().join(format!("kprs-trace-ipvs-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut args = ["--dry-run", "--proxy-mode", "ipvs", "--objects"]
        .map(String::from)
        .to_vec();
    args.push(
        objects_path(Path::new("golden/example"))
            .display()
            .to_string(),
    );
    args.extend(flags(&root().join("golden/example")));
    let dry = testkit::cli::run(&args);
    assert!(dry.success(), "{}", dry.stderr);
    let text = dry.stdout;
    let part = |name: &str| -> String {
        let start = text.find(&format!("# {name}\n")).unwrap() + name.len() + 3;
        let end = text[start..]
            .find("\n# ")
            .map_or(text.len(), |e| start + e + 1);
        text[start..end].to_string()
    };
    for (file, name) in [
        ("ipvsadm", "ipvsadm"),
        ("ipset", "ipset"),
        ("iptables", "iptables"),
    ] {
        fs::write(dir.join(file), part(name)).unwrap();
    }
    let args = |extra: &str| {
        words(&format!(
            "--src 10.244.1.9 --dst 10.96.0.10:53 --proto udp --ruleset {} {extra} --local-address 192.168.0.10 --output json",
            dir.join("iptables").display()
        ))
    };
    let full = json(&args(&format!(
        "--ipsets {} --ipvs {}",
        dir.join("ipset").display(),
        dir.join("ipvsadm").display()
    )));
    let rendered = json(&case_args(
        "example",
        "-ipvs",
        "--src 10.244.1.9 --dst 10.96.0.10:53 --proto udp --output json",
    ));
    assert_eq!(outcomes(&full), outcomes(&rendered));
    assert_eq!(outcomes(&full).len(), 2);
    // Without the sets, their matches cannot be decided, and the output says so.
    let bare = json(&args(""));
    assert!(
        bare["not_modelled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("--ipsets")),
        "{}",
        bare["not_modelled"]
    );
    fs::remove_dir_all(&dir).ok();
}

/// Issue #15: a ClusterIP Service with 4,300 endpoints or more overflowed the main thread's
/// stack (exit 134) in every form of trace. Here 10,000, through the binary with its default
/// main-thread stack: from the objects, from their saved ruleset, and as JSON (which a parser
/// with serde_json's default nesting limit must read). The walk's own test takes 50,000
/// (rulegen), which would take a debug build of the binary long.
#[test]
fn a_service_with_10_000_endpoints_is_traced() {
    const N: usize = 10_000;
    let dir = testkit::TempDir::new("trace-big");
    let endpoints: Vec<Endpoint> = (0..N)
        .map(|i| Endpoint::remote(&format!("10.1.{}.{}", i / 256, i % 256)))
        .collect();
    let objects = dir.path().join("objects.yaml");
    let yaml = [
        node(&["192.168.0.10"], &["10.244.1.0/24"]),
        Service::cluster_ip("big", &["10.96.0.100"]).yaml(),
        endpoint_slice("big", &endpoints),
    ]
    .join("---\n");
    fs::write(&objects, yaml).unwrap();
    let node_flags = format!(
        "--objects {} --hostname-override node-a --cluster-cidr 10.244.0.0/16",
        objects.display()
    );
    let packet = "--src 10.244.1.9 --dst 10.96.0.100:80";
    // Every endpoint is a way of one choice, and a fate of its own in the summary.
    let check_text = |r: &Run, what: &str| {
        assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("{N} ways, at random:")),
            "{what}: not one choice"
        );
        let summary = &r.stdout[r.stdout.find("New connections:").expect("a summary")..];
        assert_eq!(summary.matches("delivered to 10.1.").count(), N, "{what}");
    };
    let from_objects = trace(&words(&format!("{packet} {node_flags}")));
    check_text(&from_objects, "--objects");

    let dry = testkit::cli::run(words(&format!("--dry-run {node_flags}")));
    assert!(dry.success(), "{}", dry.stderr);
    let ruleset = dir.path().join("rules");
    fs::write(&ruleset, &dry.stdout).unwrap();
    let saved = format!(
        "{packet} --ruleset {} --local-address 192.168.0.10",
        ruleset.display()
    );
    let from_file = trace(&words(&saved));
    check_text(&from_file, "--ruleset");
    let walk = |r: &Run| r.stdout[r.stdout.find("\n\n").unwrap()..].to_string();
    assert!(
        walk(&from_file) == walk(&from_objects),
        "the saved ruleset walks as the render"
    );

    let v = json(&words(&format!("{saved} --output json")));
    let got = outcomes(&v);
    assert_eq!(got.len(), N);
    for (dst, share, _) in &got {
        assert!((share * N as f64 - 1.0).abs() < 1e-3, "{dst}: {share}");
    }
    assert_eq!(v["walk"]["branches"].as_array().unwrap().len(), N);
}

#[test]
fn flags_may_come_in_any_order() {
    let a = trace(&case_args(
        "example",
        "",
        "--src 10.244.1.9 --dst 10.100.12.7:80",
    ));
    let mut b_args = case_args("example", "", "");
    b_args.extend(words("--dst 10.100.12.7:80 --src=10.244.1.9 --from=pod"));
    let b = trace(&b_args);
    assert_eq!(a.code, Some(0), "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_input_is_a_clear_error() {
    let case = |packet: &str| trace(&case_args("example", "", packet));
    for (packet, want) in [
        ("--dst 10.100.12.7:80", "needs --src"),
        ("--src 10.244.1.9", "needs --dst"),
        ("--src 10.244.1.9 --dst 10.100.12.7", "needs a port"),
        ("--src 10.244.1.9 --dst 10.100.12.7:70000", "not a number"),
        (
            "--src 10.244.1.9 --dst [fd00::1]:80",
            "different address families",
        ),
        ("--src 10.244.1.9 --dst 10.100.12.7:80 --proto icmp", "icmp"),
        (
            "--src 10.244.1.9 --dst 10.100.12.7:80 --from space",
            "space",
        ),
        (
            "--src 10.244.1.9 --dst 10.100.12.7:80 --local-address nope",
            "not an IP",
        ),
    ] {
        let r = case(packet);
        assert_ne!(r.code, Some(0), "{packet}: should fail");
        assert!(r.stderr.contains(want), "{packet}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{packet}");
    }
    let dir = std::env::temp_dir().join(format!("kprs-trace-bad-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.rules");
    fs::write(
        &broken,
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A NOWHERE -j ACCEPT\nCOMMIT\n",
    )
    .unwrap();
    let r = trace(&words(&format!(
        "--src 10.244.1.9 --dst 10.100.12.7:80 --ruleset {}",
        broken.display()
    )));
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("line 3") && r.stderr.contains("NOWHERE"),
        "{}",
        r.stderr
    );
    let r = trace(&words(&format!(
        "--src 10.244.1.9 --dst 10.100.12.7:80 --ruleset {}",
        dir.join("missing").display()
    )));
    assert!(r.stderr.contains("cannot read --ruleset"), "{}", r.stderr);
    fs::remove_dir_all(&dir).ok();
}

/// Issue #15: `--dst IP:0` was traced. No TCP, UDP or SCTP connection goes to port 0, nor
/// comes from it (binding port 0 picks another), so either is refused.
#[test]
fn port_0_is_refused() {
    for (packet, flag) in [
        ("--src 10.244.1.9 --dst 10.100.12.7:0", "--dst"),
        ("--src 10.244.1.9:0 --dst 10.100.12.7:80", "--src"),
        ("--src fd00::9 --dst [fd00::1]:0", "--dst"),
    ] {
        let r = trace(&case_args("example", "", packet));
        assert_eq!(r.code, Some(1), "{packet}: {}", r.stderr);
        assert!(
            r.stderr.contains(flag) && r.stderr.contains("port 0"),
            "{packet}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{packet}");
    }
}

/// With neither `--objects` nor `--ruleset`, trace reads the node it runs on: here a namespace
/// holding `golden/example`'s ruleset (in each back end, which it must detect) and the node's
/// address. It must predict what the render predicts.
#[test]
fn with_neither_objects_nor_a_file_it_traces_the_live_node() {
    testkit::needs_root!();
    let saved = fs::read_to_string(root().join("golden/example/expected.iptables")).unwrap();
    let packet = "--src 203.0.113.7 --dst 192.168.0.10:30080";
    let rendered = json(&case_args(
        "example",
        "",
        &format!("{packet} --output json"),
    ));
    for backend in [Backend::Nft, Backend::Legacy] {
        let ns = testkit::Netns::new("trace-live");
        ns.add_bridge("br0", "192.168.0.10/24");
        restore(&ns, backend, &saved).unwrap();
        let mut args = vec![
            env!("CARGO_BIN_EXE_kube-proxy-rs").to_string(),
            "trace".into(),
        ];
        args.extend(words(packet));
        let out = ns.command(&args).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // On nft the whole-table save is never run (issue #16): chains are read one by one.
        let tool = match backend {
            Backend::Nft => "nft and iptables-nft".to_string(),
            Backend::Legacy => "iptables-legacy-save".to_string(),
        };
        assert!(
            text.contains(&format!("live rules of this node ({tool})"))
                && text.contains("this node's addresses: 192.168.0.10"),
            "{text}"
        );
        args.extend(words("--output json"));
        let live: serde_json::Value =
            serde_json::from_slice(&ns.command(&args).output().unwrap().stdout).unwrap();
        assert_eq!(outcomes(&live), outcomes(&rendered), "{}", backend.name());
        assert_eq!(outcomes(&live).len(), 3);
    }
}
