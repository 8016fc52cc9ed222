//! The node agent: keeps a model of the cluster (from the API server or from files), renders it
//! and applies it to this node's kernel, paced like upstream's bounded-frequency runner.

pub mod conntrack;
pub mod logging;
pub mod run;

pub use run::run;

/// Resolves the settings and starts logging as they say (`-v`, `--logging-format`, or the
/// config file's `logging`); the warnings met are logged. `None` after printing the error
/// when the command line or the config file is unusable.
pub fn settings_and_logging(cli: &crate::Cli) -> Option<crate::Settings> {
    let (settings, warnings) = match crate::Settings::from_cli(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return None;
        }
    };
    logging::init_with(settings.verbosity, settings.log_format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Some(settings)
}

/// `--init-only`: set up the node (sysctls) as the agent would at start, then exit; non-zero
/// when a setting could not be applied (the init container's whole job).
pub fn run_init_only(cli: &crate::Cli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some(settings) = settings_and_logging(cli) else {
        return ExitCode::FAILURE;
    };
    let failed = crate::commands::nodesetup::set_up_and_log(&settings, false);
    if failed.is_empty() {
        tracing::info!("node set up (--init-only); exiting");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} node setting(s) could not be applied (see above)",
            failed.len()
        );
        ExitCode::FAILURE
    }
}
