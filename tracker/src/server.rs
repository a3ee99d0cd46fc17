//! The accept loop: one task per connection, all owned by one `JoinSet`;
//! a pre-authentication pool for connections in the handshake and a cap of
//! `max_peers` authenticated sessions.
//!
//! A `biased` select puts shutdown first, then reaping finished tasks (a
//! panicking session is re-raised, not swallowed), then the periodic
//! summary of refused connections, then the pre-authentication waiting
//! room, then `accept`.
//!
//! # Two pools
//! Right after `accept` a connection must get a place in the
//! [`PreAuthLimiter`] (at most [`PREAUTH_TOTAL`] in the handshake, at most
//! [`PREAUTH_PER_SOURCE`] per source address; idle ones may be displaced by
//! newcomers, see `dartsync_shared::preauth`); without one it waits a few
//! tens of milliseconds, without a task, for its first bytes (a member
//! sends them at once), or is closed: no handshake, no log line of its
//! own. With one, a task runs the Noise handshake (first message within
//! `channel::FIRST_MESSAGE_TIMEOUT`, all of it within
//! `channel::HANDSHAKE_TIMEOUT`) and releases the place. Only then does it
//! try the session semaphore of `max_peers` permits, held for the session's
//! whole life: unauthenticated connections never hold one, so a flood
//! without the cluster key cannot keep a member out. An authenticated
//! connection beyond the cap is told `Refused { reason }` while at most
//! [`REFUSAL_SLOTS`] such answers are in progress, and closed at once
//! beyond that.
//!
//! Failed, refused and displaced unauthenticated connections are counted
//! per source and logged at most once per source per minute, plus one
//! summary line per source every minute ([`preauth::REPORT_EVERY`]).
//!
//! Accept errors (out of file descriptors, mostly) pause accepting with an
//! exponential, jittered [`Backoff`] from [`ACCEPT_BACKOFF_INITIAL`] to
//! [`ACCEPT_BACKOFF_MAX`], reset by the next successful accept; the loop
//! never gives up. While paused it still reaps sessions (whose exit frees
//! descriptors) and still obeys shutdown. The first error of a streak is a
//! `warn`, the rest `debug`, and the recovery one `info` line with the count.
//!
//! On shutdown every task is cancelled and awaited.
//!
//! Not here: what a session does (`session`), the state (`actor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::backoff::Backoff;
use dartsync_shared::channel::SecureChannel;
use dartsync_shared::preauth::{self, PreAuthConfig, PreAuthLimiter, PreAuthPermit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::join;
use crate::session::{self, SessionCtx};

/// Connections beyond the cap answered with `Refused` at the same time.
const REFUSAL_SLOTS: usize = 4;

/// Connections in the handshake at once, from all sources.
pub(crate) const PREAUTH_TOTAL: usize = preauth::DEFAULT_TOTAL;

/// Connections in the handshake at once from one source address.
pub(crate) const PREAUTH_PER_SOURCE: usize = preauth::DEFAULT_PER_SOURCE;

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

/// What every connection task of the accept loop needs.
struct Admission {
    ctx: Arc<SessionCtx>,
    preauth: PreAuthLimiter,
    /// Authenticated sessions (`max_peers`).
    permits: Arc<Semaphore>,
    /// `Refused` answers in progress.
    refusals: Arc<Semaphore>,
    max_peers: usize,
    next_session: u64,
}

impl Admission {
    /// Spawns the task of a connection admitted to the handshake: the
    /// handshake, then a session slot (or a refusal).
    fn spawn(&mut self, sessions: &mut JoinSet<()>, stream: TcpStream, remote: SocketAddr, place: PreAuthPermit) {
        self.next_session += 1;
        let session = self.next_session;
        let (ctx, preauth, permits, refusals) =
            (self.ctx.clone(), self.preauth.clone(), self.permits.clone(), self.refusals.clone());
        let max_peers = self.max_peers;
        let span = tracing::info_span!("peer", addr = %remote);
        sessions.spawn(
            async move {
                let _ = stream.set_nodelay(true);
                let first = tokio::select! {
                    biased;
                    () = place.displaced() => return,
                    first = join::first_bytes(&stream) => first,
                };
                // The handshake and the join exchange are boxed: their state
                // (Noise handshake state, buffers) is freed when they end
                // instead of sized into this task for the session's life.
                match first {
                    join::FirstBytes::Join => return Box::pin(join::serve(stream, remote, place, ctx)).await,
                    join::FirstBytes::Silent => return preauth.silent(place),
                    join::FirstBytes::Handshake => {}
                }
                // Failures are counted and logged by the limiter.
                let Ok(channel) = Box::pin(preauth.handshake(place, stream, &ctx.key, &ctx.identity)).await else {
                    return;
                };
                if let Ok(permit) = permits.try_acquire_owned() {
                    session::run(channel, remote, session, ctx).await;
                    drop(permit);
                } else if let Ok(slot) = refusals.try_acquire_owned() {
                    tracing::warn!(
                        "refusing peer {}: tracker full ({max_peers} peers)",
                        channel.remote_peer_id().fmt_short()
                    );
                    Box::pin(refuse_full(channel, max_peers)).await;
                    drop(slot);
                } else {
                    tracing::warn!(
                        "closing connection of peer {}: tracker full ({max_peers} peers)",
                        channel.remote_peer_id()
                    );
                }
            }
            .instrument(span),
        );
    }
}

/// Accepts peers until `shutdown` is cancelled.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<SessionCtx>, max_peers: usize, shutdown: CancellationToken) {
    let preauth = PreAuthLimiter::new(
        "tracker",
        PreAuthConfig { total: PREAUTH_TOTAL, per_source: PREAUTH_PER_SOURCE, ..PreAuthConfig::default() },
    );
    let mut admission = Admission {
        ctx,
        preauth: preauth.clone(),
        permits: Arc::new(Semaphore::new(max_peers)),
        refusals: Arc::new(Semaphore::new(REFUSAL_SLOTS)),
        max_peers,
        next_session: 0,
    };
    let mut sessions = JoinSet::new();
    let mut errors = AcceptErrors::new();
    // Set after a failed accept: no accept until then.
    let mut paused_until: Option<Instant> = None;
    let mut report = tokio::time::interval_at(Instant::now() + preauth::REPORT_EVERY, preauth::REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sweep_at = preauth.next_sweep().map(Instant::from_std);
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
            _ = report.tick() => preauth.report(),
            () = tokio::time::sleep_until(sweep_at.unwrap_or_else(Instant::now)), if sweep_at.is_some() => {
                for (stream, remote, place) in preauth.sweep() {
                    admission.spawn(&mut sessions, stream, remote, place);
                }
            }
            () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            accepted = listener.accept(), if paused_until.is_none() => match accepted {
                Ok((stream, remote)) => {
                    errors.succeeded();
                    // Beyond the pre-authentication pool: waiting for its
                    // first bytes, or closed at once.
                    if let Some((stream, place)) = preauth.admit(stream, remote) {
                        admission.spawn(&mut sessions, stream, remote, place);
                    }
                }
                Err(e) => paused_until = Some(Instant::now() + errors.failed(&e)),
            },
        }
    }
    sessions.shutdown().await;
}

/// Tells an authenticated peer why it is refused, then closes.
async fn refuse_full(channel: SecureChannel<TcpStream>, max_peers: usize) {
    let (_reader, mut writer) = channel.split();
    session::refuse(&mut writer, format!("tracker full: {max_peers} peers online")).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
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
