//! `dartsync versions` and `dartsync restore` end to end: a tracker and
//! four peers of the real binary on 127.0.0.1. A burst of quick edits
//! leaves the version from before it listed and restorable on every other
//! peer; a file deleted on one peer is brought back everywhere by a
//! restore on a peer that kept it. CLI output and exit codes are checked
//! as a user sees them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{CONVERGE, Cluster, Node, Options, snapshot, write};
use crate::util::{run, wait_until};

/// `dartsync ARGS --folder FOLDER`: (exit code, stdout, stderr).
fn cli(folder: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--folder", folder.to_str().unwrap()]);
    let (status, out, err) = run(&all, &[]);
    (status.code().unwrap_or(-1), out, err)
}

fn versions_json(folder: &Path, path: &str) -> serde_json::Value {
    let (code, out, err) = cli(folder, &["versions", path, "--json"]);
    assert_eq!(code, 0, "versions --json failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn versions_survive_a_burst_and_restore_brings_files_back_everywhere() {
    let cluster = Cluster::start(Options::default());
    for i in 0..4 {
        cluster.wait_registered(i, 1);
    }
    let p0 = cluster.folder(0);

    // (a) A burst of ten quick versions on peer 0.
    let original = b"the original, before the burst\n";
    write(&p0, "notes/burst.txt", original);
    cluster.wait_tree(&snapshot(&p0), CONVERGE);
    for k in 1..=10 {
        write(&p0, "notes/burst.txt", format!("burst version {k}\n").as_bytes());
    }
    let last = Node::File(blake3::hash(b"burst version 10\n"), 17);
    wait_until(CONVERGE, "every peer to reach the burst's last version", || {
        (0..4).all(|i| snapshot(&cluster.folder(i)).get("notes/burst.txt") == Some(&last))
    });
    let want = blake3::hash(original).to_hex().to_string();
    let mut expected = snapshot(&p0);
    for i in 1..4 {
        let folder = cluster.folder(i);
        let list = versions_json(&folder, "notes/burst.txt");
        let versions = list["versions"].as_array().unwrap();
        let found = versions.iter().find(|v| v["content"] == want.as_str());
        let Some(found) = found else { panic!("peer{i} lost the version from before the burst: {list:#}") };
        assert_eq!(found["made_by"]["name"], "peer0", "{found:#}");
        assert_eq!(found["replaced_by"]["name"], "peer0", "{found:#}");
        let number = found["number"].as_u64().unwrap().to_string();
        // The table, as a user reads it.
        let (code, out, err) = cli(&folder, &["versions", "notes/burst.txt"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("of notes/burst.txt on peer{i} (newest first, times in UTC)")), "{out}");
        assert!(out.contains("replaced by peer0"), "{out}");
        // Restore it next to the file on every peer.
        let to = format!("notes/restored-on-{i}.txt");
        let (code, out, err) = cli(&folder, &["restore", "notes/burst.txt", "--version", &number, "--to", &to]);
        assert_eq!(code, 0, "restore on peer{i} failed: {err}");
        assert!(out.starts_with(&format!("Restored {to} from version #{number} (saved ")), "{out}");
        expected.insert(to, Node::File(blake3::hash(original), original.len() as u64));
    }
    let started = Instant::now();
    cluster.wait_tree(&expected, CONVERGE);
    eprintln!("three restores reached every peer in {:?}", started.elapsed());

    // Refusals: --to onto an existing file, an ambiguous --at, a number
    // beyond the list, a path outside the folder, no peer running. Two
    // more versions, each waited for, so that peer 1 surely saved several
    // today (a quick burst may reach it as fewer versions).
    let p1 = cluster.folder(1);
    for k in 11..=12 {
        let body = format!("version {k}\n");
        write(&p0, "notes/burst.txt", body.as_bytes());
        wait_until(CONVERGE, "peer 1 to get the next version", || {
            std::fs::read_to_string(p1.join("notes/burst.txt")).is_ok_and(|b| b == body)
        });
    }
    let (code, _, err) = cli(&p1, &["restore", "notes/burst.txt", "--to", "notes/restored-on-2.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists; pass --force"), "{err}");
    let today = versions_json(&p1, "notes/burst.txt")["versions"][0]["saved_at_ns"].as_i64().unwrap();
    let day = dartsync_shared::time::utc_display(today)[..10].to_owned();
    let (code, _, err) = cli(&p1, &["restore", "notes/burst.txt", "--at", &day, "--to", "x.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pick one with --version N"), "{err}");
    let (code, _, err) = cli(&p1, &["restore", "notes/burst.txt", "--version", "999"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("there is no number 999"), "{err}");
    let (code, _, err) = cli(&p1, &["versions", "../outside.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("outside the synced folder"), "{err}");
    let idle = tempfile::tempdir().unwrap();
    let (code, _, err) = cli(idle.path(), &["versions", "a.txt"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no dartsync peer is running"), "{err}");

    // (b) A file deleted on peer 0 comes back from peer 1's history.
    let precious = b"precious content\n";
    write(&p0, "keep/doomed.txt", precious);
    let mut expected = snapshot(&p0);
    cluster.wait_tree(&expected, CONVERGE);
    std::fs::remove_file(p0.join("keep/doomed.txt")).unwrap();
    expected.remove("keep/doomed.txt");
    cluster.wait_tree(&expected, CONVERGE);
    // Peer 0 deleted it itself: it keeps no copy, and says where to look.
    let (code, out, _) = cli(&p0, &["versions", "keep/doomed.txt"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("No saved versions of keep/doomed.txt on this device (peer0)."), "{out}");
    let (code, _, err) = cli(&p0, &["restore", "keep/doomed.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("try `dartsync versions` on the other devices"), "{err}");
    let (code, out, err) = cli(&p1, &["versions", "keep/doomed.txt"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted by peer0") && out.starts_with("1 saved version of"), "{out}");
    let started = Instant::now();
    let (code, out, err) = cli(&p1, &["restore", "keep/doomed.txt"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Restored keep/doomed.txt from version #1"), "{out}");
    expected.insert("keep/doomed.txt".into(), Node::File(blake3::hash(precious), precious.len() as u64));
    cluster.wait_tree(&expected, Duration::from_secs(30));
    eprintln!("the restored file reached every peer in {:?}", started.elapsed());
}
