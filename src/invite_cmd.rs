//! `dartsync invite`: asks the tracker running on this machine (over its
//! local control socket, mode 0600) for a one-time invite code, and prints
//! it with what to run on the new device. Exit codes: 0 a code was made,
//! 1 the tracker refused (too many open invites), 2 no tracker answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dartsync_shared::control::RequestKind;

use crate::status_cmd::Target;

/// How long the tracker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A resolved `dartsync invite` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRequest {
    /// The tracker's data directory (absolute).
    pub data_dir: PathBuf,
    /// Validity in minutes.
    pub minutes: u32,
    /// Print the answer as JSON.
    pub json: bool,
}

/// Asks for a code and prints it.
pub fn run(req: &InviteRequest) -> ExitCode {
    let target = Target::Tracker { data_dir: req.data_dir.clone() };
    let kind = RequestKind::Invite { minutes: Some(req.minutes) };
    let hint = "; invites are made by the running tracker: start it with `dartsync --tracker` first";
    match crate::control_cmd::ask(&target, kind, TIMEOUT, hint) {
        Ok(answer) if req.json => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(answer) => match answer.get("code").and_then(serde_json::Value::as_str) {
            Some(code) => {
                let minutes = answer.get("minutes").and_then(serde_json::Value::as_u64).unwrap_or(0);
                print!("{}", describe(code, minutes));
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: the tracker's answer has no code: {answer}");
                ExitCode::from(crate::control_cmd::UNREACHABLE)
            }
        },
        Err(code) => code,
    }
}

/// The text printed for a new code.
fn describe(code: &str, minutes: u64) -> String {
    let plural = if minutes == 1 { "" } else { "s" };
    format!(
        "Invite code: {code}\n\
         \n\
         On the device to add, run:\n\
         \x20   dartsync join {code}\n\
         It is good for one device, for {minutes} minute{plural}, and for 3 wrong tries.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_printed_with_the_command_to_run() {
        let text = describe("7-otter-basket-maple", 10);
        assert!(text.starts_with("Invite code: 7-otter-basket-maple\n"), "{text}");
        assert!(text.contains("    dartsync join 7-otter-basket-maple\n"), "{text}");
        assert!(text.contains("for 10 minutes"), "{text}");
        assert!(describe("1-a-b-c", 1).contains("for 1 minute,"));
    }
}
