//! Device trust end to end: admission by approval (`--admit approve`,
//! `dartsync tracker admit`) and revocation (`dartsync tracker revoke`),
//! with the real binary, a tracker and four peers on 127.0.0.1, and a
//! test-side client holding a revoked device's identity and the cluster
//! key that tries to fetch from a peer's piece server directly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dartsync_shared::channel;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::p2p::{P2pRequest, P2pResponse};
use dartsync_shared::{ContentHash, RelPath};

use crate::cluster::{CONVERGE, Cluster, Options, snapshot, write};
use crate::util::{run, wait_until};

/// How long a step that needs no transfer may take.
const SHORT: Duration = Duration::from_secs(20);

/// `dartsync tracker ARGS --data DATA`: (exit code, stdout, stderr).
fn admin(data: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["tracker"];
    all.extend_from_slice(args);
    all.extend(["--data", data.to_str().unwrap()]);
    let (status, out, err) = run(&all, &[]);
    (status.code().unwrap_or(-1), out, err)
}

fn tracker_data(cluster: &Cluster) -> PathBuf {
    cluster.dir.path().join("tracker-data")
}

/// The state column of `name`'s row in `dartsync tracker devices`.
fn device_row(data: &Path, name: &str) -> String {
    let (code, out, err) = admin(data, &["devices"]);
    assert_eq!(code, 0, "devices failed: {err}");
    out.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default().to_owned()
}

