//! `dartsync versions PATH` and `dartsync restore PATH`: find the synced
//! folder PATH belongs to, ask its running peer over the control socket,
//! print the answer as a numbered table (or JSON), and turn it into the
//! exit code (0 done, 1 refused, 2 the peer cannot be asked). The table
//! is rendered by the pure [`render_list`] / [`render_restored`].

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use dartsync_shared::control::RequestKind;
use dartsync_shared::human;
use dartsync_shared::time::utc_display;
use dartsync_shared::versions::{Restored, SavedVersion, VERSIONS_SCHEMA, VersionList};

use crate::control_cmd::UNREACHABLE;
use crate::status_cmd::Target;

/// How long `versions` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `restore` may take (it copies the file).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// What to do, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// List the versions.
    List,
    /// Restore one.
    Restore {
        /// `--at`.
        at: Option<String>,
        /// `--version`.
        version: Option<u32>,
        /// `--to`, relative to the folder.
        to: Option<String>,
        /// `--force`.
        force: bool,
    },
}

/// A resolved `versions` / `restore` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionsRequest {
    /// The synced folder (absolute).
    pub folder: PathBuf,
    /// The path, relative to it.
    pub path: String,
    /// What to do.
    pub action: Action,
    /// Print the answer as JSON.
    pub json: bool,
}

/// `path` without `.` and with `..` applied (no file system access: the
/// path may not exist, e.g. a deleted file).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The synced folder and the folder-relative path a user means.
///
/// With `folder` (`--folder DIR`), a relative `path` is relative to it and
/// an absolute one must be inside it. Without, `path` is relative to
/// `cwd`, and the folder is the nearest parent holding `.dartsync/`, else
/// `default_folder` (the config file's, or ~/DartSync), which must
/// contain it.
pub fn locate(
    path: &Path,
    folder: Option<&Path>,
    default_folder: &Path,
    cwd: &Path,
) -> Result<(PathBuf, String), String> {
    let (folder, abs) = match folder {
        Some(folder) => {
            let folder = normalize(&cwd.join(folder));
            (folder.clone(), normalize(&folder.join(path)))
        }
        None => {
            let abs = normalize(&cwd.join(path));
            let found = abs.ancestors().skip(1).find(|dir| dir.join(".dartsync").is_dir()).map(Path::to_path_buf);
            (found.unwrap_or_else(|| normalize(&cwd.join(default_folder))), abs)
        }
    };
    let rel = abs.strip_prefix(&folder).map_err(|_| {
        format!(
            "{} is outside the synced folder {} (name the folder with --folder DIR)",
            abs.display(),
            folder.display()
        )
    })?;
    if rel.as_os_str().is_empty() {
        return Err(format!("{} is the synced folder itself; name a file inside it", abs.display()));
    }
    let rel = rel.to_str().ok_or_else(|| format!("{} is not valid UTF-8", rel.display()))?;
    Ok((folder, rel.to_owned()))
}

