//! End-to-end: the synced folder is a jail. A tracker, three real peers and
//! a hostile client ([`crate::hostile_client`]) that announces records no
//! honest peer would: links chained to climb out of the folder or into
//! `.dartsync`, `.DARTSYNC`-like paths, setuid modes, counters of
//! `u64::MAX`; plus a peer whose folder holds a link out of it, and a
//! case-only name collision (on a case-insensitive file system when this
//! machine can mount one).
//!
//! After every attack each test checks, whatever the mechanism that stopped
//! it (the tracker refusing the record, or a peer parking the path):
//! (a) nothing outside the peers' folders changed: the cluster's temp
//!     directory (the folders' parent, with an `outside/` sibling holding
//!     sentinel files) is snapshotted recursively before and after, names,
//!     kinds, sizes, mtimes, modes and link targets;
//! (b) no name the attacker chose appears under any `.dartsync`, and every
//!     `.dartsync/identity` is byte for byte unchanged;
//! (c) every peer process is still running and still syncs a normal file
//!     created afterwards;
//! (d) the refusal is logged once (per peer and path, or once by the
//!     tracker), counted after later syncs spanning several retry periods of
//!     the peer's engine, so a retry storm would show.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{CONVERGE, Cluster, Options, snapshot, write};
use crate::hostile_client::{Hostile, Outcome};
use crate::util::{Proc, wait_until};

/// How long a single step of a test may take.
const STEP: Duration = Duration::from_secs(45);

/// The peer engine's first retry of a transient failure comes after about
/// 2 s (`peer/src/sync/waiting.rs`, `RETRY_MIN`); refusals are counted only
/// after later syncs spanning at least this long, so a path retried in a
/// loop would have logged several times.
const RETRY_WINDOW: Duration = Duration::from_secs(5);

const PEERS: usize = 3;

/// Polls `cond` until it holds (true) or `timeout` passes (false), for
/// waits that explain their own failure.
fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One entry of a snapshot of the folders' surroundings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outer {
    /// A peer's folder or the tracker's data directory: only its presence
    /// and kind (folder, or link to one) are compared; its contents are
    /// the processes' own.
    Managed { link: bool },
    /// Anything else: kind, size, mtime, permission and special bits, link
    /// target.
    Entry { kind: &'static str, size: u64, mtime: (i64, i64), mode: u32, target: Option<PathBuf> },
}

