//! `dartsync demo`: the whole system on one machine, in one command.
//!
//! Starts a tracker and N peers of this same binary as separate processes
//! on 127.0.0.1 ([`cluster`]), each peer syncing `DIR/<name>`, then either
//! shows a live view of every device until Ctrl-C ([`live`]) or runs the
//! narrated, verified scenario of `--script` ([`script`]). Either way every
//! process it started is stopped (SIGTERM, then SIGKILL after a grace
//! period) before it returns, also after an error or a signal. Running it
//! again reuses DIR: the key, the tracker's table and the folders stay.

mod cluster;
mod live;
mod script;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

pub use cluster::DemoCluster;

/// The names of the demo's devices, in order.
pub const NAMES: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia",
    "peggy", "rupert", "sybil",
];

/// `dartsync demo`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoRequest {
    /// The demo's folder (absolute).
    pub dir: PathBuf,
    /// Number of peers, 2 to 16.
    pub peers: usize,
    /// Run the scenario instead of the live view.
    pub script: bool,
}

/// Set once SIGINT or SIGTERM arrives.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Catches SIGINT and SIGTERM from now on (they set the flag instead of
/// killing the demo, so it can stop its processes first).
fn stop_on_signal() -> anyhow::Result<StopFlag> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (mut int, mut term) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
        })
        .context("cannot install the signal handlers")?;
    let flag = StopFlag::default();
    let set = flag.clone();
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        set.set();
    });
    Ok(flag)
}

/// Runs the demo.
pub fn run(req: &DemoRequest) -> anyhow::Result<ExitCode> {
    let stop = stop_on_signal()?;
    let names: Vec<&str> = NAMES.iter().take(req.peers).copied().collect();
    let mut demo = DemoCluster::start(&req.dir, &names, &stop)?;
    let result =
        if req.script { script::run(&mut demo, &stop) } else { live::run(&demo, &stop).map(|()| ExitCode::SUCCESS) };
    demo.stop();
    println!();
    println!("Stopped every process the demo started. The folders stay in {}:", req.dir.display());
    for name in &names {
        println!("  {}", req.dir.join(name).display());
    }
    println!("Logs: {}", req.dir.join("logs").display());
    println!("Run `dartsync demo {}` again to continue where you left off.", req.dir.display());
    result
}
