//! End-to-end sync: one tracker and four or more peers of the real binary
//! on 127.0.0.1 converge to identical trees after creates, edits,
//! deletes, renames and folder operations.

use std::fs;
use std::time::Duration;

use crate::cluster::{CONVERGE, Cluster, Node, Options, fetched_bytes, random_bytes, snapshot, write};
use crate::util::wait_until;

const MIB: usize = 1024 * 1024;

#[test]
fn files_and_folders_converge_through_every_operation() {
    let cluster = Cluster::start(Options::default());
    for i in 0..4 {
        cluster.wait_registered(i, 1);
    }
    let p0 = cluster.folder(0);
    write(&p0, "hello.txt", b"hello world\n");
    write(&p0, "empty.txt", b"");
    write(&p0, "with space/ünïcödé name.md", b"unicode");
    write(&p0, "deep/a/b/c/d/e/leaf.bin", &random_bytes(300_000, 1));
    fs::create_dir_all(p0.join("empty-folder/inner")).unwrap();
    let expected = snapshot(&p0);
    assert!(expected.contains_key("empty-folder/inner"));
    cluster.wait_tree(&expected, CONVERGE);

    // Edit on peer 1.
    write(&cluster.folder(1), "hello.txt", b"hello again\n");
    // Delete on peer 2.
    fs::remove_file(cluster.folder(2).join("empty.txt")).unwrap();
    // Rename a nested folder on peer 3.
    fs::rename(cluster.folder(3).join("deep/a"), cluster.folder(3).join("deep/renamed")).unwrap();
    let mut expected = expected;
    expected.insert("hello.txt".into(), Node::File(blake3::hash(b"hello again\n"), 12));
    expected.remove("empty.txt");
    let moved: Vec<(String, Node)> =
        expected.iter().filter(|(k, _)| k.starts_with("deep/a")).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in moved {
        expected.remove(&k);
        expected.insert(k.replacen("deep/a", "deep/renamed", 1), v);
    }
    cluster.wait_tree(&expected, CONVERGE);

    // Delete a nested folder tree on peer 0, and an empty folder on peer 1.
    fs::remove_dir_all(cluster.folder(0).join("deep")).unwrap();
    fs::remove_dir_all(cluster.folder(1).join("empty-folder/inner")).unwrap();
    expected.retain(|k, _| !k.starts_with("deep") && k != "empty-folder/inner");
    cluster.wait_tree(&expected, CONVERGE);

    // Version history: the edited file's previous content is kept elsewhere.
    let versions = cluster.folder(2).join(".dartsync/versions");
    let kept: Vec<_> = fs::read_dir(&versions)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hello.txt~"))
        .map(|e| fs::read(e.path()).unwrap())
        .collect();
    assert!(kept.contains(&b"hello world\n".to_vec()), "old version not kept: {kept:?}");
}

#[test]
fn thousands_of_small_files_converge() {
    let cluster = Cluster::start(Options::default());
    let p0 = cluster.folder(0);
    for i in 0..2000 {
        write(&p0, &format!("many/d{}/f{i}.txt", i % 20), format!("file {i}\n").as_bytes());
    }
    let expected = snapshot(&p0);
    assert_eq!(expected.len(), 2000 + 20 + 1);
    cluster.wait_tree(&expected, Duration::from_secs(300));
    // Three receivers on one address, 16 downloads each: their handshakes
    // with one holder stay within what its piece server lets one address
    // have in the handshake, so none is closed (and no file waits as
    // "holder unreachable" for a retry).
    for i in 0..4 {
        let displaced: Vec<String> =
            cluster.peer(i).lines().into_iter().filter(|l| l.contains("idle unauthenticated connections")).collect();
        assert!(displaced.is_empty(), "peer{i} closed handshakes of downloaders: {displaced:?}");
    }
}

