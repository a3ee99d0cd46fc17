//! Control sockets: the local request/response channel through which
//! `dartsync status` (and later admin commands and a dashboard) talk to a
//! running peer or tracker.
//!
//! # Protocol (schema [`CONTROL_SCHEMA`], documented in `docs/status.md`)
//! A Unix stream socket, mode 0600 (only the owner can connect):
//! `DIR/.dartsync/control.sock` for a peer, `DATA_DIR/control.sock` for
//! the tracker. The client writes one JSON object on one line,
//! `{"schema":1,"request":"status"}`, at most [`MAX_REQUEST`] bytes; the
//! server answers with one line, `{"schema":1,"ok":true,"status":{...}}`
//! or `{"schema":1,"ok":false,"error":"..."}`, and closes. A request of
//! another schema is answered with an error naming both versions.
//!
//! The server is hostile-input safe: the request is read bounded, with a
//! deadline, at most [`MAX_CONNECTIONS`] at once.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The version of the control protocol.
pub const CONTROL_SCHEMA: u32 = 1;
/// The socket's file name (inside `.dartsync` or the tracker's data dir).
pub const CONTROL_SOCKET: &str = "control.sock";
/// Largest request line the server reads.
pub const MAX_REQUEST: usize = 4096;
/// Largest response the client reads.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A client must send its request within this long.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// What a client asks for. Unit requests are plain strings on the wire
/// (`"status"`), requests with arguments are one-key objects
/// (`{"admit":{"device":"alice"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// The status ([`crate::status::PeerStatus`] or
    /// [`crate::status::TrackerStatus`]).
    Status,
    /// The web dashboard's URL (with its login token): `{"url": ...}`, or
    /// an error when it is off.
    DashboardUrl,
    /// Tracker: the device list (admitted, pending, revoked).
    Devices,
    /// Tracker: admit a pending device (name or id).
    Admit {
        /// A device name or id (a unique prefix of the id is enough).
        device: String,
    },
    /// Tracker: revoke a device (name or id): its sessions are dropped and
    /// its handshakes refused from now on.
    Revoke {
        /// A device name or id.
        device: String,
    },
    /// Tracker: publish the held mass change of `device` (every held
    /// change when `None`).
    Approve {
        /// A device name or id.
        device: Option<String>,
    },
    /// Tracker: discard the held mass change of `device` (every held
    /// change when `None`); the device gets the cluster's version back.
    Reject {
        /// A device name or id.
        device: Option<String>,
    },
    /// Peer: the saved versions of one path.
    Versions {
        /// The path, relative to the synced folder.
        path: String,
    },
    /// Peer: restore one saved version of a path through the normal sync
    /// path (the restore is a new version).
    Restore {
        /// The path, relative to the synced folder.
        path: String,
        /// The newest version saved at or before this time (RFC 3339 or
        /// `YYYYMMDD-HHMMSS`, UTC).
        at: Option<String>,
        /// The version's number as `versions` lists it.
        version: Option<u32>,
        /// Restore to this path instead.
        to: Option<String>,
        /// Replace what is at `to` (kept in the history first).
        #[serde(default)]
        force: bool,
    },
    /// Peer (receive-only): put back the cluster's version of every local
    /// change under `path` (the whole folder when `None`), keeping the
    /// local one in the version history.
    Revert {
        /// A path relative to the synced folder.
        path: Option<String>,
    },
    /// Tracker: a one-time invite code for `dartsync join`, valid for
    /// `minutes` (default 10): `{"code", "minutes", "expires_unix"}`.
    Invite {
        /// Validity in minutes (1 to 1440).
        minutes: Option<u32>,
    },
}

impl RequestKind {
    /// The request's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            RequestKind::Status => "status",
            RequestKind::DashboardUrl => "dashboard_url",
            RequestKind::Devices => "devices",
            RequestKind::Admit { .. } => "admit",
            RequestKind::Revoke { .. } => "revoke",
            RequestKind::Approve { .. } => "approve",
            RequestKind::Reject { .. } => "reject",
            RequestKind::Versions { .. } => "versions",
            RequestKind::Restore { .. } => "restore",
            RequestKind::Revert { .. } => "revert",
            RequestKind::Invite { .. } => "invite",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// [`CONTROL_SCHEMA`].
    pub schema: u32,
    /// What is asked.
    pub request: RequestKind,
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`CONTROL_SCHEMA`].
    pub schema: u32,
    /// Whether the request was served.
    pub ok: bool,
    /// The status, for a served `status` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket (no file, or a stale one).
    #[error("no dartsync is running for {path} (no control socket answers at {socket})")]
    NotRunning {
        /// The folder or data directory.
        path: PathBuf,
        /// The socket.
        socket: PathBuf,
    },
    /// Another process already serves this socket.
    #[error("another dartsync is already running here (its control socket {0} answers)")]
    InUse(PathBuf),
    /// The socket path does not fit a Unix socket address.
    #[error("the control socket path {0} is too long for a Unix socket (at most 107 bytes)")]
    PathTooLong(PathBuf),
    /// An I/O error on the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer was not valid.
    #[error("control socket {path}: bad answer: {why}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The server refused the request.
    #[error("{0}")]
    Remote(String),
}

