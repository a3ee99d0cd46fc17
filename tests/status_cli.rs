//! `dartsync status`, `completions` and `man` as a user runs them: the
//! real binary against no peer at all, and against a fake control socket
//! (a thread answering canned statuses) for the exit codes, `--json` and
//! `--wait`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dartsync_shared::status::{
    Device, DeviceState, FolderState, PeerStatus, Pending, STATUS_SCHEMA, TrackerDevice, TrackerLink, TrackerStatus,
};

use crate::util::run;

fn peer_status(state: FolderState) -> PeerStatus {
    PeerStatus {
        schema: STATUS_SCHEMA,
        state,
        folder: "/somewhere".into(),
        name: "laptop".into(),
        id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
        tracker: TrackerLink {
            addr: "127.0.0.1:7373".into(),
            connected: true,
            since: Some(1),
            error: None,
            discovered: false,
        },
        devices: vec![Device {
            name: "laptop".into(),
            id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
            online: true,
            up_to_date: state == FolderState::UpToDate,
            last_seen: Some(1),
            this_device: true,
            state: DeviceState::Admitted,
        }],
        pending: if state == FolderState::Syncing {
            Pending { files: 2, bytes: 2_000_000, rate: 1_000_000, eta_secs: Some(2) }
        } else {
            Pending::default()
        },
        transfers: vec![],
        waiting: vec![],
        waiting_total: 0,
        conflicts: vec![],
        unannounced: 0,
        files: 7,
        bytes: 7_000,
        received_bytes: 0,
        last_event: None,
        events: vec![],
        dashboard: None,
        receive_only: false,
        local_changes: Vec::new(),
        local_changes_total: 0,
        held_by_tracker: None,
    }
}

/// A control socket answering each request with the next of `answers`
/// (the last one repeats). Stops (and joins) on drop.
struct FakeServer {
    socket: PathBuf,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(socket: &Path, answers: Vec<serde_json::Value>) -> FakeServer {
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(socket).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let mut stream = stream.unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let request: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
                assert_eq!(request, serde_json::json!({"schema": 1, "request": "status"}));
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = &answers[n.min(answers.len() - 1)];
                let answer = serde_json::json!({"schema": 1, "ok": true, "status": status});
                writeln!(stream, "{answer}").unwrap();
            }
        });
        FakeServer { socket: socket.to_owned(), served, stop, thread: Some(thread) }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn json(status: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(status).unwrap()
}

/// A folder whose `.dartsync/control.sock` answers `answers`.
fn fake_peer(answers: Vec<serde_json::Value>) -> (tempfile::TempDir, FakeServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start(&dir.path().join(".dartsync").join("control.sock"), answers);
    (dir, server)
}

