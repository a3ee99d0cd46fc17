//! The README's Quick start, run as a user would paste it: the one
//! ```` ```sh ```` block between `<!-- quickstart:begin -->` and
//! `<!-- quickstart:end -->` in `README.md`, run by `bash -euo pipefail`
//! (so any failing line fails the test) with the built `dartsync` first on
//! `PATH`, `HOME` and `TMPDIR` in a temp folder, and the tracker's port
//! `7373` replaced by a free one. It must exit 0 and print `Up to date` for
//! each of its four peers.
//!
//! The script starts a tracker and peers in the background. Bash runs in a
//! process group of its own, and that group (only processes this test
//! started) is killed when the script ends or its deadline passes, so
//! nothing outlives the test. The group id stays reserved until bash is
//! reaped, which happens only after the kill.
//!
//! Before it runs anything, the test checks that every address the block
//! names is on 127.0.0.1: the Quick start must never reach the network.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::util::bin;

/// The line before the Quick start block.
const BEGIN: &str = "<!-- quickstart:begin -->";
/// The line after it.
const END: &str = "<!-- quickstart:end -->";
/// The fence that opens the block.
const FENCE_OPEN: &str = "```sh";
/// The fence that closes it.
const FENCE_CLOSE: &str = "```";
/// The tracker port the README uses; the test swaps in a free one.
const README_PORT: &str = ":7373";
/// Peers the Quick start starts; each one's status must say `Up to date`.
const PEERS: usize = 4;
/// The state `dartsync status` prints for a peer that has everything.
const UP_TO_DATE: &str = "Up to date";
/// How long the whole script may take before its process group is killed.
const DEADLINE: Duration = Duration::from_secs(120);
/// How long the output pipes may stay open after the group is killed.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// The shell script between the markers of `readme`: the body of the one
/// ```` ```sh ```` block there (fences excluded), or why it cannot be found.
fn extract_quickstart(readme: &str) -> Result<String, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let find = |marker: &str| -> Vec<usize> {
        lines.iter().enumerate().filter(|(_, l)| l.trim() == marker).map(|(n, _)| n).collect()
    };
    let (begins, ends) = (find(BEGIN), find(END));
    let begin = match begins.as_slice() {
        [] => return Err(format!("README.md has no line `{BEGIN}` marking the start of the Quick start block")),
        [one] => *one,
        _ => return Err(format!("README.md has {} lines `{BEGIN}`; the Quick start needs exactly one", begins.len())),
    };
    let end = match ends.as_slice() {
        [] => return Err(format!("README.md has no line `{END}` marking the end of the Quick start block")),
        [one] => *one,
        _ => return Err(format!("README.md has {} lines `{END}`; the Quick start needs exactly one", ends.len())),
    };
    if end < begin {
        return Err(format!("README.md has `{END}` (line {}) before `{BEGIN}` (line {})", end + 1, begin + 1));
    }

    let inside = &lines[begin + 1..end];
    let mut rest = inside.iter().copied().skip_while(|l| l.trim().is_empty());
    match rest.next() {
        Some(l) if l.trim_end() == FENCE_OPEN => {}
        Some(l) => {
            return Err(format!(
                "the Quick start markers must enclose one {FENCE_OPEN} block; the first line inside is `{l}`"
            ));
        }
        None => return Err(format!("nothing between `{BEGIN}` and `{END}`: expected one {FENCE_OPEN} block")),
    }
    let mut body = String::new();
    let mut closed = false;
    for line in rest.by_ref() {
        if line.trim_end() == FENCE_CLOSE {
            closed = true;
            break;
        }
        body.push_str(line);
        body.push('\n');
    }
    if !closed {
        return Err(format!("the {FENCE_OPEN} block of the Quick start is not closed by {FENCE_CLOSE} before `{END}`"));
    }
    if let Some(extra) = rest.find(|l| !l.trim().is_empty()) {
        return Err(format!(
            "only one {FENCE_OPEN} block may stand between the Quick start markers; found `{extra}` after it"
        ));
    }
    if body.trim().is_empty() {
        return Err(format!("the Quick start's {FENCE_OPEN} block is empty"));
    }
    Ok(body)
}

