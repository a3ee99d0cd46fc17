//! Helpers for tests in every crate of the workspace (cargo feature
//! `test-util`): a [`FileRecord`] builder, deterministic pseudo-random
//! bytes, `eventually` pollers that wait on a condition with a deadline
//! instead of sleeping a guessed amount, and [`ScratchDir`], a throwaway
//! folder on tmpfs for harnesses that create databases by the thousand.
//!
//! Not for production code: this module is compiled for `shared`'s own
//! tests and for crates that enable `test-util`, which only dev-dependencies
//! do. Its helpers panic with a message on misuse (an invalid test path, a
//! condition that never holds), as tests want.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::chunk::{ChunkParams, ChunkedFile, chunk_bytes};
use crate::id::{ContentHash, ShortId};
use crate::path::RelPath;
use crate::record::{FileKind, FileRecord};
use crate::version::VersionVector;

/// The mtime a built record has unless told otherwise (2023-11-14).
pub const DEFAULT_MTIME_NS: i64 = 1_700_000_000_000_000_000;

/// The peer whose counter a built record has unless told otherwise
/// (version `{ShortId(1): 1}`, so the record validates).
pub const DEFAULT_AUTHOR: ShortId = ShortId(1);

/// Builds a [`FileRecord`] that passes validation unless a setter makes it
/// invalid on purpose.
///
/// Defaults: an empty live file, folder or symlink at the given path, mode
/// 0o644 (files), 0o755 (folders) or 0o777 (symlinks), mtime
/// [`DEFAULT_MTIME_NS`], version `{DEFAULT_AUTHOR: 1}`, content and chunk
/// list hash of zero bytes. Setters apply in call order, so
/// `.tombstone()` after `.body(..)` gives a valid tombstone, and the other
/// way round a tombstone with a size (invalid).
///
/// ```
/// # use dartsync_shared::test_util::{RecordBuilder, vv};
/// let r = RecordBuilder::file("docs/a.txt").body("hello").vv(&[(7, 2)]).mtime_s(100).build();
/// assert_eq!(r.size, 5);
/// let gone = RecordBuilder::file("docs/a.txt").version(vv(&[(7, 3)])).tombstone().build();
/// assert!(gone.deleted && gone.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the record"]
pub struct RecordBuilder {
    record: FileRecord,
}

impl RecordBuilder {
    fn new(path: &str, kind: FileKind, mode: u32) -> Self {
        RecordBuilder {
            record: FileRecord {
                path: rel(path),
                kind,
                size: 0,
                mtime_ns: DEFAULT_MTIME_NS,
                mode,
                content: ContentHash::empty(),
                chunks: ContentHash::empty(),
                version: VersionVector::from_entries([(DEFAULT_AUTHOR, 1)]),
                deleted: false,
            },
        }
    }

    /// An empty regular file at `path`.
    pub fn file(path: &str) -> Self {
        Self::new(path, FileKind::File, 0o644)
    }

    /// A folder at `path`.
    pub fn dir(path: &str) -> Self {
        Self::new(path, FileKind::Dir, 0o755)
    }

