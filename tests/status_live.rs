//! `dartsync status` against a live cluster: the real tracker and peers,
//! each state reached for real (up to date, syncing, waiting, tracker
//! unreachable, a lost conflict), read through the control sockets with
//! the real `status` command.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{
    CONVERGE, Cluster, Options, concurrent_edits_while_tracker_is_down, random_bytes, snapshot, write,
};
use crate::util::run;

/// Pause between two status polls.
const POLL: Duration = Duration::from_millis(100);

/// `dartsync status --json DIR`: exit code and the parsed object.
fn status(folder: &Path) -> (i32, Value) {
    let (code, out, err) = run(&["status", "--json", folder.to_str().unwrap()], &[]);
    let code = code.code().expect("status exited by a signal");
    let json =
        if code == 2 { Value::Null } else { serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")) };
    (code, json)
}

/// Polls peer `i`'s status until `check` holds; returns that status.
fn wait_status(cluster: &Cluster, i: usize, what: &str, check: impl Fn(i32, &Value) -> bool) -> Value {
    let folder = cluster.folder(i);
    let start = Instant::now();
    loop {
        // Each poll runs a process: poll every 100 ms, not faster.
        let (code, json) = status(&folder);
        if check(code, &json) {
            return json;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "peer{i}: timed out waiting for {what}; last status (exit {code}): {json:#}"
        );
        std::thread::sleep(POLL);
    }
}

fn state(json: &Value) -> &str {
    json["state"].as_str().unwrap_or("")
}

fn tracker_data(cluster: &Cluster) -> String {
    cluster.dir.path().join("tracker-data").to_str().unwrap().to_owned()
}

#[test]
fn every_peer_reports_up_to_date_and_the_tracker_lists_four_devices_by_name() {
    let cluster = Cluster::start(Options::default());
    write(&cluster.folder(0), "docs/hello.txt", b"hello");
    cluster.wait_converged(0, CONVERGE);
    for i in 0..4 {
        let json = wait_status(&cluster, i, "up to date with four devices online and up to date", |code, j| {
            let devices = j["devices"].as_array().map(Vec::as_slice).unwrap_or_default();
            code == 0
                && state(j) == "up_to_date"
                && devices.len() == 4
                && devices.iter().all(|d| d["online"] == true && d["up_to_date"] == true)
        });
        assert_eq!(json["tracker"]["connected"], true);
        assert_eq!((json["files"].as_u64(), json["bytes"].as_u64()), (Some(1), Some(5)));
        assert_eq!(json["pending"]["files"], 0);
        let mine: Vec<&Value> =
            json["devices"].as_array().unwrap().iter().filter(|d| d["this_device"] == true).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0]["name"], format!("peer{i}"));
        // The human form says the same, and exits 0.
        let (code, out, _) = run(&["status", cluster.folder(i).to_str().unwrap()], &[]);
        assert_eq!(code.code(), Some(0), "{out}");
        assert!(out.starts_with("Up to date"), "{out}");
    }
    let data = tracker_data(&cluster);
    let (code, out, err) = run(&["status", "--tracker", "--data", &data, "--json"], &[]);
    assert_eq!(code.code(), Some(0), "{out}{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> =
        json["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["peer0", "peer1", "peer2", "peer3"]);
    assert!(json["devices"].as_array().unwrap().iter().all(|d| d["online"] == true && d["addr"].is_string()));
    let (_, out, _) = run(&["status", "--tracker", "--data", &data], &[]);
    for i in 0..4 {
        assert!(out.contains(&format!("peer{i}")), "{out}");
    }
}

#[test]
fn a_slow_transfer_reports_syncing_with_pending_bytes_going_down() {
    let mut cluster = Cluster::start(Options { peers: 3, piece_len: Some(64 * 1024), ..Options::default() });
    // Peer 3 holds the file alone and serves every chunk late.
    fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer_with(3, &["--test-serve-delay-ms", "150"]);
    cluster.wait_registered(3, 1);
    let size = 8 << 20;
    write(&cluster.folder(3), "slow.bin", &random_bytes(size, 5));
    let first = wait_status(&cluster, 1, "syncing with bytes pending", |code, j| {
        code == 1 && state(j) == "syncing" && j["pending"]["bytes"].as_u64().is_some_and(|b| b > 0)
    });
    let before = first["pending"]["bytes"].as_u64().unwrap();
    assert!(before <= size as u64, "{first:#}");
    let second = wait_status(&cluster, 1, "fewer bytes pending while still syncing", |_, j| {
        state(j) == "syncing" && j["pending"]["bytes"].as_u64().is_some_and(|b| b < before && b > 0)
    });
    let transfers = second["transfers"].as_array().unwrap();
    assert_eq!(transfers.len(), 1, "{second:#}");
    assert_eq!(transfers[0]["path"], "slow.bin");
    assert!(transfers[0]["done"].as_u64().unwrap() > 0);
    wait_status(&cluster, 1, "up to date once the file is in", |code, j| code == 0 && state(j) == "up_to_date");
    assert_eq!(fs::read(cluster.folder(1).join("slow.bin")).unwrap().len(), size);
}

#[test]
fn a_path_that_cannot_be_installed_is_listed_as_waiting_with_its_reason() {
    let mut cluster = Cluster::start(Options { peers: 3, ..Options::default() });
    // Peer 3 keeps a petabyte free: every download would eat into it.
    fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer_with(3, &["--min-disk-free", "1000000000000000"]);
    cluster.wait_registered(3, 1);
    write(&cluster.folder(0), "big.bin", &random_bytes(100_000, 1));
    let json = wait_status(&cluster, 3, "waiting for disk space", |code, j| code == 1 && state(j) == "waiting");
    assert_eq!(json["waiting_total"], 1);
    assert_eq!(json["waiting"][0]["path"], "big.bin");
    let reason = json["waiting"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("disk full") && reason.contains("free some space"), "{reason}");
    let (_, out, _) = run(&["status", cluster.folder(3).to_str().unwrap()], &[]);
    assert!(out.starts_with("Waiting") && out.contains("big.bin") && out.contains("disk full"), "{out}");
}

#[test]
fn a_download_whose_holder_vanished_asks_the_tracker_waits_for_a_holder_and_finishes_when_it_returns() {
    let mut cluster = Cluster::start(Options { peers: 0, piece_len: Some(64 * 1024), ..Options::default() });
    // The only holder serves slowly: 512 chunks take seconds, so the
    // newcomer is mid-download when the holder dies.
    let body = random_bytes(32 << 20, 9);
    write(&cluster.folder(0), "big.bin", &body);
    cluster.start_peer_with(0, &["--test-serve-delay-ms", "20"]);
    let (ok, out, err) = run(&["status", cluster.folder(0).to_str().unwrap(), "--wait", "60"], &[]);
    assert!(ok.success(), "peer0 not up to date: {out}{err}");
    fs::create_dir_all(cluster.folder(1)).unwrap();
    cluster.start_peer(1);
    wait_status(&cluster, 1, "downloading big.bin", |_, j| state(j) == "syncing");
    cluster.kill_peer(0);
    // The tracker pages no departure: the newcomer finds out by failing,
    // asks which peers hold big.bin now, and hears none.
    let json = wait_status(&cluster, 1, "no holder online", |_, j| {
        j["waiting"][0]["reason"].as_str().is_some_and(|r| r.contains("no peer that has it is online"))
    });
    assert_eq!(json["waiting"][0]["path"], "big.bin");
    assert!(!cluster.folder(1).join("big.bin").exists());
    // The holder returns: its announcement is paged to the peer lacking
    // the file, which finishes it.
    cluster.start_peer(0);
    let expected = snapshot(&cluster.folder(0));
    cluster.wait_tree(&expected, CONVERGE);
    assert_eq!(fs::read(cluster.folder(1).join("big.bin")).unwrap(), body);
}

#[test]
fn with_the_tracker_stopped_status_says_tracker_unreachable() {
    let mut cluster = Cluster::start(Options::default());
    wait_status(&cluster, 0, "up to date", |code, j| code == 0 && state(j) == "up_to_date");
    cluster.kill_tracker();
    let json =
        wait_status(&cluster, 0, "tracker unreachable", |code, j| code == 1 && state(j) == "tracker_unreachable");
    assert_eq!(json["tracker"]["connected"], false);
    assert_eq!(json["tracker"]["addr"], cluster.tracker_addr.to_string());
    let (code, out, _) = run(&["status", cluster.folder(0).to_str().unwrap()], &[]);
    assert_eq!(code.code(), Some(1));
    assert!(out.starts_with("Tracker unreachable"), "{out}");
    // Local changes made meanwhile are counted until the tracker is back.
    write(&cluster.folder(0), "offline.txt", b"made while the tracker was away");
    wait_status(&cluster, 0, "one unannounced change", |_, j| j["unannounced"] == 1);
    cluster.restart_tracker();
    wait_status(&cluster, 0, "up to date again", |code, j| code == 0 && j["unannounced"] == 0);
}

#[test]
fn the_peer_whose_edit_lost_a_conflict_is_told_and_lists_it() {
    let mut cluster = Cluster::start(Options::default());
    write(&cluster.folder(0), "doc.txt", b"original\n");
    cluster.wait_converged(0, CONVERGE);
    // Peer 1's edit is the later one: it keeps the name.
    concurrent_edits_while_tracker_is_down(&mut cluster, "doc.txt");
    for i in 0..2 {
        cluster.peer(i).wait_for_line("will be announced when the tracker is back", Duration::from_secs(20));
    }
    cluster.restart_tracker();
    let tree = cluster.wait_converged(0, CONVERGE);
    let copy = tree.keys().find(|k| k.starts_with("doc.sync-conflict-")).expect("a conflict copy").clone();
    assert!(copy.ends_with("-peer0.txt"), "the copy is named after the device that lost: {copy}");
    let warn = cluster.peer(0).wait_for_line("conflict on doc.txt", CONVERGE);
    assert!(warn.contains("WARN") && warn.contains(&copy) && warn.contains("peer1"), "{warn}");
    let json = wait_status(&cluster, 0, "the conflict listed", |_, j| {
        j["conflicts"].as_array().is_some_and(|c| !c.is_empty())
    });
    let conflict = &json["conflicts"][0];
    assert_eq!((conflict["path"].as_str(), conflict["copy"].as_str()), (Some("doc.txt"), Some(copy.as_str())));
    assert_eq!((conflict["winner"].as_str(), conflict["loser"].as_str()), (Some("peer1"), Some("peer0")));
    assert!(
        !cluster.peer(1).lines().iter().any(|l| l.contains("conflict on doc.txt")),
        "the winner is not told it lost"
    );
}

#[test]
fn a_new_peer_logs_nothing_per_file_for_old_tombstones() {
    // Deleting 1,000 of 1,001 files is a mass change the brake would hold
    // (tests/brake.rs covers that); here it is meant, so the brake is off.
    let brake_off = ["--mass-change-files", "0", "--mass-change-percent", "0"].map(String::from).to_vec();
    let mut cluster = Cluster::start(Options { tracker_args: brake_off, ..Options::default() });
    let p0 = cluster.folder(0);
    for n in 0..1000 {
        write(&p0, &format!("old/f{n:04}.txt"), format!("{n}").as_bytes());
    }
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(180));
    fs::remove_dir_all(p0.join("old")).unwrap();
    write(&p0, "kept.txt", b"still here");
    cluster.wait_tree(&snapshot(&p0), Duration::from_secs(180));
    // A fresh peer joins a table holding 1,000 tombstones.
    fs::create_dir_all(cluster.folder(4)).unwrap();
    cluster.start_peer(4);
    wait_status(&cluster, 4, "up to date", |code, j| code == 0 && state(j) == "up_to_date");
    let lines = cluster.peer(4).lines();
    let per_file: Vec<&String> = lines.iter().filter(|l| l.contains(" INFO ") && l.contains("old/f")).collect();
    assert!(per_file.is_empty(), "{} INFO lines about old tombstones, e.g. {:?}", per_file.len(), per_file.first());
    let up = lines.iter().find(|l| l.contains("up to date (")).expect("an up-to-date line");
    assert!(up.contains("up to date (1 file, 10 B)"), "{up}");
    assert!(cluster.folder(4).join("kept.txt").exists());
}