#[test]
fn big_file_delta_edit_and_rename() {
    let cluster = Cluster::start(Options::default());
    for i in 0..4 {
        cluster.wait_registered(i, 1);
    }
    let p0 = cluster.folder(0);
    let mut data = random_bytes(64 * MIB, 7);
    write(&p0, "big.bin", &data);
    let expected = snapshot(&p0);
    cluster.wait_tree(&expected, Duration::from_secs(120));

    // A 1-byte edit in the middle: others fetch the one part of the one
    // changed chunk that holds the byte (parts are at most 32 KiB), not
    // the chunk (256 KiB on average).
    data[32 * MIB] ^= 0xFF;
    write(&p0, "big.bin", &data);
    let expected = snapshot(&p0);
    cluster.wait_tree(&expected, Duration::from_secs(120));
    for i in 1..4 {
        // The log line follows the rename into place by a moment: the
        // second "synced" line is the edit's.
        wait_until(CONVERGE, &format!("peer{i} to log the edit"), || cluster.transfer_lines(i, "big.bin").len() >= 2);
        let lines = cluster.transfer_lines(i, "big.bin");
        let last = lines.last().expect("synced line");
        let fetched = fetched_bytes(last);
        assert!(fetched <= 64 * 1024, "peer{i} fetched {fetched} bytes for a 1-byte edit: {last}");
    }

    // A rename: nothing fetched.
    fs::rename(p0.join("big.bin"), p0.join("moved.bin")).unwrap();
    let expected = snapshot(&p0);
    cluster.wait_tree(&expected, Duration::from_secs(120));
    for i in 1..4 {
        let last = cluster.peer(i).wait_for_line("transfer of moved.bin done", CONVERGE);
        let last = &last;
        assert_eq!(fetched_bytes(last), 0, "peer{i} fetched bytes for a rename: {last}");
    }
}

#[test]
fn late_joiner_receives_everything_and_existing_files_merge() {
    let mut cluster = Cluster::start(Options { peers: 3, ..Options::default() });
    write(&cluster.folder(0), "from0/a.txt", b"a");
    write(&cluster.folder(1), "from1/b.txt", b"b");
    cluster.wait_converged(0, CONVERGE);
    // Peer 3 joins empty; peer 4 joins with files of its own.
    fs::create_dir_all(cluster.folder(3)).unwrap();
    write(&cluster.folder(4), "from4/c.txt", b"c");
    write(&cluster.folder(4), "from4/sub/d.txt", b"d");
    cluster.start_peer(3);
    cluster.start_peer(4);
    let tree = cluster.wait_converged(0, CONVERGE);
    for path in ["from0/a.txt", "from1/b.txt", "from4/c.txt", "from4/sub/d.txt"] {
        assert!(tree.contains_key(path), "{path} missing after merge: {tree:?}");
    }
    assert_eq!(cluster.running().len(), 5);
}

#[test]
fn multi_source_download_uses_every_holder() {
    let mut cluster = Cluster::start(Options { peers: 3, piece_len: Some(64 * 1024), ..Options::default() });
    write(&cluster.folder(0), "shared.bin", &random_bytes(24 * MIB, 3));
    let expected = snapshot(&cluster.folder(0));
    cluster.wait_tree(&expected, Duration::from_secs(120));
    // Three holders now; a fourth peer joins and fetches from all of them.
    fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer(3);
    cluster.wait_tree(&expected, Duration::from_secs(120));
    // The log line follows the rename into place by a moment.
    let line = cluster.peer(3).wait_for_line("synced shared.bin", CONVERGE);
    assert!(line.contains("fetched from 3 peers"), "not multi-source: {line}");
}

#[test]
fn a_chunk_list_of_many_pages_syncs_end_to_end() {
    // The smallest piece length makes a 2 MiB file about 500 chunks; the
    // joiners ask for chunk lists 16 entries at a time, so every download
    // assembles its list from some 30 pages.
    let mut cluster = Cluster::start(Options { peers: 1, piece_len: Some(4 * 1024), ..Options::default() });
    let bytes = random_bytes(2 * MIB, 11);
    write(&cluster.folder(0), "paged.bin", &bytes);
    let expected = snapshot(&cluster.folder(0));
    for i in 1..4 {
        fs::create_dir_all(cluster.folder(i)).unwrap();
        cluster.start_peer_with(i, &["--test-chunk-list-page", "16"]);
    }
    cluster.wait_tree(&expected, Duration::from_secs(120));
    for i in 1..4 {
        // The log line follows the rename into place by a moment.
        let line = cluster.peer(i).wait_for_line("transfer of paged.bin done", CONVERGE);
        assert_eq!(fetched_bytes(&line), bytes.len() as u64, "peer{i}: {line}");
    }
}