    /// A symlink at `path` pointing to `target`.
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, FileKind::Symlink { target: target.to_owned() }, 0o777)
    }

    /// Moves the record to another path.
    pub fn path(mut self, path: &str) -> Self {
        self.record.path = rel(path);
        self
    }

    /// File bytes: sets size, content hash and chunk-list hash (chunked
    /// with [`ChunkParams::default`]).
    pub fn body(self, bytes: impl AsRef<[u8]>) -> Self {
        self.chunked(&chunk_bytes(bytes.as_ref(), ChunkParams::default()))
    }

    /// Size, content hash and chunk-list hash of an already chunked file
    /// (for tests that need the chunk list of a given piece length).
    pub fn chunked(mut self, chunked: &ChunkedFile) -> Self {
        self.record.size = chunked.size;
        self.record.content = chunked.content;
        self.record.chunks = chunked.chunks_hash;
        self
    }

    /// The size alone.
    pub fn size(mut self, size: u64) -> Self {
        self.record.size = size;
        self
    }

    /// The content hash alone.
    pub fn content(mut self, content: ContentHash) -> Self {
        self.record.content = content;
        self
    }

    /// The chunk-list hash alone.
    pub fn chunks(mut self, chunks: ContentHash) -> Self {
        self.record.chunks = chunks;
        self
    }

    /// The permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.record.mode = mode;
        self
    }

    /// The mtime in nanoseconds since the epoch.
    pub fn mtime_ns(mut self, mtime_ns: i64) -> Self {
        self.record.mtime_ns = mtime_ns;
        self
    }

    /// The mtime in whole seconds since the epoch.
    pub fn mtime_s(self, mtime_s: i64) -> Self {
        self.mtime_ns(mtime_s * 1_000_000_000)
    }

    /// The version vector.
    pub fn version(mut self, version: VersionVector) -> Self {
        self.record.version = version;
        self
    }

    /// The version vector from `(short id, counter)` pairs (see [`vv`]).
    pub fn vv(self, entries: &[(u64, u64)]) -> Self {
        self.version(vv(entries))
    }

    /// Makes it a tombstone: deleted, size 0, content and chunk-list hash
    /// of zero bytes (as the scanner records a deletion). Kind, mode, mtime
    /// and version stay.
    pub fn tombstone(self) -> Self {
        self.deleted(true)
    }

    /// [`Self::tombstone`] when `deleted`, else only clears the flag.
    pub fn deleted(mut self, deleted: bool) -> Self {
        self.record.deleted = deleted;
        if deleted {
            self.record.size = 0;
            self.record.content = ContentHash::empty();
            self.record.chunks = ContentHash::empty();
        }
        self
    }

    /// The record.
    pub fn build(self) -> FileRecord {
        self.record
    }
}

impl From<RecordBuilder> for FileRecord {
    fn from(builder: RecordBuilder) -> FileRecord {
        builder.build()
    }
}

/// A fresh folder for one harness run, removed on drop. It lives under
/// `TMPDIR` when set, else `/dev/shm` (a tmpfs: redb commits with fsync,
/// which costs milliseconds on a disk), else the system's temp dir.
#[derive(Debug)]
pub struct ScratchDir {
    /// The folder.
    pub dir: PathBuf,
}

impl ScratchDir {
    /// Creates `<root>/<prefix>-<pid>-<n>` (a leftover of a crashed run
    /// with the same pid is removed first).
    pub fn new(prefix: &str) -> std::io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let shm = Path::new("/dev/shm");
        let root =
            if std::env::var_os("TMPDIR").is_none() && shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
        let dir = root.join(format!("{prefix}-{}-{n}", std::process::id()));
        // Best effort: whatever is left will fail the create below.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir { dir })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a leftover is removed by the next run with this pid.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The scaffolding around a decoder failed (not a verdict on the input):
/// the error of the fuzz harnesses of every crate.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fuzzing harness: {}", self.0)
    }
}

impl std::error::Error for HarnessError {}

/// A [`HarnessError`]: `what` failed, and why.
pub fn harness(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError(format!("{what}: {e}"))
}

/// A [`RelPath`], panicking with the reason if `path` is not one.
pub fn rel(path: &str) -> RelPath {
    RelPath::new(path).unwrap_or_else(|e| panic!("test path {path:?} is invalid: {e}"))
}

/// A version vector from `(short id, counter)` pairs; zero counters are
/// dropped (see [`VersionVector::from_entries`]).
pub fn vv(entries: &[(u64, u64)]) -> VersionVector {
    VersionVector::from_entries(entries.iter().map(|&(peer, counter)| (ShortId(peer), counter)))
}

