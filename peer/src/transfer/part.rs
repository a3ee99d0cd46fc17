//! The partial temp file of one download and its persisted progress.
//!
//! Names, all inside the downloader's `tmp_dir` (the peer's
//! `.dartsync/tmp/`), keyed by the 64-hex-digit whole-file hash:
//! - `<content>.part`: the file being assembled, `set_len` to its final
//!   size up front; chunk `i` lives at its own offset.
//! - `<content>.part.state`: which chunks of the `.part` are written and
//!   verified (format below), replaced atomically via
//!   `<content>.part.state.tmp` + rename.
//! - `<content>.<n>.done`: a finished, verified file handed to the caller
//!   (`n` is a per-process counter, so two downloads of the same content
//!   never hand out the same path). A download too small to resume is
//!   written under this name from the start and handed out only once
//!   verified; a `.done` left by an earlier run is never used, only
//!   removed by the stale sweep.
//!
//! # State file format (all integers little-endian)
//! ```text
//! offset  size        field
//! 0       8           magic  b"DSPART\0\x01"
//! 8       32          content hash (whole file)
//! 40      32          chunk-list hash (the record's `chunks`)
//! 72      8           file size
//! 80      4           chunk count n (<= MAX_CHUNKS_PER_FILE)
//! 84      ceil(n/8)   bitmap, bit i (LSB first) = chunk i written and verified
//! ...     32          blake3 of every byte before it
//! ```
//! A state file that fails any check (length, magic, trailer hash, or a
//! content / list / size / count other than the current download's) is
//! ignored and the download starts over.
//!
//! # Invariants
//! - A bit is set only after the chunk's bytes were verified and written;
//!   the `.part` is `sync_data`ed before a state naming those bits is
//!   written, so a crash never leaves a bit set for bytes that were lost.
//! - Even so, a resumed download trusts a set bit only after re-hashing the
//!   chunk from the `.part` (see `download.rs`): the state is a hint.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dartsync_shared::ContentHash;
use dartsync_shared::limits::MAX_CHUNKS_PER_FILE;

/// Magic bytes opening a state file (format version 1).
const MAGIC: &[u8; 8] = b"DSPART\0\x01";
/// Bytes before the bitmap.
const HEADER_LEN: usize = 8 + 32 + 32 + 8 + 4;
/// Trailer: blake3 of everything before it.
const TRAILER_LEN: usize = 32;

/// `<content>.part` in `tmp_dir`.
pub(crate) fn part_path(tmp_dir: &Path, content: &ContentHash) -> PathBuf {
    tmp_dir.join(format!("{}.part", content.to_hex()))
}

/// `<content>.part.state` in `tmp_dir`.
pub(crate) fn state_path(tmp_dir: &Path, content: &ContentHash) -> PathBuf {
    tmp_dir.join(format!("{}.part.state", content.to_hex()))
}

/// Sequence for `.done` names, unique within the process.
static NEXT_DONE: AtomicU64 = AtomicU64::new(0);

/// A `<content>.<n>.done` name in `tmp_dir` no other download of this
/// process uses.
pub(crate) fn fresh_done_path(tmp_dir: &Path, content: &ContentHash) -> PathBuf {
    let n = NEXT_DONE.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{}.{n}.done", content.to_hex()))
}

/// What a file name in `tmp_dir` is, for cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TempKind {
    /// `<content>.part`, `.part.state` or `.part.state.tmp`.
    Partial,
    /// `<content>.<n>.done`.
    Done,
}

/// Parses a temp file name into its content hash and kind; `None` for
/// names this module did not make.
pub(crate) fn parse_temp_name(name: &str) -> Option<(ContentHash, TempKind)> {
    let (hex, rest) = name.split_at_checked(64)?;
    let content = ContentHash::from_hex(hex)?;
    let kind = match rest {
        ".part" | ".part.state" | ".part.state.tmp" => TempKind::Partial,
        _ => {
            let n = rest.strip_prefix('.')?.strip_suffix(".done")?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            TempKind::Done
        }
    };
    Some((content, kind))
}

