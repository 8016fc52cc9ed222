//! [`IptablesApplier`]: makes the kernel hold a rendered [`Ruleset`], the way upstream does it —
//! a full sync (read what is there, send one `--noflush` restore of every owned chain, ensure
//! the hooks) at first and after anything went wrong, and otherwise a partial sync that sends
//! only the chains that changed.

use std::time::{Duration, Instant};

use std::sync::Arc;

use rulegen::sync::restore::{SavedChains, StaleChains, saved_chains};
use rulegen::sync::retain::plan_chunks;
use rulegen::{AppliedState, Model, RenderConfig, RenderError, Retain, Ruleset};
use thiserror::Error;

use rulegen::IpFamily;

use crate::backend::{Backend, FamilyTools};
use crate::command::{CommandError, Launcher};
use crate::dataplane::{FullSyncReason, PartialRefusal, SyncObserver};
use crate::hooks::{BuiltinRules, HookError};
use crate::iptables::Iptables;
use crate::ipvs_dataplane::IpvsSyncSummary;
use crate::restore::{FailedLine, RestoreError};

/// Applies rendered rulesets of one family with one back end.
#[derive(Debug, Clone)]
pub struct IptablesApplier {
    iptables: Iptables,
    // Fingerprints of what the last successful sync gave the kernel: what a partial sync diffs
    // against. None before the first sync and after any failure, so the next one is full.
    applied: Option<Arc<AppliedState>>,
    // Whether full syncs delete the per-service chains no Service owns (iptables mode's
    // takeover). IPVS mode leaves them, as upstream does: iptables mode's `KUBE-NODEPORTS`
    // still jumps to them, and IPVS mode never rewrites that chain.
    delete_stale: bool,
}

/// Whether a sync rewrote every owned chain or only the changed ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncKind {
    /// Read the tables back, rewrote every owned chain, deleted stale ones, ensured the hooks.
    #[default]
    Full,
    /// Rewrote only the chains that changed since the last sync.
    Partial,
}

impl SyncKind {
    /// `full` or `partial`, as logs and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        }
    }
}

/// What one sync did and what each step cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Full or partial.
    pub kind: SyncKind,
    /// Why a full sync ran (`None` for a partial one).
    pub reason: Option<FullSyncReason>,
    /// Time from the sync's start until its (last whole-ruleset) render was done.
    pub render: Duration,
    /// Time spent reading the tables (`iptables-save -t …`).
    pub save: Duration,
    /// Time spent in `iptables-restore` (a failed partial attempt included).
    pub restore: Duration,
    /// Time spent checking and inserting hooks.
    pub hooks: Duration,
    /// Size of the restore payload.
    pub payload_bytes: usize,
    /// Owned chains declared and refilled.
    pub chains_written: usize,
    /// Per-service chains found on the node, no longer rendered, and deleted.
    pub stale_chains_deleted: usize,
    /// Hook rules that were missing and were inserted.
    pub hooks_inserted: usize,
    /// Hook rules checked with `iptables -C` (the others were seen in the save).
    pub hooks_checked: usize,
    /// IPVS mode: what its other steps did.
    pub ipvs: Option<IpvsSyncSummary>,
}

