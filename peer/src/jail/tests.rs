//! Tests of the jail: every operation against symlinks (and files) at each
//! parent position, last-component links, a link chain, a swap race, modes
//! and errors; each under both resolution strategies.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rustix::fs::ResolveFlags;

use super::resolve::Strategy;
use super::*;

const STRATEGIES: [Strategy; 2] = [Strategy::Openat2, Strategy::Walk];

/// `base/` holds the jail roots and `outside/`, where nothing may change.
struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    tmp_root: PathBuf,
    hist_root: PathBuf,
    outside: PathBuf,
    jail: Jail,
    tmp: Jail,
    history: Jail,
}

impl Fixture {
    fn new(strategy: Strategy) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (root, outside) = (base.join("root"), base.join("outside"));
        let (tmp_root, hist_root) = (base.join("state/tmp"), base.join("state/versions"));
        for d in [&root, &outside, &tmp_root, &hist_root] {
            fs::create_dir_all(d).unwrap();
        }
        let open = |p: &Path| Jail::open_with(p, Some(strategy)).unwrap();
        let (jail, tmp, history) = (open(&root), open(&tmp_root), open(&hist_root));
        Fixture { _dir: dir, base, root, tmp_root, hist_root, outside, jail, tmp, history }
    }

    /// Everything outside the three jail roots.
    fn outside_snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snapshot(&self.base, &self.base, &[&self.root, &self.base.join("state")], &mut out);
        out
    }

    /// A finished download `name` in the tmp jail.
    fn temp_file(&self, name: &str, content: &[u8]) -> PathBuf {
        fs::write(self.tmp_root.join(name), content).unwrap();
        PathBuf::from(name)
    }
}

/// Kind, mode, size, mtime and content or target of every entry under
/// `dir`, links not followed, `skip` subtrees left out.
fn snapshot(base: &Path, dir: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if skip.contains(&path.as_path()) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let what = if meta.is_symlink() {
            format!("link {:?}", fs::read_link(&path).unwrap())
        } else if meta.is_dir() {
            snapshot(base, &path, skip, out);
            "dir".to_owned()
        } else {
            format!("file {:?}", fs::read(&path).unwrap())
        };
        let stamp = format!("{what} mode {:o} mtime {}.{}", meta.mode(), meta.mtime(), meta.mtime_nsec());
        out.insert(path.strip_prefix(base).unwrap().to_owned(), stamp);
    }
}

/// Fails with the first few differences only (a leak can be thousands).
fn assert_unchanged(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, what: &str) {
    let changed: Vec<_> = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).take(5).collect();
    let gone: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).take(5).collect();
    assert!(changed.is_empty() && gone.is_empty(), "{what}: changed outside: {changed:?}, removed: {gone:?}");
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// What is planted at a parent position.
#[derive(Debug, Clone, Copy)]
enum Plant {
    /// A symlink to `outside/m`, which holds whatever the rest of the path
    /// names, so following it would succeed.
    LinkOut,
    /// A symlink to a real folder inside the root: refused all the same.
    LinkIn,
    /// A regular file.
    File,
}

/// Builds `a/b/c` under `root` with `plant` instead of name number
/// `depth` (1-based), and fills `outside/m` with the rest of the path for
/// each leaf: `f` (file), `d` (empty folder), `l` (link to `f`).
fn plant(f: &Fixture, root: &Path, depth: usize, plant: Plant) {
    let names = ["a", "b", "c"];
    let mirror = f.outside.join("m");
    for rest in [&names[1..], &names[2..], &names[3..]] {
        let dir = rest.iter().fold(mirror.clone(), |d, n| d.join(n));
        fill_leaves(&dir);
    }
    fs::create_dir_all(root.join("in/b/c")).unwrap();
    fill_leaves(&root.join("in/b/c"));
    let mut dir = root.to_path_buf();
    for name in &names[..depth - 1] {
        dir = dir.join(name);
        fs::create_dir_all(&dir).unwrap();
    }
    let at = dir.join(names[depth - 1]);
    match plant {
        Plant::LinkOut => symlink(&mirror, &at).unwrap(),
        Plant::LinkIn => symlink(root.join("in"), &at).unwrap(),
        Plant::File => fs::write(&at, b"in the way").unwrap(),
    }
}

