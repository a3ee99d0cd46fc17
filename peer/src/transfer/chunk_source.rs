//! Where local content can be found: the [`ChunkSource`] trait the piece
//! server and the downloader read through, plus verified chunk reads.
//!
//! The transfer layer never walks the synced folder itself. It asks a
//! `ChunkSource` (the local index, implemented by the peer's index module;
//! [`MemoryChunkSource`] here for tests and tools) for the chunk list of a
//! content hash and for *candidate* places where a chunk might be read.
//!
//! # Invariants
//! - A candidate is only a hint: the file may have changed since it was
//!   indexed. Every read that is written anywhere goes through
//!   [`read_verified`], which re-hashes the bytes and returns them only when
//!   they hash to the requested chunk hash.
//! - Bytes for another peer ([`read_served`]) are re-hashed too, unless the
//!   source vouches for the candidate with a [`Stamp`] (the indexed file's
//!   size, mtime and inode when its chunks were hashed) and the open file
//!   shows that stamp both before and after the read: the test the scanner
//!   already uses to decide a file needs no re-hash. The receiver verifies
//!   every chunk in any case; the stamp spares the server a second hash of
//!   bytes it hashed when it indexed them. A `.part` file, a file in the
//!   version history, and any candidate whose stamp differs are hashed.
//! - Reads are bounded by the requested length, which callers have already
//!   checked against [`dartsync_shared::limits::MAX_CHUNK_LEN`].
//!
//! # Not here
//! No indexing policy (what is indexed, when it is refreshed), no async:
//! everything in this module blocks and is called from `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use dartsync_shared::chunk::{ChunkParams, ChunkedFile, chunk_reader};
use dartsync_shared::{ChunkInfo, ContentHash};

/// Where local content can be found. Implementations must be cheap to call
/// from `spawn_blocking`.
pub trait ChunkSource: Send + Sync + 'static {
    /// The chunk list of a file whose whole-file hash is `content`, if any
    /// local file has it.
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>>;

    /// Places where a chunk with this hash and length may be read
    /// (candidates; hints only, see the module's invariants).
    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate>;

    /// Opens a candidate [`locate`](Self::locate) named, for reading. The
    /// default opens the path as it is; the peer's index source opens it
    /// through the folder's jail, so a path whose parent became a symlink
    /// is never read.
    fn open_candidate(&self, path: &Path) -> std::io::Result<File> {
        File::open(path)
    }
}

/// A place where a chunk may be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute local path of the file.
    pub path: PathBuf,
    /// Where the chunk starts in it.
    pub offset: u64,
    /// The file's stamp when the chunk's hash was recorded, if the source
    /// vouches for it (read in one view with the location, so the two
    /// belong together); `None`: every read is hashed.
    pub stamp: Option<Stamp>,
}

impl Candidate {
    /// A candidate no stamp vouches for.
    pub fn unvouched(path: PathBuf, offset: u64) -> Candidate {
        Candidate { path, offset, stamp: None }
    }
}

/// What identifies a file's content without reading it: size, mtime and
/// inode (every write moves mtime; a replacement changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
}

