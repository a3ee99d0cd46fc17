//! Key material on disk: the cluster key and a node's static identity.
//!
//! The **cluster key** is 32 random bytes shared by every tracker and peer
//! of one cluster (the Noise pre-shared key); `dartsync init` creates it.
//! An **identity** is a node's x25519 static keypair; its public half is
//! the node's [`PublicKey`] and so its [`crate::id::PeerId`].
//!
//! Both are stored as lowercase hex text, written atomically with mode
//! 0600 and never overwritten silently. Reading checks the format and
//! refuses files that other users can read.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::hex;
use crate::id::PublicKey;

/// Why key material could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// The file exists and would be overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// The path names a directory, not a key file.
    #[error("the {what} {} is a directory; {hint}", path.display())]
    IsDirectory {
        /// The path.
        path: PathBuf,
        /// Which file was expected ("key file", "identity file").
        what: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// The file is readable by other users.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_owned(), source }
}

/// 64 hex digits of either case, surrounding whitespace ignored (key files
/// may have been edited by hand).
fn from_hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode32(text.trim())
}

/// Writes `contents` to `path` atomically with mode 0600, failing if the
/// file already exists.
fn write_secret_file(path: &Path, contents: &str, kind: Kind) -> Result<(), KeyError> {
    kind.refuse_directory(path)?;
    if path.exists() {
        return Err(KeyError::Exists(path.to_owned()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp-new");
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    // hard_link fails if the target exists: no race with a concurrent init.
    let linked = fs::hard_link(&tmp, path);
    // Best effort: a stray temp file is overwritten by the next attempt.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(KeyError::Exists(path.to_owned())),
        // No hard links on this file system (vfat, exFAT): create the file
        // exclusively instead, which refuses an existing one just the same.
        Err(_) => write_new_file(path, contents),
    }
}

/// Creates `path` (mode 0600, failing if it exists) holding `contents`,
/// fsynced.
fn write_new_file(path: &Path, contents: &str) -> Result<(), KeyError> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            KeyError::Io { path: path.to_owned(), source: e }
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Which secret a file holds, for [`KeyError::IsDirectory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The cluster key (`--key-file`).
    ClusterKey,
    /// A node's identity.
    Identity,
}

impl Kind {
    /// [`KeyError::IsDirectory`] for `path`.
    fn is_directory(self, path: &Path) -> KeyError {
        let (what, hint) = match self {
            Kind::ClusterKey => ("key file", "pass the key file itself with --key-file"),
            Kind::Identity => ("identity file", "move that directory away so a new identity can be created"),
        };
        KeyError::IsDirectory { path: path.to_owned(), what, hint }
    }

    /// Fails with [`KeyError::IsDirectory`] if `path` is a directory
    /// (following symlinks).
    fn refuse_directory(self, path: &Path) -> Result<(), KeyError> {
        if path.is_dir() { Err(self.is_directory(path)) } else { Ok(()) }
    }
}

/// How strictly [`read_secret_file`] treats a file others may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrecy {
    /// Refuse it ([`KeyError::TooOpen`]): the cluster key.
    Strict,
    /// Tighten it to 0600; if the file system keeps no permission bits
    /// (vfat, exFAT), accept it with a warning: a node identity living in
    /// a synced folder on such a stick.
    TightenOrWarn,
}

fn read_secret_file(path: &Path, secrecy: Secrecy, kind: Kind) -> Result<String, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        return Err(kind.is_directory(path));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if secrecy == Secrecy::Strict {
            return Err(KeyError::TooOpen { path: path.to_owned(), mode });
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
        let now = fs::metadata(path).map_err(io_err(path))?.permissions().mode() & 0o777;
        if now & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by others (mode {now:o}) and its file system keeps no permission bits; \
                 mount it with umask=077 to keep this device's identity private",
                path.display()
            );
        }
    }
    if meta.len() > 4096 {
        return Err(KeyError::Malformed { path: path.to_owned(), what: "file too large for a key" });
    }
    fs::read_to_string(path).map_err(io_err(path))
}

/// The 32-byte pre-shared key of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        ClusterKey(key)
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// The raw bytes, for the Noise handshake.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, non-secret fingerprint (first 8 hex digits of blake3 of the
    /// key), for logs and for checking two machines share a key.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::hash(&self.0);
        hex::encode(&hash.as_bytes()[..4])
    }

    /// The publishable fingerprint trackers announce on the LAN (`fp=`):
    /// the first 16 bytes of `blake3::derive_key("dartsync cluster
    /// discovery fingerprint v1", key)`. Neither the key nor the 4-byte
    /// [`ClusterKey::fingerprint`] of the logs can be computed from it.
    pub fn discovery_fingerprint(&self) -> crate::discovery::DiscoveryFingerprint {
        crate::discovery::DiscoveryFingerprint::of_key(&self.0)
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret_file(path, Secrecy::Strict, Kind::ClusterKey)?;
        from_hex32(&text).map(ClusterKey).ok_or_else(|| KeyError::Malformed {
            path: path.to_owned(),
            what: "expected 64 hex digits (a key written by `dartsync init`)",
        })
    }

    /// Writes the key to a new file with mode 0600.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &format!("{}\n", hex::encode(&self.0)), Kind::ClusterKey)
    }

    /// Fails with [`KeyError::IsDirectory`] if `path` is a directory: a
    /// check before replacing a key file (`init --force`).
    pub fn refuse_directory(path: &Path) -> Result<(), KeyError> {
        Kind::ClusterKey.refuse_directory(path)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(fingerprint {})", self.fingerprint())
    }
}

/// A node's static x25519 keypair.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    public: PublicKey,
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Self {
        let builder = snow::Builder::new(crate::noise::params());
        let pair = builder.generate_keypair().expect("x25519 key generation cannot fail with the default resolver");
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&pair.private);
        let public = PublicKey::from_slice(&pair.public).expect("x25519 public keys are 32 bytes");
        Identity { secret, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half, for the Noise handshake.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The peer id of this identity.
    pub fn peer_id(&self) -> crate::id::PeerId {
        self.public.peer_id()
    }

    /// Reads an identity file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret_file(path, Secrecy::TightenOrWarn, Kind::Identity)?;
        let malformed = || KeyError::Malformed { path: path.to_owned(), what: "expected two lines of 64 hex digits" };
        let mut lines = text.lines();
        let secret = lines.next().and_then(from_hex32).ok_or_else(malformed)?;
        let public = lines.next().and_then(from_hex32).ok_or_else(malformed)?;
        Ok(Identity { secret, public: PublicKey(public) })
    }

    /// Writes the identity to a new file with mode 0600.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(
            path,
            &format!("{}\n{}\n", hex::encode(&self.secret), hex::encode(&self.public.0)),
            Kind::Identity,
        )
    }

    /// Loads the identity at `path`, creating it first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let identity = Self::generate();
        match identity.save_new(path) {
            Ok(()) => Ok(identity),
            // Someone else created it in between: use theirs.
            Err(KeyError::Exists(_)) => Self::load(path),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_key_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cluster.key");
        let key = ClusterKey::generate();
        key.save_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterKey::load(&path).unwrap(), key);
        assert!(matches!(key.save_new(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn the_discovery_fingerprint_is_neither_the_key_nor_the_log_fingerprint() {
        let key = ClusterKey::from_bytes([7; 32]);
        let fp = key.discovery_fingerprint().to_string();
        assert_eq!(fp.len(), 32);
        assert!(!fp.starts_with(&key.fingerprint()));
        assert!(!hex::encode(key.as_bytes()).contains(&fp[..8]));
        assert_eq!(fp, ClusterKey::from_bytes([7; 32]).discovery_fingerprint().to_string());
    }

    #[test]
    fn a_directory_is_not_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let expected =
            format!("the key file {} is a directory; pass the key file itself with --key-file", path.display());
        let loaded = ClusterKey::load(path).unwrap_err();
        assert!(matches!(loaded, KeyError::IsDirectory { .. }), "{loaded:?}");
        assert_eq!(loaded.to_string(), expected);
        assert_eq!(ClusterKey::generate().save_new(path).unwrap_err().to_string(), expected);
        assert_eq!(ClusterKey::refuse_directory(path).unwrap_err().to_string(), expected);
        assert!(ClusterKey::refuse_directory(&path.join("missing.key")).is_ok());
        assert!(matches!(Identity::load_or_create(path), Err(KeyError::IsDirectory { what: "identity file", .. })));
    }

    #[test]
    fn malformed_or_open_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "not hex").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(ClusterKey::load(&path), Err(KeyError::Malformed { .. })));
        fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&path), Err(KeyError::TooOpen { .. })));
    }

    #[test]
    fn an_open_identity_file_is_tightened_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let identity = Identity::generate();
        identity.save_new(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Identity::load(&path).unwrap().peer_id(), identity.peer_id());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn without_hard_links_a_key_file_is_created_exclusively() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_file(&path, "x\n").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(write_new_file(&path, "y\n"), Err(KeyError::Exists(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), "x\n");
    }

    #[test]
    fn hand_edited_key_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, format!("  {}\r\n\n", "AB".repeat(32))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap(), ClusterKey::from_bytes([0xab; 32]));
    }

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(a.secret(), b.secret());
    }
}
