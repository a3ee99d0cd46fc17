//! `dartsync-peer`: one synced folder on one device.
//!
//! Three subsystems, one folder each, and a leaf module, under [`daemon`]
//! which wires them:
//! - `local` — the peer's view of its own folder: layout, index, scanner,
//!   watcher, ignore rules, and the write gate every write of the engine
//!   passes through. No network code.
//! - `transfer` — content between peers: the chunk-source trait, the piece
//!   server and the multi-source downloader. Knows hashes and temp files,
//!   not records' history or the tracker.
//! - `sync` — the tracker client, the sync engine (plan, install, apply),
//!   the version history and the index-backed chunk source.
//! - `discovery` — finding a tracker on the LAN (mDNS browse, pick one by
//!   cluster fingerprint or invite nameplate); public: `dartsync join`
//!   calls [`discovery::discover`].
//!
//! Imports point down: `daemon` -> `sync` -> `local`, `transfer`,
//! `discovery`; `local`, `transfer` and `discovery` never import `sync`,
//! and no module imports a module that imports it. Entry point: [`run`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod daemon;
mod deadlines;
pub mod discovery;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod jail;
pub mod join;
mod local;
mod status;
mod sync;
pub mod transfer;

pub use daemon::{PeerError, TestHooks, run};
pub use local::{LocalConfig, LocalState, OpenFolder};
pub use sync::engine::ReleaseFn;