fn fill_leaves(dir: &Path) {
    fs::create_dir_all(dir.join("d")).unwrap();
    fs::write(dir.join("f"), b"precious").unwrap();
    if fs::symlink_metadata(dir.join("l")).is_err() {
        symlink("f", dir.join("l")).unwrap();
    }
}

type Op = fn(&Fixture, &Path) -> Result<(), JailError>;

/// Every operation, with the leaf it names under `a/b/c/` in the jail
/// whose path goes through the obstacle (the folder, tmp or history).
fn cases() -> Vec<(&'static str, &'static str, Op)> {
    vec![
        ("lstat", "f", |f, r| f.jail.lstat(r).map(drop)),
        ("read_link", "l", |f, r| f.jail.read_link(r).map(drop)),
        ("read_dir", "d", |f, r| f.jail.read_dir(Some(r)).map(drop)),
        ("open_read", "f", |f, r| f.jail.open_read(r).map(drop)),
        ("create_dir", "new", |f, r| f.jail.create_dir(r, 0o755)),
        ("create_dir existing", "d", |f, r| f.jail.create_dir(r, 0o700)),
        ("create_dir_all", "new", |f, r| f.jail.create_dir_all(r, 0o755)),
        ("install dest", "f", |f, r| {
            let t = f.temp_file("t", b"evil");
            f.jail.install_file(r, &f.tmp, &t, 0o644, UNIX_EPOCH).map(drop)
        }),
        ("install new dest", "new", |f, r| {
            let t = f.temp_file("t", b"evil");
            f.jail.install_file(r, &f.tmp, &t, 0o644, UNIX_EPOCH).map(drop)
        }),
        ("install temp", "f", |f, r| {
            fs::write(f.root.join("x"), b"mine").unwrap();
            f.jail.install_file(p("x"), &f.tmp, r, 0o644, UNIX_EPOCH).map(drop)
        }),
        ("link_to src", "f", |f, r| f.jail.link_to(r, &f.history, p("v"))),
        ("link_to dest", "new", |f, r| {
            fs::write(f.root.join("x"), b"mine").unwrap();
            f.jail.link_to(p("x"), &f.history, r)
        }),
        ("copy_to src", "f", |f, r| f.jail.copy_to(r, &f.history, p("v"))),
        ("copy_to dest", "new", |f, r| {
            fs::write(f.root.join("x"), b"mine").unwrap();
            f.jail.copy_to(p("x"), &f.history, r)
        }),
        ("move_to src", "f", |f, r| f.jail.move_to(r, &f.history, p("v"))),
        ("move_to dest", "new", |f, r| {
            fs::write(f.root.join("x"), b"mine").unwrap();
            f.jail.move_to(p("x"), &f.history, r)
        }),
        ("create_symlink", "new", |f, r| f.jail.create_symlink(r, p("f"))),
        ("create_symlink replace", "f", |f, r| f.jail.create_symlink(r, p("d"))),
        ("remove_file", "f", |f, r| f.jail.remove_file(r)),
        ("remove_file link", "l", |f, r| f.jail.remove_file(r)),
        ("remove_empty_dir", "d", |f, r| f.jail.remove_empty_dir(r)),
        ("set_mode", "f", |f, r| f.jail.set_mode(r, 0o777)),
        ("set_mode dir", "d", |f, r| f.jail.set_mode(r, 0o777)),
        ("set_mtime", "f", |f, r| f.jail.set_mtime(r, UNIX_EPOCH)),
        ("set_mtime link", "l", |f, r| f.jail.set_mtime(r, UNIX_EPOCH)),
    ]
}