#[test]
fn status_without_a_peer_exits_2_and_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    let f = folder.to_str().unwrap();
    let expected = format!(
        "no dartsync peer is running for {f} (no control socket at {f}/.dartsync/control.sock); \
         start one with: dartsync --peer {f} --tracker-addr HOST"
    );
    for json in [false, true] {
        let args: &[&str] = if json { &["status", f, "--json"] } else { &["status", f] };
        let (status, out, err) = run(args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim(), format!("error: {expected}"), "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    // A stale socket (nothing listens) is "not running" too.
    std::fs::create_dir_all(folder.join(".dartsync")).unwrap();
    drop(UnixListener::bind(folder.join(".dartsync/control.sock")).unwrap());
    let (status, _, err) = run(&["status", f], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn status_without_a_tracker_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (status, _, err) = run(&["status", "--tracker", "--data", d], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("no dartsync tracker is running with data directory {d}")), "{err}");
    assert!(err.contains(&format!("dartsync --tracker --data {d}")), "{err}");
}

#[test]
fn status_exit_codes_follow_the_state() {
    let (dir, server) = fake_peer(vec![json(&peer_status(FolderState::UpToDate))]);
    let (status, out, err) = run(&["status", dir.path().to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(out.starts_with("Up to date — 7 files, 7.0 KB\n"), "{out}");
    drop(server);

    for state in [FolderState::Syncing, FolderState::Waiting, FolderState::TrackerUnreachable] {
        let (dir, _server) = fake_peer(vec![json(&peer_status(state))]);
        let (status, out, err) = run(&["status", dir.path().to_str().unwrap()], &[]);
        assert_eq!(status.code(), Some(1), "{state:?}: {err}");
        assert!(out.starts_with(state.label()), "{out}");
    }
}

#[test]
fn status_json_prints_the_status_as_answered() {
    let syncing = peer_status(FolderState::Syncing);
    let (dir, _server) = fake_peer(vec![json(&syncing)]);
    let (status, out, err) = run(&["status", dir.path().to_str().unwrap(), "--json"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    let back: PeerStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(back, syncing);
}

#[test]
fn status_wait_polls_until_up_to_date() {
    let syncing = json(&peer_status(FolderState::Syncing));
    let (dir, server) = fake_peer(vec![syncing.clone(), syncing, json(&peer_status(FolderState::UpToDate))]);
    let (status, out, err) = run(&["status", dir.path().to_str().unwrap(), "--wait", "60"], &[]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(out.starts_with("Up to date"), "{out}");
    assert_eq!(server.served(), 3);

    // Never up to date: gives up after SECS with the last answer's code.
    let (dir, server) = fake_peer(vec![json(&peer_status(FolderState::Syncing))]);
    let started = Instant::now();
    let (status, out, err) = run(&["status", dir.path().to_str().unwrap(), "--wait", "1"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(out.starts_with("Syncing: 2 files, 2.0 MB left"), "{out}");
    assert!(server.served() >= 2, "polled only {} times", server.served());
}

#[test]
fn status_tracker_is_up_to_date_when_every_online_device_is() {
    let device = |name: &str, online: bool, up_to_date: bool| TrackerDevice {
        name: name.into(),
        id: format!("{name}xxxxxxxxxxxxxxxxxxxxxxxxx"),
        addr: online.then(|| "127.0.0.1:4000".to_owned()),
        online,
        last_seen: Some(1),
        up_to_date,
        behind: u64::from(!up_to_date),
        pending_files: 0,
        pending_bytes: 0,
        waiting: 0,
        rate: 0,
        state: DeviceState::Admitted,
    };
    let mut tracker = TrackerStatus {
        schema: STATUS_SCHEMA,
        id: "t4r8ck3rq2w5e7y9u1i3o5p7a9".into(),
        listen: "0.0.0.0:7373".into(),
        epoch: "0123456789abcdef".into(),
        seq: 5,
        records: 3,
        tombstones: 0,
        devices: vec![device("a", true, true), device("b", false, false)],
        conflicts: vec![],
        events: vec![],
        held: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let server = FakeServer::start(&dir.path().join("control.sock"), vec![json(&tracker)]);
    let (status, out, err) = run(&["status", "--tracker", "--data", d], &[]);
    assert_eq!(status.code(), Some(0), "an offline device behind does not count: {err}");
    assert!(out.contains("behind 1 change"), "{out}");
    drop(server);

    tracker.devices[0].up_to_date = false;
    let server = FakeServer::start(&dir.path().join("control.sock"), vec![json(&tracker)]);
    let (status, out, err) = run(&["status", "--tracker", "--data", d, "--json"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(serde_json::from_str::<TrackerStatus>(&out).unwrap(), tracker);
    drop(server);
}

#[test]
fn completions_and_man_page() {
    let (status, out, err) = run(&["completions", "bash"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("dartsync") && out.contains("status"), "{out}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (status, out, err) = run(&["completions", shell], &[]);
        assert!(status.success() && out.contains("dartsync"), "{shell}: {err}");
    }
    let (status, _, _) = run(&["completions", "tcsh"], &[]);
    assert!(!status.success());

    let (status, out, err) = run(&["man"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.starts_with(".ie") || out.starts_with(".TH"), "{}", &out[..out.len().min(200)]);
    assert!(out.contains(".TH dartsync 1"), "{out}");
    assert!(out.contains(r"\-\-tracker"), "{out}");
}

#[test]
fn status_help_explains_every_option() {
    let (status, out, _) = run(&["status", "--help"], &[]);
    assert!(status.success());
    for word in
        ["--json", "--watch", "--wait", "--tracker", "--data", "--config", "[DIR]", "Exit codes:", "0  up to date"]
    {
        assert!(out.contains(word), "status --help does not mention {word}:\n{out}");
    }
    let (status, out, _) = run(&["--help"], &[]);
    assert!(status.success());
    for word in ["status", "completions", "man"] {
        assert!(out.contains(word), "--help does not mention {word}:\n{out}");
    }
}

#[test]
fn status_watch_without_a_terminal_prints_a_fresh_report_each_second() {
    use std::process::{Command, Stdio};
    let (dir, server) = fake_peer(vec![json(&peer_status(FolderState::Syncing))]);
    let mut child = Command::new(crate::util::bin())
        .args(["status", dir.path().to_str().unwrap(), "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reports = 0;
    while reports < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("two reports before the deadline");
        if line.starts_with("Syncing: 2 files") {
            reports += 1;
        }
    }
    assert!(server.served() >= 2);
    child.kill().unwrap();
    child.wait().unwrap();
}
