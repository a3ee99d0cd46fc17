//! [`RelPath`]: the only way a path from the network becomes a path on disk.
//!
//! A `RelPath` is a normalised, `/`-separated, UTF-8 path relative to a
//! synced folder. Construction validates every component, and decoding from
//! the wire goes through the same validation (`serde(try_from)`), so a
//! `RelPath` that exists is safe to join onto the folder root: it cannot be
//! absolute, cannot climb out with `..`, cannot contain NUL or a backslash,
//! cannot name anything under `.dartsync`, and respects the length limits
//! of [`crate::limits`].
//!
//! # The state directory, in any spelling
//! No component at any depth may be `.dartsync` **as a case-insensitive or
//! normalising file system sees it** ([`is_state_dir_name`]): on macOS (APFS,
//! HFS+) or a FAT/exFAT stick, `.DartSync/identity` *is* the state directory.
//! Names are compared after Unicode case folding (so `.dartſync`, with a
//! long s, counts too) and without the invisible code points HFS+ ignores
//! (the check git does for `.git`). Paths that differ only in case are
//! otherwise fine; [`case_fold_key`] lets a peer on a case-insensitive
//! file system detect them.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_NAME_LEN, MAX_PATH_LEN};

/// The name of the per-folder state directory; never synced.
pub const STATE_DIR: &str = ".dartsync";

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path starts with `/` (or is otherwise absolute).
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// A component is empty (`a//b`, trailing `/`).
    #[error("empty component in {0:?}")]
    EmptyComponent(String),
    /// A component is `.` or `..`.
    #[error("path {0:?} contains a `.` or `..` component")]
    DotComponent(String),
    /// The path contains a NUL byte.
    #[error("path {0:?} contains NUL")]
    Nul(String),
    /// The path contains a backslash.
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    /// The path contains a control character.
    #[error("path {0:?} contains a control character")]
    Control(String),
    /// A component is `.dartsync` in some spelling ([`is_state_dir_name`]).
    #[error("path {0:?} names the {STATE_DIR} state directory (letter case and invisible characters do not matter)")]
    StateDir(String),
    /// The whole path is longer than [`MAX_PATH_LEN`].
    #[error("path of {0} bytes exceeds {MAX_PATH_LEN}")]
    TooLong(usize),
    /// A component is longer than [`MAX_NAME_LEN`].
    #[error("component of {0} bytes exceeds {MAX_NAME_LEN}")]
    NameTooLong(usize),
    /// A local path is not valid UTF-8.
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(PathBuf),
    /// A local path is not inside the folder it was made relative to.
    #[error("path {path:?} is not inside {root:?}")]
    OutsideRoot {
        /// The path.
        path: PathBuf,
        /// The folder root.
        root: PathBuf,
    },
}

/// A validated path relative to a synced folder, `/`-separated.
///
/// The text is shared (`Arc<str>`, 16 bytes): a clone is a reference
/// count, not a copy, so the peer's sets and queues of paths (tens of
/// thousands while a folder syncs) cost a pointer per path on top of the
/// table that already holds each one. On the wire and in JSON it is a
/// string, decoded through the same validation as [`RelPath::new`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Arc<str>);

impl RelPath {
    /// Validates `text` as a relative path.
    pub fn new(text: &str) -> Result<Self, PathError> {
        Self::validate(text)?;
        Ok(RelPath(Arc::from(text)))
    }

    fn validate(text: &str) -> Result<(), PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        if text.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(text.len()));
        }
        if text.starts_with('/') {
            return Err(PathError::Absolute(text.to_owned()));
        }
        if text.contains('\0') {
            return Err(PathError::Nul(text.to_owned()));
        }
        if text.contains('\\') {
            return Err(PathError::Backslash(text.to_owned()));
        }
        if text.chars().any(char::is_control) {
            return Err(PathError::Control(text.to_owned()));
        }
        for component in text.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent(text.to_owned())),
                "." | ".." => return Err(PathError::DotComponent(text.to_owned())),
                c if is_state_dir_name(c) => return Err(PathError::StateDir(text.to_owned())),
                c if c.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong(c.len())),
                _ => {}
            }
        }
        Ok(())
    }

    /// The relative path of `path` inside `root` (both local paths).
    pub fn from_local(root: &Path, path: &Path) -> Result<Self, PathError> {
        let rel = path
            .strip_prefix(root)
            .map_err(|_| PathError::OutsideRoot { path: path.to_owned(), root: root.to_owned() })?;
        let mut parts = Vec::new();
        for component in rel.components() {
            match component {
                Component::Normal(part) => {
                    parts.push(part.to_str().ok_or_else(|| PathError::NotUtf8(path.to_owned()))?)
                }
                Component::CurDir => {}
                _ => return Err(PathError::DotComponent(rel.display().to_string())),
            }
        }
        Self::new(&parts.join("/"))
    }

    /// The path as `/`-separated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path on disk inside the folder `root`.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        out.extend(self.0.split('/'));
        out
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rsplit_once('/').map(|(parent, _)| RelPath(Arc::from(parent)))
    }

    /// Every proper ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        let mut current = self.parent();
        while let Some(p) = current {
            current = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::new(&format!("{}/{}", self.0, name))
    }

    /// A sibling of this path with the last component replaced, validated.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(parent) => parent.join(name),
            None => RelPath::new(name),
        }
    }

    /// True when `self` is `ancestor` or lies inside it.
    pub fn starts_with(&self, ancestor: &RelPath) -> bool {
        self.0 == ancestor.0
            || (self.0.starts_with(&*ancestor.0) && self.0.as_bytes().get(ancestor.0.len()) == Some(&b'/'))
    }
}

