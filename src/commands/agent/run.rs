//! The agent's main loop: wait for a complete view of the cluster, then render and apply on
//! every change (at most once per min sync period, at least once per sync period), keeping the
//! node's rules in place through every failure and at shutdown.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use proxier::ipvs::{IpvsSocket, IpvsSyncConfig};
use proxier::{
    Dataplane, IptablesApplier, IptablesDataplane, IpvsDataplane, Launcher, RESTORE_TIMEOUT,
    Runner, SyncError, SyncReport,
};
use tokio::sync::{Mutex, Notify, watch};

use super::conntrack::{ConntrackPlan, ConntrackReconciler};
use crate::cli::Cli;
use crate::settings::{ProxyMode, Settings};
use crate::sources::api::{self, ApiStores};
use crate::sources::files::{self, FileSnapshot};
use crate::telemetry::metrics::changes;
use crate::telemetry::sync::SyncTelemetry;
use crate::translate;

/// How often `--objects` files are checked for changes.
const FILE_POLL: Duration = Duration::from_millis(250);

/// Where the agent's objects come from.
enum Source {
    /// `--objects` files, re-read when they change.
    Files(watch::Receiver<Option<FileSnapshot>>),
    /// The API server's watchers.
    Api(ApiStores),
}

impl Source {
    /// Translates the current objects; returns the translation and the loader's warnings.
    fn translate(&self, settings: &Settings) -> (translate::Translation, Vec<String>) {
        match self {
            Source::Files(rx) => {
                let snap = rx.borrow().clone().unwrap_or_default();
                let warnings = snap.warnings.iter().map(ToString::to_string).collect();
                (translate::translate(&snap.objects, settings), warnings)
            }
            Source::Api(stores) => {
                let (objects, services, slices) = stores.snapshot();
                (
                    translate::translate_digested(&objects, &services, &slices, settings),
                    Vec::new(),
                )
            }
        }
    }
}

/// What a sync needs between runs.
struct SyncState {
    settings: Settings,
    source: Source,
    // The mode's dataplane: renders, decides full or partial, applies.
    dataplane: Box<dyn Dataplane>,
    // Warnings are logged when they change, not on every sync.
    last_warnings: Vec<String>,
    // Metrics, health and the Services' health-check node ports.
    telemetry: SyncTelemetry,
    // Stale UDP conntrack flows, deleted after each successful sync that changed UDP Services.
    conntrack: ConntrackReconciler,
    conntrack_plan: Option<ConntrackPlan>,
}

