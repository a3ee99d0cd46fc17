//! [`Installer`]: moves finished downloads into the folder through the
//! write gate, and tells the chunk source where replaced content went.
//!
//! Download tasks hand their verified files to one installing task, which
//! takes everything queued at that moment (at most [`MAX_BATCH`]) as one
//! batch: one blocking task, one hold of the commit lock, one index commit
//! ([`LocalState::apply_all_if_unmodified`]). A burst of small files costs
//! a transaction per batch, not per file; a lone file is installed at once.
//!
//! While other downloads are still fetching ([`MoreComing`]), a small batch
//! waits up to [`GATHER`] for them (at most until it has [`GATHER_UP_TO`]
//! files): in a burst the installer otherwise kept up file by file, a
//! commit and a blocking task each (measured: 2,682 batches for 10,000
//! files). A lone download, or the last of a burst, never waits.
//!
//! The one authoritative check — the disk still equals the index and the
//! record supersedes the indexed version — happens for each file under the
//! commit lock; nothing here repeats it optimistically. The `.done` temp
//! file is consumed (renamed into place), removed when the write gate
//! refuses it, or left for the engine when the install fails (it retries
//! only the install).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dartsync_shared::FileRecord;
use dartsync_shared::chunk::ChunkInfo;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant, timeout_at};

use crate::local::commit::{Gated, Wrote};
use crate::local::index::Index;
use crate::local::{LocalError, LocalState};
use crate::sync::apply::Applier;
use crate::sync::error::ApplyError;
use crate::sync::history::BeforeKeep;
use crate::sync::index_source::IndexSource;
use crate::transfer::DownloadOutcome;

/// Files installed in one batch at most (the commit lock is held for the
/// whole batch, so a scan waits at most that long).
const MAX_BATCH: usize = 128;
/// Installs waiting for the installing task at most; a download task
/// beyond that waits for room (the engine bounds them anyway).
const QUEUE: usize = 1024;
/// Longest wait for more files before a batch is installed, while other
/// downloads are fetching (see the module header).
const GATHER: Duration = Duration::from_millis(10);
/// A batch this big is installed without waiting for more.
const GATHER_UP_TO: usize = 32;

/// True while other downloads are still fetching, so more verified files
/// are coming soon (the engine's download slots in use).
pub(crate) type MoreComing = Arc<dyn Fn() -> bool + Send + Sync>;

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

/// One verified download waiting to be installed.
struct Request {
    record: FileRecord,
    chunks: Vec<ChunkInfo>,
    temp: PathBuf,
    reply: oneshot::Sender<Result<Gated<()>, ApplyError>>,
}

/// What a download task needs to move its result into place; cheap to
/// clone. The installing task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Installer {
    pub(crate) applier: Applier,
    queue: mpsc::Sender<Request>,
}

impl Installer {
    /// Starts the installing task (needs a tokio runtime).
    pub(crate) fn start(
        applier: Applier,
        local: LocalState,
        source: Arc<IndexSource>,
        more_coming: MoreComing,
    ) -> Installer {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(install_batches(requests, applier.clone(), local, source, more_coming));
        Installer { applier, queue }
    }

