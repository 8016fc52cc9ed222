//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy (iptables and IPVS modes).
//!
//! The binary's steps, grouped by role so tests, benches and property tests can call them:
//! where objects come from ([`sources`]) → the model ([`translate`]) → plan and render (the
//! `rulegen` crate) → apply (the `proxier` crate); the command line and config file ([`cli`],
//! [`settings`]); the commands that drive those steps ([`commands`]); what they print
//! ([`reports`]); and what the agent shows of itself ([`telemetry`]).

pub mod addr;
pub mod cli;
pub mod commands;
pub mod objects;
pub mod reports;
pub mod settings;
pub mod sources;
pub mod telemetry;
pub mod translate;
pub mod warning;
pub mod yaml;

use std::process::ExitCode;

pub use cli::Cli;
pub use commands::dryrun::{DryRunOutput, load_model};
use commands::{agent, cleanup, dryrun, explain, trace};
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
        return cleanup::run_cleanup(cli);
    }
    agent::run(cli)
}
