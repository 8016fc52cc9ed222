//! Applying IPVS mode's ipsets: one `ipset restore` per sync that makes every set hold exactly
//! its members. Each set is replaced atomically (a filled copy swapped in), so a packet never
//! meets a half-filled set, and a set the iptables rules reference is never destroyed.
//!
//! Upstream runs one `ipset add`/`del` per changed member after an `ipset list` per set; at
//! 10,000 Services that is thousands of processes per sync, against one here.

use std::time::{Duration, Instant};

use rulegen::IpFamily;
use rulegen::ipvs::IpSets;
use thiserror::Error;

use crate::command::{CommandError, Launcher};

/// Why the sets could not be applied.
#[derive(Debug, Error)]
pub enum IpsetError {
    /// `ipset` could not run, or failed; a refused restore script applied nothing after the
    /// failing line (the sets before it were swapped in whole).
    #[error("{0}")]
    Tool(#[source] CommandError),
}

/// What one [`Ipset::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpsetReport {
    /// Sets written (those that changed).
    pub sets: usize,
    /// Members written, over the sets written.
    pub entries: usize,
    /// Size of the script.
    pub script_bytes: usize,
    /// How long `ipset restore` took.
    pub elapsed: Duration,
}

/// Runs the `ipset` tool.
#[derive(Debug, Clone)]
pub struct Ipset {
    launcher: Launcher,
    timeout: Duration,
}

/// The prefix of the temporary copies, per family, so the two families' proxies never share one.
fn temp_prefix(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "KUBE-TMP-",
        IpFamily::V6 => "KUBE-6-TMP-",
    }
}

impl Ipset {
    /// `ipset` started through `launcher`, each run bounded by `timeout`.
    pub fn new(launcher: Launcher, timeout: Duration) -> Self {
        Ipset { launcher, timeout }
    }

    /// Makes every set of `sets` hold exactly its members, creating the missing ones; with
    /// `applied` (what the kernel was last given), only the sets that differ are written, and
    /// nothing runs when none does.
    pub async fn restore(
        &self,
        sets: &IpSets,
        applied: Option<&IpSets>,
    ) -> Result<IpsetReport, IpsetError> {
        let mut script = String::new();
        sets.write_restore_script(&mut script, temp_prefix(sets.family), applied)
            .expect("writing to a String cannot fail");
        if script.is_empty() {
            return Ok(IpsetReport::default());
        }
        let started = Instant::now();
        self.launcher
            .run("ipset", &["restore"], Some(script.as_bytes()), self.timeout)
            .await
            .map_err(IpsetError::Tool)?;
        let written = |i: usize| applied.is_none_or(|a| a.sets.get(i) != sets.sets.get(i));
        Ok(IpsetReport {
            sets: (0..sets.sets.len()).filter(|&i| written(i)).count(),
            entries: (0..sets.sets.len())
                .filter(|&i| written(i))
                .map(|i| sets.sets[i].entries.len())
                .sum(),
            script_bytes: script.len(),
            elapsed: started.elapsed(),
        })
    }

    /// `ipset save`: every set and member the kernel holds.
    pub async fn save(&self) -> Result<String, IpsetError> {
        self.launcher
            .run("ipset", &["save"], None, self.timeout)
            .await
            .map_err(IpsetError::Tool)
    }
}
