//! A test cluster: one tracker and N peers of the real `dartsync` binary,
//! each a separate process on 127.0.0.1 with its own temp folder, plus
//! helpers to compare the peers' trees and wait for convergence.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dartsync_shared::test_util::{det_bytes, eventually};

use crate::util::{Proc, run, spawn_peer, wait_until};

/// Default time allowed for a cluster to converge.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Lines of each process's log printed when a test fails.
const DUMP_LINES: usize = 80;

/// One entry of a folder snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A folder.
    Dir,
    /// A file and the blake3 of its bytes.
    File(blake3::Hash, u64),
    /// A symlink and its target.
    Link(PathBuf),
}

/// Path (relative, `/`-separated) -> node, excluding `.dartsync`.
pub type Tree = BTreeMap<String, Node>;

/// Snapshots `root`, skipping `.dartsync`. Files that vanish mid-walk are skipped.
pub fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if rel == ".dartsync" {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.file_type().is_symlink() {
                if let Ok(target) = std::fs::read_link(&path) {
                    out.insert(rel, Node::Link(target));
                }
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(rel, Node::File(blake3::hash(&bytes), bytes.len() as u64));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// Settings for a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of peers.
    pub peers: usize,
    /// Tracker keep-alive interval in seconds.
    pub interval: u64,
    /// Tracker piece length.
    pub piece_len: Option<u32>,
    /// `RUST_LOG` for every process.
    pub log: String,
    /// Extra arguments of the tracker.
    pub tracker_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            peers: 4,
            interval: 1,
            piece_len: None,
            log: "info,dartsync_peer=debug".into(),
            tracker_args: Vec::new(),
        }
    }
}

/// A running tracker and peers.
pub struct Cluster {
    // Field order matters: processes are killed (dropped) before their
    // folders are removed.
    pub tracker: Option<Proc>,
    pub peers: Vec<Option<Proc>>,
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub tracker_addr: SocketAddr,
    pub opts: Options,
    /// The last log lines of processes that were killed or replaced, for
    /// the dump when a test fails: a peer killed mid-scenario often holds
    /// the explanation.
    past_logs: Vec<(String, Vec<String>)>,
}

impl Cluster {
    /// Creates the key, starts the tracker and `opts.peers` peers.
    pub fn start(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cluster.key");
        let (status, _, err) = run(&["init", "--key-file", key.to_str().unwrap()], &[]);
        assert!(status.success(), "init failed: {err}");
        let mut cluster = Cluster {
            dir,
            key,
            tracker: None,
            tracker_addr: "127.0.0.1:1".parse().unwrap(),
            peers: Vec::new(),
            opts: opts.clone(),
            past_logs: Vec::new(),
        };
        cluster.start_tracker("127.0.0.1:0");
        for i in 0..opts.peers {
            std::fs::create_dir_all(cluster.folder(i)).unwrap();
            cluster.peers.push(None);
            cluster.start_peer(i);
        }
        cluster
    }

    /// Starts (or restarts) the tracker on `listen`.
    pub fn start_tracker(&mut self, listen: &str) {
        let data = self.dir.path().join("tracker-data");
        let mut args = vec![
            "--tracker".to_owned(),
            "--listen".into(),
            listen.into(),
            "--key-file".into(),
            self.key.to_str().unwrap().into(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--interval".into(),
            self.opts.interval.to_string(),
        ];
        if let Some(p) = self.opts.piece_len {
            args.extend(["--piece-len".into(), p.to_string()]);
        }
        args.extend(self.opts.tracker_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::spawn("tracker", &args, &self.opts.log);
        self.tracker_addr = proc.listen_addr();
        if let Some(old) = self.tracker.replace(proc) {
            self.keep_log_of(&old);
        }
    }

    /// Restarts the tracker on the same port.
    pub fn restart_tracker(&mut self) {
        let addr = self.tracker_addr.to_string();
        self.start_tracker(&addr);
    }

    /// SIGKILLs the tracker.
    pub fn kill_tracker(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            t.kill();
            self.keep_log_of(&t);
        }
    }

    /// The folder of peer `i`.
    pub fn folder(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("peer{i}"))
    }

    /// Starts (or restarts) peer `i` with extra arguments.
    pub fn start_peer_with(&mut self, i: usize, extra: &[&str]) {
        let folder = self.folder(i);
        let addr = self.tracker_addr.to_string();
        // Named after its index, unless the test names it.
        let name = format!("peer{i}");
        let mut args = Vec::new();
        if !extra.contains(&"--name") {
            args.extend(["--name", &name]);
        }
        args.extend_from_slice(extra);
        let proc = spawn_peer(&name, &folder, &addr, &self.key, &self.opts.log, &args);
        if i >= self.peers.len() {
            self.peers.resize_with(i + 1, || None);
        }
        if let Some(old) = self.peers[i].replace(proc) {
            self.keep_log_of(&old);
        }
    }

    /// Starts (or restarts) peer `i`.
    pub fn start_peer(&mut self, i: usize) {
        self.start_peer_with(i, &[]);
    }

    /// Waits until peer `i` has registered with the tracker `n` times in total.
    pub fn wait_registered(&self, i: usize, n: usize) {
        let peer = self.peer(i);
        wait_until(CONVERGE, &format!("peer{i} to register"), || {
            peer.lines().iter().filter(|l| l.contains("registered with tracker")).count() >= n
        });
    }

    /// Peer `i`'s process.
    pub fn peer(&self, i: usize) -> &Proc {
        self.peers[i].as_ref().expect("peer running")
    }

