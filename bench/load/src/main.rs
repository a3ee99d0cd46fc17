//! `dartsync-load`: starts a real tracker (`dartsync --tracker` on
//! 127.0.0.1), runs the load of `dartsync_load::run` against it, prints
//! the goals and measurements as a markdown table (and `--json FILE`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use dartsync_load::sim::Reading;
use dartsync_load::{Options, TrackerProcess, TrackerSettings, goals, procfs, render, tracker};

/// Simulates N peers on the real protocol against a real tracker process
/// and measures its memory, keep-alive CPU and delta fan-out latency.
#[derive(Debug, Parser)]
#[command(name = "dartsync-load", version, about)]
struct Args {
    /// Simulated peers (sessions).
    #[arg(long, default_value_t = 50)]
    peers: usize,
    /// Records in the table.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Peers holding each record (default: every peer, as in a real
    /// cluster; 1: every peer announces distinct paths).
    #[arg(long)]
    holders: Option<usize>,
    /// Edits announced one at a time for the fan-out latency (0: skip).
    #[arg(long, default_value_t = 20)]
    edits: usize,
    /// Seconds of the keep-alive CPU window (0: skip).
    #[arg(long, default_value_t = 30)]
    cpu_secs: u64,
    /// The tracker's keep-alive interval in seconds (default: the
    /// tracker's own, 10).
    #[arg(long)]
    interval: Option<u64>,
    /// Longest wait for one phase, seconds.
    #[arg(long, default_value_t = 900)]
    phase_timeout: u64,
    /// The `dartsync` binary (default: `DARTSYNC_BIN`, else `dartsync`
    /// next to this executable).
    #[arg(long, value_name = "PATH")]
    dartsync: Option<PathBuf>,
    /// Where the tracker's data directory goes (default /dev/shm).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Simulated peers read only the head of each delta page (its seq and
    /// entry count), not its entries: for runs whose pages would take the
    /// load tool more CPU to decode than the tracker takes to send (1,000
    /// peers x 1,000,000 records is about 100 GB of pages). The tracker's
    /// work is the same; the holders it lists are not checked.
    #[arg(long)]
    skim: bool,
    /// Also write the measurements and goals as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.peers == 0 {
        bail!("--peers must be at least 1");
    }
    let nofile = procfs::raise_nofile_limit()?;
    if (nofile as usize) < args.peers + 64 {
        bail!("the open-file limit is {nofile}, too low for {} sessions", args.peers);
    }
    let settings = TrackerSettings {
        binary: tracker::find_binary(args.dartsync.clone())?,
        max_peers: args.peers + 16,
        max_records: (args.records + args.edits + 16).max(dartsync_shared::config::DEFAULT_MAX_RECORDS),
        max_records_per_peer: (args.records + args.edits + 16)
            .max(dartsync_shared::config::DEFAULT_MAX_RECORDS_PER_PEER),
        interval_secs: args.interval,
        scratch: args.scratch.clone(),
    };
    let mut process = TrackerProcess::spawn(&settings)?;
    let options = Options {
        peers: args.peers,
        records: args.records,
        holders: args.holders,
        edits: args.edits,
        cpu_window: Duration::from_secs(args.cpu_secs),
        phase_timeout: Duration::from_secs(args.phase_timeout),
        reading: if args.skim { Reading::Skim } else { Reading::Whole },
        ..Options::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(dartsync_load::run(process.target(), &options));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let alive = process.is_running();
            return Err(e).with_context(|| {
                format!(
                    "the load failed (tracker {}); its last log lines:\n{}",
                    if alive { "running" } else { "ended" },
                    process.log_tail()
                )
            });
        }
    };
    drop(process);
    let rows = goals(&outcome);
    print!("{}", render(&outcome, &rows));
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "outcome": outcome, "goals": rows });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
