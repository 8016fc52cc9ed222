//! [`IptablesDataplane`]: iptables mode's sync policy over an [`IptablesApplier`]. A sync is
//! partial (only the chains that changed, nothing read back) while that is safe, and full
//! otherwise — the first sync, the hourly one, after a failure, and at once when a partial one
//! is refused (the tables were flushed, the hooks changed). A full sync renders names and
//! fingerprints first, then sends the rules a chunk at a time: a large node's whole ruleset is
//! never in memory at once.

use std::time::{Duration, Instant};

use rulegen::{IpFamily, Model, RenderConfig, Retain, Ruleset};

use crate::applier::{IptablesApplier, SyncKind, SyncReport};
use crate::backend::Backend;
use crate::cleanup::{self, CleanupReport};
use crate::dataplane::{
    Dataplane, FullSyncReason, NodeFacts, SyncError, SyncFuture, SyncObserver, sync_span,
};

/// How often a sync reads the kernel back and rewrites every chain (stale chains, hooks) even
/// when nothing failed, as upstream's hourly full sync does; other syncs send only what changed.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// How long one `iptables-restore` may take: a full restore of 10,000 Services takes the nft
/// back end minutes, and killing it would only waste that work.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// About how many bytes of rules one restore of a full sync carries, by back end; the agent
/// never holds more rule text than this.
///
/// Legacy: each restore replaces the whole table (~0.5 s at 10,000 Services), so fewer, larger
/// restores win: 2 MB, about 17 for that node's 33 MB. nft: a restore's cost grows faster than
/// its size when it replaces chains that exist, and the restart of a loaded node replaces all of
/// them. Measured replacing a loaded 10,000-Service nat table (issue #16): 128 KB chunks 91 s,
/// 256 KB 49 s, 512 KB 35 s, 1 MB 39 s, 2 MB 61 s, one 33 MB restore 306 s.
pub fn full_sync_chunk_bytes(backend: Backend) -> usize {
    match backend {
        Backend::Legacy => 2 << 20,
        Backend::Nft => 512 << 10,
    }
}

/// iptables mode's dataplane: the applier and the policy deciding each sync's kind.
#[derive(Debug)]
pub struct IptablesDataplane {
    applier: IptablesApplier,
    facts: NodeFacts,
    // The render of the current sync (emptied between syncs: a partial sync's render then
    // never sits next to the last one's buffers, 100,000+ chain entries at 10,000 Services).
    spare: Ruleset,
    // When the kernel was last read back in full (stale chains, hooks); redone every period.
    last_full_sync: Option<Instant>,
    full_sync_period: Duration,
    chunk_bytes: usize,
    // Whether any sync succeeded yet (tells a first sync from one after a failure).
    synced: bool,
}

impl IptablesDataplane {
    /// The policy over `applier`: hourly full syncs, the back end's chunk size, and the node's
    /// facts read from this host.
    pub fn new(applier: IptablesApplier) -> Self {
        IptablesDataplane {
            chunk_bytes: full_sync_chunk_bytes(applier.backend()),
            spare: Ruleset {
                family: applier.family(),
                tables: Vec::new(),
            },
            applier,
            facts: NodeFacts::host(),
            last_full_sync: None,
            full_sync_period: FULL_SYNC_PERIOD,
            synced: false,
        }
    }

    /// The same dataplane, reading the node's facts from `facts`.
    pub fn with_node_facts(mut self, facts: NodeFacts) -> Self {
        self.facts = facts;
        self
    }

    /// The same dataplane, with a full sync due every `period` (tests: no hour's wait).
    pub fn with_full_sync_period(mut self, period: Duration) -> Self {
        self.full_sync_period = period;
        self
    }

    /// The same dataplane, sending full syncs in restores of about `bytes`.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    /// The applier underneath.
    pub fn applier(&self) -> &IptablesApplier {
        &self.applier
    }

    /// The applier underneath, to drive it directly (tests: a hand-made broken ruleset).
    pub fn applier_mut(&mut self) -> &mut IptablesApplier {
        &mut self.applier
    }