    /// SIGKILLs peer `i`.
    pub fn kill_peer(&mut self, i: usize) {
        if let Some(mut p) = self.peers[i].take() {
            p.kill();
            self.keep_log_of(&p);
        }
    }

    /// Indices of running peers.
    pub fn running(&self) -> Vec<usize> {
        (0..self.peers.len()).filter(|i| self.peers[*i].is_some()).collect()
    }

    /// Waits until every running peer's tree equals `expected`.
    pub fn wait_tree(&self, expected: &Tree, timeout: Duration) {
        let done = |trees: &[(usize, Tree)]| trees.iter().all(|(_, t)| t == expected);
        self.wait_trees(timeout, "peers to converge to the expected tree", done, |trees| {
            for (i, tree) in trees {
                if tree != expected {
                    eprintln!("peer{i} differs: {}", diff(expected, tree));
                }
            }
        });
    }

    /// Waits until every running peer has the same tree as peer `reference`,
    /// and returns it.
    pub fn wait_converged(&self, reference: usize, timeout: Duration) -> Tree {
        let done = |trees: &[(usize, Tree)]| trees.iter().all(|(_, t)| t == &trees[0].1);
        let mut trees = self.wait_trees(timeout, "peers to converge", done, |trees| {
            for (i, tree) in &trees[1..] {
                eprintln!("peer{i} vs peer{}: {}", trees[0].0, diff(&trees[0].1, tree));
            }
        });
        let _ = reference;
        trees.swap_remove(0).1
    }

    /// Snapshots the running peers' trees until `done` holds for them and
    /// returns the last snapshots. At the deadline prints `explain` of the
    /// last snapshots and every log, then fails naming `what`.
    fn wait_trees(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[(usize, Tree)]) -> bool,
        explain: impl Fn(&[(usize, Tree)]),
    ) -> Vec<(usize, Tree)> {
        let peers = self.running();
        let mut last = Vec::new();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(timeout, what, || {
                last = peers.iter().map(|i| (*i, snapshot(&self.folder(*i)))).collect();
                done(&last)
            })
        }));
        if let Err(timed_out) = waited {
            explain(&last);
            std::panic::resume_unwind(timed_out);
        }
        last
    }

    /// Remembers the last lines of a process that is gone.
    fn keep_log_of(&mut self, proc: &Proc) {
        self.past_logs.push((format!("{} (ended)", proc.name), log_tail(proc)));
    }

    /// Prints the last lines of every process's log, the ended ones first.
    /// Called when a test fails (see `Drop`).
    fn dump_logs(&self) {
        let running = self.tracker.iter().chain(self.peers.iter().flatten());
        let running = running.map(|proc| (proc.name.clone(), log_tail(proc)));
        for (name, lines) in self.past_logs.iter().cloned().chain(running) {
            for l in lines {
                eprintln!("[{name}] {l}");
            }
        }
    }

    /// Every "synced" log line of peer `i` mentioning `path`.
    pub fn synced_lines(&self, i: usize, path: &str) -> Vec<String> {
        self.peer(i).lines().into_iter().filter(|l| l.contains("synced ") && l.contains(path)).collect()
    }

    /// Peer `i`'s debug lines with the exact byte counts of each finished
    /// download of `path` (`transfer of PATH done: local=.. fetched=..`).
    pub fn transfer_lines(&self, i: usize, path: &str) -> Vec<String> {
        let needle = format!("transfer of {path} done");
        self.peer(i).lines().into_iter().filter(|l| l.contains(&needle)).collect()
    }
}

/// The last [`DUMP_LINES`] lines of `proc`'s log.
fn log_tail(proc: &Proc) -> Vec<String> {
    let mut lines = proc.lines();
    lines.drain(..lines.len().saturating_sub(DUMP_LINES));
    lines
}

/// A failing test (a panic on the test's thread while the cluster is
/// still alive) prints every log, whatever wait timed out or assertion
/// failed, before the processes are killed.
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// With the tracker down, peers 0 and 1 both edit `rel` (which every
/// peer has); peer 1's edit is the later one (peer 0's is backdated a
/// minute), so it keeps the name once the tracker is back.
///
/// Peer 0's edit is written beside its folder, backdated there and then
/// renamed into place, so its scanner can only ever see the backdated
/// file. Backdating it in place raced the scanner: a close-after-write is
/// indexed at once, the later `touch` is not a new version, and the two
/// edits then had mtimes a few ms apart or equal, a coin toss.
pub fn concurrent_edits_while_tracker_is_down(cluster: &mut Cluster, rel: &str) {
    cluster.kill_tracker();
    let staged = cluster.dir.path().join("staged-edit");
    std::fs::write(&staged, b"edit from peer 0\n").unwrap();
    let earlier = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&staged).unwrap().set_modified(earlier).unwrap();
    std::fs::rename(&staged, cluster.folder(0).join(rel)).unwrap();
    write(&cluster.folder(1), rel, b"edit from peer 1\n");
}

/// Bytes fetched over the network according to a `transfer of .. done` line.
pub fn fetched_bytes(line: &str) -> u64 {
    let rest = line.split(" fetched=").nth(1).expect("transfer line format");
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// A short description of how `got` differs from `want`.
pub fn diff(want: &Tree, got: &Tree) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}")),
            Some(g) if g != v => out.push(format!("differs {k}")),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            out.push(format!("extra {k}"));
        }
    }
    out.truncate(20);
    out.join(", ")
}

/// Writes `bytes` to `root/rel`, creating parent folders.
pub fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `len` deterministic pseudo-random bytes for `seed` (`test_util::det_bytes`,
/// in the argument order of these tests).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    det_bytes(seed, len)
}
