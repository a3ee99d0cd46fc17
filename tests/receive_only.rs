//! Receive-only peers: a tracker and four peers of the real binary, one of
//! them started with `--receive-only`. Its local edits never reach the
//! others, `dartsync status` lists them, `dartsync revert` puts back the
//! cluster's version (the local one kept in the history), and a newer
//! cluster version wins over a kept local edit.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{CONVERGE, Cluster, Options, snapshot, write};
use crate::util::run;

/// The receive-only peer.
const RO: usize = 3;

/// `dartsync status --json DIR`, parsed (Null when unreachable).
fn status(folder: &Path) -> Value {
    let (code, out, _) = run(&["status", "--json", folder.to_str().unwrap()], &[]);
    if code.code() == Some(2) { Value::Null } else { serde_json::from_str(&out).unwrap_or(Value::Null) }
}

/// Polls peer `i`'s status until `check` holds.
fn wait_status(cluster: &Cluster, i: usize, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let json = status(&cluster.folder(i));
        if check(&json) {
            return json;
        }
        if start.elapsed() > CONVERGE {
            panic!("peer{i}: timed out waiting for {what}; last status: {json:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every history file of `rel`'s name in `folder`, as (name, content).
fn history_of(folder: &Path, rel: &str) -> Vec<(String, String)> {
    let path = folder.join(".dartsync/versions").join(rel);
    let (dir, name) = (path.parent().unwrap().to_owned(), path.file_name().unwrap().to_str().unwrap().to_owned());
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_owned();
            n.starts_with(&format!("{name}~")).then(|| (n, fs::read_to_string(e.path()).unwrap_or_default()))
        })
        .collect();
    out.sort();
    out
}

fn read(folder: &Path, rel: &str) -> Option<String> {
    fs::read_to_string(folder.join(rel)).ok()
}

#[test]
fn a_receive_only_peer_keeps_its_edits_to_itself_and_revert_puts_back_the_clusters_version() {
    let mut cluster = Cluster::start(Options::default());
    cluster.kill_peer(RO);
    cluster.start_peer_with(RO, &["--receive-only"]);
    write(&cluster.folder(0), "a.txt", b"cluster a\n");
    write(&cluster.folder(0), "docs/b.txt", b"cluster b\n");
    let agreed = cluster.wait_converged(0, CONVERGE);
    assert!(agreed.contains_key("docs/b.txt"), "the receive-only peer receives: {agreed:?}");

    // Local changes on the receive-only peer: an edit, a new file, a
    // deletion.
    let ro = cluster.folder(RO);
    write(&ro, "a.txt", b"local edit\n");
    write(&ro, "mine.txt", b"only here\n");
    fs::remove_file(ro.join("docs/b.txt")).unwrap();
    let st = wait_status(&cluster, RO, "three local changes listed", |s| s["local_changes_total"] == 3);
    assert_eq!(st["receive_only"], true);
    let listed: Vec<&str> = st["local_changes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(listed, ["a.txt", "docs/b.txt", "mine.txt"]);
    let (code, out, _) = run(&["status", ro.to_str().unwrap()], &[]);
    assert!(code.code().is_some_and(|c| c < 2), "{out}");
    assert!(out.contains("receive-only") && out.contains("dartsync revert"), "{out}");

    // The cluster still flows to it, and nothing flows back.
    write(&cluster.folder(0), "marker.txt", b"after the local edits\n");
    crate::util::wait_until(CONVERGE, "the marker to reach the receive-only peer", || {
        read(&ro, "marker.txt").is_some()
    });
    for i in 0..RO {
        crate::util::wait_until(CONVERGE, "the marker everywhere", || read(&cluster.folder(i), "marker.txt").is_some());
        let f = cluster.folder(i);
        assert_eq!(read(&f, "a.txt").as_deref(), Some("cluster a\n"), "peer{i} got the local edit");
        assert_eq!(read(&f, "docs/b.txt").as_deref(), Some("cluster b\n"), "peer{i} got the deletion");
        assert!(read(&f, "mine.txt").is_none(), "peer{i} got the new file");
    }
    assert!(cluster.peer(0).lines().iter().all(|l| !l.contains("mine.txt")), "peer0 heard of mine.txt");

    // `revert` on a peer that is not receive-only is refused.
    let (code, _, err) = run(&["revert", cluster.folder(0).to_str().unwrap()], &[]);
    assert_eq!(code.code(), Some(1), "{err}");
    assert!(err.contains("not receive-only"), "{err}");

    // `revert` puts the cluster's version back and keeps the local ones.
    let (code, out, err) = run(&["revert", ro.to_str().unwrap()], &[]);
    assert_eq!(code.code(), Some(0), "{out}{err}");
    assert!(out.contains("Reverted 3 local changes"), "{out}");
    let want = cluster.wait_converged(0, CONVERGE);
    assert_eq!(snapshot(&ro), want);
    assert!(!want.contains_key("mine.txt"));
    assert_eq!(history_of(&ro, "a.txt").last().map(|h| h.1.as_str()), Some("local edit\n"));
    assert_eq!(history_of(&ro, "mine.txt").last().map(|h| h.1.as_str()), Some("only here\n"));
    wait_status(&cluster, RO, "no local changes left", |s| s["local_changes_total"] == 0);

    // A kept local edit, then a newer version from the cluster: the
    // cluster wins everywhere, the local edit goes to the history.
    write(&ro, "a.txt", b"second local edit\n");
    wait_status(&cluster, RO, "the second edit listed", |s| s["local_changes_total"] == 1);
    write(&cluster.folder(1), "a.txt", b"cluster a v2\n");
    crate::util::wait_until(CONVERGE, "v2 on the receive-only peer", || {
        read(&ro, "a.txt").as_deref() == Some("cluster a v2\n")
    });
    let want = cluster.wait_converged(0, CONVERGE);
    assert_eq!(snapshot(&cluster.folder(1)), want);
    assert!(
        history_of(&ro, "a.txt").iter().any(|h| h.1 == "second local edit\n"),
        "the local edit was kept: {:?}",
        history_of(&ro, "a.txt")
    );
    wait_status(&cluster, RO, "no local changes left", |s| s["local_changes_total"] == 0);
}

#[test]
fn revert_of_a_subtree_leaves_the_rest_and_a_receive_only_restart_keeps_the_list() {
    let mut cluster = Cluster::start(Options::default());
    cluster.kill_peer(RO);
    cluster.start_peer_with(RO, &["--receive-only"]);
    write(&cluster.folder(0), "docs/x.txt", b"x\n");
    write(&cluster.folder(0), "top.txt", b"top\n");
    cluster.wait_converged(0, CONVERGE);
    let ro = cluster.folder(RO);
    write(&ro, "docs/x.txt", b"local x\n");
    write(&ro, "docs/new/deep.txt", b"local deep\n");
    write(&ro, "top.txt", b"local top\n");
    wait_status(&cluster, RO, "local changes listed", |s| s["local_changes_total"] == 4);

    // A restart re-finds them from the disk (nothing was indexed).
    cluster.kill_peer(RO);
    cluster.start_peer_with(RO, &["--receive-only"]);
    wait_status(&cluster, RO, "local changes listed after restart", |s| s["local_changes_total"] == 4);

    let (code, out, err) = run(&["revert", ro.join("docs").to_str().unwrap()], &[]);
    assert_eq!(code.code(), Some(0), "{out}{err}");
    assert!(out.contains("Reverted 3 local changes"), "{out}");
    crate::util::wait_until(CONVERGE, "docs put back", || {
        read(&ro, "docs/x.txt").as_deref() == Some("x\n") && !ro.join("docs/new").exists()
    });
    assert_eq!(read(&ro, "top.txt").as_deref(), Some("local top\n"), "outside the subtree: kept");
    let st = wait_status(&cluster, RO, "one local change left", |s| s["local_changes_total"] == 1);
    assert_eq!(st["local_changes"][0], "top.txt");
    assert_eq!(history_of(&ro, "docs/new/deep.txt").last().map(|h| h.1.as_str()), Some("local deep\n"));
    for i in 0..RO {
        assert_eq!(read(&cluster.folder(i), "top.txt").as_deref(), Some("top\n"));
        assert!(!cluster.folder(i).join("docs/new").exists());
    }
}
