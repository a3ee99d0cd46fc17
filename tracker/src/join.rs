//! Join connections on the tracker's port: a laptop running `dartsync join
//! CODE` gets the cluster key here (the handshake is
//! `dartsync_shared::join`; the open invites are `invite`).
//!
//! A connection whose first bytes are the join magic goes here instead of
//! the Noise handshake, still holding its place in the pre-authentication
//! pool, so joins count against the same bounds as every unauthenticated
//! connection. The place becomes undisplaceable once the hello names an
//! open invite.
//!
//! Every join that got past the key exchange without proving the code is
//! a wrong guess against that invite: logged (at most [`MAX_FAILURES`]
//! lines per invite), and the invite is burned at the last one. A good
//! code uses the invite up, admits the device (whatever the admission
//! policy: the code was the approval) and hands over the cluster key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::join::{self, JOIN_MAGIC, JoinError, MAX_FAILURES};
use dartsync_shared::preauth::PreAuthPermit;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::invite::Guess;
use crate::session::SessionCtx;

/// How long to wait for the first bytes to tell a join from a handshake.
const PEEK_TIMEOUT: Duration = dartsync_shared::channel::FIRST_MESSAGE_TIMEOUT;

/// What a new connection's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstBytes {
    /// The join magic.
    Join,
    /// Anything else: the Noise handshake (which judges it).
    Handshake,
    /// Nothing within [`PEEK_TIMEOUT`] (the first-message deadline of
    /// every connection), or the connection closed or failed.
    Silent,
}

/// Tells a join from a handshake by the first bytes of `stream`, reading
/// nothing. Waits for more only while the bytes so far are a prefix of
/// the magic (a Noise handshake differs at its first byte); all of it
/// within [`PEEK_TIMEOUT`].
pub(crate) async fn first_bytes(stream: &TcpStream) -> FirstBytes {
    let deadline = Instant::now() + PEEK_TIMEOUT;
    let mut buf = [0u8; JOIN_MAGIC.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return FirstBytes::Silent,
        };
        if buf[..n] != JOIN_MAGIC[..n] {
            return FirstBytes::Handshake;
        }
        if n == JOIN_MAGIC.len() {
            return FirstBytes::Join;
        }
        // A prefix of the magic so far: wait for the rest.
        if Instant::now() >= deadline {
            return FirstBytes::Silent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves one join connection.
pub(crate) async fn serve(stream: TcpStream, remote: SocketAddr, place: PreAuthPermit, ctx: Arc<SessionCtx>) {
    tokio::select! {
        biased;
        () = place.displaced() => tracing::debug!("join from {remote}: displaced before its hello"),
        () = run(stream, remote, &place, &ctx) => {}
    }
}

async fn run(mut stream: TcpStream, remote: SocketAddr, place: &PreAuthPermit, ctx: &SessionCtx) {
    let hello = match join::read_hello(&mut stream).await {
        Ok(hello) => hello,
        Err(e) => {
            tracing::debug!("join from {remote}: {e}");
            return;
        }
    };
    let Some(code) = ctx.invites.lookup(hello.nameplate(), Instant::now()) else {
        tracing::info!("join from {remote} with invite {}: no such open invite", hello.nameplate());
        join::refuse_unknown(&mut stream).await;
        return;
    };
    place.mark_authentic();
    let session = match tokio::time::timeout(join::JOIN_TIMEOUT, join::answer(stream, &hello, &code, &ctx.identity))
        .await
        .unwrap_or(Err(JoinError::Timeout(join::JOIN_TIMEOUT)))
    {
        Ok(session) => session,
        Err(e) => {
            let why = match e {
                JoinError::WrongCode => "a wrong code".to_owned(),
                other => format!("no proof of the code ({other})"),
            };
            match ctx.invites.failed(&code) {
                Guess::Counted(n) => tracing::warn!(
                    "join from {remote} with invite {}: {why}; {n} of {MAX_FAILURES} tries used",
                    code.nameplate()
                ),
                Guess::Burned => tracing::warn!(
                    "join from {remote} with invite {}: {why}; the invite is burned after {MAX_FAILURES} \
                     failed tries (make a new one with `dartsync invite`)",
                    code.nameplate()
                ),
                Guess::Gone => {}
            }
            return;
        }
    };
    let (device, name) = (session.device(), session.name().to_owned());
    if !ctx.invites.consume(&code, Instant::now()) {
        tracing::warn!(
            "join of {name} ({device}) from {remote}: invite {} was used or expired meanwhile",
            code.nameplate()
        );
        let _ = session
            .refuse("the invite was used by another device or expired a moment ago; ask for a new code".to_owned())
            .await;
        return;
    }
    if let Err(reason) = ctx.actor.invited(device, name.clone()).await {
        tracing::warn!("join of {name} ({device}) from {remote} refused: {reason}");
        let _ = session.refuse(reason).await;
        return;
    }
    match session.grant(&ctx.key).await {
        Ok(()) => tracing::info!("{name} ({device}) joined from {remote} with invite {}", code.nameplate()),
        Err(e) => tracing::warn!("join of {name} ({device}) from {remote}: could not send the key: {e}"),
    }
}
