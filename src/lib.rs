//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy (iptables mode).
//!
//! This library holds the binary's steps so tests, benches and property tests can call them:
//! objects ([`objects`]) → model ([`translate`]) → rules (the `rulegen` crate), driven by the
//! command line ([`cli`], [`settings`]) and run by [`dryrun`].

#![warn(missing_docs)]

pub mod addr;
pub mod agent;
pub mod cli;
pub mod dryrun;
pub mod explain;
pub mod health;
pub mod metrics;
pub mod nodesetup;
pub mod objects;
pub mod settings;
pub mod trace;
pub mod translate;
pub mod warning;
pub mod yaml;

use std::process::ExitCode;

pub use cli::Cli;
pub use dryrun::{DryRunOutput, load_model};
pub use settings::Settings;
pub use translate::{Translation, translate};
pub use warning::Warning;

/// Runs the program for a parsed command line (the dry run, or else the node agent) and returns
/// its exit status.
pub fn run(cli: &Cli) -> ExitCode {
    if let Some(cli::Command::Explain(args)) = &cli.command {
        return explain::run(&cli.flags, args);
    }
    if let Some(cli::Command::Trace(args)) = &cli.command {
        return trace::run(&cli.flags, args);
    }
    if cli.dry_run {
        return dryrun::run(cli);
    }
    if let Some(path) = &cli.write_config_to {
        return settings::write::write_effective(&cli.flags, path);
    }
    if cli.init_only {
        return agent::run_init_only(cli);
    }
    if cli.cleanup {
        return agent::cleanup::run_cleanup(cli);
    }
    agent::run(cli)
}
