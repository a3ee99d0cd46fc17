//! `dartsync versions` and `dartsync restore`, peer side: lists the saved
//! versions of a path (newest first, numbered from 1) and puts one back.
//!
//! A restore is an ordinary local change: under the commit lock, the saved
//! copy is copied (through the jails, never following a symlink) into a
//! temp file in `.dartsync/tmp`, checked against its recorded hash, and
//! renamed into place at the path (or `--to`), after the file it replaces
//! was kept in the history. The watcher sees the rename into place (which
//! certifies the file complete) and the scanner is told too, so it is
//! announced at once as a new version that syncs everywhere. Nothing here
//! talks to the tracker.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dartsync_shared::time::{parse_user_time, utc_display};
use dartsync_shared::versions::{DeviceRef, Restored, SavedVersion, VERSIONS_SCHEMA, VersionList};
use dartsync_shared::{ContentHash, FileRecord, RelPath, ShortId};

use crate::jail::{Jail, JailError, rel_path};
use crate::local::LocalState;
use crate::local::dirs::Jails;
use crate::sync::error::VersionsError;
use crate::sync::history::{Cause, History, Listed, now_ns};

/// Mode of parent folders a restore has to create.
const PARENT_MODE: u32 = 0o755;

/// What a `restore` request asks.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// The path whose versions to choose from.
    pub path: String,
    /// The version saved at this time (or else the newest before it).
    pub at: Option<String>,
    /// The version's number (1 = newest).
    pub version: Option<u32>,
    /// Write it here instead of at `path`.
    pub to: Option<String>,
    /// Replace what is at `to`.
    pub force: bool,
}

/// Serves `versions` and `restore` for one folder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Versions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Core,
    local: LocalState,
}

/// Everything but the running folder's state: the history, and this
/// device's id and name (unit tests build one without a [`LocalState`]).
#[derive(Debug)]
struct Core {
    history: History,
    me: ShortId,
    device: String,
}

fn rel(path: &str) -> Result<RelPath, VersionsError> {
    let trimmed = path.trim_start_matches("./").trim_end_matches('/');
    RelPath::new(trimmed).map_err(|e| VersionsError::InvalidPath { path: path.to_owned(), why: e.to_string() })
}

impl Versions {
    /// Versions of the folder of `local`, kept by `history`; `me` and
    /// `device` are this device's id and name.
    pub(crate) fn new(history: History, local: LocalState, me: ShortId, device: String) -> Versions {
        Versions { inner: Arc::new(Inner { core: Core { history, me, device }, local }) }
    }

    /// The saved versions of `path`, newest first.
    pub async fn list(&self, path: &str) -> Result<VersionList, VersionsError> {
        let path = rel(path)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.inner.core.list(&path))
            .await
            .map_err(|e| VersionsError::Local(crate::local::LocalError::Task(e)))?
    }

    /// Restores one saved version (see the module header).
    pub async fn restore(&self, req: RestoreRequest) -> Result<Restored, VersionsError> {
        let path = rel(&req.path)?;
        let target = match &req.to {
            Some(to) => rel(to)?,
            None => path.clone(),
        };
        let this = self.clone();
        let (p, t) = (path.clone(), target.clone());
        let restored = self.inner.local.with_commit_lock(move || this.restore_locked(&p, &t, &req)).await??;
        self.inner.local.mark_dirty(&target);
        tracing::info!("restored {} to {target} (saved {} UTC)", path, utc_display(restored.version.saved_at_ns));
        Ok(restored)
    }

    fn restore_locked(
        &self,
        path: &RelPath,
        target: &RelPath,
        req: &RestoreRequest,
    ) -> Result<Restored, VersionsError> {
        let replaced = self.inner.local.index().get(target)?.map(|e| e.record);
        self.inner.core.restore_in(self.inner.local.jails(), replaced.as_ref(), path, target, req)
    }
}

impl Core {
    /// The answer to `versions`.
    fn list(&self, path: &RelPath) -> Result<VersionList, VersionsError> {
        let versions = self.describe(&self.listed(path)?);
        let near = if versions.is_empty() { self.history.near(path) } else { Vec::new() };
        Ok(VersionList { schema: VERSIONS_SCHEMA, path: path.to_string(), device: self.device.clone(), versions, near })
    }

    /// The versions of `path`, oldest first, or why there are none.
    fn listed(&self, path: &RelPath) -> Result<Vec<Listed>, VersionsError> {
        Ok(self.history.list(path)?)
    }

    /// Numbers and names `listed` (oldest first) as the answer shows it:
    /// newest first, from 1.
    fn describe(&self, listed: &[Listed]) -> Vec<SavedVersion> {
        let device = |id: Option<ShortId>, recorded: Option<&String>| {
            id.map(|id| DeviceRef { id: id.to_string(), name: recorded.cloned().or_else(|| self.history.name_of(id)) })
        };
        listed
            .iter()
            .rev()
            .enumerate()
            .map(|(i, l)| SavedVersion {
                number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                saved_at_ns: l.saved_at_ns,
                size: l.size,
                kind: if l.symlink { "symlink" } else { "file" }.to_owned(),
                content: l.meta.as_ref().and_then(|m| m.content).map(|c| c.to_hex()),
                made_by: l.meta.as_ref().and_then(|m| device(m.made_by, m.made_by_name.as_ref())),
                replaced_by: l.meta.as_ref().and_then(|m| device(m.replaced_by, m.replaced_by_name.as_ref())),
                deleted: l.meta.as_ref().is_some_and(|m| m.deleted),
                file: l.file.to_string_lossy().into_owned(),
            })
            .collect()
    }

