//! One control-socket request for a subcommand (`revert`, `versions`,
//! `restore`, `tracker ...`): the answer, or, when there is none, the
//! message on stderr and the exit code every such command uses — 1 when
//! the peer or tracker refused the request, 2 when nothing answers.

use std::process::ExitCode;
use std::time::Duration;

use dartsync_shared::control::{self, ControlError, RequestKind};

use crate::status_cmd::Target;

/// Exit code: the peer or tracker refused the request.
pub const REFUSED: u8 = 1;
/// Exit code: no peer or tracker answers.
pub const UNREACHABLE: u8 = 2;

/// Asks `target`; on failure prints why (`error: ...`) and returns the
/// exit code to end with. `not_running` adds a hint to the "not running"
/// message.
pub fn ask(
    target: &Target,
    kind: RequestKind,
    timeout: Duration,
    not_running: &str,
) -> Result<serde_json::Value, ExitCode> {
    match control::request(&target.socket(), target.owner(), kind, timeout) {
        Ok(answer) => Ok(answer),
        Err(ControlError::Remote(why)) => {
            eprintln!("error: {why}");
            Err(ExitCode::from(REFUSED))
        }
        Err(ControlError::NotRunning { .. }) => {
            eprintln!("error: {}{not_running}", target.not_running());
            Err(ExitCode::from(UNREACHABLE))
        }
        Err(other) => {
            eprintln!("error: {other}");
            Err(ExitCode::from(UNREACHABLE))
        }
    }
}
