//! Objects from files: `--objects PATH` without `--dry-run` makes the agent read Services,
//! EndpointSlices and its Node from files and re-read them when they change, for static nodes,
//! demos, and end-to-end tests without a cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

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

/// How long a change may go unread while the files keep changing: a writer rewriting them
/// faster than the poll (a generator) would otherwise never be read.
const MAX_UNSETTLED: Duration = Duration::from_secs(2);

/// Watches `paths` by polling (every `interval`) and publishes each successful re-read. A file
/// that fails to parse keeps the previous snapshot in place: a half-written file must never
/// empty the node's rules. A change is read once it has settled — the same sizes and
/// modification times on two polls in a row — so a file being copied in (truncated, then
/// written) is not taken for an empty one; files that keep changing are read anyway once
/// [`MAX_UNSETTLED`] has passed since the change was first seen. Either way a read counts only
/// if the files did not change while being read. Writers that can should still replace files
/// by rename.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    tx: watch::Sender<Option<FileSnapshot>>,
) {
    let mut last = Fingerprint::default();
    let mut last_failed = Fingerprint::default();
    // The version the previous poll saw, when it was not yet read.
    let mut settling: Option<Fingerprint> = None;
    // When a version other than `last` was first seen.
    let mut changed_since: Option<Instant> = None;
    loop {
        let now = fingerprint(&paths);
        if now == last {
            settling = None;
            changed_since = None;
        } else {
            let settled = settling.as_ref() == Some(&now);
            let overdue = changed_since.get_or_insert_with(Instant::now).elapsed() >= MAX_UNSETTLED;
            if !settled && !overdue {
                // First sight of this version: read it on the next poll if it is still the same.
                settling = Some(now);
            } else {
                let mut warnings = Vec::new();
                let read = objects::load_paths(&paths, &mut warnings);
                if fingerprint(&paths) != now {
                    // Changed while being read: wait for it to settle again (or, overdue, try
                    // again on the next poll).
                    settling = None;
                } else {
                    match read {
                        Ok(objects) => {
                            tracing::info!(
                                services = objects.services.len(),
                                endpoint_slices = objects.endpoint_slices.len(),
                                nodes = objects.nodes.len(),
                                settled,
                                "read objects from files"
                            );
                            last = now;
                            settling = None;
                            changed_since = None;
                            if tx.send(Some(FileSnapshot { objects, warnings })).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Retried on the next tick; logged once per version.
                            if now != last_failed {
                                tracing::warn!(error = %e, "cannot read objects; keeping the previous ones");
                                last_failed = now.clone();
                            }
                            settling = Some(now);
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

    /// Issue #15: a file rewritten faster than the poll (every 60 ms, 500 times: 30 s of a
    /// generator) never looked the same on two polls, so it was not read for the whole 30 s.
    /// Now it is read at most a couple of seconds after a change is seen, settled or not; every
    /// version read is one the writer finished, and the last one once the writer stops.
    #[tokio::test(start_paused = true)]
    async fn a_file_rewritten_faster_than_the_poll_is_still_read() {
        const WRITES: u32 = 500;
        let dir = std::env::temp_dir().join(format!("kprs-files-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("objects.yaml");
        // Version i: the Service web, and api with a cluster IP that names i.
        let version = |i: u32| {
            let api = format!("10.96.{}.{}", 1 + i / 250, i % 250);
            format!(
                "{SERVICE}---\n{}",
                SERVICE.replace("web", "api").replace("10.96.0.80", &api)
            )
        };
        let version_read = |rx: &watch::Receiver<Option<FileSnapshot>>| -> u32 {
            let snapshot = rx.borrow();
            let services = &snapshot.as_ref().expect("a snapshot").objects.services;
            assert_eq!(services.len(), 2, "a version the writer finished");
            let ip = services
                .iter()
                .find(|s| s.object.metadata.name.as_deref() == Some("api"))
                .and_then(|s| s.object.spec.as_ref()?.cluster_ip.clone())
                .expect("api's cluster IP");
            let octets: Vec<u32> = ip.split('.').map(|o| o.parse().unwrap()).collect();
            (octets[2] - 1) * 250 + octets[3]
        };
        std::fs::write(&path, version(0)).unwrap();
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(watch_files(
            vec![path.clone()],
            Duration::from_millis(250),
            tx,
        ));
        rx.changed().await.unwrap();
        assert_eq!(version_read(&rx), 0);
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                for i in 1..=WRITES {
                    std::fs::write(&path, version(i)).unwrap();
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            })
        };
        // Every read is a newer version, so this ends by the last one, or fails on a wait. The
        // bound: a couple of seconds unsettled (MAX_UNSETTLED), and a poll.
        let mut read = vec![0];
        while read.last() != Some(&WRITES) {
            let waited = tokio::time::timeout(Duration::from_secs(3), rx.changed()).await;
            assert!(
                waited.is_ok(),
                "nothing read for 3 s after version {:?}",
                read.last()
            );
            let v = version_read(&rx);
            assert!(v > *read.last().unwrap(), "{v} read after {read:?}");
            read.push(v);
        }
        writer.await.unwrap();
        assert!(read.len() > 10, "read only {read:?} of {WRITES} versions");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
