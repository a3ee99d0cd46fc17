//! The demo's processes: one tracker and N peers of this same binary on
//! 127.0.0.1, their folders, key, tracker data and logs under the demo
//! folder:
//!
//! ```text
//! DIR/cluster.key      the cluster key (created once)
//! DIR/.tracker/        the tracker's table and identity
//! DIR/logs/NAME.log    each process's log (appended across runs)
//! DIR/alice/ ...       the synced folders
//! ```
//!
//! Processes are stopped with SIGTERM (a clean goodbye) and, if one has
//! not exited after [`GRACE`], SIGKILL; always by the PID this module
//! started, and always reaped. Dropping a [`DemoCluster`] stops what is
//! still running.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dartsync_shared::control::{self, CONTROL_SOCKET, RequestKind};
use dartsync_shared::key::ClusterKey;
use dartsync_shared::status::PeerStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::StopFlag;

/// How long a process may take to stop after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// How long a process may take to start (listen, register).
const START: Duration = Duration::from_secs(30);
/// The tracker's keep-alive interval: a vanished device shows as offline
/// within seconds.
const INTERVAL_SECS: &str = "2";

/// One process of the demo.
#[derive(Debug)]
pub struct Node {
    /// `tracker`, or the device name.
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(name: &str, args: Vec<String>, logs: &Path) -> Node {
        Node { name: name.to_owned(), args, log: logs.join(format!("{name}.log")), child: None }
    }

    /// Starts the process; returns the length its log had before, so a
    /// reader can look at this run's lines only.
    fn spawn(&mut self, exe: &Path) -> anyhow::Result<u64> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(exe)
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the {}", self.name))?;
        self.child = Some(child);
        Ok(offset)
    }

    /// The PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after [`GRACE`]; waits until it is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

/// The running demo cluster.
#[derive(Debug)]
pub struct DemoCluster {
    /// The demo folder.
    pub dir: PathBuf,
    /// The tracker's address.
    pub tracker_addr: String,
    /// The tracker process.
    pub tracker: Node,
    /// The peers, in name order.
    pub peers: Vec<Node>,
    exe: PathBuf,
}

impl DemoCluster {
    /// Creates the folders (and the key, once), starts the tracker and
    /// the peers, and waits until every peer is registered.
    pub fn start(dir: &Path, names: &[&str], stop: &StopFlag) -> anyhow::Result<DemoCluster> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let key = dir.join("cluster.key");
        if !key.exists() {
            ClusterKey::generate().save_new(&key).context("cannot create the demo's cluster key")?;
        }
        let exe = std::env::current_exe().context("cannot find the dartsync binary to start")?;
        let key_s = key.display().to_string();
        let tracker_args = |listen: &str| {
            let data = dir.join(".tracker").display().to_string();
            ["--tracker", "--listen", listen, "--data", &data, "--key-file", &key_s, "--interval", INTERVAL_SECS]
                .map(String::from)
                .to_vec()
        };
        // Every process goes into `demo` as it starts: an error on the way
        // drops `demo`, which stops what was started.
        let tracker = Node::new("tracker", tracker_args("127.0.0.1:0"), &logs);
        let mut demo =
            DemoCluster { dir: dir.to_owned(), tracker_addr: String::new(), tracker, peers: Vec::new(), exe };
        let offset = demo.tracker.spawn(&demo.exe)?;
        let line = wait_for_log(&mut demo.tracker, offset, "tracker listening on ", stop)?;
        demo.tracker_addr = line
            .split("tracker listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("the tracker's log does not say where it listens")?
            .to_owned();
        // Restarts use the same port, so the peers find it again.
        demo.tracker.args = tracker_args(&demo.tracker_addr);
        for name in names {
            let folder = dir.join(name);
            std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
            let args = [
                "--peer",
                &folder.display().to_string(),
                "--name",
                name,
                "--tracker-addr",
                &demo.tracker_addr,
                "--listen",
                "127.0.0.1:0",
                "--key-file",
                &key_s,
            ]
            .map(String::from)
            .to_vec();
            demo.peers.push(Node::new(name, args, &logs));
            let exe = demo.exe.clone();
            if let Some(node) = demo.peers.last_mut() {
                node.spawn(&exe)?;
            }
        }
        for i in 0..demo.peers.len() {
            demo.wait_registered(i, stop)?;
        }
        Ok(demo)
    }

    /// Peer `i`'s folder.
    pub fn folder(&self, i: usize) -> PathBuf {
        self.dir.join(&self.peers[i].name)
    }

    /// Peer `i`'s status, if it answers.
    pub fn status(&self, i: usize) -> Option<PeerStatus> {
        let folder = self.folder(i);
        let socket = folder.join(".dartsync").join(CONTROL_SOCKET);
        let raw = control::request(&socket, &folder, RequestKind::Status, Duration::from_secs(2)).ok()?;
        serde_json::from_value(raw).ok()
    }

    /// Waits until peer `i` answers and is connected to the tracker.
    fn wait_registered(&mut self, i: usize, stop: &StopFlag) -> anyhow::Result<()> {
        let deadline = Instant::now() + START;
        loop {
            if self.status(i).is_some_and(|s| s.tracker.connected) {
                return Ok(());
            }
            if !self.peers[i].running() {
                bail!("{} stopped at start; its log ends with:\n{}", self.peers[i].name, self.peers[i].log_tail());
            }
            if stop.is_set() {
                bail!("stopped while starting");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not register within {START:?}; its log ends with:\n{}",
                    self.peers[i].name,
                    self.peers[i].log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops peer `i` (a device going offline).
    pub fn stop_peer(&mut self, i: usize) {
        self.peers[i].stop();
    }

    /// Starts peer `i` again and waits until it is registered.
    pub fn start_peer(&mut self, i: usize, stop: &StopFlag) -> anyhow::Result<()> {
        self.peers[i].spawn(&self.exe)?;
        self.wait_registered(i, stop)
    }

    /// Stops the tracker.
    pub fn stop_tracker(&mut self) {
        self.tracker.stop();
    }

    /// Starts the tracker again on its address and waits until it listens.
    pub fn start_tracker(&mut self, stop: &StopFlag) -> anyhow::Result<()> {
        let offset = self.tracker.spawn(&self.exe)?;
        wait_for_log(&mut self.tracker, offset, "tracker listening on ", stop).map(drop)
    }

    /// The PIDs of every running process, named.
    pub fn pids(&self) -> Vec<(String, u32)> {
        std::iter::once(&self.tracker)
            .chain(&self.peers)
            .filter_map(|n| n.pid().map(|pid| (n.name.clone(), pid)))
            .collect()
    }

    /// Stops every process (peers first, then the tracker).
    pub fn stop(&mut self) {
        for peer in &mut self.peers {
            peer.stop();
        }
        self.tracker.stop();
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `node`'s log, from `offset` on, has a line containing
/// `needle`; returns it.
fn wait_for_log(node: &mut Node, offset: u64, needle: &str, stop: &StopFlag) -> anyhow::Result<String> {
    let deadline = Instant::now() + START;
    loop {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&node.log) {
            let _ = file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_to_string(&mut text));
        }
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        if !node.running() {
            bail!("the {} stopped at start; its log ends with:\n{}", node.name, node.log_tail());
        }
        if stop.is_set() {
            bail!("stopped while starting");
        }
        if Instant::now() > deadline {
            bail!("the {} did not start within {START:?}; its log ends with:\n{}", node.name, node.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
