//! `explain` golden files and its agreement with the render.
//!
//! `golden/<case>/expected.explain` holds the text `kube-proxy-rs explain SERVICE` prints for the
//! Services listed in [`GOLDEN`], each under a `$ kube-proxy-rs explain …` line, run with the
//! case's objects and `flags` file. `UPDATE_GOLDEN=1 cargo test --test explain` rewrites them;
//! review the diff.
//!
//! Every chain explain names — for every port of every Service of every golden case — must be
//! one the dry run of that case writes, so explain cannot drift from the render.

mod support;

use support::golden::{flags, objects_path};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

fn explain(args: &[String]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rs"))
        .current_dir(root())
        .arg("explain")
        .args(args)
        .output()
        .expect("binary runs");
    Run {
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        code: out.status.code(),
    }
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

/// The whole `expected.explain` of one case.
fn golden_text(case: &str, services: &[&str]) -> String {
    let mut out = String::new();
    for (i, svc) in services.iter().enumerate() {
        let r = explain(&case_args(case, svc, &[]));
        assert_eq!(r.code, Some(0), "{case} {svc}: {}", r.stderr);
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("$ kube-proxy-rs explain {svc}\n"));
        out.push_str(&r.stdout);
    }
    out
}

#[test]
fn golden_explain_output() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for (case, services) in GOLDEN {
        let got = golden_text(case, services);
        let path = root().join("golden").join(case).join("expected.explain");
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

/// Every `KUBE-…` word of `text`.
fn chain_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("KUBE-") && w.len() > 5)
        .collect()
}

fn dry_run_text(cli: &kube_proxy_rs::Cli) -> String {
    let mut cli = cli.clone();
    cli.dry_run = true;
    kube_proxy_rs::dryrun::render(&cli).unwrap().save_text
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
            for sp in &t.model.services {
                let Some(x) = rulegen::explain::explain_port(sp, &t.config) else {
                    continue;
                };
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
        }
    }
    assert!(checked > 100, "only {checked} chain names checked");
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
    let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rs"))
        .current_dir(root())
        .args(["--dry-run", "--objects", "golden/example"])
        .args(flags(&root().join("golden/example")))
        .output()
        .unwrap();
    assert!(out.status.success());
    let want = fs::read_to_string(root().join("golden/example/expected.iptables")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}
