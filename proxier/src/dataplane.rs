//! [`Dataplane`]: the one interface the agent syncs a model through, whatever the mode. Each
//! implementation decides how much to send (full or partial), reads the facts the render needs
//! from the node ([`NodeFacts`]), renders, applies, and says what it did in a [`SyncReport`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use rulegen::{IpFamily, Model, NeedsFullSync, RenderConfig, RenderError, Ruleset};
use thiserror::Error;

use crate::applier::{ApplyError, SyncKind, SyncReport};
use crate::backend::FamilyTools;
use crate::cleanup::CleanupReport;
use crate::interface::{IPVS_INTERFACE, local_addresses_except};
use crate::ipvs_dataplane::IpvsStepError;
use crate::sysctl::Sysctls;

/// A future a [`Dataplane`] returns: boxed, so the agent can hold any mode as `dyn Dataplane`.
pub type SyncFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the agent hands its models to: one per mode and family.
pub trait Dataplane: Send {
    /// `iptables` or `ipvs`, as logs name the mode.
    fn mode(&self) -> &'static str;

    /// The family it programs.
    fn family(&self) -> IpFamily;

    /// Makes the node hold what `model` renders to under `cfg`: a full or a partial sync, as
    /// this dataplane's policy decides; `observer` hears what telemetry counts along the way.
    fn sync<'a>(
        &'a mut self,
        model: &'a Model,
        cfg: &'a RenderConfig,
        observer: &'a mut dyn SyncObserver,
    ) -> SyncFuture<'a, Result<SyncReport, SyncError>>;

    /// Forgets what the kernel was given, so the next sync rewrites everything.
    fn forget_applied(&mut self);

    /// Removes what this mode put on the node for its family (upstream's `CleanupLeftovers`),
    /// each step attempted even when one failed; the next sync then writes everything again.
    fn clean_up(&mut self) -> SyncFuture<'_, CleanupReport>;
}

/// The span every sync runs in: its mode and family, and its kind (`full` or `partial`) once
/// the dataplane has decided it.
pub(crate) fn sync_span(mode: &'static str, family: IpFamily) -> tracing::Span {
    tracing::info_span!(
        "sync",
        mode,
        family = family.label(),
        kind = tracing::field::Empty
    )
}

/// Hears what a sync does, for the agent's metrics; every method defaults to ignoring it.
pub trait SyncObserver: Send {
    /// A partial or a full apply is attempted (a refused partial is followed by a full one).
    fn attempt(&mut self, _kind: SyncKind) {}
    /// One chunk of a full sync was rendered: `rs` holds that chunk's rules' text.
    fn chunk_rendered(&mut self, _rs: &Ruleset) {}
    /// A partial sync was refused; a full one follows at once.
    fn partial_refused(&mut self, _why: &PartialRefusal) {}
    /// The sync applied `rs` (every chain's name and fingerprint; the rules' text of a partial
    /// sync's changed chains).
    fn applied(&mut self, _report: &SyncReport, _rs: &Ruleset) {}
}

/// A [`SyncObserver`] that hears nothing (tests, benches, one-off syncs).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl SyncObserver for NoObserver {}

/// Why a sync rewrote every chain instead of only the changed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullSyncReason {
    /// Nothing was synced yet: the kernel is read back and every chain written.
    FirstSync,
    /// The periodic full sync (hourly, as upstream's) was due: it repairs what changed behind
    /// the proxy's back without a failure showing it.
    Periodic,
    /// The last sync failed: the kernel no longer provably holds what was last sent.
    AfterFailure,
    /// A partial sync was tried and refused.
    PartialRefused(PartialRefusal),
}

impl fmt::Display for FullSyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullSyncReason::FirstSync => f.write_str("first sync"),
            FullSyncReason::Periodic => f.write_str("periodic full sync"),
            FullSyncReason::AfterFailure => f.write_str("after a failed sync"),
            FullSyncReason::PartialRefused(why) => why.fmt(f),
        }
    }
}

/// Why a partial sync could not be done (the texts are the agent's `fallback` log field).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PartialRefusal {
    /// No successful sync to diff against.
    #[error("no successful sync to diff against")]
    NothingApplied,
    /// The render cannot be diffed against what was applied (family, tables or hooks changed).
    #[error(transparent)]
    Plan(#[from] NeedsFullSync),
    /// The partial restore's canary or hook check failed: someone flushed the table.
    #[error("the {table} table was flushed behind the proxy's back (`{check}` failed)")]
    Flushed {
        /// The table (`?` when the restore tool did not name it).
        table: String,
        /// The check line that failed (`-F KUBE-PROXY-CANARY`, a hook's `-C`).
        check: String,
    },
}

