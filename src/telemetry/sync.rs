//! What the agent's sync loop reports, in one place: the metrics of each sync, the proxy's
//! health (`Updated` after each successful sync, `QueuedUpdate` when a change needs one), and
//! the Services' health-check node ports, opened, closed and counted after each successful
//! sync, as upstream's proxiers do at the end of `syncProxyRules`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proxier::{ApplyError, PartialRefusal, SyncKind, SyncObserver, SyncReport};
use rulegen::Ruleset;

use super::metrics::Metrics;
use super::metrics::rules::RuleCounts;
use crate::settings::{ProxyMode, Settings};
use crate::telemetry::health::ProxyHealth;
use crate::telemetry::service_health::{
    ServiceHealthServer, ServiceHealthState, no_local_endpoints,
};
use crate::translate::Translation;

/// A cloneable handle for whatever notices changes: marks a sync as queued.
#[derive(Clone)]
pub struct SyncQueue {
    metrics: Arc<Metrics>,
    health: Option<Arc<ProxyHealth>>,
}

impl SyncQueue {
    /// A Service, EndpointSlice or Node change will need a sync (upstream's `Proxier.Sync`):
    /// `QueuedUpdate` and `…_last_queued_timestamp_seconds`.
    pub fn queued(&self) {
        if let Some(h) = &self.health {
            h.queued_update();
        }
        self.metrics.sync_queued();
    }

    /// The sync loop starts, with a complete view of the cluster (upstream's `SyncLoop`):
    /// healthy from now on until a queued change is late.
    pub fn loop_started(&self) {
        if let Some(h) = &self.health {
            h.updated();
        }
        self.metrics.sync_queued();
    }
}

/// The sync loop's reporting, kept in the sync state.
pub struct SyncTelemetry {
    metrics: Arc<Metrics>,
    health: Option<Arc<ProxyHealth>>,
    services: ServiceHealthServer,
    rules: RuleCounts,
    // This sync's: the changes' trigger times, what the health checks will serve, the
    // Services without local endpoints, the kind of apply attempted.
    trigger_times: Vec<SystemTime>,
    service_health: Option<ServiceHealthState>,
    no_local: Option<(u64, u64)>,
    attempt: Option<SyncKind>,
}

impl SyncTelemetry {
    /// Starts the metrics server (`--metrics-bind-address`) and the health server
    /// (`--healthz-bind-address`; unhealthy once a queued change waits more than twice the
    /// sync period, as upstream), and prepares the Services' health-check node ports: on every
    /// address, or on the node's addresses inside `--nodeport-addresses` (read once, as
    /// upstream). Call inside the runtime; a server that cannot bind is retried in the
    /// background.
    pub async fn start(
        settings: &Settings,
        sync_period: Duration,
    ) -> (SyncTelemetry, Option<Arc<ProxyHealth>>) {
        let metrics = Metrics::new(settings.mode, settings.family);
        if let Some(addr) = settings.metrics_bind_address {
            metrics.serve(addr);
        }
        let health = settings.healthz_bind_address.map(|addr| {
            let h = ProxyHealth::new(2 * sync_period, settings.family, Some(metrics.clone()));
            h.serve(addr);
            h
        });
        let family = settings.family;
        let cidrs = &settings.nodeport_addresses;
        let node_ips = if cidrs.iter().any(|c| family.contains_net(c)) {
            let listed = tokio::task::spawn_blocking(move || {
                proxier::local_addresses_except(proxier::IPVS_INTERFACE, family)
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match listed {
                Ok(local) => ServiceHealthServer::listen_addresses(cidrs, family, &local),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "cannot list the node's addresses; health checks listen on every address"
                    );
                    None
                }
            }
        } else {
            None
        };
        let services = ServiceHealthServer::new(node_ips, health.clone());
        (
            SyncTelemetry::new(metrics, health.clone(), services),
            health,
        )
    }

    /// Reporting to `metrics` and `health`, serving the health checks with `services`.
    pub fn new(
        metrics: Arc<Metrics>,
        health: Option<Arc<ProxyHealth>>,
        services: ServiceHealthServer,
    ) -> Self {
        SyncTelemetry {
            metrics,
            health,
            services,
            rules: RuleCounts::default(),
            trigger_times: Vec::new(),
            service_health: None,
            no_local: None,
            attempt: None,
        }
    }

