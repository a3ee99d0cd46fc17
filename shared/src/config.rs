//! The configuration file and the resolved settings of each role.
//!
//! The file is TOML with every field optional; unknown fields are an error
//! (a typo must not be silently ignored). The binary merges it with the
//! command-line flags (flags win) into a [`TrackerConfig`] or a
//! [`PeerConfig`]; nothing past that merge sees raw flags.
//!
//! ```toml
//! key_file = "/etc/dartsync/cluster.key"   # default: ~/.config/dartsync/cluster.key
//!
//! [tracker]
//! listen = "0.0.0.0:7373"       # address the tracker listens on
//! data_dir = "/var/lib/dartsync" # default: ~/.local/share/dartsync/tracker
//! interval_secs = 10             # keep-alive interval; expiry after 3 x interval
//! piece_len = 262144             # average chunk size in bytes
//! max_peers = 256
//! tombstone_max_age_days = 30
//! max_records = 1000000          # entries of the global table (tombstones included)
//! max_records_per_peer = 500000  # entries one peer may author
//! max_known_peers = 4096         # peers remembered for tombstone GC
//! mass_change_files = 1000       # brake: hold one device's deletions/overwrites beyond this many
//! mass_change_percent = 50       #   ... or beyond this share of the live files (0 turns a limit off)
//! mass_change_window_secs = 60   #   ... within this window
//! discovery = true               # announce the tracker on the LAN (mDNS; never on loopback)
//!
//! [peer]
//! folder = "/home/me/DartSync"   # default: ~/DartSync
//! tracker_addr = "pi.local:7373"   # none: find the cluster's tracker on the LAN
//! discovery = true               # false: never look for the tracker on the LAN
//! listen = "0.0.0.0:0"           # piece server; port 0 picks a free port
//! rescan_secs = 600              # periodic full rescan
//! versions = "on"                # "off": replaced and deleted files are not kept
//! versions_max_age_days = 30     # saved versions older than this are deleted
//! versions_budget_percent = 10   # history size budget, % of the folder (at least 64 MiB)
//! ignore_perms = false           # true: neither apply nor announce permission bits
//! receive_only = false           # true: never announce local changes (`dartsync revert`)
//! min_disk_free = 1073741824     # bytes kept free (default: 1 GiB or 1%, the smaller)
//! upload_slots_per_peer = 8
//! upload_slots_total = 32
//! max_parallel_downloads = 16
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{DEFAULT_PIECE_LEN, MAX_PIECE_LEN, MIN_PIECE_LEN};

/// The tracker's default TCP port.
pub const DEFAULT_TRACKER_PORT: u16 = 7373;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {field}: {why}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        why: String,
    },
}

/// The configuration file as written (every field optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of the cluster key file.
    pub key_file: Option<PathBuf>,
    /// Tracker settings.
    #[serde(default)]
    pub tracker: TrackerSection,
    /// Peer settings.
    #[serde(default)]
    pub peer: PeerSection,
}

/// The `[tracker]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrackerSection {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// The web dashboard: `"off"` or an address.
    pub http: Option<String>,
    /// State directory.
    pub data_dir: Option<PathBuf>,
    /// Keep-alive interval in seconds.
    pub interval_secs: Option<u64>,
    /// Average chunk size in bytes.
    pub piece_len: Option<u32>,
    /// Most peers online at once.
    pub max_peers: Option<usize>,
    /// Age after which tombstones are dropped, in days.
    pub tombstone_max_age_days: Option<u64>,
    /// Most entries in the global table.
    pub max_records: Option<usize>,
    /// Most entries of the global table one peer may author.
    pub max_records_per_peer: Option<usize>,
    /// Most peers remembered (for tombstone GC) across restarts.
    pub max_known_peers: Option<usize>,
    /// Who may join: `"auto"` (default) or `"approve"`.
    pub admit: Option<String>,
    /// Mass-change brake: more deletions/overwrites than this by one
    /// device in the window are held (0: no count limit).
    pub mass_change_files: Option<u64>,
    /// Mass-change brake: more than this percentage of the live files
    /// (0: no percentage limit).
    pub mass_change_percent: Option<u8>,
    /// Mass-change brake: the window, in seconds.
    pub mass_change_window_secs: Option<u64>,
    /// Announce the tracker on the LAN (DNS-SD over mDNS; default true).
    pub discovery: Option<bool>,
}

