//! The command line as typed: clap's derive structs, nothing resolved.
//!
//! [`crate::settings`] merges these flags with the config file into the
//! resolved settings; nothing else reads them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand};

/// DartSync: LAN file sync with no cloud.
///
/// A small always-on tracker (a Raspberry Pi is plenty) knows which peer
/// holds the newest version of every file; peers watch a folder, tell the
/// tracker what changed and fetch file pieces directly from each other,
/// from several peers at once, over an encrypted channel keyed by a shared
/// cluster key.
///
/// Typical set-up:
///   dartsync init                                  # once: create the cluster key
///   dartsync --tracker                             # on the always-on machine
///   dartsync --peer ~/DartSync                     # on every laptop (finds the tracker on the LAN)
///   dartsync --peer ~/DartSync --tracker-addr pi:7373   # ... or names it
///   dartsync status                                # is this folder up to date?
#[derive(Debug, Parser)]
#[command(name = "dartsync", version, about, long_about, verbatim_doc_comment)]
#[command(group(ArgGroup::new("mode").args(["tracker", "peer"])))]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Run the tracker: keeps the global file table and the peer table.
    #[arg(long)]
    pub tracker: bool,

    /// Run a peer syncing DIR (default: ~/DartSync, created if missing).
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub peer: Option<Option<PathBuf>>,

    /// Address to listen on. Tracker: peers connect here (default
    /// 0.0.0.0:7373). Peer: the piece server other peers fetch from
    /// (default 0.0.0.0:0, a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Peer: this device's name, shown to the other devices, in `dartsync
    /// status`, in logs and in conflict copies' names (default: the
    /// hostname). At most 64 bytes.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Peer: the tracker to register with, HOST:PORT (port defaults to
    /// 7373). Without it the peer finds its cluster's tracker on the LAN
    /// (mDNS), remembers the address in DIR/.dartsync/tracker.addr and
    /// looks again when that address stops answering.
    #[arg(long, value_name = "ADDR")]
    pub tracker_addr: Option<String>,

    /// No LAN discovery (mDNS). Tracker: do not announce this tracker on
    /// the LAN (it never does while listening on loopback). Peer: do not
    /// look for the tracker on the LAN; --tracker-addr is then needed.
    /// The announcement carries the tracker's port and id, its open invite
    /// numbers and a fingerprint derived from the cluster key (never the
    /// key).
    #[arg(long, env = "DARTSYNC_NO_DISCOVERY", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_discovery: bool,

    /// Tracker: state directory for the file table database
    /// (default ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Cluster key file (default ~/.config/dartsync/cluster.key). Every
    /// tracker and peer of one cluster must use the same key.
    #[arg(long, value_name = "FILE", global = true)]
    pub key_file: Option<PathBuf>,

    /// TOML configuration file; command-line flags override its values.
    /// `status` reads the peer folder or the tracker data dir from it.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Tracker: keep-alive interval in seconds; a peer silent for three
    /// intervals is expired (default 10).
    #[arg(long, value_name = "SECS")]
    pub interval: Option<u64>,

    /// The web dashboard: an address to serve it on, or `off`. Peer:
    /// default 127.0.0.1:0 (a free port on this machine; `dartsync
    /// status` shows the link). Tracker: off by default; on an address
    /// other than loopback every request needs the login token that
    /// `dartsync dashboard-url` prints.
    #[arg(long, value_name = "ADDR|off")]
    pub http: Option<String>,

    /// Tracker: who may join besides holding the cluster key. `auto`
    /// (default): a new device is admitted on its first registration.
    /// `approve`: a new device waits until `dartsync tracker admit NAME`
    /// on the tracker's machine.
    #[arg(long, value_name = "POLICY", value_parser = ["auto", "approve"])]
    pub admit: Option<String>,

    /// Tracker: average chunk size in bytes handed to peers (default 262144).
    #[arg(long, value_name = "BYTES")]
    pub piece_len: Option<u32>,

    /// Tracker: the mass-change brake holds one device's deletions and
    /// overwrites of live files beyond this many within a minute until
    /// `dartsync tracker approve` (default 1000; 0: no count limit).
    #[arg(long, value_name = "N")]
    pub mass_change_files: Option<u64>,

    /// Tracker: ...or beyond this percentage of the live files (default
    /// 50, from 50 files on; 0: no percentage limit). Both limits 0 turn
    /// the brake off.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub mass_change_percent: Option<u8>,

    /// Peer: seconds between full rescans of the folder (default 600).
    #[arg(long, value_name = "SECS")]
    pub rescan: Option<u64>,

    /// Peer: keep replaced and deleted files in .dartsync/versions (`on`,
    /// the default) or not (`off`). Kept: every version from the last hour,
    /// one per hour for a day, one per day up to --versions-max-age-days,
    /// within --versions-budget-percent of the folder's size.
    #[arg(long, value_name = "on|off")]
    pub versions: Option<String>,

    /// Peer: saved versions older than this many days are deleted
    /// (default 30).
    #[arg(long, value_name = "DAYS")]
    pub versions_max_age_days: Option<u64>,

    /// Peer: the version history's size budget, in percent of the folder's
    /// size (default 10; never less than 64 MiB). Over it, the oldest
    /// versions go first, but never the version from before a path's
    /// latest burst of changes while any other version is left.
    #[arg(long, value_name = "PERCENT")]
    pub versions_budget_percent: Option<u8>,

    /// Peer: neither apply nor announce permission bits (for folders on
    /// vfat, exFAT or NTFS): files this peer writes get 0644, folders 0755.
    #[arg(long)]
    pub ignore_perms: bool,

    /// Peer: receive the cluster's changes but never send this device's
    /// own. Local edits stay here, are listed by `dartsync status`, and
    /// `dartsync revert` puts back the cluster's version (keeping the local
    /// one in the version history). A newer version from the cluster
    /// replaces a local edit the same way.
    #[arg(long)]
    pub receive_only: bool,

    /// Peer: bytes to keep free on the folder's file system; a download that
    /// would eat into them waits (default: 1 GiB or 1%, the smaller).
    #[arg(long, value_name = "BYTES")]
    pub min_disk_free: Option<u64>,

    /// Test only: serve corrupted chunks (a lying holder).
    #[arg(long, hide = true)]
    pub test_corrupt_chunks: bool,

    /// Test only: delay every served chunk by this many milliseconds.
    #[arg(long, hide = true, value_name = "MS")]
    pub test_serve_delay_ms: Option<u64>,

    /// Test only: ask holders for chunk lists in pages of at most N entries.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub test_chunk_list_page: Option<u32>,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,

    /// A subcommand instead of a mode.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `dartsync demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its folders, key, tracker data and logs
    /// (created if missing; reused when it exists).
    #[arg(value_name = "DIR", default_value = "dartsync-demo")]
    pub dir: PathBuf,

    /// Number of peers (devices), 2 to 16.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub peers: u8,

    /// Run the narrated scenario and exit (0 if every step converged)
    /// instead of showing the live view.
    #[arg(long)]
    pub script: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new cluster key (mode 0600) and print where it is.
    ///
    /// Copy the file to every peer (same path, or pass --key-file). The
    /// key never leaves your machines; anyone holding it can join the
    /// cluster.
    Init {
        /// Replace an existing key file (peers with the old key can no
        /// longer connect).
        #[arg(long)]
        force: bool,
    },

    /// Show whether a folder is up to date (asks its running peer).
    #[command(long_about = STATUS_LONG_ABOUT, after_long_help = STATUS_AFTER_HELP)]
    Status(StatusArgs),

    /// See DartSync work on this machine: a tracker and N peers in one
    /// command.
    #[command(long_about = DEMO_LONG_ABOUT)]
    Demo(DemoArgs),

    /// Print a shell completion script for dartsync on stdout.
    ///
    /// Install it where your shell looks for completions, e.g.:
    ///   dartsync completions bash > /usr/share/bash-completion/completions/dartsync
    ///   dartsync completions zsh > ~/.zfunc/_dartsync   # with fpath+=~/.zfunc
    ///   dartsync completions fish > ~/.config/fish/completions/dartsync.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Print the dartsync(1) man page (roff) on stdout.
    ///
    /// Install it with e.g.:
    ///   dartsync man > /usr/local/share/man/man1/dartsync.1
    #[command(verbatim_doc_comment)]
    Man,

    /// Administer the tracker running on this machine (over its local
    /// control socket).
    #[command(subcommand)]
    Tracker(TrackerCommand),

    /// Receive-only folder: put back the cluster's version of local
    /// changes.
    #[command(long_about = REVERT_LONG_ABOUT)]
    Revert {
        /// The synced folder, or a file or folder inside it (default: the
        /// config file's `[peer] folder`, else ~/DartSync).
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// List the saved versions of a file (asks the folder's running peer).
    #[command(long_about = VERSIONS_LONG_ABOUT, after_long_help = VERSIONS_AFTER_HELP)]
    Versions(VersionsArgs),

    /// Put back a saved version of a file; it syncs everywhere as a new
    /// version.
    #[command(long_about = RESTORE_LONG_ABOUT, after_long_help = RESTORE_AFTER_HELP)]
    Restore(RestoreArgs),

    /// On the tracker's machine: make a one-time code that lets one more
    /// device join (`dartsync join CODE` on that device).
    #[command(long_about = INVITE_LONG_ABOUT)]
    Invite(InviteArgs),

    /// Join a cluster with an invite code from `dartsync invite`, then
    /// start syncing DIR.
    #[command(long_about = JOIN_LONG_ABOUT, after_long_help = JOIN_AFTER_HELP)]
    Join(JoinArgs),

    /// Print the link to the tracker's web dashboard, with its login token
    /// (ask the tracker running on this machine; it must run with --http).
    DashboardUrl {
        /// The tracker's data directory (default: `[tracker] data_dir` of
        /// --config, else ~/.local/share/dartsync/tracker).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

const DEMO_LONG_ABOUT: &str = "\
See DartSync work on this machine, in one command.

Creates a cluster key (once), starts a tracker and N peers of this same
binary as separate processes on 127.0.0.1 (free ports), each peer syncing
its own folder DIR/alice, DIR/bob, DIR/carol, DIR/dave, ... Then it shows a
live view of every device until Ctrl-C, when it stops every process it
started and says where the folders and logs (DIR/logs) are. Drop files into
one folder and watch them reach the others. Running it again reuses DIR:
the folders keep their content.

With --script it runs a narrated scenario instead of the live view: a new
file, a folder tree, a big file, an edit of it, a rename, a delete, a
conflicting edit on two devices, a device going offline, changes while it
is away, and its return. Each step prints how long it took to reach every
device and how many bytes moved, and every folder is verified after each
step. Exit code 0 only if every step converged: a smoke test for your
machine.";

const INVITE_LONG_ABOUT: &str = "\
On the tracker's machine: make a one-time code that lets one more device
join the cluster, without copying the key file.

Asks the tracker running on this machine (over its local control socket)
and prints a code such as 7-otter-basket-maple. On the new device, run
`dartsync join 7-otter-basket-maple`. The code is good for one device, for
--minutes (default 10), and for 3 wrong tries; the words never travel over
the network (the join runs a password-authenticated key exchange, SPAKE2),
so someone listening on the LAN learns nothing from it. A device that joins
with a code is admitted even when the tracker runs with --admit approve.";

const JOIN_LONG_ABOUT: &str = "\
Join a cluster with an invite code from `dartsync invite`, then start
syncing DIR (default: the config file's `[peer] folder`, else ~/DartSync).

Finds the tracker on the LAN (it announces the numbers of its open
invites; or give --tracker-addr), proves the code without sending it, and receives the cluster key and the tracker's identity over the
encrypted channel the code opened. The key is written to the key file
(default ~/.config/dartsync/cluster.key, mode 0600) and the tracker's
identity is pinned in DIR/.dartsync/tracker.pin (its address remembered
in DIR/.dartsync/tracker.addr); then the peer starts, as `dartsync --peer
DIR` would. A wrong, expired or used code writes nothing.
With --no-start only the key and the pin are saved.";

const JOIN_AFTER_HELP: &str = "\
Examples:
  dartsync join 7-otter-basket-maple
  dartsync join 7-otter-basket-maple ~/Shared --tracker-addr 192.168.1.20:7373 --no-start

Exit codes: 0 joined (and, without --no-start, the peer stopped cleanly);
1 the join failed (the message says why; nothing was written).";

/// Options of `dartsync invite`.
#[derive(Debug, clap::Args)]
pub struct InviteArgs {
    /// How long the code is good for, in minutes (1 to 1440).
    #[arg(long, value_name = "MINUTES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub minutes: u32,

    /// Print the tracker's answer as JSON (`code`, `minutes`, `expires_unix`).
    #[arg(long)]
    pub json: bool,

    /// The tracker's data directory, which holds its control socket
    /// (default: the config file's `[tracker] data_dir`, else
    /// ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Options of `dartsync join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The code `dartsync invite` printed, e.g. 7-otter-basket-maple.
    #[arg(value_name = "CODE")]
    pub code: String,

    /// The folder to sync (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The tracker, HOST:PORT (port defaults to 7373). Without it, `join`
    /// looks on the LAN (mDNS, up to 15 s) for the tracker that announces
    /// this code's number.
    #[arg(long, value_name = "ADDR")]
    pub tracker_addr: Option<String>,

    /// This device's name, shown to the other devices (default: the
    /// hostname).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Save the key and the tracker's identity, but do not start syncing.
    #[arg(long)]
    pub no_start: bool,
}

/// `dartsync tracker ...`: administration of the local tracker.
#[derive(Debug, Subcommand)]
pub enum TrackerCommand {
    /// Publish a mass change the brake holds (every held one without
    /// DEVICE).
    #[command(long_about = APPROVE_LONG_ABOUT)]
    Approve(HeldArgs),
    /// Discard a mass change the brake holds; the device that made it gets
    /// the cluster's version back (every held one without DEVICE).
    #[command(long_about = REJECT_LONG_ABOUT)]
    Reject(HeldArgs),
    /// List every device the tracker knows: name, id, state (admitted,
    /// pending, revoked), online or last seen, address.
    #[command(after_long_help = DEVICES_AFTER_HELP)]
    Devices(DevicesArgs),
    /// Admit a device: a pending one starts syncing at once, a revoked one
    /// may register again.
    #[command(after_long_help = DEVICES_AFTER_HELP)]
    Admit(DeviceArgs),
    /// Revoke a device: its session is dropped at once, its registrations
    /// are refused, other peers stop serving it. Files it already has stay
    /// on it.
    #[command(after_long_help = DEVICES_AFTER_HELP)]
    Revoke(DeviceArgs),
}

/// Options of `dartsync tracker devices`.
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Print the tracker's answer as JSON.
    #[arg(long)]
    pub json: bool,

    /// The tracker's data directory, which holds its control socket
    /// (default: the config file's `[tracker] data_dir`, else
    /// ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Options of `dartsync tracker admit|revoke`.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// The device's name, its id, or a unique prefix of its id.
    #[arg(value_name = "NAME|ID")]
    pub device: String,

    /// The tracker's data directory, which holds its control socket
    /// (default: the config file's `[tracker] data_dir`, else
    /// ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

const DEVICES_AFTER_HELP: &str = "\
Exit codes:
  0  done
  1  refused (no such device, a name shared by several devices, ...)
  2  the tracker cannot be reached (not running, or no access to its
     control socket DATA_DIR/control.sock)

Examples:
  dartsync tracker devices              # every device: admitted, pending, revoked
  dartsync tracker admit bobs-laptop    # let a pending device sync
  dartsync tracker revoke 4f2k          # a lost laptop (a unique id prefix)";

/// Options of `dartsync tracker approve|reject`.
#[derive(Debug, clap::Args)]
pub struct HeldArgs {
    /// The device whose change to decide: its name, or its id (a unique
    /// prefix is enough). Without it, every held change.
    #[arg(value_name = "DEVICE")]
    pub device: Option<String>,

    /// The tracker's data directory, which holds its control socket
    /// (default: the config file's `[tracker] data_dir`, else
    /// ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

const APPROVE_LONG_ABOUT: &str = "\
Publish a mass change the brake holds.

The tracker holds one device's changes instead of publishing them when,
within a minute, they would delete or overwrite more than 1,000 files or
more than half of the files (the limits are --mass-change-files and
--mass-change-percent). It logs a warning naming the device, and `dartsync
status --tracker` lists the held change. Approve it when the change was
meant (a big clean-up): the tracker publishes it and every device applies
it. The deleted and overwritten files stay in the other devices' version
folders.";

const REJECT_LONG_ABOUT: &str = "\
Discard a mass change the brake holds.

Use it when the change was a mistake (`rm -rf` in the wrong folder, a
failing disk, malware encrypting files): the other devices never see it,
and the device that made it puts the cluster's version back - deleted files
are fetched again, overwritten ones are moved into its version folder and
replaced by the cluster's version.";

const REVERT_LONG_ABOUT: &str = "\
Receive-only folder: put back the cluster's version of local changes.

A peer started with --receive-only never sends its own changes; they stay
on this device and `dartsync status` lists them. `dartsync revert` asks
the running peer to undo them: each changed or new file is moved into the
version history (.dartsync/versions, see `dartsync versions PATH`), and the
cluster's version is fetched again. With PATH inside the folder, only the
changes under PATH are reverted.

Exit codes: 0 reverted (or nothing to revert), 1 refused (the folder is not
receive-only, or a path could not be reverted), 2 no peer runs for the
folder.

Examples:
  dartsync revert                  # ~/DartSync, every local change
  dartsync revert ~/Share/docs     # only what changed under docs/";

const STATUS_LONG_ABOUT: &str = "\
Show whether a folder is up to date.

Asks the peer running for DIR over its control socket
(DIR/.dartsync/control.sock) and prints the folder's state on the first
line (Up to date, Syncing, Waiting or Tracker unreachable), then the
devices, the files being fetched, the paths that wait and why, and recent
conflicts. With --tracker, asks the tracker on this machine instead
(DATA_DIR/control.sock) and prints every device's progress.

Nothing is started: the peer or tracker must already run.";

const STATUS_AFTER_HELP: &str = "\
Exit codes:
  0  up to date (--tracker: the tracker answered and every online device
     is up to date)
  1  not up to date (syncing, waiting, tracker unreachable)
  2  the peer or tracker cannot be reached (not running, or no access to
     its control socket)

Examples:
  dartsync status                       # ~/DartSync
  dartsync status ~/Photos --wait 600   # in a script: wait until synced
  dartsync status --watch               # live progress, Ctrl-C to stop
  dartsync status --json | jq .pending  # machine-readable (docs/status.md)
  dartsync status --tracker             # on the tracker's machine";

const VERSIONS_LONG_ABOUT: &str = "\
List the saved versions of a file, newest first, numbered from 1: when
each was saved (UTC), its size, the device that made it and what became of
it (replaced or deleted, and by which device).

A peer keeps a version when it replaces or deletes a file on behalf of the
cluster, in DIR/.dartsync/versions: every version from the last hour, one
per hour for a day, one per day for 30 days, within 10% of the folder's
size (see --versions* in `dartsync --help`). Versions are per device: the
device where a file was edited or deleted keeps no copy of what it had, the
others do. Asks the running peer of the folder over its control socket.

PATH is a file in the synced folder: relative to the current directory
(the folder is the nearest parent holding .dartsync/, else the config
file's [peer] folder, else ~/DartSync), or relative to --folder DIR.";

const VERSIONS_AFTER_HELP: &str = "\
Exit codes:
  0  listed (also when there are none)
  1  refused (e.g. the path is outside the folder)
  2  no peer is running for the folder, or it cannot be asked

Examples:
  cd ~/DartSync && dartsync versions notes/todo.txt
  dartsync versions --folder ~/DartSync notes/todo.txt
  dartsync versions notes/todo.txt --json | jq '.versions[0]'";

const RESTORE_LONG_ABOUT: &str = "\
Put back a saved version of a file (see `dartsync versions`), by default
the newest one, at its own path or at --to NEW_PATH.

The restore goes through the normal sync path: the peer copies the saved
version into a temp file, checks it against its recorded hash and renames
it into place; the file it replaces is kept in the version history first.
The scanner then sees a local change and announces it as a new version, so
every device gets it. A deleted file comes back the same way. Asks the
running peer of the folder over its control socket.";

const RESTORE_AFTER_HELP: &str = "\
Exit codes:
  0  restored
  1  refused (no saved versions here, no such number, an ambiguous --at,
     --to exists without --force, a folder in the way, ...)
  2  no peer is running for the folder, or it cannot be asked

Examples:
  dartsync restore notes/todo.txt                      # the newest saved version
  dartsync restore notes/todo.txt --version 3          # number 3 of `dartsync versions`
  dartsync restore notes/todo.txt --at '2024-05-01 10:15'   # saved in that minute (UTC)
  dartsync restore notes/todo.txt --version 2 --to notes/todo-old.txt";

/// Which file, in which folder (shared by `versions` and `restore`).
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// The file: relative to the current directory, or to --folder.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// The synced folder PATH is relative to (default: the nearest parent
    /// of PATH holding .dartsync/, else the config file's `[peer] folder`,
    /// else ~/DartSync).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,

    /// Print the peer's answer as JSON and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of `dartsync versions`.
#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// The file and folder.
    #[command(flatten)]
    pub file: FileArgs,
}

/// Options of `dartsync restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The file and folder.
    #[command(flatten)]
    pub file: FileArgs,

    /// The version saved at TIME, as `dartsync versions` shows it (UTC:
    /// `2024-05-01 10:15:00`, or just `2024-05-01 10:15`), RFC 3339 with an
    /// offset, or a history stamp (`20240501-101500`); if none was saved
    /// within that second (minute, day), the newest saved before it.
    /// Several in the span: refused as ambiguous.
    #[arg(long, value_name = "TIME", conflicts_with = "version")]
    pub at: Option<String>,

    /// The version numbered N by `dartsync versions` (1 = the newest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub version: Option<u32>,

    /// Write the version to NEW_PATH (in the same folder) instead, leaving
    /// PATH as it is.
    #[arg(long, value_name = "NEW_PATH")]
    pub to: Option<PathBuf>,

    /// With --to: replace what is at NEW_PATH (it is kept in the history).
    #[arg(long, requires = "to")]
    pub force: bool,
}

/// Options of `dartsync status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The synced folder to ask about (default: the config file's
    /// `[peer] folder`, else ~/DartSync).
    #[arg(value_name = "DIR", conflicts_with = "tracker")]
    pub dir: Option<PathBuf>,

    /// Print the status object exactly as the peer or tracker answered it
    /// (JSON, schema in docs/status.md) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,

    /// Re-render every second (progress bars on a terminal, a fresh plain
    /// report otherwise) until Ctrl-C.
    #[arg(long, conflicts_with_all = ["json", "wait"])]
    pub watch: bool,

    /// Poll every 250 ms until up to date or SECS seconds pass, then print
    /// the last status; the exit code is that of the last answer.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,

    /// Ask the tracker running on this machine instead of a peer.
    #[arg(long)]
    pub tracker: bool,

    /// With --tracker: the tracker's data directory, which holds its
    /// control socket (default: the config file's `[tracker] data_dir`,
    /// else ~/.local/share/dartsync/tracker).
    #[arg(long, value_name = "DIR", requires = "tracker")]
    pub data: Option<PathBuf>,
}