/// Checks that every address given to `--listen` or `--tracker-addr` in
/// `script` is on 127.0.0.1, and that no wildcard address appears.
fn check_loopback_only(script: &str) -> Result<(), String> {
    if script.contains("0.0.0.0") {
        return Err("the Quick start names 0.0.0.0; it must listen on 127.0.0.1 only".into());
    }
    const FLAGS: [&str; 2] = ["--listen", "--tracker-addr"];
    let unquote = |w: &str| w.trim_matches(|c| c == '"' || c == '\'').to_owned();
    let words: Vec<&str> = script.split_whitespace().collect();
    for (n, word) in words.iter().enumerate() {
        let (flag, value) = match word.split_once('=') {
            Some((flag, value)) => (flag, Some(unquote(value))),
            None => (*word, words.get(n + 1).copied().map(unquote)),
        };
        if !FLAGS.contains(&flag) {
            continue;
        }
        match value {
            Some(value) if value.starts_with("127.0.0.1:") => {}
            Some(value) => {
                return Err(format!("the Quick start passes `{flag} {value}`; only 127.0.0.1 addresses are allowed"));
            }
            None => return Err(format!("the Quick start ends with `{flag}` and no address")),
        }
    }
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Bash running the script, in its own process group. Dropping it kills
/// the whole group (SIGKILL) and reaps bash.
struct ScriptRun {
    child: Child,
    pgid: Pid,
    /// Bash has been reaped: its pid (the group id) may be reused, so the
    /// group must not be signalled any more.
    reaped: bool,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

/// What a finished (or killed) run left behind.
struct Outcome {
    status: ExitStatus,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// Reads `pipe` to its end on a thread; the text arrives on the receiver.
fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

impl ScriptRun {
    /// Starts `bash -euo pipefail script` with `bin_dir` first on `PATH`
    /// and `HOME`, `TMPDIR` and the working directory under `root`.
    fn start(script: &Path, bin_dir: &Path, root: &Path) -> ScriptRun {
        let home = root.join("home");
        let tmp = root.join("tmp");
        for dir in [&home, &tmp] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        let path = match std::env::var_os("PATH") {
            Some(old) => {
                let mut dirs = vec![bin_dir.to_path_buf()];
                dirs.extend(std::env::split_paths(&old));
                std::env::join_paths(dirs).expect("PATH entries without ':'")
            }
            None => bin_dir.as_os_str().to_owned(),
        };
        let mut cmd = Command::new("bash");
        cmd.arg("-euo")
            .arg("pipefail")
            .arg(script)
            .current_dir(root)
            .env("PATH", path)
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("NO_COLOR", "1")
            // No test outside a network namespace of its own may multicast.
            .env("DARTSYNC_NO_DISCOVERY", "1")
            .env_remove("RUST_LOG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn bash (is bash installed?)");
        let pgid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        ScriptRun { child, pgid, reaped: false, stdout, stderr }
    }

    /// True once bash has exited; leaves it a zombie (not reaped), so its
    /// pid, which is also the group id, cannot be reused before the kill.
    fn bash_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pgid), flags) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(Errno::EINTR) => false,
            Err(e) => panic!("waitid on bash ({}): {e}", self.pgid),
        }
    }

    /// Kills every process left in the group (bash itself if still
    /// running, and whatever the script started in the background).
    fn kill_group(&self) {
        match killpg(self.pgid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => panic!("kill process group {}: {e}", self.pgid),
        }
    }

    /// Waits for bash to exit (at most `deadline`), kills the group, reaps
    /// bash and collects its output.
    fn finish(mut self, deadline: Duration) -> Outcome {
        let started = Instant::now();
        let mut timed_out = false;
        while !self.bash_exited() {
            if started.elapsed() > deadline {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill_group();
        let status = self.child.wait().expect("reap bash");
        self.reaped = true;
        let read = |rx: &mpsc::Receiver<String>, name: &str| {
            rx.recv_timeout(PIPE_GRACE)
                .unwrap_or_else(|_| format!("<{name} still open {PIPE_GRACE:?} after the process group was killed>"))
        };
        let stdout = read(&self.stdout, "stdout");
        let stderr = read(&self.stderr, "stderr");
        Outcome { status, timed_out, stdout, stderr }
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        // Only when `finish` did not complete (a panic): kill the group
        // before reaping bash, so nothing the script started survives.
        if !self.reaped {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The `*.log` files the script left under `dir`, with their last lines,
/// for a failure message.
fn log_tails(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                walk(&path, out);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
                out.push(path);
            }
        }
    }
    let mut logs = Vec::new();
    walk(dir, &mut logs);
    logs.sort();
    let mut text = String::new();
    for log in logs {
        let body = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = body.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        text.push_str(&format!("--- {} (last {} lines)\n{}\n", log.display(), tail.len(), tail.join("\n")));
    }
    if text.is_empty() { "(no log files)".into() } else { text }
}

#[test]
fn the_readme_quick_start_runs_and_every_peer_is_up_to_date() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme =
        std::fs::read_to_string(&readme_path).unwrap_or_else(|e| panic!("read {}: {e}", readme_path.display()));
    let block = extract_quickstart(&readme).unwrap_or_else(|e| panic!("{e}"));
    check_loopback_only(&block).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        block.contains(README_PORT),
        "the Quick start no longer uses the tracker port {README_PORT}; update tests/quickstart.rs"
    );
    let port = free_port();
    let script = block.replace(README_PORT, &format!(":{port}"));

    let root = tempfile::tempdir().expect("temp dir");
    let script_path = root.path().join("quickstart.sh");
    std::fs::write(&script_path, &script).expect("write the script");
    let binary = bin();
    let bin_dir = binary.parent().expect("the binary has a folder");

    let run = ScriptRun::start(&script_path, bin_dir, root.path());
    let out = run.finish(DEADLINE);

    let report = || {
        format!(
            "status: {}\n--- script\n{script}--- stdout\n{}\n--- stderr\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            log_tails(root.path())
        )
    };
    assert!(!out.timed_out, "the Quick start did not finish within {DEADLINE:?}\n{}", report());
    assert!(out.status.success(), "the Quick start failed\n{}", report());
    // Every `dartsync status` in the script exited 0 (up to date), or
    // `set -e` would have stopped it; each one also said so.
    let said = out.stdout.matches(UP_TO_DATE).count();
    assert!(said >= PEERS, "`{UP_TO_DATE}` printed {said} times, expected once per peer ({PEERS})\n{}", report());
}

