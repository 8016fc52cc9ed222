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
/// empty the node's rules. A change is read only once it has settled — the same sizes and
/// modification times on two polls in a row, and unchanged while it was read — so a file
/// being copied in (truncated, then written) is not taken for an empty one. Writers that can
/// should still replace files by rename.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    tx: watch::Sender<Option<FileSnapshot>>,
) {
    let mut last = Fingerprint::default();
    let mut last_failed = Fingerprint::default();
    let mut settling: Option<Fingerprint> = None;
    loop {
        let now = fingerprint(&paths);
        if now != last && settling.as_ref() != Some(&now) {
            // First sight of this version: read it on the next poll if it is still the same.
            settling = Some(now);
        } else if now != last {
            let mut warnings = Vec::new();
            let read = objects::load_paths(&paths, &mut warnings);
            if fingerprint(&paths) != now {
                // Changed while being read: wait for it to settle again.
                settling = None;
            } else {
                match read {
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
                        // Retried on the next tick; logged once per version.
                        if now != last_failed {
                            tracing::warn!(error = %e, "cannot read objects; keeping the previous ones");
                            last_failed = now;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec:\n  clusterIP: 10.96.0.80\n  ports:\n  - {name: http, port: 80, protocol: TCP}\n";

    /// A file copied in as truncate-then-write is seen empty by a poll in between: that empty
    /// version must never be published (it would delete every Service), only the settled one.
    #[tokio::test(start_paused = true)]
    async fn a_file_being_rewritten_is_read_only_once_it_settles() {
        let dir = std::env::temp_dir().join(format!("kprs-files-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("objects.yaml");
        std::fs::write(&path, SERVICE).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let tick = Duration::from_millis(100);
        tokio::spawn(watch_files(vec![path.clone()], tick, tx));
        let services = |rx: &watch::Receiver<Option<FileSnapshot>>| {
            rx.borrow().as_ref().map(|s| s.objects.services.len())
        };
        // Seen, then read on the next poll.
        tokio::time::sleep(tick / 2).await;
        assert_eq!(services(&rx), None);
        rx.changed().await.unwrap();
        assert_eq!(services(&rx), Some(1));
        // Truncated: one poll sees it empty, and the write completes before the next.
        std::fs::write(&path, "").unwrap();
        tokio::time::sleep(tick).await;
        std::fs::write(
            &path,
            format!(
                "{SERVICE}---\n{}",
                SERVICE.replace("web", "api").replace(".80", ".81")
            ),
        )
        .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(
            services(&rx),
            Some(2),
            "only the settled version is published"
        );
        // A file that really is emptied (and stays so) is published as empty.
        std::fs::write(&path, "").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(services(&rx), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