/// Asserts every receiver (peers 1..4) logged a finished transfer of
/// `path` that fetched at most 1% of `len` bytes over the network.
fn assert_fetched_at_most_one_percent(cluster: &Cluster, path: &str, len: usize) {
    for i in 1..4 {
        let line = cluster.peer(i).wait_for_line(&format!("transfer of {path} done"), CONVERGE);
        let fetched = fetched_bytes(&line);
        assert!(fetched * 100 <= len as u64, "peer{i} fetched {fetched} of {len} bytes for a move of {path}: {line}");
    }
}

#[test]
fn renames_and_moves_fetch_nothing_whatever_else_changes() {
    let cluster = Cluster::start(Options::default());
    for i in 0..4 {
        cluster.wait_registered(i, 1);
    }
    let p0 = cluster.folder(0);
    let (a, b, c) = (random_bytes(24 * MIB, 21), random_bytes(16 * MIB, 22), random_bytes(8 * MIB, 23));
    write(&p0, "a.bin", &a);
    write(&p0, "dir/b.bin", &b);
    write(&p0, "c.bin", &c);
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(120));

    // A move into a folder that does not exist yet, together with a
    // hundred new small files.
    fs::create_dir_all(p0.join("new/sub")).unwrap();
    fs::rename(p0.join("a.bin"), p0.join("new/sub/a.bin")).unwrap();
    for i in 0..100 {
        write(&p0, &format!("small/f{i}.txt"), format!("small {i}\n").as_bytes());
    }
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(120));
    assert_fetched_at_most_one_percent(&cluster, "new/sub/a.bin", a.len());

    // A folder renamed with a big file in it, and a file deleted.
    fs::rename(p0.join("dir"), p0.join("renamed")).unwrap();
    fs::remove_file(p0.join("small/f0.txt")).unwrap();
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(120));
    assert_fetched_at_most_one_percent(&cluster, "renamed/b.bin", b.len());

    // Two files swap names through a third.
    fs::rename(p0.join("c.bin"), p0.join("swap.tmp")).unwrap();
    fs::rename(p0.join("new/sub/a.bin"), p0.join("c.bin")).unwrap();
    fs::rename(p0.join("swap.tmp"), p0.join("new/sub/a.bin")).unwrap();
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(120));
    for i in 1..4 {
        wait_until(CONVERGE, &format!("peer{i} to log both swapped files"), || {
            cluster.transfer_lines(i, "c.bin").len() >= 2 && cluster.transfer_lines(i, "new/sub/a.bin").len() >= 2
        });
        for (path, len) in [("c.bin", a.len()), ("new/sub/a.bin", c.len())] {
            let line = cluster.transfer_lines(i, path).pop().unwrap();
            let fetched = fetched_bytes(&line);
            assert!(fetched * 100 <= len as u64, "peer{i} fetched {fetched} of {len} bytes for the swap: {line}");
        }
    }
}

#[test]
fn a_file_written_with_pauses_is_announced_once_whole_and_never_seen_half_written() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let cluster = Cluster::start(Options::default());
    for i in 0..4 {
        cluster.wait_registered(i, 1);
    }
    let parts: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(300_000, 40 + i)).collect();
    let whole = parts.concat();
    let receivers: Vec<_> = (1..4).map(|i| cluster.folder(i).join("slow.bin")).collect();
    // Watches the receivers the whole time: any content other than the
    // whole file is a half-written announcement.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, wrong, whole, receivers) = (stop.clone(), wrong.clone(), whole.clone(), receivers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for path in &receivers {
                    if let Ok(bytes) = fs::read(path)
                        && bytes != whole
                    {
                        wrong.lock().unwrap().push((path.clone(), bytes.len()));
                    }
                }
                std::thread::yield_now();
            }
        })
    };
    let mut file = fs::File::create(cluster.folder(0).join("slow.bin")).unwrap();
    for part in &parts {
        file.write_all(part).unwrap();
        // The scenario: a writer that keeps the file open and pauses for
        // up to 2 s between writes (a recording, a download). Not a wait
        // for anything.
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(file);
    wait_until(CONVERGE, "the whole file on every receiver", || {
        receivers.iter().all(|p| fs::read(p).is_ok_and(|b| b == whole))
    });
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let wrong = wrong.lock().unwrap();
    assert!(wrong.is_empty(), "receivers saw a half-written file (path, length): {:?}", &wrong[..wrong.len().min(5)]);
    let announced: Vec<String> =
        cluster.peer(0).lines().into_iter().filter(|l| l.contains("announced") && l.contains("slow.bin")).collect();
    assert_eq!(announced.len(), 1, "announced more than once: {announced:?}");
}
