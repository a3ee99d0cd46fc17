//! LAN discovery end to end, on a LAN this test builds itself: a bridge in
//! a network namespace of its own and one namespace per node, joined to
//! it by veth pairs (10.77.X.Y/24), each with `lo` up. The real `dartsync`
//! binary runs in a node's namespace (`ip netns exec`), with discovery on
//! and no `--tracker-addr` for the peers. Multicast stays on that bridge:
//! nothing here touches a real interface.
//!
//! Needs root and iproute2; without them (or when `ip netns add` fails)
//! each test says why and skips, unless `DARTSYNC_REQUIRE_ROOT_TESTS=1`
//! (CI as root), where a skip is a failure. Everything is named after the
//! test process's pid and a counter, and the namespaces are deleted on
//! drop (after the processes in them, which are ended by PID).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::util::{Proc, bin, run, wait_until};

/// Long enough for a peer to find the tracker, register and fetch.
const FIND: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether a skip must fail the test (CI as root).
fn required() -> bool {
    std::env::var_os("DARTSYNC_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1")
}

/// Runs `ip ARGS`; the error text on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A test-made LAN: a bridge namespace and node namespaces.
struct Lan {
    /// The bridge's namespace; node `i`'s is `{bridge}-{i}`.
    bridge: String,
    /// The third octet of this LAN's 10.77.X.0/24.
    subnet: u32,
    nodes: Vec<String>,
}

impl Lan {
    /// A LAN with `nodes` nodes, or `None` (after saying why) when this
    /// machine cannot make one.
    fn new(nodes: usize) -> Option<Lan> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut lan = Lan { bridge: format!("dsl-{}-{n}", std::process::id()), subnet: n % 250 + 1, nodes: Vec::new() };
        if let Err(why) = ip(&["netns", "add", &lan.bridge]) {
            assert!(!required(), "DARTSYNC_REQUIRE_ROOT_TESTS=1 but no network namespace: {why}");
            eprintln!("skipped: cannot make a network namespace (needs root and iproute2): {why}");
            return None;
        }
        let b = lan.bridge.clone();
        let setup = (|| {
            ip(&["-n", &b, "link", "set", "lo", "up"])?;
            ip(&["-n", &b, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &b, "link", "set", "br0", "up"])?;
            for i in 1..=nodes {
                let ns = format!("{b}-{i}");
                ip(&["netns", "add", &ns])?;
                lan.nodes.push(ns.clone());
                let port = format!("v{i}");
                ip(&["-n", &b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
                ip(&["-n", &b, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", &b, "link", "set", &port, "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&["-n", &ns, "addr", "add", &format!("{}/24", lan.ip(i)), "dev", "eth0"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            }
            Ok::<(), String>(())
        })();
        if let Err(why) = setup {
            assert!(!required(), "DARTSYNC_REQUIRE_ROOT_TESTS=1 but the test LAN cannot be built: {why}");
            eprintln!("skipped: cannot build the test LAN: {why}");
            return None;
        }
        Some(lan)
    }

    /// Node `i`'s address (nodes count from 1).
    fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{i}", self.subnet)
    }

    /// Runs `dartsync ARGS` in node `i`'s namespace, discovery on.
    fn spawn(&self, i: usize, name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i - 1]]).arg(bin()).args(args);
        cmd.env("RUST_LOG", "info,dartsync_peer=debug").env("NO_COLOR", "1").env_remove("DARTSYNC_NO_DISCOVERY");
        Proc::spawn_command(name, cmd)
    }

    /// A tracker on node `i`, listening on 0.0.0.0:7373.
    fn tracker(&self, i: usize, name: &str, key: &Path, data: &Path) -> Proc {
        let args = ["--tracker", "--listen", "0.0.0.0:7373", "--key-file", path(key), "--data", path(data)];
        let tracker = self.spawn(i, name, &args);
        tracker.wait_for_line("announcing the tracker on the LAN", Duration::from_secs(30));
        tracker
    }

