//! Scan benchmark: how long the local state takes to index a folder of many
//! small files, and to start again over the same unchanged folder (which
//! must read no file content at all).
//!
//! Usage: `cargo run --release -p dartsync-peer --example scan_bench --
//! [--files N] [--per-dir N] [--dir PARENT] [--out results.json]`.
//! See `bench/scan/README.md`. Not part of CI.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dartsync_peer::{LocalConfig, LocalState, OpenFolder};
use dartsync_shared::ShortId;
use tokio_util::sync::CancellationToken;

struct Args {
    files: usize,
    per_dir: usize,
    dir: PathBuf,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args { files: 100_000, per_dir: 100, dir: std::env::temp_dir(), out: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--files" => args.files = value()?.parse()?,
            "--per-dir" => args.per_dir = value()?.parse::<usize>()?.max(1),
            "--dir" => args.dir = PathBuf::from(value()?),
            "--out" => args.out = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// One start of the local state over the folder.
struct Run {
    start: Duration,
    scan: Duration,
    changes: u64,
    bytes_hashed: u64,
    rescan: Duration,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn run_once(root: &Path) -> Result<Run, Box<dyn Error>> {
    let mut cfg = LocalConfig::new(ShortId(1));
    cfg.rescan = Duration::from_secs(24 * 3600);
    let shutdown = CancellationToken::new();
    let t0 = Instant::now();
    let folder = OpenFolder::open(root)?;
    let (state, mut rx) = LocalState::start(folder, cfg, shutdown.clone()).await?;
    let start = t0.elapsed();
    let drain = tokio::spawn(async move {
        let mut n = 0u64;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    state.initial_scan_done().await;
    let scan = t0.elapsed();
    let bytes_hashed = state.bytes_hashed();
    // A second full scan in the same process: the steady-state rescan cost.
    let t1 = Instant::now();
    state.rescan_now().await?;
    let rescan = t1.elapsed();
    shutdown.cancel();
    state.stopped().await;
    drop(state);
    let changes = drain.await?;
    Ok(Run { start, scan, changes, bytes_hashed, rescan })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let base = tempfile::Builder::new().prefix("dartsync-scan-bench").tempdir_in(&args.dir)?;
    let root = base.path().join("folder");
    std::fs::create_dir(&root)?;

    let t = Instant::now();
    let mut dirs = 0;
    let mut bytes = 0u64;
    for i in 0..args.files {
        let dir = root.join(format!("d{:05}", i / args.per_dir));
        if i % args.per_dir == 0 {
            std::fs::create_dir(&dir)?;
            dirs += 1;
        }
        let body = format!("file {i} of the scan benchmark\n").repeat(1 + i % 7);
        bytes += body.len() as u64;
        std::fs::write(dir.join(format!("f{i:07}.txt")), body)?;
    }
    let create = t.elapsed();
    // Let the newest files leave the quiet period (a file changed within
    // it is deferred as possibly still being written).
    tokio::time::sleep(LocalConfig::DEFAULT_QUIET + Duration::from_millis(100)).await;

    let first = run_once(&root).await?;
    let restart = run_once(&root).await?;
    let expected_changes = (args.files + dirs) as u64;

    println!("scan benchmark: {} files in {} folders, {} bytes of content", args.files, dirs, bytes);
    println!("(creating the files took {:.2} s)", create.as_secs_f64());
    println!();
    println!("| run | start (index + watcher) | startup scan done | changes | bytes hashed | full rescan |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [("initial", &first), ("restart, unchanged", &restart)] {
        println!(
            "| {name} | {:.2} s | {:.2} s | {} | {} | {:.2} s |",
            r.start.as_secs_f64(),
            r.scan.as_secs_f64(),
            r.changes,
            r.bytes_hashed,
            r.rescan.as_secs_f64()
        );
    }
    let index_bytes = std::fs::metadata(root.join(".dartsync/index.redb")).map(|m| m.len()).unwrap_or(0);
    println!("peak RSS: {} MiB; index file: {} MiB", peak_rss_kib() / 1024, index_bytes / (1024 * 1024));

    if let Some(out) = &args.out {
        let run_json = |r: &Run| {
            format!(
                "{{\"start_s\": {:.3}, \"startup_scan_s\": {:.3}, \"changes\": {}, \"bytes_hashed\": {}, \"full_rescan_s\": {:.3}}}",
                r.start.as_secs_f64(),
                r.scan.as_secs_f64(),
                r.changes,
                r.bytes_hashed,
                r.rescan.as_secs_f64()
            )
        };
        let json = format!(
            "{{\n  \"files\": {},\n  \"folders\": {},\n  \"content_bytes\": {},\n  \"create_s\": {:.3},\n  \"initial\": {},\n  \"restart_unchanged\": {},\n  \"peak_rss_kib\": {},\n  \"index_bytes\": {}\n}}\n",
            args.files,
            dirs,
            bytes,
            create.as_secs_f64(),
            run_json(&first),
            run_json(&restart),
            peak_rss_kib(),
            index_bytes
        );
        std::fs::write(out, json)?;
        println!("wrote {}", out.display());
    }

    let mut failures = Vec::new();
    if first.changes != expected_changes {
        failures.push(format!("initial scan announced {} records, expected {expected_changes}", first.changes));
    }
    if first.bytes_hashed != bytes {
        failures.push(format!("initial scan hashed {} bytes, expected {bytes}", first.bytes_hashed));
    }
    if restart.changes != 0 || restart.bytes_hashed != 0 {
        failures.push(format!(
            "restart over an unchanged folder announced {} records and read {} bytes; expected none",
            restart.changes, restart.bytes_hashed
        ));
    }
    if failures.is_empty() {
        println!("ok: the restart read no file content");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
