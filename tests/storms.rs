//! End-to-end: fault discipline. A path that cannot be synced must not turn
//! into a retry storm: no repeated downloads, no log flood, no busy CPU, and
//! it recovers on its own once the cause goes away.
//!
//! Each test watches the peers over an observation window (the bound is a
//! rate, so time must pass; nothing waits on the window for an event) and
//! asserts CPU time from `/proc/PID/stat`, log lines and download counts
//! with generous margins for a loaded 2-core machine.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{CONVERGE, Cluster, Options, random_bytes, snapshot, write};
use crate::util::{Proc, wait_until};

/// How long a fault is watched.
const WINDOW: Duration = Duration::from_secs(30);
/// CPU allowed over the window, as a fraction of one core.
const MAX_CPU: f64 = 0.05;

/// CPU seconds (user + system) `proc` has used so far.
fn cpu_seconds(proc: &Proc) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{}/stat", proc.pid())).expect("process stat");
    // "pid (comm) S ppid ...": utime and stime are fields 14 and 15; the
    // comm may hold spaces, so count from the last ')'.
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY-free: the clock tick is 100 Hz on every Linux this runs on.
    ticks as f64 / 100.0
}

/// Files, folders and links under `root`, `.dartsync` excluded (no reads).
fn entries(root: &Path) -> usize {
    let Ok(list) = fs::read_dir(root) else { return 0 };
    list.flatten()
        .filter(|e| e.file_name() != ".dartsync")
        .map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { 1 + entries(&e.path()) } else { 1 })
        .sum()
}