/// A boxed future answering one request.
pub type Answer = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;
/// Answers requests; called once per request.
pub type Handler = Arc<dyn Fn(RequestKind) -> Answer + Send + Sync>;

/// A bound control socket, not yet serving.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` with mode 0600. A stale socket file (nothing answers)
    /// is replaced; a live one is [`ControlError::InUse`].
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if path.as_os_str().len() > 107 {
            return Err(ControlError::PathTooLong(path.to_owned()));
        }
        let io = |source| ControlError::Io { path: path.to_owned(), source };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse(path.to_owned()));
                }
                std::fs::remove_file(path).map_err(io)?;
            }
            Ok(_) => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way; remove it",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(ControlServer { listener, path: path.to_owned() })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests with `handler` until `cancel` fires, then removes
    /// the socket file.
    pub async fn serve(self, handler: Handler, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // dropped: too many clients at once
            };
            let handler = handler.clone();
            conns.spawn(async move {
                let _permit = permit;
                if let Err(e) = serve_one(stream, &handler).await {
                    tracing::debug!("control client: {e}");
                }
            });
        }
        conns.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(stream: tokio::net::UnixStream, handler: &Handler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) if req.schema != CONTROL_SCHEMA => failed(format!(
            "this dartsync speaks control schema {CONTROL_SCHEMA}, the request is schema {}; use the same release",
            req.schema
        )),
        Ok(req) => match handler(req.request).await {
            Ok(status) => Response { schema: CONTROL_SCHEMA, ok: true, status: Some(status), error: None },
            Err(e) => failed(e),
        },
        Err(e) => failed(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    // Read away what a client sent beyond the request (an oversized one),
    // a little and briefly: closing with unread bytes would reset the
    // connection and the client could lose the answer.
    let mut rest = reader.into_inner().into_inner();
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            match rest.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, drain).await;
    Ok(())
}

/// At most this much of an oversized request is read away before closing.
const DRAIN_LIMIT: usize = 64 * 1024;
/// For at most this long.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

fn failed(error: String) -> Response {
    Response { schema: CONTROL_SCHEMA, ok: false, status: None, error: Some(error) }
}

/// Sends one request to the socket at `socket` (blocking) and returns the
/// status it answers. `owner` names the folder or data dir in errors.
pub fn request(
    socket: &Path,
    owner: &Path,
    kind: RequestKind,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    use std::os::unix::net::UnixStream;
    let io = |source| ControlError::Io { path: socket.to_owned(), source };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(ControlError::NotRunning { path: owner.to_owned(), socket: socket.to_owned() });
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&Request { schema: CONTROL_SCHEMA, request: kind })
        .map_err(|e| ControlError::Protocol { path: socket.to_owned(), why: e.to_string() })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_RESPONSE as u64)).read_line(&mut answer).map_err(io)?;
    let response: Response = serde_json::from_str(answer.trim())
        .map_err(|e| ControlError::Protocol { path: socket.to_owned(), why: e.to_string() })?;
    match (response.ok, response.status, response.error) {
        (true, Some(status), _) => Ok(status),
        (_, _, Some(error)) => Err(ControlError::Remote(error)),
        _ => Err(ControlError::Protocol { path: socket.to_owned(), why: "neither a status nor an error".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_handler() -> Handler {
        Arc::new(|kind| Box::pin(async move { Ok(serde_json::json!({ "asked": kind })) }))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn request_and_answer_round_trip_and_socket_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTROL_SOCKET);
        let server = ControlServer::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(ControlServer::bind(&path), Err(ControlError::InUse(_))));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(echo_handler(), cancel.clone()));
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || {
            let status = request(&p, Path::new("/folder"), RequestKind::Status, Duration::from_secs(5)).unwrap();
            let admit = RequestKind::Admit { device: "alice".into() };
            (status, request(&p, Path::new("/folder"), admit, Duration::from_secs(5)).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(got.0, serde_json::json!({ "asked": "status" }));
        assert_eq!(got.1, serde_json::json!({ "asked": { "admit": { "device": "alice" } } }));
        cancel.cancel();
        task.await.unwrap();
        assert!(!path.exists(), "the socket file is removed on shutdown");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hostile_requests_get_an_error_line_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTROL_SOCKET);
        // A stale socket file: bound once, its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let server = ControlServer::bind(&path).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(echo_handler(), cancel.clone()));
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            for (input, expect) in [
                (&b"{\"schema\":99,\"request\":\"status\"}\n"[..], "schema 99"),
                (&b"garbage\n"[..], "bad request"),
                (&[b'x'; MAX_REQUEST + 100][..], "bad request"),
            ] {
                let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                s.write_all(input).unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).unwrap();
                let r: Response = serde_json::from_str(answer.trim()).unwrap();
                assert!(!r.ok);
                assert!(r.error.unwrap().contains(expect));
            }
        })
        .await
        .unwrap();
        cancel.cancel();
        task.await.unwrap();
        let missing = request(&path, Path::new("/f"), RequestKind::Status, Duration::from_secs(1));
        assert!(matches!(missing, Err(ControlError::NotRunning { .. })), "{missing:?}");
    }
}
