//! The tracker's identity, pinned at first contact ("trust on first use").
//!
//! Every cluster member holds the cluster key, so the key alone cannot tell
//! the tracker from any other key holder. The Noise handshake also proves
//! the remote's static key; the first tracker that answers a `Register`
//! with a `Welcome` is remembered in `.dartsync/tracker.pin`, and every
//! later session (the tracker client's, the first start's piece-length
//! probe, the liveness check) refuses a tracker with another key, before
//! sending it anything, with [`PinError::Mismatch`], whose text says how to
//! reset the pin.
//!
//! # File
//! Text, mode 0600, written atomically (temp file, fsync, rename, fsync of
//! `.dartsync/`): `#` comment lines for a reader (the tracker's peer id),
//! then the tracker's x25519 public key as 64 hex digits. The file is read
//! again on every check, so it is the only truth: deleting it trusts the
//! next tracker that answers. A file that does not parse is refused (the
//! peer does not guess), with a message saying to delete it.
//!
//! Blocking file I/O; the async wrappers run it on the blocking pool.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use dartsync_shared::PeerId;
use dartsync_shared::hex;
use dartsync_shared::id::PublicKey;

/// Larger files are not a pin.
const MAX_PIN_FILE: u64 = 4096;

/// Why the tracker's identity could not be checked or remembered.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The tracker proved another key than the pinned one.
    #[error(
        "the tracker at {addr} is {found} but this folder trusts {trusted} (pinned at first contact in {}); \
         if the tracker was reinstalled on purpose, delete that file and restart",
        file.display()
    )]
    Mismatch {
        /// The tracker address dialled.
        addr: String,
        /// The id the tracker proved in the handshake.
        found: PeerId,
        /// The pinned id.
        trusted: PeerId,
        /// The pin file.
        file: PathBuf,
    },
    /// The pin file exists but could not be read.
    #[error("cannot read the tracker pin {}: {source}", file.display())]
    Read {
        /// The pin file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The pin file does not hold a pin.
    #[error(
        "{} is not a tracker pin ({what}); delete it and restart to trust the tracker that answers next",
        file.display()
    )]
    Malformed {
        /// The pin file.
        file: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// The pin could not be written.
    #[error("cannot remember the tracker's identity in {}: {source}", file.display())]
    Write {
        /// The pin file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The blocking task running the file I/O failed.
    #[error("tracker pin task failed: {0}")]
    Task(String),
}

/// What a check against the pin found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// The key is the pinned one.
    Pinned,
    /// Nothing is pinned yet: first contact.
    FirstContact,
}

/// The pin file of one folder. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrackerPin {
    file: PathBuf,
}

impl TrackerPin {
    /// The pin stored in `file` (`.dartsync/tracker.pin`).
    pub(crate) fn new(file: PathBuf) -> Self {
        TrackerPin { file }
    }

    /// The pin file.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The pinned key, `None` if nothing is pinned yet.
    pub(crate) fn load(&self) -> Result<Option<PublicKey>, PinError> {
        let read = |source| PinError::Read { file: self.file.clone(), source };
        let meta = match fs::metadata(&self.file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let malformed = |what| PinError::Malformed { file: self.file.clone(), what };
        if !meta.is_file() {
            return Err(malformed("not a regular file"));
        }
        if meta.len() > MAX_PIN_FILE {
            return Err(malformed("too large"));
        }
        let text = fs::read_to_string(&self.file).map_err(read)?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| malformed("no key in it"))?;
        hex::decode32(line).map(PublicKey).map(Some).ok_or_else(|| malformed("expected 64 hex digits"))
    }

    /// Checks the key a tracker at `addr` proved against the pin.
    pub(crate) fn check(&self, addr: &str, found: &PublicKey) -> Result<Trust, PinError> {
        match self.load()? {
            None => Ok(Trust::FirstContact),
            Some(trusted) if trusted == *found => Ok(Trust::Pinned),
            Some(trusted) => Err(PinError::Mismatch {
                addr: addr.to_owned(),
                found: found.peer_id(),
                trusted: trusted.peer_id(),
                file: self.file.clone(),
            }),
        }
    }

    /// Pins `key` unless a pin exists (then checks against it, so two
    /// sessions racing at first contact cannot pin two trackers).
    pub(crate) fn pin(&self, addr: &str, key: &PublicKey) -> Result<Trust, PinError> {
        if self.check(addr, key)? == Trust::Pinned {
            return Ok(Trust::Pinned);
        }
        self.write(key)?;
        Ok(Trust::FirstContact)
    }

    /// Pins `key`, replacing any pin: the device just joined this tracker
    /// with an invite code, which proved the tracker's key directly.
    pub(crate) fn replace(&self, key: &PublicKey) -> Result<(), PinError> {
        self.write(key)
    }

