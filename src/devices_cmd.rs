//! `dartsync tracker devices | admit | revoke`: the device admin commands
//! on the tracker's machine. They ask the running tracker over its control
//! socket (`DATA_DIR/control.sock`, mode 0600) and print its answer. Exit
//! codes: 0 done, 1 refused (no such device, an ambiguous name, ...), 2
//! the tracker cannot be reached. The table is rendered by the pure
//! [`render_devices`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dartsync_shared::control::RequestKind;
use dartsync_shared::status::{DeviceState, TrackerDevice};

use crate::control_cmd::UNREACHABLE;
use crate::status_cmd::Target;
use crate::status_view::ago;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// List the devices (as JSON with `json`).
    Devices {
        /// Print the answer as JSON.
        json: bool,
    },
    /// Admit a device (name, id or unique id prefix).
    Admit(String),
    /// Revoke a device (name, id or unique id prefix).
    Revoke(String),
}

/// A resolved `dartsync tracker ...` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    /// The tracker's (absolute) data directory.
    pub data_dir: PathBuf,
    /// What to do.
    pub action: AdminAction,
}

/// Runs one admin command; prints the answer or the error.
pub fn run(req: &AdminRequest) -> ExitCode {
    let kind = match &req.action {
        AdminAction::Devices { .. } => RequestKind::Devices,
        AdminAction::Admit(device) => RequestKind::Admit { device: device.clone() },
        AdminAction::Revoke(device) => RequestKind::Revoke { device: device.clone() },
    };
    let target = Target::Tracker { data_dir: req.data_dir.clone() };
    let hint = " (or pass --data DIR if it uses another)";
    let answer = match crate::control_cmd::ask(&target, kind, REQUEST_TIMEOUT, hint) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    match &req.action {
        AdminAction::Devices { json: true } => println!("{answer}"),
        AdminAction::Devices { json: false } => match devices_of(&answer) {
            Ok((policy, devices)) => print!("{}", render_devices(&policy, &devices, unix_now())),
            Err(why) => {
                eprintln!("error: the tracker's answer is not a device list: {why}");
                return ExitCode::from(UNREACHABLE);
            }
        },
        AdminAction::Admit(_) | AdminAction::Revoke(_) => println!("{}", done_line(&answer)),
    }
    ExitCode::SUCCESS
}

fn devices_of(answer: &serde_json::Value) -> Result<(String, Vec<TrackerDevice>), String> {
    let policy = answer.get("admit").and_then(serde_json::Value::as_str).unwrap_or("auto").to_owned();
    let devices = answer.get("devices").cloned().ok_or("no devices")?;
    let devices = serde_json::from_value(devices).map_err(|e| e.to_string())?;
    Ok((policy, devices))
}

/// `bob (ID): admitted (was pending)`, from an `admit` / `revoke` answer.
fn done_line(answer: &serde_json::Value) -> String {
    let field = |key: &str| answer.get(key).and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
    let (name, id, before, state) = (field("name"), field("id"), field("before"), field("state"));
    if before == state {
        format!("{name} ({id}) was {state} already")
    } else {
        let what = match state.as_str() {
            "revoked" => "revoked: its session is closed, its registrations refused, no peer serves it any more",
            "admitted" => "admitted: it syncs from now on",
            _ => state.as_str(),
        };
        format!("{name} ({id}) {what} (was {before})")
    }
}

/// The device table: a header, one row per device, and a line on the
/// admission policy (with what to do about pending devices).
pub fn render_devices(policy: &str, devices: &[TrackerDevice], now: u64) -> String {
    let mut rows = vec![["NAME", "ID", "STATE", "SEEN", "ADDRESS"].map(str::to_owned).to_vec()];
    for d in devices {
        let seen = match (d.online, d.last_seen) {
            (true, _) => "online".to_owned(),
            (false, Some(t)) => format!("last seen {}", ago(now, t)),
            (false, None) => "never seen".to_owned(),
        };
        rows.push(vec![
            d.name.clone(),
            d.id.clone(),
            d.state.label().to_owned(),
            seen,
            d.addr.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let pending = devices.iter().filter(|d| d.state == DeviceState::Pending).count();
    let _ = writeln!(out);
    let _ = write!(out, "Admission policy: {policy}");
    if pending > 0 {
        let _ = write!(out, "; {pending} waiting: `dartsync tracker admit NAME|ID` lets one sync");
    }
    out.push('\n');
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, id: &str, state: DeviceState, online: bool) -> TrackerDevice {
        TrackerDevice {
            name: name.into(),
            id: id.into(),
            addr: online.then(|| "10.0.0.2:4000".to_owned()),
            online,
            last_seen: Some(1_000),
            up_to_date: true,
            behind: 0,
            pending_files: 0,
            pending_bytes: 0,
            waiting: 0,
            rate: 0,
            state,
        }
    }

    #[test]
    fn the_table_has_a_row_per_device_and_says_what_to_do_about_pending_ones() {
        let devices = [
            device("laptop", "k3m9qz7w2xv4p8rt6yb5nc1dfa", DeviceState::Admitted, true),
            device("tablet", "p3nd1ngq2w5e7y9u1i3o5p7a9b", DeviceState::Pending, true),
            device("lost-phone", "r3v0k3dq2w5e7y9u1i3o5p7a9b", DeviceState::Revoked, false),
        ];
        let text = render_devices("approve", &devices, 1_000 + 7_200);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("STATE"), "{text}");
        assert!(lines[1].starts_with("laptop") && lines[1].contains("admitted") && lines[1].contains("online"));
        assert!(lines[2].contains("tablet") && lines[2].contains("pending") && lines[2].contains("10.0.0.2:4000"));
        assert!(lines[3].contains("lost-phone") && lines[3].contains("revoked") && lines[3].contains("last seen"));
        assert!(lines[3].trim_end().ends_with('-'), "no address offline: {}", lines[3]);
        assert!(text.contains("Admission policy: approve; 1 waiting"), "{text}");
        assert!(render_devices("auto", &devices[..1], 0).trim_end().ends_with("Admission policy: auto"));
    }

    #[test]
    fn admin_answers_read_as_sentences() {
        let answer = serde_json::json!({"name": "bob", "id": "ID", "before": "pending", "state": "admitted"});
        assert_eq!(done_line(&answer), "bob (ID) admitted: it syncs from now on (was pending)");
        let answer = serde_json::json!({"name": "bob", "id": "ID", "before": "revoked", "state": "revoked"});
        assert_eq!(done_line(&answer), "bob (ID) was revoked already");
    }
}