    /// Why the next sync must be full before a partial one is even tried, if it must.
    pub fn full_sync_due(&self) -> Option<FullSyncReason> {
        if !self.synced {
            Some(FullSyncReason::FirstSync)
        } else if !self.applier.can_sync_partially() {
            Some(FullSyncReason::AfterFailure)
        } else if self
            .last_full_sync
            .is_none_or(|t| t.elapsed() >= self.full_sync_period)
        {
            Some(FullSyncReason::Periodic)
        } else {
            None
        }
    }

    async fn sync_now(
        &mut self,
        model: &Model,
        cfg: &RenderConfig,
        observer: &mut dyn SyncObserver,
    ) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let cfg = self.facts.conntrack(cfg);
        let cfg = cfg.as_ref();
        let reason = match self.full_sync_due() {
            Some(reason) => reason,
            None => match self.try_partial(model, cfg, observer, started).await? {
                Ok(report) => return Ok(report),
                Err(reason) => reason,
            },
        };
        observer.attempt(SyncKind::Full);
        tracing::Span::current().record("kind", SyncKind::Full.as_str());
        rulegen::render_into_with(model, cfg, &mut self.spare, &Retain::Nothing)
            .map_err(SyncError::Render)?;
        let render = started.elapsed();
        let mut report = self
            .applier
            .full_sync_chunked(model, cfg, &mut self.spare, self.chunk_bytes, observer)
            .await?;
        report.reason = Some(reason);
        report.render = render;
        self.last_full_sync = Some(Instant::now());
        self.synced = true;
        observer.applied(&report, &self.spare);
        Ok(report)
    }

    /// A partial sync, or why a full one must follow.
    async fn try_partial(
        &mut self,
        model: &Model,
        cfg: &RenderConfig,
        observer: &mut dyn SyncObserver,
        started: Instant,
    ) -> Result<Result<SyncReport, FullSyncReason>, SyncError> {
        let Some(applied) = self.applier.applied() else {
            return Ok(Err(FullSyncReason::AfterFailure));
        };
        observer.attempt(SyncKind::Partial);
        tracing::Span::current().record("kind", SyncKind::Partial.as_str());
        rulegen::render_into_with(model, cfg, &mut self.spare, &Retain::Changed(applied))
            .map_err(SyncError::Render)?;
        let render = started.elapsed();
        match self.applier.try_partial_sync(&self.spare).await? {
            Ok(mut report) => {
                report.render = render;
                observer.applied(&report, &self.spare);
                Ok(Ok(report))
            }
            Err(why) => {
                observer.partial_refused(&why);
                Ok(Err(FullSyncReason::PartialRefused(why)))
            }
        }
    }
}

impl Dataplane for IptablesDataplane {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    fn family(&self) -> IpFamily {
        self.applier.family()
    }

    fn sync<'a>(
        &'a mut self,
        model: &'a Model,
        cfg: &'a RenderConfig,
        observer: &'a mut dyn SyncObserver,
    ) -> SyncFuture<'a, Result<SyncReport, SyncError>> {
        Box::pin(async move {
            let span = sync_span(self.mode(), self.family());
            let result =
                tracing::Instrument::instrument(self.sync_now(model, cfg, observer), span).await;
            if result.is_err() {
                // After any failure the next sync reads the kernel back in full.
                self.last_full_sync = None;
                self.applier.invalidate();
            }
            // Between syncs the render is not needed.
            self.spare.tables = Vec::new();
            result
        })
    }

    fn forget_applied(&mut self) {
        self.applier.invalidate();
        self.last_full_sync = None;
    }

    /// Its family's hooks and chains (IPVS mode's too: one payload removes both modes').
    fn clean_up(&mut self) -> SyncFuture<'_, CleanupReport> {
        Box::pin(async move {
            let report = cleanup::iptables_leftovers(self.applier.iptables()).await;
            // The kernel holds nothing of ours any more: the next sync is a first one.
            self.forget_applied();
            self.synced = false;
            report
        })
    }
}
