//! Merges the command line with the config file into resolved settings.
//!
//! Precedence: flag > config file > default. This is the only place that
//! reads [`crate::cli::Cli`]; the rest of the program sees [`Mode`].

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dartsync_shared::config::{self, ConfigFile, PeerConfig, TrackerConfig};

use crate::cli::{Cli, Command, StatusArgs, TrackerCommand};
use crate::status_cmd::{Output, StatusRequest, Target};
use crate::versions_cmd::{Action, VersionsRequest};

/// What to run, fully resolved.
#[derive(Debug)]
pub enum Mode {
    /// `dartsync init`.
    Init {
        /// Where to write the key.
        key_file: PathBuf,
        /// Overwrite an existing key.
        force: bool,
    },
    /// `dartsync --tracker`.
    Tracker {
        /// Tracker settings.
        config: TrackerConfig,
        /// Cluster key path.
        key_file: PathBuf,
    },
    /// `dartsync --peer`.
    Peer {
        /// Peer settings.
        config: PeerConfig,
        /// Hidden test switches.
        hooks: dartsync_peer::TestHooks,
        /// Cluster key path.
        key_file: PathBuf,
    },
    /// `dartsync status`.
    Status(StatusRequest),
    /// `dartsync tracker ...`.
    TrackerAdmin(crate::tracker_cmd::TrackerRequest),
    /// `dartsync revert`.
    Revert(crate::revert_cmd::RevertRequest),
    /// `dartsync versions` / `dartsync restore`.
    Versions(VersionsRequest),
    /// `dartsync demo`.
    Demo(crate::demo::DemoRequest),
    /// `dartsync dashboard-url`.
    DashboardUrl {
        /// The tracker's data directory.
        data_dir: PathBuf,
    },
    /// `dartsync invite`.
    Invite(crate::invite_cmd::InviteRequest),
    /// `dartsync join`.
    Join(Box<crate::join_cmd::JoinRequest>),
    /// `dartsync completions SHELL`.
    Completions(clap_complete::Shell),
    /// `dartsync man`.
    Man,
}

/// Accepts `host`, `host:port`, `[v6]:port`; adds the default port.
fn with_default_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')),
        None => false,
    };
    if has_port { addr.to_owned() } else { format!("{addr}:{}", config::DEFAULT_TRACKER_PORT) }
}

/// The default log level the -v / -q counts ask for (`RUST_LOG`, read by
/// the logging set-up, overrides it).
pub fn log_level(cli: &Cli) -> &'static str {
    match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    }
}