#[test]
fn every_operation_refuses_a_link_or_file_at_every_parent_position() {
    let mut checked = 0;
    for strategy in STRATEGIES {
        for depth in 1..=3 {
            for planted in [Plant::LinkOut, Plant::LinkIn, Plant::File] {
                // One fixture for all operations: each must fail and change nothing.
                let f = Fixture::new(strategy);
                for root in [&f.root, &f.tmp_root, &f.hist_root] {
                    plant(&f, root, depth, planted);
                }
                let before = f.outside_snapshot();
                let component = PathBuf::from(["a", "b", "c"][..depth].join("/"));
                for (name, leaf, op) in cases() {
                    let rel = PathBuf::from(format!("a/b/c/{leaf}"));
                    let what = format!("{name} {strategy:?} depth {depth} {planted:?}");
                    match (planted, op(&f, &rel)) {
                        (Plant::LinkOut | Plant::LinkIn, Err(JailError::SymlinkInPath { path, component: c, .. })) => {
                            assert_eq!((&path, &c), (&rel, &component), "{what}");
                        }
                        (Plant::File, Err(JailError::NotADirectory { path, component: c, .. })) => {
                            assert_eq!((&path, &c), (&rel, &component), "{what}");
                        }
                        (_, other) => panic!("{what}: {other:?}"),
                    }
                    assert_unchanged(&before, &f.outside_snapshot(), &what);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 3 * cases().len());
}

#[test]
fn a_link_chain_out_of_the_root_is_refused() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        fs::create_dir(f.root.join("a")).unwrap();
        symlink("..", f.root.join("a/b")).unwrap();
        symlink("a/b/..", f.root.join("c")).unwrap();
        // Followed, `c` is `base/`.
        assert!(f.root.join("c/outside").is_dir());
        let before = f.outside_snapshot();
        for escaped in ["c/ESCAPED.txt", "c/outside/ESCAPED.txt", "a/b/outside/ESCAPED.txt"] {
            let t = f.temp_file("t", b"escaped");
            let err = f.jail.install_file(p(escaped), &f.tmp, &t, 0o644, UNIX_EPOCH).unwrap_err();
            assert!(matches!(err, JailError::SymlinkInPath { .. }) && err.is_permanent(), "{escaped}: {err:?}");
        }
        let err = f.jail.create_dir_all(p("c/outside/new"), 0o755).unwrap_err();
        assert!(matches!(err, JailError::SymlinkInPath { .. }), "{err:?}");
        let err = f.jail.create_symlink(p("a/b/ESCAPED"), p("x")).unwrap_err();
        assert!(matches!(&err, JailError::SymlinkInPath { component, .. } if component == p("a/b")), "{err:?}");
        assert!(matches!(f.jail.lstat(p("c/outside")), Err(JailError::SymlinkInPath { .. })));
        assert_unchanged(&before, &f.outside_snapshot(), &format!("{strategy:?}"));
        assert!(!f.base.join("ESCAPED.txt").exists());
    }
}

#[test]
fn last_component_links_are_handled_as_links() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        let target = f.outside.join("secret");
        fs::write(&target, b"secret").unwrap();
        fs::create_dir(f.outside.join("empty")).unwrap();
        symlink(&target, f.root.join("x")).unwrap();
        symlink(f.outside.join("empty"), f.root.join("dl")).unwrap();
        let before = f.outside_snapshot();
        let kind = |r: Result<(), JailError>| match r {
            Err(JailError::WrongKind { found, .. }) => found,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(f.jail.open_read(p("x")).map(drop)), Kind::Symlink);
        assert_eq!(kind(f.jail.set_mode(p("x"), 0o777)), Kind::Symlink);
        assert_eq!(kind(f.jail.copy_to(p("x"), &f.history, p("v"))), Kind::Symlink);
        assert_eq!(kind(f.jail.create_dir(p("dl"), 0o755)), Kind::Symlink);
        assert_eq!(kind(f.jail.create_dir_all(p("dl"), 0o755)), Kind::Symlink);
        assert_eq!(kind(f.jail.remove_empty_dir(p("dl"))), Kind::Symlink);
        assert_eq!(kind(f.jail.read_dir(Some(p("dl"))).map(drop)), Kind::Symlink);
        assert!(f.jail.lstat(p("x")).unwrap().unwrap().is_symlink());
        assert_eq!(f.jail.read_link(p("x")).unwrap(), target);

        // The link itself gets the mtime, is linked and moved as a link.
        f.jail.set_mtime(p("x"), UNIX_EPOCH + Duration::from_secs(7)).unwrap();
        assert_eq!(fs::symlink_metadata(f.root.join("x")).unwrap().mtime(), 7);
        f.jail.link_to(p("x"), &f.history, p("kept")).unwrap();
        assert_eq!(fs::read_link(f.hist_root.join("kept")).unwrap(), target);
        f.jail.move_to(p("dl"), &f.history, p("moved")).unwrap();
        assert!(fs::symlink_metadata(f.hist_root.join("moved")).unwrap().is_symlink());

        // A new link replaces the link, not its target.
        f.jail.create_symlink(p("x"), p("elsewhere")).unwrap();
        assert_eq!(fs::read_link(f.root.join("x")).unwrap(), p("elsewhere"));
        symlink(&target, f.root.join("y")).unwrap();
        // Installing over a link replaces the link.
        let t = f.temp_file("t", b"new");
        f.jail.install_file(p("y"), &f.tmp, &t, 0o640, UNIX_EPOCH).unwrap();
        let y = fs::symlink_metadata(f.root.join("y")).unwrap();
        assert!(y.is_file());
        assert_eq!(fs::read(f.root.join("y")).unwrap(), b"new");
        // Removing a link removes the link.
        f.jail.remove_file(p("x")).unwrap();
        assert!(fs::symlink_metadata(f.root.join("x")).is_err());
        assert_unchanged(&before, &f.outside_snapshot(), &format!("{strategy:?}"));
        assert_eq!(fs::read(&target).unwrap(), b"secret");
    }
}

