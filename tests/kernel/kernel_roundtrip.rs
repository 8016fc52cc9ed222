//! Every golden ruleset must be exactly what the kernel holds after loading it: for each
//! `golden/<case>/expected.iptables` (with `iptables`) and `expected.ip6tables` (with
//! `ip6tables`), and each back end (legacy, nft), restore it into a fresh
//! namespace, save it back table by table (in the file's table order, `#` lines dropped) and
//! require byte equality. So `--dry-run` output, which the golden files pin, is canonical
//! `iptables-save` text that the kernel accepts.
//!
//! The IPVS dry runs' ipset parts (`# ipset` of `expected.ipvs`, `expected.ipvs6`) are loaded the
//! same way with `ipset restore` (this kernel has ipset but no IPVS; the VM test loads the rest),
//! and a render with names longer than the API allows checks the comment cut against the kernel.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use rulegen::IpFamily;
use testkit::{Backend, Netns, payload_tables, restore_with, save_tables_with, unified_diff};

/// Every golden payload: (case, file, family it is for).
fn golden_cases() -> Vec<(String, PathBuf, IpFamily)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut cases = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            for (name, family) in [
                ("expected.iptables", IpFamily::V4),
                ("expected.ip6tables", IpFamily::V6),
            ] {
                let file = e.path().join(name);
                if file.is_file() {
                    cases.push((e.file_name().to_string_lossy().into_owned(), file, family));
                }
            }
        }
    }
    cases.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    cases
}

#[test]
fn golden_rulesets_survive_the_kernel_round_trip() {
    testkit::needs_root!();
    let cases = golden_cases();
    assert!(
        !cases.is_empty(),
        "no golden/<case>/expected.iptables found under {}/golden: nothing to round-trip",
        env!("CARGO_MANIFEST_DIR")
    );

    let start = Instant::now();
    let mut failures = Vec::new();
    assert!(
        cases.iter().any(|c| c.2 == IpFamily::V6),
        "no golden/<case>/expected.ip6tables found: the IPv6 round trip would not run"
    );
    for (case, file, family) in &cases {
        let family = *family;
        let expected = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let tables = payload_tables(&expected);
        if tables.is_empty() {
            failures.push(format!("{case}: {} has no `*table` line", file.display()));
            continue;
        }
        for backend in Backend::ALL {
            let ns = Netns::new(&format!("rt-{backend}"));
            if let Err(e) = restore_with(&ns, backend, family, &[], &expected) {
                failures.push(format!(
                    "{case} [{backend}]: {} rejected {}:\n{e}",
                    backend.restore_bin(family),
                    file.display()
                ));
                continue;
            }
            let saved = save_tables_with(&ns, backend, family, &tables);
            if saved != expected {
                failures.push(format!(
                    "{case} [{backend}]: the kernel holds something else than {} \
                     (- golden, + {} -t {}):\n{}",
                    file.display(),
                    backend.save_bin(family),
                    tables.join(" / -t "),
                    unified_diff(
                        &expected,
                        &saved,
                        &file.display().to_string(),
                        &format!("{} ({case})", backend.save_bin(family)),
                    )
                ));
            }
        }
    }
    eprintln!(
        "kernel round trip: {} case(s) x {} back ends in {:?}",
        cases.len(),
        Backend::ALL.len(),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} round trips failed:\n\n{}",
        failures.len(),
        cases.len() * Backend::ALL.len(),
        failures.join("\n\n")
    );
}

/// The `# ipset` part of an IPVS dry run.
fn ipset_part(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            inside = h == "ipset";
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Issue #15 (4): every golden IPVS dry run's ipset part is accepted whole by `ipset restore`
/// (one refused member would leave that set and every later one unloaded) and `ipset save` gives
/// it back. `loadbalancer-source-ranges-all-addresses` holds a 0.0.0.0/0 and a ::/0 source
/// range, which hash:ip,port,net refuses as such.
#[test]
fn golden_ipvs_ipsets_survive_the_kernel_round_trip() {
    testkit::needs_root!();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .flat_map(|e| ["expected.ipvs", "expected.ipvs6"].map(|f| e.path().join(f)))
        .filter(|f| f.is_file())
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(root.join("loadbalancer-source-ranges-all-addresses"))),
        "the all-addresses source-range case is missing"
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let part = ipset_part(&std::fs::read_to_string(file).unwrap());
        assert!(part.contains("create "), "{name}: no ipset part");
        let ns = Netns::new("rt-ipset");
        let out = ns.exec_input(["ipset", "restore"], part.as_bytes());
        if !out.status.success() {
            failures.push(format!(
                "{name}: ipset restore refused it: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let saved = ns.exec_ok(["ipset", "save"]);
        let (ours, kernel) = (
            rulegen::render::ipvs::ipsets::comparable_save(&part),
            rulegen::render::ipvs::ipsets::comparable_save(&saved),
        );
        if ours != kernel {
            failures.push(format!(
                "{name}: ipset save differs:\n{}",
                unified_diff(&ours, &kernel, "ours", "kernel")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ipset parts failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// Issue #15 (7): iptables keeps 255 bytes of a comment and drops the rest without a word, so a
/// render that wrote more would not be what `iptables-save` lists. Names this long are more than
/// the API allows (no golden case can hold them), so the model is built here: each family, each
/// back end, the render must come back byte for byte.
#[test]
fn an_over_long_comment_comes_back_as_rendered() {
    testkit::needs_root!();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let mut failures = Vec::new();
    for (family, rg_family, cluster_ip, endpoint) in [
        (
            IpFamily::V4,
            rulegen::IpFamily::V4,
            "10.96.0.10",
            "10.244.1.5",
        ),
        (
            IpFamily::V6,
            rulegen::IpFamily::V6,
            "fd00:96::10",
            "fd00:244::5",
        ),
    ] {
        let mut sp = rulegen::ServicePort::cluster_ip(
            rulegen::ServicePortName::new("n".repeat(200), "s".repeat(100), "http"),
            rulegen::Protocol::Tcp,
            ip(cluster_ip),
            80,
        );
        sp.endpoints = vec![rulegen::Endpoint::ready(ip(endpoint), 8080)];
        let cfg = rulegen::RenderConfig {
            family: rg_family,
            ..rulegen::RenderConfig::default()
        };
        let text = rulegen::render(&rulegen::Model { services: vec![sp] }, &cfg)
            .unwrap()
            .to_save_text();
        assert!(text.contains(&"n".repeat(200)), "{text}");
        let tables = payload_tables(&text);
        for backend in Backend::ALL {
            let ns = Netns::new(&format!("rt-long-{backend}"));
            if let Err(e) = restore_with(&ns, backend, family, &[], &text) {
                failures.push(format!("{family:?} [{backend}]: rejected:\n{e}"));
                continue;
            }
            let saved = save_tables_with(&ns, backend, family, &tables);
            if saved != text {
                failures.push(format!(
                    "{family:?} [{backend}]: the kernel lists something else:\n{}",
                    unified_diff(&text, &saved, "render", "iptables-save")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
