//! The accept loop: one session task per connection, capped at
//! `max_peers`, all owned by one `JoinSet`.
//!
//! A `biased` select puts shutdown first, then reaping finished sessions
//! (a panicking session is re-raised, not swallowed), then `accept`. Each
//! session holds a semaphore permit for its whole life. A connection beyond
//! the cap is answered, while at most [`REFUSAL_SLOTS`] such answers are in
//! progress, with a handshake and `Refused { reason }`; beyond that it is
//! closed at once, so a flood costs a bounded amount of work.
//!
//! Accept errors (out of file descriptors, mostly) pause accepting with an
//! exponential, jittered [`Backoff`] from [`ACCEPT_BACKOFF_INITIAL`] to
//! [`ACCEPT_BACKOFF_MAX`], reset by the next successful accept; the loop
//! never gives up. While paused it still reaps sessions (whose exit frees
//! descriptors) and still obeys shutdown. The first error of a streak is a
//! `warn`, the rest `debug`, and the recovery one `info` line with the count.
//!
//! On shutdown every session task is cancelled and awaited.
//!
//! Not here: what a session does (`session`), the state (`actor`).

use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::backoff::Backoff;
use dartsync_shared::channel;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::session::{self, SessionCtx};

/// Connections beyond the cap answered with `Refused` at the same time.
const REFUSAL_SLOTS: usize = 4;

/// Nominal pause after the first failed `accept` of a streak.
const ACCEPT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);

/// The pause between accept attempts never grows beyond this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Consecutive accept failures: how long to pause, and what to log.
#[derive(Debug)]
struct AcceptErrors {
    backoff: Backoff,
}

impl AcceptErrors {
    fn new() -> Self {
        AcceptErrors { backoff: Backoff::new(ACCEPT_BACKOFF_INITIAL, ACCEPT_BACKOFF_MAX) }
    }

    /// An accept failed: the pause before the next attempt.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        let pause = self.backoff.next_delay();
        if self.backoff.attempts() == 1 {
            tracing::warn!("accept failed: {error}; pausing accepts with backoff (first pause {pause:?})");
        } else {
            tracing::debug!("accept failed again ({} in a row): {error}; pausing {pause:?}", self.backoff.attempts());
        }
        pause
    }

    /// An accept succeeded: the streak, if any, is over.
    fn succeeded(&mut self) {
        let failures = self.backoff.attempts();
        if failures > 0 {
            tracing::info!("accepting connections again after {failures} failed accepts");
            self.backoff.reset();
        }
    }
}

/// Accepts peers until `shutdown` is cancelled.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<SessionCtx>, max_peers: usize, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(max_peers));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let mut sessions = JoinSet::new();
    let mut next_session = 0u64;
    let mut errors = AcceptErrors::new();
    // Set after a failed accept: no accept until then.
    let mut paused_until: Option<Instant> = None;
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
            () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            accepted = listener.accept(), if paused_until.is_none() => match accepted {
                Ok((stream, remote)) => {
                    errors.succeeded();
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
                Err(e) => paused_until = Some(Instant::now() + errors.failed(&e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_exponentially_reset_on_success_and_never_give_up() {
        let mut errors = AcceptErrors::new();
        let err = std::io::Error::other("too many open files");
        let mut nominal = ACCEPT_BACKOFF_INITIAL;
        for _ in 0..6 {
            let pause = errors.failed(&err);
            assert!(pause >= nominal / 2 && pause <= nominal, "{pause:?} outside [{nominal:?}/2, {nominal:?}]");
            nominal = (nominal * 2).min(ACCEPT_BACKOFF_MAX);
        }
        errors.succeeded();
        let pause = errors.failed(&err);
        assert!(pause <= ACCEPT_BACKOFF_INITIAL, "not reset after a success: {pause:?}");
        // A long streak keeps retrying at the cap.
        for _ in 0..1000 {
            let pause = errors.failed(&err);
            assert!(!pause.is_zero() && pause <= ACCEPT_BACKOFF_MAX, "{pause:?}");
        }
        assert!(errors.failed(&err) >= ACCEPT_BACKOFF_MAX / 2);
    }
}