/// Why a sync failed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The iptables render failed; nothing was sent.
    #[error("cannot render the ruleset")]
    Render(#[source] RenderError),
    /// The IPVS render failed; nothing was sent.
    #[error("cannot render the IPVS dataplane")]
    IpvsRender(#[source] RenderError),
    /// Applying the iptables rules failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// One step of an IPVS sync failed; the others were attempted.
    #[error(transparent)]
    IpvsStep(IpvsStepError),
    /// Several steps of an IPVS sync failed; the others were attempted.
    #[error("{} steps of the IPVS sync failed: {}", .0.len(), joined_chains(.0))]
    IpvsSteps(Vec<IpvsStepError>),
}

impl SyncError {
    /// Whether an `iptables-restore` of IPVS mode's rules failed (the restore-failures metric).
    pub fn ipvs_restore_failed(&self) -> bool {
        let failed = |s: &IpvsStepError| matches!(s, IpvsStepError::Rules(ApplyError::Restore(_)));
        match self {
            SyncError::IpvsStep(s) => failed(s),
            SyncError::IpvsSteps(all) => all.iter().any(failed),
            _ => false,
        }
    }
}

/// Each error with its sources, `a: b: c`, joined by `; `.
fn joined_chains(errors: &[IpvsStepError]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a dataplane reads the facts the render needs from the node, once per sync: whether
/// `nf_conntrack_tcp_be_liberal` is set (the INVALID drop follows what the kernel does, not
/// what was asked: in an unprivileged container the write may have been refused) and, in IPVS
/// mode, the node's own addresses (node ports are served on them).
#[derive(Debug, Clone)]
pub struct NodeFacts {
    sysctls: Option<Sysctls>,
    interfaces: bool,
}

impl NodeFacts {
    /// This host's `/proc/sys` and interfaces.
    pub fn host() -> Self {
        NodeFacts {
            sysctls: Some(Sysctls::host()),
            interfaces: true,
        }
    }

    /// The sysctls under `sysctls`, no interface read (tests).
    pub fn with_sysctls(sysctls: Sysctls) -> Self {
        NodeFacts {
            sysctls: Some(sysctls),
            interfaces: false,
        }
    }

    /// Nothing read: the render configuration is used as given (tests, benches).
    pub fn given() -> Self {
        NodeFacts {
            sysctls: None,
            interfaces: false,
        }
    }

    /// `cfg` with what the kernel says of `nf_conntrack_tcp_be_liberal`; unchanged when it
    /// cannot be read.
    pub fn conntrack<'a>(&self, cfg: &'a RenderConfig) -> Cow<'a, RenderConfig> {
        let liberal = self
            .sysctls
            .as_ref()
            .and_then(|s| s.read("net/netfilter/nf_conntrack_tcp_be_liberal").ok())
            .map(|v| v == "1");
        match liberal {
            Some(l) if l != cfg.conntrack_tcp_be_liberal => {
                let mut cfg = cfg.clone();
                cfg.conntrack_tcp_be_liberal = l;
                Cow::Owned(cfg)
            }
            _ => Cow::Borrowed(cfg),
        }
    }

    /// The node's addresses of `family` other than `kube-ipvs0`'s, as upstream reads them from
    /// its interfaces (the Node object may not list every one); `None` when not read here or
    /// not readable (logged), and the Node object's addresses stay.
    pub async fn local_addresses(&self, family: IpFamily) -> Option<Vec<IpAddr>> {
        if !self.interfaces {
            return None;
        }
        let listed = tokio::task::spawn_blocking(move || {
            local_addresses_except(IPVS_INTERFACE, family).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match listed {
            Ok(local) => Some(local),
            Err(e) => {
                tracing::warn!("cannot list the node's addresses ({e}); using the Node object's");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals read as the agent's `fallback` log field always did.
    #[test]
    fn refusals_keep_their_log_texts() {
        let flushed = PartialRefusal::Flushed {
            table: "nat".into(),
            check: "-F KUBE-PROXY-CANARY".into(),
        };
        assert_eq!(
            flushed.to_string(),
            "the nat table was flushed behind the proxy's back (`-F KUBE-PROXY-CANARY` failed)"
        );
        assert_eq!(
            PartialRefusal::NothingApplied.to_string(),
            "no successful sync to diff against"
        );
        assert_eq!(
            PartialRefusal::from(NeedsFullSync::Hooks("nat")).to_string(),
            "the hook rules in the built-in chains of table nat changed"
        );
    }

    /// `nf_conntrack_tcp_be_liberal` as the kernel has it wins over the configuration; an
    /// unreadable one leaves the configuration as it is.
    #[test]
    fn the_kernel_says_whether_tcp_is_liberal() {
        let root = std::env::temp_dir().join(format!("kprs-facts-{}", std::process::id()));
        let dir = root.join("proc/sys/net/netfilter");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = RenderConfig::default();
        let facts = NodeFacts::with_sysctls(Sysctls::at(&root));
        assert!(
            !facts.conntrack(&cfg).conntrack_tcp_be_liberal,
            "unreadable"
        );
        std::fs::write(dir.join("nf_conntrack_tcp_be_liberal"), "1\n").unwrap();
        assert!(facts.conntrack(&cfg).conntrack_tcp_be_liberal);
        assert!(NodeFacts::given().conntrack(&cfg).as_ref() == &cfg);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
