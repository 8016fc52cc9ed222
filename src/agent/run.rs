//! The agent's main loop: wait for a complete view of the cluster, then render and apply on
//! every change (at most once per min sync period, at least once per sync period), keeping the
//! node's rules in place through every failure and at shutdown.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proxier::{IptablesApplier, Launcher, Runner, SyncKind};
use rulegen::{Retain, Ruleset};
use tokio::sync::{Mutex, Notify, watch};

use super::api::{self, ApiStores};
use super::duration::parse_go_duration;
use super::files::{self, FileSnapshot};
use super::ipvs::IpvsDataplane;
use super::{logging, ratelimit};
use crate::cli::Cli;
use crate::settings::{ProxyMode, Settings};
use crate::translate;

/// Upstream's defaults for `--iptables-min-sync-period` and `--iptables-sync-period`.
const DEFAULT_MIN_SYNC: Duration = Duration::from_secs(1);
const DEFAULT_SYNC: Duration = Duration::from_secs(30);
/// How often a sync reads the kernel back and rewrites every chain (stale chains, hooks) even
/// when nothing failed, as upstream's hourly full sync does; other syncs send only what changed.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// About how many bytes of rules one restore of a full sync carries: a 10,000-Service node's
/// 33 MB go in about 17 restores, so the agent never holds more than this much rule text
/// (each restore costs legacy back ends one more whole-table replace: ~0.5 s at that size).
const FULL_SYNC_CHUNK_BYTES: usize = 2 << 20;
/// How long one `iptables-restore` may take: a full restore of 10,000 Services takes the nft
/// back end minutes, and killing it would only waste that work.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
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
    applier: IptablesApplier,
    // The render of the current sync (emptied between syncs).
    spare: Ruleset,
    // Warnings are logged when they change, not on every sync.
    last_warnings: Vec<String>,
    // When the kernel was last read back in full (stale chains, hooks); redone hourly.
    last_full_sync: Option<Instant>,
    // IPVS mode's dataplane (`--proxy-mode ipvs`); iptables mode when absent.
    ipvs: Option<IpvsDataplane>,
}

impl SyncState {
    async fn sync(&mut self) -> anyhow::Result<()> {
        // Before (what the watchers freed: the initial list's JSON and objects) and after.
        release_free_memory();
        let result = self.sync_once().await;
        // Between syncs the render is not needed: a partial sync's render then never sits
        // next to the last one's buffers (100,000+ chain entries at 10,000 Services).
        self.spare.tables = Vec::new();
        release_free_memory();
        result
    }

    /// Translates the current objects, logging the warnings when they changed.
    fn translate(&mut self) -> translate::Translation {
        let (translation, mut warnings) = self.source.translate(&self.settings);
        warnings.extend(translation.warnings.iter().map(ToString::to_string));
        if warnings != self.last_warnings {
            for w in &warnings {
                tracing::warn!("{w}");
            }
            self.last_warnings = warnings;
        }
        translation
    }

