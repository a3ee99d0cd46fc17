//! Receive-only folders: the engine's side. Local changes (reported by the
//! scanner, which never indexes them in such a folder) are kept on disk,
//! listed in the status and never announced. `revert` — and a newer
//! version from the cluster — puts the cluster's version back, moving the
//! local one into the version history first.
//!
//! Owns [`LocalEdits`] (the kept changes), the engine's answer to a
//! cluster version arriving over a local edit, and [`EngineCommand`], the
//! requests the control socket hands the engine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dartsync_shared::human::plural;
use dartsync_shared::status::MAX_LISTED;
use dartsync_shared::{Causality, FileRecord, RelPath};
use tokio::sync::oneshot;

use super::{Engine, GlobalEntry};
use crate::local::index::IndexEntry;
use crate::sync::error::ApplyError;

/// Kept local changes are re-checked this often (a user may undo one by
/// hand).
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// At most this many are re-checked per round (each may hash a file).
const VERIFY_BATCH: usize = 64;

/// A request the control socket hands the engine.
#[derive(Debug)]
pub enum EngineCommand {
    /// Put back the cluster's version of every kept local change under
    /// `under` (everywhere when `None`).
    Revert {
        /// The subtree.
        under: Option<RelPath>,
        /// The answer: what was put back, or why not.
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// Local changes a receive-only folder keeps and does not send, by path.
#[derive(Debug, Default)]
pub(super) struct LocalEdits {
    edits: BTreeMap<RelPath, FileRecord>,
    verified: Option<Instant>,
    /// Where the last verification round stopped.
    cursor: Option<RelPath>,
}

impl LocalEdits {
    /// The paths, at most [`MAX_LISTED`], and how many in all.
    pub(super) fn listed(&self) -> (Vec<String>, u64) {
        (self.edits.keys().take(MAX_LISTED).map(ToString::to_string).collect(), self.edits.len() as u64)
    }

    /// The kept paths under `under` (all when `None`), deepest first.
    fn under(&self, under: Option<&RelPath>) -> Vec<RelPath> {
        let mut paths: Vec<RelPath> =
            self.edits.keys().filter(|p| under.is_none_or(|u| *p == u || p.starts_with(u))).cloned().collect();
        paths.reverse();
        paths
    }
}

impl Engine {
    /// Keeps a burst of local changes of a receive-only folder: listed,
    /// never announced. Logs only what is new (full rescans report the
    /// same changes again).
    pub(super) fn keep_local(&mut self, batch: Vec<FileRecord>) {
        let mut fresh = Vec::new();
        for record in batch {
            for path in self.waiting.wake_under(&record.path) {
                self.dirty.insert(path);
            }
            let path = record.path.clone();
            if self.local_edits.edits.insert(path.clone(), record.clone()).as_ref() != Some(&record) {
                fresh.push(path);
            }
        }
        let Some(first) = fresh.first() else { return };
        let n = fresh.len() as u64;
        let more = if n > 1 { format!(" and {} more", n - 1) } else { String::new() };
        self.parts.status.event(format!("kept {n} local {} (receive-only): {first}{more}", plural(n, "change")));
        tracing::info!(
            "{n} local {} kept here and not sent (receive-only folder): {first}{more}; \
             `dartsync revert` puts back the cluster's version",
            plural(n, "change")
        );
    }

    /// The cluster's version of `path` met a local edit in a receive-only
    /// folder. The same content is adopted; a newer cluster version (or
    /// one this peer never had) wins, the local one going to the history;
    /// otherwise the local edit stays.
    pub(super) async fn cluster_over_local(
        &mut self,
        path: &RelPath,
        global: &GlobalEntry,
        before: Option<&IndexEntry>,
    ) -> Result<(), ApplyError> {
        let record = &global.record;
        if self.parts.local.adopt_version(record).await? {
            self.local_edits.edits.remove(path);
            self.have(record).await;
            return Ok(());
        }
        let newer = match before {
            Some(b) => record.version.compare(&b.record.version) == Causality::Dominates,
            // A path this peer never had: the cluster's file wins over an
            // unsent local one; a deletion of it is no news.
            None => !record.deleted,
        };
        if !newer {
            return Ok(());
        }
        let saved = self.put_back(path).await?;
        let kept = saved.map_or_else(String::new, |s| format!("; the local version is kept at {}", s.display()));
        tracing::warn!(
            "{path} changed in the cluster and here (receive-only folder): taking the cluster's version{kept}"
        );
        self.parts.status.event(format!("replaced local change of {path} by the cluster's version"));
        Ok(())
    }

    /// `revert`: puts back the cluster's version of every kept local
    /// change under `under`.
    pub(super) async fn revert(&mut self, under: Option<RelPath>) -> Result<serde_json::Value, String> {
        if !self.parts.receive_only {
            return Err("this folder is not receive-only: its local changes are sent to the cluster, so there \
                        is nothing to revert (to undo a change, restore an old version: `dartsync versions PATH`)"
                .to_owned());
        }
        let paths = self.local_edits.under(under.as_ref());
        let (mut reverted, mut saved, mut failed) = (Vec::new(), 0u64, Vec::new());
        for path in paths {
            match self.put_back(&path).await {
                Ok(kept) => {
                    saved += u64::from(kept.is_some());
                    reverted.push(path.to_string());
                }
                Err(e) => failed.push(format!("{path}: {e}")),
            }
        }
        let n = reverted.len() as u64;
        if n > 0 {
            let first = &reverted[reverted.len() - 1];
            let more = if n > 1 { format!(" and {} more", n - 1) } else { String::new() };
            tracing::info!("reverted {n} local {}: {first}{more}", plural(n, "change"));
            self.parts.status.event(format!("reverted {n} local {}", plural(n, "change")));
        }
        for f in &failed {
            tracing::warn!("cannot revert {f}");
        }
        reverted.reverse();
        reverted.truncate(MAX_LISTED);
        Ok(serde_json::json!({ "reverted": n, "saved": saved, "paths": reverted, "failed": failed }))
    }

    /// Moves whatever the disk holds at `path` into the history (an empty
    /// folder is removed, a non-empty one kept) and forgets the index
    /// entry, so the path is planned afresh from the global record.
    /// Returns where the local version went.
    pub(super) async fn put_back(&mut self, path: &RelPath) -> Result<Option<std::path::PathBuf>, ApplyError> {
        self.cancel_download(path);
        let applier = self.applier.clone();
        let p = path.clone();
        // The local version's record, when the scanner reported it (its
        // author is this device).
        let local = self.local_edits.edits.get(path).cloned();
        let saved = self.parts.local.set_aside(path, move || applier.set_aside(&p, local.as_ref())).await?;
        self.local_edits.edits.remove(path);
        if self.global.contains_key(path) {
            self.dirty.insert(path.clone());
        }
        Ok(saved)
    }

    /// Drops kept changes the disk no longer has (undone by hand), a few
    /// at a time, every [`VERIFY_EVERY`].
    pub(super) async fn verify_local_edits(&mut self, now: Instant) {
        if self.local_edits.edits.is_empty() || self.local_edits.verified.is_some_and(|at| now - at < VERIFY_EVERY) {
            return;
        }
        self.local_edits.verified = Some(now);
        let start = self.local_edits.cursor.take();
        let batch: Vec<RelPath> = self
            .local_edits
            .edits
            .keys()
            .filter(|p| start.as_ref().is_none_or(|s| *p > s))
            .take(VERIFY_BATCH)
            .cloned()
            .collect();
        if batch.len() == VERIFY_BATCH {
            self.local_edits.cursor = batch.last().cloned();
        }
        for path in batch {
            if let Ok((_, false)) = self.parts.local.local_view(&path).await {
                tracing::debug!(%path, "local change undone");
                self.local_edits.edits.remove(&path);
            }
        }
    }
}
