//! After each successful sync, stale UDP conntrack flows are deleted (upstream's reconciler):
//! a client whose flow still points at a removed endpoint would otherwise be black-holed until
//! the flow times out. One dump of the family's UDP flows, only the stale ones deleted.

use std::time::Duration;

use proxier::ConntrackReport;
use rulegen::sync::conntrack::Lookup;
use rulegen::{Model, RenderConfig};

/// What the reconciler remembers between syncs: the lookup of the last successful pass, so a
/// Service deleted since has its flows removed once, and a sync that changed no UDP frontend or
/// endpoint costs nothing.
#[derive(Default)]
pub struct ConntrackReconciler {
    last: Option<Lookup>,
}

/// A pass to run once the sync that translated its model has applied: built while the model is
/// at hand (a partial sync drops the model before the kernel is written).
pub struct ConntrackPlan {
    check: Lookup,
    current: Lookup,
}

impl ConntrackReconciler {
    /// The pass `model` needs, or `None` when nothing UDP changed since the last one.
    pub fn plan(&self, model: &Model, cfg: &RenderConfig) -> Option<ConntrackPlan> {
        let current = Lookup::build(model, cfg);
        let mut check = current.clone();
        if let Some(prev) = &self.last {
            check.add_removed(prev);
        }
        check
            .needs_reconcile(self.last.as_ref())
            .then_some(ConntrackPlan { check, current })
    }

    /// Deletes the stale flows `plan` finds. A failure is returned, and the next sync's plan
    /// covers the same ground again.
    pub async fn run(&mut self, plan: ConntrackPlan) -> anyhow::Result<ConntrackReport> {
        let ConntrackPlan { check, current } = plan;
        let joined =
            tokio::task::spawn_blocking(move || proxier::conntrack::reconcile(&check)).await;
        match joined {
            Ok(Ok(report)) => {
                self.last = Some(current);
                log(&report);
                Ok(report)
            }
            Ok(Err(e)) => Err(anyhow::anyhow!(e).context("UDP conntrack cleanup failed")),
            Err(e) => Err(anyhow::anyhow!("the conntrack cleanup task failed: {e}")),
        }
    }
}

fn log(report: &ConntrackReport) {
    let ms = |d: Duration| d.as_millis() as u64;
    if report.flows_deleted > 0 {
        tracing::info!(
            flows_seen = report.flows_seen,
            flows_deleted = report.flows_deleted,
            dump_ms = ms(report.dump),
            total_ms = ms(report.duration),
            "deleted stale UDP conntrack flows"
        );
    } else {
        tracing::debug!(
            flows_seen = report.flows_seen,
            total_ms = ms(report.duration),
            "no stale UDP conntrack flows"
        );
    }
}