    /// A peer on node `i` with no tracker address.
    fn peer(&self, i: usize, name: &str, folder: &Path, key: &Path) -> Proc {
        let args = ["--peer", path(folder), "--key-file", path(key), "--listen", "0.0.0.0:0", "--name", name];
        self.spawn(i, name, &args)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A new cluster key in `dir`.
fn make_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let (status, _, err) = run(&["init", "--key-file", path(&key)], &[]);
    assert!(status.success(), "{err}");
    key
}

/// `dartsync status FOLDER --json`, parsed (None while it does not answer).
fn status(folder: &Path) -> Option<serde_json::Value> {
    let (status, out, _) = run(&["status", path(folder), "--json"], &[]);
    // Exit 1 (not up to date) still prints the status.
    if status.code() == Some(2) {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Waits until the peer of `folder` is connected to `addr`, found on the
/// LAN, and returns its status.
fn wait_connected(folder: &Path, addr: &str) -> serde_json::Value {
    let mut last = None;
    wait_until(FIND, &format!("{} to connect to the tracker at {addr}", folder.display()), || {
        last = status(folder);
        last.as_ref().is_some_and(|s| s["tracker"]["connected"] == true && s["tracker"]["addr"] == addr)
    });
    let status = last.unwrap();
    assert_eq!(status["tracker"]["discovered"], true, "{status}");
    status
}

/// Waits until `folder/name` holds `content`.
fn wait_file(folder: &Path, name: &str, content: &[u8]) {
    wait_until(FIND, &format!("{name} to reach {}", folder.display()), || {
        std::fs::read(folder.join(name)).is_ok_and(|c| c == content)
    });
}

#[test]
fn peers_without_an_address_find_the_tracker_on_the_lan_and_sync() {
    let Some(lan) = Lan::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path(), "cluster.key");
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let _tracker = lan.tracker(1, "tracker", &key, &dir.path().join("data"));
    let a = lan.peer(2, "alice", &alice, &key);
    let b = lan.peer(3, "bob", &bob, &key);
    let tracker_addr = format!("{}:7373", lan.ip(1));
    for (peer, folder) in [(&a, &alice), (&b, &bob)] {
        peer.wait_for_line("looking for the tracker of cluster", FIND);
        peer.wait_for_line(&format!("found the tracker of this cluster on the LAN at {tracker_addr}"), FIND);
        wait_connected(folder, &tracker_addr);
    }

    std::fs::write(alice.join("hello.txt"), b"found you\n").unwrap();
    wait_file(&bob, "hello.txt", b"found you\n");
    std::fs::write(bob.join("reply.txt"), b"and back\n").unwrap();
    wait_file(&alice, "reply.txt", b"and back\n");

    // The address is remembered, privately, for the next start.
    use std::os::unix::fs::PermissionsExt;
    let remembered = alice.join(".dartsync/tracker.addr");
    let text = std::fs::read_to_string(&remembered).unwrap();
    assert!(text.lines().any(|l| l == tracker_addr), "{text}");
    assert_eq!(std::fs::metadata(&remembered).unwrap().permissions().mode() & 0o777, 0o600);
    drop((a, b));
}

#[test]
fn a_peer_picks_its_own_clusters_tracker_among_two() {
    let Some(lan) = Lan::new(4) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (make_key(dir.path(), "a.key"), make_key(dir.path(), "b.key"));
    let _tracker_b = lan.tracker(2, "tracker-b", &key_b, &dir.path().join("data-b"));
    let _tracker_a = lan.tracker(1, "tracker-a", &key_a, &dir.path().join("data-a"));
    let (carol, dave) = (dir.path().join("carol"), dir.path().join("dave"));
    let c = lan.peer(3, "carol", &carol, &key_a);
    let d = lan.peer(4, "dave", &dave, &key_a);
    let tracker_a = format!("{}:7373", lan.ip(1));
    for folder in [&carol, &dave] {
        wait_connected(folder, &tracker_a);
    }
    std::fs::write(carol.join("a.txt"), b"cluster A only\n").unwrap();
    wait_file(&dave, "a.txt", b"cluster A only\n");
    // Cluster B's tracker was heard and passed over, never dialled.
    let b_addr = format!("{}:7373", lan.ip(2));
    for peer in [&c, &d] {
        let lines = peer.lines();
        assert!(lines.iter().any(|l| l.contains("another cluster") && l.contains(&b_addr)), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("registered with tracker") && l.contains(&b_addr)), "{lines:#?}");
    }
}

#[test]
fn a_tracker_that_moves_to_another_address_is_found_again() {
    let Some(lan) = Lan::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path(), "cluster.key");
    let data = dir.path().join("data");
    let erin = dir.path().join("erin");
    let mut tracker = lan.tracker(1, "tracker", &key, &data);
    let mut e = lan.peer(2, "erin", &erin, &key);
    wait_connected(&erin, &format!("{}:7373", lan.ip(1)));

    // The same tracker (same data, so the same pinned identity) comes back
    // on another address, as a Pi with a new DHCP lease would.
    tracker.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(tracker.wait_exit(Duration::from_secs(20)), Some(0));
    let _moved = lan.tracker(3, "tracker-moved", &key, &data);
    let moved = format!("{}:7373", lan.ip(3));
    wait_connected(&erin, &moved);
    e.wait_for_line(&format!("found the tracker of this cluster on the LAN at {moved}"), FIND);
    wait_until(FIND, "the new address to be remembered", || {
        std::fs::read_to_string(erin.join(".dartsync/tracker.addr")).is_ok_and(|t| t.lines().any(|l| l == moved))
    });

    // Restarted, the peer tries the remembered address first.
    e.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(e.wait_exit(Duration::from_secs(20)), Some(0));
    let again = lan.peer(2, "erin-again", &erin, &key);
    again.wait_for_line(&format!("trying the tracker address found on the LAN last time: {moved}"), FIND);
    again.wait_for_line(&format!("registered with tracker {moved}"), FIND);
    assert!(!again.lines().iter().any(|l| l.contains("looking for the tracker")), "{:#?}", again.lines());
}

