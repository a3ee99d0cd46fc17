//! Wiring of a running peer: opens the folder's state, starts the local
//! scanner and watcher, the piece server, the tracker client and the sync
//! engine, and stops them all together.
//!
//! Supervision: the engine, the tracker client, the piece server and the
//! scanner task run under one child `CancellationToken`. If any of them
//! ends before shutdown was asked for (an error, a panic, a task that
//! returned), the daemon logs which one and why, cancels the rest, waits
//! for them, and returns [`PeerError::TaskEnded`] so the process exits
//! non-zero (and systemd restarts it) instead of limping on.

use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::RelPath;
use dartsync_shared::config::PeerConfig;
use dartsync_shared::control::{CONTROL_SOCKET, ControlServer, Handler, RequestKind};
use dartsync_shared::dashboard::{Dashboard, DashboardError, Kind, TOKEN_FILE, load_or_create_token};
use dartsync_shared::device::{default_device_name, local_host_name};
use dartsync_shared::key::ClusterKey;
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::local::{LocalConfig, LocalError, LocalState, OpenFolder};
use crate::status::StatusBoard;
use crate::sync::engine::{DiskReserve, Engine, EngineCommand, EngineParts, ReleaseFn};
use crate::sync::history::History;
use crate::sync::index_source::IndexSource;
use crate::sync::locate::{self, Locator};
use crate::sync::restore::{RestoreRequest, Versions};
use crate::sync::tracker_client::{ClientConfig, SummaryFn, TrackerClient, probe_welcome};
use crate::transfer::{self, ChunkSource, DownloadLimits, Downloader, PeerGate, ServeConfig, ServeError};

/// Switches for end-to-end tests only; hidden from `--help`.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Serve corrupted chunks (a lying holder).
    pub corrupt_chunks: bool,
    /// Delay every chunk served by this long (a slow holder).
    pub serve_delay: Duration,
    /// Ask holders for chunk lists in pages of at most this many entries
    /// (exercises paging with small files).
    pub chunk_list_page: Option<u32>,
}

/// A chunk source that answers every chunk lookup late: makes this peer a
/// slow holder in tests (lookups run on blocking threads, so sleeping there
/// delays only the request at hand).
#[derive(Debug)]
struct SlowSource {
    inner: Arc<IndexSource>,
    delay: Duration,
}

impl ChunkSource for SlowSource {
    fn chunk_list(&self, content: &dartsync_shared::ContentHash) -> Option<Vec<dartsync_shared::ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &dartsync_shared::ContentHash, len: u32) -> Vec<crate::transfer::chunk_source::Candidate> {
        std::thread::sleep(self.delay);
        self.inner.locate(hash, len)
    }
    fn open_candidate(&self, path: &std::path::Path) -> std::io::Result<std::fs::File> {
        self.inner.open_candidate(path)
    }
}

/// Why the peer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No tracker address was configured and LAN discovery is off.
    #[error(
        "no tracker address: pass --tracker-addr HOST:PORT (or set peer.tracker_addr in the config file), \
         or drop --no-discovery to find the tracker on the LAN"
    )]
    NoTracker,
    /// Looking for the tracker on the LAN failed (several trackers of the
    /// cluster, or no mDNS).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The folder's state could not be opened.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The piece server could not bind its address.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The web dashboard could not start.
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
    /// An essential task ended before shutdown was asked for.
    #[error("the {task} stopped unexpectedly: {why}")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// What it reported.
        why: String,
    },
}

/// On a folder's first start without a tracker address, how long to look
/// on the LAN for the tracker (to learn the cluster's chunk size) before
/// indexing with the default; the tracker client keeps looking after.
const FIRST_START_DISCOVERY: Duration = Duration::from_secs(10);

/// Partial downloads untouched this long are abandoned: removed.
const STALE_TEMP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often `.dartsync/tmp` is swept (also once at startup).
const TEMP_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Removes abandoned temp files at startup and then every
/// [`TEMP_SWEEP_EVERY`] until `cancel` fires.
async fn clean_temp_files(downloader: &Arc<Downloader>, cancel: &CancellationToken) {
    loop {
        let d = downloader.clone();
        match tokio::task::spawn_blocking(move || d.cleanup_stale(STALE_TEMP_AFTER)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "removed abandoned partial downloads"),
            Ok(Err(e)) => tracing::warn!("cannot clean the temp folder: {e}"),
            Err(e) => tracing::warn!("temp folder cleanup failed: {e}"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(TEMP_SWEEP_EVERY) => {}
        }
    }
}

/// The whole history is thinned this often (also once at startup).
const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// A save that takes the history over its budget starts a sweep, but not
/// sooner than this after the last one.
const HISTORY_SWEEP_GAP: Duration = Duration::from_secs(10);