/// Resolves the command line (and the config file it names).
pub fn resolve(cli: Cli) -> anyhow::Result<Mode> {
    let file = match &cli.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let key_file = cli.key_file.clone().or(file.key_file.clone()).unwrap_or_else(config::default_key_file);

    match cli.command {
        Some(Command::Init { force }) => return Ok(Mode::Init { key_file, force }),
        Some(Command::Status(args)) => return Ok(Mode::Status(status_request(args, &file)?)),
        Some(Command::Tracker(cmd)) => return Ok(Mode::TrackerAdmin(tracker_request(cmd, &file)?)),
        Some(Command::Revert { path }) => return Ok(Mode::Revert(revert_request(path, &file)?)),
        Some(Command::Versions(args)) => {
            let (folder, path) = versions_target(&args.file.path, args.file.folder.as_deref(), None, &file)?;
            return Ok(Mode::Versions(VersionsRequest { folder, path, action: Action::List, json: args.file.json }));
        }
        Some(Command::Restore(args)) => {
            let (folder, path) = versions_target(&args.file.path, args.file.folder.as_deref(), None, &file)?;
            let to = match &args.to {
                // Resolved like PATH; it must be in the same folder.
                Some(to) => {
                    let (to_folder, rel) = versions_target(to, args.file.folder.as_deref(), Some(&folder), &file)?;
                    if to_folder != folder {
                        bail!("--to {} is not in the synced folder {} of PATH", to.display(), folder.display());
                    }
                    Some(rel)
                }
                None => None,
            };
            let action = Action::Restore { at: args.at, version: args.version, to, force: args.force };
            return Ok(Mode::Versions(VersionsRequest { folder, path, action, json: args.file.json }));
        }
        Some(Command::Completions { shell }) => return Ok(Mode::Completions(shell)),
        Some(Command::Man) => return Ok(Mode::Man),
        Some(Command::DashboardUrl { data }) => {
            let data_dir = match data {
                Some(dir) => dir,
                None => TrackerConfig::from_section(&file.tracker)?.data_dir,
            };
            return Ok(Mode::DashboardUrl { data_dir: absolute(&data_dir)? });
        }
        Some(Command::Invite(args)) => {
            let data_dir = match args.data {
                Some(dir) => dir,
                None => TrackerConfig::from_section(&file.tracker)?.data_dir,
            };
            return Ok(Mode::Invite(crate::invite_cmd::InviteRequest {
                data_dir: absolute(&data_dir)?,
                minutes: args.minutes,
                json: args.json,
            }));
        }
        Some(Command::Join(args)) => {
            return Ok(Mode::Join(Box::new(join_request(args, &file, key_file, cli.no_discovery)?)));
        }
        Some(Command::Demo(args)) => {
            let dir = std::path::absolute(&args.dir)
                .with_context(|| format!("cannot resolve the demo folder {}", args.dir.display()))?;
            return Ok(Mode::Demo(crate::demo::DemoRequest {
                dir,
                peers: usize::from(args.peers),
                script: args.script,
            }));
        }
        None => {}
    }
    if cli.tracker {
        let mut cfg = TrackerConfig::from_section(&file.tracker)?;
        if let Some(v) = cli.listen {
            cfg.listen = v;
        }
        if let Some(v) = cli.data {
            cfg.data_dir = v;
        }
        if let Some(v) = cli.interval {
            cfg.interval = std::time::Duration::from_secs(v);
        }
        if let Some(v) = cli.piece_len {
            cfg.piece_len = v;
        }
        if let Some(v) = cli.mass_change_files {
            cfg.mass_change_files = v;
        }
        if let Some(v) = cli.mass_change_percent {
            cfg.mass_change_percent = v;
        }
        if let Some(v) = &cli.http {
            cfg.http = config::parse_http(v)?;
        }
        if let Some(v) = &cli.admit {
            cfg.admit = config::AdmitPolicy::parse(v)?;
        }
        if cli.no_discovery {
            cfg.discovery = false;
        }
        cfg.validate()?;
        return Ok(Mode::Tracker { config: cfg, key_file });
    }
    if let Some(dir) = cli.peer {
        let mut cfg = PeerConfig::from_section(&file.peer)?;
        if let Some(dir) = dir {
            cfg.folder = dir;
        }
        if let Some(v) = cli.listen {
            cfg.listen = v;
        }
        if let Some(v) = cli.tracker_addr {
            cfg.tracker_addr = Some(v);
        }
        if let Some(v) = cli.name {
            cfg.name = Some(v);
        }
        if let Some(v) = &cli.http {
            cfg.http = config::parse_http(v)?;
        }
        cfg.tracker_addr = cfg.tracker_addr.as_deref().map(with_default_port);
        if let Some(v) = cli.rescan {
            cfg.rescan = std::time::Duration::from_secs(v);
        }
        if let Some(v) = &cli.versions {
            cfg.versions.enabled = config::parse_on_off("versions", v)?;
        }
        if let Some(v) = cli.versions_max_age_days {
            cfg.versions.max_age_days = v;
        }
        if let Some(v) = cli.versions_budget_percent {
            cfg.versions.budget_percent = v;
        }
        if cli.ignore_perms {
            cfg.ignore_perms = true;
        }
        if cli.receive_only {
            cfg.receive_only = true;
        }
        if let Some(v) = cli.min_disk_free {
            cfg.min_disk_free = Some(v);
        }
        if cli.no_discovery {
            cfg.discovery = false;
        }
        cfg.folder = absolute(&cfg.folder)?;
        cfg.validate()?;
        let hooks = dartsync_peer::TestHooks {
            corrupt_chunks: cli.test_corrupt_chunks,
            serve_delay: std::time::Duration::from_millis(cli.test_serve_delay_ms.unwrap_or(0)),
            chunk_list_page: cli.test_chunk_list_page,
        };
        return Ok(Mode::Peer { config: cfg, key_file, hooks });
    }
    bail!("nothing to do: pass --tracker, --peer [DIR] or a subcommand such as `init` (see `dartsync --help`)")
}