impl Stamp {
    /// The stamp of an open file's metadata. Its mtime must be counted as
    /// the index counts an `lstat`'s (`jail::meta`), or no stamp would
    /// ever match (`local::tests` checks the two agree).
    pub fn of(meta: &Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// Reads `len` bytes at `offset` of `path` and returns them only if they
/// hash to `hash`. `Ok(None)` when the file is too short, is not a regular
/// file or holds other bytes there (changed since indexing); `Err` only for
/// other I/O errors (callers usually treat both as "not here").
pub fn read_at_verified(path: &Path, offset: u64, len: u32, hash: &ContentHash) -> std::io::Result<Option<Vec<u8>>> {
    read_opened_at_verified(File::open(path), offset, len, hash)
}

/// [`read_at_verified`] on a file opened by the caller (`NotFound` means
/// "not here").
fn read_opened_at_verified(
    file: std::io::Result<File>,
    offset: u64,
    len: u32,
    hash: &ContentHash,
) -> std::io::Result<Option<Vec<u8>>> {
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_file_at_verified(&file, offset, len, hash)
}

/// The `len` bytes at `offset` of an open `file`, if they hash to `hash`.
fn read_file_at_verified(file: &File, offset: u64, len: u32, hash: &ContentHash) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    Ok(read_file_at_checked(file, offset, len, hash, None, &mut bytes)?.then_some(bytes))
}

/// Reads the `len` bytes at `offset` of an open `file` into `buf` and
/// tells whether they may be used: they hash to `hash`, or `vouched` is
/// the file's stamp both before and after the read (then they are not
/// hashed).
fn read_file_at_checked(
    file: &File,
    offset: u64,
    len: u32,
    hash: &ContentHash,
    vouched: Option<Stamp>,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let meta = file.metadata()?;
    let end = offset.checked_add(u64::from(len));
    if !meta.is_file() || end.is_none_or(|end| end > meta.len()) || !read_exact_at(file, offset, len, buf)? {
        return Ok(false);
    }
    if let Some(stamp) = vouched
        && Stamp::of(&meta) == stamp
        && Stamp::of(&file.metadata()?) == stamp
    {
        return Ok(true);
    }
    Ok(ContentHash::of(buf) == *hash)
}

/// Reads exactly `len` bytes at `offset` of `file` into `buf` (replacing
/// what it held; false if the file ends first), without zeroing the room
/// first. Moves the file's own offset: each `File` here has one user at
/// a time.
fn read_exact_at(mut file: &File, offset: u64, len: u32, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    buf.reserve_exact(len as usize);
    file.seek(SeekFrom::Start(offset))?;
    file.take(u64::from(len)).read_to_end(buf)?;
    Ok(buf.len() == len as usize)
}

/// Tries each candidate `source` named in turn (opened through
/// [`ChunkSource::open_candidate`]) and returns the first bytes that hash to
/// `hash`. I/O errors on one candidate are logged at debug and skipped.
pub fn read_verified(
    source: &dyn ChunkSource,
    candidates: &[Candidate],
    len: u32,
    hash: &ContentHash,
) -> Option<Vec<u8>> {
    OpenCandidates::default().read_verified(source, candidates, len, hash)
}

/// [`read_verified`] for bytes that go to another peer, read into `buf`
/// (a buffer the caller reuses: its memory is already mapped): true when
/// `buf` holds them. A candidate the source vouches for with a [`Stamp`]
/// that the open file still shows before and after the read is not
/// hashed (the receiver verifies every chunk); every other candidate is.
pub fn read_served(
    source: &dyn ChunkSource,
    candidates: &[Candidate],
    len: u32,
    hash: &ContentHash,
    buf: &mut Vec<u8>,
) -> bool {
    OpenCandidates::default().read(source, candidates, len, hash, true, buf)
}

/// Most files [`OpenCandidates`] keeps open.
const MAX_OPEN_CANDIDATES: usize = 64;

/// [`read_verified`] for many chunks in a row (assembling one download):
/// a candidate file opened once stays open, so the chunks still to come
/// are read from it even if it is renamed or moved into the version
/// history meanwhile (a rename or a deletion applied while the file it
/// replaces is being copied from). Every read is verified as always.
#[derive(Debug, Default)]
pub struct OpenCandidates {
    /// Path -> the file opened there (`None`: could not be opened).
    files: HashMap<PathBuf, Option<File>>,
}

impl OpenCandidates {
    /// The first candidate's bytes that hash to `hash`.
    pub fn read_verified(
        &mut self,
        source: &dyn ChunkSource,
        candidates: &[Candidate],
        len: u32,
        hash: &ContentHash,
    ) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        self.read(source, candidates, len, hash, false, &mut bytes).then_some(bytes)
    }

    /// Reads into `buf` the first candidate's bytes that hash to `hash`
    /// or, with `trust_stamps`, that a still matching stamp vouches for;
    /// false if none.
    fn read(
        &mut self,
        source: &dyn ChunkSource,
        candidates: &[Candidate],
        len: u32,
        hash: &ContentHash,
        trust_stamps: bool,
        buf: &mut Vec<u8>,
    ) -> bool {
        for Candidate { path, offset, stamp } in candidates {
            if !self.files.contains_key(path) {
                if self.files.len() >= MAX_OPEN_CANDIDATES {
                    self.files.clear();
                }
                let opened = match source.open_candidate(path) {
                    Ok(file) => Some(file),
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "chunk candidate cannot be opened");
                        None
                    }
                };
                self.files.insert(path.clone(), opened);
            }
            let Some(Some(file)) = self.files.get(path) else { continue };
            let vouched = if trust_stamps { *stamp } else { None };
            match read_file_at_checked(file, *offset, len, hash, vouched, buf) {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::debug!(path = %path.display(), offset, chunk = %hash.fmt_short(), "chunk candidate is stale");
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), offset, chunk = %hash.fmt_short(), error = %e, "chunk candidate unreadable");
                }
            }
        }
        false
    }
}

/// An in-memory [`ChunkSource`] built by chunking files: for tests, tools
/// and benchmarks. Not the peer's index (that one persists and tracks file
/// changes); this one trusts what it was told until told otherwise, which
/// is exactly what makes it useful to test stale candidates.
#[derive(Debug, Default)]
pub struct MemoryChunkSource {
    inner: RwLock<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Whole-file hash -> chunk list.
    lists: HashMap<ContentHash, Vec<ChunkInfo>>,
    /// Chunk hash -> places it was seen.
    places: HashMap<ContentHash, Vec<(PathBuf, u64)>>,
    /// Path -> what was recorded for it, so a path can be forgotten.
    files: HashMap<PathBuf, ChunkedFile>,
}