/// `len` deterministic pseudo-random bytes for `seed` (splitmix64): the
/// same on every run and machine, distinct per seed, incompressible enough
/// for content-defined chunking, and fast (8 bytes per step) for
/// multi-megabyte test files.
pub fn det_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len.next_multiple_of(8));
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// First pause between polls; pauses grow to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(1);

/// Longest pause between two polls.
const POLL_MAX: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds; panics naming `what` if it still does not
/// after `deadline`. Polls at once, then after pauses growing from 1 ms to
/// 20 ms, and once more at the deadline. Blocks the thread: in async tests
/// use [`eventually_async`].
pub fn eventually(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    let mut pause = Backoff::new(POLL_MIN, POLL_MAX);
    loop {
        if cond() {
            return;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause.next_delay().min(deadline - elapsed));
    }
}

/// [`eventually`] for tokio tests: the condition may await (`async ||
/// ...`), and the waiting uses tokio's clock, so it also works under
/// `start_paused = true`.
pub async fn eventually_async(deadline: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = tokio::time::Instant::now();
    let mut pause = Backoff::new(POLL_MIN, POLL_MAX);
    loop {
        if cond().await {
            return;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause.next_delay().min(deadline - elapsed)).await;
    }
}

/// Runs `future` with a deadline; panics naming `what` if it is not done
/// by then.
pub async fn within<T>(deadline: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {deadline:?} waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn built_records_validate_by_default() {
        let records = [
            RecordBuilder::file("a").build(),
            RecordBuilder::file("a/b.txt").body("hello").vv(&[(7, 2)]).mtime_s(3).build(),
            RecordBuilder::dir("d").build(),
            RecordBuilder::symlink("d/link", "../a").build(),
            RecordBuilder::file("t").body("gone").tombstone().build(),
            RecordBuilder::dir("t2").tombstone().build(),
        ];
        for r in &records {
            r.validate().unwrap_or_else(|e| panic!("{r:?}: {e}"));
        }
        let f = &records[1];
        assert_eq!((f.size, f.content, f.mtime_ns), (5, ContentHash::of(b"hello"), 3_000_000_000));
        assert_eq!(f.chunks, chunk_bytes(b"hello", ChunkParams::default()).chunks_hash);
        assert_eq!(f.version, VersionVector::from_entries([(ShortId(7), 2)]));
        let t = &records[4];
        assert!(t.deleted && t.size == 0 && t.content == ContentHash::empty());
        assert_eq!(FileRecord::from(RecordBuilder::file("x").path("y")).path.as_str(), "y");
    }

    #[test]
    fn det_bytes_is_deterministic_and_seeded() {
        assert_eq!(det_bytes(1, 1000), det_bytes(1, 1000));
        assert_ne!(det_bytes(1, 64), det_bytes(2, 64));
        assert_eq!(&det_bytes(5, 1000)[..13], &det_bytes(5, 13)[..]);
        assert!(det_bytes(0, 0).is_empty());
        let bytes = det_bytes(9, 1 << 16);
        let distinct: std::collections::BTreeSet<_> = bytes.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn eventually_returns_once_the_condition_holds() {
        let mut polls = 0;
        eventually(Duration::from_secs(10), "three polls", || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
    }

    #[test]
    fn eventually_panics_with_what_it_waited_for() {
        let err = std::panic::catch_unwind(|| eventually(Duration::from_millis(5), "the impossible", || false))
            .expect_err("a condition that never holds must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("the impossible"), "{msg:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_async_follows_tokio_time() {
        let polls = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let counted = polls.clone();
        eventually_async(Duration::from_secs(60), "ten polls", async || {
            tokio::task::yield_now().await;
            counted.fetch_add(1, Ordering::SeqCst) + 1 == 10
        })
        .await;
        assert_eq!(polls.load(Ordering::SeqCst), 10);
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        let late = tokio::spawn(eventually_async(Duration::from_secs(5), "never", async || false));
        assert!(late.await.unwrap_err().is_panic());
        assert_eq!(within(Duration::from_secs(1), "ready", async { 7 }).await, 7);
    }
}
