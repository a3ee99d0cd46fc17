//! [`Installer`]: moves a finished download into the folder through the
//! write gate, inside the download's own task (so installs run
//! concurrently), and tells the chunk source where the replaced content
//! went.
//!
//! The one authoritative check — the disk still equals the index and the
//! record supersedes the indexed version — happens under the commit lock
//! in [`LocalState::apply_if_unmodified`]; nothing here repeats it
//! optimistically. The `.done` temp file is consumed (renamed into place),
//! removed when the write gate refuses it, or left for the engine when the
//! install fails (it retries only the install).

use std::sync::Arc;

use dartsync_shared::FileRecord;

use crate::local::LocalState;
use crate::local::commit::Gated;
use crate::sync::apply::Applier;
use crate::sync::error::ApplyError;
use crate::sync::index_source::IndexSource;
use crate::transfer::DownloadOutcome;

/// What became of a finished download.
#[derive(Debug)]
pub(crate) enum Installed {
    /// In place, indexed.
    Yes,
    /// Not installed: the local file was edited meanwhile or holds a
    /// version the record does not supersede (the scanner re-checks it), or
    /// the download was no longer wanted.
    Skipped,
    /// Installing failed.
    Failed(ApplyError),
}

/// What a download task needs to move its result into place; cheap to
/// clone.
#[derive(Debug, Clone)]
pub(crate) struct Installer {
    pub(crate) applier: Applier,
    pub(crate) local: LocalState,
    pub(crate) source: Arc<IndexSource>,
}

impl Installer {
    /// Moves a verified download into place unless the write gate refuses.
    pub(crate) async fn install(&self, record: &FileRecord, outcome: &DownloadOutcome) -> Installed {
        let (applier, temp) = (self.applier.clone(), outcome.temp_path.clone());
        let target = record.clone();
        let (previous, source) = (self.local.index().clone(), self.source.clone());
        let result = self
            .local
            .apply_if_unmodified(record.clone(), outcome.chunks.clone(), move || {
                // The entry being replaced, read under the commit lock so it
                // is exactly what the history receives.
                let before = previous.get(&target.path)?;
                let saved = applier.install(&target, &temp, before.as_ref().map(|b| &b.record))?;
                // Known to the chunk source before the index forgets the old
                // content, so a download copying its chunks right now finds
                // them in the history.
                if let (Some(saved), Some(before)) = (saved, before)
                    && before.record.is_file()
                {
                    source.remember_history(saved, before.record.content, &before.chunks);
                }
                Ok::<_, ApplyError>(Some(()))
            })
            .await;
        let installed = match result {
            Ok(Gated::Applied { .. }) => return Installed::Yes,
            Ok(Gated::Refused | Gated::Declined) => Installed::Skipped,
            // The verified file stays in `.dartsync/tmp`: the engine keeps
            // it to retry only the install, or discards it.
            Err(e) => return Installed::Failed(e),
        };
        // Not wanted here: the temp file is ours to remove.
        self.applier.discard_temp(&outcome.temp_path);
        installed
    }
}
