//! [`IndexSource`]: the [`ChunkSource`] of a running peer, backed by the
//! local index, plus the files this peer moved into its version history
//! while running (so content replaced a moment ago, such as the losing side
//! of a conflict, can still be copied locally or served by hash).
//!
//! Every location is a hint; readers verify hashes
//! ([`crate::transfer::chunk_source::read_verified`]). A location in the
//! folder carries the stamp its index entry recorded, so the piece server
//! may skip re-hashing a file that still shows it
//! ([`crate::transfer::chunk_source::read_served`]); history files carry
//! none.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use dartsync_shared::{ChunkInfo, ContentHash};

use crate::jail::JailError;
use crate::local::dirs::Jails;
use crate::local::index::{Index, IndexEntry};
use crate::local::stat::StatKey;
use crate::transfer::chunk_source::{Candidate, ChunkSource, Stamp};

/// History chunk locations remembered at most (older ones are forgotten).
const MAX_HISTORY_CHUNKS: usize = 200_000;

/// Chunks of files moved into the version history.
#[derive(Debug, Default)]
struct HistoryChunks {
    lists: HashMap<ContentHash, Vec<ChunkInfo>>,
    chunks: HashMap<ContentHash, Vec<(PathBuf, u64, u32)>>,
    count: usize,
}

/// Local content lookup for the piece server and the downloader.
#[derive(Debug)]
pub struct IndexSource {
    index: Index,
    /// Candidates are opened through these: the folder for indexed files,
    /// the history for replaced ones.
    jails: Jails,
    history: Mutex<HistoryChunks>,
}

impl IndexSource {
    /// A source over `index` for the folder of `jails`.
    pub fn new(index: Index, jails: Jails) -> Self {
        IndexSource { index, jails, history: Mutex::new(HistoryChunks::default()) }
    }

    /// Remembers that the indexed file `entry` is at `saved` (inside the
    /// version history) from now on: called just before it moves or is
    /// linked there ([`crate::sync::history::BeforeKeep`]), so a download
    /// copying its chunks finds them at one place or the other at every
    /// moment. Only files have chunks; other entries are ignored.
    pub(crate) fn remember_entry(&self, entry: Option<&IndexEntry>, saved: &Path) {
        let Some(IndexEntry { record, chunks, .. }) = entry.filter(|e| e.record.is_file()) else { return };
        let mut h = self.history.lock();
        if h.count + chunks.len() > MAX_HISTORY_CHUNKS {
            *h = HistoryChunks::default();
        }
        h.lists.insert(record.content, chunks.clone());
        for c in chunks {
            h.chunks.entry(c.hash).or_default().push((saved.to_owned(), c.offset, c.len));
        }
        h.count += chunks.len();
    }
}

impl ChunkSource for IndexSource {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        if let Ok(Some(list)) = self.index.chunk_list(content) {
            return Some(list);
        }
        let h = self.history.lock();
        h.lists.get(content).cloned()
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self
            .index
            .locate_chunk(hash)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.len == len)
            .map(|l| Candidate {
                path: l.path.to_local(self.jails.folder.root()),
                offset: l.offset,
                stamp: l.stat.as_ref().map(stamp_of),
            })
            .collect();
        let h = self.history.lock();
        if let Some(found) = h.chunks.get(hash) {
            out.extend(found.iter().filter(|(_, _, l)| *l == len).map(|(p, o, _)| Candidate::unvouched(p.clone(), *o)));
        }
        out
    }

    fn open_candidate(&self, path: &Path) -> std::io::Result<File> {
        let opened = if let Ok(rel) = path.strip_prefix(self.jails.versions.root()) {
            self.jails.versions.open_read(rel)
        } else if let Ok(rel) = path.strip_prefix(self.jails.folder.root()) {
            self.jails.folder.open_read(rel)
        } else {
            return Err(std::io::Error::other(format!("{} is outside the folder", path.display())));
        };
        opened.map_err(|e| match e {
            JailError::NotFound { .. } => std::io::Error::from(std::io::ErrorKind::NotFound),
            other => std::io::Error::other(other),
        })
    }
}

/// The transfer layer's stamp of an index stat (its content part).
fn stamp_of(stat: &StatKey) -> Stamp {
    Stamp { size: stat.size, mtime_ns: stat.mtime_ns, inode: stat.inode }
}