/// Thins the version history ([`History::sweep`]) at startup, hourly, and
/// soon after a save takes it over its budget, until `cancel` fires.
async fn thin_history(history: &History, local: &LocalState, cancel: &CancellationToken) {
    loop {
        let (h, index) = (history.clone(), local.index().clone());
        let swept = tokio::task::spawn_blocking(move || {
            let folder_bytes = index.live_bytes().map_err(|e| e.to_string())?;
            h.sweep(folder_bytes).map_err(|e| e.to_string())
        })
        .await;
        match swept {
            Ok(Ok(s)) if s.deleted > 0 => tracing::info!(
                deleted = s.deleted,
                freed = s.freed,
                kept = s.kept,
                budget = s.budget,
                "thinned the version history"
            ),
            Ok(Ok(s)) => tracing::debug!(kept = s.kept, budget = s.budget, "version history within its schedule"),
            Ok(Err(e)) => tracing::warn!("cannot thin the version history: {e}"),
            Err(e) => tracing::warn!("version history thinning failed: {e}"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(HISTORY_SWEEP_EVERY) => {}
            () = history.over_budget() => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(HISTORY_SWEEP_GAP) => {}
                }
            }
        }
    }
}

/// How long a control request may wait for the engine.
const ENGINE_ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Answers the dashboard's API from the board: reads only.
fn status_handler(status: StatusBoard) -> Handler {
    control_handler(status, None, None)
}

/// Answers the control socket (owner only): the board; with `versions`,
/// `versions` and `restore` requests; with `engine`, `revert`.
fn control_handler(
    status: StatusBoard,
    versions: Option<Versions>,
    engine: Option<mpsc::Sender<EngineCommand>>,
) -> Handler {
    Arc::new(move |kind| {
        if let RequestKind::Revert { path } = kind {
            return match engine.clone() {
                Some(engine) => Box::pin(ask_engine_to_revert(engine, path)),
                None => Box::pin(async { Err("revert is possible only through the control socket".to_owned()) }),
            };
        }
        let answer = match kind {
            RequestKind::Status => serde_json::to_value(status.snapshot()).map_err(|e| e.to_string()),
            RequestKind::DashboardUrl => match status.dashboard() {
                Some(url) => Ok(serde_json::json!({ "url": url })),
                None => Err("this peer serves no dashboard (started with --http off)".to_owned()),
            },
            RequestKind::Versions { path } => match versions.clone() {
                Some(v) => {
                    return Box::pin(async move {
                        let list = v.list(&path).await.map_err(|e| e.to_string())?;
                        serde_json::to_value(list).map_err(|e| e.to_string())
                    });
                }
                None => Err("versions are listed only through the control socket".to_owned()),
            },
            RequestKind::Restore { path, at, version, to, force } => match versions.clone() {
                Some(v) => {
                    return Box::pin(async move {
                        let restored = v
                            .restore(RestoreRequest { path, at, version, to, force })
                            .await
                            .map_err(|e| e.to_string())?;
                        serde_json::to_value(restored).map_err(|e| e.to_string())
                    });
                }
                None => Err("restore is possible only through the control socket".to_owned()),
            },
            other => Err(format!("`{}` is a request for the tracker, and this is a peer", other.name())),
        };
        Box::pin(async move { answer })
    })
}

