//! Joining with an invite code end to end, on 127.0.0.1 with explicit
//! addresses (the LAN discovery tests live in `netns`): `dartsync invite`
//! on the tracker's machine, `dartsync join CODE DIR` on each device, with
//! the real binary as separate processes, each device with its own folder
//! and key file path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{CONVERGE, snapshot, write};
use crate::util::{Proc, run, spawn_peer, wait_until};

const SHORT: Duration = Duration::from_secs(20);

/// A tracker (`--admit approve`: only invited devices get in without an
/// operator) in a temp dir.
struct Site {
    dir: tempfile::TempDir,
    tracker: Proc,
    addr: String,
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (key, data) = (dir.path().join("tracker.key"), dir.path().join("tracker-data"));
        let tracker = Proc::spawn(
            "tracker",
            &[
                "--tracker",
                "--listen",
                "127.0.0.1:0",
                "--key-file",
                key.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--admit",
                "approve",
            ],
            "info",
        );
        let addr = tracker.listen_addr().to_string();
        Site { dir, tracker, addr }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("tracker-data")
    }

    /// `dartsync invite --json`: the code.
    fn invite(&self) -> String {
        let (status, out, err) = run(&["invite", "--json", "--data", self.data().to_str().unwrap()], &[]);
        assert!(status.success(), "invite failed: {err}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["minutes"], 10, "{answer}");
        answer["code"].as_str().unwrap().to_owned()
    }

    fn folder(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    /// `dartsync join CODE DIR --no-start`: (exit code, stdout, stderr).
    fn join(&self, name: &str, code: &str) -> (i32, String, String) {
        let folder = self.folder(name);
        let key = self.key(name);
        let args = [
            "join",
            code,
            folder.to_str().unwrap(),
            "--tracker-addr",
            &self.addr,
            "--key-file",
            key.to_str().unwrap(),
            "--name",
            name,
            "--no-start",
        ];
        let (status, out, err) = run(&args, &[]);
        (status.code().unwrap_or(-1), out, err)
    }

    fn devices(&self) -> serde_json::Value {
        let (status, out, err) = run(&["tracker", "devices", "--json", "--data", self.data().to_str().unwrap()], &[]);
        assert!(status.success(), "devices failed: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// A code with `code`'s nameplate and other words.
fn wrong_words(code: &str) -> String {
    let (plate, words) = code.split_once('-').unwrap();
    let other = if words == "acid-acid-acid" { "acorn-acorn-acorn" } else { "acid-acid-acid" };
    format!("{plate}-{other}")
}

fn key_bytes(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn four_devices_join_with_codes_under_approve_and_sync() {
    let site = Site::start();
    let names = ["alice", "bob", "carol", "dave"];
    for name in &names[..3] {
        let (code, out, err) = site.join(name, &site.invite());
        assert_eq!(code, 0, "join of {name} failed: {err}");
        assert!(out.contains("Joined the cluster"), "{out}");
        let key = site.key(name);
        assert_eq!(key_bytes(&key), key_bytes(&site.dir.path().join("tracker.key")), "{name} got the cluster key");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
        assert!(site.folder(name).join(".dartsync/tracker.pin").is_file(), "the tracker is pinned");
    }
    // The fourth joins without --no-start: `join` goes on as the peer.
    let dave = Proc::spawn(
        "dave",
        &[
            "join",
            &site.invite(),
            site.folder("dave").to_str().unwrap(),
            "--tracker-addr",
            &site.addr,
            "--key-file",
            site.key("dave").to_str().unwrap(),
            "--name",
            "dave",
        ],
        "info",
    );
    let mut peers: Vec<Proc> =
        names[..3].iter().map(|n| spawn_peer(n, &site.folder(n), &site.addr, &site.key(n), "info", &[])).collect();
    peers.push(dave);
    for p in &peers {
        p.wait_for_line("registered with tracker", SHORT);
    }
    // No device waits for approval: the codes were the approval.
    let devices = site.devices();
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{devices}");
    for d in list {
        assert_eq!(d["state"], "admitted", "{devices}");
    }
    write(&site.folder("alice"), "docs/hello.txt", b"joined with a code\n");
    for name in &names[1..] {
        let file = site.folder(name).join("docs/hello.txt");
        wait_until(CONVERGE, &format!("hello.txt at {name}"), || {
            std::fs::read(&file).ok().as_deref() == Some(b"joined with a code\n".as_slice())
        });
    }
    let reference = snapshot(&site.folder("alice"));
    for name in &names[1..] {
        assert_eq!(snapshot(&site.folder(name)), reference, "{name}");
    }
    drop(peers);
    drop(site.tracker);
}

#[test]
fn wrong_codes_write_nothing_and_burn_the_invite() {
    let site = Site::start();
    let code = site.invite();
    let wrong = wrong_words(&code);
    for attempt in 1..=3 {
        let (exit, _, err) = site.join("mallory", &wrong);
        assert_eq!(exit, 1, "attempt {attempt}: {err}");
        assert!(err.contains("did not accept the code"), "attempt {attempt}: {err}");
        assert!(!site.key("mallory").exists(), "a wrong code leaves no key");
        assert!(!site.folder("mallory").exists(), "a wrong code leaves no folder");
    }
    site.tracker.wait_for_line("the invite is burned after 3", SHORT);
    // The right code is no good any more.
    let (exit, _, err) = site.join("alice", &code);
    assert_eq!(exit, 1, "{err}");
    assert!(err.contains("no open invite numbered"), "{err}");
    assert!(!site.key("alice").exists());
    // A malformed code fails before any traffic, naming the problem.
    let (exit, _, err) = site.join("alice", "7-otter-baskit-maple");
    assert_eq!(exit, 1);
    assert!(err.contains("\"baskit\" is not a word"), "{err}");
    // No device was admitted or even seen.
    assert_eq!(site.devices()["devices"].as_array().unwrap().len(), 0);
}

#[test]
fn a_code_admits_one_device_and_an_existing_key_is_never_replaced() {
    let site = Site::start();
    let code = site.invite();
    let (exit, _, err) = site.join("alice", &code);
    assert_eq!(exit, 0, "{err}");
    // Reused: refused, nothing written.
    let (exit, _, err) = site.join("bob", &code);
    assert_eq!(exit, 1, "{err}");
    assert!(err.contains("no open invite numbered"), "{err}");
    assert!(!site.key("bob").exists());
    // A machine with a key already: refused before contacting the tracker,
    // so the new code stays good.
    std::fs::write(site.key("carol"), "not a key\n").unwrap();
    let fresh = site.invite();
    let (exit, _, err) = site.join("carol", &fresh);
    assert_eq!(exit, 1, "{err}");
    assert!(err.contains("already holds"), "{err}");
    assert_eq!(key_bytes(&site.key("carol")), "not a key\n", "an existing key file is never replaced");
    std::fs::remove_file(site.key("carol")).unwrap();
    let (exit, _, err) = site.join("carol", &fresh);
    assert_eq!(exit, 0, "the code survived the refused attempt: {err}");
}