    /// Picks the version `req` asks for among `listed` (oldest first).
    fn choose(&self, path: &RelPath, listed: &[Listed], req: &RestoreRequest) -> Result<usize, VersionsError> {
        let n = listed.len();
        if n == 0 {
            if !self.history.enabled() {
                return Err(VersionsError::Off { path: path.clone() });
            }
            let near = self.history.near(path);
            let near = if near.is_empty() {
                String::new()
            } else {
                format!(" Saved versions here with a similar name: {}.", near.join(", "))
            };
            return Err(VersionsError::NoVersions { path: path.clone(), device: self.device.clone(), near });
        }
        if let Some(number) = req.version {
            let k = usize::try_from(number).unwrap_or(usize::MAX);
            if k == 0 || k > n {
                return Err(VersionsError::NoSuchNumber { path: path.clone(), number, count: n });
            }
            return Ok(n - k);
        }
        let Some(at) = &req.at else { return Ok(n - 1) };
        let span = parse_user_time(at).map_err(VersionsError::BadTime)?;
        let inside: Vec<usize> = (0..n).filter(|&i| span.contains(listed[i].saved_at_ns)).collect();
        match inside.as_slice() {
            [one] => Ok(*one),
            [] => {
                (0..n).rev().find(|&i| listed[i].saved_at_ns < span.start_ns).ok_or_else(|| VersionsError::NothingAt {
                    path: path.clone(),
                    at: at.clone(),
                    oldest: utc_display(listed[0].saved_at_ns),
                })
            }
            many => Err(VersionsError::Ambiguous {
                path: path.clone(),
                at: at.clone(),
                candidates: many
                    .iter()
                    .rev()
                    .map(|&i| format!("#{} ({})", n - i, utc_display(listed[i].saved_at_ns)))
                    .collect(),
            }),
        }
    }

    /// The restore itself, in `jails`; `replaced` is the indexed record of
    /// what is at `target`.
    fn restore_in(
        &self,
        jails: &Jails,
        replaced: Option<&FileRecord>,
        path: &RelPath,
        target: &RelPath,
        req: &RestoreRequest,
    ) -> Result<Restored, VersionsError> {
        let history = &self.history;
        let listed = self.listed(path)?;
        let index = self.choose(path, &listed, req)?;
        let chosen = &listed[index];
        let version = self.describe(&listed).swap_remove(listed.len() - 1 - index);
        let trel = rel_path(target);
        match jails.folder.lstat(trel)? {
            Some(meta) if meta.is_dir() => return Err(VersionsError::FolderInTheWay { path: target.clone() }),
            Some(_) if req.to.is_some() && target != path && !req.force => {
                return Err(VersionsError::Exists { path: target.clone() });
            }
            _ => {}
        }
        if let Some(parent) = trel.parent().filter(|p| !p.as_os_str().is_empty()) {
            jails.folder.create_dir_all(parent, PARENT_MODE)?;
        }
        let cause = Cause { saved: replaced, by: Some(self.me), ..Cause::default() };
        let saved_as = if chosen.symlink {
            let link_target = history.jail().read_link(&chosen.file)?;
            let saved = history.preserve(&jails.folder, target, cause)?;
            jails.folder.create_symlink(trel, &link_target)?;
            saved
        } else {
            let temp = PathBuf::from(format!("restore-{}.tmp", now_ns()));
            history.jail().copy_to(&chosen.file, &jails.tmp, &temp)?;
            let installed = (|| {
                if let Some(want) = chosen.meta.as_ref().and_then(|m| m.content)
                    && hash_of(&jails.tmp, &temp)? != want
                {
                    return Err(VersionsError::Damaged { file: chosen.file.display().to_string() });
                }
                let mode = history.jail().lstat(&chosen.file)?.map_or(0o644, |m| m.mode & 0o777);
                let saved = history.preserve(&jails.folder, target, cause)?;
                jails.folder.install_file(trel, &jails.tmp, &temp, mode, std::time::SystemTime::now())?;
                Ok(saved)
            })();
            if installed.is_err() {
                // Best effort: the error at hand is the one to report.
                let _ = jails.tmp.remove_file(&temp);
            }
            installed?
        };
        let strip = |p: PathBuf| p.strip_prefix(history.jail().root()).map(Path::to_path_buf).unwrap_or(p);
        Ok(Restored {
            schema: VERSIONS_SCHEMA,
            path: target.to_string(),
            version,
            replaced_saved_as: saved_as.map(|p| strip(p).to_string_lossy().into_owned()),
        })
    }
}

