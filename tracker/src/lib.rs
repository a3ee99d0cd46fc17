//! `dartsync-tracker`: the tracker of a DartSync cluster.
//!
//! Owns the global file table, the peer table with heartbeat expiry, the
//! conflict rules and their persistence. It never stores or relays file
//! content. Entry point: [`run`] (or [`Tracker::bind`] + [`Tracker::run`]
//! when the caller needs the bound address first).
//!
//! # Tasks
//! - `server`: the accept loop; one `session` task per connection in a
//!   `JoinSet`, at most `max_peers` of them.
//! - `session`: handshake, `Register`, then the peer's messages in and
//!   delta pages out.
//! - `actor`: the one task that owns the `state` (table, peers, seq, epoch,
//!   expiry, tombstone GC) and commits every change to the `store` (redb in
//!   `data_dir`) before any peer can see it.
//! - `discovery`: announces the tracker on the LAN (DNS-SD over mDNS) when
//!   discovery is on and it listens on a non-loopback address; the open
//!   invite nameplates it announces are set through [`Nameplates`]
//!   ([`Tracker::nameplates`]).
//!
//! Shutdown: cancelling the token stops the accept loop, every session and
//! the actor. A failed database commit stops the tracker with an error.
//!
//! # Files in `data_dir`
//! - `identity`: the tracker's Noise static keypair (mode 0600).
//! - `tracker.redb`: the table, known peers and their names, the device
//!   registry (admitted, pending, revoked), epoch, seq ceiling.
//! - `control.sock`: the control socket (mode 0600) `dartsync status
//!   --tracker` and `dartsync tracker devices | admit | revoke` ask, while
//!   the tracker runs (see [`dartsync_shared::control`]).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod actor;
mod brake;
mod compact;
mod conflict;
mod devices;
mod discovery;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod invite;
mod join;
mod memory;
mod registry;
mod server;
mod session;
mod state;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use dartsync_shared::PeerId;
use dartsync_shared::config::{AdmitPolicy, ConfigError, TrackerConfig};
use dartsync_shared::control::{CONTROL_SOCKET, ControlServer, Handler, RequestKind};
use dartsync_shared::dashboard::{Dashboard, DashboardError, Kind, TOKEN_FILE, load_or_create_token};
use dartsync_shared::device::local_host_name;
use dartsync_shared::key::{ClusterKey, Identity, KeyError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use discovery::Nameplates;
pub use memory::ReleaseFn;
pub use store::{DB_FILE, StoreError};

use crate::actor::{Actor, ActorHandle, BrakeAction};
use crate::brake::BrakeConfig;
use crate::invite::Invites;
use crate::session::SessionCtx;
use crate::state::{State, StateConfig};
use crate::store::Store;

/// File name of the tracker's identity inside the data directory.
pub const IDENTITY_FILE: &str = "identity";

/// Why the tracker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create the tracker data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tracker's identity could not be loaded or created.
    #[error("cannot load the tracker identity: {0}")]
    Identity(#[from] KeyError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process listens on the address already.
    #[error(
        "cannot listen on {addr}: the address is already in use — is another tracker running? \
         Stop it, or pick another port with --listen"
    )]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The web dashboard could not start.
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
    /// A database write was cancelled because the runtime is shutting down.
    #[error("a database write was interrupted by shutdown")]
    Interrupted,
}

/// A tracker whose state is loaded and whose socket is bound, not yet serving.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    key: ClusterKey,
    identity: Identity,
    listener: TcpListener,
    addr: SocketAddr,
    store: Arc<Store>,
    state: State,
    ceiling: u64,
    /// The web dashboard, when `--http` asked for one.
    dashboard: Option<Dashboard>,
    /// The open invite nameplates announced on the LAN.
    nameplates: Nameplates,
    /// Gives freed heap back after paging bursts (see `memory`).
    release_memory: Option<ReleaseFn>,
}