/// The `[peer]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The synced folder.
    pub folder: Option<PathBuf>,
    /// This device's name.
    pub name: Option<String>,
    /// The web dashboard: `"off"` or an address.
    pub http: Option<String>,
    /// The tracker, `host:port`.
    pub tracker_addr: Option<String>,
    /// Piece server listen address.
    pub listen: Option<SocketAddr>,
    /// Full rescan period in seconds.
    pub rescan_secs: Option<u64>,
    /// Version history: `"on"` (default) or `"off"`.
    pub versions: Option<String>,
    /// Age in days after which saved versions are deleted.
    pub versions_max_age_days: Option<u64>,
    /// The history's size budget in percent of the folder's size.
    pub versions_budget_percent: Option<u8>,
    /// Replaced by the three above; refused with a message saying so.
    pub versions_keep: Option<usize>,
    /// Neither apply nor announce permission bits (file systems without
    /// Unix modes: vfat, exFAT, NTFS).
    pub ignore_perms: Option<bool>,
    /// Receive the cluster's changes but never announce local ones.
    pub receive_only: Option<bool>,
    /// Bytes to keep free on the folder's file system.
    pub min_disk_free: Option<u64>,
    /// Upload slots per requesting peer.
    pub upload_slots_per_peer: Option<usize>,
    /// Upload slots in total.
    pub upload_slots_total: Option<usize>,
    /// Files downloaded at once.
    pub max_parallel_downloads: Option<usize>,
    /// Without a tracker address, look for the tracker on the LAN
    /// (default true).
    pub discovery: Option<bool>,
}

impl ConfigFile {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_owned(), source: e })?;
        Self::parse(&text, path)
    }
}

/// The user's home directory (`$HOME`), or `.` when unset.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or_else(|| home_dir().join(fallback))
}

/// Default cluster key path: `$XDG_CONFIG_HOME/dartsync/cluster.key`.
pub fn default_key_file() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("dartsync").join("cluster.key")
}

/// Default tracker state directory: `$XDG_DATA_HOME/dartsync/tracker`.
pub fn default_tracker_data_dir() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share").join("dartsync").join("tracker")
}

/// Default synced folder: `~/DartSync`.
pub fn default_peer_folder() -> PathBuf {
    home_dir().join("DartSync")
}

/// Resolved tracker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory (redb database, identity).
    pub data_dir: PathBuf,
    /// Keep-alive interval; a peer silent for 3 x interval is expired.
    pub interval: Duration,
    /// Average chunk size handed to peers.
    pub piece_len: u32,
    /// Most peers online at once.
    pub max_peers: usize,
    /// Tombstones older than this are dropped even if not every holder saw them.
    pub tombstone_max_age: Duration,
    /// Most entries in the global table (live records, tombstones and
    /// conflict copies). Beyond it, an `Announce` that would add an entry is
    /// refused: this bounds the tracker's memory and database.
    pub max_records: usize,
    /// Most entries of the global table one peer may author (its
    /// announcements that made a record global). Beyond it, the peer's
    /// session is refused at the first record that would add one.
    pub max_records_per_peer: usize,
    /// Most peers remembered across restarts for tombstone GC; beyond it
    /// the offline peer seen longest ago is forgotten, as after
    /// `tombstone_max_age`. At least `max_peers`.
    pub max_known_peers: usize,
    /// The web dashboard's address (`None`: off, the default).
    pub http: Option<SocketAddr>,
    /// Who may join (default [`AdmitPolicy::Auto`]).
    pub admit: AdmitPolicy,
    /// The mass-change brake: one device's deletions and overwrites of
    /// live files beyond this many within `mass_change_window` are held
    /// until an operator approves them (0: no count limit).
    pub mass_change_files: u64,
    /// ...or beyond this percentage of the live files (0: no percentage
    /// limit; applies from 50 changes on). Both 0: the brake is off.
    pub mass_change_percent: u8,
    /// The brake's window.
    pub mass_change_window: Duration,
    /// Announce this tracker on the LAN (DNS-SD over mDNS). Even when
    /// true, a tracker listening on a loopback address announces nothing.
    pub discovery: bool,
}