/// A fixed-size set of chunk indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    bits: Vec<u8>,
    len: usize,
}

impl Bitmap {
    /// `len` cleared bits.
    pub(crate) fn new(len: usize) -> Self {
        Bitmap { bits: vec![0; len.div_ceil(8)], len }
    }

    /// Number of bits.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bit `i`; false when out of range.
    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// Sets or clears bit `i` (ignored when out of range).
    pub(crate) fn set(&mut self, i: usize, value: bool) {
        if i >= self.len {
            return;
        }
        if value {
            self.bits[i / 8] |= 1 << (i % 8);
        } else {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }

    /// Number of set bits.
    pub(crate) fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// What a state file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartState {
    /// Whole-file hash.
    pub content: ContentHash,
    /// Chunk-list hash.
    pub chunks_hash: ContentHash,
    /// Final file size.
    pub size: u64,
    /// Chunks written and verified.
    pub done: Bitmap,
}

impl PartState {
    /// The on-disk bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.done.bits.len() + TRAILER_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.content.0);
        out.extend_from_slice(&self.chunks_hash.0);
        out.extend_from_slice(&self.size.to_le_bytes());
        let n = u32::try_from(self.done.len).expect("chunk count is bounded by MAX_CHUNKS_PER_FILE (2^30)");
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&self.done.bits);
        let trailer = blake3::hash(&out);
        out.extend_from_slice(trailer.as_bytes());
        out
    }

    /// Parses state bytes; `None` if anything is off.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return None;
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        if blake3::hash(body).as_bytes() != trailer || &body[..8] != MAGIC {
            return None;
        }
        let content = ContentHash(body[8..40].try_into().ok()?);
        let chunks_hash = ContentHash(body[40..72].try_into().ok()?);
        let size = u64::from_le_bytes(body[72..80].try_into().ok()?);
        let n = u32::from_le_bytes(body[80..84].try_into().ok()?) as usize;
        if n as u64 > MAX_CHUNKS_PER_FILE || body.len() != HEADER_LEN + n.div_ceil(8) {
            return None;
        }
        let done = Bitmap { bits: body[HEADER_LEN..].to_vec(), len: n };
        // Bits past `n` in the last byte must be clear.
        if (n..n.div_ceil(8) * 8).any(|i| done.bits[i / 8] & (1 << (i % 8)) != 0) {
            return None;
        }
        Some(PartState { content, chunks_hash, size, done })
    }
}

/// Reads the state file at `path` of a download of `chunks` chunks; `None`
/// when it is missing, unreadable, malformed or not exactly the size such a
/// state has (nothing bigger is ever read).
pub(crate) fn load_state(path: &Path, chunks: usize) -> Option<PartState> {
    let expected = (HEADER_LEN + chunks.div_ceil(8) + TRAILER_LEN) as u64;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() != expected {
        return None;
    }
    PartState::decode(&std::fs::read(path).ok()?)
}

/// Replaces the state file at `path` atomically (write a `.tmp`, fsync,
/// rename). The caller has already `sync_data`ed the `.part`.
pub(crate) fn save_state(path: &Path, state: &PartState) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&state.encode())?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Creates the file `path` in `tmp_dir` with `create`, making the folder
/// first only when `create` finds it missing (it exists for every
/// download but the first, or after someone removed it). An error names
/// the folder or the file, whichever could not be made.
pub(crate) fn create_in_tmp<T>(
    tmp_dir: &Path,
    path: &Path,
    create: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<T, (PathBuf, std::io::Error)> {
    match create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(tmp_dir).map_err(|e| (tmp_dir.to_owned(), e))?;
            create(path)
        }
        created => created,
    }
    .map_err(|e| (path.to_owned(), e))
}

