//! Whom a peer trusts as its tracker, and how it tells a broken set-up:
//! the tracker's identity is pinned at first contact and a replacement is
//! refused (until the pin file is deleted), a stopped tracker is noticed
//! within the read deadline, and misconfigurations are logged with a hint,
//! a few times, not once per retry.

use std::path::Path;
use std::time::{Duration, Instant};

use dartsync_shared::key::ClusterKey;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::{CONVERGE, Cluster, Options, snapshot, write};
use crate::util::{Proc, run, spawn_peer, wait_until};

/// The debug line of every attempt to reach the tracker.
const ATTEMPT: &str = "connecting to tracker";

/// The value of `name=value` in a log line (quotes removed).
fn field(line: &str, name: &str) -> String {
    let rest = line.split(&format!(" {name}=")).nth(1).unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    rest.split_whitespace().next().unwrap().trim_matches('"').to_owned()
}

/// The tracker's peer id, from its start line.
fn tracker_id(tracker: &Proc) -> String {
    field(&tracker.wait_for_line("tracker listening on", Duration::from_secs(20)), "id")
}

/// A peer's id, from its start line.
fn peer_id(peer: &Proc) -> String {
    field(&peer.wait_for_line("syncing ", Duration::from_secs(20)), "id")
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Attempts to reach the tracker logged after the first line containing
/// `needle` (0 if there is none).
fn attempts_after(lines: &[String], needle: &str) -> usize {
    match lines.iter().position(|l| l.contains(needle)) {
        Some(i) => count(&lines[i + 1..], ATTEMPT),
        None => 0,
    }
}

/// Starts another tracker of `cluster`'s key on its address, with its own
/// data directory (so its own identity).
fn spawn_other_tracker(cluster: &Cluster, data: &Path) -> Proc {
    let addr = cluster.tracker_addr.to_string();
    let interval = cluster.opts.interval.to_string();
    let args = [
        "--tracker",
        "--listen",
        &addr,
        "--key-file",
        cluster.key.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--interval",
        &interval,
    ];
    let tracker = Proc::spawn("tracker2", &args, "info,dartsync_tracker=debug");
    assert_eq!(tracker.listen_addr(), cluster.tracker_addr);
    tracker
}

#[test]
fn a_replaced_tracker_is_refused_until_the_pin_is_deleted() {
    let mut c = Cluster::start(Options { peers: 2, ..Options::default() });
    c.wait_registered(0, 1);
    c.wait_registered(1, 1);
    let t1 = tracker_id(c.tracker.as_ref().unwrap());
    let me0 = peer_id(c.peer(0));
    let pin0 = c.folder(0).join(".dartsync/tracker.pin");
    let pinned = std::fs::read_to_string(&pin0).expect("the tracker is pinned at first contact");
    assert!(pinned.contains(&t1), "{pinned}");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&pin0).unwrap().permissions().mode() & 0o777, 0o600);
    }
    write(&c.folder(0), "before.txt", b"synced through the first tracker");
    let mut want = snapshot(&c.folder(0));
    c.wait_tree(&want, CONVERGE);

    // The tracker is replaced: same address, same cluster key, another
    // identity.
    c.kill_tracker();
    let t2_proc = spawn_other_tracker(&c, &c.dir.path().join("tracker2-data"));
    let t2 = tracker_id(&t2_proc);
    assert_ne!(t1, t2);
    c.tracker = Some(t2_proc);

    let addr = c.tracker_addr;
    let refusal = format!("the tracker at {addr} is {t2} but this folder trusts {t1}");
    let line = c.peer(0).wait_for_line(&refusal, Duration::from_secs(30));
    let seen = Instant::now();
    for part in ["WARN", "(pinned at first contact in ", ".dartsync/tracker.pin)", "delete that file and restart"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    // It keeps retrying (with backoff), and says it once, not per attempt.
    wait_until(Duration::from_secs(30), "peer0 to retry after the refusal", || {
        attempts_after(&c.peer(0).lines(), &refusal) >= 2
    });
    let lines = c.peer(0).lines();
    let said = count(&lines, &refusal);
    if seen.elapsed() < Duration::from_secs(8) {
        assert_eq!(said, 1, "the refusal is logged once within 10 s, not per retry");
    } else {
        assert!(said <= 2, "logged {said} times");
    }
    assert_eq!(std::fs::read_to_string(&pin0).unwrap(), pinned, "the pin is unchanged");

    // Peer 1 is told to trust the new tracker; what it announces does not
    // reach peer 0 through the tracker peer 0 refuses.
    c.kill_peer(1);
    std::fs::remove_file(c.folder(1).join(".dartsync/tracker.pin")).unwrap();
    c.start_peer(1);
    c.wait_registered(1, 1);
    write(&c.folder(1), "after.txt", b"announced to the second tracker");
    c.tracker.as_ref().unwrap().wait_for_line("accepted after.txt", Duration::from_secs(30));
    let before = attempts_after(&c.peer(0).lines(), &refusal);
    wait_until(Duration::from_secs(30), "peer0 to try the new tracker twice more", || {
        attempts_after(&c.peer(0).lines(), &refusal) >= before + 2
    });
    assert!(!c.folder(0).join("after.txt").exists(), "peer0 synced through a tracker it refuses");
    let tracker_lines = c.tracker.as_ref().unwrap().lines();
    assert_eq!(
        count(&tracker_lines, &format!("({}) registered", &me0[..8])),
        0,
        "peer0 registered with the new tracker"
    );
    assert_eq!(count(&c.peer(0).lines(), "registered with tracker"), 1);

    // Deleting the pin and restarting makes peer 0 trust the new tracker.
    c.kill_peer(0);
    std::fs::remove_file(&pin0).unwrap();
    c.start_peer(0);
    c.wait_registered(0, 1);
    c.peer(0).wait_for_line(&format!("first contact with tracker {t2}"), Duration::from_secs(5));
    write(&c.folder(1), "again.txt", b"both peers trust the second tracker");
    want = snapshot(&c.folder(1));
    assert!(want.contains_key("before.txt") && want.contains_key("after.txt"));
    c.wait_tree(&want, CONVERGE);
    assert!(std::fs::read_to_string(&pin0).unwrap().contains(&t2));
}

