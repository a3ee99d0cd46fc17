//! The human output of `dartsync status`: pure functions from a
//! [`PeerStatus`] or [`TrackerStatus`] (and the current time, passed in so
//! the output is deterministic) to text. Numbers are formatted by
//! [`dartsync_shared::human`], like the logs.
//!
//! Sizes are decimal (1 KB = 1000 bytes, as file managers and disk vendors
//! count); times are relative to `now` ("3 min ago").

use std::fmt::Write as _;

pub use dartsync_shared::human::{count, duration, plural, size, thousands};

use dartsync_shared::status::{
    Conflict, Device, DeviceState, FolderState, HeldChange, PeerStatus, TrackerDevice, TrackerLink, TrackerStatus,
    Transfer,
};

/// Characters of an id shown in the human output.
const SHORT_ID: usize = 8;

/// How long ago `then` was: `just now` (under 5 s, or in the future),
/// `12 s ago`, `3 min ago`.
pub fn ago(now: u64, then: u64) -> String {
    match now.saturating_sub(then) {
        s if s < 5 => "just now".to_owned(),
        s => format!("{} ago", duration(s)),
    }
}

/// The first characters of an id.
pub fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// Whole percent of `done` out of `total`, never rounded up to 100.
pub fn percent(done: u64, total: u64) -> u64 {
    if total == 0 { 100 } else { (u128::from(done.min(total)) * 100 / u128::from(total)) as u64 }
}

/// Left-aligned columns, two spaces apart, each row indented by two.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}", width = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A titled section; nothing when `body` is empty.
fn section(out: &mut String, title: &str, body: &str) {
    if body.is_empty() {
        return;
    }
    let _ = write!(out, "\n{title}:\n{body}");
}

// ---- peer -----------------------------------------------------------------

/// The whole report of a peer: the state line, then every non-empty
/// section.
pub fn render_peer(status: &PeerStatus, now: u64) -> String {
    render(status, now, true)
}

/// The report without the transfers (which `--watch` draws as progress
/// bars).
pub fn render_peer_summary(status: &PeerStatus, now: u64) -> String {
    render(status, now, false)
}

fn render(status: &PeerStatus, now: u64, with_transfers: bool) -> String {
    let mut out = state_line(status, now);
    out.push('\n');
    out.push('\n');
    let _ = writeln!(out, "Folder:  {}", status.folder);
    let receive_only = if status.receive_only { ", receive-only" } else { "" };
    let _ = writeln!(out, "Device:  {} ({}){receive_only}", status.name, short_id(&status.id));
    let link = match status.state {
        FolderState::PendingApproval => format!("{}, connected, waiting for approval", status.tracker.addr),
        FolderState::Revoked => format!("{}, this device is revoked", status.tracker.addr),
        _ => tracker_link(&status.tracker, now),
    };
    let _ = writeln!(out, "Tracker: {link}");
    section(&mut out, "Devices", &devices(&status.devices, now));
    if with_transfers {
        section(&mut out, "Transfers", &transfers(status));
    }
    section(&mut out, "Waiting", &waiting(status));
    section(&mut out, "Conflicts", &conflicts(&status.conflicts, now));
    section(&mut out, "Held by the tracker", &held_by_tracker(status, now));
    section(&mut out, "Local changes (receive-only, not sent)", &local_changes(status));
    if status.unannounced > 0 {
        let _ = write!(out, "\nNot yet announced: {}\n", count(status.unannounced, "local change"));
    }
    if let Some(url) = &status.dashboard {
        let _ = write!(out, "\nDashboard: {url}\n");
    }
    out
}