#[test]
fn a_parent_swapped_for_a_link_never_lets_anything_out() {
    for strategy in STRATEGIES {
        let f = Arc::new(Fixture::new(strategy));
        fs::create_dir_all(f.root.join("d/e")).unwrap();
        // Followed, `d/e` would be there.
        fs::create_dir(f.outside.join("e")).unwrap();
        let before = f.outside_snapshot();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (f, stop) = (f.clone(), stop.clone());
            std::thread::spawn(move || swap_until(&f, &stop))
        };
        let deadline = Instant::now() + Duration::from_millis(2_500);
        let (mut done, mut refused) = (0, 0);
        for i in 0..2_000 {
            if Instant::now() > deadline {
                break;
            }
            let t = f.temp_file(&format!("t{i}"), b"payload");
            let results = [
                // `d` swapped as the last name of the parent and before it.
                f.jail.install_file(&PathBuf::from(format!("d/e/f{i}")), &f.tmp, &t, 0o644, UNIX_EPOCH).map(drop),
                f.jail.create_dir_all(&PathBuf::from(format!("d/e/sub{i}/x")), 0o755),
                f.jail.create_symlink(&PathBuf::from(format!("d/l{i}")), p("target")),
            ];
            for result in results {
                match result {
                    Ok(()) => done += 1,
                    Err(e) if refused_by_the_race(&e) => refused += 1,
                    Err(e) => panic!("{strategy:?}: {e:?}"),
                }
            }
            let _ = fs::remove_file(f.tmp_root.join(&t));
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert_unchanged(&before, &f.outside_snapshot(), &format!("{strategy:?}"));
        assert!(swaps > 10 && done > 0 && refused > 0, "{strategy:?}: {swaps} swaps {done} done {refused} refused");
    }
}

/// The errors an operation may meet while `d` is swapped: a link or
/// nothing where `d` was, or a lookup that saw the link and then the
/// folder again (transient).
fn refused_by_the_race(e: &JailError) -> bool {
    let changed = [Errno::LOOP, Errno::NOTDIR, Errno::XDEV, Errno::AGAIN].map(|e| e.raw_os_error());
    match e {
        JailError::SymlinkInPath { .. } | JailError::NotFound { .. } => true,
        JailError::Io { source, .. } => source.raw_os_error().is_some_and(|code| changed.contains(&code)),
        _ => false,
    }
}