/// Sends `revert` to the engine and waits for its answer.
async fn ask_engine_to_revert(
    engine: mpsc::Sender<EngineCommand>,
    path: Option<String>,
) -> Result<serde_json::Value, String> {
    let under = match path.as_deref().map(str::trim).filter(|p| !p.is_empty() && *p != ".") {
        Some(p) => Some(RelPath::new(p.trim_end_matches('/')).map_err(|e| format!("bad path {p:?}: {e}"))?),
        None => None,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    engine.send(EngineCommand::Revert { under, reply }).await.map_err(|_| "the peer is stopping".to_owned())?;
    match tokio::time::timeout(ENGINE_ANSWER_WITHIN, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the peer is stopping".to_owned()),
        Err(_) => Err("the peer did not answer in time; see its log".to_owned()),
    }
}

/// How a supervised task ended.
type TaskResult = (&'static str, Result<(), String>);

/// Runs the peer until `shutdown` is cancelled. `release_memory`, if
/// given, is called (on a blocking thread) after bursts of syncing to give
/// freed heap back to the system: the binary passes glibc's `malloc_trim`.
pub async fn run(
    config: PeerConfig,
    key: ClusterKey,
    hooks: TestHooks,
    release_memory: Option<ReleaseFn>,
    shutdown: CancellationToken,
) -> Result<(), PeerError> {
    if config.tracker_addr.is_none() && !config.discovery {
        return Err(PeerError::NoTracker);
    }
    let folder_path = config.folder.clone();
    let folder = tokio::task::spawn_blocking(move || OpenFolder::open(&folder_path))
        .await
        .map_err(|e| PeerError::Local(LocalError::Task(e)))??;
    let identity = folder.identity().clone();
    let me = identity.peer_id();
    let name = config.name.clone().unwrap_or_else(default_device_name);
    tracing::info!(
        id = %me,
        "syncing {} as {name} (cluster key fingerprint {})",
        folder.dirs().root.display(),
        key.fingerprint()
    );
    // Without --tracker-addr: the address found on the LAN last time, else
    // none yet (the LAN is asked).
    let mut tracker_addr = match &config.tracker_addr {
        Some(addr) => addr.clone(),
        None => locate::remembered(&folder.dirs().tracker_addr).unwrap_or_default(),
    };
    let status = StatusBoard::new(&folder.dirs().root, name.clone(), me, tracker_addr.clone());
    let locator = match &config.tracker_addr {
        Some(_) => None,
        None => {
            status.set_tracker_addr(tracker_addr.clone(), true);
            if !tracker_addr.is_empty() {
                tracing::info!("trying the tracker address found on the LAN last time: {tracker_addr}");
            }
            Some(Arc::new(Locator::new(
                key.discovery_fingerprint(),
                folder.dirs().tracker_addr.clone(),
                folder.dirs().tracker_pin.clone(),
                status.clone(),
            )))
        }
    };

    // The chunking granularity this folder was indexed with; a new folder
    // is chunked with the cluster's piece length from the start.
    let piece_len = match folder.piece_len() {
        Some(p) => p,
        None => {
            if tracker_addr.is_empty()
                && let Some(locator) = &locator
                && let Some(found) = locator.find(Some(FIRST_START_DISCOVERY)).await?
            {
                // A first start with no address: the LAN was asked for a
                // while, so the folder is chunked with the cluster's piece
                // length.
                tracker_addr = found;
            }
            let probe = ClientConfig {
                tracker_addr: tracker_addr.clone(),
                listen_port: 0,
                key: key.clone(),
                identity: identity.clone(),
                pin_file: folder.dirs().tracker_pin.clone(),
                name: name.clone(),
                status: status.clone(),
                gate: PeerGate::new(),
                locator: None,
            };
            let probed = match tracker_addr.is_empty() {
                true => Err("no tracker found on the LAN yet".to_owned()),
                false => probe_welcome(&probe).await.map_err(|e| e.to_string()),
            };
            match probed {
                Ok(welcome) => {
                    if let Some(locator) = &locator {
                        locator.remember(&tracker_addr).await;
                    }
                    welcome.piece_len
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot reach the tracker to learn the cluster's chunk size ({e}); indexing with the \
                         default of {} KiB (files still sync; edits of big files may transfer more)",
                        DEFAULT_PIECE_LEN / 1024
                    );
                    DEFAULT_PIECE_LEN
                }
            }
        }
    };

    let tasks = shutdown.child_token();
    let mut local_cfg = LocalConfig::new(me.short());
    local_cfg.piece_len = piece_len;
    local_cfg.rescan = config.rescan;
    local_cfg.ignore_perms = config.ignore_perms;
    local_cfg.receive_only = config.receive_only;
    let (local, changes) = LocalState::start(folder, local_cfg, tasks.clone()).await?;

    let listener = transfer::bind(config.listen).await?;
    let listen_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tracing::info!("piece server listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let source = Arc::new(IndexSource::new(local.index().clone(), local.jails().clone()));
    // Whom the piece server serves: the devices the tracker lists as
    // admitted (the tracker client feeds it).
    let gate = PeerGate::new();
    let serve_cfg = ServeConfig {
        slots_per_peer: config.upload_slots_per_peer,
        slots_total: config.upload_slots_total,
        corrupt_for_tests: hooks.corrupt_chunks,
        tmp_dir: local.dirs().tmp.clone(),
        gate: gate.clone(),
    };
    let served_source: Arc<dyn ChunkSource> = if hooks.serve_delay.is_zero() {
        source.clone()
    } else {
        Arc::new(SlowSource { inner: source.clone(), delay: hooks.serve_delay })
    };
    let downloader = Arc::new(Downloader::new(
        key.clone(),
        identity.clone(),
        source.clone(),
        local.dirs().tmp.clone(),
        DownloadLimits {
            in_flight_per_holder: config.upload_slots_per_peer.clamp(1, 4),
            chunk_list_page: hooks.chunk_list_page.unwrap_or(DownloadLimits::default().chunk_list_page),
            ..DownloadLimits::default()
        },
    ));

    let board = status.clone();
    let history = History::new(local.jails().versions.clone(), local.index().clone(), config.versions)
        .with_names(Arc::new(move |id| board.device_name(id)));
    let versions = Versions::new(history.clone(), local.clone(), me.short(), name.clone());

    let mut supervised: JoinSet<TaskResult> = JoinSet::new();
    {
        let (history, local, cancel) = (history.clone(), local.clone(), tasks.clone());
        supervised.spawn(async move {
            thin_history(&history, &local, &cancel).await;
            ("version history thinner", Ok(()))
        });
    }
    {
        let (downloader, cancel) = (downloader.clone(), tasks.clone());
        supervised.spawn(async move {
            clean_temp_files(&downloader, &cancel).await;
            ("temp-file cleaner", Ok(()))
        });
    }
    {
        let (key, identity, cancel) = (key.clone(), identity.clone(), tasks.clone());
        supervised.spawn(async move {
            transfer::serve(listener, key, identity, served_source, serve_cfg, cancel).await;
            ("piece server", Ok(()))
        });
    }
    let (events_tx, events_rx) = mpsc::channel(64);
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let index = local.index().clone();
    let summary: SummaryFn = Arc::new(move || index.records().map_err(|e| e.to_string()));
    let control_path = local.dirs().state.join(CONTROL_SOCKET);
    {
        let (status, cancel) = (status.clone(), tasks.clone());
        match ControlServer::bind(&control_path) {
            Ok(server) => {
                let handler = control_handler(status, Some(versions), Some(commands_tx.clone()));
                supervised.spawn(async move {
                    server.serve(handler, cancel).await;
                    ("control socket", Ok(()))
                });
            }
            Err(e) => tracing::warn!("`dartsync status` will not work for this folder: {e}"),
        }
    }
    if let Some(addr) = config.http {
        let token = if Dashboard::needs_token(addr) {
            Some(load_or_create_token(&local.dirs().state.join(TOKEN_FILE))?)
        } else {
            None
        };
        let dashboard = Dashboard::bind(addr, token).await?;
        let url = dashboard.url(&local_host_name());
        tracing::info!("dashboard at {url}");
        status.set_dashboard(url);
        let (handler, cancel) = (status_handler(status.clone()), tasks.clone());
        supervised.spawn(async move {
            dashboard.serve(Kind::Peer, handler, cancel).await;
            ("dashboard", Ok(()))
        });
    }
    let (client, client_task) = TrackerClient::spawn(
        ClientConfig {
            tracker_addr,
            listen_port,
            key,
            identity,
            pin_file: local.dirs().tracker_pin.clone(),
            name,
            status: status.clone(),
            gate: gate.clone(),
            locator,
        },
        summary,
        events_tx,
        tasks.clone(),
    );
    supervised.spawn(async move {
        let ended = match client_task.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        ("tracker client", ended)
    });
    let engine = Engine::new(EngineParts {
        history,
        local: local.clone(),
        client,
        tracker_events: events_rx,
        local_changes: changes,
        downloader,
        source,
        me,
        max_parallel_downloads: config.max_parallel_downloads,
        chunked_with: piece_len,
        ignore_perms: config.ignore_perms,
        receive_only: config.receive_only,
        commands: commands_rx,
        min_disk_free: config.min_disk_free.map_or(DiskReserve::Default, DiskReserve::Bytes),
        status,
        release_memory,
    });
    let engine_cancel = tasks.clone();
    supervised.spawn(async move {
        engine.run(engine_cancel).await;
        ("sync engine", Ok(()))
    });
    {
        let local = local.clone();
        supervised.spawn(async move {
            local.stopped().await;
            ("scanner", Ok(()))
        });
    }

    // Run until shutdown, or until a supervised task ends on its own.
    let mut result = Ok(());
    tokio::select! {
        () = tasks.cancelled() => {}
        Some(joined) = supervised.join_next() => {
            let (task, why) = match joined {
                Ok((task, Ok(()))) => (task, "it returned".to_owned()),
                Ok((task, Err(e))) => (task, e),
                Err(e) => ("a peer task", e.to_string()),
            };
            if !tasks.is_cancelled() {
                tracing::error!("the {task} stopped unexpectedly ({why}); stopping the peer");
                result = Err(PeerError::TaskEnded { task, why });
            }
        }
    }
    tasks.cancel();
    while let Some(joined) = supervised.join_next().await {
        if let Err(e) = joined
            && e.is_panic()
        {
            tracing::error!("a peer task panicked while stopping: {e}");
        }
    }
    tracing::info!("peer stopped");
    result
}
