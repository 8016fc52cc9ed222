//! Applying IPVS mode's ipsets: one `ipset restore` per sync that makes every set hold exactly
//! its members (one per set when the kernel refuses part of it, so one bad set holds back no
//! other). Each set is replaced atomically (a filled copy swapped in), so a packet never
//! meets a half-filled set, and a set the iptables rules reference is never destroyed.
//!
//! Upstream runs one `ipset add`/`del` per changed member after an `ipset list` per set; at
//! 10,000 Services that is thousands of processes per sync, against one here.

use std::time::{Duration, Instant};

use rulegen::IpFamily;
use rulegen::render::ipvs::IpSets;
use rulegen::render::ipvs::ipsets::temp_set_name;
use thiserror::Error;

use crate::command::{CommandError, Launcher};

/// Why the sets could not be applied.
#[derive(Debug, Error)]
pub enum IpsetError {
    /// `ipset` could not run, did not finish, or `ipset save` failed.
    #[error("{0}")]
    Tool(#[source] CommandError),
    /// The kernel refused these sets (a member or the set itself); every other set was applied.
    #[error(
        "ipset restore refused {} set(s), the other {applied} were applied: {}",
        .refused.len(),
        refused_list(.refused)
    )]
    Refused {
        /// The sets left as they were, each with the tool's error.
        refused: Vec<RefusedSet>,
        /// How many sets were written.
        applied: usize,
    },
}

/// `SET: error; SET: error` for [`IpsetError::Refused`].
fn refused_list(refused: &[RefusedSet]) -> String {
    let all: Vec<String> = refused
        .iter()
        .map(|r| format!("{}: {}", r.set, r.error))
        .collect();
    all.join("; ")
}

/// A set `ipset restore` refused; the kernel keeps what the set held before.
#[derive(Debug)]
pub struct RefusedSet {
    /// The set's name.
    pub set: String,
    /// What `ipset restore` said (it names the refused line).
    pub error: CommandError,
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
    ///
    /// One script normally does it all. `ipset restore` stops at the first line it refuses,
    /// leaving that set and every later one as they were, so when the script fails each set is
    /// restored again on its own: one refused set then holds back no other, and is named in
    /// [`IpsetError::Refused`].
    pub async fn restore(
        &self,
        sets: &IpSets,
        applied: Option<&IpSets>,
    ) -> Result<IpsetReport, IpsetError> {
        let prefix = temp_prefix(sets.family);
        let changed = sets.changed(applied);
        if changed.is_empty() {
            return Ok(IpsetReport::default());
        }
        let mut script = String::new();
        for &i in &changed {
            sets.write_set_restore(&mut script, prefix, i)
                .expect("writing to a String cannot fail");
        }
        let started = Instant::now();
        let refused = match self.run_restore(&script).await {
            Ok(()) => Vec::new(),
            Err(CommandError::Failed { .. }) => self.restore_each(sets, &changed).await?,
            Err(e) => return Err(IpsetError::Tool(e)),
        };
        let written: Vec<usize> = changed
            .into_iter()
            .filter(|&i| !refused.iter().any(|r| r.set == sets.sets[i].name))
            .collect();
        if !refused.is_empty() {
            return Err(IpsetError::Refused {
                refused,
                applied: written.len(),
            });
        }
        Ok(IpsetReport {
            sets: written.len(),
            entries: written.iter().map(|&i| sets.sets[i].entries.len()).sum(),
            script_bytes: script.len(),
            elapsed: started.elapsed(),
        })
    }

    /// Restores each set of `indexes` with a script of its own (the sets the whole script had
    /// swapped in before its failing line are swapped again, to the same members); returns the
    /// ones the kernel refused. A set that cannot run at all (no tool, time-out) ends it.
    async fn restore_each(
        &self,
        sets: &IpSets,
        indexes: &[usize],
    ) -> Result<Vec<RefusedSet>, IpsetError> {
        let prefix = temp_prefix(sets.family);
        let mut refused = Vec::new();
        for &i in indexes {
            let mut script = String::new();
            sets.write_set_restore(&mut script, prefix, i)
                .expect("writing to a String cannot fail");
            match self.run_restore(&script).await {
                Ok(()) => {}
                Err(error @ CommandError::Failed { .. }) => {
                    // The script stopped before destroying its temporary copy; a failure here
                    // only leaves that copy for the next restore, which flushes and reuses it.
                    let tmp = temp_set_name(prefix, i);
                    let _ = self
                        .launcher
                        .run("ipset", &["destroy", &tmp], None, self.timeout)
                        .await;
                    refused.push(RefusedSet {
                        set: sets.sets[i].name.clone(),
                        error,
                    });
                }
                Err(e) => return Err(IpsetError::Tool(e)),
            }
        }
        Ok(refused)
    }

    async fn run_restore(&self, script: &str) -> Result<(), CommandError> {
        self.launcher
            .run("ipset", &["restore"], Some(script.as_bytes()), self.timeout)
            .await
            .map(drop)
    }

    /// `ipset save`: every set and member the kernel holds.
    pub async fn save(&self) -> Result<String, IpsetError> {
        self.launcher
            .run("ipset", &["save"], None, self.timeout)
            .await
            .map_err(IpsetError::Tool)
    }
}
