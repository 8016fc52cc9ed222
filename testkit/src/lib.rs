//! The tests' kit (never published): what the root crate's and `proxier`'s test binaries share.
//!
//! Everything here runs inside network namespaces the tests create themselves: no link, route,
//! sysctl or iptables rule of the root namespace is ever touched.
//!
//! - [`root`]: the one root guard, [`needs_root!`] (fails the test when not root, or skips it
//!   loudly under `KPRS_SKIP_ROOT_TESTS=1`).
//! - [`netns`]: the [`Netns`] guard (create, exec, spawn, cleanup on drop, also on panic) and
//!   [`in_ns`].
//! - [`iptables`]: [`Backend`] (legacy / nft), `restore` and `save_tables`.
//! - [`lab`]: the [`Lab`] builder (node + bridge + pods + clients) and the [`connect`] probe.
//! - [`objects`]: Service / EndpointSlice / Node YAML and [`objects::render`] (the real binary).
//! - [`cli`]: the real binary run in the repository root ([`cli::run`]).
//! - [`vm`]: a qemu VM with an IPVS kernel that runs one script (this kernel has no IPVS), one
//!   VM at a time on the machine, killed when its console stays silent too long.
//! - [`apiserver`]: an in-process Kubernetes API server.
//! - [`tracelab`]: the lab that checks `trace`'s predictions against the kernel.
//! - [`golden`]: reading golden cases.
//! - [`sock`]: entering a namespace from a thread, and a bounded TCP connect from a source.

pub mod agent;
pub mod apiserver;
pub mod cli;
pub mod golden;
pub mod iptables;
pub mod lab;
pub mod netns;
pub mod objects;
pub mod root;
pub mod sock;
pub mod tracelab;
pub mod vm;

pub use iptables::{Backend, payload_tables, restore, restore_with, save_tables, save_tables_with};
pub use lab::{ConnErr, Lab, LabBuilder, Reply, Tally, connect, connect_from};
pub use netns::{Netns, in_ns};
pub use root::{SKIP_ENV, require_root};

/// A unified diff of `expected` vs `actual`, with the given header names.
pub fn unified_diff(
    expected: &str,
    actual: &str,
    expected_name: &str,
    actual_name: &str,
) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header(expected_name, actual_name)
        .to_string()
}

/// A private temp dir (`$TMPDIR/kprs-<pid>-t<n>-<tag>`), removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates a fresh, empty one (`tag`: what it is for, part of its name).
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "{}{}-t{n}-{tag}",
            netns::PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