/// Opens (creating if needed) the `.part` for read and write.
pub(crate) fn open_part(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_in_tmp_makes_a_missing_folder_and_names_what_it_could_not_make() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("a/tmp");
        let file = tmp.join("x.part");
        create_in_tmp(&tmp, &file, open_part).unwrap();
        assert!(file.is_file(), "the folder was made and the file created");
        create_in_tmp(&tmp, &file, open_part).unwrap();
        // The folder is missing and cannot be made (a dangling link holds
        // its name): the folder is named.
        let blocked = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere/tmp"), &blocked).unwrap();
        let (at, _) = create_in_tmp(&blocked, &blocked.join("x.part"), open_part).unwrap_err();
        assert_eq!(at, blocked);
        // A file that cannot be created in an existing folder: the file is named.
        let (at, _) = create_in_tmp(&tmp, &file, |p| std::fs::create_dir(p)).unwrap_err();
        assert_eq!(at, file);
    }

    fn sample(n: usize) -> PartState {
        let mut done = Bitmap::new(n);
        for i in (0..n).step_by(3) {
            done.set(i, true);
        }
        PartState { content: ContentHash::of(b"c"), chunks_hash: ContentHash::of(b"l"), size: 12345, done }
    }

    #[test]
    fn state_round_trips_for_interesting_counts() {
        for n in [0, 1, 7, 8, 9, 1000] {
            let state = sample(n);
            let bytes = state.encode();
            assert_eq!(bytes.len(), HEADER_LEN + n.div_ceil(8) + TRAILER_LEN);
            assert_eq!(PartState::decode(&bytes), Some(state.clone()), "n = {n}");
            assert_eq!(state.done.count(), n.div_ceil(3));
        }
    }

    #[test]
    fn damaged_states_are_rejected() {
        let good = sample(20).encode();
        // Any flipped byte breaks the trailer.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(PartState::decode(&bad), None, "flip at {i}");
        }
        // Truncations.
        for len in 0..good.len() {
            assert_eq!(PartState::decode(&good[..len]), None, "len {len}");
        }
        // A consistent trailer over a wrong count.
        let mut body = good[..good.len() - TRAILER_LEN].to_vec();
        body[80..84].copy_from_slice(&(u32::MAX).to_le_bytes());
        let trailer = blake3::hash(&body);
        body.extend_from_slice(trailer.as_bytes());
        assert_eq!(PartState::decode(&body), None);
        // Stray bits past n.
        let mut body = good[..good.len() - TRAILER_LEN].to_vec();
        *body.last_mut().unwrap() |= 0x80;
        let trailer = blake3::hash(&body);
        body.extend_from_slice(trailer.as_bytes());
        assert_eq!(PartState::decode(&body), None);
    }

    #[test]
    fn save_and_load_through_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample(33);
        let path = state_path(dir.path(), &state.content);
        assert_eq!(load_state(&path, 33), None);
        save_state(&path, &state).unwrap();
        assert_eq!(load_state(&path, 41), None, "a state for another chunk count is not read");
        assert_eq!(load_state(&path, 33), Some(state));
        std::fs::write(&path, vec![0u8; 10_000_000]).unwrap();
        assert_eq!(load_state(&path, 33), None);
    }

    #[test]
    fn temp_names_parse_back() {
        let c = ContentHash::of(b"x");
        let dir = Path::new("/t");
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(parse_temp_name(&name(part_path(dir, &c))), Some((c, TempKind::Partial)));
        assert_eq!(parse_temp_name(&name(state_path(dir, &c))), Some((c, TempKind::Partial)));
        assert_eq!(parse_temp_name(&name(fresh_done_path(dir, &c))), Some((c, TempKind::Done)));
        for bad in ["", "x.part", &format!("{}.partx", c.to_hex()), &format!("{}..done", c.to_hex())] {
            assert_eq!(parse_temp_name(bad), None, "{bad}");
        }
        assert_eq!(parse_temp_name(&format!("{}.part", c.to_hex().to_uppercase())), None);
    }

    #[test]
    fn bitmap_ignores_out_of_range() {
        let mut b = Bitmap::new(3);
        b.set(5, true);
        assert!(!b.get(5));
        b.set(2, true);
        assert!(b.get(2));
        b.set(2, false);
        assert_eq!(b.count(), 0);
    }
}
