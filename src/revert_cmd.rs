//! `dartsync revert [PATH]`: asks the running peer of a receive-only
//! folder to put back the cluster's version of every local change under
//! PATH (the synced folder itself, or anything inside it), keeping the
//! local versions in the history. Exit codes: 0 done, 1 refused (not a
//! receive-only folder, a path that failed), 2 no peer answers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use dartsync_shared::control::{CONTROL_SOCKET, RequestKind};
use dartsync_shared::human::plural;

use crate::status_cmd::Target;

/// The engine may have to move many files: give it time.
const REVERT_TIMEOUT: Duration = Duration::from_secs(150);

/// A resolved `dartsync revert` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertRequest {
    /// The synced folder (absolute).
    pub folder: PathBuf,
    /// The subtree to revert, relative to the folder (`None`: all of it).
    pub under: Option<String>,
}

/// Finds the synced folder that holds `path` (absolute): `path` itself or
/// its nearest ancestor with a `.dartsync/control.sock`. Returns the
/// folder and `path` relative to it (`None` for the folder itself).
pub fn locate(path: &Path) -> Option<(PathBuf, Option<String>)> {
    for folder in path.ancestors() {
        if folder.join(".dartsync").join(CONTROL_SOCKET).exists() {
            let rel = path.strip_prefix(folder).ok()?.to_str()?.to_owned();
            return Some((folder.to_owned(), Some(rel).filter(|r| !r.is_empty())));
        }
    }
    None
}

/// Runs the request and prints the outcome.
pub fn run(req: &RevertRequest) -> ExitCode {
    let target = Target::Peer { folder: req.folder.clone() };
    let kind = RequestKind::Revert { path: req.under.clone() };
    match crate::control_cmd::ask(&target, kind, REVERT_TIMEOUT, "") {
        Ok(answer) => report(&req.folder, &answer),
        Err(code) => code,
    }
}

fn report(folder: &Path, answer: &serde_json::Value) -> ExitCode {
    let n = answer.get("reverted").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let saved = answer.get("saved").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let failed: Vec<&str> = answer
        .get("failed")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if n == 0 && failed.is_empty() {
        println!("Nothing to revert: no local changes in {}.", folder.display());
        return ExitCode::SUCCESS;
    }
    if n > 0 {
        println!("Reverted {n} local {}; the cluster's versions are being put back.", plural(n, "change"));
        if let Some(paths) = answer.get("paths").and_then(serde_json::Value::as_array) {
            for p in paths.iter().filter_map(serde_json::Value::as_str) {
                println!("  {p}");
            }
            if (paths.len() as u64) < n {
                println!("  ... and {} more", n - paths.len() as u64);
            }
        }
        if saved > 0 {
            println!(
                "The local {} kept in {} (see `dartsync versions PATH`).",
                if saved == 1 { "version is" } else { "versions are" },
                folder.join(".dartsync").join("versions").display()
            );
        }
    }
    for f in &failed {
        eprintln!("error: cannot revert {f}");
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(crate::control_cmd::REFUSED) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_the_folder_above_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(folder.join(".dartsync")).unwrap();
        std::fs::create_dir_all(folder.join("docs/a")).unwrap();
        std::fs::write(folder.join(".dartsync").join(CONTROL_SOCKET), "").unwrap();
        assert_eq!(locate(&folder), Some((folder.clone(), None)));
        assert_eq!(locate(&folder.join("docs/a")), Some((folder.clone(), Some("docs/a".into()))));
        assert_eq!(locate(&folder.join("docs/missing.txt")), Some((folder, Some("docs/missing.txt".into()))));
        assert_eq!(locate(dir.path()), None);
    }
}
