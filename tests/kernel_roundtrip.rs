//! Every golden ruleset must be exactly what the kernel holds after loading it: for each
//! `golden/<case>/expected.iptables` and each back end (legacy, nft), restore it into a fresh
//! namespace, save it back table by table (in the file's table order, `#` lines dropped) and
//! require byte equality. So `--dry-run` output, which the golden files pin, is canonical
//! `iptables-save` text that the kernel accepts.

mod support;

use std::path::PathBuf;
use std::time::Instant;

use support::{Backend, Netns, payload_tables, restore, save_tables, unified_diff};

fn golden_cases() -> Vec<(String, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut cases = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let file = e.path().join("expected.iptables");
            if file.is_file() {
                cases.push((e.file_name().to_string_lossy().into_owned(), file));
            }
        }
    }
    cases.sort();
    cases
}

#[test]
fn golden_rulesets_survive_the_kernel_round_trip() {
    if !support::require_root() {
        return;
    }
    let cases = golden_cases();
    assert!(
        !cases.is_empty(),
        "no golden/<case>/expected.iptables found under {}/golden: nothing to round-trip",
        env!("CARGO_MANIFEST_DIR")
    );

    let start = Instant::now();
    let mut failures = Vec::new();
    for (case, file) in &cases {
        let expected = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let tables = payload_tables(&expected);
        if tables.is_empty() {
            failures.push(format!("{case}: {} has no `*table` line", file.display()));
            continue;
        }
        for backend in Backend::ALL {
            let ns = Netns::new(&format!("rt-{backend}"));
            if let Err(e) = restore(&ns, backend, &expected) {
                failures.push(format!(
                    "{case} [{backend}]: iptables-{backend}-restore rejected {}:\n{e}",
                    file.display()
                ));
                continue;
            }
            let saved = save_tables(&ns, backend, &tables);
            if saved != expected {
                failures.push(format!(
                    "{case} [{backend}]: the kernel holds something else than {} \
                     (- golden, + iptables-{backend}-save -t {}):\n{}",
                    file.display(),
                    tables.join(" / -t "),
                    unified_diff(
                        &expected,
                        &saved,
                        &format!("golden/{case}/expected.iptables"),
                        &format!("iptables-{backend}-save ({case})"),
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
