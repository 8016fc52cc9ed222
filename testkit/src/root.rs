//! The one root guard every kernel test starts with: [`needs_root!`](crate::needs_root).
//!
//! Tests that need root never skip silently (CI runs as root): not root, a test fails, unless
//! `KPRS_SKIP_ROOT_TESTS=1` is set, and then it says loudly that it skipped.

use std::io::Write;

/// Environment variable that turns the "not root" panic into a loud skip.
pub const SKIP_ENV: &str = "KPRS_SKIP_ROOT_TESTS";

/// Returns true when the tests may run (we are root). When not root: panics with a clear message,
/// unless `KPRS_SKIP_ROOT_TESTS=1` is set, in which case it prints a loud `SKIPPED (not root)` line
/// to stderr and returns false. Tests call it through [`needs_root!`](crate::needs_root), which
/// returns from the test on false.
#[track_caller]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let caller = std::panic::Location::caller();
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED (not root): kernel test at {caller} needs root \
             (network namespaces, iptables); {SKIP_ENV}=1 is set !!!!!!!!\n"
        );
        return false;
    }
    panic!(
        "kernel test at {caller} must run as root (it creates network namespaces and loads \
         iptables rules inside them). Run as root, or set {SKIP_ENV}=1 to skip it explicitly."
    );
}

/// Fails the calling test when not root, or (under `KPRS_SKIP_ROOT_TESTS=1`) returns from it after
/// a loud `SKIPPED` line: the first statement of every test that needs root.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::require_root() {
            return;
        }
    };
}