/// The first line: the state and its numbers.
pub fn state_line(status: &PeerStatus, now: u64) -> String {
    let label = status.state.label();
    match status.state {
        FolderState::UpToDate => {
            format!("{label} — {}, {}", count(status.files, "file"), size(status.bytes))
        }
        FolderState::Syncing => match syncing_details(status).as_slice() {
            [] => label.to_owned(),
            parts => format!("{label}: {}", parts.join(", ")),
        },
        FolderState::Waiting => format!("{label}: {} (see below)", count(status.waiting_total, "file")),
        FolderState::PendingApproval => {
            let arg = if status.name.contains(char::is_whitespace) {
                format!("\"{}\"", status.name)
            } else {
                status.name.clone()
            };
            format!(
                "{label}: on the tracker machine run `dartsync tracker admit {arg}` (this device's id is {})",
                status.id
            )
        }
        FolderState::Revoked => {
            format!("{label}: the tracker refuses this device (id {}); only its operator can admit it again", status.id)
        }
        FolderState::TrackerUnreachable => {
            let link = &status.tracker;
            let since = link.since.map(|t| format!(" for {}", duration(now.saturating_sub(t)))).unwrap_or_default();
            let why = match &link.error {
                Some(error) => format!("{error} at {}", link.addr),
                None => link.addr.clone(),
            };
            format!("{label}{since} ({why})")
        }
    }
}

fn syncing_details(status: &PeerStatus) -> Vec<String> {
    let pending = &status.pending;
    let mut parts = Vec::new();
    if pending.files > 0 {
        parts.push(count(pending.files, "file"));
        parts.push(format!("{} left", size(pending.bytes)));
        if pending.rate > 0 {
            parts.push(format!("{}/s", size(pending.rate)));
        }
        if let Some(eta) = pending.eta_secs {
            parts.push(format!("about {}", duration(eta)));
        }
    } else if status.unannounced > 0 {
        parts.push(format!("announcing {}", count(status.unannounced, "local change")));
    }
    parts
}

fn tracker_link(link: &TrackerLink, now: u64) -> String {
    let since = |t: Option<u64>| t.map(|t| format!(" for {}", duration(now.saturating_sub(t)))).unwrap_or_default();
    let addr = match (link.addr.is_empty(), link.discovered) {
        (true, _) => "not found yet".to_owned(),
        (false, true) => format!("{} (found on the LAN)", link.addr),
        (false, false) => link.addr.clone(),
    };
    if link.connected {
        format!("{addr}, connected{}", since(link.since))
    } else {
        let why = link.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        format!("{addr}, unreachable{}{why}", since(link.since))
    }
}

fn devices(devices: &[Device], now: u64) -> String {
    if devices.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let name = if d.this_device { format!("{} (this device)", d.name) } else { d.name.clone() };
            vec![name, short_id(&d.id).to_owned(), presence(d.online, d.last_seen, now), device_sync(d).to_owned()]
        })
        .collect();
    table(&rows)
}

/// `online`, `last seen 3 min ago` or `never seen`.
fn presence(online: bool, last_seen: Option<u64>, now: u64) -> String {
    match (online, last_seen) {
        (true, _) => "online".to_owned(),
        (false, Some(t)) => format!("last seen {}", ago(now, t)),
        (false, None) => "never seen".to_owned(),
    }
}

fn device_sync(d: &Device) -> &'static str {
    match d.state {
        DeviceState::Pending => return "waiting for approval",
        DeviceState::Revoked => return "revoked",
        DeviceState::Admitted => {}
    }
    match (d.up_to_date, d.online) {
        (true, _) => "up to date",
        (false, true) => "syncing",
        (false, false) => "behind",
    }
}

fn transfers(status: &PeerStatus) -> String {
    if status.transfers.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = status.transfers.iter().map(transfer_row).collect();
    let mut out = table(&rows);
    let listed = status.transfers.len() as u64;
    if status.pending.files > listed {
        let _ = writeln!(out, "  and {} more queued", thousands(status.pending.files - listed));
    }
    out
}

fn transfer_row(t: &Transfer) -> Vec<String> {
    vec![
        format!("{:>3}%", percent(t.done, t.size)),
        format!("of {}", size(t.size)),
        t.path.clone(),
        format!("from {}", count(u64::from(t.sources), "peer")),
    ]
}

fn waiting(status: &PeerStatus) -> String {
    let mut out = String::new();
    for w in &status.waiting {
        let _ = writeln!(out, "  {}: {}", w.path, w.reason);
    }
    let listed = status.waiting.len() as u64;
    if status.waiting_total > listed {
        let _ = writeln!(out, "  and {} more", thousands(status.waiting_total - listed));
    }
    out
}