impl SyncState {
    async fn sync(&mut self) -> anyhow::Result<()> {
        // Before (what the watchers freed: the initial list's JSON and objects) and after.
        release_free_memory();
        self.telemetry.begin();
        let started = Instant::now();
        let result = self.sync_once().await;
        self.telemetry
            .finish(result.is_ok(), started.elapsed())
            .await;
        if let Some(plan) = self.conntrack_plan.take().filter(|_| result.is_ok()) {
            // A failed cleanup does not fail the sync: the rules are in place, and the next
            // sync plans the same cleanup again.
            let at = Instant::now();
            match self.conntrack.run(plan).await {
                Ok(r) => self
                    .telemetry
                    .metrics()
                    .conntrack_reconciled(at.elapsed(), r.flows_deleted as u64),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        release_free_memory();
        result
    }

    /// Translates the current objects, logging the warnings when they changed.
    fn translate(&mut self) -> translate::Translation {
        let (translation, mut warnings) = self.source.translate(&self.settings);
        self.telemetry.translated(&translation);
        self.conntrack_plan = self.conntrack.plan(&translation.model, &translation.config);
        warnings.extend(translation.warnings.iter().map(ToString::to_string));
        if warnings != self.last_warnings {
            for w in &warnings {
                tracing::warn!("{w}");
            }
            self.last_warnings = warnings;
        }
        translation
    }

    /// Translates the current objects and hands the model to the dataplane.
    async fn sync_once(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let translation = self.translate();
        let service_ports = translation.model.services.len();
        let translated = started.elapsed();
        let result = self
            .dataplane
            .sync(&translation.model, &translation.config, &mut self.telemetry)
            .await;
        drop(translation);
        match result {
            Ok(report) => {
                log_synced(&report, service_ports, translated, started);
                Ok(())
            }
            Err(e) => {
                match &e {
                    SyncError::Apply(a) => {
                        self.telemetry.apply_failed(a);
                        if let Some(line) = a.failed_line() {
                            tracing::error!(
                                line = line.number,
                                chain = line.chain.as_deref().unwrap_or("-"),
                                service = line.comment.as_deref().unwrap_or("-"),
                                text = %line.text,
                                "iptables-restore rejected a line; the previous rules stay in place\n{}",
                                line.context
                            );
                        }
                    }
                    e if e.ipvs_restore_failed() => self.telemetry.ipvs_restore_failed(),
                    _ => {}
                }
                Err(e.into())
            }
        }
    }
}

/// Logs a successful sync: "rules synced", with the mode's fields.
fn log_synced(report: &SyncReport, service_ports: usize, translated: Duration, started: Instant) {
    let total_ms = started.elapsed().as_millis() as u64;
    if let Some(s) = &report.ipvs {
        let n = &s.netlink;
        tracing::info!(
            service_ports,
            kind = "ipvs",
            virtual_servers = s.virtual_servers,
            real_servers = s.real_servers,
            services_added = n.services_added,
            services_changed = n.services_changed,
            services_deleted = n.services_deleted,
            dests_added = n.dests_added,
            dests_changed = n.dests_changed,
            dests_deleted = n.dests_deleted,
            dests_draining = n.draining,
            netlink_messages = n.messages_sent,
            dump_ms = n.dump_duration.as_millis() as u64,
            netlink_ms = n.apply_duration.as_millis() as u64,
            addresses_bound = s.bound,
            addresses_unbound = s.unbound,
            sets_written = s.sets_written,
            set_entries = s.set_entries,
            ipset_ms = s.ipset.as_millis() as u64,
            restore_ms = s.iptables.as_millis() as u64,
            render_ms = report.render.as_millis() as u64,
            total_ms,
            "rules synced"
        );
        return;
    }
    let fallback = report.fallback().map(ToString::to_string);
    tracing::info!(
        service_ports,
        kind = report.kind.as_str(),
        fallback = fallback.as_deref().unwrap_or("-"),
        payload_bytes = report.payload_bytes,
        chains_written = report.chains_written,
        chains_deleted = report.stale_chains_deleted,
        hooks_inserted = report.hooks_inserted,
        render_ms = (translated + report.render).as_millis() as u64,
        save_ms = report.save.as_millis() as u64,
        restore_ms = report.restore.as_millis() as u64,
        total_ms,
        "rules synced"
    );
}

/// Runs the node agent until SIGTERM or SIGINT; returns its exit status.
pub fn run(cli: &Cli) -> ExitCode {
    // The logging settings may come from --config: resolve them first.
    let Some(settings) = super::settings_and_logging(cli) else {
        return ExitCode::FAILURE;
    };
    tune_allocator();
    // Before any file is opened, and before the HTTP servers size their connection slots on it.
    match crate::telemetry::fdlimit::raise_open_file_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(from = before, to = after, "raised the open-file limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the agent's resident memory close to what it uses. glibc gives each thread that
/// allocates its own arena, and raises its mmap threshold after every large free, so the
/// render buffers of one sync were kept (and fragmented) in per-thread heaps: at 10,000
/// Services that was a third of the agent's peak RSS. One arena and a fixed 1 MiB threshold
/// (large buffers always mmapped, returned when freed) keep it flat.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Hands the pages a sync freed (its model, its render, its payload) back to the kernel, so the
/// resident size between syncs is what the agent keeps, not what its last sync used.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on SIGTERM, which also leaves the rules.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; the rules stay in place"),
        _ = int.recv() => tracing::info!("SIGINT: stopping; the rules stay in place"),
    }
}

/// The objects of the files' current snapshot.
fn objects_of(rx: &watch::Receiver<Option<FileSnapshot>>) -> crate::objects::Objects {
    rx.borrow()
        .as_ref()
        .map(|s| s.objects.clone())
        .unwrap_or_default()
}

async fn run_async(cli: &Cli, settings: Settings) -> anyhow::Result<()> {
    let (min_sync, sync) = (settings.min_sync_period, settings.sync_period);
    // IPVS mode needs the kernel's IPVS (upstream refuses to start IPVS mode without it):
    // checked before anything else is started.
    let ipvs = match settings.mode {
        ProxyMode::Ipvs => Some(IpvsSocket::open().map_err(|e| {
            anyhow!("--proxy-mode ipvs: {e} (load the ip_vs module, or use --proxy-mode iptables)")
        })?),
        ProxyMode::Iptables => None,
    };
    // Node set-up as upstream does at start; a setting that cannot be written (an unprivileged
    // container whose init container set it) is logged, not fatal.
    // IPVS was opened just above when the mode needs it: no second probe. (Whether
    // nf_conntrack_tcp_be_liberal took is read by the dataplane on every sync.)
    crate::commands::nodesetup::set_up_and_log(&settings, ipvs.is_some());
    // The health and metrics servers answer from the start, as upstream's do.
    let (telemetry, health) = SyncTelemetry::start(&settings, sync).await;
    let queue = telemetry.queue();
    let runner = Runner::new(min_sync, sync);
    let trigger = runner.trigger();
    let source = if !cli.objects.is_empty() {
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(files::watch_files(cli.objects.clone(), FILE_POLL, tx));
        tracing::info!(paths = ?cli.objects, "reading objects from files");
        rx.wait_for(|s| s.is_some())
            .await
            .context("the file reader stopped")?;
        let mut file_changes = rx.clone();
        let t = trigger.clone();
        let (q, metrics) = (queue.clone(), telemetry.metrics().clone());
        // Changes are counted as the watch events the API server would have sent.
        let mut last = objects_of(&rx);
        changes::diff_objects(&metrics, &Default::default(), &last);
        tokio::spawn(async move {
            while file_changes.changed().await.is_ok() {
                let now = objects_of(&file_changes);
                changes::diff_objects(&metrics, &last, &now);
                last = now;
                q.queued();
                t.run();
            }
        });
        if let Some(h) = &health {
            let (rx, name) = (rx.clone(), settings.hostname.clone());
            h.set_node_lookup(Arc::new(move || {
                crate::telemetry::health::find_node(&rx.borrow().as_ref()?.objects, &name)
            }));
        }
        Source::Files(rx)
    } else {
        let client = crate::sources::client::connect(cli, &settings).await?;
        let changed = Arc::new(Notify::new());
        let stores = api::start_counting(
            client,
            &settings.hostname,
            changed.clone(),
            Some(telemetry.metrics().clone()),
        );
        let t = trigger.clone();
        let q = queue.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                q.queued();
                t.run();
            }
        });
        tracing::info!(node = %settings.hostname, "waiting for the initial list of Services, EndpointSlices and this Node");
        stores.wait_until_ready().await?;
        // Only once listed: until then no Node is known, and /healthz says not eligible.
        if let Some(h) = &health {
            let stores = stores.clone();
            h.set_node_lookup(Arc::new(move || stores.node()));
        }
        Source::Api(stores)
    };

    // Only now, with a complete view of the cluster, is the kernel touched (read first).
    let family = settings.family;
    let detection = proxier::detect_backend(&Launcher::host(), family).await;
    if detection.evidence == proxier::Evidence::Fallback {
        tracing::warn!(backend = detection.backend.name(), reason = %detection.reason, "iptables back end not decided; using the fallback");
    } else {
        tracing::info!(backend = detection.backend.name(), reason = %detection.reason, "iptables back end chosen");
    }
    let applier = IptablesApplier::new(detection.backend, family).with_timeout(RESTORE_TIMEOUT);
    let dataplane: Box<dyn Dataplane> = match ipvs {
        Some(socket) => {
            let sync_config = IpvsSyncConfig {
                family,
                exclude_cidrs: settings.ipvs_exclude_cidrs.clone(),
                // As upstream: a draining real server stays until its last connection is gone.
                grace_timeout: Duration::MAX,
            };
            Box::new(IpvsDataplane::new(
                socket,
                applier.keeping_stale_chains(),
                sync_config,
                crate::dryrun::ipvs_config(&settings),
            ))
        }
        None => Box::new(IptablesDataplane::new(applier)),
    };

    let state = Arc::new(Mutex::new(SyncState {
        settings,
        source,
        dataplane,
        last_warnings: Vec::new(),
        telemetry,
        conntrack: ConntrackReconciler::default(),
        conntrack_plan: None,
    }));
    queue.loop_started();
    trigger.run();
    runner
        .run(shutdown_signal(), || {
            let state = state.clone();
            async move { state.lock().await.sync().await }
        })
        .await;
    Ok(())
}
