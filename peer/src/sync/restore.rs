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
use dartsync_shared::{ContentHash, RelPath, ShortId};

use crate::jail::{Jail, JailError, rel_path};
use crate::local::LocalState;
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
    history: History,
    local: LocalState,
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
        Versions { inner: Arc::new(Inner { history, local, me, device }) }
    }

    /// The saved versions of `path`, newest first.
    pub async fn list(&self, path: &str) -> Result<VersionList, VersionsError> {
        let path = rel(path)?;
        let this = self.clone();
        let p = path.clone();
        let listed = tokio::task::spawn_blocking(move || this.listed(&p))
            .await
            .map_err(|e| VersionsError::Local(crate::local::LocalError::Task(e)))??;
        let versions = self.describe(&listed);
        let near = if versions.is_empty() { self.inner.history.near(&path) } else { Vec::new() };
        Ok(VersionList {
            schema: VERSIONS_SCHEMA,
            path: path.to_string(),
            device: self.inner.device.clone(),
            versions,
            near,
        })
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

    /// The versions of `path`, oldest first, or why there are none.
    fn listed(&self, path: &RelPath) -> Result<Vec<Listed>, VersionsError> {
        Ok(self.inner.history.list(path)?)
    }

    /// Numbers and names `listed` (oldest first) as the answer shows it:
    /// newest first, from 1.
    fn describe(&self, listed: &[Listed]) -> Vec<SavedVersion> {
        let device = |id: Option<ShortId>, recorded: Option<&String>| {
            id.map(|id| DeviceRef {
                id: id.to_string(),
                name: recorded.cloned().or_else(|| self.inner.history.name_of(id)),
            })
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
            if !self.inner.history.enabled() {
                return Err(VersionsError::Off { path: path.clone() });
            }
            let near = self.inner.history.near(path);
            let near = if near.is_empty() {
                String::new()
            } else {
                format!(" Saved versions here with a similar name: {}.", near.join(", "))
            };
            return Err(VersionsError::NoVersions { path: path.clone(), device: self.inner.device.clone(), near });
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

    fn restore_locked(
        &self,
        path: &RelPath,
        target: &RelPath,
        req: &RestoreRequest,
    ) -> Result<Restored, VersionsError> {
        let history = &self.inner.history;
        let jails = self.inner.local.jails();
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
        let replaced = self.inner.local.index().get(target)?.map(|e| e.record);
        let cause = Cause { saved: replaced.as_ref(), by: Some(self.inner.me), deleted: false };
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
