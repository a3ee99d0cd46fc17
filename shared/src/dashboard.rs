//! The web dashboard's HTTP side, shared by the tracker (`--http ADDR`,
//! off by default) and every peer (`127.0.0.1`, a free port, by default):
//! one page (embedded, no external resource) and a JSON API under `/api/`.
//!
//! # API (version 1, documented in `docs/dashboard.md`)
//! `GET /api/v1/status` answers `{"schema":1,"kind":"peer"|"tracker",
//! "status":{...}}`, the same status `dartsync status --json` prints
//! ([`crate::status`]). Nothing writes: every route is `GET` (or `HEAD`).
//!
//! # Access
//! On a loopback address anyone on this machine may read it, like the
//! status command's socket. On any other address every request needs the
//! login token ([`load_or_create_token`], a file of the tracker or peer):
//! `Authorization: Bearer TOKEN`, or the `dartsync_token` cookie, which
//! `GET /?token=TOKEN` sets (HttpOnly, SameSite=Strict) before redirecting
//! to `/` so the token leaves the address bar. Anything else is answered
//! 401. Tokens are compared in constant time.
//!
//! Every answer carries a strict Content-Security-Policy (no inline
//! script or style, nothing from elsewhere), `X-Content-Type-Options:
//! nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and
//! `Cache-Control: no-store`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::control::{Handler, RequestKind};

/// The version of the dashboard API.
pub const API_SCHEMA: u32 = 1;
/// The login token's file name (in the tracker's data dir, or a peer's
/// `.dartsync`).
pub const TOKEN_FILE: &str = "http.token";
/// The cookie that carries the token.
pub const COOKIE: &str = "dartsync_token";

const INDEX_HTML: &str = include_str!("dashboard/assets/index.html");
const APP_JS: &str = include_str!("dashboard/assets/app.js");
const STYLE_CSS: &str = include_str!("dashboard/assets/style.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address could not be bound.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file could not be read or written.
    #[error("dashboard login token {path}: {source}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Which status the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A peer's folder and cluster.
    Peer,
    /// The tracker's view of the cluster.
    Tracker,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Peer => "peer",
            Kind::Tracker => "tracker",
        }
    }
}

