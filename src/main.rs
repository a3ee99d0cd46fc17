//! The `dartsync` binary: parses the command line, sets up logging and
//! signals, and starts the tracker or a peer, or runs a subcommand
//! (`init`, `status`, `versions`, `restore`, `tracker`, `completions`,
//! `man`). All sync logic lives in the library crates; this file only
//! wires them up and reports errors.

mod cli;
mod code_pages;
mod completions;
mod control_cmd;
mod demo;
mod devices_cmd;
mod invite_cmd;
mod join_cmd;
mod logging;
mod malloc_tuning;
mod report;
mod revert_cmd;
mod settings;
mod status_cmd;
mod status_view;
mod tracker_cmd;
mod versions_cmd;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use dartsync_shared::config::PeerConfig;
use dartsync_shared::key::{ClusterKey, KeyError};
use tokio_util::sync::CancellationToken;

use crate::settings::Mode;

fn main() -> ExitCode {
    // Before any thread exists (see the module).
    malloc_tuning::limit_arenas();
    let cli = cli::Cli::parse();
    logging::init(settings::log_level(&cli));
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report::format_error(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match settings::resolve(cli)? {
        Mode::Init { key_file, force } => init(&key_file, force).map(|()| ExitCode::SUCCESS),
        Mode::Status(request) => Ok(status_cmd::run(&request)),
        Mode::Revert(request) => Ok(revert_cmd::run(&request)),
        Mode::TrackerAdmin(request) => Ok(tracker_cmd::run(&request)),
        Mode::Versions(request) => Ok(versions_cmd::run(&request)),
        Mode::Completions(shell) => completions::print(&completions::completions(shell)).map(|()| ExitCode::SUCCESS),
        Mode::Man => completions::print(&completions::man()?).map(|()| ExitCode::SUCCESS),
        Mode::Demo(request) => demo::run(&request),
        Mode::DashboardUrl { data_dir } => dashboard_url(&data_dir),
        Mode::Invite(request) => Ok(invite_cmd::run(&request)),
        Mode::Join(request) => {
            malloc_tuning::use_one_arena();
            let Some(config) = runtime()?.block_on(join_cmd::join(&request))? else {
                return Ok(ExitCode::SUCCESS);
            };
            let key = ClusterKey::load(&request.key_file).context("cannot load the cluster key")?;
            run_peer(config, key, dartsync_peer::TestHooks::default())?;
            Ok(ExitCode::SUCCESS)
        }
        Mode::Tracker { config, key_file } => {
            let key = tracker_key(&key_file)?;
            malloc_tuning::unmap_large_blocks();
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal()?;
                let tracker = dartsync_tracker::Tracker::bind(config, key)
                    .await
                    .context("tracker failed")?
                    .release_memory_with(malloc_tuning::release_free_memory);
                code_pages::spawn_release_after_start();
                tracker.run(shutdown).await.context("tracker failed")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Mode::Peer { config, key_file, hooks } => {
            malloc_tuning::use_one_arena();
            let key = ClusterKey::load(&key_file).map_err(|e| match e {
                KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => anyhow::anyhow!(
                    "no cluster key at {}: copy the tracker's key file there, or pass --key-file \
                     (create a new cluster with `dartsync init`)",
                    key_file.display()
                ),
                other => anyhow::Error::new(other).context("cannot load the cluster key"),
            })?;
            run_peer(config, key, hooks)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a peer until a signal stops it, with the binary's release of
/// freed heap (`--peer` and `join`; both chose one malloc arena first).
fn run_peer(config: PeerConfig, key: ClusterKey, hooks: dartsync_peer::TestHooks) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let shutdown = shutdown_on_signal()?;
        let release = Some(malloc_tuning::release_free_memory as dartsync_peer::ReleaseFn);
        dartsync_peer::run(config, key, hooks, release, shutdown).await.context("peer failed")
    })
}

/// `dartsync dashboard-url`: asks the tracker on this machine.
fn dashboard_url(data_dir: &Path) -> anyhow::Result<ExitCode> {
    use dartsync_shared::control::{self, CONTROL_SOCKET, ControlError, RequestKind};
    let socket = data_dir.join(CONTROL_SOCKET);
    match control::request(&socket, data_dir, RequestKind::DashboardUrl, std::time::Duration::from_secs(5)) {
        Ok(answer) => {
            let url = answer["url"].as_str().context("the tracker's answer has no url")?;
            println!("{url}");
            Ok(ExitCode::SUCCESS)
        }
        Err(ControlError::NotRunning { .. }) => {
            eprintln!(
                "error: no tracker is running with data dir {} (no control socket answers at {}); pass --data DIR if it uses another",
                data_dir.display(),
                socket.display()
            );
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn init(key_file: &Path, force: bool) -> anyhow::Result<()> {
    ClusterKey::refuse_directory(key_file)?;
    if key_file.exists() {
        if !force {
            bail!(
                "{} already exists; pass --force to replace it (peers using the old key will be locked out)",
                key_file.display()
            );
        }
        std::fs::remove_file(key_file).with_context(|| format!("cannot remove {}", key_file.display()))?;
    }
    let key = ClusterKey::generate();
    key.save_new(key_file).context("cannot write the cluster key")?;
    println!("wrote a new cluster key to {} (fingerprint {})", key_file.display(), key.fingerprint());
    println!("copy this file to every peer (mode 0600), or point them at it with --key-file");
    Ok(())
}

/// The tracker creates a key when none exists, and says how to share it.
fn tracker_key(key_file: &Path) -> anyhow::Result<ClusterKey> {
    if key_file.exists() {
        return ClusterKey::load(key_file).context("cannot load the cluster key");
    }
    let key = ClusterKey::generate();
    key.save_new(key_file).context("cannot create a cluster key")?;
    tracing::warn!(
        "no cluster key found: created {} (fingerprint {}); copy it to every peer and start them with --key-file",
        key_file.display(),
        key.fingerprint()
    );
    Ok(key)
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
