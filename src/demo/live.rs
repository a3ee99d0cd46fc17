//! The demo's live view: one line per device (state, files, what is
//! left, the transfer in progress, the last event), redrawn every second
//! until Ctrl-C. [`render`] is pure (model and clock in, text out) and
//! snapshot-tested; [`run`] polls the peers' control sockets and draws.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use dartsync_shared::status::PeerStatus;

use super::{DemoCluster, StopFlag};
use crate::status_view::{ago, count, percent, size};

/// How often the view is redrawn (on a terminal).
const REDRAW: Duration = Duration::from_secs(1);
/// How often a fresh view is printed when stdout is not a terminal.
const PRINT_EVERY: Duration = Duration::from_secs(5);

/// What the view shows.
#[derive(Debug, Clone)]
pub struct Model {
    /// The demo folder.
    pub dir: String,
    /// The tracker's address.
    pub tracker_addr: String,
    /// Whether the tracker process runs.
    pub tracker_running: bool,
    /// One row per device.
    pub devices: Vec<(String, Option<PeerStatus>)>,
}

/// The view as text.
pub fn render(model: &Model, now: u64) -> String {
    let first = model.devices.first().map_or("alice", |(name, _)| name.as_str());
    let mut out = format!(
        "DartSync demo: tracker {} ({}), {} devices, folders in {}\n\
         Drop a file into {}/{first} and watch it reach the others. Ctrl-C stops everything.\n\n",
        model.tracker_addr,
        if model.tracker_running { "running" } else { "stopped" },
        model.devices.len(),
        model.dir,
        model.dir,
    );
    let mut rows = vec![["device", "state", "files", "left to fetch", "last event"].map(String::from).to_vec()];
    for (name, status) in &model.devices {
        rows.push(match status {
            None => vec![name.clone(), "not answering".into(), "-".into(), "-".into(), "-".into()],
            Some(s) => row(name, s, now),
        });
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str("  ");
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(name: &str, s: &PeerStatus, now: u64) -> Vec<String> {
    let left = match s.transfers.first() {
        Some(t) => format!("{}, {} ({}% of {})", size(s.pending.bytes), t.path, percent(t.done, t.size), size(t.size)),
        None if s.pending.files > 0 => format!("{}, {}", count(s.pending.files, "file"), size(s.pending.bytes)),
        None => "-".into(),
    };
    let last = s.last_event.as_ref().map_or_else(|| "-".into(), |e| format!("{}, {}", e.what, ago(now, e.at)));
    vec![
        name.to_owned(),
        s.state.label().to_owned(),
        format!("{} ({})", count(s.files, "file"), size(s.bytes)),
        left,
        last,
    ]
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Draws the view until `stop` is set.
pub fn run(demo: &DemoCluster, stop: &StopFlag) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    for (name, pid) in demo.pids() {
        println!("started {name} (pid {pid})");
    }
    let mut printed: Option<std::time::Instant> = None;
    while !stop.is_set() {
        let model = Model {
            dir: demo.dir.display().to_string(),
            tracker_addr: demo.tracker_addr.clone(),
            tracker_running: demo.tracker.pid().is_some(),
            devices: (0..demo.peers.len()).map(|i| (demo.peers[i].name.clone(), demo.status(i))).collect(),
        };
        let text = render(&model, unix_now());
        let mut stdout = std::io::stdout().lock();
        if terminal {
            // Home, clear, draw.
            let _ = write!(stdout, "\x1b[H\x1b[2J{text}");
        } else if printed.is_none_or(|at| at.elapsed() >= PRINT_EVERY) {
            let _ = writeln!(stdout, "{text}");
            printed = Some(std::time::Instant::now());
        }
        let _ = stdout.flush();
        drop(stdout);
        // Sleep in small steps so Ctrl-C is honoured at once.
        let mut slept = Duration::ZERO;
        while slept < REDRAW && !stop.is_set() {
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dartsync_shared::status::{FolderState, LastEvent, Pending, STATUS_SCHEMA, TrackerLink, Transfer};

    use super::*;

    const NOW: u64 = 1_796_000_000;

    fn status(state: FolderState) -> PeerStatus {
        PeerStatus {
            schema: STATUS_SCHEMA,
            state,
            folder: "/home/ana/dartsync-demo/alice".into(),
            name: "alice".into(),
            id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
            tracker: TrackerLink {
                addr: "127.0.0.1:40123".into(),
                connected: true,
                since: Some(NOW - 60),
                error: None,
                discovered: false,
            },
            devices: vec![],
            pending: Pending::default(),
            transfers: vec![],
            waiting: vec![],
            waiting_total: 0,
            conflicts: vec![],
            unannounced: 0,
            files: 3,
            bytes: 1_200_000,
            received_bytes: 0,
            last_event: Some(LastEvent { at: NOW - 3, what: "synced hello.txt (17 B)".into() }),
            events: vec![],
            dashboard: None,
            receive_only: false,
            local_changes: Vec::new(),
            local_changes_total: 0,
            held_by_tracker: None,
        }
    }

    #[test]
    fn snapshot_four_devices_in_every_state() {
        let mut syncing = status(FolderState::Syncing);
        syncing.pending = Pending { files: 2, bytes: 20_000_000, rate: 10_000_000, eta_secs: Some(2) };
        syncing.transfers = vec![Transfer {
            path: "media/video.bin".into(),
            size: 32_000_000,
            done: 14_400_000,
            sources: 2,
            elapsed_secs: 1,
        }];
        syncing.last_event = Some(LastEvent { at: NOW - 1, what: "synced hello.txt (17 B)".into() });
        let mut waiting = status(FolderState::Waiting);
        waiting.pending = Pending { files: 1, bytes: 5_000, rate: 0, eta_secs: None };
        waiting.last_event = None;
        let model = Model {
            dir: "/home/ana/dartsync-demo".into(),
            tracker_addr: "127.0.0.1:40123".into(),
            tracker_running: true,
            devices: vec![
                ("alice".into(), Some(status(FolderState::UpToDate))),
                ("bob".into(), Some(syncing)),
                ("carol".into(), Some(waiting)),
                ("dave".into(), None),
            ],
        };
        insta::assert_snapshot!(render(&model, NOW));
    }
}
