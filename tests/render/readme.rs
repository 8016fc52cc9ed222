//! The README's `explain` and `trace` examples are real: each ```sh block that runs
//! `cargo run -- explain …` or `cargo run -- trace …` is followed by a block holding exactly
//! what the binary prints for it.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (command words after `cargo run --`, the output block that follows) for every example.
fn examples(readme: &str) -> Vec<(Vec<String>, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let cmd = lines[i].strip_prefix("cargo run -- ");
        let Some(cmd) = cmd.filter(|c| c.starts_with("explain ") || c.starts_with("trace ")) else {
            i += 1;
            continue;
        };
        // The command's block closes, then the output block opens.
        let open = (i + 1..lines.len())
            .filter(|&j| lines[j] == "```")
            .nth(1)
            .expect("an output block after the command");
        let close = (open + 1..lines.len())
            .find(|&j| lines[j] == "```")
            .expect("the output block closes");
        let mut text = lines[open + 1..close].join("\n");
        text.push('\n');
        out.push((cmd.split_whitespace().map(String::from).collect(), text));
        i = close + 1;
    }
    out
}

#[test]
fn readme_examples_print_what_the_readme_shows() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let examples = examples(&readme);
    let kinds: Vec<&str> = examples.iter().map(|(c, _)| c[0].as_str()).collect();
    assert!(
        kinds.contains(&"explain") && kinds.contains(&"trace"),
        "{kinds:?}"
    );
    for (args, shown) in examples {
        let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rs"))
            .current_dir(root())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed,
            shown,
            "README example `{}` is stale",
            args.join(" ")
        );
    }
}