/// Everything under `root` except the contents of `managed` directories.
fn outer_snapshot(root: &Path, managed: &[PathBuf]) -> BTreeMap<String, Outer> {
    fn walk(root: &Path, dir: &Path, managed: &[PathBuf], out: &mut BTreeMap<String, Outer>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if managed.contains(&path) {
                out.insert(rel, Outer::Managed { link: meta.file_type().is_symlink() });
                continue;
            }
            let ft = meta.file_type();
            let kind = if ft.is_symlink() {
                "link"
            } else if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else {
                "special"
            };
            let target = ft.is_symlink().then(|| fs::read_link(&path).unwrap());
            // A folder's size and mtime change when an entry appears in it;
            // the entry itself then shows up too, so keep them.
            out.insert(
                rel,
                Outer::Entry {
                    kind,
                    size: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    mode: meta.mode(),
                    target,
                },
            );
            if ft.is_dir() {
                walk(root, &path, managed, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, managed, &mut out);
    out
}

/// Every path under `root` (not following links) whose file name contains
/// one of `needles`.
fn find_names(root: &Path, needles: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if needles.iter().any(|n| name.contains(n)) {
                found.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// True while the process exists and is not a zombie.
fn alive(proc: &Proc) -> bool {
    match fs::read_to_string(format!("/proc/{}/stat", proc.pid())) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// WARN lines of `proc` that mention `needle`.
fn warn_lines(proc: &Proc, needle: &str) -> Vec<String> {
    proc.lines().into_iter().filter(|l| l.contains(" WARN ") && l.contains(needle)).collect()
}

/// True when a peer's log line names `path` as its `path` field (plain or
/// quoted), so `c/ESCAPED.txt` does not also match `xc/ESCAPED.txt`.
fn names_path(line: &str, path: &str) -> bool {
    line.contains(&format!("path={path}")) || line.contains(&format!("path=\"{path}\""))
}

/// A cluster of a tracker and three peers, with sentinels beside the
/// folders and snapshots of what must not change.
struct Scene {
    cluster: Cluster,
    outside: PathBuf,
    before: BTreeMap<String, Outer>,
    identities: Vec<Vec<u8>>,
    syncs: u32,
}

impl Scene {
    fn start() -> Scene {
        Scene::with(Options { peers: PEERS, ..Options::default() }, |_| {})
    }

    /// Starts the cluster, lets `prepare` touch it (more peers), then
    /// places the sentinels and takes the "before" snapshots.
    fn with(opts: Options, prepare: impl FnOnce(&mut Cluster)) -> Scene {
        let mut cluster = Cluster::start(opts);
        prepare(&mut cluster);
        for i in 0..PEERS {
            cluster.wait_registered(i, 1);
        }
        let outside = cluster.dir.path().join("outside");
        write(&outside, "sentinel.txt", b"must never change\n");
        write(&outside, "nested/deep.txt", b"nor this\n");
        let identities = (0..PEERS)
            .map(|i| fs::read(cluster.folder(i).join(".dartsync/identity")).expect("peer identity file"))
            .collect();
        let mut scene = Scene { cluster, outside, before: BTreeMap::new(), identities, syncs: 0 };
        scene.before = scene.outer();
        scene
    }

    fn managed(&self) -> Vec<PathBuf> {
        let mut managed: Vec<PathBuf> = (0..PEERS).map(|i| self.cluster.folder(i)).collect();
        managed.push(self.cluster.dir.path().join("tracker-data"));
        managed
    }

    fn outer(&self) -> BTreeMap<String, Outer> {
        outer_snapshot(self.cluster.dir.path(), &self.managed())
    }

    fn folder(&self, i: usize) -> PathBuf {
        self.cluster.folder(i)
    }

    fn peer(&self, i: usize) -> &Proc {
        self.cluster.peer(i)
    }

    fn tracker(&self) -> &Proc {
        self.cluster.tracker.as_ref().expect("tracker running")
    }

    fn hostile(&self) -> Hostile {
        Hostile::start(&self.cluster.key, self.cluster.tracker_addr)
    }

    /// (a) and (b): nothing around the folders changed, no attacker name
    /// anywhere but inside the synced part of a folder, identities intact.
    fn assert_contained(&self, names: &[&str], step: &str) {
        let now = self.outer();
        if now != self.before {
            let mut diff = Vec::new();
            for (k, v) in &now {
                match self.before.get(k) {
                    None => diff.push(format!("new {k}: {v:?}")),
                    Some(b) if b != v => diff.push(format!("changed {k}: {b:?} -> {v:?}")),
                    _ => {}
                }
            }
            diff.extend(self.before.keys().filter(|k| !now.contains_key(*k)).map(|k| format!("gone {k}")));
            panic!("{step}: the folders' surroundings changed: {diff:#?}");
        }
        // Outside the folders (the snapshot covers names too, this also
        // looks inside the tracker's data directory).
        let tracker_data = self.cluster.dir.path().join("tracker-data");
        let stray = find_names(&tracker_data, names);
        assert!(stray.is_empty(), "{step}: attacker names in the tracker's data: {stray:?}");
        for i in 0..PEERS {
            let state = self.folder(i).join(".dartsync");
            let found = find_names(&state, names);
            if !found.is_empty() {
                panic!("{step}: attacker names under peer{i}'s .dartsync: {found:?}");
            }
            let identity = fs::read(state.join("identity")).expect("identity still there");
            assert_eq!(identity, self.identities[i], "{step}: peer{i}'s .dartsync/identity changed");
        }
    }

    /// (c): every peer is running, and a file written now on peer 0 reaches
    /// peers 1 and 2 byte for byte.
    fn assert_still_syncs(&mut self, step: &str) {
        for i in 0..PEERS {
            if !alive(self.peer(i)) {
                panic!("{step}: peer{i} is not running any more");
            }
        }
        assert!(alive(self.tracker()), "{step}: the tracker is not running any more");
        self.syncs += 1;
        let name = format!("after-{}.txt", self.syncs);
        let body = format!("written after {step} ({})\n", self.syncs).into_bytes();
        write(&self.folder(0), &name, &body);
        let ok = poll(STEP, || (1..PEERS).all(|i| fs::read(self.folder(i).join(&name)).is_ok_and(|b| b == body)));
        if !ok {
            panic!("{step}: {name} written on peer0 did not reach peers 1 and 2 within {STEP:?}");
        }
    }

    /// Normal syncs, one after another, until `window` has passed since
    /// `since`: the cluster keeps working while any retry loop would run.
    fn keep_syncing_until(&mut self, since: Instant, window: Duration, step: &str) {
        loop {
            self.assert_still_syncs(step);
            if since.elapsed() >= window {
                return;
            }
        }
    }

    /// Waits until `i` logs a WARN line for `path` containing `what`.
    fn wait_peer_warn(&self, i: usize, path: &str, what: &str) -> Instant {
        let ok = poll(STEP, || warn_lines(self.peer(i), what).iter().any(|l| names_path(l, path)));
        if !ok {
            panic!("peer{i} never logged {what:?} for {path}");
        }
        Instant::now()
    }

    /// Peer `i`'s WARN lines about `path`.
    fn peer_warns(&self, i: usize, path: &str) -> Vec<String> {
        warn_lines(self.peer(i), "").into_iter().filter(|l| names_path(l, path)).collect()
    }

    /// The tracker's lines about dropping `hostile`.
    fn drops_of(&self, hostile: &Hostile) -> Vec<String> {
        warn_lines(self.tracker(), &format!("dropping peer {}", hostile.peer_id().fmt_short()))
    }
}

/// Announces `record` alone and returns what the tracker did.
fn announce_one(hostile: &mut Hostile, record: dartsync_shared::FileRecord) -> Outcome {
    hostile.announce(vec![record])
}

#[test]
fn link_chain_out_of_the_folder_writes_nothing_outside() {
    let mut scene = Scene::start();
    let mut hostile = scene.hostile();
    let body = b"escaped through a chain of links\n".to_vec();
    // a/b -> .. is the folder itself; c -> a/b/.. is lexically `a`, but on
    // disk the folder's parent. Each record alone, so one refusal cannot
    // hide the others.
    let records = [
        hostile.dir("a"),
        hostile.symlink("a/b", ".."),
        hostile.symlink("c", "a/b/.."),
        hostile.file("c/ESCAPED.txt", &body),
    ];
    let mut outcomes = BTreeMap::new();
    for record in records {
        let path = record.path.to_string();
        outcomes.insert(path, announce_one(&mut hostile, record));
    }
    eprintln!("link chain outcomes: {outcomes:#?}");
    assert_eq!(outcomes["a"], Outcome::Accepted, "a plain folder must be accepted");
    let c_accepted = outcomes["c"] == Outcome::Accepted;
    let file_accepted = outcomes["c/ESCAPED.txt"] == Outcome::Accepted;

    // Every peer ends with `c` as the tracker has it: a link (then the file
    // must be parked) or, if the link was refused, a real folder holding
    // the file.
    let mut parked_at = None;
    for i in 0..PEERS {
        let c = scene.folder(i).join("c");
        if c_accepted {
            wait_until(STEP, &format!("peer{i} to create the link c"), || {
                fs::symlink_metadata(&c).is_ok_and(|m| m.file_type().is_symlink())
            });
            if file_accepted {
                parked_at = Some(scene.wait_peer_warn(i, "c/ESCAPED.txt", "parked"));
            }
        } else if file_accepted {
            wait_until(STEP, &format!("peer{i} to get c/ESCAPED.txt in a real folder c"), || {
                fs::symlink_metadata(&c).is_ok_and(|m| m.is_dir())
                    && fs::read(c.join("ESCAPED.txt")).is_ok_and(|b| b == body)
            });
        }
    }
    scene.assert_contained(&["ESCAPED"], "after the link chain");
    scene.keep_syncing_until(parked_at.unwrap_or_else(Instant::now), RETRY_WINDOW, "the link chain");
    scene.assert_contained(&["ESCAPED"], "after the link chain and later syncs");

    // Nothing named ESCAPED.txt anywhere outside a real folder `c`.
    for i in 0..PEERS {
        let found = find_names(&scene.folder(i), &["ESCAPED"]);
        for path in &found {
            let parent = path.parent().unwrap();
            assert!(
                parent == scene.folder(i).join("c") && fs::symlink_metadata(parent).unwrap().is_dir(),
                "peer{i}: ESCAPED.txt at {path:?}"
            );
        }
        // (d) once per peer, whatever the mechanism.
        let warns = scene.peer_warns(i, "c/ESCAPED.txt");
        assert!(warns.len() <= 1, "peer{i} logged c/ESCAPED.txt {} times: {warns:#?}", warns.len());
        if c_accepted && file_accepted {
            assert_eq!(warns.len(), 1, "peer{i} should log parking c/ESCAPED.txt once: {warns:#?}");
        }
    }
    let drops = scene.drops_of(&hostile);
    let refused = outcomes.values().filter(|o| matches!(o, Outcome::Dropped(_))).count();
    assert_eq!(drops.len(), refused, "one tracker line per refused record: {drops:#?}");
    if !c_accepted {
        assert!(drops.iter().any(|l| l.contains("record c")), "the refusal of c names it: {drops:#?}");
    }
}

#[test]
fn link_chain_into_the_state_dir_writes_nothing_there() {
    let mut scene = Scene::start();
    let mut hostile = scene.hostile();
    // x/y -> .. is the folder itself; each link below tries to reach
    // `.dartsync` through it or directly; then a file through each link.
    let plain = [hostile.dir("x"), hostile.symlink("x/y", "..")];
    let mut outcomes = BTreeMap::new();
    for record in plain {
        let path = record.path.to_string();
        outcomes.insert(path, announce_one(&mut hostile, record));
    }
    assert_eq!(outcomes["x"], Outcome::Accepted);
    assert_eq!(outcomes["x/y"], Outcome::Accepted, "x/y -> .. stays inside the folder and is valid");
    let links = [
        ("s1", "x/y/.dartsync"),
        ("s2", "x/y/.DartSync/tmp"),
        ("s3", ".dartsync"),
        ("s4", "./x/../.DARTSYNC"),
        ("s5", "x/y/.dartſync"),
    ];
    for (name, target) in links {
        let link = hostile.symlink(name, target);
        let outcome = announce_one(&mut hostile, link);
        assert!(
            matches!(&outcome, Outcome::Dropped(why) if why.contains("leaves the folder")),
            "link {name} -> {target} must be refused: {outcome:?}"
        );
        let file = hostile.file(&format!("{name}/pwned"), format!("pwned via {name}\n").as_bytes());
        outcomes.insert(format!("{name}/pwned"), announce_one(&mut hostile, file));
    }
    // And a link to the folder itself (valid), then a file whose path
    // names the state dir through it: refused while decoding.
    let s6 = hostile.symlink("s6", "x/y");
    assert_eq!(announce_one(&mut hostile, s6), Outcome::Accepted, "s6 -> x/y resolves inside the folder");
    let file = hostile.file("s6/zzzzzzzzz/pwned", b"pwned via s6\n");
    let outcome = hostile.announce_patched(vec![file], &[("s6/zzzzzzzzz/pwned", "s6/.dartsync/pwned")]);
    assert!(matches!(&outcome, Outcome::Dropped(why) if why.contains("malformed")), "{outcome:?}");
    eprintln!("state-dir chain outcomes: {outcomes:#?}");

    // The files whose link was refused land, if at all, in real folders
    // s1..s5 inside the folder; wait for those so the peers did act.
    for i in 0..PEERS {
        for (name, _) in links {
            if outcomes[&format!("{name}/pwned")] == Outcome::Accepted {
                let dir = scene.folder(i).join(name);
                wait_until(STEP, &format!("peer{i} to write {name}/pwned in a real folder"), || {
                    fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) && dir.join("pwned").is_file()
                });
            }
        }
        wait_until(STEP, &format!("peer{i} to create the link s6"), || {
            fs::symlink_metadata(scene.folder(i).join("s6")).is_ok_and(|m| m.file_type().is_symlink())
        });
    }
    let start = Instant::now();
    scene.assert_contained(&["pwned"], "after the state-dir chain");
    scene.keep_syncing_until(start, RETRY_WINDOW, "the state-dir chain");
    scene.assert_contained(&["pwned"], "after the state-dir chain and later syncs");
    for i in 0..PEERS {
        for (name, _) in links {
            let meta = fs::symlink_metadata(scene.folder(i).join(name));
            assert!(!meta.is_ok_and(|m| m.file_type().is_symlink()), "peer{i} created the refused link {name}");
        }
    }
    // (d) the tracker logged each refusal once: 5 links and one path.
    let drops = scene.drops_of(&hostile);
    assert_eq!(drops.len(), links.len() + 1, "one tracker line per refused message: {drops:#?}");
    for (name, _) in links {
        assert_eq!(drops.iter().filter(|l| l.contains(&format!("record {name}:"))).count(), 1, "{drops:#?}");
    }
    // Nothing refused reached the global table.
    hostile.ensure_connected();
    let table = poll_table(&hostile, "x/y");
    for (name, _) in links {
        // A folder `name` may be there: peers create it for `name/pwned`.
        let kind = table.get(name).map(|r| &r.kind);
        assert!(
            !matches!(kind, Some(dartsync_shared::FileKind::Symlink { .. })),
            "refused link {name} is in the global table: {kind:?}"
        );
    }
    assert!(table.keys().all(|k| !k.to_lowercase().contains(".dartsync")), "{:?}", table.keys());
}

/// The hostile client's copy of the global table once it holds `path`
/// (after a reconnect the whole table arrives again).
fn poll_table(hostile: &Hostile, path: &str) -> std::collections::HashMap<String, dartsync_shared::FileRecord> {
    let mut table = hostile.table();
    wait_until(STEP, &format!("the global table to hold {path}"), || {
        table = hostile.table();
        table.contains_key(path)
    });
    table
}

#[test]
fn state_dir_names_are_refused_by_the_tracker() {
    let mut scene = Scene::start();
    let mut hostile = scene.hostile();
    let a = hostile.dir("a");
    assert_eq!(announce_one(&mut hostile, a), Outcome::Accepted);
    // Each hostile path goes on the wire as a valid placeholder of the same
    // length (the state-dir component replaced by z's), swapped in the
    // encoded bytes.
    let cases = [
        (".DARTSYNC/x", ".DARTSYNC"),
        ("a/.DartSync/b", ".DartSync"),
        (".dartsync", ".dartsync"),
        ("q/.dARTSYNc", ".dARTSYNc"),
    ];
    for (evil, component) in cases {
        let placeholder = evil.replace(component, &"z".repeat(component.len()));
        let file = hostile.file(&placeholder, format!("pwned as {evil}\n").as_bytes());
        let outcome = hostile.announce_patched(vec![file], &[(placeholder.as_str(), evil)]);
        assert!(
            matches!(&outcome, Outcome::Dropped(why) if why.contains("malformed")),
            "{evil} must be refused while decoding: {outcome:?}"
        );
    }
    // A folder record named like the state dir, too.
    let dir = hostile.dir("zzzzzzzzz");
    let outcome = hostile.announce_patched(vec![dir], &[("zzzzzzzzz", ".DartSync")]);
    assert!(matches!(outcome, Outcome::Dropped(_)), "{outcome:?}");

    // The hostile client is still welcome afterwards, and its folder made it.
    let b = hostile.file("a/b", b"fine\n");
    assert_eq!(announce_one(&mut hostile, b), Outcome::Accepted);
    for i in 0..PEERS {
        wait_until(STEP, &format!("peer{i} to get a/b from the hostile client"), || {
            fs::read(scene.folder(i).join("a/b")).is_ok_and(|b| b == b"fine\n")
        });
    }
    let start = Instant::now();
    scene.assert_contained(&["pwned", "zzzz"], "after state-dir names");
    scene.keep_syncing_until(start, RETRY_WINDOW, "state-dir names");
    scene.assert_contained(&["pwned", "zzzz"], "after state-dir names and later syncs");
    for i in 0..PEERS {
        // Only the real `.dartsync` (no other case variant) exists, and the
        // folder `a` holds only what was accepted.
        let names: Vec<String> = fs::read_dir(scene.folder(i))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.eq_ignore_ascii_case(".dartsync"))
            .collect();
        assert_eq!(names, [".dartsync"], "peer{i}");
        let in_a: Vec<String> = fs::read_dir(scene.folder(i).join("a"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(in_a, ["b"], "peer{i}: a/ holds {in_a:?}");
        assert!(!scene.folder(i).join("q").exists(), "peer{i} created q for a refused record");
    }
    let drops = scene.drops_of(&hostile);
    assert_eq!(drops.len(), cases.len() + 1, "one tracker line per refused message: {drops:#?}");
    assert!(drops.iter().all(|l| l.contains("malformed")), "{drops:#?}");
    hostile.ensure_connected();
    let table = poll_table(&hostile, "a/b");
    assert!(table.keys().all(|k| !k.to_lowercase().contains("dartsync")), "{:?}", table.keys());
}

#[test]
fn case_only_names_are_distinct_files_on_a_case_sensitive_folder() {
    let mut scene = Scene::start();
    write(&scene.folder(0), "Readme.md", b"mixed case\n");
    write(&scene.folder(0), "README.md", b"UPPER CASE\n");
    write(&scene.folder(0), "docs/Notes.txt", b"one\n");
    write(&scene.folder(0), "DOCS/notes.txt", b"two\n");
    let expected = snapshot(&scene.folder(0));
    assert_eq!(expected.len(), 6, "the folder under test is case-sensitive: {expected:?}");
    scene.cluster.wait_tree(&expected, CONVERGE);
    for i in 0..PEERS {
        assert_eq!(fs::read(scene.folder(i).join("Readme.md")).unwrap(), b"mixed case\n", "peer{i}");
        assert_eq!(fs::read(scene.folder(i).join("README.md")).unwrap(), b"UPPER CASE\n", "peer{i}");
        let warns: Vec<String> =
            warn_lines(scene.peer(i), "").into_iter().filter(|l| l.to_lowercase().contains("readme.md")).collect();
        assert!(warns.is_empty(), "peer{i} warned about a case-only pair on a case-sensitive folder: {warns:#?}");
    }
    let start = Instant::now();
    scene.keep_syncing_until(start, Duration::ZERO, "case-only names");
    scene.assert_contained(&[], "case-only names");
}

#[test]
fn setuid_mode_is_refused_and_a_plain_executable_syncs_without_it() {
    let mut scene = Scene::start();
    let mut hostile = scene.hostile();
    let body = b"#!/bin/sh\necho hi\n".to_vec();
    let mut suid = hostile.file("suid.bin", &body);
    suid.mode = 0o4755;
    let outcome = announce_one(&mut hostile, suid);
    assert!(
        matches!(&outcome, Outcome::Dropped(why) if why.contains("mode 0o4755")),
        "setuid must be refused: {outcome:?}"
    );
    for (name, mode) in [("sgid.bin", 0o2755), ("sticky", 0o1777), ("rawmode.bin", 0o100755)] {
        let mut rec = hostile.file(name, &body);
        rec.mode = mode;
        let outcome = announce_one(&mut hostile, rec);
        assert!(matches!(&outcome, Outcome::Dropped(why) if why.contains("mode")), "{name} {mode:#o}: {outcome:?}");
    }
    let mut plain = hostile.file("suid.bin", &body);
    plain.mode = 0o755;
    assert_eq!(announce_one(&mut hostile, plain), Outcome::Accepted);
    for i in 0..PEERS {
        let path = scene.folder(i).join("suid.bin");
        wait_until(STEP, &format!("peer{i} to get suid.bin"), || fs::read(&path).is_ok_and(|b| b == body));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "peer{i}: suid.bin has mode {mode:#o}");
    }
    assert!(hostile.chunks_served() > 0, "the peers fetched suid.bin from the hostile client");
    let start = Instant::now();
    scene.keep_syncing_until(start, RETRY_WINDOW, "setuid");
    scene.assert_contained(&["sgid", "sticky", "rawmode"], "setuid");
    for i in 0..PEERS {
        for name in ["sgid.bin", "sticky", "rawmode.bin"] {
            assert!(!scene.folder(i).join(name).exists(), "peer{i} has the refused {name}");
        }
        // No file anywhere in the folder carries a special bit.
        let mut stack = vec![scene.folder(i)];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let meta = fs::symlink_metadata(entry.path()).unwrap();
                assert_eq!(meta.mode() & 0o7000, 0, "peer{i}: {:?} has mode {:#o}", entry.path(), meta.mode());
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    let drops = scene.drops_of(&hostile);
    assert_eq!(drops.len(), 4, "one tracker line per refused record: {drops:#?}");
    assert_eq!(drops.iter().filter(|l| l.contains("record suid.bin: mode 0o4755")).count(), 1, "{drops:#?}");
}

#[test]
fn counter_of_u64_max_is_refused_and_later_edits_still_propagate() {
    let mut scene = Scene::start();
    write(&scene.folder(0), "p.txt", b"first\n");
    for i in 1..PEERS {
        wait_until(STEP, &format!("peer{i} to get p.txt"), || {
            fs::read(scene.folder(i).join("p.txt")).is_ok_and(|b| b == b"first\n")
        });
    }
    let mut hostile = scene.hostile();
    let table = poll_table(&hostile, "p.txt");
    let real = table["p.txt"].clone();
    // A version that would dominate every honest one forever.
    let mut forged = hostile.file("p.txt", b"hostile\n");
    let mut entries: Vec<_> = real.version.iter().collect();
    entries.push((hostile.short(), u64::MAX));
    forged.version = dartsync_shared::VersionVector::from_entries(entries);
    let outcome = announce_one(&mut hostile, forged.clone());
    assert!(
        matches!(&outcome, Outcome::Dropped(why) if why.contains("record p.txt") && why.contains("exceeds the limit")),
        "{outcome:?}"
    );
    // Also a new path with only the forged counter.
    let mut fresh = hostile.file("q.txt", b"hostile\n");
    fresh.version = dartsync_shared::VersionVector::from_entries([(hostile.short(), u64::MAX)]);
    assert!(matches!(announce_one(&mut hostile, fresh), Outcome::Dropped(_)));

    // The real peer edits p.txt again: the others get the edit.
    write(&scene.folder(0), "p.txt", b"second\n");
    for i in 1..PEERS {
        wait_until(STEP, &format!("peer{i} to get the edit of p.txt"), || {
            fs::read(scene.folder(i).join("p.txt")).is_ok_and(|b| b == b"second\n")
        });
    }
    let start = Instant::now();
    scene.keep_syncing_until(start, RETRY_WINDOW, "u64::MAX counter");
    scene.assert_contained(&["q.txt"], "u64::MAX counter");
    for i in 0..PEERS {
        assert_eq!(fs::read(scene.folder(i).join("p.txt")).unwrap(), b"second\n", "peer{i}");
        assert!(!scene.folder(i).join("q.txt").exists(), "peer{i} has the refused q.txt");
    }
    hostile.ensure_connected();
    wait_until(STEP, "the hostile client to see the edit of p.txt", || {
        hostile.table().get("p.txt").is_some_and(|r| r.content != real.content && r.content != forged.content)
    });
    let table = hostile.table();
    let max = table.values().flat_map(|r| r.version.iter().map(|(_, c)| c)).max().unwrap();
    assert!(max <= dartsync_shared::limits::MAX_COUNTER, "a counter above the limit reached the table: {max}");
    assert!(!table.contains_key("q.txt"));
    let drops = scene.drops_of(&hostile);
    assert_eq!(drops.len(), 2, "{drops:#?}");
}

#[test]
fn local_link_out_of_the_folder_is_never_written_through() {
    let mut scene = Scene::start();
    // Peer 1 (B) holds docs -> OUTSIDE (absolute), made while it runs.
    let outside = scene.outside.clone();
    std::os::unix::fs::symlink(&outside, scene.folder(1).join("docs")).unwrap();
    scene.peer(1).wait_for_line("symlink points outside the folder", STEP);
    // `before` was taken before the link existed; the link is inside B's
    // folder, which the outer snapshot does not look into.
    let outside_before = outer_snapshot(&outside, &[]);
    let check_outside = |scene: &Scene, step: &str| {
        assert_eq!(outer_snapshot(&outside, &[]), outside_before, "{step}: OUTSIDE changed");
        assert!(!outside.join("x").exists(), "{step}: x appeared in OUTSIDE");
        scene.assert_contained(&["zzz-never"], step);
        let link = fs::read_link(scene.folder(1).join("docs")).expect("B's docs is still a link");
        assert_eq!(link, outside, "{step}: B's link changed");
    };
    let others = [0usize, 2];
    let steps: [(&str, Option<&[u8]>); 3] =
        [("create", Some(b"version one\n")), ("edit", Some(b"version two, longer\n")), ("delete", None)];
    let mut last_warn = Instant::now();
    for (n, (step, body)) in steps.iter().enumerate() {
        match body {
            Some(bytes) => write(&scene.folder(0), "docs/x", bytes),
            None => fs::remove_file(scene.folder(0).join("docs/x")).unwrap(),
        }
        for i in others {
            let path = scene.folder(i).join("docs/x");
            wait_until(STEP, &format!("peer{i} to {step} docs/x"), || match body {
                Some(bytes) => fs::read(&path).is_ok_and(|b| b == *bytes),
                None => fs::symlink_metadata(&path).is_err(),
            });
        }
        if n == 0 {
            last_warn = scene.wait_peer_warn(1, "docs/x", "parked");
        }
        check_outside(&scene, step);
        scene.assert_still_syncs(step);
        check_outside(&scene, step);
        // At most one line per version offered so far.
        let warns = scene.peer_warns(1, "docs/x");
        assert!(
            warns.len() <= n + 1,
            "{step}: B logged docs/x {} times for {} versions: {warns:#?}",
            warns.len(),
            n + 1
        );
    }
    scene.keep_syncing_until(last_warn, RETRY_WINDOW, "the out-link");
    check_outside(&scene, "after later syncs");
    // (d) B parked docs/x at most once per version it was offered (three
    // versions: create, edit, delete), at least once, and never retried.
    let warns = scene.peer_warns(1, "docs/x");
    let parked = warns.iter().filter(|l| l.contains("parked")).count();
    assert!((1..=steps.len()).contains(&parked), "B parked docs/x {parked} times: {warns:#?}");
    assert_eq!(warns.len(), parked, "B logged docs/x other than parking it: {warns:#?}");
    for i in others {
        let warns = scene.peer_warns(i, "docs/x");
        assert!(warns.is_empty(), "peer{i} warned about docs/x: {warns:#?}");
    }
    assert!(!scene.folder(1).join(".dartsync").join("x").exists());
}

// ---------------------------------------------------------------------------
// A case-insensitive folder: one peer's folder on a FAT file system.

/// A loop-mounted FAT image (kernel vfat, or exFAT through FUSE when the
/// kernel has no vfat) in a temp dir of its own, unmounted and detached on
/// drop. The mount point lives beside the image, never inside a cluster's
/// directory: the peer's folder is a symlink to it, so removing the
/// cluster's directory never meets a busy mount point.
struct FatMount {
    mountpoint: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    kind: &'static str,
    // Last: removed after the unmount.
    _dir: tempfile::TempDir,
}

fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("{cmd:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl FatMount {
    /// Mounts a fresh 64 MiB FAT image on `mountpoint` (an empty folder),
    /// or says why it cannot.
    fn mount() -> Result<FatMount, String> {
        // /proc/self belongs to the process's effective user.
        if fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
            return Err("not root (mounting a loop image needs root)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("fat.img");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let file = fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(64 << 20).map_err(|e| e.to_string())?;
        drop(file);
        let mut mount =
            FatMount { mountpoint: mountpoint.clone(), loop_dev: None, mounted: false, kind: "vfat", _dir: dir };
        // Kernel vfat first, then exFAT through FUSE on a loop device.
        let vfat = run_ok(Command::new("mkfs.vfat").arg(&image)).and_then(|_| {
            run_ok(Command::new("mount").args(["-t", "vfat", "-o", "loop,uid=0,gid=0"]).arg(&image).arg(&mountpoint))
        });
        if let Err(vfat_error) = vfat {
            let mut exfat = || -> Result<(), String> {
                run_ok(Command::new("mkfs.exfat").arg(&image))?;
                let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
                mount.loop_dev = Some(dev.clone());
                mount.kind = "exfat (FUSE)";
                run_ok(Command::new("mount.exfat-fuse").args(["-o", "uid=0,gid=0"]).arg(&dev).arg(&mountpoint))?;
                Ok(())
            };
            exfat().map_err(|exfat_error| format!("vfat: {vfat_error}; exfat: {exfat_error}"))?;
        }
        mount.mounted = true;
        let mountpoint = &mount.mountpoint;
        // Case-insensitive in fact?
        let probe = mountpoint.join("Probe");
        fs::write(&probe, b"1").map_err(|e| format!("{}: {e}", probe.display()))?;
        let insensitive = mountpoint.join("PROBE").exists();
        fs::remove_file(&probe).map_err(|e| e.to_string())?;
        if !insensitive {
            return Err(format!("the mounted {} image tells case apart", mount.kind));
        }
        Ok(mount)
    }
}

impl Drop for FatMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = run_ok(Command::new("umount").arg(&self.mountpoint))
        {
            // Busy (a process still inside): detach lazily rather than leak.
            eprintln!("umount {}: {e}; unmounting lazily", self.mountpoint.display());
            let _ = run_ok(Command::new("umount").arg("-l").arg(&self.mountpoint));
        }
        if let Some(dev) = &self.loop_dev {
            let _ = run_ok(Command::new("losetup").arg("-d").arg(dev));
        }
    }
}

#[test]
fn case_only_names_on_a_case_insensitive_folder_keep_one_and_refuse_the_other() {
    let required = std::env::var_os("DARTSYNC_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
    // Peers 0 and 1 on the normal disk; peer 2's folder on a FAT image.
    let mount = match FatMount::mount() {
        Ok(mount) => mount,
        Err(why) => {
            let msg = format!("cannot mount a case-insensitive file system here: {why}");
            assert!(!required, "DARTSYNC_REQUIRE_ROOT_TESTS=1 but {msg}");
            eprintln!("skipping the case-insensitive folder test: {msg}");
            return;
        }
    };
    eprintln!("peer2's folder is on {}", mount.kind);
    // `scene`, declared after `mount`, drops first: its processes stop
    // before the image is unmounted.
    let mut scene = Scene::with(Options { peers: 2, ..Options::default() }, |cluster| {
        std::os::unix::fs::symlink(&mount.mountpoint, cluster.folder(2)).unwrap();
        cluster.start_peer(2);
    });
    write(&scene.folder(0), "Readme.md", b"mixed case\n");
    write(&scene.folder(0), "README.md", b"UPPER CASE\n");
    // Peer 1 (case-sensitive) gets both.
    for (name, body) in [("Readme.md", &b"mixed case\n"[..]), ("README.md", &b"UPPER CASE\n"[..])] {
        wait_until(STEP, &format!("peer1 to get {name}"), || {
            fs::read(scene.folder(1).join(name)).is_ok_and(|b| b == body)
        });
    }
    // Peer 2 ends with exactly one of the two names, holding that name's
    // own bytes, and logs the refusal of the other once.
    let fat = scene.folder(2);
    let one_name = || -> Option<(String, Vec<u8>)> {
        let names: Vec<String> = fs::read_dir(&fat)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.eq_ignore_ascii_case("readme.md"))
            .collect();
        match names.as_slice() {
            [name] => Some((name.clone(), fs::read(fat.join(name)).ok()?)),
            _ => None,
        }
    };
    let refusal = |line: &String| names_path(line, "Readme.md") || names_path(line, "README.md");
    let ok = poll(STEP, || one_name().is_some() && warn_lines(scene.peer(2), "").iter().any(refusal));
    if !ok {
        panic!("peer2 did not end with one name and a logged refusal: {:?}", one_name());
    }
    let since = Instant::now();
    scene.keep_syncing_until(since, RETRY_WINDOW, "case-only names on FAT");
    let (name, bytes) = one_name().expect("still exactly one name on peer2");
    let want: &[u8] = if name == "Readme.md" { b"mixed case\n" } else { b"UPPER CASE\n" };
    assert!(name == "Readme.md" || name == "README.md", "peer2 holds {name}");
    assert_eq!(bytes, want, "peer2's {name} holds the other name's bytes");
    let warns: Vec<String> = warn_lines(scene.peer(2), "").into_iter().filter(refusal).collect();
    assert_eq!(warns.len(), 1, "peer2 should log the refusal once: {warns:#?}");
    // Nothing else broke: both names unchanged on peers 0 and 1 (peer 2
    // announced no edit or deletion of either).
    for i in 0..2 {
        assert_eq!(fs::read(scene.folder(i).join("Readme.md")).unwrap(), b"mixed case\n", "peer{i}");
        assert_eq!(fs::read(scene.folder(i).join("README.md")).unwrap(), b"UPPER CASE\n", "peer{i}");
        let conflicts = find_names(&scene.folder(i), &["sync-conflict"]);
        assert!(conflicts.is_empty(), "peer{i} got conflict copies: {conflicts:?}");
    }
    scene.assert_contained(&["zzz-never"], "case-only names on FAT");
}
