//! The tracker's mass-change brake against the real binary: a tracker and
//! four peers on 127.0.0.1 syncing 2,000 files. A hostile key holder's
//! wipe (bumped tombstones for every path) and a peer's `rm -rf` of 80% of
//! the files are held (the other peers keep every file); `dartsync tracker
//! reject` gives the deleting peer its files back, `approve` publishes the
//! deletion everywhere; a few everyday deletions are never held.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{CONVERGE, Cluster, Options, Tree, snapshot, write};
use crate::hostile_client::Hostile;
use crate::util::{run, wait_until};

/// Folders of 100 files each.
const DIRS: usize = 20;
const PER_DIR: usize = 100;
/// Folders the deleting peer removes: 80% of the files.
const DELETED_DIRS: usize = 16;
/// Syncing 2,000 files in a debug build on two cores takes a while.
const SLOW: Duration = Duration::from_secs(180);

fn data_dir(cluster: &Cluster) -> String {
    cluster.dir.path().join("tracker-data").to_str().unwrap().to_owned()
}

/// `dartsync status --tracker --json`.
fn tracker_status(cluster: &Cluster) -> Value {
    let (code, out, err) = run(&["status", "--tracker", "--data", &data_dir(cluster), "--json"], &[]);
    assert!(code.code().is_some_and(|c| c < 2), "status --tracker: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Waits until the tracker holds a change of `device` with at least
/// `records` records; returns the held entry.
fn wait_held(cluster: &Cluster, device: &str, records: u64) -> Value {
    let start = Instant::now();
    loop {
        let status = tracker_status(cluster);
        let held = status["held"].as_array().cloned().unwrap_or_default();
        if let Some(h) =
            held.iter().find(|h| h["device"] == device || h["id"].as_str().is_some_and(|id| id.starts_with(device)))
            && h["records"].as_u64().unwrap_or(0) >= records
        {
            return h.clone();
        }
        if start.elapsed() > SLOW {
            panic!("no held change of {device} with {records} records; held: {held:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dartsync status --json DIR` of a peer.
fn peer_status(folder: &Path) -> Value {
    let (_, out, _) = run(&["status", "--json", folder.to_str().unwrap()], &[]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn files_in(tree: &Tree) -> usize {
    tree.values().filter(|n| matches!(n, crate::cluster::Node::File(..))).count()
}

fn tracker(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let data = data_dir(cluster);
    let mut all = vec!["tracker"];
    all.extend_from_slice(args);
    all.extend(["--data", &data]);
    let (code, out, err) = run(&all, &[]);
    (code.code().unwrap_or(-1), out, err)
}

fn remove_dirs(folder: &Path, n: usize) {
    for d in 0..n {
        std::fs::remove_dir_all(folder.join(format!("data/d{d:02}"))).unwrap();
    }
}

#[test]
fn mass_deletions_are_held_until_approved_and_a_rejected_device_gets_its_files_back() {
    let cluster = Cluster::start(Options::default());
    for d in 0..DIRS {
        for f in 0..PER_DIR {
            write(&cluster.folder(0), &format!("data/d{d:02}/f{f:03}.txt"), format!("file {d}/{f}\n").as_bytes());
        }
    }
    let full = cluster.wait_converged(0, SLOW);
    assert_eq!(files_in(&full), DIRS * PER_DIR);

    // Everyday deletions are published at once, never held.
    for f in 0..5 {
        std::fs::remove_file(cluster.folder(1).join(format!("data/d19/f{f:03}.txt"))).unwrap();
    }
    wait_until(CONVERGE, "5 deletions everywhere", || {
        (0..4).all(|i| !cluster.folder(i).join("data/d19/f004.txt").exists())
    });
    assert!(tracker_status(&cluster)["held"].as_array().unwrap().is_empty());
    let full = cluster.wait_converged(0, CONVERGE);
    let total = files_in(&full);

    // A hostile key holder announces a bumped tombstone for every path.
    let mut hostile = Hostile::start(&cluster.key, cluster.tracker_addr);
    wait_until(CONVERGE, "the hostile client to see the table", || hostile.table().len() >= full.len());
    let wipe: Vec<_> = hostile
        .table()
        .into_values()
        .filter(|r| !r.deleted)
        .map(|mut r| {
            let bump = hostile.next_version();
            r.version = r.version.merge(&bump);
            r.deleted = true;
            r.size = 0;
            r.content = dartsync_shared::ContentHash::empty();
            r.chunks = dartsync_shared::ContentHash::empty();
            r
        })
        .collect();
    hostile.announce_no_wait(&wipe);
    let id = hostile.peer_id().to_string();
    let held = wait_held(&cluster, &id[..8], wipe.len() as u64);
    assert!(held["deletes"].as_u64().unwrap() > 1000, "{held}");
    for i in 0..4 {
        assert_eq!(snapshot(&cluster.folder(i)), full, "peer{i} lost files to the held wipe");
    }
    let tracker_log = cluster.tracker.as_ref().unwrap().lines();
    assert_eq!(tracker_log.iter().filter(|l| l.contains("held a mass change from")).count(), 1, "one WARN");
    let (code, out, err) = tracker(&cluster, &["reject", &id[..10]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Rejected the mass change of test"), "{out}");
    hostile.goodbye();

    // A peer's `rm -rf` of 80% of the files is held: the others keep all.
    remove_dirs(&cluster.folder(3), DELETED_DIRS);
    let held = wait_held(&cluster, "peer3", (DELETED_DIRS * PER_DIR) as u64);
    assert!(held["deletes"].as_u64().unwrap() >= (DELETED_DIRS * PER_DIR) as u64, "{held}");
    cluster.peer(3).wait_for_line("the tracker holds this device's recent changes", CONVERGE);
    let peer3 = cluster.folder(3);
    wait_until(CONVERGE, "peer 3's status to say its changes are held", || {
        peer_status(&peer3)["held_by_tracker"]["deletes"].as_u64().is_some_and(|d| d > 1000)
    });
    let (_, out, _) = run(&["status", peer3.to_str().unwrap()], &[]);
    assert!(out.contains("Held by the tracker") && out.contains("dartsync tracker approve peer3"), "{out}");
    for i in 0..3 {
        assert_eq!(files_in(&snapshot(&cluster.folder(i))), total, "peer{i} lost files to the held deletion");
    }
    let (code, out, _) = run(&["status", "--tracker", "--data", &data_dir(&cluster)], &[]);
    assert!(code.success() || code.code() == Some(1));
    assert!(out.contains("Held mass changes") && out.contains("dartsync tracker approve peer3"), "{out}");

    // Rejected: peer 3 gets every file back.
    let (code, out, err) = tracker(&cluster, &["reject", "peer3"]);
    assert_eq!(code, 0, "{out}{err}");
    let back = cluster.wait_converged(0, SLOW);
    assert_eq!(back, full, "after reject every peer has every file again");
    cluster.peer(3).wait_for_line("the tracker rejected this device's mass change", CONVERGE);
    assert!(peer_status(&peer3)["held_by_tracker"].is_null(), "no longer held");

    // Nothing is held now: approve says so.
    let (code, _, err) = tracker(&cluster, &["approve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no change is held"), "{err}");

    // The same deletion again, approved this time: it reaches everyone.
    remove_dirs(&cluster.folder(3), DELETED_DIRS);
    wait_held(&cluster, "peer3", (DELETED_DIRS * PER_DIR) as u64);
    let (code, out, err) = tracker(&cluster, &["approve", "peer3"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Approved the mass change of peer3"), "{out}");
    let after = cluster.wait_converged(0, SLOW);
    assert_eq!(files_in(&after), total - DELETED_DIRS * PER_DIR);
    assert!(tracker_status(&cluster)["held"].as_array().unwrap().is_empty());
}
