//! Running the real binary's subcommands from the repository root, as a user would.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root: golden paths in arguments are relative to it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository root")
        .to_path_buf()
}

/// The `kube-proxy-rs` binary cargo built for the running test binary.
///
/// The kit is its own crate, so `env!("CARGO_BIN_EXE_kube-proxy-rs")` (set only while the root
/// crate's tests compile) is not available here: cargo puts binaries one level above the test
/// binaries (`target/<profile>/deps/`), and sets the variable at run time too on newer releases.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CARGO_BIN_EXE_kube-proxy-rs") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("kube-proxy-rs"))
            .expect("the test binary is in target/<profile>/deps");
        assert!(
            bin.exists(),
            "{} does not exist: the kit runs the root crate's binary, which cargo builds for \
             the root crate's tests",
            bin.display()
        );
        bin
    })
}

/// What one run of the binary printed and how it exited.
pub struct Run {
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
}

impl Run {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `kube-proxy-rs ARGS…` in the repository root.
pub fn run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    let out = Command::new(binary())
        .current_dir(root())
        .args(args)
        .output()
        .expect("binary runs");
    Run {
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        code: out.status.code(),
    }
}

/// Runs `kube-proxy-rs ARGS…` in the repository root and returns its stdout; panics with its
/// stderr unless it exits 0.
pub fn stdout_of<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = run(args);
    assert!(out.success(), "{}", out.stderr);
    out.stdout
}
