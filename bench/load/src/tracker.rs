//! The tracker under load: where it listens, its cluster key and its
//! process id ([`Target`]), and [`TrackerProcess`], a real `dartsync
//! --tracker` started by this tool on 127.0.0.1 with a fresh key and data
//! directory, killed by its PID on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use dartsync_shared::key::ClusterKey;

use crate::LoadError;

/// What the load needs of a running tracker: any tracker, whoever
/// started it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its PTP address (loopback).
    pub addr: SocketAddr,
    /// The cluster key it was started with.
    pub key: ClusterKey,
    /// Its process id, for `/proc` readings.
    pub pid: u32,
}

/// How this tool starts the tracker.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    /// The `dartsync` binary.
    pub binary: PathBuf,
    /// `max_peers` (sessions at once).
    pub max_peers: usize,
    /// `max_records` (entries in the table).
    pub max_records: usize,
    /// `max_records_per_peer` (entries one peer authors).
    pub max_records_per_peer: usize,
    /// Keep-alive interval in seconds (`None`: the tracker's default, 10).
    pub interval_secs: Option<u64>,
    /// Where the data directory is created (`None`: `/dev/shm` when it
    /// exists, else the system's temp dir).
    pub scratch: Option<PathBuf>,
}

/// Lines of the tracker's log kept for error messages.
const KEPT_LINES: usize = 40;

/// A `dartsync --tracker` child process.
#[derive(Debug)]
pub struct TrackerProcess {
    child: Child,
    target: Target,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

impl TrackerProcess {
    /// Writes a key and a config file into a fresh directory, starts the
    /// tracker on `127.0.0.1:0` and waits for its "listening on" line.
    pub fn spawn(settings: &TrackerSettings) -> Result<TrackerProcess, LoadError> {
        let base = settings.scratch.clone().unwrap_or_else(default_scratch);
        let dir = tempfile::Builder::new().prefix("dartsync-load-").tempdir_in(&base).map_err(LoadError::Io)?;
        let key = ClusterKey::generate();
        let key_file = dir.path().join("cluster.key");
        key.save_new(&key_file).map_err(|e| LoadError::Tracker(format!("cannot write the key: {e}")))?;
        let config_file = dir.path().join("tracker.toml");
        std::fs::write(&config_file, config_toml(settings)).map_err(LoadError::Io)?;
        let mut cmd = Command::new(&settings.binary);
        cmd.arg("--tracker")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--key-file")
            .arg(&key_file)
            .arg("--config")
            .arg(&config_file)
            .args(["--mass-change-files", "0", "--mass-change-percent", "0"]);
        if let Some(secs) = settings.interval_secs {
            cmd.args(["--interval", &secs.to_string()]);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null());
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LoadError::Tracker(format!("cannot start {}: {e}", settings.binary.display())))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listen_addr(&line) {
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().expect("log lock");
                if log.len() == KEPT_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let pid = child.id();
        let mut process = TrackerProcess {
            child,
            target: Target { addr: "127.0.0.1:1".parse().expect("an address"), key, pid },
            log,
            _dir: dir,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => process.target.addr = addr,
            Err(_) => {
                return Err(LoadError::Tracker(format!(
                    "the tracker did not say where it listens; its log:\n{}",
                    process.log_tail()
                )));
            }
        }
        Ok(process)
    }

    /// Where it listens, its key and PID.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The last lines it logged.
    pub fn log_tail(&self) -> String {
        self.log.lock().expect("log lock").iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        // `Child::kill` signals this child's own PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[tracker]` table of the config file (bounds with no flag).
pub fn config_toml(settings: &TrackerSettings) -> String {
    format!(
        "[tracker]\nmax_peers = {}\nmax_records = {}\nmax_records_per_peer = {}\nmax_known_peers = {}\n",
        settings.max_peers,
        settings.max_records,
        settings.max_records_per_peer,
        settings.max_peers.max(dartsync_shared::config::DEFAULT_MAX_KNOWN_PEERS),
    )
}

/// The address of a `... listening on ADDR ...` log line.
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("tracker listening on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn default_scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() }
}

/// The `dartsync` binary: `explicit`, else `DARTSYNC_BIN`, else
/// `dartsync` next to this tool's own executable (both live in
/// `target/release`).
pub fn find_binary(explicit: Option<PathBuf>) -> Result<PathBuf, LoadError> {
    if let Some(path) = explicit.or_else(|| std::env::var_os("DARTSYNC_BIN").map(PathBuf::from)) {
        return Ok(path);
    }
    let exe = std::env::current_exe().map_err(LoadError::Io)?;
    let beside = exe.with_file_name("dartsync");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(LoadError::Tracker(format!(
            "no dartsync binary at {} (run `cargo build --release`, or pass --dartsync PATH)",
            beside.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_line_gives_the_address() {
        let line = "2024-01-01T00:00:00Z  INFO dartsync_tracker: tracker listening on 127.0.0.1:40123 key=ab id=cd";
        assert_eq!(listen_addr(line), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(listen_addr("INFO dashboard on http://127.0.0.1:1"), None);
    }

    #[test]
    fn the_config_sets_the_bounds() {
        let settings = TrackerSettings {
            binary: "x".into(),
            max_peers: 5000,
            max_records: 10,
            max_records_per_peer: 7,
            interval_secs: None,
            scratch: None,
        };
        let text = config_toml(&settings);
        assert!(text.contains("max_peers = 5000\n") && text.contains("max_known_peers = 5000\n"), "{text}");
        assert!(text.contains("max_records = 10\n") && text.contains("max_records_per_peer = 7\n"), "{text}");
    }
}
