//! End-to-end tests of [`LocalState`]: a real temp folder, the real watcher,
//! and the change stream read with deadlines (never sleeps).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jail::Meta;
use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
use dartsync_shared::test_util::{RecordBuilder, det_bytes, rel, vv};
use dartsync_shared::{ContentHash, FileKind, FileRecord, ShortId};
use tokio::time::Instant;

use super::*;

const ME: ShortId = ShortId(1);
const DEADLINE: Duration = Duration::from_secs(30);
const PIECE_LEN: u32 = 64 * 1024;

fn config() -> LocalConfig {
    LocalConfig {
        piece_len: PIECE_LEN,
        // Tests drive full scans through `rescan_now`, not the timer.
        rescan: Duration::from_secs(3600),
        me: ME,
        quiet: Duration::from_millis(100),
        ignore_perms: false,
        receive_only: false,
    }
}

fn tag(r: &FileRecord) -> String {
    format!("{}{}", if r.deleted { "-" } else { "+" }, r.path)
}

struct Peer {
    state: LocalState,
    rx: mpsc::Receiver<FileRecord>,
    shutdown: CancellationToken,
    /// Every change received so far, in order.
    log: Vec<FileRecord>,
}

impl Peer {
    async fn start(root: &Path, cfg: LocalConfig) -> Peer {
        let shutdown = CancellationToken::new();
        let folder = OpenFolder::open(root).unwrap();
        let (state, rx) = LocalState::start(folder, cfg, shutdown.clone()).await.unwrap();
        state.initial_scan_done().await;
        Peer { state, rx, shutdown, log: Vec::new() }
    }

    fn root(&self) -> PathBuf {
        self.state.dirs().root.clone()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root().join(p)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.state.stopped().await;
    }