    /// IPVS mode: the whole (small) iptables part and the sets every time, the virtual servers
    /// as a netlink diff.
    async fn sync_ipvs(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let translation = self.translate();
        let service_ports = translation.model.services.len();
        let Some(ipvs) = self.ipvs.as_mut() else {
            anyhow::bail!("IPVS mode without its dataplane");
        };
        // Hourly, and after any failure, every set is written again (as the iptables part and
        // the IPVS table always are: those are read back on every sync).
        if self
            .last_full_sync
            .is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD)
        {
            ipvs.forget_applied();
        }
        let s = match ipvs.sync(&translation, &mut self.applier).await {
            Ok(s) => s,
            Err(e) => {
                ipvs.forget_applied();
                self.last_full_sync = None;
                return Err(e);
            }
        };
        if ipvs.wrote_every_set() {
            self.last_full_sync = Some(Instant::now());
        }
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
            render_ms = s.render.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "rules synced"
        );
        Ok(())
    }

    async fn sync_once(&mut self) -> anyhow::Result<()> {
        if self.ipvs.is_some() {
            return self.sync_ipvs().await;
        }
        let started = Instant::now();
        let full_due = self
            .last_full_sync
            .is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD);
        // A partial sync renders keeping only the rules of chains that changed since the last
        // sync; a full one renders names and fingerprints first, then sends the rules a chunk
        // at a time. Either way a large node's whole ruleset is never in memory at once.
        let mut fallback = None;
        if let Some(applied) = self.applier.applied().filter(|_| !full_due) {
            let translation = self.translate();
            let service_ports = translation.model.services.len();
            rulegen::render_into_with(
                &translation.model,
                &translation.config,
                &mut self.spare,
                &Retain::Changed(applied),
            )
            .context("cannot render the ruleset")?;
            // Not needed while the kernel loads the change (it is translated again in the rare
            // case a full sync must follow).
            drop(translation);
            let rendered = started.elapsed();
            match self.applier.try_partial_sync(&self.spare).await {
                Ok(Ok(report)) => return self.report(Ok(report), service_ports, rendered, started),
                Ok(Err(why)) => fallback = Some(why),
                Err(e) => return self.report(Err(e), service_ports, rendered, started),
            }
        }
        let translation = self.translate();
        let (model, cfg) = (&translation.model, &translation.config);
        let service_ports = model.services.len();
        rulegen::render_into_with(model, cfg, &mut self.spare, &Retain::Nothing)
            .context("cannot render the ruleset")?;
        let rendered = started.elapsed();
        let result = self
            .applier
            .full_sync_chunked(&mut self.spare, FULL_SYNC_CHUNK_BYTES, |retain, out| {
                rulegen::render_into_with(model, cfg, out, retain).map_err(|e| e.to_string())
            })
            .await
            .map(|mut r| {
                r.fallback = fallback;
                r
            });
        self.report(result, service_ports, rendered, started)
    }

    /// Logs a sync's outcome and keeps the full-sync clock.
    fn report(
        &mut self,
        result: Result<proxier::SyncReport, proxier::ApplyError>,
        service_ports: usize,
        rendered: std::time::Duration,
        started: Instant,
    ) -> anyhow::Result<()> {
        match result {
            Ok(report) => {
                if report.kind == SyncKind::Full {
                    self.last_full_sync = Some(Instant::now());
                }
                tracing::info!(
                    service_ports,
                    kind = report.kind.as_str(),
                    fallback = report.fallback.as_deref().unwrap_or("-"),
                    payload_bytes = report.payload_bytes,
                    chains_written = report.chains_written,
                    chains_deleted = report.stale_chains_deleted,
                    hooks_inserted = report.hooks_inserted,
                    render_ms = rendered.as_millis() as u64,
                    save_ms = report.save.as_millis() as u64,
                    restore_ms = report.restore.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "rules synced"
                );
                Ok(())
            }
            Err(e) => {
                // After any failure the next sync reads the kernel back in full.
                self.last_full_sync = None;
                if let Some(line) = e.failed_line() {
                    tracing::error!(
                        line = line.number,
                        chain = line.chain.as_deref().unwrap_or("-"),
                        service = line.comment.as_deref().unwrap_or("-"),
                        text = %line.text,
                        "iptables-restore rejected a line; the previous rules stay in place\n{}",
                        line.context
                    );
                }
                Err(e.into())
            }
        }
    }
}

