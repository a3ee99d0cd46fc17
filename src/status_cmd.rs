//! `dartsync status`: asks a running peer (or, with `--tracker`, the
//! tracker) over its control socket, prints the answer as text, JSON or a
//! live view, and turns it into the exit code (0 up to date, 1 not yet,
//! 2 unreachable). The text itself comes from [`crate::status_view`].

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dartsync_shared::control::{self, CONTROL_SOCKET, ControlError, RequestKind};
use dartsync_shared::status::{DeviceState, PeerStatus, STATUS_SCHEMA, TrackerStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::status_view;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `--wait` polls this often.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// `--watch` redraws this often.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Exit code when the peer or tracker cannot be asked.
const UNREACHABLE: u8 = 2;

/// Whom to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The peer syncing this (absolute) folder.
    Peer {
        /// The synced folder.
        folder: PathBuf,
    },
    /// The tracker keeping its state in this (absolute) directory.
    Tracker {
        /// The tracker's `--data` directory.
        data_dir: PathBuf,
    },
}

/// How to show the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The human report, once.
    Human,
    /// The status object as JSON, once.
    Json,
    /// A live view until Ctrl-C.
    Watch,
}

/// A resolved `dartsync status` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRequest {
    /// Whom to ask.
    pub target: Target,
    /// How to show it.
    pub output: Output,
    /// `--wait`: poll until up to date for at most this long.
    pub wait: Option<Duration>,
}

impl Target {
    /// The control socket of the peer or tracker.
    pub fn socket(&self) -> PathBuf {
        match self {
            Target::Peer { folder } => folder.join(".dartsync").join(CONTROL_SOCKET),
            Target::Tracker { data_dir } => data_dir.join(CONTROL_SOCKET),
        }
    }

    /// The folder or data directory the socket belongs to.
    pub fn owner(&self) -> &Path {
        match self {
            Target::Peer { folder } => folder,
            Target::Tracker { data_dir } => data_dir,
        }
    }

    /// What to say when nothing listens, and how to start it.
    pub fn not_running(&self) -> String {
        let socket = self.socket();
        match self {
            Target::Peer { folder } => format!(
                "no dartsync peer is running for {folder} (no control socket at {socket}); \
                 start one with: dartsync --peer {folder} --tracker-addr HOST",
                folder = folder.display(),
                socket = socket.display(),
            ),
            Target::Tracker { data_dir } => format!(
                "no dartsync tracker is running with data directory {dir} (no control socket at {socket}); \
                 start one with: dartsync --tracker --data {dir}",
                dir = data_dir.display(),
                socket = socket.display(),
            ),
        }
    }
}

/// A decoded answer.
#[derive(Debug, Clone)]
enum Snapshot {
    Peer(Box<PeerStatus>),
    Tracker(Box<TrackerStatus>),
}

impl Snapshot {
    /// 0 up to date, 1 not yet.
    fn exit_code(&self) -> u8 {
        match self {
            Snapshot::Peer(s) => s.exit_code(),
            Snapshot::Tracker(s) => {
                u8::from(s.devices.iter().any(|d| d.state == DeviceState::Admitted && d.online && !d.up_to_date))
            }
        }
    }

    fn render(&self, now: u64) -> String {
        match self {
            Snapshot::Peer(s) => status_view::render_peer(s, now),
            Snapshot::Tracker(s) => status_view::render_tracker(s, now),
        }
    }
}

/// One answer: as sent, and decoded.
#[derive(Debug, Clone)]
struct Answer {
    raw: serde_json::Value,
    snapshot: Snapshot,
}

/// Runs `dartsync status`; the exit code is the command's.
pub fn run(req: &StatusRequest) -> ExitCode {
    match req.output {
        Output::Watch if std::io::stdout().is_terminal() => watch_bars(&req.target),
        Output::Watch => watch_plain(&req.target),
        Output::Human | Output::Json => once(req),
    }
}