    /// Moves a verified download into place unless the write gate refuses.
    pub(crate) async fn install(&self, record: &FileRecord, outcome: &DownloadOutcome) -> Installed {
        let (reply, answer) = oneshot::channel();
        let request =
            Request { record: record.clone(), chunks: outcome.chunks.clone(), temp: outcome.temp_path.clone(), reply };
        let stopped = || Err(ApplyError::from(LocalError::Stopped));
        let result = match self.queue.send(request).await {
            Ok(()) => answer.await.unwrap_or_else(|_| stopped()),
            Err(_) => stopped(),
        };
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

/// The installing task: everything queued at once is one batch.
async fn install_batches(
    mut requests: mpsc::Receiver<Request>,
    applier: Applier,
    local: LocalState,
    source: Arc<IndexSource>,
    more_coming: MoreComing,
) {
    while let Some(first) = requests.recv().await {
        let batch = gather(first, &mut requests, &*more_coming).await;
        let (writes, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|r| {
                let op = install_op(&applier, local.index(), &source, r.record.clone(), r.temp);
                ((r.record, r.chunks, op), r.reply)
            })
            .unzip();
        let results = local.apply_all_if_unmodified(writes).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // A download task that is gone no longer needs the answer.
            let _ = reply.send(result);
        }
    }
}

/// One batch: `first`, everything queued behind it, and while downloads
/// are still fetching and the batch is small, what arrives within
/// [`GATHER`] (see the module header).
async fn gather(
    first: Request,
    requests: &mut mpsc::Receiver<Request>,
    more_coming: &(dyn Fn() -> bool + Send + Sync),
) -> Vec<Request> {
    let mut batch = vec![first];
    let take_queued = |batch: &mut Vec<Request>, requests: &mut mpsc::Receiver<Request>| {
        while batch.len() < MAX_BATCH
            && let Ok(next) = requests.try_recv()
        {
            batch.push(next);
        }
    };
    take_queued(&mut batch, requests);
    let deadline = Instant::now() + GATHER;
    while batch.len() < GATHER_UP_TO && more_coming() {
        match timeout_at(deadline, requests.recv()).await {
            Ok(Some(next)) => {
                batch.push(next);
                take_queued(&mut batch, requests);
            }
            // The wait is over, or every download task is gone.
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

/// The write of one install, run under the commit lock: the verified
/// temp file renamed over `target.path`, what it replaces saved in the
/// history first.
fn install_op(
    applier: &Applier,
    index: &Index,
    source: &Arc<IndexSource>,
    target: FileRecord,
    temp: PathBuf,
) -> impl FnOnce() -> Result<Option<Wrote<()>>, ApplyError> + Send + 'static {
    let (applier, previous, source) = (applier.clone(), index.clone(), source.clone());
    move || {
        // The entry being replaced, read under the commit lock so it is
        // exactly what the history receives.
        let before = previous.get(&target.path)?;
        // The chunk source learns where the old content goes before it
        // goes, so a download copying its chunks right now finds them at
        // one place or the other.
        let remember = |saved: &Path| source.remember_entry(before.as_ref(), saved);
        let made = applier.install(&target, &temp, before.as_ref().map(|b| &b.record), Some(BeforeKeep(&remember)))?;
        Ok(Some(Wrote { value: (), made: Some(made) }))
    }
}

#[cfg(test)]
mod tests {
    use dartsync_shared::test_util::RecordBuilder;

    use super::*;

    fn request(name: &str) -> Request {
        let (reply, _) = oneshot::channel();
        Request { record: RecordBuilder::file(name).build(), chunks: Vec::new(), temp: PathBuf::from(name), reply }
    }

    fn names(batch: &[Request]) -> Vec<&str> {
        batch.iter().map(|r| r.record.path.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_batch_waits_briefly_for_files_still_fetching_and_a_lone_file_never_waits() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        // Nothing else fetching: installed at once, alone.
        tx.send(request("a")).await.unwrap();
        let first = rx.recv().await.unwrap();
        let start = Instant::now();
        assert_eq!(names(&gather(first, &mut rx, &|| false).await), ["a"]);
        assert_eq!(start.elapsed(), Duration::ZERO, "a lone file does not wait");

        // Others fetching: a file verified within GATHER joins the batch,
        // and the batch goes once GATHER is over.
        tx.send(request("b")).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GATHER / 2).await;
            late.send(request("c")).await.unwrap();
        });
        let first = rx.recv().await.unwrap();
        let start = Instant::now();
        assert_eq!(names(&gather(first, &mut rx, &|| true).await), ["b", "c"]);
        assert_eq!(start.elapsed(), GATHER, "the wait is bounded");

        // A batch of GATHER_UP_TO files goes without waiting.
        for i in 0..GATHER_UP_TO {
            tx.send(request(&format!("f{i}"))).await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        let start = Instant::now();
        assert_eq!(gather(first, &mut rx, &|| true).await.len(), GATHER_UP_TO);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