/// Who may join a cluster, besides holding the cluster key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdmitPolicy {
    /// A new device is admitted on its first registration (the quick start).
    #[default]
    Auto,
    /// A new device waits, pending, until `dartsync tracker admit` on the
    /// tracker's machine.
    Approve,
}

impl AdmitPolicy {
    /// Parses `auto` or `approve`.
    pub fn parse(value: &str) -> Result<AdmitPolicy, ConfigError> {
        match value {
            "auto" => Ok(AdmitPolicy::Auto),
            "approve" => Ok(AdmitPolicy::Approve),
            other => Err(ConfigError::Invalid {
                field: "admit",
                why: format!("{other:?} is neither \"auto\" nor \"approve\""),
            }),
        }
    }

    /// The setting's word.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmitPolicy::Auto => "auto",
            AdmitPolicy::Approve => "approve",
        }
    }
}

/// Default [`TrackerConfig::max_records`]: 1,000,000 entries, about 450 MiB
/// of tracker memory and 370 MB of database at the measured cost per entry
/// (ARCHITECTURE.md, "Tracker memory"): room for a very large folder on a
/// Raspberry Pi with 1 GiB or more. Lower it on a smaller machine.
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;

/// Default [`TrackerConfig::max_records_per_peer`]: 500,000 entries, so one
/// broken or hostile member fills at most half of the default table.
pub const DEFAULT_MAX_RECORDS_PER_PEER: usize = 500_000;

/// Default [`TrackerConfig::max_known_peers`]: 4,096 peers.
pub const DEFAULT_MAX_KNOWN_PEERS: usize = 4096;

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_TRACKER_PORT)),
            data_dir: default_tracker_data_dir(),
            interval: Duration::from_secs(10),
            piece_len: DEFAULT_PIECE_LEN,
            max_peers: 256,
            tombstone_max_age: Duration::from_secs(30 * 24 * 3600),
            max_records: DEFAULT_MAX_RECORDS,
            max_records_per_peer: DEFAULT_MAX_RECORDS_PER_PEER,
            max_known_peers: DEFAULT_MAX_KNOWN_PEERS,
            http: None,
            admit: AdmitPolicy::Auto,
            mass_change_files: 1000,
            mass_change_percent: 50,
            mass_change_window: Duration::from_secs(60),
            discovery: true,
        }
    }
}

/// Parses an `http` setting: `off`, or an address.
pub fn parse_http(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| ConfigError::Invalid {
        field: "http",
        why: format!("{value:?} is neither \"off\" nor an address such as 127.0.0.1:7380"),
    })
}

impl TrackerConfig {
    /// Applies the file's `[tracker]` table on top of the defaults.
    pub fn from_section(section: &TrackerSection) -> Result<Self, ConfigError> {
        let mut cfg = TrackerConfig::default();
        if let Some(v) = section.listen {
            cfg.listen = v;
        }
        if let Some(v) = &section.http {
            cfg.http = parse_http(v)?;
        }
        if let Some(v) = &section.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = section.interval_secs {
            cfg.interval = Duration::from_secs(v);
        }
        if let Some(v) = section.piece_len {
            cfg.piece_len = v;
        }
        if let Some(v) = section.max_peers {
            cfg.max_peers = v;
        }
        if let Some(v) = section.tombstone_max_age_days {
            cfg.tombstone_max_age = Duration::from_secs(v.saturating_mul(24 * 3600));
        }
        if let Some(v) = section.max_records {
            cfg.max_records = v;
        }
        if let Some(v) = section.max_records_per_peer {
            cfg.max_records_per_peer = v;
        }
        if let Some(v) = section.max_known_peers {
            cfg.max_known_peers = v;
        }
        if let Some(v) = &section.admit {
            cfg.admit = AdmitPolicy::parse(v)?;
        }
        if let Some(v) = section.mass_change_files {
            cfg.mass_change_files = v;
        }
        if let Some(v) = section.mass_change_percent {
            cfg.mass_change_percent = v;
        }
        if let Some(v) = section.mass_change_window_secs {
            cfg.mass_change_window = Duration::from_secs(v);
        }
        if let Some(v) = section.discovery {
            cfg.discovery = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.interval > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid { field: "interval", why: "must be between 1 ms and 1 hour".into() });
        }
        if self.mass_change_percent > 100 {
            return Err(ConfigError::Invalid { field: "mass_change_percent", why: "must be 0 (off) to 100".into() });
        }
        if self.mass_change_window.is_zero() || self.mass_change_window > Duration::from_secs(86_400) {
            return Err(ConfigError::Invalid {
                field: "mass_change_window_secs",
                why: "must be between 1 second and 1 day".into(),
            });
        }
        if !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&self.piece_len) {
            return Err(ConfigError::Invalid {
                field: "piece_len",
                why: format!("must be between {MIN_PIECE_LEN} and {MAX_PIECE_LEN} bytes"),
            });
        }
        if self.max_peers == 0 {
            return Err(ConfigError::Invalid { field: "max_peers", why: "must be at least 1".into() });
        }
        if self.max_records == 0 || self.max_records_per_peer == 0 {
            let field = if self.max_records == 0 { "max_records" } else { "max_records_per_peer" };
            return Err(ConfigError::Invalid { field, why: "must be at least 1".into() });
        }
        if self.max_known_peers < self.max_peers {
            return Err(ConfigError::Invalid {
                field: "max_known_peers",
                why: format!("must be at least max_peers ({})", self.max_peers),
            });
        }
        Ok(())
    }
}

