//! `--cleanup`: remove what kube-proxy (either mode; upstream's or ours) put on this node —
//! hooks and `KUBE-*` chains in both families' `mangle`, `filter` and `nat`, IPVS mode's
//! virtual servers, `kube-ipvs0` and ipsets — then exit. Each step is attempted even if one
//! before failed; the exit status says whether everything went.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use proxier::interface::{DummyInterface, IPVS_INTERFACE};
use proxier::ipvs::{IpvsSocket, IpvsSyncConfig, IpvsSyncer};
use proxier::{Iptables, Launcher};
use rulegen::IpFamily;
use rulegen::render::ipvs::{IpvsTable, SetId};

use crate::Settings;

/// How long one tool may run.
const TIMEOUT: Duration = Duration::from_secs(120);

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
    let failures = runtime.block_on(cleanup(&settings));
    for e in &failures {
        tracing::error!("{e:#}");
    }
    if failures.is_empty() {
        tracing::info!("cleanup done");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} cleanup step(s) failed (see above)",
            failures.len()
        );
        ExitCode::FAILURE
    }
}

/// Every step, in an order where nothing still refers to what is removed: rules before the
/// sets they match on.
async fn cleanup(settings: &Settings) -> Vec<anyhow::Error> {
    let mut failures = Vec::new();
    let launcher = Launcher::host();
    for family in [IpFamily::V4, IpFamily::V6] {
        let detection = proxier::detect_backend(&launcher, family).await;
        let ipt = Iptables::new(detection.backend, family).with_timeout(TIMEOUT);
        for table in ["mangle", "filter", "nat"] {
            let saved = match ipt.read_table_for_cleanup(table).await {
                Ok(s) => s,
                // A table the kernel does not have holds nothing of ours.
                Err(e) => {
                    tracing::debug!(table, ?family, "not read: {e}");
                    continue;
                }
            };
            if let Some(payload) = rulegen::sync::cleanup::cleanup_payload(&saved) {
                match ipt.restore(&payload).await {
                    Ok(()) => tracing::info!(
                        table,
                        ?family,
                        backend = detection.backend.name(),
                        "removed kube-proxy's chains and hooks"
                    ),
                    Err(e) => failures.push(anyhow!(e).context(format!("{family:?} {table}"))),
                }
            }
        }
    }
    match tokio::task::spawn_blocking({
        let exclude = settings.ipvs_exclude_cidrs.clone();
        move || cleanup_ipvs(exclude)
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(anyhow!("the IPVS cleanup task failed: {e}")),
    }
    if let Err(e) = cleanup_ipsets(&launcher).await {
        failures.push(e);
    }
    failures
}

/// Deletes the virtual servers of both families (those in `--ipvs-exclude-cidrs` stay: they are
/// someone else's; upstream flushes the whole table) and `kube-ipvs0`.
fn cleanup_ipvs(exclude: Vec<ipnet::IpNet>) -> anyhow::Result<()> {
    match IpvsSocket::open() {
        Err(e) => tracing::info!("no IPVS to clean up ({e})"),
        Ok(mut socket) => {
            for family in [IpFamily::V4, IpFamily::V6] {
                let config = IpvsSyncConfig {
                    family,
                    exclude_cidrs: exclude.clone(),
                    grace_timeout: Duration::ZERO,
                };
                // An empty desired table: the syncer deletes every service of the family it may.
                let mut syncer = IpvsSyncer::new(socket, config);
                let report = syncer
                    .sync(&IpvsTable::default(), std::time::Instant::now())
                    .context("cannot delete the IPVS virtual servers")?;
                tracing::info!(
                    ?family,
                    deleted = report.services_deleted,
                    "removed IPVS virtual servers"
                );
                socket = syncer.into_handle();
            }
        }
    }
    if DummyInterface::new(IPVS_INTERFACE)
        .delete()
        .with_context(|| format!("cannot delete {IPVS_INTERFACE}"))?
    {
        tracing::info!("deleted {IPVS_INTERFACE}");
    }
    Ok(())
}

/// Destroys IPVS mode's sets (both families' names) that exist.
async fn cleanup_ipsets(launcher: &Launcher) -> anyhow::Result<()> {
    let listed = match launcher.run("ipset", &["list", "-n"], None, TIMEOUT).await {
        Ok(l) => l,
        Err(e) => {
            tracing::info!("no ipsets to clean up ({e})");
            return Ok(());
        }
    };
    let ours: Vec<String> = SetId::ALL
        .iter()
        .flat_map(|id| [id.name(IpFamily::V4), id.name(IpFamily::V6)])
        .collect();
    let script: String = listed
        .lines()
        .map(str::trim)
        .filter(|n| {
            ours.iter().any(|o| o == n)
                || n.starts_with("KUBE-TMP-")
                || n.starts_with("KUBE-6-TMP-")
        })
        .map(|n| format!("destroy {n}\n"))
        .collect();
    if script.is_empty() {
        return Ok(());
    }
    launcher
        .run("ipset", &["restore"], Some(script.as_bytes()), TIMEOUT)
        .await
        .context("cannot destroy IPVS mode's ipsets")?;
    tracing::info!(
        sets = script.lines().count(),
        "destroyed IPVS mode's ipsets"
    );
    Ok(())
}