/// Reads the login token at `path`, or creates one (32 random bytes in
/// hex, mode 0600).
pub fn load_or_create_token(path: &Path) -> Result<String, DashboardError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DashboardError::Token { path: path.to_owned(), source };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_owned()),
        Ok(_) => return Err(err(std::io::Error::other("too short; delete it to get a new one"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = crate::hex::encode(&rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    file.write_all(token.as_bytes()).and_then(|()| file.sync_all()).map_err(err)?;
    Ok(token)
}

/// A bound dashboard, not yet serving.
#[derive(Debug)]
pub struct Dashboard {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: Option<Arc<str>>,
}

impl Dashboard {
    /// Binds `addr`. A non-loopback address needs `token` (the caller
    /// loads it with [`load_or_create_token`]); a loopback one ignores it.
    pub async fn bind(addr: SocketAddr, token: Option<String>) -> Result<Dashboard, DashboardError> {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| DashboardError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| DashboardError::Bind { addr, source })?;
        let token = if Self::needs_token(addr) { token.map(Arc::from) } else { None };
        Ok(Dashboard { listener, addr, token })
    }

    /// Whether requests need the token.
    pub fn needs_token(addr: SocketAddr) -> bool {
        !addr.ip().is_loopback()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open, with the token when one is needed. An unspecified
    /// address (`0.0.0.0`) is shown as `host`.
    pub fn url(&self, host: &str) -> String {
        let shown = if self.addr.ip().is_unspecified() {
            format!("{host}:{}", self.addr.port())
        } else {
            self.addr.to_string()
        };
        match &self.token {
            Some(token) => format!("http://{shown}/?token={token}"),
            None => format!("http://{shown}/"),
        }
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self, kind: Kind, status: Handler, cancel: CancellationToken) {
        let app = router(Arc::new(Shared { kind, status, token: self.token }));
        let served = axum::serve(self.listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::warn!("the dashboard stopped: {e}");
        }
    }
}

struct Shared {
    kind: Kind,
    status: Handler,
    token: Option<Arc<str>>,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/api/v1/status", get(api_status))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The body of `GET /api/v1/status`.
pub fn api_body(kind: Kind, status: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "schema": API_SCHEMA, "kind": kind.as_str(), "status": status })
}

async fn api_status(State(shared): State<Arc<Shared>>) -> Response {
    match (shared.status)(RequestKind::Status).await {
        Ok(status) => {
            let body = api_body(shared.kind, status);
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// What the access check says about a request.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Allowed,
    /// `/?token=...` with the right token: set the cookie, go to `/`.
    Login,
    Denied,
}

/// Bytewise comparison that takes as long whatever the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn access(token: Option<&str>, headers: &HeaderMap, path: &str, query: Option<&str>) -> Access {
    let Some(token) = token else { return Access::Allowed };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim(), token));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
        .any(|t| same(t, token));
    if bearer || cookie {
        return Access::Allowed;
    }
    let offered =
        query.unwrap_or_default().split('&').filter_map(|kv| kv.strip_prefix("token=")).any(|t| same(t, token));
    if path == "/" && offered { Access::Login } else { Access::Denied }
}

async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let mut response = if !matches!(*request.method(), Method::GET | Method::HEAD) {
        (StatusCode::METHOD_NOT_ALLOWED, "the dashboard only reads\n").into_response()
    } else {
        match access(shared.token.as_deref(), request.headers(), request.uri().path(), request.uri().query()) {
            Access::Allowed => next.run(request).await,
            Access::Login => {
                let token = shared.token.as_deref().unwrap_or_default();
                let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::SEE_OTHER;
                r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Access::Denied => (
                StatusCode::UNAUTHORIZED,
                "login required: open the link `dartsync dashboard-url` prints on the tracker machine\n",
            )
                .into_response(),
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn access_needs_the_token_only_when_there_is_one() {
        let t = "a".repeat(64);
        assert_eq!(access(None, &HeaderMap::new(), "/api/v1/status", None), Access::Allowed);
        assert_eq!(access(Some(&t), &HeaderMap::new(), "/api/v1/status", None), Access::Denied);
        assert_eq!(
            access(Some(&t), &headers(&[("authorization", &format!("Bearer {t}"))]), "/x", None),
            Access::Allowed
        );
        assert_eq!(access(Some(&t), &headers(&[("authorization", "Bearer wrong")]), "/x", None), Access::Denied);
        let cookie = format!("other=1; {COOKIE}={t}");
        assert_eq!(access(Some(&t), &headers(&[("cookie", &cookie)]), "/app.js", None), Access::Allowed);
        assert_eq!(access(Some(&t), &headers(&[("cookie", "dartsync_token=nope")]), "/", None), Access::Denied);
        let q = format!("token={t}");
        assert_eq!(access(Some(&t), &HeaderMap::new(), "/", Some(&q)), Access::Login);
        assert_eq!(access(Some(&t), &HeaderMap::new(), "/api/v1/status", Some(&q)), Access::Denied, "only / logs in");
        assert_eq!(access(Some(&t), &HeaderMap::new(), "/", Some("token=")), Access::Denied);
    }

    /// The API's JSON, pinned: a field renamed or removed fails here (and
    /// must bump [`API_SCHEMA`] / `STATUS_SCHEMA`).
    #[test]
    fn api_schema_snapshot() {
        use crate::status::*;
        let peer = PeerStatus {
            schema: STATUS_SCHEMA,
            state: FolderState::Syncing,
            folder: "/home/ana/DartSync".into(),
            name: "alice".into(),
            id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
            tracker: TrackerLink {
                addr: "pi.local:7373".into(),
                connected: true,
                since: Some(1_796_000_000),
                error: None,
                discovered: false,
            },
            devices: vec![Device {
                name: "alice".into(),
                id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
                online: true,
                up_to_date: false,
                last_seen: Some(1_796_000_100),
                this_device: true,
                state: DeviceState::Admitted,
            }],
            pending: Pending { files: 1, bytes: 200, rate: 100, eta_secs: Some(2) },
            transfers: vec![Transfer { path: "a.bin".into(), size: 300, done: 100, sources: 2, elapsed_secs: 1 }],
            waiting: vec![WaitingPath { path: "b".into(), reason: "disk full; free some space".into() }],
            waiting_total: 1,
            conflicts: vec![Conflict {
                path: "doc.txt".into(),
                copy: Some("doc.sync-conflict-20261201-202659-bob.txt".into()),
                winner: "alice".into(),
                loser: "bob".into(),
                at: 1_796_000_050,
            }],
            unannounced: 0,
            files: 3,
            bytes: 1_200,
            received_bytes: 900,
            last_event: Some(LastEvent { at: 1_796_000_090, what: "synced a.txt (12 bytes)".into() }),
            events: vec![LastEvent { at: 1_796_000_090, what: "synced a.txt (12 bytes)".into() }],
            dashboard: Some("http://127.0.0.1:41234/".into()),
            receive_only: false,
            local_changes: Vec::new(),
            local_changes_total: 0,
            held_by_tracker: None,
        };
        let tracker = TrackerStatus {
            schema: STATUS_SCHEMA,
            id: "t4r8ck3rq2w5e7y9u1i3o5p7a9".into(),
            listen: "0.0.0.0:7373".into(),
            epoch: "00c0ffee00c0ffee".into(),
            seq: 42,
            records: 12,
            tombstones: 1,
            devices: vec![TrackerDevice {
                name: "alice".into(),
                id: "k3m9qz7w2xv4p8rt6yb5nc1dfa".into(),
                addr: Some("192.168.1.5:40123".into()),
                online: true,
                last_seen: Some(1_796_000_100),
                up_to_date: false,
                behind: 2,
                pending_files: 1,
                pending_bytes: 200,
                waiting: 0,
                rate: 100,
                state: DeviceState::Admitted,
            }],
            conflicts: vec![],
            events: vec![LastEvent {
                at: 1_796_000_000,
                what: "alice (k3m9qz7w) registered from 192.168.1.5:40123".into(),
            }],
            held: vec![],
        };
        let pretty = |kind, value| serde_json::to_string_pretty(&api_body(kind, value)).unwrap();
        insta::assert_snapshot!("api_v1_peer", pretty(Kind::Peer, serde_json::to_value(&peer).unwrap()));
        insta::assert_snapshot!("api_v1_tracker", pretty(Kind::Tracker, serde_json::to_value(&tracker).unwrap()));
    }

    #[test]
    fn tokens_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::write(&path, "short").unwrap();
        assert!(load_or_create_token(&path).is_err());
    }

    #[tokio::test]
    async fn the_page_and_the_api_are_served_with_security_headers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dashboard = Dashboard::bind("127.0.0.1:0".parse().unwrap(), Some("t".repeat(64))).await.unwrap();
        let addr = dashboard.local_addr();
        assert_eq!(dashboard.url("h"), format!("http://{addr}/"), "loopback needs no token");
        let handler: Handler = Arc::new(|_| Box::pin(async { Ok(serde_json::json!({"state": "up_to_date"})) }));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dashboard.serve(Kind::Peer, handler, cancel.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let page = get("/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.to_lowercase().contains("content-security-policy: default-src 'self'"), "{page}");
        assert!(page.to_lowercase().contains("x-frame-options: deny"));
        let api = get("/api/v1/status").await;
        let body = api.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json, serde_json::json!({"schema": 1, "kind": "peer", "status": {"state": "up_to_date"}}));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        task.await.unwrap();
    }
}
