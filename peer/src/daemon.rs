//! Wiring of a running peer: opens the folder's state, starts the local
//! scanner and watcher, the piece server, the tracker client and the sync
//! engine, and stops them all together.
//!
//! Every task is tied to one `CancellationToken`; when any essential task
//! ends, the others are cancelled too, so a failure never leaves a
//! half-running peer.

use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::config::PeerConfig;
use dartsync_shared::key::ClusterKey;
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chunk_source::ChunkSource;
use crate::dirs::PeerDirs;
use crate::download::{DownloadLimits, Downloader};
use crate::engine::{Engine, EngineParts};
use crate::history::History;
use crate::index::Index;
use crate::local::{LocalConfig, LocalError, LocalState};
use crate::serve::{self, ServeConfig, ServeError};
use crate::source::IndexSource;
use crate::tracker_client::{ClientConfig, SummaryFn, TrackerClient, probe_welcome};

/// Switches for end-to-end tests only; hidden from `--help`.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Serve corrupted chunks (a lying holder).
    pub corrupt_chunks: bool,
    /// Delay every chunk served by this long (a slow holder).
    pub serve_delay: Duration,
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

    fn locate(&self, hash: &dartsync_shared::ContentHash, len: u32) -> Vec<(std::path::PathBuf, u64)> {
        std::thread::sleep(self.delay);
        self.inner.locate(hash, len)
    }
}

/// Why the peer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No tracker address was configured.
    #[error("no tracker address: pass --tracker-addr HOST:PORT (or set peer.tracker_addr in the config file)")]
    NoTracker,
    /// The folder's state could not be opened.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The piece server could not start or stopped.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the peer until `shutdown` is cancelled.
pub async fn run(
    config: PeerConfig,
    key: ClusterKey,
    hooks: TestHooks,
    shutdown: CancellationToken,
) -> Result<(), PeerError> {
    let tracker_addr = config.tracker_addr.clone().ok_or(PeerError::NoTracker)?;
    let dirs = PeerDirs::create(&config.folder)?;
    let identity = dirs.load_identity()?;
    let me = identity.peer_id();
    tracing::info!("peer id {me} syncing {}", dirs.root.display());

    // The chunking granularity this folder was indexed with (the tracker's
    // default unless a previous run learnt another one).
    let stored = {
        let index = Index::open(&dirs.index)?;
        index.piece_len()?
    };
    let piece_len = match stored {
        Some(p) => p,
        // A new folder: chunk with the cluster's piece length from the start.
        None => {
            let probe = ClientConfig {
                tracker_addr: tracker_addr.clone(),
                listen_port: 0,
                key: key.clone(),
                identity: identity.clone(),
            };
            match probe_welcome(&probe).await {
                Ok(welcome) => welcome.piece_len,
                Err(e) => {
                    tracing::warn!("cannot ask the tracker for its piece length ({e}); using the default");
                    DEFAULT_PIECE_LEN
                }
            }
        }
    };
    let tasks = shutdown.child_token();
    let mut local_cfg = LocalConfig::new(dirs.root.clone(), me.short());
    local_cfg.piece_len = piece_len;
    local_cfg.rescan = config.rescan;
    let (local, changes) = LocalState::start(local_cfg, tasks.clone()).await?;

    let listener = serve::bind(config.listen).await?;
    let listen_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tracing::info!("piece server listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let source = Arc::new(IndexSource::new(local.index().clone(), local.dirs().root.clone()));
    let serve_cfg = ServeConfig {
        slots_per_peer: config.upload_slots_per_peer,
        slots_total: config.upload_slots_total,
        corrupt_for_tests: hooks.corrupt_chunks,
        tmp_dir: local.dirs().tmp.clone(),
    };
    let served_source: Arc<dyn ChunkSource> = if hooks.serve_delay.is_zero() {
        source.clone()
    } else {
        Arc::new(SlowSource { inner: source.clone(), delay: hooks.serve_delay })
    };
    let server =
        tokio::spawn(serve::serve(listener, key.clone(), identity.clone(), served_source, serve_cfg, tasks.clone()));

    let downloader = Arc::new(Downloader::new(
        key.clone(),
        identity.clone(),
        source.clone(),
        local.dirs().tmp.clone(),
        DownloadLimits { in_flight_per_holder: config.upload_slots_per_peer.clamp(1, 4), ..DownloadLimits::default() },
    ));

    let (events_tx, events_rx) = mpsc::channel(64);
    let index = local.index().clone();
    let summary: SummaryFn = Arc::new(move || index.records().map_err(|e| e.to_string()));
    let (client, client_task) = TrackerClient::spawn(
        ClientConfig { tracker_addr, listen_port, key, identity },
        summary,
        events_tx,
        tasks.clone(),
    );

    let engine = Engine::new(EngineParts {
        history: History::new(local.dirs().versions.clone(), config.versions_keep),
        local: local.clone(),
        client,
        tracker_events: events_rx,
        local_changes: changes,
        downloader,
        source,
        me,
        max_parallel_downloads: config.max_parallel_downloads,
    });
    let engine_task = tokio::spawn(engine.run(tasks.clone()));

    // Run until shutdown, or until the piece server fails.
    let mut result = Ok(());
    tokio::select! {
        _ = tasks.cancelled() => {}
        served = server => {
            if let Ok(Err(e)) = served {
                tracing::error!("{e}");
                result = Err(PeerError::Serve(e));
            }
        }
    }
    tasks.cancel();
    let _ = engine_task.await;
    let _ = client_task.await;
    local.stopped().await;
    tracing::info!("peer stopped");
    result
}
