//! `explain` golden files and its agreement with the render.
//!
//! `golden/<case>/expected.explain` holds the text `kube-proxy-rs explain SERVICE` prints for the
//! Services listed in [`GOLDEN`], each under a `$ kube-proxy-rs explain …` line, run with the
//! case's objects and `flags` file. `UPDATE_GOLDEN=1 cargo test --test render explain::` rewrites them;
//! review the diff.
//!
//! Every chain explain names — for every port of every Service of every golden case — must be
//! one the dry run of that case writes, so explain cannot drift from the render.
//!
//! IPVS mode: `golden/<case>/expected.explain-ipvs` holds the same for the Services listed in
//! [`GOLDEN_IPVS`], run with `--proxy-mode ipvs` added to the case's flags. Every virtual server,
//! real server and ipset member explain names — every port of every golden case — must be in
//! that case's IPVS dry run, and together they must be all of it.

use testkit::cli::{Run, root};
use testkit::golden::{flags, objects_path};

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use kube_proxy_rs::settings::ProxyMode;

/// The cases with an `expected.explain`, and the Services (and ports) each explains.
const GOLDEN: &[(&str, &[&str])] = &[
    (
        "example",
        &[
            "kube-system/kube-dns:dns",
            "shop/frontend",
            "shop/checkout",
            "shop/reports",
            "shop/api",
        ],
    ),
    ("etp-local", &["shop/web"]),
    ("itp-local", &["shop/cache"]),
    (
        "terminating-endpoints",
        &["shop/draining", "shop/rolling", "shop/dead", "shop/edge"],
    ),
    ("topology-zone-hints", &["shop/api"]),
    ("session-affinity", &["shop/cart"]),
    ("loadbalancer-source-ranges", &["shop/admin"]),
];

/// The cases with an `expected.explain-ipvs`, and the Services (and ports) each explains.
const GOLDEN_IPVS: &[(&str, &[&str])] = &[
    (
        "example",
        &[
            "kube-system/kube-dns:dns",
            "shop/frontend",
            "shop/checkout",
            "shop/reports",
            "shop/api",
        ],
    ),
    ("etp-local", &["shop/web"]),
    ("etp-local-no-local-endpoints", &["shop/web"]),
    ("no-endpoints", &["shop/idle"]),
    ("itp-local", &["shop/cache"]),
    (
        "terminating-endpoints",
        &["shop/draining", "shop/rolling", "shop/dead", "shop/edge"],
    ),
    ("session-affinity", &["shop/cart", "shop/login"]),
    ("loadbalancer-source-ranges", &["shop/admin"]),
    (
        "ipvs-scheduler-and-node-excluded-ranges",
        &["shop/partner-api", "ops/syslog"],
    ),
];

fn explain(args: &[String]) -> Run {
    testkit::cli::run(std::iter::once("explain").chain(args.iter().map(String::as_str)))
}

fn case_args(case: &str, service: &str, extra: &[&str]) -> Vec<String> {
    let dir = Path::new("golden").join(case);
    let mut args = vec![
        service.to_string(),
        "--objects".into(),
        objects_path(&dir).display().to_string(),
    ];
    args.extend(flags(&root().join(&dir)));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `--proxy-mode ipvs`, unless the case's flags choose the mode themselves.
fn ipvs_flag(case: &str) -> &'static [&'static str] {
    if flags(&root().join("golden").join(case))
        .iter()
        .any(|f| f == "--proxy-mode")
    {
        &[]
    } else {
        &["--proxy-mode", "ipvs"]
    }
}

/// The whole `expected.explain` (`mode` empty) or `expected.explain-ipvs` of one case.
fn golden_text(case: &str, services: &[&str], mode: &[&str]) -> String {
    let mut out = String::new();
    for (i, svc) in services.iter().enumerate() {
        let r = explain(&case_args(case, svc, mode));
        assert_eq!(r.code, Some(0), "{case} {svc}: {}", r.stderr);
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("$ kube-proxy-rs explain {svc}\n"));
        out.push_str(&r.stdout);
    }
    out
}

