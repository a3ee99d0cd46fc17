//! The command line: help texts, `init`, clean start and stop.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{run, spawn_tracker};

#[test]
fn help_explains_every_flag() {
    let (status, out, _) = run(&["--help"], &[]);
    assert!(status.success());
    for flag in [
        "--tracker",
        "--peer",
        "--listen",
        "--tracker-addr",
        "--data",
        "--key-file",
        "--config",
        "--verbose",
        "--quiet",
        "init",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
    let (status, out, _) = run(&["init", "--help"], &[]);
    assert!(status.success());
    assert!(out.contains("--force") && out.contains("--key-file"), "{out}");
}

#[test]
fn init_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let key_s = key.to_str().unwrap();
    let (status, out, _) = run(&["init", "--key-file", key_s], &[]);
    assert!(status.success());
    assert!(out.contains(key_s), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    let (status, _, err) = run(&["init", "--key-file", key_s], &[]);
    assert!(!status.success());
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let (status, _, _) = run(&["init", "--key-file", key_s, "--force"], &[]);
    assert!(status.success());
    assert_ne!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn tracker_starts_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let data = dir.path().join("data");
    let (status, _, _) = run(&["init", "--key-file", key.to_str().unwrap()], &[]);
    assert!(status.success());
    let mut tracker = spawn_tracker(&key, &data);
    let addr = tracker.listen_addr();
    assert!(addr.ip().is_loopback());
    tracker.signal(Signal::SIGTERM);
    assert_eq!(tracker.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn peer_without_key_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("missing.key");
    let folder = dir.path().join("folder");
    let (status, _, err) = run(
        &["--peer", folder.to_str().unwrap(), "--tracker-addr", "127.0.0.1:1", "--key-file", key.to_str().unwrap()],
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("no cluster key") && err.contains("missing.key"), "{err}");
}

#[test]
fn tracker_without_key_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("new.key");
    let mut tracker = spawn_tracker(&key, &dir.path().join("d"));
    tracker.listen_addr();
    assert!(key.exists());
    tracker.wait_for_line("copy it to every peer", Duration::from_secs(5));
    tracker.signal(Signal::SIGINT);
    assert_eq!(tracker.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn nothing_to_do_is_an_error() {
    let (status, _, err) = run(&[], &[]);
    assert!(!status.success());
    assert!(err.contains("--tracker"), "{err}");
}
