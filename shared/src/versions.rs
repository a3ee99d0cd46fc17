//! The version-history model: what `dartsync versions` and `dartsync
//! restore` receive from a peer's control socket (schema
//! [`VERSIONS_SCHEMA`], JSON), shared by the peer that builds it and the
//! CLI that renders it. Pure data; no file system here.

use serde::{Deserialize, Serialize};

/// Layout version of [`VersionList`] and [`Restored`].
pub const VERSIONS_SCHEMA: u32 = 1;

/// A device as a version names it: the short id of its version-vector
/// entry, and its name when this peer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The device's short id (16 hex digits, its version-vector key).
    pub id: String,
    /// Its name, when known.
    pub name: Option<String>,
}

impl DeviceRef {
    /// The name, else the id.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// One saved version of a path, as kept on the answering device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVersion {
    /// 1 for the newest, counting back.
    pub number: u32,
    /// When this device moved it into its history (ns since the Unix
    /// epoch, this device's clock).
    pub saved_at_ns: i64,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// `"file"` or `"symlink"`.
    pub kind: String,
    /// blake3 of the content (hex), when recorded.
    pub content: Option<String>,
    /// The device that made this version (`None`: unknown, e.g. a version
    /// saved by an older release).
    pub made_by: Option<DeviceRef>,
    /// The device whose change replaced or deleted it, when recorded.
    pub replaced_by: Option<DeviceRef>,
    /// It was deleted (rather than replaced by newer content).
    pub deleted: bool,
    /// The history file, relative to `.dartsync/versions`.
    pub file: String,
}

/// The answer to `versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionList {
    /// [`VERSIONS_SCHEMA`].
    pub schema: u32,
    /// The path, relative to the synced folder.
    pub path: String,
    /// The answering device's name (versions are per device).
    pub device: String,
    /// Newest first.
    pub versions: Vec<SavedVersion>,
    /// When there are none: other paths with saved versions and a similar
    /// name (at most a few).
    pub near: Vec<String>,
}

/// The answer to `restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// [`VERSIONS_SCHEMA`].
    pub schema: u32,
    /// The path written, relative to the synced folder.
    pub path: String,
    /// The version put there.
    pub version: SavedVersion,
    /// Where the content it replaced went in the history (relative to
    /// `.dartsync/versions`), if there was any.
    pub replaced_saved_as: Option<String>,
}
