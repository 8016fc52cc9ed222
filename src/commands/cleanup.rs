//! `--cleanup`: remove what kube-proxy (either mode; upstream's or ours) put on this node, then
//! exit. As upstream's `cleanupAndExit`, each mode's leftovers ([`proxier::cleanup`]) are removed
//! for both families whatever the mode: hooks and `KUBE-*` chains in `mangle`, `filter` and
//! `nat`, IPVS mode's virtual servers, `kube-ipvs0` and ipsets. Each step is attempted even if
//! one before failed; the exit status says whether everything went.

use std::process::ExitCode;
use std::time::Duration;

use proxier::cleanup::{self, CleanupReport};
use proxier::{Iptables, Launcher};
use rulegen::IpFamily;

use crate::Settings;

/// How long one tool may run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The families cleaned, whatever `--ip-family` says: a node may have run either.
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// Runs the clean-up for `cli`; exit 0 when everything was removed.
pub fn run_cleanup(cli: &crate::Cli) -> ExitCode {
    let Some(settings) = super::agent::settings_and_logging(cli) else {
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failures = runtime.block_on(cleanup(&settings)).failures;
    let failed = failures.len();
    for e in failures {
        // Each failure with its causes, `step: cause: cause`.
        tracing::error!("{:#}", anyhow::Error::from(e));
    }
    if failed == 0 {
        tracing::info!("cleanup done");
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {failed} cleanup step(s) failed (see above)");
        ExitCode::FAILURE
    }
}

/// Every mode's leftovers, in an order where nothing still refers to what is removed: rules
/// (both modes' chains, per family) before the sets they match on.
async fn cleanup(settings: &Settings) -> CleanupReport {
    let launcher = Launcher::host();
    let mut report = CleanupReport::default();
    for family in FAMILIES {
        let detection = proxier::detect_backend(&launcher, family).await;
        let ipt = Iptables::new(detection.backend, family).with_timeout(TIMEOUT);
        report.merge(cleanup::iptables_leftovers(&ipt).await);
    }
    let exclude = &settings.ipvs_exclude_cidrs;
    report.merge(cleanup::ipvs_leftovers(&launcher, &FAMILIES, exclude, TIMEOUT).await);
    report
}
