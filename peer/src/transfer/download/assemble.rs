//! The partial file of one download on disk, before and after the
//! network phase: resume the verified chunks of an earlier run, copy every
//! chunk a local file already holds (delta sync, renames), and at the end
//! verify the whole file and hand it out under a unique `.done` name (a
//! download too small to resume is written under that name from the
//! start). Blocking: the orchestrator runs it in `spawn_blocking`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dartsync_shared::chunk::is_one_whole_chunk;
use dartsync_shared::{ChunkInfo, ContentHash};
use tokio_util::sync::CancellationToken;

use super::worker::Group;
use crate::transfer::chunk_source::{ChunkSource, OpenCandidates, hash_file_from};
use crate::transfer::part::{self, Bitmap, PartState};

/// The result of step 2.
pub(super) struct Prepared {
    pub(super) file: Arc<File>,
    /// `done` = every chunk in place after resume and local copies.
    pub(super) header: PartState,
    /// Groups still to fetch.
    pub(super) missing: Vec<usize>,
    pub(super) bytes_resumed: u64,
    pub(super) bytes_local: u64,
}

/// Reads chunk `c` from the open `.part` and returns it if it verifies.
fn read_part_chunk(file: &File, c: &ChunkInfo) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0u8; c.len as usize];
    match file.read_exact_at(&mut bytes, c.offset) {
        Ok(()) => Ok((ContentHash::of(&bytes) == c.hash).then_some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file a download assembles into.
#[derive(Debug, Clone)]
pub(super) struct TempFile {
    /// The downloader's temp folder (made when missing).
    pub(super) dir: PathBuf,
    /// `<content>.part` for a `resumable` download (found again by a later
    /// run, and by the piece server); a smaller one is written straight
    /// under a fresh `<content>.<n>.done` name, so finishing it needs no
    /// rename. Such a file is handed out only once verified, removed by
    /// the download if it fails, and after a crash only ever removed (no
    /// run trusts a `.done` it did not make).
    pub(super) path: PathBuf,
    /// Progress is persisted for a resume (the file is bigger than
    /// `persist_every_bytes`).
    pub(super) resumable: bool,
}

impl TempFile {
    pub(super) fn new(dir: &Path, content: &ContentHash, resumable: bool) -> TempFile {
        let path = if resumable { part::part_path(dir, content) } else { part::fresh_done_path(dir, content) };
        TempFile { dir: dir.to_owned(), path, resumable }
    }
}

/// Step 2 (blocking): open the file at `temp`, keep verified chunks of an
/// earlier run (only a resumable download looks for them: a smaller one
/// never saves its progress), copy what local files hold. Errors carry the
/// path they concern.
pub(super) fn prepare(
    temp: &TempFile,
    mut header: PartState,
    chunks: &[ChunkInfo],
    groups: &[Group],
    source: &dyn ChunkSource,
    cancel: &CancellationToken,
) -> Result<Prepared, (PathBuf, std::io::Error)> {
    let (tmp_dir, part) = (temp.dir.as_path(), &temp.path);
    let at_part = |e| (part.clone(), e);
    let file = part::create_in_tmp(tmp_dir, part, part::open_part)?;
    let previous = if temp.resumable {
        let current_len = file.metadata().map_err(at_part)?.len();
        part::load_state(&part::state_path(tmp_dir, &header.content), chunks.len()).filter(|s| {
            s.content == header.content
                && s.chunks_hash == header.chunks_hash
                && s.size == header.size
                && s.done.len() == chunks.len()
                && current_len == header.size
        })
    } else {
        None
    };
    let mut done = match previous {
        Some(state) => state.done,
        None => {
            // Unknown contents: start from a clean, sparse file.
            file.set_len(0).map_err(at_part)?;
            Bitmap::new(chunks.len())
        }
    };
    file.set_len(header.size).map_err(at_part)?;

    let mut bytes_resumed = 0;
    let marked = done.count();
    for (i, c) in chunks.iter().enumerate() {
        if done.get(i) {
            if read_part_chunk(&file, c).map_err(at_part)?.is_some() {
                bytes_resumed += u64::from(c.len);
            } else {
                done.set(i, false);
            }
        }
    }
    if marked > 0 {
        tracing::debug!(part = %part.display(), marked, verified = done.count(), bytes_resumed, "resuming partial download");
    }

    let wanted: Vec<usize> = (0..groups.len()).filter(|&g| !groups[g].members.iter().all(|&i| done.get(i))).collect();
    let mut copy = LocalCopy { file: &file, chunks, groups, source, cancel, done: &mut done, bytes: 0 };
    // Two passes. A file moved into the history while this one copies (a
    // rename's tombstone applied at the same time) is known to the source
    // under its history name before it moves, so it is found at one place
    // or the other; other local changes meanwhile (a file the scanner
    // re-indexed elsewhere) are not. The second pass looks again, with
    // fresh opens, at everything the first could not copy, once the rest
    // of the file is copied.
    let misses = copy.pass(wanted).map_err(at_part)?;
    let missing = copy.pass(misses).map_err(at_part)?;
    let bytes_local = copy.bytes;
    header.done = done;
    Ok(Prepared { file: Arc::new(file), header, missing, bytes_resumed, bytes_local })
}

/// Copies chunks from local files into the `.part`.
struct LocalCopy<'a> {
    file: &'a File,
    chunks: &'a [ChunkInfo],
    groups: &'a [Group],
    source: &'a dyn ChunkSource,
    cancel: &'a CancellationToken,
    done: &'a mut Bitmap,
    /// Bytes written so far (every member offset counted).
    bytes: u64,
}

impl LocalCopy<'_> {
    /// Copies each group of `todo` a local file (or a done member) has;
    /// returns the others, in order.
    fn pass(&mut self, todo: Vec<usize>) -> std::io::Result<Vec<usize>> {
        let mut open = OpenCandidates::default();
        let mut misses = Vec::new();
        for g in todo {
            let group = &self.groups[g];
            if self.cancel.is_cancelled() {
                misses.push(g);
                continue;
            }
            let bytes = match group.members.iter().find(|&&i| self.done.get(i)) {
                Some(&i) => read_part_chunk(self.file, &self.chunks[i])?,
                None => {
                    open.read_verified(self.source, &self.source.locate(&group.hash, group.len), group.len, &group.hash)
                }
            };
            let Some(bytes) = bytes else {
                misses.push(g);
                continue;
            };
            for &i in &group.members {
                if !self.done.get(i) {
                    self.file.write_all_at(&bytes, self.chunks[i].offset)?;
                    self.done.set(i, true);
                    self.bytes += u64::from(group.len);
                }
            }
        }
        Ok(misses)
    }
}

