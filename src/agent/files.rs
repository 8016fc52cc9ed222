//! Objects from files: `--objects PATH` without `--dry-run` makes the agent read Services,
//! EndpointSlices and its Node from files and re-read them when they change, for static nodes,
//! demos, and end-to-end tests without a cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::objects::{self, Objects};
use crate::warning::Warning;

/// What a set of paths looked like on disk, to notice a change cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out);
    }
    out.sort();
    Fingerprint(out)
}

fn collect(p: &Path, out: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            out.push((p.to_path_buf(), m.modified().ok(), 0));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_file() {
                        collect(&path, out);
                    }
                }
            }
        }
        Ok(m) => out.push((p.to_path_buf(), m.modified().ok(), m.len())),
        Err(_) => out.push((p.to_path_buf(), None, 0)),
    }
}

/// One successful read of every path.
#[derive(Debug, Clone, Default)]
pub struct FileSnapshot {
    /// The objects read.
    pub objects: Objects,
    /// Warnings from reading them (bad documents skipped, unknown kinds).
    pub warnings: Vec<Warning>,
}

/// Watches `paths` by polling (every `interval`) and publishes each successful re-read. A file
/// that fails to parse keeps the previous snapshot in place: a half-written file must never
/// empty the node's rules.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    tx: watch::Sender<Option<FileSnapshot>>,
) {
    let mut last = Fingerprint::default();
    let mut last_failed = Fingerprint::default();
    loop {
        let now = fingerprint(&paths);
        if now != last {
            let mut warnings = Vec::new();
            match objects::load_paths(&paths, &mut warnings) {
                Ok(objects) => {
                    tracing::info!(
                        services = objects.services.len(),
                        endpoint_slices = objects.endpoint_slices.len(),
                        nodes = objects.nodes.len(),
                        "read objects from files"
                    );
                    last = now;
                    if tx.send(Some(FileSnapshot { objects, warnings })).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Retried on the next tick (the fingerprint stays old); logged once per version.
                    if now != last_failed {
                        tracing::warn!(error = %e, "cannot read objects; keeping the previous ones");
                        last_failed = now;
                    }
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