/// Lines of `proc` at INFO or above (what a user reads) mentioning `needle`.
fn user_lines(proc: &Proc, needle: &str) -> Vec<String> {
    proc.lines()
        .into_iter()
        .filter(|l| (l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains(needle))
        .collect()
}

/// How many downloads of `path` `proc` started.
fn downloads_of(proc: &Proc, path: &str) -> usize {
    proc.lines().iter().filter(|l| l.contains("download starting") && l.contains(&format!("path={path}"))).count()
}

/// Watches `procs` for [`WINDOW`] and returns each one's CPU share of a
/// core over it.
fn cpu_over_window(procs: &[&Proc]) -> Vec<f64> {
    let before: Vec<f64> = procs.iter().map(|p| cpu_seconds(p)).collect();
    let start = Instant::now();
    // An observation window, not a synchronisation: the bound is a rate.
    std::thread::sleep(WINDOW);
    let elapsed = start.elapsed().as_secs_f64();
    procs.iter().zip(before).map(|(p, b)| (cpu_seconds(p) - b) / elapsed).collect()
}

/// `chattr +i` on a folder for the life of the guard (root only).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        let out = Command::new("chattr").arg("+i").arg(dir).output().map_err(|e| format!("chattr: {e}"))?;
        if !out.status.success() {
            return Err(format!("chattr +i: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Immutable(dir.to_owned()))
    }

    fn clear(&self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

#[test]
fn an_unwritable_destination_is_downloaded_once_and_installed_when_writable() {
    let required = std::env::var_os("DARTSYNC_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
    let cluster = Cluster::start(Options { peers: 3, ..Options::default() });
    for i in 0..3 {
        cluster.wait_registered(i, 1);
    }
    let stuck = cluster.folder(2);
    let guard = match Immutable::set(&stuck) {
        Ok(guard) => guard,
        Err(why) => {
            assert!(!required, "DARTSYNC_REQUIRE_ROOT_TESTS=1 but cannot make a folder immutable: {why}");
            eprintln!("skipping the unwritable-destination test: {why} (needs root on ext4/xfs)");
            return;
        }
    };
    let body = random_bytes(20 << 20, 7);
    write(&cluster.folder(0), "big.bin", &body);
    wait_until(CONVERGE, "peer1 to get big.bin", || {
        fs::read(cluster.folder(1).join("big.bin")).is_ok_and(|b| b == body)
    });
    cluster.peer(2).wait_for_line("parked", CONVERGE);

    let procs = [cluster.peer(0), cluster.peer(1), cluster.peer(2)];
    let cpu = cpu_over_window(&procs);
    let stuck_peer = cluster.peer(2);
    assert_eq!(downloads_of(stuck_peer, "big.bin"), 1, "the verified download was fetched again");
    let said = user_lines(stuck_peer, "big.bin");
    assert!(said.len() <= 5, "{} lines about big.bin: {said:#?}", said.len());
    for (i, share) in cpu.iter().enumerate() {
        assert!(*share < MAX_CPU, "peer{i} used {:.1}% of a core while peer2 could not write", share * 100.0);
    }
    assert!(!stuck.join("big.bin").exists());

    // Writable again: installed from the kept download, without a new one.
    guard.clear();
    wait_until(Duration::from_secs(120), "peer2 to install big.bin", || {
        fs::read(stuck.join("big.bin")).is_ok_and(|b| b == body)
    });
    assert_eq!(downloads_of(cluster.peer(2), "big.bin"), 1, "installing needed a new download");
    cluster.peer(2).wait_for_line("recovered", CONVERGE);
    drop(guard);
}

#[test]
fn paths_whose_only_holder_left_wait_quietly_and_arrive_when_it_returns() {
    const FILES: usize = 10_000;
    // Peers log at info, as users run them (10,000 debug lines would be
    // the CPU this test measures); the tracker's debug lines show what it
    // accepted.
    let log = "info,dartsync_tracker=debug".to_owned();
    let mut cluster = Cluster::start(Options { peers: 0, log, ..Options::default() });
    // The only holder: a peer that indexes its files, announces them and
    // vanishes before anyone fetched them (a laptop closing its lid).
    let holder = cluster.folder(0);
    for i in 0..FILES {
        write(&holder, &format!("d{:02}/f{i:05}.txt", i % 50), format!("file {i}\n").as_bytes());
    }
    cluster.start_peer(0);
    // Every file (and folder) announced and accepted before the holder goes.
    let tracker = cluster.tracker.as_ref().unwrap();
    wait_until(Duration::from_secs(180), "the tracker to accept every file", || {
        tracker.lines().iter().filter(|l| l.contains("accepted d")).count() >= FILES + 50
    });
    cluster.kill_peer(0);
    // Its connection dies with it: the tracker drops it as a holder.
    cluster.tracker.as_ref().unwrap().wait_for_line(" left (", CONVERGE);

    for i in 1..4 {
        fs::create_dir_all(cluster.folder(i)).unwrap();
        cluster.start_peer(i);
    }
    for i in 1..4 {
        cluster.wait_registered(i, 1);
    }
    let procs = [cluster.peer(1), cluster.peer(2), cluster.peer(3)];
    let cpu = cpu_over_window(&procs);
    for (n, proc) in procs.iter().enumerate() {
        let said = user_lines(proc, "/f0");
        assert!(said.len() <= 10, "peer{} logged {} lines about the files: {:#?}", n + 1, said.len(), &said[..10]);
        assert!(cpu[n] < MAX_CPU, "peer{} used {:.1}% of a core waiting", n + 1, cpu[n] * 100.0);
    }

    // The holder returns: everything arrives.
    cluster.start_peer(0);
    let expected = snapshot(&holder);
    assert!(expected.len() > FILES, "{} entries", expected.len());
    // Counted, not hashed: reading 10,000 files at every poll would starve
    // the peers being waited for.
    let deadline = Instant::now() + Duration::from_secs(400);
    for i in 1..4 {
        while entries(&cluster.folder(i)) < expected.len() {
            assert!(
                Instant::now() < deadline,
                "peer{i} has {} of {} entries",
                entries(&cluster.folder(i)),
                expected.len()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    cluster.wait_tree(&expected, CONVERGE);
}

/// A small tmpfs mounted for the life of the guard (root only).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_file_larger_than_the_free_space_waits_and_smaller_ones_still_sync() {
    let required = std::env::var_os("DARTSYNC_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
    let mut cluster = Cluster::start(Options { peers: 1, ..Options::default() });
    // Peer 1's folder is a 32 MiB file system.
    let small = cluster.folder(1);
    let disk = match SmallDisk::mount(&small, "32m") {
        Ok(disk) => disk,
        Err(why) => {
            assert!(!required, "DARTSYNC_REQUIRE_ROOT_TESTS=1 but cannot mount a small file system: {why}");
            eprintln!("skipping the disk-full test: {why} (needs root)");
            return;
        }
    };
    cluster.start_peer(1);
    cluster.wait_registered(1, 1);
    let big = random_bytes(48 << 20, 5);
    write(&cluster.folder(0), "huge.bin", &big);
    let parked = cluster.peer(1).wait_for_line("disk full", CONVERGE);
    assert!(parked.contains("huge.bin"), "{parked}");
    // Smaller files keep syncing.
    write(&cluster.folder(0), "small.txt", b"fits\n");
    wait_until(CONVERGE, "small.txt on the small disk", || {
        fs::read(small.join("small.txt")).is_ok_and(|b| b == b"fits\n")
    });
    assert!(!small.join("huge.bin").exists(), "a partial file is visible");
    assert_eq!(downloads_of(cluster.peer(1), "huge.bin"), 0, "a download was started without room for it");
    let tmp_used: u64 = fs::read_dir(small.join(".dartsync/tmp"))
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    assert!(tmp_used < 1 << 20, "{tmp_used} bytes of temp files for a download that cannot fit");
    cluster.kill_peer(1);
    drop(disk);
}