/// True when a file system that ignores letter case (or, like HFS+, some
/// invisible code points) would take `name` for [`STATE_DIR`]: equal to
/// `.dartsync` after Unicode case folding, ignoring the code points HFS+
/// ignores. Cheap for ASCII names (one case-insensitive comparison).
pub fn is_state_dir_name(name: &str) -> bool {
    if name.is_ascii() {
        return name.eq_ignore_ascii_case(STATE_DIR);
    }
    let mut folded = name.chars().filter(|c| !is_hfs_ignorable(*c)).flat_map(fold_char);
    STATE_DIR.chars().all(|want| folded.next() == Some(want)) && folded.next().is_none()
}

/// A key equal for two paths exactly when they differ only in letter case
/// (Unicode case folding, char by char): the path as a case-insensitive file
/// system compares it. A peer uses it to find paths that would collide on
/// such a file system (`A.txt` and `a.txt`). Unicode normalisation (NFC vs
/// NFD) is not applied.
pub fn case_fold_key(path: &RelPath) -> String {
    path.0.chars().flat_map(fold_char).collect()
}

/// Case folding of one character: upper case, then lower case. Unlike
/// `to_lowercase` alone it folds `ſ` to `s`, `ς` to `σ` and the Kelvin sign
/// to `k`, and it is context-free (no final-sigma rule); it may fold a
/// little more than the file system does (`ß` to `ss`), which only makes
/// the checks stricter.
fn fold_char(c: char) -> impl Iterator<Item = char> {
    c.to_uppercase().flat_map(char::to_lowercase)
}

/// Code points HFS+ drops when comparing names (zero-width joiners,
/// direction marks, the byte order mark), as git's `is_hfs_dotgit` lists.
fn is_hfs_ignorable(c: char) -> bool {
    matches!(c, '\u{200C}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{206A}'..='\u{206F}' | '\u{FEFF}')
}

impl TryFrom<String> for RelPath {
    type Error = PathError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::validate(&text)?;
        Ok(RelPath(Arc::from(text)))
    }
}

impl From<RelPath> for String {
    fn from(path: RelPath) -> String {
        path.0.as_ref().to_owned()
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(RelPathVisitor)
    }
}

/// Decodes a string into a [`RelPath`] through [`RelPath::new`]'s checks,
/// without an intermediate `String` when the decoder lends the text.
struct RelPathVisitor;

impl serde::de::Visitor<'_> for RelPathVisitor {
    type Value = RelPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relative path")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RelPath, E> {
        RelPath::new(text).map_err(E::custom)
    }
}