    /// The handle change watchers mark syncs as queued with.
    pub fn queue(&self) -> SyncQueue {
        SyncQueue {
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The health-check node ports.
    pub fn service_health(&self) -> &ServiceHealthServer {
        &self.services
    }

    /// A sync starts: it takes the changes seen so far.
    pub fn begin(&mut self) {
        self.trigger_times = self.metrics.checkout_changes();
        self.service_health = None;
        self.no_local = None;
        self.attempt = None;
    }

    /// The sync translated the objects: notes what the health checks and the no-local-endpoints
    /// gauges will show once it succeeds.
    pub fn translated(&mut self, t: &Translation) {
        self.service_health = Some(ServiceHealthState::of(&t.model, &t.config));
        let per_service = self.metrics.mode() == ProxyMode::Ipvs;
        self.no_local = Some(no_local_endpoints(&t.model, &t.config, per_service));
    }

    /// iptables mode: a partial or full apply is attempted.
    pub fn attempt(&mut self, kind: SyncKind) {
        self.attempt = Some(kind);
        if kind == SyncKind::Full {
            self.rules.begin_full();
        }
    }

    /// Where a full sync's chunks record their rule counts.
    pub fn rule_counts(&mut self) -> &mut RuleCounts {
        &mut self.rules
    }

    /// A partial sync could not be done and a full one follows; `why` is the applier's reason.
    /// A partial restore that failed because the tables were flushed counts as a partial
    /// restore failure, as upstream counts its failed partial restores.
    pub fn partial_fallback(&mut self, why: &PartialRefusal) {
        if matches!(why, PartialRefusal::Flushed { .. }) {
            self.metrics.restore_failed(true);
        }
    }

    /// iptables mode: the apply succeeded; `rs` is the render it applied (all chains' names and
    /// fingerprints; a partial sync's changed chains' rules).
    pub fn applied(&mut self, report: &SyncReport, rs: &Ruleset) {
        let full = report.kind == SyncKind::Full;
        if let Some(counts) = self.rules.after_sync(rs, full) {
            for c in counts {
                self.metrics.set_iptables_rules(c.table, c.total, c.written);
            }
        }
    }

    /// iptables mode: the apply failed.
    pub fn apply_failed(&mut self, e: &ApplyError) {
        match e {
            ApplyError::Restore(_) => self
                .metrics
                .restore_failed(self.attempt == Some(SyncKind::Partial)),
            ApplyError::Save { source, .. } => self.metrics.read_failed(match source {
                proxier::CommandError::Timeout { .. } => "timeout",
                proxier::CommandError::Spawn { .. } => "not_started",
                proxier::CommandError::Failed { .. } | proxier::CommandError::Io { .. } => "failed",
            }),
            _ => {}
        }
    }

    /// IPVS mode: the iptables restore of the sync failed.
    pub fn ipvs_restore_failed(&self) {
        self.metrics.restore_failed(false);
    }

    /// The sync ended after `elapsed`; when it succeeded: healthy, last sync time, network
    /// programming latencies, no-local-endpoints gauges, and the health checks synced.
    pub async fn finish(&mut self, succeeded: bool, elapsed: Duration) {
        let partial = match self.metrics.mode() {
            ProxyMode::Iptables => Some(self.attempt == Some(SyncKind::Partial)),
            ProxyMode::Ipvs => None,
        };
        self.metrics.sync_took(elapsed, partial);
        if !succeeded {
            return;
        }
        if let Some(h) = &self.health {
            h.updated();
        }
        let trigger_times = std::mem::take(&mut self.trigger_times);
        self.metrics
            .sync_succeeded(SystemTime::now(), &trigger_times);
        if let Some((internal, external)) = self.no_local.take() {
            self.metrics.set_no_local_endpoints(internal, external);
        }
        if let Some(state) = self.service_health.take() {
            self.services.sync_services(&state.ports).await;
            self.services.sync_endpoints(&state.local_endpoints);
        }
    }
}

/// What the dataplane reports along a sync goes to the same counters as before.
impl SyncObserver for SyncTelemetry {
    fn attempt(&mut self, kind: SyncKind) {
        SyncTelemetry::attempt(self, kind);
    }

    fn chunk_rendered(&mut self, rs: &Ruleset) {
        self.rules.observe(rs);
    }

    fn partial_refused(&mut self, why: &PartialRefusal) {
        self.partial_fallback(why);
    }

    fn applied(&mut self, report: &SyncReport, rs: &Ruleset) {
        SyncTelemetry::applied(self, report, rs);
    }
}