/// `dartsync status --json` of peer `i`'s folder.
fn peer_state(cluster: &Cluster, i: usize) -> String {
    let (_, out, _) = run(&["status", "--json", cluster.folder(i).to_str().unwrap()], &[]);
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn has(cluster: &Cluster, i: usize, rel: &str) -> bool {
    cluster.folder(i).join(rel).exists()
}

#[test]
fn approve_mode_admits_devices_one_by_one_and_a_pending_device_gets_and_gives_nothing() {
    let mut c = Cluster::start(Options {
        peers: 0,
        tracker_args: vec!["--admit".into(), "approve".into()],
        ..Options::default()
    });
    let data = tracker_data(&c);
    for i in 0..3 {
        std::fs::create_dir_all(c.folder(i)).unwrap();
        c.start_peer(i);
        let name = format!("peer{i}");
        c.peer(i).wait_for_line(&format!("run `dartsync tracker admit {name}`"), SHORT);
        wait_until(SHORT, "the tracker to list it pending", || device_row(&data, &name).contains("pending"));
        let (code, out, err) = admin(&data, &["admit", &name]);
        assert_eq!(code, 0, "admit {name}: {out} {err}");
        assert!(out.contains("admitted") && out.contains("was pending"), "{out}");
        c.wait_registered(i, 1);
    }
    write(&c.folder(0), "early.txt", b"before the fourth device\n");
    wait_until(CONVERGE, "early.txt to reach peers 1 and 2", || has(&c, 1, "early.txt") && has(&c, 2, "early.txt"));

    // A fourth device: pending, told so in its log and its status.
    std::fs::create_dir_all(c.folder(3)).unwrap();
    write(&c.folder(3), "from3.txt", b"written on the pending device\n");
    c.start_peer(3);
    let warned = c.peer(3).wait_for_line("waits for approval", SHORT);
    assert!(warned.contains("WARN") && warned.contains("this device (peer3, id "), "{warned}");
    assert!(warned.contains("on the tracker machine run `dartsync tracker admit peer3`"), "{warned}");
    wait_until(SHORT, "peer3's status to say pending_approval", || peer_state(&c, 3) == "pending_approval");
    let row = device_row(&data, "peer3");
    assert!(row.contains("pending") && row.contains("online"), "{row}");
    let (_, status_out, _) = run(&["status", "--tracker", "--data", data.to_str().unwrap()], &[]);
    assert!(status_out.contains("1 device waits for approval"), "{status_out}");
    // Its scanner has seen its own file: it would have announced it by now.
    wait_until(SHORT, "peer3 to index from3.txt", || c.peer(3).lines().iter().any(|l| l.contains("from3.txt")));

    // Receives nothing: a file from peer 0 reaches 1 and 2, never 3.
    write(&c.folder(0), "from0.txt", b"written on peer 0\n");
    wait_until(CONVERGE, "from0.txt to reach peers 1 and 2", || has(&c, 1, "from0.txt") && has(&c, 2, "from0.txt"));
    assert!(!has(&c, 3, "from0.txt") && !has(&c, 3, "early.txt"), "the pending device got the table");
    // Sends nothing: its file never reached the others (peer 0's later
    // file got through to them after it, so the tracker was not just slow).
    for i in 0..3 {
        assert!(!has(&c, i, "from3.txt"), "peer{i} got a file from the pending device");
    }
    let (_, status_json, _) = run(&["status", "--tracker", "--json", "--data", data.to_str().unwrap()], &[]);
    assert!(!status_json.contains("from3.txt"));

    // Refusals: an unknown device is exit 1, an unreachable tracker exit 2.
    let (code, _, err) = admin(&data, &["admit", "nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no device is called \"nobody\""), "{err}");
    let (code, _, err) = admin(&c.dir.path().join("no-tracker-here"), &["devices"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no dartsync tracker is running"), "{err}");

    // Admitted: both directions sync, without a restart.
    let (code, out, err) = admin(&data, &["admit", "peer3"]);
    assert_eq!(code, 0, "{out} {err}");
    c.peer(3).wait_for_line("the tracker admitted this device", SHORT);
    let tree = c.wait_converged(0, CONVERGE);
    for rel in ["early.txt", "from0.txt", "from3.txt"] {
        assert!(tree.contains_key(rel), "{rel} missing after admission: {tree:?}");
    }
    let (code, out, _) = admin(&data, &["devices"]);
    assert_eq!(code, 0);
    for i in 0..4 {
        let row = out.lines().find(|l| l.starts_with(&format!("peer{i} "))).unwrap_or_default();
        assert!(row.contains("admitted") && row.contains("online"), "{out}");
    }
    assert!(out.contains("Admission policy: approve"), "{out}");
    assert_ne!(snapshot(&c.folder(3)), Default::default());
}

#[test]
fn a_revoked_device_is_dropped_at_once_refused_after_and_not_served_by_peers() {
    let mut c = Cluster::start(Options::default());
    let data = tracker_data(&c);
    write(&c.folder(0), "shared.bin", &crate::cluster::random_bytes(300_000, 7));
    let tree = c.wait_converged(0, CONVERGE);
    assert!(tree.contains_key("shared.bin"));
    for i in 0..4 {
        c.wait_registered(i, 1);
    }
    let revoked_id = Identity::load(&c.folder(3).join(".dartsync").join("identity")).unwrap();
    let member_id = Identity::load(&c.folder(1).join(".dartsync").join("identity")).unwrap();
    wait_until(SHORT, "peer3 to be listed admitted", || device_row(&data, "peer3").contains("admitted"));

    // Revoke it by a unique prefix of its id.
    let prefix = revoked_id.peer_id().to_string()[..8].to_owned();
    let started = Instant::now();
    let (code, out, err) = admin(&data, &["revoke", &prefix]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("peer3") && out.contains("revoked"), "{out}");
    // Dropped within one heartbeat interval (1 s here), with slack for a
    // loaded machine: the tracker closes the session at once.
    let line = c.peer(3).wait_for_line("revoked this device", SHORT);
    assert!(started.elapsed() < Duration::from_secs(3), "told after {:?}", started.elapsed());
    assert!(line.contains("ERROR") && line.contains("dartsync tracker admit"), "{line}");
    wait_until(SHORT, "peer3's status to say revoked", || peer_state(&c, 3) == "revoked");
    let row = device_row(&data, "peer3");
    assert!(row.contains("revoked") && !row.contains("online"), "{row}");

    // The others keep syncing; the revoked device gets nothing more.
    write(&c.folder(1), "after.txt", b"after the revocation\n");
    wait_until(CONVERGE, "after.txt to reach peers 0 and 2", || has(&c, 0, "after.txt") && has(&c, 2, "after.txt"));
    assert!(!has(&c, 3, "after.txt"));
    // A file it writes now goes nowhere.
    write(&c.folder(3), "sneaky.txt", b"from a revoked device\n");
    write(&c.folder(1), "later.txt", b"later\n");
    wait_until(CONVERGE, "later.txt to reach peers 0 and 2", || has(&c, 0, "later.txt") && has(&c, 2, "later.txt"));
    assert!(!has(&c, 0, "sneaky.txt") && !has(&c, 2, "sneaky.txt"));

    // Its restart is refused too, with the message in its log, and it
    // does not retry in a storm.
    c.kill_peer(3);
    c.start_peer(3);
    let line = c.peer(3).wait_for_line("revoked this device", SHORT);
    assert!(line.contains("ERROR"), "{line}");
    wait_until(SHORT, "the tracker to refuse the restarted device", || {
        c.tracker.as_ref().unwrap().lines().iter().filter(|l| l.contains("refused revoked device")).count() >= 1
    });

    // Peers refuse its identity on their piece servers, and serve members,
    // once their device list says it is revoked (pushed at once).
    wait_until(SHORT, "peer0 to learn of the revocation", || {
        let (_, out, _) = run(&["status", "--json", c.folder(0).to_str().unwrap()], &[]);
        let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        status["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["id"] == revoked_id.peer_id().to_string() && d["state"] == "revoked")
    });
    let key = ClusterKey::load(&c.key).unwrap();
    let server = c.peer(0).wait_for_line("piece server listening on ", SHORT);
    let addr: std::net::SocketAddr =
        server.split("piece server listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let content = ContentHash::of(&std::fs::read(c.folder(0).join("shared.bin")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = rt.block_on(fetch_chunk_list(addr, &key, &member_id, content));
    assert!(matches!(answer, Ok(Some(P2pResponse::ChunkList(_)))), "a member is served: {answer:?}");
    let answer = rt.block_on(fetch_chunk_list(addr, &key, &revoked_id, content));
    assert!(matches!(answer, Ok(None) | Err(_)), "the revoked identity was served: {answer:?}");
    c.peer(0).wait_for_line("refusing chunks to peer", SHORT);

    let (code, out, _) = admin(&data, &["devices"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("peer3 ") && l.contains("revoked")), "{out}");
}

/// Connects to a piece server as `identity` with the cluster key and asks
/// for the first page of `content`'s chunk list: the answer, `None` when
/// the server closed the connection instead.
async fn fetch_chunk_list(
    addr: std::net::SocketAddr,
    key: &ClusterKey,
    identity: &Identity,
    content: ContentHash,
) -> Result<Option<P2pResponse>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut channel = channel::connect(stream, key, identity).await.map_err(|e| e.to_string())?;
    let request = P2pRequest::GetChunkList { path: RelPath::new("shared.bin").unwrap(), content, first: 0, max: 16 };
    channel.send(&request).await.map_err(|e| e.to_string())?;
    // The server decides within its grace (10 s); never wait forever.
    tokio::time::timeout(Duration::from_secs(30), channel.recv::<P2pResponse>())
        .await
        .map_err(|_| "no answer and no close".to_owned())?
        .map_err(|e| e.to_string())
}
