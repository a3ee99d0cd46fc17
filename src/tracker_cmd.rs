//! `dartsync tracker ...`: administration of the tracker running on this
//! machine, over its local control socket (`DATA_DIR/control.sock`, mode
//! 0600: only its owner may use it). Exit codes: 0 done, 1 refused by the
//! tracker (nothing held, an unknown device), 2 no tracker answers.
//! The device commands (`devices`, `admit`, `revoke`) live in
//! `crate::devices_cmd`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dartsync_shared::control::RequestKind;
use dartsync_shared::human::thousands;

use crate::devices_cmd::{AdminAction, AdminRequest};
use crate::status_cmd::Target;

/// How long the tracker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A resolved `dartsync tracker ...` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerRequest {
    /// The tracker's data directory (absolute).
    pub data_dir: PathBuf,
    /// What to ask.
    pub ask: Ask,
}

/// What `dartsync tracker` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Publish held mass changes.
    Approve(Option<String>),
    /// Discard held mass changes.
    Reject(Option<String>),
    /// List the devices (`crate::devices_cmd`).
    Devices {
        /// Print the answer as JSON.
        json: bool,
    },
    /// Admit a device (name, id or unique id prefix).
    Admit(String),
    /// Revoke a device (name, id or unique id prefix).
    Revoke(String),
}

/// Runs the request and prints the outcome.
pub fn run(req: &TrackerRequest) -> ExitCode {
    let target = Target::Tracker { data_dir: req.data_dir.clone() };
    let kind = match &req.ask {
        Ask::Approve(device) => RequestKind::Approve { device: device.clone() },
        Ask::Reject(device) => RequestKind::Reject { device: device.clone() },
        Ask::Devices { json } => return devices(req, AdminAction::Devices { json: *json }),
        Ask::Admit(device) => return devices(req, AdminAction::Admit(device.clone())),
        Ask::Revoke(device) => return devices(req, AdminAction::Revoke(device.clone())),
    };
    match crate::control_cmd::ask(&target, kind, TIMEOUT, "") {
        Ok(answer) => {
            print!("{}", describe(&req.ask, &answer));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `devices`, `admit`, `revoke`: [`crate::devices_cmd`].
fn devices(req: &TrackerRequest, action: AdminAction) -> ExitCode {
    crate::devices_cmd::run(&AdminRequest { data_dir: req.data_dir.clone(), action })
}

/// The human text for an answer.
fn describe(ask: &Ask, answer: &serde_json::Value) -> String {
    let (key, verb, then) = match ask {
        Ask::Approve(_) => ("approved", "Approved", "published to every device"),
        Ask::Reject(_) => ("rejected", "Rejected", "discarded; the device puts the cluster's version back"),
        // Answered by `devices_cmd`, never here.
        Ask::Devices { .. } | Ask::Admit(_) | Ask::Revoke(_) => return String::new(),
    };
    let mut out = String::new();
    for d in answer.get(key).and_then(serde_json::Value::as_array).into_iter().flatten() {
        let num = |k: &str| d.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let text = |k: &str| d.get(k).and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
        out.push_str(&format!(
            "{verb} the mass change of {} ({} deleted, {} overwritten, {} records): {then}.\n",
            text("device"),
            thousands(num("deletes")),
            thousands(num("overwrites")),
            thousands(num("records")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_described() {
        let answer = serde_json::json!({ "approved": [
            { "device": "bob", "id": "x", "records": 1601, "deletes": 1600, "overwrites": 0 }
        ]});
        let text = describe(&Ask::Approve(None), &answer);
        assert_eq!(
            text,
            "Approved the mass change of bob (1,600 deleted, 0 overwritten, 1,601 records): published to every device.\n"
        );
        assert_eq!(describe(&Ask::Reject(None), &serde_json::json!({})), "");
    }
}