/// Swaps `root/d` for a link to `outside` and back until `stop`; returns
/// how many swaps it made. Tolerates a `d` recreated by the jail meanwhile.
fn swap_until(f: &Fixture, stop: &AtomicBool) -> usize {
    let (d, away) = (f.root.join("d"), f.root.join("d.away"));
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) {
        if fs::rename(&d, &away).is_err() {
            continue;
        }
        let _ = symlink(&f.outside, &d);
        std::thread::yield_now();
        // The jail may have made a new `d` meanwhile: set it aside.
        let mut strays = 0;
        while fs::rename(&away, &d).is_err() {
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_symlink() => fs::remove_file(&d).unwrap(),
                Ok(_) => fs::rename(&d, f.root.join(format!("stray{swaps}-{strays}"))).unwrap(),
                Err(_) => {}
            }
            strays += 1;
        }
        swaps += 1;
    }
    swaps
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn only_permission_bits_are_applied() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        let t = f.temp_file("t", b"x");
        let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        let made = f.jail.install_file(p("f"), &f.tmp, &t, 0o4755, mtime).unwrap();
        assert_eq!(Some(made), f.jail.lstat(p("f")).unwrap(), "the installed file as its descriptor saw it");
        assert_eq!(mode_of(&f.root.join("f")), 0o755);
        assert_eq!(fs::metadata(f.root.join("f")).unwrap().modified().unwrap(), mtime);
        f.jail.set_mode(p("f"), 0o6777).unwrap();
        assert_eq!(mode_of(&f.root.join("f")), 0o777);
        f.jail.create_dir(p("d"), 0o2775).unwrap();
        assert_eq!(mode_of(&f.root.join("d")), 0o775);
        f.jail.create_dir(p("d"), 0o1750).unwrap();
        assert_eq!(mode_of(&f.root.join("d")), 0o750, "an existing folder gets the mode");
        f.jail.create_dir_all(p("e/g"), 0o1055).unwrap();
        assert_eq!(mode_of(&f.root.join("e")), 0o755);
        fs::write(f.root.join("s"), b"s").unwrap();
        fs::set_permissions(f.root.join("s"), fs::Permissions::from_mode(0o4711)).unwrap();
        f.jail.copy_to(p("s"), &f.history, p("a/s")).unwrap();
        assert_eq!(mode_of(&f.hist_root.join("a/s")), 0o711);
        assert_eq!(mode_of(&f.hist_root.join("a")), 0o700);
        let meta = f.jail.lstat(p("f")).unwrap().unwrap();
        assert_eq!((meta.kind, meta.mode, meta.size), (Kind::File, 0o777, 1));
        assert_eq!(meta.mtime_ns, 1_600_000_000_123_456_789);
    }
}

#[test]
fn set_mode_without_proc_reopens_the_same_inode() {
    let f = Fixture::new(Strategy::Walk);
    fs::write(f.root.join("f"), b"x").unwrap();
    fs::create_dir(f.root.join("d")).unwrap();
    for name in ["f", "d"] {
        let seen = statat(&f.jail.root, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        at::chmod_reopened(f.jail.root.as_fd(), OsStr::new(name), &seen, 0o4701).unwrap();
        assert_eq!(mode_of(&f.root.join(name)), 0o701);
    }
    let seen = statat(&f.jail.root, "f", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    // Renamed, not removed: its inode number cannot be reused.
    fs::rename(f.root.join("f"), f.root.join("old")).unwrap();
    fs::write(f.root.join("f"), b"another inode").unwrap();
    let swapped = at::chmod_reopened(f.jail.root.as_fd(), OsStr::new("f"), &seen, 0o777);
    assert_eq!(swapped, Err(Errno::AGAIN));
}

#[test]
fn install_refuses_a_folder_and_keeps_the_temp_file() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        fs::create_dir(f.root.join("d")).unwrap();
        let t = f.temp_file("t", b"x");
        let err = f.jail.install_file(p("d"), &f.tmp, &t, 0o644, UNIX_EPOCH).unwrap_err();
        assert!(matches!(err, JailError::WrongKind { found: Kind::Dir, .. }), "{err:?}");
        assert!(err.is_permanent());
        assert!(f.tmp_root.join("t").is_file());
        let err = f.jail.install_file(p("missing/f"), &f.tmp, &t, 0o644, UNIX_EPOCH).unwrap_err();
        assert!(matches!(err, JailError::NotFound { .. }) && !err.is_permanent(), "{err:?}");
    }
}