pub(super) enum FinishError {
    Io(PathBuf, std::io::Error),
    Mismatch(ContentHash),
}

/// Step 4 (blocking): verify the whole file at `temp` (unless it is
/// [`is_one_whole_chunk`]: every chunk is checked against its hash before
/// it is written, fetched, copied or resumed): `hashed` is the whole-file
/// hasher fed with the file's first bytes as they were written, and how
/// many; the rest is read from disk. Then hand it out under a unique `.done` name (a
/// resumable download's `.part` is renamed to one; a smaller download
/// already has one), drop the state file (a resumable download's: no
/// other writes one). Nothing is fsynced here: the installer fsyncs the
/// file before renaming it into place, and a `.done` lost in a crash is
/// fetched again.
pub(super) fn finish(
    temp: &TempFile,
    content: &ContentHash,
    chunks: &[ChunkInfo],
    hashed: (blake3::Hasher, u64),
) -> Result<PathBuf, FinishError> {
    let (part, resumable) = (temp.path.as_path(), temp.resumable);
    let state = part::state_path(&temp.dir, content);
    let drop_state = |state: &Path| if resumable { part::remove_if_exists(state) } else { Ok(()) };
    let at = |p: &Path| {
        let p = p.to_owned();
        move |e| FinishError::Io(p, e)
    };
    let actual = if is_one_whole_chunk(chunks, content) {
        *content
    } else {
        let (hasher, from) = hashed;
        hash_file_from(part, hasher, from).map_err(at(part))?
    };
    if actual != *content {
        part::remove_if_exists(part).map_err(at(part))?;
        drop_state(&state).map_err(at(&state))?;
        return Err(FinishError::Mismatch(actual));
    }
    if !resumable {
        return Ok(part.to_owned());
    }
    let done = part::fresh_done_path(&temp.dir, content);
    std::fs::rename(part, &done).map_err(at(&done))?;
    drop_state(&state).map_err(at(&state))?;
    Ok(done)
}