/// Compares (or, under `UPDATE_GOLDEN`, writes) `file` of every case in `golden`.
fn check_golden(golden: &[(&str, &[&str])], file: &str, ipvs: bool) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for (case, services) in golden {
        let mode = if ipvs { ipvs_flag(case) } else { &[] };
        let got = golden_text(case, services, mode);
        let path = root().join("golden").join(case).join(file);
        if update {
            fs::write(&path, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        if got != want {
            let diff = similar::TextDiff::from_lines(&want, &got)
                .unified_diff()
                .header("expected", "got")
                .to_string();
            failed.push(format!("{case}:\n{diff}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn golden_explain_output() {
    check_golden(GOLDEN, "expected.explain", false);
}

#[test]
fn golden_explain_ipvs_output() {
    check_golden(GOLDEN_IPVS, "expected.explain-ipvs", true);
}

/// Every `KUBE-…` word of `text`.
fn chain_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("KUBE-") && w.len() > 5)
        .collect()
}

fn dry_run_text(cli: &kube_proxy_rs::Cli) -> String {
    let mut cli = cli.clone();
    cli.dry_run = true;
    kube_proxy_rs::commands::dryrun::render(&cli)
        .unwrap()
        .save_text
}

#[test]
fn printed_chains_exist_in_the_dry_run() {
    for (case, services) in GOLDEN {
        let dir = Path::new("golden").join(case);
        let mut argv = vec!["kube-proxy-rs".to_string(), "--objects".into()];
        argv.push(root().join(objects_path(&dir)).display().to_string());
        argv.extend(flags(&root().join(&dir)));
        let save = dry_run_text(&kube_proxy_rs::Cli::try_parse_from(&argv).unwrap());
        for svc in *services {
            for output in [&[][..], &["--output", "json"][..]] {
                let r = explain(&case_args(case, svc, output));
                assert_eq!(r.code, Some(0), "{case} {svc}: {}", r.stderr);
                let words = chain_words(&r.stdout);
                assert!(words.iter().any(|w| w.starts_with("KUBE-SERVICES")));
                for w in words {
                    assert!(
                        save.contains(&format!(":{w} ")),
                        "{case} {svc}: explain names {w}, which the dry run does not write"
                    );
                }
            }
        }
    }
}

/// Every golden case, every port, both families where the case has them: every chain the
/// analysis names (routes, sets, endpoints) is one the render writes.
#[test]
fn analysis_chains_exist_in_the_render_for_every_case() {
    let mut checked = 0;
    let mut health_checked = 0;
    let mut cases: Vec<PathBuf> = fs::read_dir(root().join("golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    for case in cases {
        let families: &[&str] = if case.join("expected.ip6tables").exists() {
            &["ipv4", "ipv6"]
        } else {
            &["ipv4"]
        };
        for fam in families {
            let mut argv = vec!["kube-proxy-rs".to_string(), "--objects".into()];
            argv.push(objects_path(&case).display().to_string());
            argv.extend(flags(&case));
            if !argv.iter().any(|a| a == "--ip-family") {
                argv.extend(["--ip-family".to_string(), fam.to_string()]);
            }
            let cli = kube_proxy_rs::Cli::try_parse_from(&argv).unwrap();
            let (settings, _) = kube_proxy_rs::Settings::from_cli(&cli).unwrap();
            if settings.mode != ProxyMode::Iptables {
                continue;
            }
            let save = dry_run_text(&cli);
            let t = kube_proxy_rs::load_model(&cli.objects, &settings).unwrap();
            let mut health_ports = BTreeSet::new();
            for sp in &t.model.services {
                let Some(x) = rulegen::analysis::explain::explain_port(sp, &t.config) else {
                    continue;
                };
                health_ports.extend(x.health_check_node_port);
                let mut names: Vec<String> = x.chains.iter().map(|c| c.to_string()).collect();
                for p in &x.paths {
                    for r in &p.routes {
                        names.extend(r.chains.iter().cloned());
                    }
                }
                for s in [&x.cluster_set, &x.local_set].into_iter().flatten() {
                    names.extend(s.chain.map(|c| c.to_string()));
                }
                for n in names {
                    assert!(
                        save.contains(&format!(":{n} ")),
                        "{} {}: explain names {n}, which the render does not write",
                        case.display(),
                        sp.name
                    );
                    checked += 1;
                }
                // And the render writes no chain of this port that explain does not know.
                let hash = x
                    .chains
                    .first()
                    .map(|c| c.as_str().rsplit('-').next().unwrap().to_string());
                if let Some(h) = hash.filter(|_| {
                    x.chains
                        .iter()
                        .any(|c| !c.as_str().starts_with("KUBE-SEP-"))
                }) {
                    for prefix in ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"] {
                        let name = format!("{prefix}{h}");
                        assert_eq!(
                            save.contains(&format!(":{name} ")),
                            x.chains.iter().any(|c| c.as_str() == name),
                            "{} {}: {name}",
                            case.display(),
                            sp.name
                        );
                    }
                }
            }
            // The health-check node ports explain names are exactly those the render accepts.
            let accepted: BTreeSet<u16> = save
                .lines()
                .filter(|l| {
                    l.starts_with("-A KUBE-NODEPORTS ") && l.contains("health check node port")
                })
                .map(|l| {
                    let (_, rest) = l.split_once("--dport ").expect("a --dport");
                    rest.split_whitespace().next().unwrap().parse().unwrap()
                })
                .collect();
            assert_eq!(
                health_ports,
                accepted,
                "{} {fam}: health-check node ports",
                case.display()
            );
            health_checked += health_ports.len();
        }
    }
    assert!(checked > 100, "only {checked} chain names checked");
    assert!(
        health_checked >= 3,
        "only {health_checked} health-check node ports checked"
    );
}

#[test]
fn unknown_service_exits_1_with_close_matches() {
    let r = explain(&case_args("example", "shop/frontnd", &[]));
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr.contains("did you mean: shop/frontend"),
        "{}",
        r.stderr
    );
    let r = explain(&case_args("example", "shop/frontend:grpc", &[]));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("its ports: http"), "{}", r.stderr);
}

#[test]
fn json_output_parses_and_carries_probabilities() {
    let r = explain(&case_args(
        "example",
        "shop/frontend",
        &["--output", "json"],
    ));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let port = &v["ports"][0];
    assert_eq!(port["service"], "shop/frontend");
    let eps = port["clusterSet"]["endpoints"].as_array().unwrap();
    let total: f64 = eps.iter().map(|e| e["probability"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(
        port["clusterSet"]["chain"]
            .as_str()
            .unwrap()
            .starts_with("KUBE-SVC-")
    );
}

#[test]
fn the_dry_run_contract_is_unchanged() {
    let head = ["--dry-run", "--objects", "golden/example"].map(String::from);
    let r = testkit::cli::run(
        head.into_iter()
            .chain(flags(&root().join("golden/example"))),
    );
    assert!(r.success(), "{}", r.stderr);
    let want = fs::read_to_string(root().join("golden/example/expected.iptables")).unwrap();
    assert_eq!(r.stdout, want);
}

/// The IPVS dry run of `argv` (without the program name), when its settings choose IPVS mode.
fn ipvs_dry_run(argv: &[String]) -> Option<(String, kube_proxy_rs::Cli, kube_proxy_rs::Settings)> {
    let mut full = vec!["kube-proxy-rs".to_string()];
    full.extend(argv.iter().cloned());
    let cli = kube_proxy_rs::Cli::try_parse_from(&full).unwrap();
    let (settings, _) = kube_proxy_rs::Settings::from_cli(&cli).unwrap();
    if settings.mode != ProxyMode::Ipvs {
        return None;
    }
    Some((dry_run_text(&cli), cli, settings))
}

/// The lines of an IPVS dry run that hold servers and set members: `-A`, `-a` and `add`.
fn server_and_member_lines(save: &str) -> std::collections::BTreeSet<String> {
    save.lines()
        .filter(|l| {
            l.starts_with("-A -")
                || l.starts_with("-A --sctp")
                || l.starts_with("-a ")
                || l.starts_with("add ")
        })
        .filter(|l| !l.starts_with("-A KUBE") && !l.starts_with("-A INPUT"))
        .map(str::to_string)
        .collect()
}

/// Every word of `text` (what `KUBE-…` names are checked against).
fn words(text: &str) -> std::collections::BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect()
}

/// `-t`, `-u` or `--sctp-service`, as `ipvsadm -Sn` names a protocol.
fn ipvsadm_proto(p: &str) -> &'static str {
    match p {
        "tcp" => "-t",
        "udp" => "-u",
        _ => "--sctp-service",
    }
}

/// The `-A` and `-a` lines of one virtual server as explain describes it.
fn ipvsadm_lines(
    proto: &str,
    addr: &str,
    scheduler: &str,
    persistence: Option<u64>,
    flags: &[String],
    real_servers: &[(String, u64)],
) -> Vec<String> {
    let p = ipvsadm_proto(proto);
    let mut head = format!("-A {p} {addr} -s {scheduler}");
    if let Some(t) = persistence {
        head.push_str(&format!(" -p {t}"));
    }
    for f in flags {
        head.push_str(&format!(" -b {f}"));
    }
    let mut out = vec![head];
    for (rs, w) in real_servers {
        out.push(format!("-a {p} {addr} -r {rs} -m -w {w}"));
    }
    out
}

/// Every golden case in IPVS mode, every port, both families where the case has them: every
/// virtual server, real server and ipset member the analysis names is in the dry run, every name
/// a route matches on is a set or chain the dry run has, and the ports together name all of it.
#[test]
fn ipvs_analysis_names_exactly_what_the_dry_run_holds_for_every_case() {
    use rulegen::analysis::explain::ipvs::{addr_port, explain_port, scheduler_flags};
    let mut checked = 0;
    let mut cases: Vec<PathBuf> = fs::read_dir(root().join("golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    for case in cases {
        let families: &[&str] = if case.join("expected.ipvs6").exists() {
            &["ipv4", "ipv6"]
        } else {
            &["ipv4"]
        };
        for fam in families {
            let mut argv = vec!["--objects".to_string()];
            argv.push(objects_path(&case).display().to_string());
            argv.extend(flags(&case));
            if !argv.iter().any(|a| a == "--proxy-mode" || a == "--config") {
                argv.extend(["--proxy-mode".to_string(), "ipvs".into()]);
            }
            if !argv.iter().any(|a| a == "--ip-family") {
                argv.extend(["--ip-family".to_string(), fam.to_string()]);
            }
            let Some((save, cli, settings)) = ipvs_dry_run(&argv) else {
                continue;
            };
            let want = server_and_member_lines(&save);
            let save_words = words(&save);
            let t = kube_proxy_rs::load_model(&cli.objects, &settings).unwrap();
            let render = rulegen::render::ipvs::render(
                &t.model,
                &t.config,
                &kube_proxy_rs::commands::dryrun::ipvs_config(&settings),
            )
            .unwrap();
            let mut named = std::collections::BTreeSet::new();
            for sp in &t.model.services {
                let Some(x) = explain_port(sp, &t.config, &render) else {
                    continue;
                };
                let mut lines = Vec::new();
                for p in &x.paths {
                    for vs in &p.virtual_servers {
                        let rs: Vec<(String, u64)> = vs
                            .real_servers
                            .iter()
                            .map(|r| (addr_port(&r.addr, r.port), u64::from(r.weight)))
                            .collect();
                        let flags: Vec<String> =
                            scheduler_flags(vs).iter().map(|f| f.to_string()).collect();
                        lines.extend(ipvsadm_lines(
                            vs.protocol.as_str(),
                            &addr_port(&vs.addr, vs.port),
                            &vs.scheduler,
                            vs.persistence.map(u64::from),
                            &flags,
                            &rs,
                        ));
                    }
                    for r in &p.routes {
                        for m in &r.matched {
                            assert!(
                                save_words.contains(m.as_str()),
                                "{} {}: explain matches on {m}, which the dry run does not have",
                                case.display(),
                                sp.name
                            );
                        }
                    }
                }
                lines.extend(
                    x.ipset_members
                        .iter()
                        .map(|m| format!("add {} {}", m.set, m.member)),
                );
                for l in lines {
                    assert!(
                        want.contains(&l),
                        "{} {} ({fam}): explain names `{l}`, which the dry run does not hold",
                        case.display(),
                        sp.name
                    );
                    checked += 1;
                    named.insert(l);
                }
            }
            let missing: Vec<&String> = want.difference(&named).collect();
            assert!(
                missing.is_empty(),
                "{} ({fam}): no port's explanation names {missing:?}",
                case.display()
            );
        }
    }
    assert!(checked > 300, "only {checked} lines checked");
}

/// What the binary prints in IPVS mode (text and JSON) for the golden Services: every `KUBE-…`
/// name is one the dry run has, and every virtual server, real server and member of the JSON is
/// a line of the dry run.
#[test]
fn printed_ipvs_names_exist_in_the_dry_run() {
    for (case, services) in GOLDEN_IPVS {
        let dir = root().join("golden").join(case);
        let mut argv = vec!["--objects".to_string()];
        argv.push(objects_path(&dir).display().to_string());
        argv.extend(flags(&dir));
        argv.extend(ipvs_flag(case).iter().map(|s| s.to_string()));
        let (save, _, _) = ipvs_dry_run(&argv).expect("IPVS mode");
        let want = server_and_member_lines(&save);
        let save_words = words(&save);
        for svc in *services {
            let r = explain(&case_args(case, svc, ipvs_flag(case)));
            assert_eq!(r.code, Some(0), "{case} {svc}: {}", r.stderr);
            for w in chain_words(&r.stdout) {
                assert!(
                    save_words.contains(w),
                    "{case} {svc}: explain prints {w}, which the dry run does not have"
                );
            }
            let mut json_args = ipvs_flag(case).to_vec();
            json_args.extend(["--output", "json"]);
            let r = explain(&case_args(case, svc, &json_args));
            assert_eq!(r.code, Some(0), "{case} {svc}: {}", r.stderr);
            let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["mode"], "ipvs");
            let mut lines = Vec::new();
            for port in v["ports"].as_array().unwrap() {
                for p in port["paths"].as_array().unwrap() {
                    for vs in p["virtualServers"].as_array().unwrap() {
                        let ip: std::net::IpAddr = vs["address"].as_str().unwrap().parse().unwrap();
                        let addr = match ip {
                            std::net::IpAddr::V4(a) => format!("{a}:{}", vs["port"]),
                            std::net::IpAddr::V6(a) => format!("[{a}]:{}", vs["port"]),
                        };
                        let rs: Vec<(String, u64)> = vs["realServers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| {
                                (
                                    r["address"].as_str().unwrap().to_string(),
                                    r["weight"].as_u64().unwrap(),
                                )
                            })
                            .collect();
                        let flags: Vec<String> = vs["schedulerFlags"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| f.as_str().unwrap().to_string())
                            .collect();
                        lines.extend(ipvsadm_lines(
                            vs["protocol"].as_str().unwrap(),
                            &addr,
                            vs["scheduler"].as_str().unwrap(),
                            vs["persistenceSeconds"].as_u64(),
                            &flags,
                            &rs,
                        ));
                    }
                }
                for m in port["ipsets"].as_array().unwrap() {
                    lines.push(format!(
                        "add {} {}",
                        m["set"].as_str().unwrap(),
                        m["member"].as_str().unwrap()
                    ));
                }
            }
            assert!(!lines.is_empty(), "{case} {svc}: nothing named");
            for l in lines {
                assert!(
                    want.contains(&l),
                    "{case} {svc}: explain names `{l}`, which the dry run does not hold"
                );
            }
        }
    }
}

