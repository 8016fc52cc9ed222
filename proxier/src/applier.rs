//! [`IptablesApplier`]: one full sync of a rendered [`Ruleset`] into the kernel, the way upstream
//! does it: read what is there, send one `--noflush` restore, then ensure the hooks.

use std::time::{Duration, Instant};

use rulegen::Ruleset;
use rulegen::restore::{SavedChains, saved_chains};
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
    // Reused between syncs: a large node's payload is tens of megabytes.
    payload: String,
    // The owned chains of the last successful sync, per table: lets a quick sync find stale
    // chains without an `iptables-save` (seconds on a large nft node). None after a failure.
    last_applied: Option<SavedChains>,
}

/// What one full sync did and what each step cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Time spent reading the tables (`iptables-save -t …`).
    pub save: Duration,
    /// Time spent in `iptables-restore`.
    pub restore: Duration,
    /// Time spent checking and inserting hooks.
    pub hooks: Duration,
    /// Size of the restore payload.
    pub payload_bytes: usize,
    /// Per-service chains found on the node, no longer rendered, and deleted.
    pub stale_chains_deleted: usize,
    /// Hook rules that were missing and were inserted.
    pub hooks_inserted: usize,
    /// Hook rules checked with `iptables -C` (the others were seen in the save).
    pub hooks_checked: usize,
}

/// Why a full sync failed.
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
            payload: String::new(),
            last_applied: None,
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

    /// Makes the kernel hold `rs`: saves the ruleset's tables to find stale per-service chains,
    /// restores every owned chain (and deletes the stale ones) in one `--noflush` restore, then
    /// ensures the hooks (`iptables -C`/`-I` only in chains where the save lacks one).
    ///
    /// Nothing is flushed beforehand: if the restore fails, the failing table and those after
    /// it keep their previous rules (tables committed before it are listed in the error), and
    /// no hook is touched.
    pub async fn full_sync(&mut self, rs: &Ruleset) -> Result<SyncReport, ApplyError> {
        if let Some(e) = self.family_mismatch(rs) {
            return Err(e);
        }
        let mut report = SyncReport::default();

        let started = Instant::now();
        let mut existing = SavedChains::new();
        let mut builtins = BuiltinRules::default();
        for t in &rs.tables {
            let text = self
                .iptables
                .save(t.name)
                .await
                .map_err(|source| ApplyError::Save {
                    table: t.name.to_string(),
                    source,
                })?;
            existing.extend(saved_chains(&text));
            builtins.add_save(&text);
        }
        let stale = rs.stale_chains(&existing);
        report.save = started.elapsed();
        report.stale_chains_deleted = stale.values().map(Vec::len).sum();

        report.payload_bytes = self.write_payload(rs, &stale);
        let started = Instant::now();
        let restored = self.iptables.restore(&self.payload).await;
        report.restore = started.elapsed();
        if let Err(e) = restored {
            if let RestoreError::Rejected(r) = &e
                && let Some(l) = &r.line
            {
                tracing::debug!(line = l.number, context = %l.context, "restore payload around the failing line");
            }
            return Err(e.into());
        }

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
        self.last_applied = Some(owned_chains(rs));
        Ok(report)
    }

    /// Like [`full_sync`](Self::full_sync), but trusts the last successful sync instead of
    /// reading the tables back: stale chains are those the last sync wrote and `rs` lacks, and
    /// the hooks (ensured by that sync) are not checked again — upstream also re-ensures its
    /// jumps only on full syncs. Falls back to a full sync when there is no successful sync to
    /// trust (the first one, or after a failure).
    pub async fn quick_sync(&mut self, rs: &Ruleset) -> Result<SyncReport, ApplyError> {
        if let Some(e) = self.family_mismatch(rs) {
            return Err(e);
        }
        let Some(last) = self.last_applied.take() else {
            return self.full_sync(rs).await;
        };
        let mut report = SyncReport::default();
        let stale = rs.stale_chains(&last);
        report.stale_chains_deleted = stale.values().map(Vec::len).sum();
        report.payload_bytes = self.write_payload(rs, &stale);
        let started = Instant::now();
        // On failure `last_applied` stays None, so the next sync reads the kernel again.
        self.iptables.restore(&self.payload).await?;
        report.restore = started.elapsed();
        self.last_applied = Some(owned_chains(rs));
        Ok(report)
    }
}

impl IptablesApplier {
    fn family_mismatch(&self, rs: &Ruleset) -> Option<ApplyError> {
        let ruleset = Family::from(rs.family);
        (ruleset != self.iptables.family).then_some(ApplyError::FamilyMismatch {
            ruleset,
            applier: self.iptables.family,
        })
    }

    /// Writes the restore payload into the reused buffer; returns its size.
    fn write_payload(&mut self, rs: &Ruleset, stale: &rulegen::restore::StaleChains) -> usize {
        self.payload.clear();
        rs.write_full_restore(stale, &mut self.payload)
            .expect("writing to a String cannot fail");
        self.payload.len()
    }
}

/// The chains `rs` owns, per table, in the form a save is read into.
fn owned_chains(rs: &Ruleset) -> SavedChains {
    rs.tables
        .iter()
        .map(|t| (t.name.to_string(), t.chains().map(|(n, _)| *n).collect()))
        .collect()
}
