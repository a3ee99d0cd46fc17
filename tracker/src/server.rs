//! The accept loop: one session task per connection, capped at
//! `max_peers`, all owned by one `JoinSet`.
//!
//! A `biased` select puts shutdown first, then reaping finished sessions
//! (a panicking session is re-raised, not swallowed), then `accept`. Each
//! session holds a semaphore permit for its whole life. A connection beyond
//! the cap is answered, while at most [`REFUSAL_SLOTS`] such answers are in
//! progress, with a handshake and `Refused { reason }`; beyond that it is
//! closed at once, so a flood costs a bounded amount of work. Accept errors
//! (out of file descriptors) back off briefly instead of spinning. On
//! shutdown every session task is cancelled and awaited.
//!
//! Not here: what a session does (`session`), the state (`actor`).

use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::channel;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::session::{self, SessionCtx};

/// Connections beyond the cap answered with `Refused` at the same time.
const REFUSAL_SLOTS: usize = 4;

/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts peers until `shutdown` is cancelled.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<SessionCtx>, max_peers: usize, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(max_peers));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let mut sessions = JoinSet::new();
    let mut next_session = 0u64;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = sessions.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    next_session += 1;
                    let span = tracing::info_span!("peer", addr = %remote);
                    if let Ok(permit) = permits.clone().try_acquire_owned() {
                        let ctx = ctx.clone();
                        let session = next_session;
                        sessions.spawn(
                            async move {
                                session::run(stream, remote, session, ctx).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    } else if let Ok(slot) = refusals.clone().try_acquire_owned() {
                        tracing::warn!("refusing connection from {remote}: tracker full ({max_peers} peers)");
                        let ctx = ctx.clone();
                        sessions.spawn(
                            async move {
                                refuse_full(stream, &ctx, max_peers).await;
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    } else {
                        tracing::warn!("closing connection from {remote}: tracker full ({max_peers} peers)");
                        drop(stream);
                    }
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    sessions.shutdown().await;
}

/// Completes the handshake only to say why the connection is refused.
async fn refuse_full(stream: TcpStream, ctx: &SessionCtx, max_peers: usize) {
    if let Ok(channel) = channel::accept(stream, &ctx.key, &ctx.identity).await {
        let (_reader, mut writer) = channel.split();
        session::refuse(&mut writer, format!("tracker full: {max_peers} peers online")).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
    }
}