/// This device's mass change the tracker holds, and what decides it.
fn held_by_tracker(status: &PeerStatus, now: u64) -> String {
    let Some(h) = status.held_by_tracker else { return String::new() };
    format!(
        "  {} deleted, {} overwritten here, held {}: no other device gets them until\n  \
         `dartsync tracker approve {name}` on the tracker machine (`reject {name}` puts the cluster's version back here)\n",
        thousands(h.deletes),
        thousands(h.overwrites),
        ago(now, h.since),
        name = status.name,
    )
}

/// A receive-only folder's kept local changes, and how to undo them.
fn local_changes(status: &PeerStatus) -> String {
    if status.local_changes_total == 0 {
        return String::new();
    }
    let mut out = String::new();
    for path in &status.local_changes {
        let _ = writeln!(out, "  {path}");
    }
    let listed = status.local_changes.len() as u64;
    if status.local_changes_total > listed {
        let _ = writeln!(out, "  and {} more", thousands(status.local_changes_total - listed));
    }
    let _ = writeln!(out, "  `dartsync revert` puts back the cluster's version (the local one goes to the history)");
    out
}

fn conflicts(conflicts: &[Conflict], now: u64) -> String {
    let mut out = String::new();
    for c in conflicts {
        let _ = writeln!(out, "  {}: {}", c.path, conflict(c, now));
    }
    out
}

fn conflict(c: &Conflict, now: u64) -> String {
    let when = ago(now, c.at);
    match &c.copy {
        Some(copy) => format!("{}'s version won, {}'s is kept as {copy} ({when})", c.winner, c.loser),
        None => format!("{}'s edit won over {}'s delete ({when})", c.winner, c.loser),
    }
}

// ---- tracker --------------------------------------------------------------

/// The report of a tracker: a summary line, the table, every device's
/// progress and recent conflicts.
pub fn render_tracker(status: &TrackerStatus, now: u64) -> String {
    let mut out = tracker_summary(&status.devices);
    out.push('\n');
    out.push('\n');
    let _ = writeln!(out, "Tracker: {} listening on {}", short_id(&status.id), status.listen);
    let _ = writeln!(
        out,
        "Table:   {} ({} tombstones), seq {}, epoch {}",
        count(status.records, "record"),
        thousands(status.tombstones),
        thousands(status.seq),
        status.epoch
    );
    section(&mut out, "Held mass changes (approve or reject)", &held(&status.held, now));
    section(&mut out, "Devices", &tracker_devices(&status.devices, now));
    section(&mut out, "Conflicts", &conflicts(&status.conflicts, now));
    out
}

/// Mass changes the brake holds, and the commands that decide them.
fn held(held: &[HeldChange], now: u64) -> String {
    let mut out = String::new();
    for h in held {
        let _ = writeln!(
            out,
            "  {} ({}): {} deleted, {} overwritten, held {}",
            h.device,
            short_id(&h.id),
            thousands(h.deletes),
            thousands(h.overwrites),
            ago(now, h.since)
        );
        let _ = writeln!(out, "    dartsync tracker approve {0}   |   dartsync tracker reject {0}", h.device);
    }
    out
}

/// `All 3 online devices up to date`, `1 of 3 online devices not up to
/// date`, or `No device online`.
/// Devices waiting for approval are counted apart: `All 3 online devices
/// up to date; 1 device waits for approval`.
pub fn tracker_summary(devices: &[TrackerDevice]) -> String {
    let members = || devices.iter().filter(|d| d.state == DeviceState::Admitted);
    let online = members().filter(|d| d.online).count() as u64;
    let behind = members().filter(|d| d.online && !d.up_to_date).count() as u64;
    let line = match (online, behind) {
        (0, _) => format!("No device online ({} known)", thousands(members().count() as u64)),
        (1, 0) => "The 1 online device is up to date".to_owned(),
        (n, 0) => format!("All {} online devices up to date", thousands(n)),
        (n, b) => format!("{} of {} online {} not up to date", thousands(b), thousands(n), plural(n, "device")),
    };
    match devices.iter().filter(|d| d.state == DeviceState::Pending).count() as u64 {
        0 => line,
        1 => format!("{line}; 1 device waits for approval"),
        n => format!("{line}; {} devices wait for approval", thousands(n)),
    }
}

