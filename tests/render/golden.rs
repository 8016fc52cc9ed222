//! Golden files: every `golden/<case>/` holds Kubernetes objects (`objects.yaml`, or an
//! `objects/` directory), an optional `flags` file (one CLI flag per line, `--flag value` or
//! `--flag=value`; `#` starts a comment) and the expected dry-run output `expected.iptables`.
//! When the run warns, its stderr is pinned in `expected.stderr`; without that file stderr must
//! be empty. A case that also has `expected.ip6tables` is rendered a second time with
//! `--ip-family ipv6` and compared with it (its warnings in `expected.ip6tables.stderr`).
//!
//! IPVS mode: each case is also rendered with `--proxy-mode ipvs` into `expected.ipvs` (and
//! `expected.ipvs6` next to `expected.ip6tables`), warnings in `expected.ipvs.stderr`; a case
//! whose flags choose the mode themselves (`--proxy-mode`, `--config`) is rendered once, into
//! `expected.ipvs` when it chose IPVS.
//!
//! `UPDATE_GOLDEN=1 cargo test --test render golden::` rewrites the expected files; review the diff.

use testkit::cli::{Run, root};
use testkit::golden::{flags, objects_path};

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

/// Cases are named relative to the repository root (the runs' working directory), so the
/// `file:line` in pinned warnings does not depend on where the repository is checked out.
fn golden_root() -> PathBuf {
    PathBuf::from("golden")
}

/// Every case directory, sorted.
fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root().join(golden_root()))
        .expect("golden/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| golden_root().join(p.file_name().unwrap()))
        .collect();
    out.sort();
    out
}

fn dry_run(objects: &Path, flags: &[String]) -> Run {
    let head = [
        OsStr::new("--dry-run"),
        OsStr::new("--objects"),
        objects.as_os_str(),
    ];
    testkit::cli::run(head.into_iter().chain(flags.iter().map(OsStr::new)))
}

/// Compares `actual` with the file (or rewrites it under UPDATE_GOLDEN); returns a failure text.
fn check_file(path: &Path, actual: &str, update: bool) -> Option<String> {
    let expected = fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return None;
    }
    if update {
        if actual.is_empty() {
            let _ = fs::remove_file(path);
        } else {
            fs::write(path, actual).unwrap();
        }
        eprintln!("updated {}", path.display());
        return None;
    }
    let name = path.display().to_string();
    Some(format!(
        "{name} differs (UPDATE_GOLDEN=1 rewrites it):\n{}",
        testkit::unified_diff(&expected, actual, &name, "actual")
    ))
}

#[test]
fn golden_cases_match() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let cases = cases();
    assert!(
        cases.len() >= 13,
        "expected at least 13 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let run = dry_run(&objects_path(case), &flags(case));
        if run.code != Some(0) {
            failures.push(format!("{name}: exit {:?}\n{}", run.code, run.stderr));
            continue;
        }
        if run.stdout.is_empty() {
            failures.push(format!("{name}: empty ruleset"));
            continue;
        }
        let f = flags(case);
        let chooses_mode = f
            .iter()
            .any(|a| a.starts_with("--proxy-mode") || a.starts_with("--config"));
        let ipvs_only = f
            .windows(2)
            .any(|w| w[0] == "--proxy-mode" && w[1] == "ipvs")
            || f.iter().any(|a| a == "--proxy-mode=ipvs");
        let (primary, primary_err) = if ipvs_only {
            ("expected.ipvs", "expected.ipvs.stderr")
        } else {
            ("expected.iptables", "expected.stderr")
        };
        failures.extend(check_file(&case.join(primary), &run.stdout, update));
        failures.extend(check_file(&case.join(primary_err), &run.stderr, update));
        let mut variants: Vec<(Vec<String>, &str, &str)> = Vec::new();
        let v6 = case.join("expected.ip6tables").exists();
        let ipv6 = || vec!["--ip-family".to_string(), "ipv6".to_string()];
        let ipvs = || vec!["--proxy-mode".to_string(), "ipvs".to_string()];
        if v6 {
            variants.push((ipv6(), "expected.ip6tables", "expected.ip6tables.stderr"));
        }
        if !chooses_mode {
            variants.push((ipvs(), "expected.ipvs", "expected.ipvs.stderr"));
            if v6 {
                variants.push((
                    [ipvs(), ipv6()].concat(),
                    "expected.ipvs6",
                    "expected.ipvs6.stderr",
                ));
            }
        }
        for (extra, out_file, err_file) in variants {
            let run = dry_run(&objects_path(case), &[f.clone(), extra.clone()].concat());
            if run.code != Some(0) {
                failures.push(format!(
                    "{name} ({}): exit {:?}\n{}",
                    extra.join(" "),
                    run.code,
                    run.stderr
                ));
                continue;
            }
            failures.extend(check_file(&case.join(out_file), &run.stdout, update));
            failures.extend(check_file(&case.join(err_file), &run.stderr, update));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same objects in reverse document order render byte-identically.
#[test]
fn golden_output_does_not_depend_on_input_order() {
    let tmp = testkit::TempDir::new("golden-order");
    let mut checked = 0;
    for case in cases() {
        let objects = objects_path(&case);
        if objects.is_dir() {
            continue;
        }
        let text = fs::read_to_string(&objects).unwrap();
        let mut docs: Vec<&str> = text.split("\n---\n").collect();
        if docs.len() < 3 {
            continue;
        }
        docs.reverse();
        let reversed = tmp.path().join(format!(
            "{}.yaml",
            case.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&reversed, docs.join("\n---\n") + "\n").unwrap();
        let f = flags(&case);
        let a = dry_run(&objects, &f);
        let b = dry_run(&reversed, &f);
        assert_eq!(a.code, Some(0), "{}: {}", case.display(), a.stderr);
        assert!(
            a.stdout == b.stdout,
            "{}: output changes with document order:\n{}",
            case.display(),
            testkit::unified_diff(&a.stdout, &b.stdout, "in order", "reversed")
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} cases had enough documents to reorder"
    );
}