/// The smallest size budget of the version history, whatever the
/// percentage: 64 MiB (a small folder still keeps a useful history).
pub const MIN_VERSIONS_BUDGET: u64 = 64 << 20;

/// What the version history keeps: every version from the last hour, one
/// per hour for a day, one per day up to `max_age_days`, within
/// `budget_percent` of the folder's size (at least
/// [`MIN_VERSIONS_BUDGET`]). The rules themselves live with the history
/// (`peer::sync::history::thinning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionsPolicy {
    /// False: replaced and deleted files are not kept at all.
    pub enabled: bool,
    /// Saved versions older than this many days are deleted.
    pub max_age_days: u64,
    /// The history's size budget, in percent of the live files' size.
    pub budget_percent: u8,
}

impl Default for VersionsPolicy {
    fn default() -> Self {
        VersionsPolicy { enabled: true, max_age_days: 30, budget_percent: 10 }
    }
}

impl VersionsPolicy {
    /// The budget in bytes for a folder whose live files hold `folder_bytes`.
    pub fn budget(&self, folder_bytes: u64) -> u64 {
        (folder_bytes / 100).saturating_mul(u64::from(self.budget_percent)).max(MIN_VERSIONS_BUDGET)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_age_days == 0 || self.max_age_days > 36_500 {
            return Err(ConfigError::Invalid { field: "versions_max_age_days", why: "must be 1 to 36500".into() });
        }
        if self.budget_percent == 0 || self.budget_percent > 100 {
            return Err(ConfigError::Invalid { field: "versions_budget_percent", why: "must be 1 to 100".into() });
        }
        Ok(())
    }
}

/// `"on"` / `"off"` (also true/false words) for the setting `field`.
pub fn parse_on_off(field: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid { field, why: format!("expected \"on\" or \"off\", got {value:?}") }),
    }
}

