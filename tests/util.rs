//! Plumbing for end-to-end tests: spawning `dartsync` processes, reading
//! their logs, waiting on conditions with deadlines, killing by PID.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dartsync"))
}

/// Polls `cond` until it holds; panics naming `what` once `timeout` has
/// passed (the workspace's one poller, `test_util::eventually`).
pub use dartsync_shared::test_util::eventually as wait_until;

/// Arguments with `--no-discovery` added when they start a tracker or a
/// peer: no test outside a network namespace of its own may send
/// multicast (`tests/netns.rs` starts its processes itself, with
/// discovery on). Belt and braces: trackers on loopback never announce,
/// and peers given `--tracker-addr` never browse.
pub fn no_discovery<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    // A mode starts with a flag; a subcommand (`status --tracker`) does not.
    let mode = args.first().is_some_and(|a| a.starts_with('-'));
    if mode && args.iter().any(|a| *a == "--tracker" || *a == "--peer") && !args.contains(&"--no-discovery") {
        args.push("--no-discovery");
    }
    args
}

/// Runs `dartsync` to completion with `args`; returns (status, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &Path)]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(no_discovery(args)).env_remove("RUST_LOG").env("DARTSYNC_NO_DISCOVERY", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn dartsync");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A running `dartsync` process whose stderr is collected line by line.
/// Killed (SIGKILL, by PID) on drop if still running.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Spawns `dartsync --tracker` on 127.0.0.1 (free port) with `key` and `data`.
pub fn spawn_tracker(key: &Path, data: &Path) -> Proc {
    let args =
        ["--tracker", "--listen", "127.0.0.1:0", "--key-file", key.to_str().unwrap(), "--data", data.to_str().unwrap()];
    Proc::spawn("tracker", &args, "info")
}

/// Spawns `dartsync --peer FOLDER` for `tracker_addr` with `key`, its
/// piece server on a free loopback port, logging at `log`, with `extra`
/// arguments.
pub fn spawn_peer(name: &str, folder: &Path, tracker_addr: &str, key: &Path, log: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--peer",
        folder.to_str().unwrap(),
        "--tracker-addr",
        tracker_addr,
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(name, &args, log)
}

impl Proc {
    /// Spawns `dartsync args...` with `RUST_LOG` set to `log`.
    pub fn spawn(name: &str, args: &[&str], log: &str) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(no_discovery(args)).env("RUST_LOG", log).env("NO_COLOR", "1").env("DARTSYNC_NO_DISCOVERY", "1");
        Proc::spawn_command(name, cmd)
    }

    /// Spawns any prepared command (an emulated `dartsync`, an `sshd`),
    /// collecting its stderr like [`Proc::spawn`] does.
    pub fn spawn_command(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("E2E_ECHO").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Proc { name: name.to_owned(), child, lines }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// A copy of every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let mut found = None;
        wait_until(timeout, &format!("{} to log {needle:?}", self.name), || {
            found = self.lines().into_iter().find(|l| l.contains(needle));
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits for "listening on ADDR" and returns ADDR.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        let line = self.wait_for_line("listening on ", Duration::from_secs(20));
        let rest = line.split("listening on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// Waits for exit and returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut status = None;
        let child = &mut self.child;
        wait_until(timeout, "process exit", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap().code()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
