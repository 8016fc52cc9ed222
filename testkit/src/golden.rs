//! Reading golden cases (`golden/<case>/`): where a case's objects are and its `flags` file.

use std::fs;
use std::path::{Path, PathBuf};

/// The case's objects: its `objects/` directory, or else `objects.yaml`.
pub fn objects_path(case: &Path) -> PathBuf {
    let dir = case.join("objects");
    if dir.is_dir() {
        dir
    } else {
        case.join("objects.yaml")
    }
}

/// The case's `flags` file as arguments: one flag per line (`--flag value` or `--flag=value`),
/// `#` starts a comment.
pub fn flags(case: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(case.join("flags")) else {
        return Vec::new();
    };
    let mut args = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once(char::is_whitespace) {
            Some((flag, value)) => {
                args.push(flag.to_string());
                args.push(value.trim().to_string());
            }
            None => args.push(line.to_string()),
        }
    }
    args
}
