//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy (iptables mode).
//!
//! This library holds the binary's steps so tests, benches and property tests can call them:
//! objects ([`objects`]) → model ([`translate`]) → rules (the `rulegen` crate), driven by the
//! command line ([`cli`], [`settings`], [`config`]) and run by [`dryrun`].

#![warn(missing_docs)]

pub mod addr;
pub mod agent;
pub mod cli;
pub mod config;
pub mod dryrun;
pub mod objects;
pub mod settings;
pub mod translate;
pub mod warning;
pub mod yaml;

use std::process::ExitCode;

pub use cli::Cli;
pub use dryrun::{DryRunOutput, load_model};
pub use settings::Settings;
pub use translate::{Translation, translate};
pub use warning::Warning;

/// Exit status when asked for something not implemented yet (as for a usage error).
pub const EXIT_NOT_IMPLEMENTED: u8 = 2;

/// Runs the program for a parsed command line and returns its exit status.
pub fn run(cli: &Cli) -> ExitCode {
    if cli.dry_run {
        return dryrun::run(cli);
    }
    agent::run(cli)
}