impl MemoryChunkSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chunks the file at `path` (absolute) with `params` and records it,
    /// replacing whatever was recorded for that path. Returns the result.
    pub fn add_file(&self, path: &Path, params: ChunkParams) -> std::io::Result<ChunkedFile> {
        let chunked = chunk_reader(std::io::BufReader::new(File::open(path)?), params)?;
        self.add_chunked(path, chunked.clone());
        Ok(chunked)
    }

    /// Records `path` as holding `chunked` without reading it.
    pub fn add_chunked(&self, path: &Path, chunked: ChunkedFile) {
        let mut inner = self.inner.write().expect("memory chunk source lock poisoned");
        inner.forget(path);
        for chunk in &chunked.chunks {
            inner.places.entry(chunk.hash).or_default().push((path.to_owned(), chunk.offset));
        }
        inner.lists.insert(chunked.content, chunked.chunks.clone());
        inner.files.insert(path.to_owned(), chunked);
    }

    /// Forgets everything recorded for `path`.
    pub fn remove_file(&self, path: &Path) {
        self.inner.write().expect("memory chunk source lock poisoned").forget(path);
    }

    /// Chunks every regular file under `dir` (recursively, skipping
    /// symlinks) and records it. Returns how many files were added.
    pub fn add_dir(&self, dir: &Path, params: ChunkParams) -> std::io::Result<usize> {
        let mut count = 0;
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    self.add_file(&entry.path(), params)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

impl MemoryInner {
    fn forget(&mut self, path: &Path) {
        let Some(old) = self.files.remove(path) else { return };
        for chunk in &old.chunks {
            if let Some(places) = self.places.get_mut(&chunk.hash) {
                places.retain(|(p, o)| !(p == path && *o == chunk.offset));
                if places.is_empty() {
                    self.places.remove(&chunk.hash);
                }
            }
        }
        if !self.files.values().any(|f| f.content == old.content) {
            self.lists.remove(&old.content);
        }
    }
}

impl ChunkSource for MemoryChunkSource {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.read().expect("memory chunk source lock poisoned").lists.get(content).cloned()
    }

    fn locate(&self, hash: &ContentHash, _len: u32) -> Vec<Candidate> {
        let inner = self.inner.read().expect("memory chunk source lock poisoned");
        let places = inner.places.get(hash).map_or(&[][..], Vec::as_slice);
        places.iter().map(|(path, offset)| Candidate::unvouched(path.clone(), *offset)).collect()
    }
}

/// Streams a whole file through blake3.
#[cfg(test)]
pub(crate) fn hash_file(path: &Path) -> std::io::Result<ContentHash> {
    hash_file_from(path, blake3::Hasher::new(), 0)
}

