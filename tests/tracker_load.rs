//! The tracker under a small load (issue 18): `dartsync-load` drives 100
//! simulated peers, each on its own identity and session, through 1,000
//! records that every peer holds, against this build's `dartsync
//! --tracker` in its own process. Budgets are about twice what was
//! measured (see `bench/load/README.md`), so a change that doubles the
//! table's memory or stalls the fan-out fails here.

use std::time::Duration;

use dartsync_load::{Options, TrackerProcess, TrackerSettings, goals, render};

use crate::util;

/// What the table may add to the tracker's RSS per (record, holder)
/// pair at this scale: entries, holdings, the redb page cache and what
/// the allocator keeps after the delta pages (measured: ~130-180 B).
const TABLE_BYTES_PER_HOLDING: u64 = 400;

/// One entry with its author holding it (measured over 750 entries; the
/// redb page cache makes it noisy at this size).
const ENTRY_BYTES: u64 = 8 * 1024;

/// Fan-out p99 to 100 sessions on a loaded 2-core CI machine, debug
/// build (measured: a few ms to tens of ms).
const FANOUT_P99_MS: f64 = 3000.0;

#[test]
fn a_hundred_peers_holding_a_thousand_records_stay_within_budget() {
    let settings = TrackerSettings {
        binary: util::bin(),
        max_peers: 128,
        max_records: dartsync_shared::config::DEFAULT_MAX_RECORDS,
        max_records_per_peer: dartsync_shared::config::DEFAULT_MAX_RECORDS_PER_PEER,
        interval_secs: None,
        scratch: None,
    };
    let process = TrackerProcess::spawn(&settings).unwrap();
    let options = Options {
        peers: 100,
        records: 1000,
        holders: None,
        edits: 10,
        cpu_window: Duration::ZERO,
        phase_timeout: Duration::from_secs(180),
        edit_timeout: Duration::from_secs(20),
        progress: false,
        ..Options::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcome = runtime
        .block_on(dartsync_load::run(process.target(), &options))
        .unwrap_or_else(|e| panic!("{e}; tracker log:\n{}", process.log_tail()));
    println!("{}", render(&outcome, &goals(&outcome)));

    // Every copy became a holder, and every edit reached every session.
    assert_eq!(outcome.max_holders_listed, 100, "{outcome:?}");
    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    assert_eq!(outcome.edits_complete, outcome.edits, "{outcome:?}");
    assert!(outcome.fanout.p99_ms <= FANOUT_P99_MS, "fan-out p99 {} ms", outcome.fanout.p99_ms);
    assert!(
        outcome.table_bytes_per_holding <= TABLE_BYTES_PER_HOLDING,
        "the table costs {} B per (record, holder), budget {TABLE_BYTES_PER_HOLDING}",
        outcome.table_bytes_per_holding
    );
    assert!(outcome.entry_bytes <= ENTRY_BYTES, "{} B per entry, budget {ENTRY_BYTES}", outcome.entry_bytes);
}
