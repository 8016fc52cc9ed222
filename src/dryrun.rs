//! `--dry-run`: read objects, translate them, render, and print exactly what `iptables-save`
//! would show after kube-proxy synced them. Nothing on the node is read or changed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::Cli;
use crate::objects;
use crate::settings::Settings;
use crate::translate::{self, Translation};
use crate::warning::Warning;

/// What a dry run produced: the ruleset text for stdout and the diagnostics for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunOutput {
    /// `iptables-save` text, byte for byte what goes to stdout.
    pub save_text: String,
    /// Notes and warnings from the flags, the config file, the objects and the translation.
    pub warnings: Vec<Warning>,
}

/// Reads `paths` and translates their objects for `settings`: the model, its render config and
/// every warning met on the way. A file that is not YAML is an error.
pub fn load_model<P: AsRef<Path>>(paths: &[P], settings: &Settings) -> anyhow::Result<Translation> {
    let mut warnings = Vec::new();
    let objects = objects::load_paths(paths, &mut warnings)?;
    let mut translation = translate::translate(&objects, settings);
    warnings.append(&mut translation.warnings);
    translation.warnings = warnings;
    Ok(translation)
}

/// Runs a dry run for `cli` without printing anything.
pub fn render(cli: &Cli) -> anyhow::Result<DryRunOutput> {
    if cli.objects.is_empty() {
        bail!("--dry-run needs at least one --objects PATH (a YAML/JSON file or a directory)");
    }
    let (settings, mut warnings) = Settings::from_cli(cli)?;
    let translation = load_model(&cli.objects, &settings)?;
    warnings.extend(translation.warnings);
    let ruleset = rulegen::render(&translation.model, &translation.config)
        .context("cannot render the ruleset")?;
    Ok(DryRunOutput {
        save_text: ruleset.to_save_text(),
        warnings,
    })
}

/// Runs a dry run and prints it: the ruleset on stdout, diagnostics on stderr. Exit 0 when the
/// ruleset was rendered (even with warnings), 1 on an error.
pub fn run(cli: &Cli) -> ExitCode {
    match render(cli) {
        Ok(out) => {
            print_warnings(&out.warnings);
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.save_text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                // `kube-proxy-rs --dry-run … | head` is not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_warnings(warnings: &[Warning]) {
    let mut stderr = std::io::stderr().lock();
    for w in warnings {
        // stderr going away must not stop the ruleset from being printed.
        let _ = writeln!(stderr, "{w}");
    }
}