/// Runs the command; the exit code is the command's.
pub fn run(req: &VersionsRequest) -> ExitCode {
    let target = Target::Peer { folder: req.folder.clone() };
    let (kind, timeout) = match &req.action {
        Action::List => (RequestKind::Versions { path: req.path.clone() }, LIST_TIMEOUT),
        Action::Restore { at, version, to, force } => (
            RequestKind::Restore {
                path: req.path.clone(),
                at: at.clone(),
                version: *version,
                to: to.clone(),
                force: *force,
            },
            RESTORE_TIMEOUT,
        ),
    };
    let hint = "; versions are listed and restored by the running peer";
    let raw = match crate::control_cmd::ask(&target, kind, timeout, hint) {
        Ok(raw) => raw,
        Err(code) => return code,
    };
    if raw.get("schema").and_then(serde_json::Value::as_u64) != Some(u64::from(VERSIONS_SCHEMA)) {
        eprintln!("error: the peer answered another versions schema than {VERSIONS_SCHEMA}; use the same release");
        return ExitCode::from(UNREACHABLE);
    }
    if req.json {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let text = match &req.action {
        Action::List => serde_json::from_value::<VersionList>(raw).map(|l| render_list(&l)),
        Action::Restore { .. } => serde_json::from_value::<Restored>(raw).map(|r| render_restored(&r)),
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: the peer's answer cannot be read: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

fn size_of(v: &SavedVersion) -> String {
    if v.kind == "symlink" { "symlink".to_owned() } else { human::size(v.size) }
}

fn then(v: &SavedVersion) -> String {
    let verb = if v.deleted { "deleted" } else { "replaced" };
    match &v.replaced_by {
        Some(by) => format!("{verb} by {}", by.label()),
        None => verb.to_owned(),
    }
}

/// The table `dartsync versions` prints.
pub fn render_list(list: &VersionList) -> String {
    if list.versions.is_empty() {
        let mut out = format!(
            "No saved versions of {} on this device ({}).\nVersions exist only on the devices that replaced or \
             deleted the file on behalf of the cluster: try `dartsync versions` on the other devices.\n",
            list.path, list.device
        );
        if !list.near.is_empty() {
            out.push_str(&format!("Saved versions here with a similar name: {}\n", list.near.join(", ")));
        }
        return out;
    }
    let rows: Vec<[String; 5]> = list
        .versions
        .iter()
        .map(|v| {
            [
                v.number.to_string(),
                utc_display(v.saved_at_ns),
                size_of(v),
                v.made_by.as_ref().map_or_else(|| "unknown".to_owned(), |d| d.label().to_owned()),
                then(v),
            ]
        })
        .collect();
    let header = ["#", "saved (UTC)", "size", "made by", "then"];
    let width = |k: usize| rows.iter().map(|r| r[k].chars().count()).chain([header[k].len()]).max().unwrap_or(0);
    let w: Vec<usize> = (0..5).map(width).collect();
    let line = |r: [&str; 5]| {
        format!(
            "{:>w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
        .trim_end()
        .to_owned()
    };
    let mut out = format!(
        "{} saved version{} of {} on {} (newest first, times in UTC):\n",
        list.versions.len(),
        if list.versions.len() == 1 { "" } else { "s" },
        list.path,
        list.device
    );
    out.push_str(&line(header));
    out.push('\n');
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        out.push('\n');
    }
    out.push_str(&format!(
        "Restore one with: dartsync restore {} --version N  (--to NEW_PATH keeps the current file)\n",
        list.path
    ));
    out
}

/// What `dartsync restore` prints.
pub fn render_restored(r: &Restored) -> String {
    let v = &r.version;
    let by = v.made_by.as_ref().map_or_else(String::new, |d| format!(", made by {}", d.label()));
    let mut out = format!(
        "Restored {} from version #{} (saved {} UTC, {}{by}).\n",
        r.path,
        v.number,
        utc_display(v.saved_at_ns),
        size_of(v)
    );
    if let Some(saved) = &r.replaced_saved_as {
        out.push_str(&format!("The file it replaced is kept in the history (.dartsync/versions/{saved}).\n"));
    }
    out.push_str("It syncs to the other devices as a new version.\n");
    out
}

#[cfg(test)]
mod tests {
    use dartsync_shared::versions::DeviceRef;

    use super::*;

    #[test]
    fn paths_resolve_against_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("sync");
        std::fs::create_dir_all(folder.join(".dartsync")).unwrap();
        std::fs::create_dir_all(folder.join("docs")).unwrap();
        let other = tmp.path().join("other");
        // Relative to the working directory, the folder found upwards.
        let got = locate(Path::new("gone.txt"), None, &other, &folder.join("docs")).unwrap();
        assert_eq!(got, (folder.clone(), "docs/gone.txt".to_owned()));
        let got = locate(&folder.join("docs/../a.txt"), None, &other, Path::new("/")).unwrap();
        assert_eq!(got, (folder.clone(), "a.txt".to_owned()));
        // --folder: relative to it.
        let got = locate(Path::new("docs/a"), Some(&folder), &other, Path::new("/")).unwrap();
        assert_eq!(got, (folder.clone(), "docs/a".to_owned()));
        // Outside.
        let err = locate(Path::new("../x"), Some(&folder), &other, Path::new("/")).unwrap_err();
        assert!(err.contains("outside the synced folder"), "{err}");
        let err = locate(Path::new("/etc/passwd"), None, &folder, Path::new("/")).unwrap_err();
        assert!(err.contains("outside the synced folder"), "{err}");
        let err = locate(Path::new("."), Some(&folder), &other, Path::new("/")).unwrap_err();
        assert!(err.contains("folder itself"), "{err}");
    }

    fn version(number: u32, secs: i64, deleted: bool) -> SavedVersion {
        SavedVersion {
            number,
            saved_at_ns: secs * 1_000_000_000,
            size: 1234,
            kind: "file".into(),
            content: None,
            made_by: (number != 3).then(|| DeviceRef { id: "000000000000000a".into(), name: Some("alice".into()) }),
            replaced_by: Some(DeviceRef { id: "000000000000000b".into(), name: None }),
            deleted,
            file: format!("a.txt~{number}"),
        }
    }

    #[test]
    fn the_table_is_numbered_newest_first() {
        let list = VersionList {
            schema: VERSIONS_SCHEMA,
            path: "docs/a.txt".into(),
            device: "bob".into(),
            versions: vec![
                version(1, 1_700_000_300, true),
                version(2, 1_700_000_000, false),
                version(3, 1_600_000_000, false),
            ],
            near: vec![],
        };
        let text = render_list(&list);
        assert_eq!(
            text,
            "3 saved versions of docs/a.txt on bob (newest first, times in UTC):\n\
             #  saved (UTC)            size  made by  then\n\
             1  2023-11-14 22:18:20  1.2 KB  alice    deleted by 000000000000000b\n\
             2  2023-11-14 22:13:20  1.2 KB  alice    replaced by 000000000000000b\n\
             3  2020-09-13 12:26:40  1.2 KB  unknown  replaced by 000000000000000b\n\
             Restore one with: dartsync restore docs/a.txt --version N  (--to NEW_PATH keeps the current file)\n"
        );
        let none = VersionList { versions: vec![], near: vec!["docs/A.txt".into()], ..list };
        let text = render_list(&none);
        assert!(text.starts_with("No saved versions of docs/a.txt on this device (bob)."), "{text}");
        assert!(text.contains("similar name: docs/A.txt"), "{text}");
    }
}
