//! Where the tracker is, for a peer started without `--tracker-addr`: the
//! address remembered from the last time, else the LAN
//! ([`crate::discovery`]).
//!
//! Owns `.dartsync/tracker.addr` (the address last found on the LAN and
//! registered with: text, mode 0600, written atomically) and the rules of
//! a peer's search: only trackers announcing this cluster's discovery
//! fingerprint count (others are logged at debug); when the folder has
//! pinned a tracker (`.dartsync/tracker.pin`), only an announcement with
//! the pinned id is taken (the handshake checks the key again); several
//! matching trackers are an error asking for `--tracker-addr`. The tracker
//! client asks again when the address stops answering (a Pi with a new
//! DHCP lease).
//!
//! While looking, the status board says so, and the log has one INFO line
//! per search.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::discovery::DiscoveryFingerprint;

use super::tracker_pin::TrackerPin;
use crate::discovery::{Browser, Candidate, DiscoveryError, Filter, Judge, search};
use crate::status::StatusBoard;

/// Larger files are not a remembered address.
const MAX_ADDR_FILE: u64 = 1024;

/// Finds the tracker of this folder's cluster on the LAN.
#[derive(Debug)]
pub(crate) struct Locator {
    fingerprint: DiscoveryFingerprint,
    /// `.dartsync/tracker.addr`.
    remembered: PathBuf,
    pin: TrackerPin,
    status: StatusBoard,
}

/// Accepts the pinned tracker only (any tracker of the cluster before a
/// pin exists); says once per tracker why one is passed over.
struct PinJudge {
    pinned: Option<PeerId>,
    told: Vec<PeerId>,
    pin_file: PathBuf,
}

impl Judge for PinJudge {
    fn accept(&mut self, candidate: &Candidate) -> bool {
        match self.pinned {
            Some(pinned) if pinned != candidate.id() => {
                if !self.told.contains(&candidate.id()) && self.told.len() < 16 {
                    self.told.push(candidate.id());
                    tracing::warn!(
                        "a tracker of this cluster at {} (tracker {}) is not the one this folder trusts ({pinned}, \
                         pinned in {}); passing it over. If the tracker was reinstalled on purpose, delete that \
                         file and restart",
                        candidate.addr(),
                        candidate.id(),
                        self.pin_file.display()
                    );
                }
                false
            }
            _ => true,
        }
    }
}

impl Locator {
    /// A locator for the cluster of `fingerprint`, remembering in
    /// `remembered`, honouring the pin in `pin_file`.
    pub(crate) fn new(
        fingerprint: DiscoveryFingerprint,
        remembered: PathBuf,
        pin_file: PathBuf,
        status: StatusBoard,
    ) -> Self {
        Locator { fingerprint, remembered, pin: TrackerPin::new(pin_file), status }
    }

    /// The address remembered in this locator's file ([`remembered`]).
    pub(crate) fn remembered(&self) -> Option<String> {
        remembered(&self.remembered)
    }

    /// Remembers `addr` for the next start (if it is not remembered
    /// already); a failure is only a warning.
    pub(crate) async fn remember(&self, addr: &str) {
        if self.remembered().as_deref() == Some(addr) {
            return;
        }
        let (file, addr) = (self.remembered.clone(), addr.to_owned());
        let written = tokio::task::spawn_blocking(move || write_atomically(&file, &addr)).await;
        match written {
            Ok(Ok(())) => tracing::debug!("remembered the tracker address in {}", self.remembered.display()),
            Ok(Err(e)) => tracing::warn!("cannot remember the tracker address in {}: {e}", self.remembered.display()),
            Err(e) => tracing::warn!("cannot remember the tracker address: {e}"),
        }
    }

