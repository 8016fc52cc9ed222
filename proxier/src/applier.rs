//! [`IptablesApplier`]: makes the kernel hold a rendered [`Ruleset`], the way upstream does it —
//! a full sync (read what is there, send one `--noflush` restore of every owned chain, ensure
//! the hooks) at first and after anything went wrong, and otherwise a partial sync that sends
//! only the chains that changed.

use std::time::{Duration, Instant};

use rulegen::restore::{SavedChains, saved_chains};
use rulegen::{AppliedState, Ruleset};
use thiserror::Error;

use crate::backend::{Backend, Family};
use crate::command::{CommandError, Launcher};
use crate::hooks::{BuiltinRules, HookError};
use crate::iptables::Iptables;
use crate::restore::{FailedLine, RestoreError};

/// Applies rendered rulesets of one family with one back end.
#[derive(Debug, Clone)]
pub struct IptablesApplier {
    iptables: Iptables,
    // Fingerprints of what the last successful sync gave the kernel: what a partial sync diffs
    // against. None before the first sync and after any failure, so the next one is full.
    applied: Option<AppliedState>,
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
    /// Why a partial sync was asked for but a full one ran (`None` otherwise).
    pub fallback: Option<String>,
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
}

/// Why a sync failed.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The ruleset was rendered for the other family.
    #[error("the ruleset is for {ruleset}, but this applier drives {applier} tables")]
    FamilyMismatch {
        /// The ruleset's family.
        ruleset: Family,
        /// The applier's family.
        applier: Family,
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
    #[error("restore failed: {0}")]
    Restore(#[from] RestoreError),
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

impl SyncReport {
    /// The whole sync's duration (save + restore + hooks).
    pub fn total(&self) -> Duration {
        self.save + self.restore + self.hooks
    }
}

impl IptablesApplier {
    /// An applier for `family` with `backend`, running the tools directly.
    pub fn new(backend: Backend, family: Family) -> Self {
        Self::with_iptables(Iptables::new(backend, family))
    }

    /// An applier driving these tools.
    pub fn with_iptables(iptables: Iptables) -> Self {
        IptablesApplier {
            iptables,
            applied: None,
        }
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
    pub fn family(&self) -> Family {
        self.iptables.family
    }

    /// Whether the next [`partial_sync`](Self::partial_sync) can be partial (a sync succeeded
    /// and nothing has failed since).
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
        // Whatever happens next, the kernel no longer provably holds the last ruleset.
        self.applied = None;
        let mut report = SyncReport::default();

        let started = Instant::now();
        let mut existing = SavedChains::new();
        let mut builtins = BuiltinRules::default();
        for t in &rs.tables {
            let outline =
                self.iptables
                    .save_outline(t.name)
                    .await
                    .map_err(|source| ApplyError::Save {
                        table: t.name.to_string(),
                        source,
                    })?;
            existing.extend(saved_chains(&outline));
            builtins.add_save(&outline);
        }
        let stale = rs.stale_chains(&existing);
        report.save = started.elapsed();
        report.stale_chains_deleted = stale.values().map(Vec::len).sum();
        report.chains_written = rs.tables.iter().map(|t| t.chain_count()).sum();

        let payload = rs.full_payload(&stale);
        report.payload_bytes = payload.len();
        let started = Instant::now();
        let restored = self.iptables.restore_payload(&payload).await;
        report.restore = started.elapsed();
        if let Err(e) = restored {
            if let RestoreError::Rejected(r) = &e
                && let Some(l) = &r.line
            {
                tracing::debug!(line = l.number, context = %l.context, "restore payload around the failing line");
            }
            return Err(e.into());
        }
        drop(payload);

        let started = Instant::now();
        // The restore left the built-in chains alone, so the save still shows their hooks.
        let hooks = self
            .iptables
            .ensure_hooks(&rs.hooks(), Some(&builtins))
            .await?;
        report.hooks = started.elapsed();
        report.hooks_inserted = hooks.inserted;
        report.hooks_checked = hooks.checked;
        tracing::debug!(
            backend = %self.iptables.backend,
            family = %self.iptables.family,
            ?report,
            "full sync done"
        );
        self.applied = Some(AppliedState::of(rs));
        Ok(report)
    }

    /// Sends only what changed since the last successful sync (see [`rulegen::partial`]): the
    /// changed and new chains, the removed ones deleted, nothing read back. The same restore
    /// checks each table's `KUBE-PROXY-CANARY` and hooks; when they are gone (someone flushed
    /// the tables) the partial restore fails and a full sync runs at once. A full sync also
    /// runs when there is no successful sync to diff against (the first one, or after any
    /// failure) and when the hooks themselves changed.
    pub async fn partial_sync(&mut self, rs: &Ruleset) -> Result<SyncReport, ApplyError> {
        if let Some(e) = self.family_mismatch(rs) {
            return Err(e);
        }
        let Some(applied) = self.applied.take() else {
            return self.full_sync(rs).await;
        };
        let plan = match rs.partial_payload(&applied) {
            Ok(plan) => plan,
            Err(why) => {
                let mut report = self.full_sync(rs).await?;
                report.fallback = Some(why.to_string());
                return Ok(report);
            }
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
        drop(plan);
        match restored {
            Ok(()) => {
                self.applied = Some(AppliedState::of(rs));
                Ok(report)
            }
            Err(e) => match e.failed_line().filter(|l| is_flush_check(&l.text)) {
                Some(line) => {
                    let why = format!(
                        "the {} table was flushed behind the proxy's back (`{}` failed)",
                        line.table.as_deref().unwrap_or("?"),
                        line.text
                    );
                    tracing::warn!("{why}; resyncing every chain");
                    let attempt = report.restore;
                    let mut full = self.full_sync(rs).await?;
                    full.restore += attempt;
                    full.fallback = Some(why);
                    Ok(full)
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
        let ruleset = Family::from(rs.family);
        (ruleset != self.iptables.family).then_some(ApplyError::FamilyMismatch {
            ruleset,
            applier: self.iptables.family,
        })
    }
}
