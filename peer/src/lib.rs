//! `dartsync-peer`: one synced folder on one device.
//!
//! Owns the local index, scanner, watcher, tracker client, piece server,
//! downloader and apply engine. Entry point: [`run`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use dartsync_shared::config::PeerConfig;
use dartsync_shared::key::ClusterKey;
use tokio_util::sync::CancellationToken;

/// Why the peer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The synced folder could not be created or opened.
    #[error("cannot use folder {path}: {source}")]
    Folder {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs the peer until `shutdown` is cancelled.
pub async fn run(config: PeerConfig, key: ClusterKey, shutdown: CancellationToken) -> Result<(), PeerError> {
    std::fs::create_dir_all(&config.folder)
        .map_err(|source| PeerError::Folder { path: config.folder.clone(), source })?;
    tracing::info!(folder = %config.folder.display(), key = key.fingerprint(), "peer started");
    shutdown.cancelled().await;
    tracing::info!("peer stopped");
    Ok(())
}
