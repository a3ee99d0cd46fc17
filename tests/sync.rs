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

    // A 1-byte edit in the middle: others fetch at most 4 (maximum-size)
    // chunks' worth of bytes.
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
        assert!(fetched <= 4 * MIB as u64, "peer{i} fetched {fetched} bytes for a 1-byte edit: {last}");
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
