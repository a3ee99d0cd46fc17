//! `dartsync-load`: many simulated peers on the real protocol against one
//! real tracker process, measuring the tracker's memory (`VmRSS` /
//! `VmHWM`), its CPU with idle peers sending keep-alives, and how long a
//! change takes to reach every session (issue 18).
//!
//! Modules: [`tracker`] (the target, and a `dartsync --tracker` child
//! process), [`procfs`] (readings of any PID), [`layout`] (records and who
//! holds them), [`sim`] (the simulated sessions; [`skim`] reads a delta
//! page's head only, for runs too big to decode), [`run`] (the phases),
//! [`stats`] and [`report`] (pure: percentiles, slopes, goals, the
//! markdown table). The binary is `src/main.rs`; `README.md` has results.

pub mod layout;
pub mod procfs;
pub mod report;
pub mod run;
pub mod sim;
pub mod skim;
pub mod stats;
pub mod tracker;

pub use report::{Outcome, goals, render};
pub use run::{Options, run};
pub use tracker::{Target, TrackerProcess, TrackerSettings};

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Starting or talking to the tracker process failed.
    #[error("tracker: {0}")]
    Tracker(String),
    /// A `/proc` reading failed (the tracker ended?).
    #[error("process {pid}: {what}")]
    Proc {
        /// The process.
        pid: u32,
        /// What went wrong.
        what: String,
    },
    /// A simulated session failed or was closed.
    #[error("simulated peer {index}: {what}")]
    Session {
        /// The peer's index.
        index: usize,
        /// What happened.
        what: String,
    },
    /// A phase did not finish in time.
    #[error("{what}: not every session got there in time (seq {min}..={max}, {expected} expected)")]
    Timeout {
        /// The phase.
        what: String,
        /// Lowest seq a session has seen.
        min: u64,
        /// Highest.
        max: u64,
        /// The seq the phase waits for.
        expected: u64,
    },
    /// The open-file limit could not be raised.
    #[error("cannot raise the open-file limit: {0}")]
    Limit(String),
    /// A task of the load panicked.
    #[error("load task failed: {0}")]
    Task(String),
    /// File system.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
