//! `dartsync demo --script`: a narrated scenario against the demo's real
//! processes. Each step changes one or two folders the way a user would,
//! then waits until every online device holds the same tree (and the
//! step's own check holds, and every peer says it is up to date), and
//! prints how long that took and how many bytes the peers fetched. A step
//! that does not converge within its deadline fails the run (exit 1).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use dartsync_shared::status::FolderState;

use super::tree::{Entry, Reader, Tree, first_difference};
use super::{DemoCluster, StopFlag};
use crate::status_view::size;

/// How long a step may take to reach every device.
const STEP_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between two looks at the folders.
const POLL: Duration = Duration::from_millis(100);
/// Size of the big file.
const BIG: usize = 32 << 20;

/// What a step checks of the converged tree, beyond "all the same".
type Check = Box<dyn Fn(&Tree) -> Result<(), String>>;

struct Runner<'a> {
    demo: &'a mut DemoCluster,
    stop: &'a StopFlag,
    reader: Reader,
    step: usize,
    steps: usize,
}

/// Runs the scenario; exit code 0 when every step converged.
pub fn run(demo: &mut DemoCluster, stop: &StopFlag) -> anyhow::Result<ExitCode> {
    let n = demo.peers.len();
    let (a, b, c, last) = (0, 1 % n, 2 % n, n - 1);
    let name = |i: usize| demo.peers[i].name.clone();
    let (na, nb, nc, nl) = (name(a), name(b), name(c), name(last));
    println!(
        "DartSync demo script: a tracker at {} and {n} peers ({}), folders in {}",
        demo.tracker_addr,
        demo.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        demo.dir.display()
    );
    let mut r = Runner { demo, stop, reader: Reader::default(), step: 0, steps: 10 };
    let all: Vec<usize> = (0..n).collect();
    let without_last: Vec<usize> = (0..n).filter(|&i| i != last).collect();

    r.step(&format!("a new file: {na} writes hello.txt and notes.txt"), &all, has(&["hello.txt", "notes.txt"]), |d| {
        write(d, a, "hello.txt", b"hello from the demo\n")?;
        write(d, a, "notes.txt", b"shared notes\n")
    })?;
    r.step(
        &format!("a folder tree: {nb} creates projects/ with 3 folders of 10 files"),
        &all,
        has(&["projects/src/file-9.txt"]),
        |d| {
            for dir in ["src", "docs", "assets"] {
                for f in 0..10 {
                    write(d, b, &format!("projects/{dir}/file-{f}.txt"), format!("{dir} {f}\n").as_bytes())?;
                }
            }
            Ok(())
        },
    )?;
    r.step(
        &format!("a big file: {nc} writes media/video.bin ({})", size(BIG as u64)),
        &all,
        has(&["media/video.bin"]),
        |d| write(d, c, "media/video.bin", &pseudo_random(BIG)),
    )?;
    r.step(
        &format!("an edit: {na} changes one byte in the middle of video.bin (only that piece moves)"),
        &all,
        no_check(),
        |d| {
            let path = d.folder(a).join("media/video.bin");
            let mut bytes = std::fs::read(&path)?;
            bytes[BIG / 2] ^= 0xFF;
            std::fs::write(&path, bytes).map_err(Into::into)
        },
    )?;
    r.step(
        &format!("a rename: {nb} moves video.bin to archive/2026/ (nothing re-transferred)"),
        &all,
        has(&["archive/2026/video.bin"]),
        |d| {
            let folder = d.folder(b);
            std::fs::create_dir_all(folder.join("archive/2026"))?;
            std::fs::rename(folder.join("media/video.bin"), folder.join("archive/2026/video.bin")).map_err(Into::into)
        },
    )?;
    r.step(&format!("a delete: {nc} deletes hello.txt"), &all, lacks("hello.txt"), |d| {
        std::fs::remove_file(d.folder(c).join("hello.txt")).map_err(Into::into)
    })?;
    // A demo folder reused from an earlier run may hold copies already.
    let copies = |tree: &Tree| tree.keys().filter(|p| p.starts_with("notes.sync-conflict-")).count();
    let before = copies(&r.reader.read(&r.demo.folder(a))?);
    let conflict_check: Check = Box::new(move |tree: &Tree| {
        let now = copies(tree);
        if now == before + 1 && tree.contains_key("notes.txt") {
            Ok(())
        } else {
            Err(format!("{} new conflict copies of notes.txt", now.saturating_sub(before)))
        }
    });
    let stop_flag = r.stop.clone();
    r.step(
        &format!("a conflict: with the tracker stopped, {na} and {nb} both edit notes.txt (both versions are kept)"),
        &all,
        conflict_check,
        |d| {
            d.stop_tracker();
            write(d, a, "notes.txt", format!("{na}'s version\n").as_bytes())?;
            // The other edit is the later one: it keeps the name.
            let earlier = SystemTime::now() - Duration::from_secs(60);
            std::fs::File::options().write(true).open(d.folder(a).join("notes.txt"))?.set_modified(earlier)?;
            write(d, b, "notes.txt", format!("{nb}'s version\n").as_bytes())?;
            // Both peers must have noticed their edit before the tracker is back.
            wait_for(&stop_flag, "both edits to be noticed", || {
                [a, b].iter().all(|&i| d.status(i).is_some_and(|s| s.unannounced >= 1))
            })?;
            d.start_tracker(&stop_flag)
        },
    )?;
    r.step(&format!("a device goes offline: {nl} stops"), &without_last, no_check(), |d| {
        d.stop_peer(last);
        Ok(())
    })?;
    let gone = "projects/docs/file-0.txt";
    r.step(
        &format!("changes while {nl} is away: {na} adds away.txt, deletes {gone}"),
        &without_last,
        lacks(gone),
        |d| {
            write(d, a, "away.txt", b"written while a device was offline\n")?;
            std::fs::remove_file(d.folder(a).join(gone)).map_err(Into::into)
        },
    )?;
    r.step(&format!("{nl} comes back and catches up"), &all, has(&["away.txt"]), |d| d.start_peer(last, &stop_flag))?;
    println!("\nEvery step reached every device: the demo cluster works on this machine.");
    Ok(ExitCode::SUCCESS)
}

