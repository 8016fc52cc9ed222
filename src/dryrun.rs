//! `--dry-run`: read objects, translate them, render, and print exactly what `iptables-save`
//! would show after kube-proxy synced them. Nothing on the node is read or changed.
//!
//! In IPVS mode the node holds three things, so the output has three parts, each in its tool's
//! save format under a header line: `# ipvsadm` (`ipvsadm -Sn`), `# ipset` (`ipset save`, minus
//! the random `initval`) and `# iptables` (`iptables-save`). `--dry-run-part` prints one part
//! alone, loadable as it is by `ipvsadm -R`, `ipset restore` or `iptables-restore`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::Cli;
use crate::objects;
use crate::settings::{DryRunPart, ProxyMode, Settings};
use crate::translate::{self, Translation};
use crate::warning::Warning;

/// What a dry run produced: the ruleset text for stdout and the diagnostics for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunOutput {
    /// What goes to stdout: `iptables-save` text, byte for byte (IPVS mode: its parts).
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
    if settings.mode == ProxyMode::Iptables
        && cli.dry_run_part.is_some_and(|p| p != DryRunPart::Iptables)
    {
        bail!("--dry-run-part ipvsadm and ipset need --proxy-mode ipvs");
    }
    let translation = load_model(&cli.objects, &settings)?;
    warnings.extend(translation.warnings);
    let save_text = match settings.mode {
        ProxyMode::Iptables => rulegen::render(&translation.model, &translation.config)
            .context("cannot render the ruleset")?
            .to_save_text(),
        ProxyMode::Ipvs => {
            let ipvs = rulegen::render::ipvs::render(
                &translation.model,
                &translation.config,
                &ipvs_config(&settings),
            )
            .context("cannot render the IPVS dataplane")?;
            ipvs_text(&ipvs, cli.dry_run_part)
        }
    };
    Ok(DryRunOutput {
        save_text,
        warnings,
    })
}

/// The IPVS-mode settings of `settings`, as the renderer takes them.
pub fn ipvs_config(settings: &Settings) -> rulegen::render::ipvs::IpvsConfig {
    rulegen::render::ipvs::IpvsConfig {
        scheduler: settings.ipvs_scheduler.clone(),
    }
}

/// An IPVS render as the dry run prints it: all three parts under their headers, or one alone.
fn ipvs_text(ipvs: &rulegen::render::ipvs::IpvsRender, part: Option<DryRunPart>) -> String {
    let mut out = String::new();
    let parts = match part {
        Some(p) => vec![p],
        None => vec![DryRunPart::Ipvsadm, DryRunPart::Ipset, DryRunPart::Iptables],
    };
    for p in parts {
        if part.is_none() {
            out.push_str(match p {
                DryRunPart::Ipvsadm => "# ipvsadm\n",
                DryRunPart::Ipset => "# ipset\n",
                DryRunPart::Iptables => "# iptables\n",
            });
        }
        match p {
            DryRunPart::Ipvsadm => out.push_str(&ipvs.table.to_ipvsadm_text()),
            DryRunPart::Ipset => out.push_str(&ipvs.sets.to_save_text()),
            DryRunPart::Iptables => out.push_str(&ipvs.ruleset.to_save_text()),
        }
    }
    out
}

/// Runs a dry run and prints it: the ruleset on stdout, diagnostics on stderr. Exit 0 when the
/// ruleset was rendered (even with warnings), 1 on an error.
pub fn run(cli: &Cli) -> ExitCode {
    print_output(render(cli).map(|out| (out.save_text, out.warnings)))
}

/// Prints what a command produced: the text on stdout, its warnings (or the error) on stderr;
/// exit 0 when it produced its text, 1 on an error.
pub fn print_output(result: anyhow::Result<(String, Vec<Warning>)>) -> ExitCode {
    match result {
        Ok((text, warnings)) => {
            print_warnings(&warnings);
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
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
