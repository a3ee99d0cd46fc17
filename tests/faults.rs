//! End-to-end faults: crashes mid-download, lying holders, conflicts made
//! while the tracker is down, tracker crashes.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dartsync_shared::test_util::eventually;

use crate::util::run;

use crate::cluster::{
    CONVERGE, Cluster, Node, Options, concurrent_edits_while_tracker_is_down, random_bytes, snapshot, write,
};

const MIB: usize = 1024 * 1024;

/// The short id a peer logs at start ("peer <id> started").
fn peer_short_id(cluster: &Cluster, i: usize) -> String {
    let line = cluster.peer(i).wait_for_line("syncing ", Duration::from_secs(20));
    let id = line.split(" id=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    id[..8].to_owned()
}

#[test]
fn killed_download_resumes_without_refetching_and_never_shows_partial_files() {
    let mut cluster = Cluster::start(Options { peers: 3, ..Options::default() });
    // Restart peer 0 as a slow server so a download takes seconds, and
    // make it the only source: peers 1 and 2 would otherwise fetch the file
    // and serve it at full speed to a newcomer that starts late on a busy
    // machine, which then finishes before anything is persisted.
    cluster.kill_peer(1);
    cluster.kill_peer(2);
    cluster.kill_peer(0);
    cluster.start_peer_with(0, &["--test-serve-delay-ms", "40"]);
    let size = 48 * MIB;
    let data = random_bytes(size, 11);
    write(&cluster.folder(0), "big.bin", &data);
    let expected = snapshot(&cluster.folder(0));

    // Watch every synced folder: big.bin is either absent or complete.
    let stop = Arc::new(AtomicBool::new(false));
    let folders: Vec<_> = (0..4).map(|i| cluster.folder(i)).collect();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut violations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for f in &folders {
                    if let Ok(meta) = fs::metadata(f.join("big.bin"))
                        && meta.len() != size as u64
                    {
                        violations.push(format!("{} had {} bytes", f.display(), meta.len()));
                    }
                    for entry in fs::read_dir(f).into_iter().flatten().flatten() {
                        if entry.file_name().to_string_lossy().ends_with(".part") {
                            violations.push(format!("partial file {}", entry.path().display()));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            violations
        })
    };

    // Peer 3 joins and is killed once it has stored some progress.
    fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer(3);
    let tmp = cluster.folder(3).join(".dartsync/tmp");
    eventually(Duration::from_secs(60), "peer3 to store download progress", || {
        fs::read_dir(&tmp).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".state"))
    });
    // Let a few more chunks land (part of the scenario), then crash it.
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill_peer(3);
    assert!(!cluster.folder(3).join("big.bin").exists(), "download finished before the kill; test is void");

    cluster.start_peer(3);
    cluster.wait_tree(&expected, Duration::from_secs(180));
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.join().unwrap();
    assert!(violations.is_empty(), "partial files seen: {violations:?}");
    // The log line follows the rename into place by a moment.
    let line = cluster.peer(3).wait_for_line("transfer of big.bin done", CONVERGE);
    let fetched = crate::cluster::fetched_bytes(&line);
    assert!(fetched < (size as u64) * 9 / 10, "resumed download refetched {fetched} of {size} bytes: {line}");
}

#[test]
fn corrupt_holder_is_detected_and_dropped() {
    let mut cluster = Cluster::start(Options { peers: 3, piece_len: Some(64 * 1024), ..Options::default() });
    // Big enough (512 chunks) that the honest holders cannot take every
    // chunk before the liar's connection is up: the liar must be asked.
    write(&cluster.folder(0), "data.bin", &random_bytes(32 * MIB, 5));
    let expected = snapshot(&cluster.folder(0));
    cluster.wait_tree(&expected, CONVERGE);
    // Peer 1 becomes a liar; the honest holders serve slowly, so the
    // newcomer's downloader surely asks the liar for some chunks.
    cluster.kill_peer(1);
    cluster.start_peer_with(1, &["--test-corrupt-chunks"]);
    let liar = peer_short_id(&cluster, 1);
    for honest in [0, 2] {
        cluster.kill_peer(honest);
        cluster.start_peer_with(honest, &["--test-serve-delay-ms", "20"]);
    }
    for i in 0..3 {
        // Registered again, and up to date: its holdings are back at the
        // tracker before the newcomer asks who holds data.bin.
        cluster.wait_registered(i, 1);
        let (status, out, err) = run(&["status", cluster.folder(i).to_str().unwrap(), "--wait", "60"], &[]);
        assert!(status.success(), "peer{i} not up to date: {out}{err}");
    }
    fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer(3);
    cluster.wait_tree(&expected, CONVERGE);
    // The log line follows the rename into place by a moment.
    let line = cluster.peer(3).wait_for_line("transfer of data.bin done", CONVERGE);
    assert!(!line.contains(&format!("{liar}=")), "bytes from the liar were accepted: {line}");
    cluster.peer(3).wait_for_line("holder dropped: it sent bad data", Duration::from_secs(5));
}

#[test]
fn concurrent_edits_while_tracker_is_down_keep_both_versions() {
    let mut cluster = Cluster::start(Options::default());
    write(&cluster.folder(0), "doc.txt", b"original\n");
    write(&cluster.folder(0), "keep.txt", b"keep me\n");
    cluster.wait_converged(0, CONVERGE);
    // Concurrent edits of doc.txt (peer 1 later), edit vs delete of keep.txt.
    concurrent_edits_while_tracker_is_down(&mut cluster, "doc.txt");
    write(&cluster.folder(2), "keep.txt", b"edited, not deleted\n");
    fs::remove_file(cluster.folder(3).join("keep.txt")).unwrap();
    // Give the scanners time to index the edits before the tracker is back.
    for i in 0..4 {
        cluster.peer(i).wait_for_line("local change", Duration::from_secs(20));
    }
    cluster.restart_tracker();
    let tree = cluster.wait_converged(0, CONVERGE);
    let doc = fs::read(cluster.folder(0).join("doc.txt")).unwrap();
    assert_eq!(doc, b"edit from peer 1\n", "later mtime should win");
    let conflicts: Vec<_> =
        tree.keys().filter(|k| k.starts_with("doc.sync-conflict-") && k.ends_with(".txt")).collect();
    assert_eq!(conflicts.len(), 1, "expected one conflict copy: {tree:?}");
    let loser = fs::read(cluster.folder(2).join(conflicts[0])).unwrap();
    assert_eq!(loser, b"edit from peer 0\n");
    assert_eq!(tree.get("keep.txt"), Some(&Node::File(blake3::hash(b"edited, not deleted\n"), 20)));
}

#[test]
fn tracker_crash_loses_and_resurrects_nothing() {
    let mut cluster = Cluster::start(Options::default());
    write(&cluster.folder(0), "a.txt", b"a");
    write(&cluster.folder(0), "gone.txt", b"to be deleted");
    cluster.wait_converged(0, CONVERGE);
    fs::remove_file(cluster.folder(1).join("gone.txt")).unwrap();
    let mut expected = snapshot(&cluster.folder(1));
    cluster.wait_tree(&expected, CONVERGE);
    cluster.kill_tracker();
    cluster.restart_tracker();
    write(&cluster.folder(2), "after.txt", b"written after the crash");
    expected.insert("after.txt".into(), Node::File(blake3::hash(b"written after the crash"), 23));
    cluster.wait_tree(&expected, CONVERGE);
    for i in 0..4 {
        assert!(!cluster.folder(i).join("gone.txt").exists(), "gone.txt resurrected on peer{i}");
    }
}
