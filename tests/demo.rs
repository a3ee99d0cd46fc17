//! `dartsync demo`: the live demo starts a tracker and four peers as
//! separate processes and, on Ctrl-C (SIGINT to the demo alone), stops
//! every one of them; run again, it reuses its folder.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{bin, wait_until};

/// A running `dartsync demo`, its stdout collected line by line.
struct Demo {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    fn start(dir: &std::path::Path) -> Demo {
        let mut child = Command::new(bin())
            .args(["demo", dir.to_str().unwrap(), "--peers", "4"])
            .env_remove("RUST_LOG")
            .env("DARTSYNC_NO_DISCOVERY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dartsync demo");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Demo { child, lines }
    }

    /// The processes it says it started: (name, pid).
    fn started(&self) -> Vec<(String, i32)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("started ")?;
                let (name, pid) = rest.split_once(" (pid ")?;
                Some((name.to_owned(), pid.trim_end_matches(')').parse().ok()?))
            })
            .collect()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGINT to the demo only (as Ctrl-C would, had its children their own
    /// process group); waits for its exit.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGINT).unwrap();
        let mut status = None;
        wait_until(Duration::from_secs(60), "the demo to exit after SIGINT", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        // Its stdout closes with it; give the reader thread the last lines.
        wait_until(Duration::from_secs(5), "the demo's last words", || self.text().contains("Logs:"));
        (status.unwrap(), self.text())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctrl_c_stops_every_process_the_demo_started_and_a_rerun_reuses_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let demo = Demo::start(&demo_dir);
    wait_until(Duration::from_secs(90), "the demo to start a tracker and four peers", || demo.started().len() == 5);
    let started = demo.started();
    let names: Vec<&str> = started.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["tracker", "alice", "bob", "carol", "dave"]);
    for (_, pid) in &started {
        assert!(kill(Pid::from_raw(*pid), None).is_ok(), "pid {pid} is not running");
    }
    // Something to sync while it runs: the live view shows it.
    std::fs::write(demo_dir.join("alice/hello.txt"), b"hi").unwrap();
    wait_until(Duration::from_secs(60), "hello.txt at every peer", || {
        ["bob", "carol", "dave"].iter().all(|p| demo_dir.join(p).join("hello.txt").exists())
    });
    wait_until(Duration::from_secs(30), "the live view", || demo.text().contains("Up to date"));

    let (status, text) = demo.interrupt();
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("Stopped every process the demo started"), "{text}");
    for (name, pid) in &started {
        assert_eq!(kill(Pid::from_raw(*pid), None), Err(Errno::ESRCH), "{name} (pid {pid}) is still running");
    }

    // Again: same key, same folders, the file still there and still synced.
    let demo = Demo::start(&demo_dir);
    wait_until(Duration::from_secs(90), "the second run to start", || demo.started().len() == 5);
    assert_eq!(std::fs::read(demo_dir.join("carol/hello.txt")).unwrap(), b"hi");
    let (status, _) = demo.interrupt();
    assert!(status.success());
}
