//! The `kube-proxy-rs` binary: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kube_proxy_rs::run(&kube_proxy_rs::Cli::parse())
}