impl Runner<'_> {
    /// Runs one step: `act`, then waits until the `online` peers converge.
    fn step(
        &mut self,
        title: &str,
        online: &[usize],
        check: Check,
        act: impl FnOnce(&mut DemoCluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.step += 1;
        println!("\n[{}/{}] {title}", self.step, self.steps);
        let before: Vec<u64> = online.iter().map(|&i| self.received(i)).collect();
        let started = Instant::now();
        act(self.demo).with_context(|| format!("step {} failed", self.step))?;
        self.converge(online, &check)?;
        let took = started.elapsed();
        let moved: u64 = online.iter().zip(&before).map(|(&i, b)| self.received(i).saturating_sub(*b)).sum();
        println!(
            "      reached all {} online devices in {:.1} s; {} fetched between peers",
            online.len(),
            took.as_secs_f64(),
            size(moved)
        );
        Ok(())
    }

    fn received(&self, i: usize) -> u64 {
        self.demo.status(i).map_or(0, |s| s.received_bytes)
    }

    /// Waits until every `online` peer has the same tree, `check` holds
    /// and every one says it is up to date.
    fn converge(&mut self, online: &[usize], check: &Check) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let problem = self.problem(online, check);
            let Some(problem) = problem else { return Ok(()) };
            if self.stop.is_set() {
                bail!("stopped");
            }
            if Instant::now() > deadline {
                bail!("step {} did not converge within {STEP_DEADLINE:?}: {problem}", self.step);
            }
            std::thread::sleep(POLL);
        }
    }

    /// What still differs, if anything.
    fn problem(&mut self, online: &[usize], check: &Check) -> Option<String> {
        let mut first: Option<(String, Tree)> = None;
        for &i in online {
            let name = self.demo.peers[i].name.clone();
            let tree = match self.reader.read(&self.demo.folder(i)) {
                Ok(tree) => tree,
                Err(e) => return Some(format!("cannot read {name}'s folder: {e}")),
            };
            match &first {
                None => {
                    if let Err(why) = check(&tree) {
                        return Some(format!("{name}: {why}"));
                    }
                    first = Some((name.clone(), tree));
                }
                Some((first_name, want)) => {
                    if let Some(diff) = first_difference(want, &tree) {
                        return Some(format!("{name} {diff} (compared with {first_name})"));
                    }
                }
            }
            match self.demo.status(i) {
                Some(s) if s.state == FolderState::UpToDate => {}
                Some(s) => return Some(format!("{name} is {}", s.state.label())),
                None => return Some(format!("{name} does not answer")),
            }
        }
        None
    }
}

/// No check beyond "every device has the same tree".
fn no_check() -> Check {
    Box::new(|_| Ok(()))
}

/// The tree has every one of `paths`.
fn has(paths: &[&str]) -> Check {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    Box::new(move |tree| match paths.iter().find(|p| !matches!(tree.get(*p), Some(Entry::File { .. }))) {
        Some(p) => Err(format!("no {p} yet")),
        None => Ok(()),
    })
}

/// The tree does not have `path`.
fn lacks(path: &str) -> Check {
    let path = path.to_owned();
    Box::new(move |tree| if tree.contains_key(&path) { Err(format!("{path} is still there")) } else { Ok(()) })
}

/// Writes `bytes` at `rel` in peer `i`'s folder (parents created).
fn write(demo: &DemoCluster, i: usize, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = demo.folder(i).join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `len` bytes that do not compress or repeat (blake3 in XOF mode).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut bytes);
    bytes
}

/// Polls `cond` until it holds (at most [`STEP_DEADLINE`]).
fn wait_for(stop: &StopFlag, what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !cond() {
        if stop.is_set() {
            bail!("stopped");
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