#[test]
fn folders_are_removed_only_when_empty() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        f.jail.create_dir_all(p("a/b"), 0o755).unwrap();
        let err = f.jail.remove_empty_dir(p("a")).unwrap_err();
        assert!(matches!(err, JailError::NotEmpty { .. }), "{err:?}");
        assert!(matches!(f.jail.remove_file(p("a")), Err(JailError::WrongKind { found: Kind::Dir, .. })));
        f.jail.remove_empty_dir(p("a/b")).unwrap();
        f.jail.remove_empty_dir(p("a")).unwrap();
        assert!(f.jail.lstat(p("a")).unwrap().is_none());
        assert!(f.jail.lstat(p("a/b/c")).unwrap().is_none(), "a missing parent is absence");
        assert!(matches!(f.jail.remove_empty_dir(p("a")), Err(JailError::NotFound { .. })));
    }
}

#[test]
fn history_moves_links_and_copies_never_replace() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        fs::write(f.root.join("f"), b"v1").unwrap();
        f.jail.link_to(p("f"), &f.history, p("x/f~1")).unwrap();
        f.jail.copy_to(p("f"), &f.history, p("x/f~2")).unwrap();
        let exists = |r: Result<(), JailError>| matches!(r, Err(JailError::AlreadyExists { .. }));
        assert!(exists(f.jail.link_to(p("f"), &f.history, p("x/f~1"))));
        assert!(exists(f.jail.copy_to(p("f"), &f.history, p("x/f~1"))));
        assert!(exists(f.jail.move_to(p("f"), &f.history, p("x/f~1"))));
        f.jail.move_to(p("f"), &f.history, p("x/f~3")).unwrap();
        assert!(f.jail.lstat(p("f")).unwrap().is_none());
        for v in ["x/f~1", "x/f~2", "x/f~3"] {
            assert_eq!(fs::read(f.hist_root.join(v)).unwrap(), b"v1");
        }
        let mut names: Vec<_> = f.history.read_dir(Some(p("x"))).unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, ["f~1", "f~2", "f~3"]);
        fs::create_dir(f.root.join("dir")).unwrap();
        let err = f.jail.link_to(p("dir"), &f.history, p("dir")).unwrap_err();
        assert!(matches!(err, JailError::WrongKind { found: Kind::Dir, .. }), "{err:?}");
        // A rename inside one jail, and a copy that could not start.
        f.history.move_to(p("x/f~3"), &f.history, p("y/z")).unwrap();
        assert_eq!(fs::read(f.hist_root.join("y/z")).unwrap(), b"v1");
        assert!(matches!(f.jail.copy_to(p("nope"), &f.history, p("n")), Err(JailError::NotFound { .. })));
        assert!(!f.hist_root.join("n").exists());
    }
}

#[test]
fn listings_stat_entries_and_hide_the_state_folder() {
    for strategy in STRATEGIES {
        let f = Fixture::new(strategy);
        fs::create_dir(f.root.join(".dartsync")).unwrap();
        fs::create_dir(f.root.join(".DartSync")).unwrap();
        fs::create_dir(f.root.join("d")).unwrap();
        fs::write(f.root.join("d/f"), b"abc").unwrap();
        symlink("f", f.root.join("d/l")).unwrap();
        let mut top: Vec<_> = f.jail.read_dir(None).unwrap().into_iter().map(|e| e.name).collect();
        top.sort();
        assert_eq!(top, ["d"]);
        let mut inner: Vec<_> = f
            .jail
            .read_dir(Some(p("d")))
            .unwrap()
            .into_iter()
            .map(|e| (e.name.into_string().unwrap(), e.meta.unwrap()))
            .collect();
        inner.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(inner[0].0, "f");
        assert!(inner[0].1.is_file() && inner[0].1.size == 3);
        assert!(inner[1].1.is_symlink());
        let mut text = String::new();
        f.jail.open_read(p("d/f")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "abc");
        let file = f.jail.lstat(p("d/f")).unwrap().unwrap();
        assert_eq!(Meta::of_file(&f.jail.open_read(p("d/f")).unwrap()).unwrap(), file);
        let dir = f.jail.lstat(p("d")).unwrap().unwrap();
        assert!(dir.is_dir() && dir.inode == fs::metadata(f.root.join("d")).unwrap().ino());
    }
}

