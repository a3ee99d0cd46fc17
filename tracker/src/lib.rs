//! `dartsync-tracker`: the tracker of a DartSync cluster.
//!
//! Owns the global file table, the peer table with heartbeat expiry, the
//! conflict rules and their persistence. It never stores file content.
//! Entry point: [`run`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use dartsync_shared::config::TrackerConfig;
use dartsync_shared::key::ClusterKey;
use tokio_util::sync::CancellationToken;

/// Why the tracker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs the tracker until `shutdown` is cancelled.
pub async fn run(config: TrackerConfig, key: ClusterKey, shutdown: CancellationToken) -> Result<(), TrackerError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| TrackerError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| TrackerError::Bind { addr: config.listen, source })?;
    tracing::info!(%addr, key = key.fingerprint(), "tracker listening on {addr}");
    shutdown.cancelled().await;
    tracing::info!("tracker stopped");
    Ok(())
}