    /// Writes the pin atomically with mode 0600.
    fn write(&self, key: &PublicKey) -> Result<(), PinError> {
        let write_err = |source| PinError::Write { file: self.file.clone(), source };
        let mut tmp_name = self.file.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = self.file.with_file_name(tmp_name);
        let text = format!(
            "# The DartSync tracker this folder trusts (tracker id {}), pinned at first contact\n\
             # (or when this device joined it with an invite code).\n\
             # If the tracker was reinstalled on purpose, delete this file and restart the peer.\n\
             {}\n",
            key.peer_id(),
            hex::encode(&key.0)
        );
        let written: std::io::Result<()> = (|| {
            let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &self.file)?;
            if let Some(dir) = self.file.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            // Best effort: a stray temp file is overwritten next time.
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(write_err)
    }

    /// [`TrackerPin::check`] on the blocking pool.
    pub(crate) async fn check_async(&self, addr: &str, found: PublicKey) -> Result<Trust, PinError> {
        let (pin, addr) = (self.clone(), addr.to_owned());
        tokio::task::spawn_blocking(move || pin.check(&addr, &found))
            .await
            .map_err(|e| PinError::Task(e.to_string()))?
    }

    /// [`TrackerPin::pin`] on the blocking pool.
    pub(crate) async fn pin_async(&self, addr: &str, key: PublicKey) -> Result<Trust, PinError> {
        let (pin, addr) = (self.clone(), addr.to_owned());
        tokio::task::spawn_blocking(move || pin.pin(&addr, &key)).await.map_err(|e| PinError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::key::Identity;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, TrackerPin) {
        let dir = tempfile::tempdir().unwrap();
        let pin = TrackerPin::new(dir.path().join("tracker.pin"));
        (dir, pin)
    }

    #[test]
    fn first_contact_pins_and_later_sessions_are_checked() {
        let (_dir, pin) = setup();
        let (t1, t2) = (Identity::generate().public(), Identity::generate().public());
        assert_eq!(pin.check("host:1", &t1).unwrap(), Trust::FirstContact);
        assert_eq!(pin.pin("host:1", &t1).unwrap(), Trust::FirstContact);
        let mode = fs::metadata(pin.file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(pin.load().unwrap(), Some(t1));
        assert_eq!(pin.check("host:1", &t1).unwrap(), Trust::Pinned);
        assert_eq!(pin.pin("host:1", &t1).unwrap(), Trust::Pinned);

        let err = pin.check("host:1", &t2).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PinError::Mismatch { .. }), "{err:?}");
        for needle in [
            "the tracker at host:1 is ",
            &t2.peer_id().to_string(),
            &format!("but this folder trusts {}", t1.peer_id()),
            "pinned at first contact in ",
            "tracker.pin",
            "delete that file and restart",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
        // A racing first contact does not replace the pin.
        assert!(matches!(pin.pin("host:1", &t2), Err(PinError::Mismatch { .. })));
        assert_eq!(pin.load().unwrap(), Some(t1));

        // Deleting the file trusts the next tracker.
        fs::remove_file(pin.file()).unwrap();
        assert_eq!(pin.pin("host:1", &t2).unwrap(), Trust::FirstContact);
        assert_eq!(pin.check("host:1", &t2).unwrap(), Trust::Pinned);
        let leftovers: Vec<_> = fs::read_dir(pin.file().parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn the_file_names_the_tracker_and_hand_edits_still_parse() {
        let (_dir, pin) = setup();
        let key = Identity::generate().public();
        pin.pin("h:1", &key).unwrap();
        let text = fs::read_to_string(pin.file()).unwrap();
        assert!(text.contains(&key.peer_id().to_string()), "{text}");
        fs::write(pin.file(), format!("\n  # mine\n  {}  \n", hex::encode(&key.0).to_uppercase())).unwrap();
        assert_eq!(pin.load().unwrap(), Some(key));
    }

    #[test]
    fn a_damaged_pin_is_refused_not_replaced() {
        let (_dir, pin) = setup();
        let key = Identity::generate().public();
        for bad in ["", "# only a comment\n", "not hex\n", "abcd\n"] {
            fs::write(pin.file(), bad).unwrap();
            let err = pin.check("h:1", &key).unwrap_err();
            assert!(matches!(err, PinError::Malformed { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("delete it and restart"), "{err}");
            assert!(pin.pin("h:1", &key).is_err());
            assert_eq!(fs::read_to_string(pin.file()).unwrap(), bad, "a damaged pin is left for a human");
        }
        fs::write(pin.file(), "a".repeat(5000)).unwrap();
        assert!(matches!(pin.load(), Err(PinError::Malformed { what: "too large", .. })));
        fs::remove_file(pin.file()).unwrap();
        fs::create_dir(pin.file()).unwrap();
        assert!(matches!(pin.load(), Err(PinError::Malformed { what: "not a regular file", .. })));
    }
}