/// Which socket `status` asks, and how it shows the answer.
fn status_request(args: StatusArgs, file: &ConfigFile) -> anyhow::Result<StatusRequest> {
    let target = if args.tracker {
        let data_dir = match args.data {
            Some(dir) => dir,
            None => TrackerConfig::from_section(&file.tracker)?.data_dir,
        };
        Target::Tracker { data_dir: absolute(&data_dir)? }
    } else {
        let folder = match args.dir {
            Some(dir) => dir,
            None => PeerConfig::from_section(&file.peer)?.folder,
        };
        Target::Peer { folder: absolute(&folder)? }
    };
    let output = match (args.json, args.watch) {
        (true, _) => Output::Json,
        (false, true) => Output::Watch,
        (false, false) => Output::Human,
    };
    Ok(StatusRequest { target, output, wait: args.wait.map(std::time::Duration::from_secs) })
}

/// What `dartsync join` does: the code is checked here, before anything
/// touches the network or the disk.
fn join_request(
    args: crate::cli::JoinArgs,
    file: &ConfigFile,
    key_file: PathBuf,
    no_discovery: bool,
) -> anyhow::Result<crate::join_cmd::JoinRequest> {
    let code = dartsync_shared::invite_code::InviteCode::parse(&args.code)?;
    let mut peer = PeerConfig::from_section(&file.peer)?;
    if let Some(dir) = args.dir {
        peer.folder = dir;
    }
    peer.folder = absolute(&peer.folder)?;
    if let Some(addr) = args.tracker_addr {
        peer.tracker_addr = Some(addr);
    }
    peer.tracker_addr = peer.tracker_addr.as_deref().map(with_default_port);
    if let Some(name) = args.name {
        peer.name = Some(name);
    }
    if no_discovery {
        peer.discovery = false;
    }
    peer.validate()?;
    Ok(crate::join_cmd::JoinRequest { code, peer, key_file, start: !args.no_start })
}

/// The tracker `dartsync tracker ...` asks, and what.
fn tracker_request(cmd: TrackerCommand, file: &ConfigFile) -> anyhow::Result<crate::tracker_cmd::TrackerRequest> {
    use crate::tracker_cmd::{Ask, TrackerRequest};
    let (ask, data) = match cmd {
        TrackerCommand::Approve(a) => (Ask::Approve(a.device), a.data),
        TrackerCommand::Reject(a) => (Ask::Reject(a.device), a.data),
        TrackerCommand::Devices(a) => (Ask::Devices { json: a.json }, a.data),
        TrackerCommand::Admit(a) => (Ask::Admit(a.device), a.data),
        TrackerCommand::Revoke(a) => (Ask::Revoke(a.device), a.data),
    };
    let data_dir = match data {
        Some(dir) => dir,
        None => TrackerConfig::from_section(&file.tracker)?.data_dir,
    };
    Ok(TrackerRequest { data_dir: absolute(&data_dir)?, ask })
}

