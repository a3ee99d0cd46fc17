//! Keeping the folder in step with the cluster: the tracker client (one
//! PTP session) and where it finds the tracker (`locate`: the remembered
//! address, else the LAN), the engine (the main loop: plan per path, then install,
//! apply or announce), the file-system side of applying records, the
//! version history, and the index-backed chunk source the transfer layer
//! reads local content through.
//!
//! Imports `local` (the write gate, the index) and `transfer` (downloads);
//! neither imports this.

pub(crate) mod apply;
mod case_names;
pub(crate) mod engine;
mod error;
pub(crate) mod history;
pub(crate) mod index_source;
mod install;
pub(crate) mod locate;
mod plan;
pub(crate) mod restore;
pub(crate) mod tracker_client;
pub(crate) mod tracker_pin;
mod waiting;