fn tracker_devices(devices: &[TrackerDevice], now: u64) -> String {
    if devices.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                short_id(&d.id).to_owned(),
                d.addr.clone().unwrap_or_else(|| "-".to_owned()),
                presence(d.online, d.last_seen, now),
                progress(d),
            ]
        })
        .collect();
    table(&rows)
}

/// `up to date`, or how far behind: `behind 3 changes, 12 files / 40 MB
/// to fetch, 2 waiting`.
pub fn progress(d: &TrackerDevice) -> String {
    match d.state {
        DeviceState::Pending => return "waiting for approval (`dartsync tracker admit`)".to_owned(),
        DeviceState::Revoked => return "revoked".to_owned(),
        DeviceState::Admitted => {}
    }
    if d.up_to_date {
        return "up to date".to_owned();
    }
    let mut parts = Vec::new();
    if d.behind > 0 {
        parts.push(format!("behind {}", count(d.behind, "change")));
    }
    if d.pending_files > 0 || d.pending_bytes > 0 {
        parts.push(format!("{} / {} to fetch", count(d.pending_files, "file"), size(d.pending_bytes)));
    }
    if d.waiting > 0 {
        parts.push(format!("{} waiting", thousands(d.waiting)));
    }
    if parts.is_empty() { "syncing".to_owned() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use dartsync_shared::status::{Pending, STATUS_SCHEMA, WaitingPath};

    use super::*;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn times_ago() {
        assert_eq!(ago(NOW, NOW), "just now");
        assert_eq!(ago(NOW, NOW + 100), "just now");
        assert_eq!(ago(NOW, NOW - 12), "12 s ago");
        assert_eq!(ago(NOW, NOW - 180), "3 min ago");
    }

    #[test]
    fn percents_and_ids() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(999, 1000), 99);
        assert_eq!(percent(1000, 1000), 100);
        assert_eq!(percent(5, 1), 100);
        assert_eq!(percent(u64::MAX / 2, u64::MAX), 49);
        assert_eq!(short_id("abcdefghijkl"), "abcdefgh");
        assert_eq!(short_id("abc"), "abc");
    }

    fn device(name: &str, id: &str, online: bool, up_to_date: bool, last_seen: u64) -> Device {
        Device {
            name: name.into(),
            id: id.into(),
            online,
            up_to_date,
            last_seen: Some(last_seen),
            this_device: false,
            state: DeviceState::Admitted,
        }
    }

    /// A peer "laptop" in a three-device cluster, up to date.
    fn peer() -> PeerStatus {
        let mut me = device("laptop", "k3m9qz7w2xv4p8rt6yb5nc1dfa", true, true, NOW);
        me.this_device = true;
        PeerStatus {
            schema: STATUS_SCHEMA,
            state: FolderState::UpToDate,
            folder: "/home/ana/DartSync".into(),
            name: "laptop".into(),
            id: me.id.clone(),
            tracker: TrackerLink {
                addr: "pi.local:7373".into(),
                connected: true,
                since: Some(NOW - 7_500),
                error: None,
                discovered: false,
            },
            devices: vec![
                me,
                device("desktop", "a7c2ht5vn3ke9wq4xm8pz6rb1j", true, true, NOW - 2),
                device("old-netbook", "z9x8c7v6b5n4m3l2k1j0h9g8f7", false, false, NOW - 3 * 86_400),
            ],
            pending: Pending::default(),
            transfers: vec![],
            waiting: vec![],
            waiting_total: 0,
            conflicts: vec![],
            unannounced: 0,
            files: 1_204,
            bytes: 3_210_000_000,
            received_bytes: 0,
            last_event: None,
            events: vec![],
            dashboard: None,
            receive_only: false,
            local_changes: Vec::new(),
            local_changes_total: 0,
            held_by_tracker: None,
        }
    }

    #[test]
    fn snapshot_up_to_date() {
        insta::assert_snapshot!(render_peer(&peer(), NOW));
    }

    #[test]
    fn snapshot_syncing_with_transfers() {
        let mut s = peer();
        s.state = FolderState::Syncing;
        s.devices[0].up_to_date = false;
        s.pending = Pending { files: 12, bytes: 340_000_000, rate: 45_000_000, eta_secs: Some(8) };
        s.transfers = vec![
            Transfer {
                path: "videos/holiday.mp4".into(),
                size: 250_000_000,
                done: 112_500_000,
                sources: 2,
                elapsed_secs: 3,
            },
            Transfer {
                path: "photos/IMG_0001.jpg".into(),
                size: 4_200_000,
                done: 4_199_999,
                sources: 1,
                elapsed_secs: 1,
            },
        ];
        s.unannounced = 1;
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn snapshot_waiting_with_more_than_listed() {
        let mut s = peer();
        s.state = FolderState::Waiting;
        s.devices[0].up_to_date = false;
        s.waiting = vec![
            WaitingPath {
                path: "iso/debian.iso".into(),
                reason: "not enough disk space (needs 4.0 GB, 1.2 GB free); free some space".into(),
            },
            WaitingPath {
                path: "shared/report.docx".into(),
                reason: "no online device holds this version; start the device that wrote it".into(),
            },
        ];
        s.waiting_total = 130;
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn snapshot_receive_only_with_local_changes() {
        let mut s = peer();
        s.receive_only = true;
        s.local_changes = vec!["notes/todo.md".into(), "scratch.txt".into()];
        s.local_changes_total = 3;
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn snapshot_held_by_the_tracker() {
        let mut s = peer();
        s.held_by_tracker =
            Some(dartsync_shared::status::HeldByTracker { deletes: 1_600, overwrites: 2, since: NOW - 30 });
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn snapshot_tracker_unreachable() {
        let mut s = peer();
        s.state = FolderState::TrackerUnreachable;
        s.tracker = TrackerLink {
            addr: "pi.local:7373".into(),
            connected: false,
            since: Some(NOW - 300),
            error: Some("connection refused".into()),
            discovered: false,
        };
        s.devices.clear();
        s.unannounced = 3;
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn snapshot_pending_approval_and_revoked() {
        let mut s = peer();
        s.state = FolderState::PendingApproval;
        s.devices.clear();
        s.tracker.connected = false;
        s.tracker.error = Some("waiting for approval by the tracker's operator".into());
        insta::assert_snapshot!(render_peer(&s, NOW));
        s.state = FolderState::Revoked;
        assert_eq!(
            state_line(&s, NOW),
            format!("Revoked: the tracker refuses this device (id {}); only its operator can admit it again", s.id)
        );
        let mut d = device("tablet", "p3nd1ngq2w5e7y9u1i3o5p7a9b", true, false, NOW);
        d.state = DeviceState::Pending;
        assert_eq!(device_sync(&d), "waiting for approval");
    }

    #[test]
    fn snapshot_conflicts() {
        let mut s = peer();
        s.conflicts = vec![
            Conflict {
                path: "notes/todo.md".into(),
                copy: Some("notes/todo.sync-conflict-20250615-1012-a7c2ht5v.md".into()),
                winner: "laptop".into(),
                loser: "desktop".into(),
                at: NOW - 240,
            },
            Conflict {
                path: "budget.ods".into(),
                copy: None,
                winner: "desktop".into(),
                loser: "laptop".into(),
                at: NOW - 2 * 86_400,
            },
        ];
        insta::assert_snapshot!(render_peer(&s, NOW));
    }

    #[test]
    fn singular_syncing_line() {
        let mut s = peer();
        s.state = FolderState::Syncing;
        s.pending = Pending { files: 1, bytes: 999, rate: 0, eta_secs: None };
        assert_eq!(state_line(&s, NOW), "Syncing: 1 file, 999 B left");
        s.pending = Pending::default();
        s.unannounced = 1;
        assert_eq!(state_line(&s, NOW), "Syncing: announcing 1 local change");
        s.unannounced = 0;
        assert_eq!(state_line(&s, NOW), "Syncing");
        s.state = FolderState::Waiting;
        s.waiting_total = 1;
        assert_eq!(state_line(&s, NOW), "Waiting: 1 file (see below)");
    }

    fn tracker_device(name: &str, id: &str, addr: Option<&str>, online: bool) -> TrackerDevice {
        TrackerDevice {
            name: name.into(),
            id: id.into(),
            addr: addr.map(str::to_owned),
            online,
            last_seen: Some(NOW - 1),
            up_to_date: true,
            behind: 0,
            pending_files: 0,
            pending_bytes: 0,
            waiting: 0,
            rate: 0,
            state: DeviceState::Admitted,
        }
    }

    #[test]
    fn snapshot_tracker() {
        let mut desktop = tracker_device("desktop", "a7c2ht5vn3ke9wq4xm8pz6rb1j", Some("192.168.1.20:41234"), true);
        desktop.up_to_date = false;
        desktop.behind = 3;
        desktop.pending_files = 12;
        desktop.pending_bytes = 40_000_000;
        let mut old = tracker_device("old-netbook", "z9x8c7v6b5n4m3l2k1j0h9g8f7", None, false);
        old.last_seen = Some(NOW - 3 * 86_400);
        old.up_to_date = false;
        old.behind = 1;
        old.waiting = 2;
        let mut new = tracker_device("new-tablet", "p3nd1ngq2w5e7y9u1i3o5p7a9b", Some("192.168.1.30:0"), true);
        new.state = DeviceState::Pending;
        new.up_to_date = false;
        let mut lost = tracker_device("lost-phone", "r3v0k3dq2w5e7y9u1i3o5p7a9b", None, false);
        lost.state = DeviceState::Revoked;
        lost.last_seen = Some(NOW - 7200);
        let status = TrackerStatus {
            schema: STATUS_SCHEMA,
            id: "t4r8ck3rq2w5e7y9u1i3o5p7a9".into(),
            listen: "0.0.0.0:7373".into(),
            epoch: "0123456789abcdef".into(),
            seq: 48_211,
            records: 1_310,
            tombstones: 106,
            devices: vec![
                tracker_device("laptop", "k3m9qz7w2xv4p8rt6yb5nc1dfa", Some("192.168.1.10:40001"), true),
                desktop,
                new,
                old,
                lost,
            ],
            conflicts: vec![Conflict {
                path: "notes/todo.md".into(),
                copy: Some("notes/todo.sync-conflict-20250615-1012-a7c2ht5v.md".into()),
                winner: "laptop".into(),
                loser: "desktop".into(),
                at: NOW - 240,
            }],
            events: vec![],
            held: vec![HeldChange {
                device: "desktop".into(),
                id: "a7c2ht5vn3ke9wq4xm8pz6rb1j".into(),
                deletes: 1_600,
                overwrites: 0,
                records: 1_601,
                since: NOW - 90,
            }],
        };
        insta::assert_snapshot!(render_tracker(&status, NOW));
    }

    #[test]
    fn tracker_summaries() {
        let mut a = tracker_device("a", "a", None, true);
        assert_eq!(tracker_summary(&[]), "No device online (0 known)");
        assert_eq!(tracker_summary(std::slice::from_ref(&a)), "The 1 online device is up to date");
        a.up_to_date = false;
        assert_eq!(tracker_summary(std::slice::from_ref(&a)), "1 of 1 online device not up to date");
        assert_eq!(progress(&a), "syncing");
        let b = tracker_device("b", "b", None, true);
        assert_eq!(tracker_summary(&[a.clone(), b.clone(), b]), "1 of 3 online devices not up to date");
        let mut p = tracker_device("p", "p", None, true);
        p.state = DeviceState::Pending;
        p.up_to_date = false;
        let mut r = tracker_device("r", "r", None, false);
        r.state = DeviceState::Revoked;
        assert_eq!(tracker_summary(&[a, p, r]), "1 of 1 online device not up to date; 1 device waits for approval");
    }
}