fn once(req: &StatusRequest) -> ExitCode {
    let answer = match req.wait {
        Some(limit) => ask_until_up_to_date(&req.target, limit),
        None => ask(&req.target),
    };
    match answer {
        Ok(answer) => {
            print_answer(&answer, req.output);
            ExitCode::from(answer.snapshot.exit_code())
        }
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

fn print_answer(answer: &Answer, output: Output) {
    match output {
        Output::Json => match serde_json::to_string_pretty(&answer.raw) {
            Ok(text) => emit(&format!("{text}\n")),
            Err(e) => eprintln!("error: cannot print the status as JSON: {e}"),
        },
        Output::Human | Output::Watch => emit(&answer.snapshot.render(unix_now())),
    }
}

/// Writes to stdout; a reader gone early (`| head`) is not an error worth
/// a panic, so write errors end the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Like [`emit`], but says whether anyone still reads.
fn emit_checked(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// Asks once; the error is the message for stderr.
fn ask(target: &Target) -> Result<Answer, String> {
    let raw = control::request(&target.socket(), target.owner(), RequestKind::Status, REQUEST_TIMEOUT)
        .map_err(|e| describe(target, e))?;
    let snapshot = decode(target, &raw)?;
    Ok(Answer { raw, snapshot })
}

fn describe(target: &Target, error: ControlError) -> String {
    match error {
        ControlError::NotRunning { .. } => target.not_running(),
        ControlError::Remote(why) => format!("{} answered with an error: {why}", target.socket().display()),
        other => other.to_string(),
    }
}

fn decode(target: &Target, raw: &serde_json::Value) -> Result<Snapshot, String> {
    let schema = raw.get("schema").and_then(serde_json::Value::as_u64);
    if schema != Some(u64::from(STATUS_SCHEMA)) {
        return Err(format!(
            "{} answered status schema {}, this dartsync reads schema {STATUS_SCHEMA}; use the same release",
            target.socket().display(),
            schema.map_or_else(|| "(none)".to_owned(), |s| s.to_string()),
        ));
    }
    let bad = |e: serde_json::Error| {
        format!("{} answered a status this dartsync cannot read: {e}", target.socket().display())
    };
    Ok(match target {
        Target::Peer { .. } => Snapshot::Peer(Box::new(serde_json::from_value(raw.clone()).map_err(bad)?)),
        Target::Tracker { .. } => Snapshot::Tracker(Box::new(serde_json::from_value(raw.clone()).map_err(bad)?)),
    })
}

/// Polls every [`WAIT_POLL`] until an answer says up to date or `limit`
/// passes; returns the last answer (or why there was none).
fn ask_until_up_to_date(target: &Target, limit: Duration) -> Result<Answer, String> {
    let deadline = Instant::now() + limit;
    loop {
        let answer = ask(target);
        let done = matches!(&answer, Ok(a) if a.snapshot.exit_code() == 0);
        let now = Instant::now();
        if done || now >= deadline {
            return answer;
        }
        std::thread::sleep(WAIT_POLL.min(deadline - now));
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---- --watch ----------------------------------------------------------------

/// Not a terminal: a fresh plain report every second, until Ctrl-C or
/// until nobody reads stdout any more.
fn watch_plain(target: &Target) -> ExitCode {
    loop {
        let text = match ask(target) {
            Ok(answer) => answer.snapshot.render(unix_now()),
            Err(why) => format!("{why}\n"),
        };
        if !emit_checked(&format!("{text}\n")) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// A terminal: the report on top, a bar for what is left to fetch and
/// one per transfer, redrawn every second until Ctrl-C.
fn watch_bars(target: &Target) -> ExitCode {
    let mut view = LiveView::new();
    loop {
        match ask(target) {
            Ok(Answer { snapshot: Snapshot::Peer(status), .. }) => view.show_peer(&status),
            Ok(Answer { snapshot: Snapshot::Tracker(status), .. }) => {
                view.show_text(status_view::render_tracker(&status, unix_now()))
            }
            Err(why) => view.show_text(why),
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// The bars of `--watch`.
#[derive(Debug)]
struct LiveView {
    multi: MultiProgress,
    header: ProgressBar,
    overall: Option<ProgressBar>,
    /// Bytes left when the current batch of downloads started: the
    /// overall bar's length.
    batch: u64,
    files: HashMap<String, ProgressBar>,
}

impl LiveView {
    fn new() -> LiveView {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new(0).with_style(style("{msg}")));
        LiveView { multi, header, overall: None, batch: 0, files: HashMap::new() }
    }

    /// Text only (a tracker, or an error): no bars.
    fn show_text(&mut self, text: String) {
        self.clear_bars();
        self.header.set_message(text.trim_end().to_owned());
    }

    fn show_peer(&mut self, status: &PeerStatus) {
        let summary = status_view::render_peer_summary(status, unix_now());
        self.header.set_message(summary.trim_end().to_owned());
        self.show_overall(status);
        self.show_transfers(status);
    }

    fn show_overall(&mut self, status: &PeerStatus) {
        let left = status.pending.bytes;
        if left == 0 {
            self.batch = 0;
            if let Some(bar) = self.overall.take() {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            return;
        }
        self.batch = self.batch.max(left);
        let bar = self.overall.get_or_insert_with(|| {
            self.multi.add(ProgressBar::new(0).with_style(style("All    [{bar:40}] {percent:>3}%  {msg}")))
        });
        bar.set_length(self.batch);
        bar.set_position(self.batch - left);
        let mut msg = format!(
            "{} left of {}",
            status_view::count(status.pending.files, "file"),
            status_view::size(status.pending.bytes)
        );
        if status.pending.rate > 0 {
            msg.push_str(&format!(", {}/s", status_view::size(status.pending.rate)));
        }
        if let Some(eta) = status.pending.eta_secs {
            msg.push_str(&format!(", about {}", status_view::duration(eta)));
        }
        bar.set_message(msg);
    }

    fn show_transfers(&mut self, status: &PeerStatus) {
        let listed: Vec<&str> = status.transfers.iter().map(|t| t.path.as_str()).collect();
        let gone: Vec<String> = self.files.keys().filter(|p| !listed.contains(&p.as_str())).cloned().collect();
        for path in gone {
            if let Some(bar) = self.files.remove(&path) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
        for t in &status.transfers {
            let bar = self.files.entry(t.path.clone()).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new(t.size).with_style(style("  file [{bar:40}] {percent:>3}%  {msg}")));
                bar.set_message(format!("{} ({})", t.path, status_view::size(t.size)));
                bar
            });
            bar.set_length(t.size);
            bar.set_position(t.done.min(t.size));
        }
    }

    fn clear_bars(&mut self) {
        self.batch = 0;
        for bar in self.overall.take().into_iter().chain(self.files.drain().map(|(_, bar)| bar)) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

/// A bar style from a fixed template.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_messages_name_the_folder() {
        let peer = Target::Peer { folder: PathBuf::from("/x") };
        assert_eq!(peer.socket(), PathBuf::from("/x/.dartsync/control.sock"));
        assert_eq!(
            peer.not_running(),
            "no dartsync peer is running for /x (no control socket at /x/.dartsync/control.sock); \
             start one with: dartsync --peer /x --tracker-addr HOST"
        );
        let tracker = Target::Tracker { data_dir: PathBuf::from("/d") };
        assert_eq!(tracker.socket(), PathBuf::from("/d/control.sock"));
        assert!(tracker.not_running().contains("dartsync --tracker --data /d"));
    }

    #[test]
    fn decoding_checks_the_schema() {
        let peer = Target::Peer { folder: PathBuf::from("/x") };
        let err = decode(&peer, &serde_json::json!({"schema": 2})).unwrap_err();
        assert!(err.contains("schema 2") && err.contains("schema 1"), "{err}");
        let err = decode(&peer, &serde_json::json!({"schema": 1})).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
