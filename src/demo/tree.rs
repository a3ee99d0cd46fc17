//! What a demo folder holds, for comparing folders after each step:
//! relative path -> folder, file (size and blake3 of the content) or
//! symlink target. The peer's own `.dartsync` is left out. File hashes are
//! cached by (size, mtime) so polling a folder with a big file is cheap.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A folder.
    Dir,
    /// A file: its size and content hash.
    File { size: u64, hash: [u8; 32] },
    /// A symlink and its target.
    Link(PathBuf),
}

/// A folder's entries by relative path (`/`-separated).
pub type Tree = BTreeMap<String, Entry>;

/// Reads folders, remembering file hashes.
#[derive(Debug, Default)]
pub struct Reader {
    cache: HashMap<PathBuf, (u64, SystemTime, [u8; 32])>,
}

impl Reader {
    /// The tree under `root` (without `root/.dartsync`).
    pub fn read(&mut self, root: &Path) -> std::io::Result<Tree> {
        let mut tree = Tree::new();
        self.walk(root, "", &mut tree)?;
        Ok(tree)
    }

    fn walk(&mut self, dir: &Path, prefix: &str, tree: &mut Tree) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix.is_empty() && name == ".dartsync" {
                continue;
            }
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Gone between the listing and the look: the next poll sees it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.file_type().is_symlink() {
                tree.insert(rel, Entry::Link(std::fs::read_link(&path)?));
            } else if meta.is_dir() {
                tree.insert(rel.clone(), Entry::Dir);
                self.walk(&path, &rel, tree)?;
            } else {
                let stamp = (meta.len(), meta.modified()?);
                let hash = match self.cache.get(&path) {
                    Some((len, mtime, hash)) if (*len, *mtime) == stamp => *hash,
                    _ => {
                        let hash = *blake3::hash(&std::fs::read(&path)?).as_bytes();
                        self.cache.insert(path, (stamp.0, stamp.1, hash));
                        hash
                    }
                };
                tree.insert(rel, Entry::File { size: stamp.0, hash });
            }
        }
        Ok(())
    }
}

/// The first difference between two trees, for a message ("bob lacks
/// docs/a.txt").
pub fn first_difference(want: &Tree, got: &Tree) -> Option<String> {
    for (path, entry) in want {
        match got.get(path) {
            None => return Some(format!("lacks {path}")),
            Some(other) if other != entry => return Some(format!("has another {path}")),
            Some(_) => {}
        }
    }
    got.keys().find(|p| !want.contains_key(*p)).map(|p| format!("has {p}, which others do not"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_compare_by_content_and_skip_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join(".dartsync")).unwrap();
            std::fs::create_dir_all(root.join("docs")).unwrap();
            std::fs::write(root.join("docs/x.txt"), b"same").unwrap();
        }
        std::fs::write(a.join(".dartsync/index"), b"only here").unwrap();
        let mut reader = Reader::default();
        let (ta, tb) = (reader.read(&a).unwrap(), reader.read(&b).unwrap());
        assert_eq!(ta, tb);
        assert_eq!(ta.len(), 2);
        std::fs::write(b.join("docs/x.txt"), b"other").unwrap();
        let tb = reader.read(&b).unwrap();
        assert_eq!(first_difference(&ta, &tb).as_deref(), Some("has another docs/x.txt"));
        std::fs::write(b.join("extra"), b"").unwrap();
        std::fs::write(b.join("docs/x.txt"), b"same").unwrap();
        let tb = reader.read(&b).unwrap();
        assert_eq!(first_difference(&ta, &tb).as_deref(), Some("has extra, which others do not"));
        assert_eq!(first_difference(&tb, &ta).as_deref(), Some("lacks extra"));
    }
}