#[test]
fn extraction_returns_the_block_between_the_markers() {
    let readme =
        format!("# Title\n\ntext\n\n{BEGIN}\n```sh\necho one\n\necho two\n```\n{END}\n\n```sh\necho not this\n```\n");
    assert_eq!(extract_quickstart(&readme).unwrap(), "echo one\n\necho two\n");
    // Blank lines around the block and trailing spaces on the markers are fine.
    let readme = format!("{BEGIN}  \n\n```sh\ntrue\n```\n\n{END}\n");
    assert_eq!(extract_quickstart(&readme).unwrap(), "true\n");
}

#[test]
fn extraction_says_clearly_what_is_wrong() {
    let cases: &[(&str, String, &str)] = &[
        ("no markers at all", "# Title\n```sh\ntrue\n```\n".into(), BEGIN),
        ("no begin marker", format!("```sh\ntrue\n```\n{END}\n"), BEGIN),
        ("no end marker", format!("{BEGIN}\n```sh\ntrue\n```\n"), END),
        ("end before begin", format!("{END}\n```sh\ntrue\n```\n{BEGIN}\n"), "before"),
        ("two begin markers", format!("{BEGIN}\n{BEGIN}\n```sh\ntrue\n```\n{END}\n"), "exactly one"),
        ("nothing inside", format!("{BEGIN}\n\n{END}\n"), "nothing between"),
        ("not a sh block", format!("{BEGIN}\n```bash\ntrue\n```\n{END}\n"), "```sh"),
        ("prose, not a block", format!("{BEGIN}\nrun this\n{END}\n"), "```sh"),
        ("unclosed block", format!("{BEGIN}\n```sh\ntrue\n{END}\n"), "not closed"),
        ("two blocks", format!("{BEGIN}\n```sh\ntrue\n```\n```sh\nfalse\n```\n{END}\n"), "only one"),
        ("empty block", format!("{BEGIN}\n```sh\n\n```\n{END}\n"), "empty"),
    ];
    for (what, readme, needle) in cases {
        let err = extract_quickstart(readme).expect_err(what);
        assert!(err.contains(needle), "{what}: the message `{err}` does not mention `{needle}`");
    }
}

#[test]
fn the_readme_has_a_quick_start_block_on_loopback_only() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let block = extract_quickstart(&readme).unwrap_or_else(|e| panic!("{e}"));
    check_loopback_only(&block).unwrap_or_else(|e| panic!("{e}"));
    assert!(block.contains(README_PORT), "the Quick start does not use the tracker port {README_PORT}");
    assert!(block.contains("dartsync status"), "the Quick start does not end with `dartsync status`");
}

#[test]
fn the_loopback_check_refuses_other_addresses() {
    assert!(check_loopback_only("dartsync --peer d --tracker-addr 127.0.0.1:7373 --listen 127.0.0.1:0").is_ok());
    for bad in [
        "dartsync --tracker --listen 0.0.0.0:7373",
        "dartsync --peer d --tracker-addr pi.local",
        "dartsync --peer d --tracker-addr \"192.168.1.2:7373\"",
        "dartsync --peer d --listen=10.0.0.1:0",
    ] {
        assert!(check_loopback_only(bad).is_err(), "accepted: {bad}");
    }
}