impl Lan {
    /// Runs `dartsync ARGS` to completion in node `i`'s namespace,
    /// discovery on: (exit code, stdout, stderr).
    fn run(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i - 1]])
            .arg(bin())
            .args(args)
            .env_remove("DARTSYNC_NO_DISCOVERY")
            .env_remove("RUST_LOG")
            .output()
            .expect("run ip netns exec");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `dartsync invite --json --data DATA` (the control socket is a file:
/// no namespace needed): the code.
fn invite(data: &Path) -> String {
    let (status, out, err) = run(&["invite", "--json", "--data", path(data)], &[]);
    assert!(status.success(), "invite failed: {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    answer["code"].as_str().unwrap().to_owned()
}

fn nameplate(code: &str) -> &str {
    code.split('-').next().unwrap()
}

#[test]
fn devices_join_with_a_code_and_no_address_or_key_and_sync() {
    let Some(lan) = Lan::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (tracker_key, data) = (dir.path().join("tracker.key"), dir.path().join("data"));
    // The tracker makes its own key; nobody copies it anywhere.
    let _tracker = lan.tracker(1, "tracker", &tracker_key, &data);
    let tracker_addr = format!("{}:7373", lan.ip(1));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (alice_key, bob_key) = (dir.path().join("alice.key"), dir.path().join("bob.key"));

    // A wrong code first: a clean failure, nothing written.
    let code = invite(&data);
    let wrong = format!(
        "{}-{}",
        nameplate(&code),
        if code.ends_with("-acid") { "acorn-acorn-acorn" } else { "acid-acid-acid" }
    );
    let (exit, out, err) =
        lan.run(2, &["join", &wrong, path(&alice), "--key-file", path(&alice_key), "--name", "alice", "--no-start"]);
    assert_eq!(exit, 1, "{out}{err}");
    assert!(err.contains("did not accept the code"), "{err}");
    assert!(!alice_key.exists() && !alice.exists(), "a wrong code writes nothing");

    // The right code: found on the LAN by its number, joined, syncing.
    let a = lan.spawn(2, "alice", &["join", &code, path(&alice), "--key-file", path(&alice_key), "--name", "alice"]);
    let b_code = invite(&data);
    let b = lan.spawn(3, "bob", &["join", &b_code, path(&bob), "--key-file", path(&bob_key), "--name", "bob"]);
    for (peer, folder) in [(&a, &alice), (&b, &bob)] {
        peer.wait_for_line(&format!("registered with tracker {tracker_addr}"), FIND);
        let s = status(folder).unwrap();
        assert_eq!(s["tracker"]["connected"], true, "{s}");
    }
    let tracker_key_text = std::fs::read_to_string(&tracker_key).unwrap();
    for key in [&alice_key, &bob_key] {
        assert_eq!(std::fs::read_to_string(key).unwrap(), tracker_key_text, "the cluster key arrived");
    }
    std::fs::write(alice.join("hello.txt"), b"joined by code\n").unwrap();
    wait_file(&bob, "hello.txt", b"joined by code\n");

    // A code is good once.
    let carol = dir.path().join("carol");
    let (exit, _, err) =
        lan.run(3, &["join", &code, path(&carol), "--key-file", path(&dir.path().join("carol.key")), "--no-start"]);
    assert_eq!(exit, 1, "{err}");
    assert!(
        err.contains("a tracker with open invite") && err.contains("was not found on the LAN"),
        "a used code fails: {err}"
    );
    assert!(!dir.path().join("carol.key").exists());
    drop((a, b));
}

#[test]
fn a_code_joins_the_tracker_that_made_it_among_two_clusters() {
    let Some(lan) = Lan::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    let (data_a, data_b) = (dir.path().join("data-a"), dir.path().join("data-b"));
    let _tracker_a = lan.tracker(1, "tracker-a", &key_a, &data_a);
    let _tracker_b = lan.tracker(2, "tracker-b", &key_b, &data_b);
    let code_a = invite(&data_a);
    // Nameplates are random; two open invites on one LAN rarely share one.
    let code_b = loop {
        let code = invite(&data_b);
        if nameplate(&code) != nameplate(&code_a) {
            break code;
        }
    };
    let folder = dir.path().join("frank");
    let key = dir.path().join("frank.key");
    let (exit, out, err) =
        lan.run(3, &["join", &code_b, path(&folder), "--key-file", path(&key), "--name", "frank", "--no-start"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert!(out.contains(&format!("through the tracker at {}:7373", lan.ip(2))), "{out}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), std::fs::read_to_string(&key_b).unwrap(), "cluster B's key");
    // The folder remembers B, and starting it later needs no address.
    let remembered = std::fs::read_to_string(folder.join(".dartsync/tracker.addr")).unwrap();
    assert!(remembered.contains(&format!("{}:7373", lan.ip(2))), "{remembered}");
    let f = lan.peer(3, "frank", &folder, &key);
    f.wait_for_line(&format!("registered with tracker {}:7373", lan.ip(2)), FIND);
    // Cluster A's invite is untouched: still open, still good.
    let (status, out, _) = run(&["status", "--tracker", "--json", "--data", path(&data_a)], &[]);
    assert!(status.code().is_some_and(|c| c < 2), "{out}");
}