/// Resolved peer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The synced folder.
    pub folder: PathBuf,
    /// This device's name (`None`: the hostname), shown to the other
    /// devices, in status and in conflict copies' names.
    pub name: Option<String>,
    /// The web dashboard's address (`None`: off; default `127.0.0.1:0`,
    /// a free loopback port).
    pub http: Option<SocketAddr>,
    /// The tracker, `host:port`. `None`: found on the LAN when
    /// `discovery` is on.
    pub tracker_addr: Option<String>,
    /// Without `tracker_addr`, look for the cluster's tracker on the LAN
    /// (DNS-SD over mDNS). Ignored when `tracker_addr` is set.
    pub discovery: bool,
    /// Piece server listen address.
    pub listen: SocketAddr,
    /// Full rescan period.
    pub rescan: Duration,
    /// What the version history keeps.
    pub versions: VersionsPolicy,
    /// Neither apply nor announce permission bits: files this peer writes
    /// get 0644 (folders 0755), and local permission changes are not
    /// announced (for file systems without Unix modes).
    pub ignore_perms: bool,
    /// Receive the cluster's changes but never announce local ones: they
    /// are listed by `dartsync status` and `dartsync revert` puts back the
    /// cluster's version (the local one goes to the version history).
    pub receive_only: bool,
    /// Bytes to keep free on the folder's file system; a download that
    /// would eat into them waits ("disk full"). `None`: the smaller of
    /// 1 GiB and 1% of the file system.
    pub min_disk_free: Option<u64>,
    /// Upload slots per requesting peer.
    pub upload_slots_per_peer: usize,
    /// Upload slots in total.
    pub upload_slots_total: usize,
    /// Files downloaded at once.
    pub max_parallel_downloads: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            folder: default_peer_folder(),
            name: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tracker_addr: None,
            discovery: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            rescan: Duration::from_secs(600),
            versions: VersionsPolicy::default(),
            ignore_perms: false,
            receive_only: false,
            min_disk_free: None,
            upload_slots_per_peer: 8,
            upload_slots_total: 32,
            max_parallel_downloads: 16,
        }
    }
}

