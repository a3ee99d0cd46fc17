//! `dartsync-peer`: one synced folder on one device.
//!
//! Owns the local index, scanner, watcher, tracker client, piece server,
//! downloader and apply engine. Entry point: [`run`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod apply;
pub mod chunk_source;
pub mod daemon;
pub mod dirs;
pub mod download;
pub mod engine;
pub mod history;
pub mod ignore;
pub mod index;
pub mod local;
pub mod scan;
pub mod serve;
pub mod source;
pub mod tracker_client;
pub mod watch;

pub use daemon::{PeerError, TestHooks, run};