#[test]
fn a_peer_is_not_up_to_date_before_its_startup_scan_is_announced() {
    // A folder of 3,000 files before its peer first starts: its startup
    // scan takes a while, and until every file is announced the peer must
    // not say "up to date" (it once did, with 0 files, a moment after
    // registering; a second peer that then waited for "up to date" got
    // an empty folder).
    let mut cluster = Cluster::start(Options { peers: 0, ..Options::default() });
    let p0 = cluster.folder(0);
    for n in 0..3000 {
        write(&p0, &format!("d{:02}/f{n:04}.txt", n / 100), format!("file {n}").as_bytes());
    }
    let want = snapshot(&p0);
    cluster.start_peer(0);
    // What a user runs: `status --wait` on each, once.
    let wait = |folder: &Path| -> Value {
        let (code, out, err) = run(&["status", "--wait", "300", "--json", folder.to_str().unwrap()], &[]);
        assert_eq!(code.code(), Some(0), "{}: {out}{err}", folder.display());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let json = wait(&p0);
    assert_eq!(json["files"], 3000, "peer0 said up to date before the cluster had its files: {json:#}");
    fs::create_dir_all(cluster.folder(1)).unwrap();
    cluster.start_peer(1);
    assert_eq!(wait(&cluster.folder(1))["files"], 3000);
    // Both said up to date: the new peer has every file, at once.
    let got = snapshot(&cluster.folder(1));
    assert!(got == want, "peer1 said up to date without every file: {}", crate::cluster::diff(&want, &got));
}