/// Why a sync failed.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The ruleset was rendered for the other family.
    #[error(
        "the ruleset is for {}, but this applier drives {} tables",
        .ruleset.label(),
        .applier.label()
    )]
    FamilyMismatch {
        /// The ruleset's family.
        ruleset: IpFamily,
        /// The applier's family.
        applier: IpFamily,
    },
    /// Reading a table failed; nothing was changed.
    #[error("reading table {table} failed (nothing changed): {source}")]
    Save {
        /// The table.
        table: String,
        /// What the tool reported.
        #[source]
        source: CommandError,
    },
    /// The restore failed; see [`crate::Rejected::committed`] for what it left changed.
    // Not a `#[source]`: the message already carries it, and `{:#}` would print it twice.
    #[error("restore failed: {0}")]
    Restore(RestoreError),
    /// A full sync was given a render that kept only some chains' rules (see
    /// [`rulegen::Retain`]); sending it would leave the other chains empty. Nothing was sent.
    #[error(
        "a full sync needs a complete render (table {0} kept only some chains' rules); use full_sync_chunked"
    )]
    IncompleteRender(&'static str),
    /// Rendering a chunk of a chunked full sync failed; nothing of it was sent.
    // Not a `#[source]`, as for `Restore`.
    #[error("rendering a chunk failed: {0}")]
    Render(RenderError),
    /// The rules were restored, but a hook could not be ensured.
    #[error("rules restored, but hooks are incomplete: {0}")]
    Hooks(#[from] HookError),
}

impl ApplyError {
    /// The payload line the restore tool rejected, if that is what failed.
    pub fn failed_line(&self) -> Option<&FailedLine> {
        match self {
            ApplyError::Restore(RestoreError::Rejected(r)) => r.line.as_ref(),
            _ => None,
        }
    }
}

impl From<RestoreError> for ApplyError {
    fn from(e: RestoreError) -> Self {
        ApplyError::Restore(e)
    }
}

impl SyncReport {
    /// The whole sync's duration (save + restore + hooks).
    pub fn total(&self) -> Duration {
        self.save + self.restore + self.hooks
    }

    /// Why a partial sync was asked for but a full one ran (`None` otherwise).
    pub fn fallback(&self) -> Option<&PartialRefusal> {
        match &self.reason {
            Some(FullSyncReason::PartialRefused(why)) => Some(why),
            _ => None,
        }
    }
}

impl IptablesApplier {
    /// An applier for `family` with `backend`, running the tools directly.
    pub fn new(backend: Backend, family: IpFamily) -> Self {
        Self::with_iptables(Iptables::new(backend, family))
    }

    /// An applier driving these tools.
    pub fn with_iptables(iptables: Iptables) -> Self {
        IptablesApplier {
            iptables,
            applied: None,
            delete_stale: true,
        }
    }

    /// The same applier, leaving other per-service chains alone on full syncs (IPVS mode: the
    /// chains iptables mode left behind are still referenced by its other chains).
    pub fn keeping_stale_chains(mut self) -> Self {
        self.delete_stale = false;
        self
    }

    /// The same applier, starting the tools through `launcher`.
    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.iptables.launcher = launcher;
        self
    }

    /// The same applier, with another per-call time-out (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.iptables.timeout = timeout;
        self
    }

    /// The tools this applier runs.
    pub fn iptables(&self) -> &Iptables {
        &self.iptables
    }

    /// The back end it drives.
    pub fn backend(&self) -> Backend {
        self.iptables.backend
    }

    /// The family it drives.
    pub fn family(&self) -> IpFamily {
        self.iptables.family
    }

    /// Whether the next sync can be partial (a sync succeeded and nothing has failed since).
    pub fn can_sync_partially(&self) -> bool {
        self.applied.is_some()
    }

    /// Forgets what the kernel was given, so the next sync is full.
    pub fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Makes the kernel hold `rs`: reads each table's outline to find stale per-service chains
    /// (left by an earlier run, or by upstream kube-proxy when taking over its node), restores
    /// every owned chain (and deletes the stale ones) in one `--noflush` restore, then ensures
    /// the hooks (`iptables -C`/`-I` only in chains where the save lacks one).
    ///
    /// Nothing is flushed beforehand: if the restore fails, the failing table and those after
    /// it keep their previous rules (tables committed before it are listed in the error), and
    /// no hook is touched.
    pub async fn full_sync(&mut self, rs: &Ruleset) -> Result<SyncReport, ApplyError> {
        if let Some(e) = self.family_mismatch(rs) {
            return Err(e);
        }
        if let Some(t) = rs.tables.iter().find(|t| !t.is_complete()) {
            return Err(ApplyError::IncompleteRender(t.name));
        }
        // Whatever happens next, the kernel no longer provably holds the last ruleset.
        self.applied = None;
        let mut report = SyncReport::default();
        let (stale, builtins) = self.read_outlines(rs, &mut report).await?;
        report.chains_written = rs.tables.iter().map(|t| t.chain_count()).sum();

        let payload = rs.full_payload(&stale);
        report.payload_bytes = payload.len();
        self.restore(&payload, &mut report).await?;
        drop(payload);
        self.finish_full_sync(&rs.hooks(), AppliedState::of(rs), &builtins, report)
            .await
    }

    /// Like [`full_sync`](Self::full_sync) for a node too large to hold its whole ruleset in
    /// memory: `lean` is the render of `model` under `cfg` with every chain's name and
    /// fingerprint but (possibly) no rule text; each chunk is rendered again keeping only its
    /// chains (see [`Retain::Chunk`]), and `observer` hears of each. The rules
    /// go in chunks of about `chunk_bytes`, one restore each, in an order where every jump
    /// lands on a chain that exists (see [`rulegen::sync::retain::apply_rank`]); stale chains go
    /// with their table's last chunk.
    ///
    /// Between chunks the node holds a mix of old and new per-service chains, as between two
    /// partial syncs: never a jump to nothing. If a chunk fails, the earlier ones stay
    /// applied and the next sync is full again.
    ///
    /// `lean` itself is rendered into for the chunks (its chain list is the bulk of what a
    /// large node's render holds, and it is not needed once the plan is made).
    pub async fn full_sync_chunked(
        &mut self,
        model: &Model,
        cfg: &RenderConfig,
        lean: &mut Ruleset,
        chunk_bytes: usize,
        observer: &mut dyn SyncObserver,
    ) -> Result<SyncReport, ApplyError> {
        if let Some(e) = self.family_mismatch(lean) {
            return Err(e);
        }
        self.applied = None;
        let mut report = SyncReport::default();
        let (stale, builtins) = self.read_outlines(lean, &mut report).await?;
        let plan = plan_chunks(lean, chunk_bytes);
        let chunk_rs = lean;
        for (i, chunk) in plan.iter().enumerate() {
            rulegen::render_into_with(model, cfg, chunk_rs, &Retain::Chunk(chunk.clone()))
                .map_err(ApplyError::Render)?;
            observer.chunk_rendered(chunk_rs);
            let mut gone = StaleChains::new();
            if plan[i + 1..].iter().all(|c| c.table != chunk.table)
                && let Some(names) = stale.get(chunk.table)
            {
                gone.insert(chunk.table.to_string(), names.clone());
            }
            let payload = chunk_rs.full_payload(&gone);
            report.payload_bytes += payload.len();
            report.chains_written += payload
                .pieces
                .iter()
                .filter(|p| matches!(p, rulegen::Piece::Rules(_)))
                .count();
            self.restore(&payload, &mut report).await?;
        }
        tracing::debug!(chunks = plan.len(), "full sync sent in chunks");
        // Every chunk's render holds every chain's fingerprint and the hooks (only the rule
        // text is partial), so the last one tells what the kernel now holds.
        for t in &mut chunk_rs.tables {
            t.drop_text();
        }
        let hooks = chunk_rs.hooks();
        let applied = AppliedState::of(chunk_rs);
        self.finish_full_sync(&hooks, applied, &builtins, report)
            .await
    }

    /// Reads each table's outline: the stale per-service chains to delete and the built-in
    /// chains' rules.
    async fn read_outlines(
        &self,
        rs: &Ruleset,
        report: &mut SyncReport,
    ) -> Result<(StaleChains, BuiltinRules), ApplyError> {
        let started = Instant::now();
        let mut existing = SavedChains::new();
        let mut builtins = BuiltinRules::default();
        let names: Vec<&str> = rs.tables.iter().map(|t| t.name).collect();
        let outlines = self
            .iptables
            .read_tables(&names, &|_, builtin| builtin)
            .await
            .map_err(|source| ApplyError::Save {
                table: names.join(", "),
                source,
            })?;
        for outline in &outlines {
            existing.extend(saved_chains(outline));
            builtins.add_save(outline);
        }
        let stale = if self.delete_stale {
            rs.stale_chains(&existing)
        } else {
            StaleChains::default()
        };
        report.save = started.elapsed();
        report.stale_chains_deleted = stale.values().map(Vec::len).sum();
        Ok((stale, builtins))
    }

    async fn restore(
        &self,
        payload: &rulegen::Payload<'_>,
        report: &mut SyncReport,
    ) -> Result<(), ApplyError> {
        let started = Instant::now();
        let restored = self.iptables.restore_payload(payload).await;
        report.restore += started.elapsed();
        if let Err(e) = restored {
            if let RestoreError::Rejected(r) = &e
                && let Some(l) = &r.line
            {
                tracing::debug!(line = l.number, context = %l.context, "restore payload around the failing line");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Ensures the hooks after a full sync's restore and remembers what the kernel now holds.
    async fn finish_full_sync(
        &mut self,
        hooks: &[rulegen::sync::restore::Hook],
        applied: AppliedState,
        builtins: &BuiltinRules,
        mut report: SyncReport,
    ) -> Result<SyncReport, ApplyError> {
        let started = Instant::now();
        // The restore left the built-in chains alone, so the save still shows their hooks.
        let hooks = self.iptables.ensure_hooks(hooks, Some(builtins)).await?;
        report.hooks = started.elapsed();
        report.hooks_inserted = hooks.inserted;
        report.hooks_checked = hooks.checked;
        tracing::debug!(
            backend = %self.iptables.backend,
            family = self.iptables.family.label(),
            ?report,
            "full sync done"
        );
        self.applied = Some(Arc::new(applied));
        Ok(report)
    }

    /// What the kernel was last given, while a partial sync can diff against it: render the
    /// next ruleset with [`Retain::Changed`] of this to keep only the chains that changed.
    pub fn applied(&self) -> Option<Arc<AppliedState>> {
        self.applied.clone()
    }

    /// Sends only what changed since the last successful sync (see [`rulegen::sync::partial`]): the
    /// changed and new chains, the removed ones deleted, nothing read back; `rs` may hold only
    /// the changed chains' rules. The same restore checks each table's `KUBE-PROXY-CANARY` and
    /// hooks. `Ok(Err(why))` when a full sync is needed instead: no successful sync to diff
    /// against (the first one, or after any failure), the hooks themselves changed, or the
    /// tables were flushed behind the proxy's back (the canary or a hook is gone); the caller
    /// runs it (see [`crate::IptablesDataplane`]).
    pub async fn try_partial_sync(
        &mut self,
        rs: &Ruleset,
    ) -> Result<Result<SyncReport, PartialRefusal>, ApplyError> {
        if let Some(e) = self.family_mismatch(rs) {
            return Err(e);
        }
        let Some(applied) = self.applied.take() else {
            return Ok(Err(PartialRefusal::NothingApplied));
        };
        let plan = match rs.partial_payload(&applied) {
            Ok(plan) => plan,
            Err(why) => return Ok(Err(why.into())),
        };
        let mut report = SyncReport {
            kind: SyncKind::Partial,
            payload_bytes: plan.payload.len(),
            chains_written: plan.chains_written,
            stale_chains_deleted: plan.chains_deleted,
            ..SyncReport::default()
        };
        let started = Instant::now();
        let restored = self.iptables.restore_payload(&plan.payload).await;
        report.restore = started.elapsed();
        // Free the old fingerprints before the new ones are taken (megabytes on a large node).
        drop(plan);
        drop(applied);
        match restored {
            Ok(()) => {
                self.applied = Some(Arc::new(AppliedState::of(rs)));
                Ok(Ok(report))
            }
            Err(e) => match e.failed_line().filter(|l| is_flush_check(&l.text)) {
                Some(line) => {
                    let why = PartialRefusal::Flushed {
                        table: line.table.as_deref().unwrap_or("?").to_string(),
                        check: line.text.clone(),
                    };
                    tracing::warn!("{why}; resyncing every chain");
                    Ok(Err(why))
                }
                // `applied` stays None: the next sync is full.
                None => Err(e.into()),
            },
        }
    }
}

impl RestoreError {
    /// The payload line the restore tool rejected, if it named one.
    pub fn failed_line(&self) -> Option<&FailedLine> {
        match self {
            RestoreError::Rejected(r) => r.line.as_ref(),
            RestoreError::Command(_) => None,
        }
    }
}

/// Whether a rejected payload line is one of a partial sync's flush checks (the canary `-F` or
/// a hook's `-C`), not a rule the proxy wanted to write.
fn is_flush_check(line: &str) -> bool {
    line.starts_with("-F ") || line.starts_with("-C ")
}

impl IptablesApplier {
    fn family_mismatch(&self, rs: &Ruleset) -> Option<ApplyError> {
        let ruleset = rs.family;
        (ruleset != self.iptables.family).then_some(ApplyError::FamilyMismatch {
            ruleset,
            applier: self.iptables.family,
        })
    }
}