impl Tracker {
    /// Binds `listen`, then creates `data_dir`, loads (or creates) the
    /// identity and the database, and logs `tracker listening on ADDR`.
    /// Binding comes first so that a tracker that cannot start (the port
    /// is taken) leaves no data directory behind.
    pub async fn bind(config: TrackerConfig, key: ClusterKey) -> Result<Tracker, TrackerError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => TrackerError::AddrInUse { addr: config.listen },
            _ => TrackerError::Bind { addr: config.listen, source },
        })?;
        let addr = listener.local_addr().map_err(|source| TrackerError::Bind { addr: config.listen, source })?;
        let dir = config.data_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, TrackerError> {
            std::fs::create_dir_all(&dir).map_err(|source| TrackerError::DataDir { path: dir.clone(), source })?;
            let identity = Identity::load_or_create(&dir.join(IDENTITY_FILE))?;
            let (store, loaded) = Store::open(&dir)?;
            Ok((identity, store, loaded))
        })
        .await;
        let (identity, store, loaded) = match loaded {
            Ok(result) => result?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(TrackerError::Interrupted),
        };
        let state_config = StateConfig {
            interval: config.interval,
            tombstone_max_age: config.tombstone_max_age,
            max_records: config.max_records,
            max_records_per_peer: config.max_records_per_peer,
            max_known_peers: config.max_known_peers,
        };
        let ceiling = loaded.seq_ceiling;
        let state = State::restore(
            state_config,
            identity.peer_id().short(),
            loaded.epoch,
            loaded.seq_ceiling,
            loaded.entries,
            loaded.known,
        );
        let mut state = state;
        state.restore_names(loaded.names);
        state.restore_registry(loaded.devices, actor::unix_now());
        let (records, tombstones) = state.counts();
        tracing::info!(
            "tracker state: {records} records ({tombstones} tombstones), {} known peers, epoch {:016x}, seq {}{}",
            state.known_count(),
            state.epoch(),
            state.seq(),
            if loaded.created { " (new database)" } else { "" }
        );

        let dashboard = match config.http {
            Some(http) => {
                let token = if Dashboard::needs_token(http) {
                    Some(load_or_create_token(&config.data_dir.join(TOKEN_FILE))?)
                } else {
                    None
                };
                let dashboard = Dashboard::bind(http, token).await?;
                tracing::info!(
                    "dashboard on http://{} (`dartsync dashboard-url` prints the link to open)",
                    dashboard.local_addr()
                );
                Some(dashboard)
            }
            None => None,
        };
        tracing::info!(key = key.fingerprint(), id = %identity.peer_id(), "tracker listening on {addr}");
        Ok(Tracker {
            config,
            key,
            identity,
            listener,
            addr,
            store: Arc::new(store),
            state,
            ceiling,
            dashboard,
            nameplates: Nameplates::default(),
            release_memory: None,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracker's own id (from its identity file).
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// The tracker's epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch()
    }

    /// The handle that sets the open invite nameplates announced on the
    /// LAN (`inv=`); cheap to clone, usable while the tracker runs (a
    /// no-op when the tracker is not announced).
    pub fn nameplates(&self) -> Nameplates {
        self.nameplates.clone()
    }

    /// Calls `release` (the binary's `malloc_trim(0)`) on the blocking pool
    /// after bursts of paging, so memory freed between live entries goes
    /// back to the system; without it the allocator keeps what it keeps.
    #[must_use]
    pub fn release_memory_with(mut self, release: ReleaseFn) -> Tracker {
        self.release_memory = Some(release);
        self
    }

    /// Serves peers until `shutdown` is cancelled or the database fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TrackerError> {
        let token = shutdown.child_token();
        let brake = BrakeConfig {
            max_files: self.config.mass_change_files,
            max_percent: self.config.mass_change_percent,
            window: self.config.mass_change_window,
        };
        let (actor, handle) = Actor::new(
            self.state,
            self.store,
            self.ceiling,
            self.config.interval,
            self.config.piece_len,
            brake,
            self.config.admit,
        );
        let mut actor = AbortOnDropHandle::new(tokio::spawn(actor.run(token.clone())));
        let url = self.dashboard.as_ref().map(|d| d.url(&local_host_name()));
        let invites = Arc::new(Invites::new(self.nameplates.clone()));
        let handler =
            status_handler(handle.clone(), self.identity.peer_id(), self.addr, url, self.config.admit, invites.clone());
        let control = control_socket(&self.config.data_dir, handler.clone(), &token);
        let dashboard = self.dashboard.map(|dashboard| {
            AbortOnDropHandle::new(tokio::spawn(dashboard.serve(Kind::Tracker, handler, token.clone())))
        });
        let announcer = discovery::spawn(
            discovery::AnnounceConfig {
                scope: discovery::scope(self.addr, self.config.discovery),
                addr: self.addr,
                fingerprint: self.key.discovery_fingerprint(),
                id: self.identity.peer_id(),
            },
            &self.nameplates,
            token.clone(),
        );
        let churn = memory::Churn::default();
        let releaser = self.release_memory.map(|release| memory::spawn(release, churn.clone(), token.clone()));
        let ctx = Arc::new(SessionCtx {
            key: self.key,
            identity: self.identity,
            actor: handle,
            shutdown: token.clone(),
            batch_slots: Arc::new(Semaphore::new(session::BATCH_SLOTS)),
            invites,
            churn,
        });
        let serve = server::serve(self.listener, ctx, self.config.max_peers, token.clone());
        tokio::pin!(serve);
        let joined = tokio::select! {
            joined = &mut actor => {
                token.cancel();
                serve.await;
                joined
            }
            () = &mut serve => {
                token.cancel();
                actor.await
            }
        };
        if let Some(control) = control {
            let _ = control.await;
        }
        if let Some(dashboard) = dashboard {
            let _ = dashboard.await;
        }
        if let Some(announcer) = announcer {
            let _ = announcer.await;
        }
        if let Some(releaser) = releaser {
            let _ = releaser.await;
        }
        let result = match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(TrackerError::Interrupted),
        };
        if result.is_ok() {
            tracing::info!("tracker stopped");
        }
        result
    }
}