#[test]
fn unknown_service_gives_the_same_error_in_both_modes() {
    for (svc, hint) in [
        ("shop/frontnd", "did you mean: shop/frontend"),
        ("shop/frontend:grpc", "its ports: http"),
        ("nope/nothing-like-it", "not found"),
    ] {
        let iptables = explain(&case_args("example", svc, &[]));
        let ipvs = explain(&case_args("example", svc, &["--proxy-mode", "ipvs"]));
        for r in [&iptables, &ipvs] {
            assert_eq!(r.code, Some(1), "{svc}: {}", r.stderr);
            assert!(r.stdout.is_empty());
            assert!(r.stderr.contains(hint), "{svc}: {}", r.stderr);
        }
        assert_eq!(iptables.stderr, ipvs.stderr, "{svc}");
    }
}

#[test]
fn ipvs_json_carries_virtual_servers_and_exclusions() {
    let r = explain(&case_args(
        "etp-local",
        "shop/web",
        &["--proxy-mode", "ipvs", "--output", "json"],
    ));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let port = &v["ports"][0];
    assert_eq!(port["externalSelection"], "Local");
    let np = &port["paths"][1];
    assert_eq!(np["kind"], "NodePort");
    assert_eq!(np["routes"][0]["masquerade"], false);
    assert_eq!(np["routes"][0]["matched"][0], "KUBE-NODE-PORT-LOCAL-TCP");
    let remote = port["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "node-b")
        .unwrap();
    assert_eq!(remote["clusterIp"]["realServer"], true);
    assert_eq!(remote["external"]["excluded"]["reason"], "OtherNode");
}