/// blake3 of the regular file `rel` in `jail`.
fn hash_of(jail: &Jail, rel: &Path) -> Result<ContentHash, JailError> {
    let mut file = jail.open_read(rel)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| JailError::Io { op: "read", path: rel.to_owned(), source })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(ContentHash(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use dartsync_shared::config::VersionsPolicy;

    use super::*;
    use crate::local::index::Index;

    fn setup() -> (tempfile::TempDir, Jails, Core) {
        let root = tempfile::tempdir().unwrap();
        for dir in [".dartsync/tmp", ".dartsync/versions"] {
            fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let jails = Jails {
            folder: Arc::new(Jail::open(root.path()).unwrap()),
            tmp: Arc::new(Jail::open(&root.path().join(".dartsync/tmp")).unwrap()),
            versions: Arc::new(Jail::open(&root.path().join(".dartsync/versions")).unwrap()),
        };
        let index = Index::open(&root.path().join(".dartsync/index.redb")).unwrap();
        let history = History::new(jails.versions.clone(), index, VersionsPolicy::default());
        (root, jails, Core { history, me: ShortId(1), device: "here".into() })
    }

    #[test]
    fn restores_in_place_and_refuses_symlinked_parents() {
        let (root, jails, core) = setup();
        let path = RelPath::new("docs/a.txt").unwrap();
        fs::create_dir_all(root.path().join("docs")).unwrap();
        fs::write(root.path().join("docs/a.txt"), "old").unwrap();
        core.history.save(&jails.folder, &path, Cause::default()).unwrap();
        fs::write(root.path().join("docs/a.txt"), "new").unwrap();
        let req = RestoreRequest { path: "docs/a.txt".into(), ..RestoreRequest::default() };
        let done = core.restore_in(&jails, None, &path, &path, &req).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("docs/a.txt")).unwrap(), "old");
        assert!(done.replaced_saved_as.is_some(), "the replaced file goes to the history first");
        assert_eq!(core.list(&path).unwrap().versions.len(), 2);
        // --to onto an existing file needs --force.
        let to = RelPath::new("docs/b.txt").unwrap();
        fs::write(root.path().join("docs/b.txt"), "b").unwrap();
        let req = RestoreRequest { to: Some("docs/b.txt".into()), ..req };
        assert!(matches!(core.restore_in(&jails, None, &path, &to, &req), Err(VersionsError::Exists { .. })));

        // A parent replaced by a symlink to somewhere outside: refused,
        // nothing written there.
        let outside = tempfile::tempdir().unwrap();
        fs::remove_dir_all(root.path().join("docs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("docs")).unwrap();
        let err = core.restore_in(&jails, None, &path, &path, &RestoreRequest::default()).unwrap_err();
        assert!(matches!(err, VersionsError::Jail(JailError::SymlinkInPath { .. })), "{err}");
        let elsewhere = RelPath::new("docs/new.txt").unwrap();
        let req = RestoreRequest { to: Some("docs/new.txt".into()), ..RestoreRequest::default() };
        let err = core.restore_in(&jails, None, &path, &elsewhere, &req).unwrap_err();
        assert!(matches!(err, VersionsError::Jail(JailError::SymlinkInPath { .. })), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "something was written outside");
        assert_eq!(fs::read_dir(root.path().join(".dartsync/tmp")).unwrap().count(), 0, "temp file left behind");
    }

    #[test]
    fn choosing_by_number_and_time() {
        let (root, jails, core) = setup();
        let path = RelPath::new("f").unwrap();
        for body in ["1", "2", "3"] {
            fs::write(root.path().join("f"), body).unwrap();
            core.history.save(&jails.folder, &path, Cause::default()).unwrap();
        }
        let listed = core.listed(&path).unwrap();
        let pick = |req: RestoreRequest| core.choose(&path, &listed, &req);
        assert_eq!(pick(RestoreRequest::default()).unwrap(), 2, "the newest by default");
        assert_eq!(pick(RestoreRequest { version: Some(3), ..Default::default() }).unwrap(), 0);
        assert!(matches!(
            pick(RestoreRequest { version: Some(4), ..Default::default() }),
            Err(VersionsError::NoSuchNumber { .. })
        ));
        let stamp = |i: usize| utc_display(listed[i].saved_at_ns);
        let exact = format!("{}.{:09}", stamp(1), listed[1].saved_at_ns.rem_euclid(1_000_000_000));
        assert_eq!(pick(RestoreRequest { at: Some(exact), ..Default::default() }).unwrap(), 1);
        let day = stamp(0)[..10].to_owned();
        assert!(matches!(
            pick(RestoreRequest { at: Some(day), ..Default::default() }),
            Err(VersionsError::Ambiguous { .. })
        ));
        assert!(matches!(
            pick(RestoreRequest { at: Some("1999-01-01".into()), ..Default::default() }),
            Err(VersionsError::NothingAt { .. })
        ));
        assert!(matches!(
            pick(RestoreRequest { at: Some("soon".into()), ..Default::default() }),
            Err(VersionsError::BadTime(_))
        ));
        let none = core.choose(&RelPath::new("g").unwrap(), &[], &RestoreRequest::default()).unwrap_err();
        assert!(none.to_string().contains("no saved versions of g on this device (here)"), "{none}");
    }
}