    /// Receives changes until `done(log)` holds; panics at the deadline.
    async fn wait_until(&mut self, what: &str, done: impl Fn(&[FileRecord]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.log) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(record)) => self.log.push(record),
                Ok(None) => panic!("change stream closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; got {:?}", self.tags()),
            }
        }
    }

    /// Waits until every tag (`+path` or `-path`) was received.
    async fn wait_for(&mut self, tags: &[&str]) {
        let want: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        self.wait_until(&format!("{want:?}"), |log| {
            let got: HashSet<String> = log.iter().map(tag).collect();
            want.iter().all(|t| got.contains(t))
        })
        .await;
    }

    /// Runs a full rescan and collects whatever it (and earlier events)
    /// produced.
    async fn settle(&mut self) {
        self.state.rescan_now().await.unwrap();
        while let Ok(record) = self.rx.try_recv() {
            self.log.push(record);
        }
    }

    fn tags(&self) -> Vec<String> {
        self.log.iter().map(tag).collect()
    }

    fn count(&self, t: &str) -> usize {
        self.log.iter().filter(|r| tag(r) == t).count()
    }

    fn last(&self, path: &str) -> &FileRecord {
        self.log.iter().rev().find(|r| r.path.as_str() == path).unwrap_or_else(|| panic!("no record for {path}"))
    }

    fn clear(&mut self) {
        self.log.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_edit_delete_and_rename_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    assert!(peer.log.is_empty());

    std::fs::write(peer.path("a.txt"), b"first").unwrap();
    peer.wait_for(&["+a.txt"]).await;
    let created = peer.last("a.txt").clone();
    assert_eq!(created.kind, FileKind::File);
    assert_eq!(created.content, ContentHash::of(b"first"));
    assert_eq!(created.size, 5);
    assert_eq!(created.version, vv(&[(1, 1)]));
    assert!(created.validate().is_ok());

    std::fs::write(peer.path("a.txt"), b"second version").unwrap();
    peer.wait_until("the edit", |log| log.iter().any(|r| r.content == ContentHash::of(b"second version"))).await;
    assert_eq!(peer.last("a.txt").version, vv(&[(1, 2)]));

    std::fs::rename(peer.path("a.txt"), peer.path("b.txt")).unwrap();
    peer.wait_for(&["-a.txt", "+b.txt"]).await;
    let gone = peer.last("a.txt");
    assert!(gone.deleted && gone.size == 0 && gone.content == ContentHash::empty());
    assert_eq!(gone.version, vv(&[(1, 3)]), "a tombstone bumps too");
    assert_eq!(peer.last("b.txt").content, ContentHash::of(b"second version"));
    assert_eq!(peer.last("b.txt").version, vv(&[(1, 1)]), "a new path starts from the empty vector");

    std::fs::remove_file(peer.path("b.txt")).unwrap();
    peer.wait_for(&["-b.txt"]).await;
    peer.settle().await;
    assert_eq!(peer.count("+a.txt"), 2);
    assert_eq!(peer.count("-b.txt"), 1);
    assert_eq!(peer.log.len(), 5, "{:?}", peer.tags());
    assert_eq!(peer.state.index().get(&rel("a.txt")).unwrap().unwrap().record.version, vv(&[(1, 3)]));
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_empty_nested_renamed_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;

    // A deep tree created at once, with an empty folder at the bottom.
    let mut dir = String::from("deep");
    let mut want = vec![format!("+{dir}")];
    for level in 1..=12 {
        dir = format!("{dir}/level {level}");
        want.push(format!("+{dir}"));
        want.push(format!("+{dir}/f{level}.txt"));
    }
    want.push(format!("+{dir}/empty"));
    std::fs::create_dir_all(peer.path(&format!("{dir}/empty"))).unwrap();
    let mut d = String::from("deep");
    for level in 1..=12 {
        d = format!("{d}/level {level}");
        std::fs::write(peer.path(&format!("{d}/f{level}.txt")), format!("file {level}")).unwrap();
    }
    let want_refs: Vec<&str> = want.iter().map(String::as_str).collect();
    peer.wait_for(&want_refs).await;
    let empty = peer.last(&format!("{dir}/empty"));
    assert_eq!(empty.kind, FileKind::Dir);
    assert!(empty.validate().is_ok());
    peer.settle().await;
    assert_eq!(peer.log.len(), want.len(), "each path announced once: {:?}", peer.tags());

    // Renaming the top folder: tombstones for the old paths, records for
    // the new ones, same content hashes.
    peer.clear();
    std::fs::rename(peer.path("deep"), peer.path("moved")).unwrap();
    let moved: Vec<String> = want.iter().map(|t| t.replacen("+deep", "+moved", 1)).collect();
    let removed: Vec<String> = want.iter().map(|t| t.replacen('+', "-", 1)).collect();
    let all: Vec<&str> = moved.iter().chain(&removed).map(String::as_str).collect();
    peer.wait_for(&all).await;
    for level in [1, 7, 12] {
        let mut p = String::new();
        for l in 1..=level {
            p = format!("{p}/level {l}");
        }
        let new = peer.last(&format!("moved{p}/f{level}.txt"));
        assert_eq!(new.content, ContentHash::of(format!("file {level}").as_bytes()));
        assert!(peer.last(&format!("deep{p}/f{level}.txt")).deleted);
    }
    assert_eq!(peer.last("deep").kind, FileKind::Dir, "a folder deletion is a Dir tombstone");
    peer.settle().await;
    assert_eq!(peer.log.len(), all.len(), "{:?}", peer.tags());

    // Deleting an empty folder.
    peer.clear();
    std::fs::remove_dir(peer.path(&format!("{}/empty", dir.replacen("deep", "moved", 1)))).unwrap();
    peer.wait_until("the empty folder's tombstone", |log| {
        log.iter().any(|r| r.deleted && r.path.file_name() == "empty")
    })
    .await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_unicode_and_spaced_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::write(peer.path("empty"), b"").unwrap();
    std::fs::create_dir(peer.path("with space")).unwrap();
    std::fs::write(peer.path("with space/file name.md"), b"# hi").unwrap();
    std::fs::write(peer.path("ünïcödé 日本語.txt"), "日本語".as_bytes()).unwrap();
    peer.wait_for(&["+empty", "+with space", "+with space/file name.md", "+ünïcödé 日本語.txt"]).await;
    let empty = peer.last("empty");
    assert_eq!((empty.size, empty.content), (0, ContentHash::empty()));
    assert_eq!(peer.state.index().get(&rel("empty")).unwrap().unwrap().chunks, vec![]);
    assert_eq!(peer.last("ünïcödé 日本語.txt").content, ContentHash::of("日本語".as_bytes()));
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_binary_file_is_announced_once_with_its_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    let data = det_bytes(50, 50 * 1024 * 1024);
    let expected = chunk_bytes(&data, ChunkParams::for_piece_len(PIECE_LEN));
    // Written elsewhere and moved in, as a finished file would be.
    let outside = tmp.path().join("big.bin");
    std::fs::write(&outside, &data).unwrap();
    std::fs::rename(&outside, peer.path("big.bin")).unwrap();
    peer.wait_for(&["+big.bin"]).await;
    let record = peer.last("big.bin").clone();
    assert_eq!(record.size, data.len() as u64);
    assert_eq!(record.content, expected.content);
    assert_eq!(record.chunks, expected.chunks_hash);
    let entry = peer.state.index().get(&rel("big.bin")).unwrap().unwrap();
    assert_eq!(entry.chunks, expected.chunks);
    assert_eq!(peer.state.index().chunk_list(&record.content).unwrap(), Some(expected.chunks.clone()));
    let some_chunk = expected.chunks[expected.chunks.len() / 2];
    let locations = peer.state.index().locate_chunk(&some_chunk.hash).unwrap();
    assert_eq!(locations.len(), 1);
    assert_eq!((locations[0].offset, locations[0].len), (some_chunk.offset, some_chunk.len));
    // With the stat the file shows, read as the piece server reads its
    // open file's stamp (two formulas for one mtime: they must agree, or
    // the server would hash every chunk again).
    let shown = crate::transfer::chunk_source::Stamp::of(&std::fs::metadata(peer.path("big.bin")).unwrap());
    let stat = locations[0].stat.expect("an indexed file's location carries its stat");
    assert_eq!((stat.size, stat.mtime_ns, stat.inode), (shown.size, shown.mtime_ns, shown.inode));
    peer.settle().await;
    assert_eq!(peer.count("+big.bin"), 1);
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_is_announced_once_whole() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config();
    // The quiet period must exceed the pauses between bursts by far.
    cfg.quiet = Duration::from_secs(1);
    let mut peer = Peer::start(tmp.path(), cfg).await;
    let path = peer.path("slow.bin");
    // Written over ~2.5 s, longer than the quiet period, with the file
    // open throughout: the watcher reports it while it is still growing,
    // and only the close certifies it complete.
    let bursts: Vec<Vec<u8>> = (0..50).map(|i| det_bytes(i, 20_000)).collect();
    let whole: Vec<u8> = bursts.concat();
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        for burst in bursts {
            file.write_all(&burst).unwrap();
            file.flush().unwrap();
            // Part of the scenario (a slow writer), not synchronisation.
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    peer.wait_for(&["+slow.bin"]).await;
    writer.join().unwrap();
    peer.settle().await;
    assert_eq!(peer.count("+slow.bin"), 1, "{:?}", peer.tags());
    let record = peer.last("slow.bin");
    assert_eq!(record.size, whole.len() as u64);
    assert_eq!(record.content, ContentHash::of(&whole));
    assert_eq!(peer.state.bytes_hashed(), whole.len() as u64, "a partial file was read");
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_files_are_never_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    for name in ["a.swp", ".b.swx", "notes~", ".#lock", ".DS_Store", "Thumbs.db", "movie.part", "x.tmp"] {
        std::fs::write(peer.path(name), b"junk").unwrap();
    }
    std::fs::create_dir_all(peer.path("cache.tmp/inner")).unwrap();
    std::fs::write(peer.path("cache.tmp/inner/file"), b"junk").unwrap();
    std::fs::write(peer.path(".dartsync/tmp/download.part"), b"junk").unwrap();
    std::fs::write(peer.path("sentinel"), b"ok").unwrap();
    peer.wait_for(&["+sentinel"]).await;
    peer.settle().await;
    assert_eq!(peer.tags(), ["+sentinel"]);
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dartsyncignore_is_honoured_reloaded_and_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::write(peer.path(".dartsyncignore"), "secret/\n*.log\n").unwrap();
    peer.wait_for(&["+.dartsyncignore"]).await;
    // The reload is noticed before these events are checked.
    peer.state.rescan_now().await.unwrap();
    std::fs::create_dir(peer.path("secret")).unwrap();
    std::fs::write(peer.path("secret/key"), b"x").unwrap();
    std::fs::write(peer.path("debug.log"), b"x").unwrap();
    std::fs::write(peer.path("keep.txt"), b"x").unwrap();
    peer.wait_for(&["+keep.txt"]).await;
    peer.settle().await;
    assert_eq!(peer.tags(), ["+.dartsyncignore", "+keep.txt"]);

    // Dropping `*.log` from the rules makes debug.log appear.
    std::fs::write(peer.path(".dartsyncignore"), "secret/\n").unwrap();
    peer.wait_for(&["+debug.log"]).await;
    // The ignore file syncs like any file (once settled).
    peer.wait_until("the new ignore file", |log| log.iter().filter(|r| tag(r) == "+.dartsyncignore").count() == 2)
        .await;
    peer.settle().await;
    assert!(!peer.tags().iter().any(|t| t.contains("secret")), "{:?}", peer.tags());
    assert_eq!(peer.count("+.dartsyncignore"), 2);
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_changes_reads_nothing_and_offline_changes_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::create_dir(peer.path("dir")).unwrap();
    for name in ["dir/a", "dir/b", "c", "d"] {
        std::fs::write(peer.path(name), name.repeat(1000)).unwrap();
    }
    peer.wait_for(&["+dir", "+dir/a", "+dir/b", "+c", "+d"]).await;
    peer.stop().await;

    // Restart, nothing changed: no change, not one byte read.
    let mut peer = Peer::start(tmp.path(), config()).await;
    peer.settle().await;
    assert!(peer.log.is_empty(), "{:?}", peer.tags());
    assert_eq!(peer.state.bytes_hashed(), 0);
    peer.stop().await;

    // Offline: an edit, a deletion, a new file, a removed folder.
    std::fs::write(tmp.path().join("c"), b"edited while down").unwrap();
    std::fs::remove_file(tmp.path().join("d")).unwrap();
    std::fs::write(tmp.path().join("e"), b"new while down").unwrap();
    std::fs::remove_dir_all(tmp.path().join("dir")).unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    peer.wait_for(&["+c", "-d", "+e", "-dir", "-dir/a", "-dir/b"]).await;
    assert_eq!(peer.last("c").version, vv(&[(1, 2)]));
    assert_eq!(peer.last("c").content, ContentHash::of(b"edited while down"));
    assert_eq!(peer.last("d").version, vv(&[(1, 2)]));
    peer.settle().await;
    assert_eq!(peer.log.len(), 6, "{:?}", peer.tags());
    // Only the edited and the new file were read.
    assert_eq!(peer.state.bytes_hashed(), (b"edited while down".len() + b"new while down".len()) as u64);
    let all = peer.state.index().all().unwrap();
    assert_eq!(all.iter().filter(|e| e.record.deleted).count(), 4, "tombstones are kept");
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_writes_do_not_echo() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    let global = vv(&[(99, 3)]);

    // What the apply engine does: write into tmp, rename into place, record.
    let bytes = det_bytes(7, 300_000);
    let chunked = chunk_bytes(&bytes, ChunkParams::for_piece_len(PIECE_LEN));
    let record = RecordBuilder::file("applied.bin").chunked(&chunked).version(global.clone()).build();
    let part = peer.state.dirs().tmp.join("applied.part");
    std::fs::write(&part, &bytes).unwrap();
    let dest = peer.path("applied.bin");
    let applied = peer
        .state
        .apply_if_unmodified(record.clone(), chunked.chunks.clone(), move || {
            std::fs::rename(&part, &dest).map_err(|source| LocalError::Io { path: dest.clone(), source })?;
            Ok::<_, LocalError>(Some(()))
        })
        .await
        .unwrap();
    assert_eq!(applied, Gated::Applied { value: (), agrees: true });

    // A folder and its tombstone, the same way.
    let dir = RecordBuilder::dir("remote dir").vv(&[(99, 1)]).build();
    let dir_path = peer.path("remote dir");
    let applied = peer
        .state
        .apply_if_unmodified(dir.clone(), vec![], move || {
            std::fs::create_dir(&dir_path).map_err(|source| LocalError::Io { path: dir_path.clone(), source })?;
            Ok::<_, LocalError>(Some(()))
        })
        .await
        .unwrap();
    assert_eq!(applied, Gated::Applied { value: (), agrees: true });

    std::fs::write(peer.path("sentinel"), b"s").unwrap();
    peer.wait_for(&["+sentinel"]).await;
    peer.settle().await;
    assert_eq!(peer.tags(), ["+sentinel"], "our own writes came back as local changes");
    assert!(!peer.state.local_view(&rel("applied.bin")).await.unwrap().1);
    assert_eq!(peer.state.index().get(&rel("applied.bin")).unwrap().unwrap().record.version, global);

    // A later local edit bumps from the global vector.
    std::fs::write(peer.path("applied.bin"), b"local edit").unwrap();
    peer.wait_for(&["+applied.bin"]).await;
    assert_eq!(peer.last("applied.bin").version, vv(&[(99, 3), (1, 4)]));

    // An unannounced edit blocks an apply (the op never runs).
    std::fs::write(peer.path("applied.bin"), b"another local edit!").unwrap();
    assert!(peer.state.local_view(&rel("applied.bin")).await.unwrap().1);
    let mut remote = record.clone();
    remote.version = vv(&[(99, 9)]);
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran2 = ran.clone();
    let applied = peer
        .state
        .apply_if_unmodified(remote, chunked.chunks.clone(), move || {
            ran2.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, LocalError>(Some(()))
        })
        .await
        .unwrap();
    assert_eq!(applied, Gated::Refused);
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    peer.stop().await;
}

/// A write for a batch: renames `part` over `dest` when run (and counts
/// the run in `ran`).
fn rename_op(
    part: PathBuf,
    dest: PathBuf,
    ran: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl FnOnce() -> Result<Option<Wrote<()>>, LocalError> + Send + 'static {
    move || {
        ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::rename(&part, &dest).map_err(|source| LocalError::Io { path: dest.clone(), source })?;
        Ok(Some(Wrote { value: (), made: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reports_what_it_made_is_indexed_with_that_not_with_a_later_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    let bytes = b"the downloaded version".to_vec();
    let chunked = chunk_bytes(&bytes, ChunkParams::for_piece_len(PIECE_LEN));
    let record = RecordBuilder::file("f.txt").chunked(&chunked).version(vv(&[(99, 1)])).build();
    let part = peer.state.dirs().tmp.join("f.part");
    std::fs::write(&part, &bytes).unwrap();
    let dest = peer.path("f.txt");
    // The write renames its file into place, sees it through its own
    // descriptor, and then (as a user could, a moment later) the path is
    // replaced by another file.
    let op = move || {
        let file = std::fs::File::open(&part).map_err(|source| LocalError::Io { path: part.clone(), source })?;
        std::fs::rename(&part, &dest).map_err(|source| LocalError::Io { path: dest.clone(), source })?;
        let made = Meta::of_file(&file).map_err(|source| LocalError::Io { path: dest.clone(), source })?;
        let edit = dest.with_extension("edit");
        std::fs::write(&edit, b"a user's edit").unwrap();
        std::fs::rename(&edit, &dest).unwrap();
        Ok::<_, LocalError>(Some(Wrote { value: (), made: Some(made) }))
    };
    let results =
        peer.state.apply_all_if_unmodified::<(), LocalError, _>(vec![(record.clone(), chunked.chunks, op)]).await;
    let results: Vec<Gated<()>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, [Gated::Applied { value: (), agrees: true }]);
    let (entry, differs) = peer.state.local_view(&record.path).await.unwrap();
    assert_eq!(entry.unwrap().record, record, "the write is indexed");
    assert!(differs, "the edit after the write is seen as an edit, not taken for the write");
    peer.wait_until("the edit announced", |log| {
        log.iter().any(|r| r.path == record.path && r.version != record.version)
    })
    .await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_writes_is_checked_write_by_write_and_indexed_together() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::write(peer.path("edited.txt"), b"indexed").unwrap();
    peer.wait_for(&["+edited.txt"]).await;
    // An edit the scanner has not seen yet: the batch must refuse that one
    // write and make the others.
    std::fs::write(peer.path("edited.txt"), b"unannounced local edit").unwrap();

    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writes = Vec::new();
    let mut expected = Vec::new();
    for (i, name) in ["a.txt", "edited.txt", "b.txt", "a.txt"].iter().enumerate() {
        let bytes = format!("version {i} of {name}").into_bytes();
        let chunked = chunk_bytes(&bytes, ChunkParams::for_piece_len(PIECE_LEN));
        // The second write of a.txt is a newer version than the first.
        // edited.txt's is concurrent with the local edit whether or not the
        // scanner has indexed it yet: refused either way.
        let version = if *name == "edited.txt" { vv(&[(99, 1)]) } else { vv(&[(99, i as u64 + 1)]) };
        let record = RecordBuilder::file(name).chunked(&chunked).version(version).build();
        let part = peer.state.dirs().tmp.join(format!("{i}.part"));
        std::fs::write(&part, &bytes).unwrap();
        writes.push((record.clone(), chunked.chunks.clone(), rename_op(part, peer.path(name), ran.clone())));
        expected.push(record);
    }
    let results = peer.state.apply_all_if_unmodified::<(), LocalError, _>(writes).await;
    let results: Vec<Gated<()>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results,
        [
            Gated::Applied { value: (), agrees: true },
            Gated::Refused,
            Gated::Applied { value: (), agrees: true },
            Gated::Applied { value: (), agrees: true },
        ]
    );
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 3, "the refused write never ran");
    let index = peer.state.index();
    for i in [2, 3] {
        let entry = index.get(&expected[i].path).unwrap().unwrap();
        assert_eq!(entry.record, expected[i], "write {i} indexed as applied");
        assert!(!peer.state.local_view(&expected[i].path).await.unwrap().1, "write {i} indexed with its stat");
    }
    assert_eq!(std::fs::read(peer.path("a.txt")).unwrap(), b"version 3 of a.txt");
    // (The scanner may index the local edit meanwhile, never the refused write.)
    assert_ne!(index.get(&rel("edited.txt")).unwrap().unwrap().record, expected[1], "the refused write was indexed");
    assert_eq!(std::fs::read(peer.path("edited.txt")).unwrap(), b"unannounced local edit");

    // Two versions of one path in one batch: the second sees the first
    // indexed (with its stat), so it replaces it rather than being taken
    // for a local edit.
    let mut writes = Vec::new();
    for (i, n) in [(7u64, 10u64), (8, 20)] {
        let bytes = format!("version {n} of c.txt").into_bytes();
        let chunked = chunk_bytes(&bytes, ChunkParams::for_piece_len(PIECE_LEN));
        let record = RecordBuilder::file("c.txt").chunked(&chunked).version(vv(&[(99, n)])).build();
        let part = peer.state.dirs().tmp.join(format!("{i}.part"));
        std::fs::write(&part, &bytes).unwrap();
        writes.push((record, chunked.chunks.clone(), rename_op(part, peer.path("c.txt"), ran.clone())));
    }
    let results = peer.state.apply_all_if_unmodified::<(), LocalError, _>(writes).await;
    let results: Vec<Gated<()>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, [Gated::Applied { value: (), agrees: true }, Gated::Applied { value: (), agrees: true }]);
    assert_eq!(std::fs::read(peer.path("c.txt")).unwrap(), b"version 20 of c.txt");
    assert_eq!(index.get(&rel("c.txt")).unwrap().unwrap().record.version, vv(&[(99, 20)]));
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_version_and_mark_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::write(peer.path("x"), b"content").unwrap();
    peer.wait_for(&["+x"]).await;
    let mut merged = peer.last("x").clone();
    merged.version = merged.version.merge(&vv(&[(5, 7)])).bumped(ShortId(5)).unwrap();
    assert!(peer.state.adopt_version(&merged).await.unwrap());
    let mut wrong = merged.clone();
    wrong.content = ContentHash::of(b"other");
    assert!(!peer.state.adopt_version(&wrong).await.unwrap());
    peer.state.mark_dirty(&rel("x"));
    peer.settle().await;
    assert_eq!(peer.tags(), ["+x"], "adopting is not a local change");
    std::fs::write(peer.path("x"), b"changed").unwrap();
    peer.wait_for(&["+x"]).await;
    peer.wait_until("the edit", |log| log.len() == 2).await;
    assert_eq!(peer.last("x").version, merged.version.bumped(ME).unwrap());
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_inside_are_recorded_and_outside_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(tmp.path(), config()).await;
    std::fs::create_dir(peer.path("sub")).unwrap();
    std::fs::write(peer.path("target.txt"), b"t").unwrap();
    std::os::unix::fs::symlink("../target.txt", peer.path("sub/inside")).unwrap();
    std::os::unix::fs::symlink("../../outside", peer.path("sub/outside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", peer.path("absolute")).unwrap();
    std::os::unix::fs::symlink(".dartsync/identity", peer.path("sneaky")).unwrap();
    // A link to a folder is not followed.
    std::os::unix::fs::symlink("sub", peer.path("loop")).unwrap();
    peer.wait_for(&["+sub", "+target.txt", "+sub/inside", "+loop"]).await;
    peer.settle().await;
    let inside = peer.last("sub/inside");
    assert_eq!(inside.kind, FileKind::Symlink { target: "../target.txt".into() });
    assert!(inside.validate().is_ok());
    assert_eq!(peer.last("loop").kind, FileKind::Symlink { target: "sub".into() });
    let mut tags = peer.tags();
    tags.sort();
    assert_eq!(tags, ["+loop", "+sub", "+sub/inside", "+target.txt"]);
    peer.stop().await;
}