    /// Looks for the tracker on the LAN, for at most `timeout` (`None`:
    /// until found). `Ok(None)`: nothing found in time.
    pub(crate) async fn find(&self, timeout: Option<Duration>) -> Result<Option<String>, DiscoveryError> {
        let looking = format!("looking for the tracker of cluster {} on the LAN", self.fingerprint.fmt_short());
        tracing::info!("{looking} ...");
        self.status.tracker_looking(looking);
        let pinned = self.pin.load().ok().flatten().map(|key| key.peer_id());
        let mut judge = PinJudge { pinned, told: Vec::new(), pin_file: self.pin.file().to_owned() };
        let mut browser = Browser::start(Filter::Fingerprint(self.fingerprint))?;
        let found = search(&mut browser, &mut judge, timeout).await?;
        drop(browser);
        let Some(candidate) = found else {
            return Ok(None);
        };
        let addr = candidate.addr().to_string();
        tracing::info!("found the tracker of this cluster on the LAN at {addr} (tracker {})", candidate.id());
        self.status.set_tracker_addr(addr.clone(), true);
        Ok(Some(addr))
    }
}

/// The address remembered in `file` (`.dartsync/tracker.addr`), if there
/// is a usable one (a missing or broken file is no address: the LAN is
/// asked).
pub(crate) fn remembered(file: &Path) -> Option<String> {
    let meta = fs::metadata(file).ok()?;
    let text = match meta.is_file() && meta.len() <= MAX_ADDR_FILE {
        true => fs::read_to_string(file).ok(),
        false => None,
    };
    let addr = text.as_deref().and_then(|text| {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))?;
        line.parse::<std::net::SocketAddr>().ok()
    });
    if addr.is_none() {
        tracing::warn!("ignoring {}: not a tracker address", file.display());
    }
    addr.map(|a| a.to_string())
}

/// Writes `addr` to `file` (temp file, fsync, rename, fsync of the
/// folder), mode 0600.
pub(crate) fn write_atomically(file: &Path, addr: &str) -> std::io::Result<()> {
    let mut tmp_name = file.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = file.with_file_name(tmp_name);
    let text = format!(
        "# The DartSync tracker this folder last found on the LAN; tried first at the next start.\n\
         # Delete this file to look for the tracker again.\n{addr}\n"
    );
    let written: std::io::Result<()> = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn locator(dir: &std::path::Path) -> Locator {
        let status = StatusBoard::new(dir, "t".into(), PeerId([1; 16]), String::new());
        Locator::new(DiscoveryFingerprint([2; 16]), dir.join("tracker.addr"), dir.join("tracker.pin"), status)
    }

    #[tokio::test]
    async fn the_found_address_is_remembered_privately() {
        let dir = tempfile::tempdir().unwrap();
        let loc = locator(dir.path());
        assert_eq!(loc.remembered(), None);
        loc.remember("10.77.0.2:7373").await;
        assert_eq!(loc.remembered().as_deref(), Some("10.77.0.2:7373"));
        let mode = fs::metadata(dir.path().join("tracker.addr")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        loc.remember("10.77.0.3:7373").await;
        assert_eq!(loc.remembered().as_deref(), Some("10.77.0.3:7373"));
        fs::write(dir.path().join("tracker.addr"), "not an address\n").unwrap();
        assert_eq!(loc.remembered(), None, "a broken file is no address");
        fs::write(dir.path().join("tracker.addr"), "x".repeat(5000)).unwrap();
        assert_eq!(loc.remembered(), None);
    }

    #[test]
    fn the_pin_judge_passes_over_other_trackers() {
        use dartsync_shared::discovery::{Announcement, SERVICE_TYPE};
        let candidate = |id: u8| {
            let a = Announcement::new(DiscoveryFingerprint([2; 16]), PeerId([id; 16]), &[]);
            let p = a.txt_properties();
            Candidate::parse(
                SERVICE_TYPE,
                7373,
                [std::net::IpAddr::from([10, 0, 0, id])],
                p.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))),
            )
            .unwrap()
        };
        let mut open = PinJudge { pinned: None, told: Vec::new(), pin_file: "p".into() };
        assert!(open.accept(&candidate(1)) && open.accept(&candidate(2)));
        let mut pinned = PinJudge { pinned: Some(PeerId([1; 16])), told: Vec::new(), pin_file: "p".into() };
        assert!(pinned.accept(&candidate(1)));
        assert!(!pinned.accept(&candidate(2)));
        assert!(!pinned.accept(&candidate(2)));
        assert_eq!(pinned.told, [PeerId([2; 16])], "said once");
    }
}