/// Sends SIGCONT to a stopped process when dropped.
struct Resume(Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn a_stopped_tracker_is_noticed_and_the_peer_comes_back() {
    // Keep-alive interval 1 s: the read deadline is 3 s, then a liveness
    // check of at most 3 s.
    let c = Cluster::start(Options { peers: 2, interval: 1, ..Options::default() });
    c.wait_registered(0, 1);
    c.wait_registered(1, 1);
    let peer = c.peer(0);
    // An idle but healthy tracker sends a heartbeat every interval, so the
    // session stays and no liveness check is needed. (An observation
    // window of more than two read deadlines: the claim is about time.)
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(count(&peer.lines(), "registered with tracker"), 1, "a healthy tracker was dropped");
    assert_eq!(count(&peer.lines(), "tracker silent"), 0);
    assert_eq!(count(&peer.lines(), "liveness check"), 0, "the heartbeats did not reach the peer");

    let tracker = c.tracker.as_ref().unwrap();
    let resume = Resume(tracker.pid());
    let stopped = Instant::now();
    tracker.signal(Signal::SIGSTOP);
    let line = peer.wait_for_line("tracker silent for ", Duration::from_secs(30));
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(3 + 3 + 4), "noticed after {took:?}: {line}");
    assert!(line.contains("tracker session ended") && line.contains("reconnecting"), "{line}");
    wait_until(Duration::from_secs(30), "a reconnection attempt", || {
        attempts_after(&peer.lines(), "tracker silent for ") >= 1
    });

    drop(resume);
    c.wait_registered(0, 2);
    // And it syncs again.
    write(&c.folder(0), "back.txt", b"after SIGCONT");
    c.wait_tree(&snapshot(&c.folder(0)), CONVERGE);
}

#[test]
fn a_peer_with_another_cluster_key_says_so_a_few_times() {
    let c = Cluster::start(Options { peers: 0, ..Options::default() });
    let other_key = c.dir.path().join("other.key");
    let (status, _, err) = run(&["init", "--key-file", other_key.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    let fingerprint = ClusterKey::load(&other_key).unwrap().fingerprint();
    let folder = c.dir.path().join("stranger");
    let addr = c.tracker_addr.to_string();
    let peer = spawn_peer("stranger", &folder, &addr, &other_key, "info,dartsync_peer=debug", &[]);
    let start = peer.wait_for_line("syncing ", Duration::from_secs(20));
    assert!(start.contains(&format!("cluster key fingerprint {fingerprint}")), "{start}");

    let hint = format!(
        "the tracker at {addr} rejected our cluster key (our key fingerprint {fingerprint}) — \
         copy the tracker's cluster.key here"
    );
    peer.wait_for_line(&hint, Duration::from_secs(20));
    let first = Instant::now();
    // The 10 s repeat, with the count of quiet retries.
    let again = peer.wait_for_line("failed attempts in", Duration::from_secs(40));
    assert!(again.contains(&hint), "{again}");
    // Let the 15 s window pass while it keeps retrying.
    wait_until(Duration::from_secs(60), "15 s of retries", || {
        first.elapsed() >= Duration::from_secs(15) && attempts_after(&peer.lines(), "failed attempts in") >= 1
    });
    let lines = peer.lines();
    let said = count(&lines, &hint);
    assert!((2..=3).contains(&said), "{said} lines about the key in 15 s: {lines:#?}");
    assert!(count(&lines, ATTEMPT) >= 6, "it kept retrying: {lines:#?}");
    assert!(!folder.join(".dartsync/tracker.pin").exists(), "nothing is pinned");
    assert_eq!(count(&c.tracker.as_ref().unwrap().lines(), "registered from"), 0);
}

#[test]
fn a_wrong_address_says_nothing_listens_there() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let (status, _, err) = run(&["init", "--key-file", key.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let folder = dir.path().join("peer");
    let peer = spawn_peer("lost", &folder, &addr, &key, "info,dartsync_peer=debug", &[]);
    let hint = format!("no tracker at {addr} (connection refused) — is it running? is --tracker-addr right?");
    peer.wait_for_line(&hint, Duration::from_secs(20));
    wait_until(Duration::from_secs(30), "retries", || attempts_after(&peer.lines(), &hint) >= 3);
    let said = count(&peer.lines(), &hint);
    // The piece-length probe of a new folder and the client's first attempt.
    assert!(said <= 2, "{said} lines");
}