/// Sets and maps keyed by `RelPath` can be searched with a `&str`: a
/// path compares, hashes and orders exactly as its text.
impl std::borrow::Borrow<str> for RelPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want_ok: bool) {
        let got = RelPath::new(input);
        assert_eq!(got.is_ok(), want_ok, "{input:?} -> {got:?}");
        // The wire path must agree with the constructor.
        let wire: Result<RelPath, _> = RelPath::try_from(input.to_owned());
        assert_eq!(wire.is_ok(), want_ok, "wire {input:?}");
        // So must both decoders, and a path is encoded as the string it is.
        let framed = crate::codec::encode(&input.to_owned()).unwrap();
        let decoded = crate::codec::decode::<RelPath>(&framed);
        assert_eq!(decoded.is_ok(), want_ok, "bincode {input:?}");
        let json = serde_json::from_value::<RelPath>(serde_json::Value::from(input));
        assert_eq!(json.is_ok(), want_ok, "json {input:?}");
        if let Ok(path) = decoded {
            assert_eq!(crate::codec::encode(&path).unwrap(), framed);
            assert_eq!(serde_json::to_value(&path).unwrap(), serde_json::Value::from(input));
        }
    }

    #[test]
    fn hostile_inputs_are_rejected() {
        let long_name = "x".repeat(MAX_NAME_LEN + 1);
        let long_path = ["y"; 3000].join("/");
        let hostile = [
            "",
            "/",
            "/etc/passwd",
            "../../etc/passwd",
            "a/../../b",
            "a/..",
            "..",
            ".",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "..\\..\\windows",
            "a\0b",
            ".dartsync",
            ".dartsync/identity",
            "sub/.dartsync/index.redb",
            "a\nb",
            "tab\there",
            long_name.as_str(),
            long_path.as_str(),
        ];
        for input in hostile {
            check(input, false);
        }
    }

    #[test]
    fn ordinary_names_are_accepted() {
        let max_name = "n".repeat(MAX_NAME_LEN);
        let fine = [
            "a",
            "a/b/c.txt",
            "with space/file name.md",
            "ünïcödé/日本語.txt",
            ".hidden",
            "..dots..",
            "a/.dartsyncignore",
            ".dartsyncignore",
            "...",
            max_name.as_str(),
        ];
        for input in fine {
            check(input, true);
        }
    }

    #[test]
    fn the_state_dir_is_refused_in_any_spelling_at_any_depth() {
        let cases = [
            // Refused: the state directory as some file system sees it.
            (".dartsync", false),
            (".DARTSYNC/x", false),
            ("a/.DartSync/b", false),
            ("a/.dartsync", false),
            ("a/b/c/.dArTsYnC/identity", false),
            (".dart\u{017F}ync", false),            // long s folds to s
            (".DART\u{017F}YNC/index.redb", false), // both at once
            (".dart\u{200C}sync", false),           // zero-width non-joiner (HFS+ ignores it)
            ("a/\u{FEFF}.dartsync/b", false),       // byte order mark in front
            (".darts\u{200D}ync\u{206A}", false),
            // Fine: other names that merely look alike.
            ("a/.dartsyncignore", true),
            (".dartsyncx", true),
            (".dartsync.bak", true),
            ("x.dartsync", true),
            ("dartsync", true),
            (".dart sync", true),
            (".dartsyn", true),
            ("a/.DARTSYNCIGNORE", true),
            (".dart\u{0455}ync", true), // Cyrillic dze: a look-alike, not a case variant
            ("\u{FF0E}dartsync", true), // fullwidth full stop
        ];
        for (input, want_ok) in cases {
            check(input, want_ok);
            if !want_ok {
                assert!(matches!(RelPath::new(input), Err(PathError::StateDir(_))), "{input:?}");
            }
        }
    }

    #[test]
    fn case_fold_keys_match_exactly_for_case_variants() {
        let key = |p: &str| case_fold_key(&RelPath::new(p).unwrap());
        let same = [
            ("Docs/Readme.TXT", "docs/readme.txt"),
            ("ÜBER/Ärger", "über/ärger"),
            ("\u{017F}ign", "SIGN"),                                  // long s
            ("\u{03A3}\u{0391}\u{03A3}", "\u{03C3}\u{03B1}\u{03C2}"), // ΣΑΣ vs σας (final sigma)
            ("\u{212A}elvin", "kelvin"),                              // Kelvin sign
        ];
        for (a, b) in same {
            assert_eq!(key(a), key(b), "{a:?} vs {b:?}");
        }
        for (a, b) in [("a/b", "a/c"), ("a/b", "ab"), ("é", "e")] {
            assert_ne!(key(a), key(b), "{a:?} vs {b:?}");
        }
        assert_eq!(key("Docs/Readme.TXT"), "docs/readme.txt");
    }

    #[test]
    fn local_paths_are_normalised() {
        let root = Path::new("/home/u/DartSync");
        let p = RelPath::from_local(root, Path::new("/home/u/DartSync/a/b.txt")).unwrap();
        assert_eq!(p.as_str(), "a/b.txt");
        assert_eq!(p.to_local(root), PathBuf::from("/home/u/DartSync/a/b.txt"));
        assert!(RelPath::from_local(root, Path::new("/elsewhere/x")).is_err());
        assert!(RelPath::from_local(root, root).is_err());
    }

    #[test]
    fn structure_helpers() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        let anc: Vec<_> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&RelPath::new("a/b").unwrap()));
        assert_eq!(p.with_file_name("d").unwrap().as_str(), "a/b/d");
        assert!(RelPath::new("top").unwrap().parent().is_none());
    }
}