/// Runs the node agent until SIGTERM or SIGINT; returns its exit status.
pub fn run(cli: &Cli) -> ExitCode {
    logging::init(cli.verbosity.unwrap_or(0));
    tune_allocator();
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
    match runtime.block_on(run_async(cli)) {
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

fn period(flag: &Option<String>, name: &str, default: Duration) -> anyhow::Result<Duration> {
    match flag {
        None => Ok(default),
        Some(v) => parse_go_duration(v).map_err(|e| anyhow::anyhow!("--{name}: {e}")),
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<kube::Client> {
    let mut config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod")?,
    };
    if let Some(master) = &cli.master {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master {master:?} is not a URL"))?;
    }
    let qps = match &cli.kube_api_qps {
        None => ratelimit::DEFAULT_QPS,
        Some(v) => match v.parse::<f64>() {
            // As upstream: 0 means the default.
            Ok(0.0) => ratelimit::DEFAULT_QPS,
            Ok(q) if q > 0.0 && q.is_finite() => q,
            _ => anyhow::bail!("--kube-api-qps {v:?} must be a positive number"),
        },
    };
    let burst = match cli.kube_api_burst {
        None | Some(0) => ratelimit::DEFAULT_BURST,
        Some(b) => b,
    };
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("cannot build the API client")?
        .with_layer(&ratelimit::RateLimitLayer::new(qps, burst))
        .build())
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

async fn run_async(cli: &Cli) -> anyhow::Result<()> {
    let (settings, warnings) = Settings::from_cli(cli)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let (min_flag, sync_flag, prefix) = match settings.mode {
        ProxyMode::Iptables => (
            &cli.iptables_min_sync_period,
            &cli.iptables_sync_period,
            "iptables",
        ),
        ProxyMode::Ipvs => (&cli.ipvs_min_sync_period, &cli.ipvs_sync_period, "ipvs"),
    };
    let min_sync = period(
        min_flag,
        &format!("{prefix}-min-sync-period"),
        DEFAULT_MIN_SYNC,
    )?;
    let sync = period(sync_flag, &format!("{prefix}-sync-period"), DEFAULT_SYNC)?;
    if sync.is_zero() {
        anyhow::bail!("--{prefix}-sync-period must be above zero");
    }
    // IPVS mode needs the kernel's IPVS: checked before anything else is started.
    let ipvs = match settings.mode {
        ProxyMode::Ipvs => Some(IpvsDataplane::open(&settings)?),
        ProxyMode::Iptables => None,
    };
    let runner = Runner::new(min_sync, sync);
    let trigger = runner.trigger();
    let source = if !cli.objects.is_empty() {
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(files::watch_files(cli.objects.clone(), FILE_POLL, tx));
        tracing::info!(paths = ?cli.objects, "reading objects from files");
        rx.wait_for(|s| s.is_some())
            .await
            .context("the file reader stopped")?;
        let mut changes = rx.clone();
        let t = trigger.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                t.run();
            }
        });
        Source::Files(rx)
    } else {
        let client = connect(cli).await?;
        let changed = Arc::new(Notify::new());
        let stores = api::start(client, &settings.hostname, changed.clone());
        let t = trigger.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                t.run();
            }
        });
        tracing::info!(node = %settings.hostname, "waiting for the initial list of Services, EndpointSlices and this Node");
        stores.wait_until_ready().await?;
        Source::Api(stores)
    };

    // Only now, with a complete view of the cluster, is the kernel touched (read first).
    let family: proxier::Family = settings.family.into();
    let detection = proxier::detect_backend(&Launcher::host(), family).await;
    tracing::info!(backend = detection.backend.name(), reason = %detection.reason, "iptables back end chosen");
    let mut applier = IptablesApplier::new(detection.backend, family).with_timeout(RESTORE_TIMEOUT);
    if ipvs.is_some() {
        applier = applier.keeping_stale_chains();
    }

    let state = Arc::new(Mutex::new(SyncState {
        spare: Ruleset {
            family: settings.family,
            tables: Vec::new(),
        },
        settings,
        source,
        applier,
        last_warnings: Vec::new(),
        last_full_sync: None,
        ipvs,
    }));
    trigger.run();
    runner
        .run(shutdown_signal(), || {
            let state = state.clone();
            async move { state.lock().await.sync().await }
        })
        .await;
    Ok(())
}