/// Feeds the bytes of `path` from offset `from` to its end to `hasher`
/// (which has hashed the bytes before `from`) and returns the whole-file
/// hash: the final check of a download.
pub(crate) fn hash_file_from(path: &Path, mut hasher: blake3::Hasher, from: u64) -> std::io::Result<ContentHash> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::det_bytes;

    fn params() -> ChunkParams {
        ChunkParams::for_piece_len(4096)
    }

    #[test]
    fn files_are_located_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, det_bytes(1, 100_000)).unwrap();
        let src = MemoryChunkSource::new();
        let f = src.add_file(&a, params()).unwrap();
        assert!(f.chunks.len() > 3);
        assert_eq!(src.chunk_list(&f.content).unwrap(), f.chunks);
        let c = f.chunks[2];
        let places = src.locate(&c.hash, c.len);
        assert_eq!(places, vec![Candidate::unvouched(a.clone(), c.offset)]);
        assert_eq!(read_verified(&src, &places, c.len, &c.hash).unwrap().len(), c.len as usize);
        src.remove_file(&a);
        assert!(src.chunk_list(&f.content).is_none());
        assert!(src.locate(&c.hash, c.len).is_empty());
    }

    #[test]
    fn a_candidate_opened_once_is_read_after_it_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, det_bytes(4, 100_000)).unwrap();
        let src = MemoryChunkSource::new();
        let f = src.add_file(&a, params()).unwrap();
        let (c0, c1) = (f.chunks[0], f.chunks[1]);
        let mut open = OpenCandidates::default();
        assert!(open.read_verified(&src, &src.locate(&c0.hash, c0.len), c0.len, &c0.hash).is_some());
        // Moved into the version history between two chunks of one download.
        std::fs::rename(&a, dir.path().join("a.old")).unwrap();
        assert!(read_verified(&src, &src.locate(&c1.hash, c1.len), c1.len, &c1.hash).is_none(), "a fresh open fails");
        let got = open.read_verified(&src, &src.locate(&c1.hash, c1.len), c1.len, &c1.hash);
        assert_eq!(got.map(|b| b.len()), Some(c1.len as usize), "the open file still serves");
        // Replaced by other bytes at the same inode: still verified.
        std::fs::write(dir.path().join("a.old"), det_bytes(5, 100_000)).unwrap();
        let c2 = f.chunks[2];
        assert!(open.read_verified(&src, &src.locate(&c2.hash, c2.len), c2.len, &c2.hash).is_none());
    }

    /// Names one place for every chunk, vouched for with `stamp`.
    struct Vouching {
        path: PathBuf,
        stamp: Stamp,
    }

    impl ChunkSource for Vouching {
        fn chunk_list(&self, _content: &ContentHash) -> Option<Vec<ChunkInfo>> {
            None
        }

        fn locate(&self, _hash: &ContentHash, _len: u32) -> Vec<Candidate> {
            vec![Candidate { path: self.path.clone(), offset: 100, stamp: Some(self.stamp) }]
        }
    }

    #[test]
    fn a_vouched_candidate_is_served_unhashed_only_while_its_stamp_holds() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, det_bytes(6, 10_000)).unwrap();
        let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        File::options().write(true).open(&a).unwrap().set_modified(past).unwrap();
        let src = Vouching { path: a.clone(), stamp: Stamp::of(&std::fs::metadata(&a).unwrap()) };
        // A hash these bytes do not have: only a stamp can vouch for them.
        let other = ContentHash::of(b"other bytes");
        let served = |hash: &ContentHash| {
            let mut buf = vec![0xAA; 5000];
            read_served(&src, &src.locate(hash, 1000), 1000, hash, &mut buf).then_some(buf)
        };
        assert_eq!(served(&other).as_deref(), Some(&det_bytes(6, 10_000)[100..1100]), "the buffer holds just them");
        assert!(read_verified(&src, &src.locate(&other, 1000), 1000, &other).is_none(), "reads to keep are hashed");
        // Rewritten in place, same size: the mtime moved, so the bytes are
        // hashed, and refused.
        std::fs::write(&a, det_bytes(7, 10_000)).unwrap();
        assert!(served(&other).is_none());
        let right = ContentHash::of(&det_bytes(7, 10_000)[100..1100]);
        assert!(served(&right).is_some(), "hashed bytes still go");
        // Replaced by another file with the old size and mtime: the inode
        // differs.
        let b = dir.path().join("b");
        std::fs::write(&b, det_bytes(8, 10_000)).unwrap();
        File::options().write(true).open(&b).unwrap().set_modified(past).unwrap();
        std::fs::rename(&b, &a).unwrap();
        assert!(served(&other).is_none());
    }

    #[test]
    fn stale_candidates_are_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, det_bytes(2, 50_000)).unwrap();
        let src = MemoryChunkSource::new();
        let f = src.add_file(&a, params()).unwrap();
        let c = f.chunks[1];
        // Same length, other bytes: the hash check must reject it.
        std::fs::write(&a, det_bytes(3, 50_000)).unwrap();
        assert!(read_verified(&src, &src.locate(&c.hash, c.len), c.len, &c.hash).is_none());
        // Shorter file: no read past the end.
        std::fs::write(&a, b"short").unwrap();
        assert_eq!(read_at_verified(&a, c.offset, c.len, &c.hash).unwrap(), None);
        // Gone.
        std::fs::remove_file(&a).unwrap();
        assert_eq!(read_at_verified(&a, c.offset, c.len, &c.hash).unwrap(), None);
        // A directory is not a file.
        assert_eq!(read_at_verified(dir.path(), 0, 1, &c.hash).unwrap(), None);
        // Offset overflow is not a panic.
        assert_eq!(read_at_verified(&a, u64::MAX, 10, &c.hash).unwrap(), None);
    }

    #[test]
    fn add_dir_is_recursive_and_hash_file_matches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
        let bytes = det_bytes(4, 20_000);
        std::fs::write(dir.path().join("x/y/z"), &bytes).unwrap();
        std::fs::write(dir.path().join("top"), b"hi").unwrap();
        let src = MemoryChunkSource::new();
        assert_eq!(src.add_dir(dir.path(), params()).unwrap(), 2);
        assert!(src.chunk_list(&ContentHash::of(&bytes)).is_some());
        assert_eq!(hash_file(&dir.path().join("x/y/z")).unwrap(), ContentHash::of(&bytes));
    }
}
