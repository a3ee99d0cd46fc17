//! Error messages a user can act on: the real binary, the exact wording.
//! Each names the thing (path, address, pid) and says what to do, and
//! prints every cause once.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{Proc, run, spawn_tracker};

/// The `error: ...` line of a failed run's stderr (logs may come first).
fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

/// A new cluster key at `dir/cluster.key`.
fn make_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("cluster.key");
    let (status, _, err) = run(&["init", "--key-file", key.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    key
}

/// Runs a peer on `folder` against a tracker nobody listens on (the
/// failures under test come before it matters).
fn run_peer(folder: &Path, key: &Path, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut args =
        vec!["--peer", folder.to_str().unwrap(), "--tracker-addr", "127.0.0.1:1", "--key-file", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (status, _, err) = run(&args, &[]);
    (status, err)
}

#[test]
fn an_io_error_prints_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let folder = file.join("sub");
    let (status, err) = run_peer(&folder, &key, &[]);
    assert!(!status.success());
    let cause = std::io::Error::from_raw_os_error(20).to_string();
    assert_eq!(error_line(&err), format!("error: peer failed: {}: {cause}", folder.display()));
}

#[test]
fn a_file_given_as_the_folder_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"x").unwrap();
    // A socket is no folder either.
    let socket = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for path in [&file, &socket] {
        let (status, err) = run_peer(path, &key, &[]);
        assert!(!status.success());
        assert_eq!(
            error_line(&err),
            format!(
                "error: peer failed: cannot sync {}: it is a file, not a folder; pass a folder to --peer",
                path.display()
            )
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["cluster.key", "notes.txt", "sock"], "nothing else was created");
}

#[test]
fn a_folder_whose_parent_is_missing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let tracker = spawn_tracker(&key, &dir.path().join("data"));
    let addr = tracker.listen_addr().to_string();
    let folder = dir.path().join("a/b/folder");
    let args = ["--peer", folder.to_str().unwrap(), "--tracker-addr", &addr, "--key-file", key.to_str().unwrap()];
    let mut peer = Proc::spawn("peer", &[&args[..], &["--listen", "127.0.0.1:0"]].concat(), "info");
    peer.wait_for_line("piece server listening on", Duration::from_secs(30));
    assert!(folder.join(".dartsync").is_dir());
    peer.signal(Signal::SIGTERM);
    assert_eq!(peer.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_second_peer_on_the_same_folder_names_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let tracker = spawn_tracker(&key, &dir.path().join("data"));
    let addr = tracker.listen_addr().to_string();
    let folder = dir.path().join("folder");
    let args =
        ["--peer", folder.to_str().unwrap(), "--tracker-addr", &addr, "--key-file", key.to_str().unwrap(), "--listen"];
    let mut first = Proc::spawn("first", &[&args[..], &["127.0.0.1:0"]].concat(), "info");
    first.wait_for_line("piece server listening on", Duration::from_secs(30));

    let (status, _, err) = run(&[&args[..], &["127.0.0.1:0"]].concat(), &[]);
    assert!(!status.success());
    let canonical = folder.canonicalize().unwrap();
    assert_eq!(
        error_line(&err),
        format!(
            "error: peer failed: another dartsync (pid {}) is already syncing {}; stop it first",
            first.pid(),
            canonical.display()
        )
    );

    // The first peer is unaffected: it still holds the lock (with its
    // pid), logged no error, and stops cleanly when asked.
    let lock = std::fs::read_to_string(folder.join(".dartsync/lock")).unwrap();
    assert_eq!(lock.trim(), first.pid().to_string());
    assert!(first.lines().iter().all(|l| !l.contains("ERROR")), "{:#?}", first.lines());
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_taken_tracker_port_is_named_and_no_data_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let data = dir.path().join("data");
    let (status, _, err) = run(
        &[
            "--tracker",
            "--listen",
            &addr.to_string(),
            "--key-file",
            key.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!status.success());
    assert_eq!(
        error_line(&err),
        format!(
            "error: tracker failed: cannot listen on {addr}: the address is already in use — is another tracker \
             running? Stop it, or pick another port with --listen"
        )
    );
    assert!(!data.exists(), "the tracker created {} before binding", data.display());
}

#[test]
fn a_taken_piece_server_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = make_key(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (status, err) = run_peer(&dir.path().join("folder"), &key, &["--listen", &addr.to_string()]);
    assert!(!status.success());
    assert_eq!(
        error_line(&err),
        format!(
            "error: peer failed: cannot listen for peers on {addr}: the address is already in use — pick another \
             port with --listen, or leave --listen out for a free one"
        )
    );
}

#[test]
fn a_directory_given_as_the_key_file_is_named_for_peer_tracker_and_init() {
    let dir = tempfile::tempdir().unwrap();
    let keydir = dir.path().join("keys");
    std::fs::create_dir(&keydir).unwrap();
    let k = keydir.to_str().unwrap();
    let message = format!("the key file {k} is a directory; pass the key file itself with --key-file");

    let (status, err) = run_peer(&dir.path().join("folder"), &keydir, &[]);
    assert!(!status.success());
    assert_eq!(error_line(&err), format!("error: cannot load the cluster key: {message}"));

    let data = dir.path().join("data");
    let (status, _, err) =
        run(&["--tracker", "--listen", "127.0.0.1:0", "--key-file", k, "--data", data.to_str().unwrap()], &[]);
    assert!(!status.success());
    assert_eq!(error_line(&err), format!("error: cannot load the cluster key: {message}"));

    for args in [&["init", "--key-file", k][..], &["init", "--key-file", k, "--force"]] {
        let (status, _, err) = run(args, &[]);
        assert!(!status.success());
        assert_eq!(error_line(&err), format!("error: {message}"));
    }
    assert!(keydir.is_dir(), "init left the directory alone");
}