#[test]
fn paths_are_checked_before_any_system_call() {
    let f = Fixture::new(Strategy::Openat2);
    let long = "n".repeat(256);
    for bad in ["", "/abs", "a//b", "a/", "./a", "a/./b", "a/../b", "..", ".dartsync", "a/.DartSync/b", "x\0y"] {
        let err = f.jail.lstat(p(bad)).unwrap_err();
        assert!(matches!(err, JailError::InvalidPath { .. }) && err.is_permanent(), "{bad:?}: {err:?}");
        assert!(matches!(f.jail.create_dir_all(p(bad), 0o755), Err(JailError::InvalidPath { .. })), "{bad:?}");
    }
    assert!(matches!(f.jail.create_dir(p(&long), 0o755), Err(JailError::NameTooLong { .. })));
    f.jail.create_dir(p(".dartsyncx"), 0o755).unwrap();
    f.jail.create_dir(p("a.dartsync"), 0o755).unwrap();
    assert!(matches!(
        f.jail.create_symlink(p("l"), p("")),
        Err(JailError::InvalidPath { reason: "empty symlink target", .. })
    ));
}

#[test]
fn a_file_where_a_folder_is_expected_is_not_a_directory() {
    let f = Fixture::new(Strategy::Walk);
    fs::write(f.root.join("f"), b"x").unwrap();
    let err = f.jail.lstat(p("f/x")).unwrap_err();
    assert!(matches!(&err, JailError::NotADirectory { component, .. } if component == p("f")), "{err:?}");
    assert!(err.is_permanent());
    let err = f.jail.read_dir(Some(p("f"))).unwrap_err();
    assert!(matches!(err, JailError::WrongKind { found: Kind::File, .. }), "{err:?}");
    assert!(matches!(f.jail.read_link(p("f")), Err(JailError::WrongKind { found: Kind::File, .. })));
}

#[test]
fn fsync_failures_are_errors() {
    // A real fsync failure needs a failing disk; an O_PATH fd makes fsync
    // fail (EBADF) and shows the error is returned, not swallowed.
    let f = Fixture::new(Strategy::Walk);
    let fd = openat(&f.jail.root, ".", OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let err = fsync_dir(p("x"), &fd).unwrap_err();
    assert!(matches!(err, JailError::Io { op: FSYNC_OP, .. }), "{err:?}");
    assert!(!err.is_permanent());
}

#[test]
fn the_root_is_resolved_once_at_open() {
    let f = Fixture::new(Strategy::Walk);
    symlink(&f.root, f.base.join("alias")).unwrap();
    let jail = Jail::open(&f.base.join("alias")).unwrap();
    assert_eq!(jail.root(), f.root);
    jail.create_dir(p("made"), 0o755).unwrap();
    assert!(f.root.join("made").is_dir());
    assert!(matches!(Jail::open(&f.base.join("missing")), Err(JailError::Io { .. })));
}

#[test]
fn the_probe_picks_openat2_where_the_kernel_has_it() {
    let f = Fixture::new(Strategy::Walk);
    let flags = OFlags::PATH | OFlags::DIRECTORY;
    let has_openat2 = rustix::fs::openat2(&f.jail.root, ".", flags, Mode::empty(), ResolveFlags::BENEATH).is_ok();
    let expected = if has_openat2 { Strategy::Openat2 } else { Strategy::Walk };
    assert_eq!(Jail::open(&f.root).unwrap().strategy, expected);
}
