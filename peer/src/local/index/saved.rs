//! The `saved_versions` table of the index: what this peer knows about each
//! file it moved into its version history (`.dartsync/versions`), keyed by
//! the history file's name relative to that folder. The history file name
//! holds only the path and a stamp; this row adds who made the version,
//! who replaced it, its size and content hash.
//!
//! Rows are written with lazy durability (like [`Index::write_soon`]): the
//! history file itself is fsynced before its row is written, and a row lost
//! in a crash only makes that version "unknown" in `dartsync versions`
//! (size from `stat`, time from the name). A row whose file is gone is
//! dropped by the next sweep; a row that does not decode is skipped.

use std::sync::atomic::Ordering;

use dartsync_shared::codec::{decode_stored, encode_stored};
use dartsync_shared::{ContentHash, RelPath, ShortId};
use redb::{Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Hash32, Index};
use crate::local::error::LocalError;

pub(super) const SAVED: TableDefinition<&str, &[u8]> = TableDefinition::new("saved_versions");

/// What is known about one saved version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMeta {
    /// The synced path it was saved from.
    pub path: RelPath,
    /// When it was moved into the history (ns since the Unix epoch).
    pub saved_at_ns: i64,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, when known (files only).
    pub content: Option<ContentHash>,
    /// A symlink rather than a file.
    pub symlink: bool,
    /// The device that made the version.
    pub made_by: Option<ShortId>,
    /// Its name, when known at the time.
    pub made_by_name: Option<String>,
    /// The device whose change replaced or deleted it.
    pub replaced_by: Option<ShortId>,
    /// Its name, when known at the time.
    pub replaced_by_name: Option<String>,
    /// Deleted rather than replaced.
    pub deleted: bool,
}

// ---- storage types (append variants only) ----

#[derive(Serialize, Deserialize)]
enum StoredSaved {
    V1(SavedV1),
}

#[derive(Serialize, Deserialize)]
struct SavedV1 {
    path: String,
    saved_at_ns: i64,
    size: u64,
    content: Option<Hash32>,
    symlink: bool,
    made_by: Option<u64>,
    made_by_name: Option<String>,
    replaced_by: Option<u64>,
    replaced_by_name: Option<String>,
    deleted: bool,
}

fn encode(meta: &SavedMeta) -> Result<Vec<u8>, LocalError> {
    let stored = StoredSaved::V1(SavedV1 {
        path: meta.path.as_str().to_owned(),
        saved_at_ns: meta.saved_at_ns,
        size: meta.size,
        content: meta.content.map(|c| c.0),
        symlink: meta.symlink,
        made_by: meta.made_by.map(|s| s.0),
        made_by_name: meta.made_by_name.clone(),
        replaced_by: meta.replaced_by.map(|s| s.0),
        replaced_by_name: meta.replaced_by_name.clone(),
        deleted: meta.deleted,
    });
    encode_stored(&stored).map_err(|source| LocalError::Encode { path: meta.path.clone(), source })
}

fn decode(key: &str, bytes: &[u8]) -> Option<SavedMeta> {
    let decoded = decode_stored::<StoredSaved>(bytes).ok().and_then(|StoredSaved::V1(v)| {
        Some(SavedMeta {
            path: RelPath::new(&v.path).ok()?,
            saved_at_ns: v.saved_at_ns,
            size: v.size,
            content: v.content.map(ContentHash),
            symlink: v.symlink,
            made_by: v.made_by.map(ShortId),
            made_by_name: v.made_by_name,
            replaced_by: v.replaced_by.map(ShortId),
            replaced_by_name: v.replaced_by_name,
            deleted: v.deleted,
        })
    });
    if decoded.is_none() {
        tracing::debug!(key, "skipping an unreadable saved-version row");
    }
    decoded
}

impl Index {
    /// Records `meta` for the history file `name` (lazily durable).
    pub(crate) fn put_saved(&self, name: &str, meta: &SavedMeta) -> Result<(), LocalError> {
        let bytes = encode(meta)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(SAVED)?.insert(name, bytes.as_slice())?;
        txn.commit()?;
        self.lazy.unflushed.store(true, Ordering::Release);
        self.lazy.wanted.notify_one();
        Ok(())
    }

    /// The rows whose history file name starts with `prefix` (every row
    /// for `""`), in name order.
    pub(crate) fn saved_with_prefix(&self, prefix: &str) -> Result<Vec<(String, SavedMeta)>, LocalError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SAVED)?;
        let mut out = Vec::new();
        for item in table.range::<&str>(prefix..)? {
            let (key, value) = item?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(meta) = decode(key, value.value()) {
                out.push((key.to_owned(), meta));
            }
        }
        Ok(out)
    }

    /// Forgets the rows of the history files `names` (lazily durable).
    pub(crate) fn remove_saved(&self, names: &[String]) -> Result<(), LocalError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(SAVED)?;
            for name in names {
                table.remove(name.as_str())?;
            }
        }
        txn.commit()?;
        self.lazy.unflushed.store(true, Ordering::Release);
        self.lazy.wanted.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_rows_round_trip_by_prefix_and_go() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        let meta = SavedMeta {
            path: RelPath::new("docs/a.txt").unwrap(),
            saved_at_ns: 1_700_000_000_123_456_789,
            size: 42,
            content: Some(ContentHash::of(b"x")),
            symlink: false,
            made_by: Some(ShortId(7)),
            made_by_name: Some("alice".into()),
            replaced_by: Some(ShortId(9)),
            replaced_by_name: None,
            deleted: true,
        };
        index.put_saved("docs/a.txt~20231114-221320.123456789", &meta).unwrap();
        let other = SavedMeta { path: RelPath::new("docs/a.txt.bak").unwrap(), ..meta.clone() };
        index.put_saved("docs/a.txt.bak~20231114-221320.000000000", &other).unwrap();
        let rows = index.saved_with_prefix("docs/a.txt~").unwrap();
        assert_eq!(rows, vec![("docs/a.txt~20231114-221320.123456789".to_owned(), meta.clone())]);
        assert_eq!(index.saved_with_prefix("").unwrap().len(), 2);
        // Survives a reopen.
        drop(index);
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        assert_eq!(index.saved_with_prefix("docs/").unwrap().len(), 2);
        index.remove_saved(&["docs/a.txt~20231114-221320.123456789".to_owned()]).unwrap();
        assert!(index.saved_with_prefix("docs/a.txt~").unwrap().is_empty());
        // A row that does not decode is skipped, not an error.
        let txn = index.db.begin_write().unwrap();
        txn.open_table(SAVED).unwrap().insert("docs/b~1", &b"junk"[..]).unwrap();
        txn.commit().unwrap();
        assert_eq!(index.saved_with_prefix("docs/").unwrap().len(), 1);
    }
}