impl PeerConfig {
    /// Applies the file's `[peer]` table on top of the defaults.
    pub fn from_section(section: &PeerSection) -> Result<Self, ConfigError> {
        let mut cfg = PeerConfig::default();
        if let Some(v) = &section.folder {
            cfg.folder = v.clone();
        }
        if let Some(v) = &section.name {
            cfg.name = Some(v.clone());
        }
        if let Some(v) = &section.http {
            cfg.http = parse_http(v)?;
        }
        if let Some(v) = &section.tracker_addr {
            cfg.tracker_addr = Some(v.clone());
        }
        if let Some(v) = section.listen {
            cfg.listen = v;
        }
        if let Some(v) = section.rescan_secs {
            cfg.rescan = Duration::from_secs(v);
        }
        if section.versions_keep.is_some() {
            return Err(ConfigError::Invalid {
                field: "versions_keep",
                why: "versions are now kept by age and size, not count: use versions = \"off\", \
                      versions_max_age_days and versions_budget_percent"
                    .into(),
            });
        }
        if let Some(v) = &section.versions {
            cfg.versions.enabled = parse_on_off("versions", v)?;
        }
        if let Some(v) = section.versions_max_age_days {
            cfg.versions.max_age_days = v;
        }
        if let Some(v) = section.versions_budget_percent {
            cfg.versions.budget_percent = v;
        }
        if let Some(v) = section.ignore_perms {
            cfg.ignore_perms = v;
        }
        if let Some(v) = section.receive_only {
            cfg.receive_only = v;
        }
        if let Some(v) = section.min_disk_free {
            cfg.min_disk_free = Some(v);
        }
        if let Some(v) = section.upload_slots_per_peer {
            cfg.upload_slots_per_peer = v;
        }
        if let Some(v) = section.upload_slots_total {
            cfg.upload_slots_total = v;
        }
        if let Some(v) = section.max_parallel_downloads {
            cfg.max_parallel_downloads = v;
        }
        if let Some(v) = section.discovery {
            cfg.discovery = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            crate::device::check_device_name(name)
                .map_err(|e| ConfigError::Invalid { field: "name", why: e.to_string() })?;
        }
        if self.rescan.is_zero() {
            return Err(ConfigError::Invalid { field: "rescan_secs", why: "must be at least 1".into() });
        }
        self.versions.validate()?;
        for (field, value) in [
            ("upload_slots_per_peer", self.upload_slots_per_peer),
            ("upload_slots_total", self.upload_slots_total),
            ("max_parallel_downloads", self.max_parallel_downloads),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { field, why: "must be at least 1".into() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let file = ConfigFile::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(TrackerConfig::from_section(&file.tracker).unwrap(), TrackerConfig::default());
        assert_eq!(PeerConfig::from_section(&file.peer).unwrap(), PeerConfig::default());
    }

    #[test]
    fn fields_override_defaults() {
        let text = r#"
            key_file = "/k"
            [tracker]
            listen = "127.0.0.1:9000"
            interval_secs = 2
            piece_len = 65536
            [peer]
            folder = "/f"
            tracker_addr = "pi:7373"
            versions = "off"
            versions_max_age_days = 7
            versions_budget_percent = 25
            ignore_perms = true
            receive_only = true
            discovery = false
        "#;
        let file = ConfigFile::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(file.key_file.as_deref(), Some(Path::new("/k")));
        let t = TrackerConfig::from_section(&file.tracker).unwrap();
        assert_eq!(t.listen.port(), 9000);
        assert_eq!(t.interval, Duration::from_secs(2));
        assert_eq!(t.piece_len, 65536);
        let p = PeerConfig::from_section(&file.peer).unwrap();
        assert_eq!(p.folder, PathBuf::from("/f"));
        assert_eq!(p.tracker_addr.as_deref(), Some("pi:7373"));
        assert_eq!(p.versions, VersionsPolicy { enabled: false, max_age_days: 7, budget_percent: 25 });
        assert!(p.ignore_perms);
        assert!(p.receive_only);
        assert!(!p.discovery);
        assert!(t.discovery, "on by default");
        let off = ConfigFile::parse("[tracker]\ndiscovery = false\n", Path::new("x.toml")).unwrap();
        assert!(!TrackerConfig::from_section(&off.tracker).unwrap().discovery);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let typo = ConfigFile::parse("[tracker]\nlisten_addr = \"x\"\n", Path::new("c.toml"));
        let msg = typo.unwrap_err().to_string();
        assert!(msg.contains("c.toml"), "{msg}");
        let file = ConfigFile::parse("[tracker]\npiece_len = 1\n", Path::new("c.toml")).unwrap();
        assert!(TrackerConfig::from_section(&file.tracker).is_err());
        let file = ConfigFile::parse("[peer]\nupload_slots_total = 0\n", Path::new("c.toml")).unwrap();
        assert!(PeerConfig::from_section(&file.peer).is_err());
        for (bad, says) in [
            ("versions_keep = 5", "versions_max_age_days"),
            ("versions = \"sometimes\"", "\"on\" or \"off\""),
            ("versions_budget_percent = 0", "1 to 100"),
            ("versions_max_age_days = 0", "1 to 36500"),
        ] {
            let file = ConfigFile::parse(&format!("[peer]\n{bad}\n"), Path::new("c.toml")).unwrap();
            let err = PeerConfig::from_section(&file.peer).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_versions_budget_has_a_floor() {
        let p = VersionsPolicy::default();
        assert_eq!(p.budget(0), MIN_VERSIONS_BUDGET);
        assert_eq!(p.budget(100 << 30), 10 << 30);
    }

    #[test]
    fn tracker_bounds_parse_and_are_checked() {
        let text = "[tracker]\nmax_records = 10\nmax_records_per_peer = 5\nmax_known_peers = 300\n";
        let t = TrackerConfig::from_section(&ConfigFile::parse(text, Path::new("c.toml")).unwrap().tracker).unwrap();
        assert_eq!((t.max_records, t.max_records_per_peer, t.max_known_peers), (10, 5, 300));
        for bad in ["max_records = 0", "max_records_per_peer = 0", "max_known_peers = 255"] {
            let file = ConfigFile::parse(&format!("[tracker]\n{bad}\n"), Path::new("c.toml")).unwrap();
            let err = TrackerConfig::from_section(&file.tracker).unwrap_err().to_string();
            assert!(err.contains(bad.split(' ').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn the_admission_policy_defaults_to_auto_and_parses() {
        assert_eq!(TrackerConfig::default().admit, AdmitPolicy::Auto);
        let file = ConfigFile::parse("[tracker]\nadmit = \"approve\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(TrackerConfig::from_section(&file.tracker).unwrap().admit, AdmitPolicy::Approve);
        let file = ConfigFile::parse("[tracker]\nadmit = \"maybe\"\n", Path::new("c.toml")).unwrap();
        let err = TrackerConfig::from_section(&file.tracker).unwrap_err().to_string();
        assert!(err.contains("admit") && err.contains("maybe"), "{err}");
        assert_eq!(AdmitPolicy::parse(AdmitPolicy::Approve.as_str()).unwrap(), AdmitPolicy::Approve);
    }
}