/// The folder `revert` asks, and the subtree.
fn revert_request(path: Option<PathBuf>, file: &ConfigFile) -> anyhow::Result<crate::revert_cmd::RevertRequest> {
    let Some(path) = path else {
        let folder = absolute(&PeerConfig::from_section(&file.peer)?.folder)?;
        return Ok(crate::revert_cmd::RevertRequest { folder, under: None });
    };
    let path = absolute(&path)?;
    match crate::revert_cmd::locate(&path) {
        Some((folder, under)) => Ok(crate::revert_cmd::RevertRequest { folder, under }),
        None => anyhow::bail!(
            "{} is not inside a folder that a running dartsync peer syncs (no .dartsync/control.sock above it)",
            path.display()
        ),
    }
}

/// The folder and folder-relative path of `path` for `versions` /
/// `restore` (see [`crate::versions_cmd::locate`]); the default folder is
/// `default`, else the config file's, else ~/DartSync.
fn versions_target(
    path: &Path,
    folder: Option<&Path>,
    default: Option<&Path>,
    file: &ConfigFile,
) -> anyhow::Result<(PathBuf, String)> {
    let default_folder = match default {
        Some(d) => d.to_path_buf(),
        None => PeerConfig::from_section(&file.peer)?.folder,
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    crate::versions_cmd::locate(path, folder, &default_folder, &cwd).map_err(anyhow::Error::msg)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve folder {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> anyhow::Result<Mode> {
        resolve(Cli::try_parse_from(std::iter::once("dartsync").chain(args.iter().copied()))?)
    }

    #[test]
    fn tracker_admin_commands_and_the_admit_flag_resolve() {
        use crate::tracker_cmd::Ask;
        match parse(&["tracker", "admit", "bob", "--data", "/d"]).unwrap() {
            Mode::TrackerAdmin(req) => {
                assert_eq!(req.data_dir, PathBuf::from("/d"));
                assert_eq!(req.ask, Ask::Admit("bob".into()));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["tracker", "devices", "--json", "--data", "/d"]).unwrap() {
            Mode::TrackerAdmin(req) => assert_eq!(req.ask, Ask::Devices { json: true }),
            other => panic!("{other:?}"),
        }
        match parse(&["--tracker", "--admit", "approve"]).unwrap() {
            Mode::Tracker { config, .. } => assert_eq!(config.admit, config::AdmitPolicy::Approve),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["--tracker", "--admit", "maybe"]).is_err());
    }

    #[test]
    fn default_port_is_added() {
        assert_eq!(with_default_port("pi.local"), "pi.local:7373");
        assert_eq!(with_default_port("pi.local:9"), "pi.local:9");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
        assert_eq!(with_default_port("::1"), "::1:7373");
    }

    #[test]
    fn modes_resolve() {
        match parse(&["--tracker", "--listen", "127.0.0.1:1", "--interval", "2"]).unwrap() {
            Mode::Tracker { config, .. } => {
                assert_eq!(config.listen.port(), 1);
                assert_eq!(config.interval.as_secs(), 2);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["--peer", "/tmp/x", "--tracker-addr", "h", "--name", "Bob's laptop"]).unwrap() {
            Mode::Peer { config, .. } => {
                assert_eq!(config.folder, PathBuf::from("/tmp/x"));
                assert_eq!(config.name.as_deref(), Some("Bob's laptop"));
                assert_eq!(config.tracker_addr.as_deref(), Some("h:7373"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["--peer"]).unwrap() {
            Mode::Peer { config, .. } => assert!(config.folder.ends_with("DartSync")),
            other => panic!("{other:?}"),
        }
        match parse(&["--peer", "/tmp/x", "--no-discovery"]).unwrap() {
            Mode::Peer { config, .. } => assert!(!config.discovery && config.tracker_addr.is_none()),
            other => panic!("{other:?}"),
        }
        match parse(&["--tracker", "--no-discovery"]).unwrap() {
            Mode::Tracker { config, .. } => assert!(!config.discovery),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["init", "--key-file", "/k"]).unwrap(), Mode::Init { .. }));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--tracker", "--peer"]).is_err());
        assert!(parse(&["--tracker", "--piece-len", "3"]).is_err());
        let bad = parse(&["--peer", "/x", "--name", "a\nb"]).unwrap_err().to_string();
        assert!(bad.contains("invalid setting name: a device name cannot contain control characters"), "{bad}");
    }

    #[test]
    fn status_targets_resolve() {
        match parse(&["status", "/tmp/f", "--wait", "3"]).unwrap() {
            Mode::Status(req) => {
                assert_eq!(req.target, Target::Peer { folder: PathBuf::from("/tmp/f") });
                assert_eq!(req.output, Output::Human);
                assert_eq!(req.wait, Some(std::time::Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["status", "--tracker", "--data", "/d", "--json"]).unwrap() {
            Mode::Status(req) => {
                assert_eq!(req.target, Target::Tracker { data_dir: PathBuf::from("/d") });
                assert_eq!(req.output, Output::Json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["status"]).unwrap() {
            Mode::Status(StatusRequest { target: Target::Peer { folder }, .. }) => {
                assert!(folder.ends_with("DartSync"))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["status", "--data", "/d"]).is_err(), "--data needs --tracker");
        assert!(parse(&["status", "/f", "--tracker"]).is_err());
        assert!(parse(&["status", "--watch", "--json"]).is_err());
    }

    #[test]
    fn status_reads_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(&config, "[peer]\nfolder = \"/srv/f\"\n[tracker]\ndata_dir = \"/srv/t\"\n").unwrap();
        let c = config.to_str().unwrap();
        match parse(&["status", "--config", c]).unwrap() {
            Mode::Status(req) => assert_eq!(req.target, Target::Peer { folder: PathBuf::from("/srv/f") }),
            other => panic!("{other:?}"),
        }
        match parse(&["status", "--tracker", "--config", c]).unwrap() {
            Mode::Status(req) => assert_eq!(req.target, Target::Tracker { data_dir: PathBuf::from("/srv/t") }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_and_restore_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(folder.join(".dartsync")).unwrap();
        let f = folder.to_str().unwrap();
        match parse(&["versions", "--folder", f, "docs/a.txt", "--json"]).unwrap() {
            Mode::Versions(req) => {
                assert_eq!((req.folder.as_path(), req.path.as_str(), req.json), (folder.as_path(), "docs/a.txt", true));
                assert_eq!(req.action, Action::List);
            }
            other => panic!("{other:?}"),
        }
        let abs = folder.join("a.txt");
        let to = folder.join("b.txt");
        match parse(&["restore", abs.to_str().unwrap(), "--version", "2", "--to", to.to_str().unwrap(), "--force"])
            .unwrap()
        {
            Mode::Versions(req) => {
                assert_eq!(req.path, "a.txt");
                assert_eq!(
                    req.action,
                    Action::Restore { at: None, version: Some(2), to: Some("b.txt".into()), force: true }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["restore", "--folder", f, "a", "--at", "2024-01-01", "--version", "1"]).is_err());
        assert!(parse(&["restore", "--folder", f, "a", "--version", "0"]).is_err());
        assert!(parse(&["restore", "--folder", f, "a", "--force"]).is_err(), "--force needs --to");
        assert!(parse(&["restore", "--folder", f, "a", "--to", "../../x"]).is_err());
        assert!(parse(&["--peer", "/x", "--versions", "maybe"]).is_err());
        match parse(&["--peer", "/x", "--versions", "off", "--versions-budget-percent", "5"]).unwrap() {
            Mode::Peer { config, .. } => assert!(!config.versions.enabled && config.versions.budget_percent == 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for args in [
            &["--help"][..],
            &["status", "--help"],
            &["completions", "--help"],
            &["man", "--help"],
            &["versions", "--help"],
            &["restore", "--help"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("dartsync").chain(args.iter().copied())).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
        assert!(matches!(parse(&["completions", "bash"]).unwrap(), Mode::Completions(clap_complete::Shell::Bash)));
        assert!(matches!(parse(&["man"]).unwrap(), Mode::Man));
    }
}