/// Runs the tracker until `shutdown` is cancelled.
pub async fn run(config: TrackerConfig, key: ClusterKey, shutdown: CancellationToken) -> Result<(), TrackerError> {
    Tracker::bind(config, key).await?.run(shutdown).await
}

/// Binds `DATA_DIR/control.sock` and serves `dartsync status --tracker` on
/// it until `cancel` fires. A tracker that cannot bind it runs without
/// (with a warning): status is a convenience, syncing is not.
fn control_socket(
    data_dir: &std::path::Path,
    handler: Handler,
    cancel: &CancellationToken,
) -> Option<AbortOnDropHandle<()>> {
    let path = data_dir.join(CONTROL_SOCKET);
    let server = match ControlServer::bind(&path) {
        Ok(server) => server,
        Err(e) => {
            tracing::warn!("`dartsync status --tracker` will not work: {e}");
            return None;
        }
    };
    Some(AbortOnDropHandle::new(tokio::spawn(server.serve(handler, cancel.clone()))))
}

/// Answers the control socket and the dashboard's API: the status from
/// the actor, the dashboard's `url` (with its token) when there is one,
/// and the device admin requests (`devices`, `admit`, `revoke`). The
/// dashboard only ever sends `status`.
fn status_handler(
    actor: ActorHandle,
    id: PeerId,
    addr: SocketAddr,
    url: Option<String>,
    policy: AdmitPolicy,
    invites: Arc<Invites>,
) -> Handler {
    let listen = addr.to_string();
    Arc::new(move |kind| {
        let (actor, listen, url, invites) = (actor.clone(), listen.clone(), url.clone(), invites.clone());
        Box::pin(async move {
            match kind {
                RequestKind::Status => {
                    let status = actor.status(id, listen).await.ok_or("the tracker is stopping")?;
                    serde_json::to_value(status).map_err(|e| e.to_string())
                }
                RequestKind::DashboardUrl => match url {
                    Some(url) => Ok(serde_json::json!({ "url": url })),
                    None => Err("the tracker runs without a dashboard: start it with --http ADDR".to_owned()),
                },
                RequestKind::Devices => {
                    let status = actor.status(id, listen).await.ok_or("the tracker is stopping")?;
                    Ok(serde_json::json!({ "admit": policy.as_str(), "devices": status.devices }))
                }
                RequestKind::Admit { device } => actor.admit(device).await.map(admin_answer),
                RequestKind::Revoke { device } => actor.revoke(device).await.map(admin_answer),
                RequestKind::Approve { device } => {
                    actor.decide(BrakeAction::Approve, device).await.ok_or("the tracker is stopping")?
                }
                RequestKind::Reject { device } => {
                    actor.decide(BrakeAction::Reject, device).await.ok_or("the tracker is stopping")?
                }
                RequestKind::Invite { minutes } => new_invite(&invites, minutes),
                other => Err(format!("`{}` is a request for a peer, and this is the tracker", other.name())),
            }
        })
    })
}

/// `dartsync invite`: a new code and how long it is good for.
fn new_invite(invites: &Invites, minutes: Option<u32>) -> Result<serde_json::Value, String> {
    let validity = minutes.map_or(invite::DEFAULT_VALIDITY, |m| std::time::Duration::from_secs(u64::from(m) * 60));
    let (code, _) = invites.create(validity, tokio::time::Instant::now()).map_err(|e| e.to_string())?;
    let expires_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_add(validity.as_secs());
    tracing::info!("invite {} made, valid for {} minutes", code.nameplate(), validity.as_secs() / 60);
    Ok(serde_json::json!({
        "code": code.to_string(),
        "minutes": validity.as_secs() / 60,
        "expires_unix": expires_unix,
    }))
}

/// The control answer to `admit` / `revoke`.
fn admin_answer(done: actor::AdminDone) -> serde_json::Value {
    serde_json::json!({
        "name": done.name,
        "id": done.id.to_string(),
        "before": done.before.label(),
        "state": done.state.label(),
    })
}
