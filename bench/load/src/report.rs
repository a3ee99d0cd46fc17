//! What a run measured ([`Outcome`]), the goals judged against it
//! ([`goals`]) and the markdown rendering ([`render`]); pure, so the
//! table is unit-tested. The JSON output is [`Outcome`] serialized.

use serde::Serialize;

use crate::stats::Latencies;

/// Everything one run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// Simulated peers (sessions).
    pub peers: usize,
    /// Records in the table.
    pub records: usize,
    /// Peers holding each record.
    pub holders: usize,
    /// The sessions read only the heads of delta pages (`--skim`), so
    /// the holders listed were not read.
    pub skimmed: bool,
    /// The keep-alive interval the tracker asked for, ms.
    pub interval_ms: u64,
    /// Tracker RSS before any session, KiB.
    pub idle_rss_kib: u64,
    /// ... with every session registered and an empty table, KiB.
    pub sessions_rss_kib: u64,
    /// ... with a quarter of the records (one holder each), KiB.
    pub quarter_rss_kib: u64,
    /// ... with every record (one holder each), KiB.
    pub entries_rss_kib: u64,
    /// ... with every holder announced, KiB.
    pub holders_rss_kib: u64,
    /// ... settled after every peer reported, KiB: the steady state.
    pub steady_rss_kib: u64,
    /// Of the idle RSS, anonymous memory (not file pages), KiB.
    pub idle_anon_kib: u64,
    /// Of the steady RSS, anonymous memory (not file pages), KiB.
    pub steady_anon_kib: u64,
    /// Peak RSS of the whole run (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// One idle session, bytes (slope over the sessions).
    pub session_bytes: u64,
    /// One entry with its author holding it, bytes (slope between a
    /// quarter and all of the records: the redb page cache fills first).
    pub entry_bytes: u64,
    /// Each holder beyond the first, per entry, bytes.
    pub holder_bytes: u64,
    /// Steady RSS over every (record, holder) pair, bytes, fixed costs
    /// included.
    pub steady_bytes_per_holding: u64,
    /// What the table added to the RSS (steady minus sessions registered)
    /// over every (record, holder) pair, bytes: entries, holdings, the
    /// redb page cache and what the allocator keeps after delta pages.
    pub table_bytes_per_holding: u64,
    /// Seconds to connect and register every peer.
    pub connect_secs: f64,
    /// Seconds from the first announce until every session saw every
    /// record.
    pub announce_secs: f64,
    /// Seconds from the first holder announce until every session saw
    /// every holder.
    pub holders_secs: f64,
    /// Tracker CPU time while every session received every record, s.
    pub announce_cpu_secs: f64,
    /// Tracker CPU time while every session received every holder, s.
    pub holders_cpu_secs: f64,
    /// Most holders listed on one delta entry (capped at 256 by the
    /// protocol): checks that the tracker took the copies as holders.
    pub max_holders_listed: usize,
    /// Tracker CPU with every peer idle and sending keep-alives, % of one
    /// core (`None`: not measured).
    pub keepalive_cpu_percent: Option<f64>,
    /// The CPU window, seconds.
    pub cpu_window_secs: f64,
    /// Delta fan-out: every (edit, session) delay from the announce to
    /// the delta holding it.
    pub fanout: Latencies,
    /// Per edit, the delay until the last session had it.
    pub fanout_all: Latencies,
    /// Edits announced.
    pub edits: usize,
    /// Edits that reached every session within the deadline.
    pub edits_complete: usize,
    /// Entries the departing peer held when it left.
    pub departed_held: u64,
    /// Delta entries the sessions left were paged because of it.
    pub departure_entries: u64,
    /// Bytes of those pages.
    pub departure_bytes: u64,
    /// Seconds from its `Goodbye` until every session left had a device
    /// list showing it gone.
    pub departure_secs: f64,
    /// Tracker CPU time meanwhile, s.
    pub departure_cpu_secs: f64,
    /// Anything odd seen along the way.
    pub notes: Vec<String>,
}

/// How a goal's number was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// Measured at the goal's scale.
    Measured,
    /// Measured at this run's scale, which is not the goal's.
    OtherScale,
    /// Measured at a scale above the goal's in records and in peers, so
    /// an upper bound for it (scaling this run's fixed costs down would
    /// overstate a smaller table).
    LargerScale,
    /// Computed from this run's per-entry, per-holder and per-session
    /// costs.
    Estimate,
    /// Not measured in this run.
    Skipped,
}

/// One goal of the issue against this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoalRow {
    /// The goal, in words.
    pub goal: String,
    /// The bound.
    pub target: String,
    /// The number.
    pub measured: String,
    /// How it was obtained.
    pub basis: Basis,
    /// Whether it meets the bound (`None`: not measured).
    pub pass: Option<bool>,
}

const KIB_PER_MIB: f64 = 1024.0;

/// The memory goals: (records, peers, MiB).
pub const MEMORY_GOALS: [(usize, usize, u64); 2] = [(100_000, 50, 32), (1_000_000, 1_000, 256)];

/// Idle tracker RSS goal, MiB.
pub const IDLE_GOAL_MIB: u64 = 8;

/// Fan-out goal: p99 ms, at this many peers.
pub const FANOUT_GOAL: (f64, usize) = (1000.0, 1000);

/// Keep-alive CPU goal: % of a core, at this many idle peers, at the
/// default interval (ms).
pub const CPU_GOAL: (f64, usize, u64) = (2.0, 1000, 10_000);

/// Tracker RSS, KiB, for `records` entries each held by every one of
/// `peers` online peers (or by as many as this run's layout has), from
/// this run's costs: idle RSS, the fixed costs the slopes do not explain
/// (redb page cache, allocator arenas), a session per peer, an entry per
/// record, and the holdings.
///
/// Holdings cost a holding per extra holder, except when every peer holds
/// every record both in the run and in the estimate: a tracker may keep
/// "every online peer" in constant space (DartSync's does), so a holding
/// slope near zero times hundreds of holders would be noise times
/// hundreds. Then what is scaled is the measured cost of a record held by
/// everyone beyond its author: the steady RSS above the author-held
/// table's, per record.
pub fn estimate_kib(o: &Outcome, records: usize, peers: usize) -> u64 {
    let run_holders = o.holders.max(1) as u64;
    let goal_holders = if o.holders >= o.peers { peers } else { o.holders.min(peers) }.max(1) as u64;
    let everyone = o.holders >= o.peers;
    let (run_holdings, goal_holdings) = if everyone {
        let per_record = o.steady_rss_kib.saturating_sub(o.entries_rss_kib) * 1024 / o.records.max(1) as u64;
        (o.records as u64 * per_record, records as u64 * per_record)
    } else {
        (o.records as u64 * (run_holders - 1) * o.holder_bytes, records as u64 * (goal_holders - 1) * o.holder_bytes)
    };
    let explained =
        o.idle_rss_kib * 1024 + o.peers as u64 * o.session_bytes + o.records as u64 * o.entry_bytes + run_holdings;
    let fixed = (o.steady_rss_kib * 1024).saturating_sub(explained);
    let bytes =
        o.idle_rss_kib * 1024 + fixed + peers as u64 * o.session_bytes + records as u64 * o.entry_bytes + goal_holdings;
    bytes / 1024
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / KIB_PER_MIB)
}

fn thousands(n: usize) -> String {
    dartsync_shared::human::thousands(u64::try_from(n).unwrap_or(u64::MAX))
}

/// The goals judged against `o`.
pub fn goals(o: &Outcome) -> Vec<GoalRow> {
    let mut rows = vec![GoalRow {
        goal: "idle tracker RSS".into(),
        target: format!("<= {IDLE_GOAL_MIB} MiB"),
        measured: mib(o.idle_rss_kib),
        basis: Basis::Measured,
        pass: Some(o.idle_rss_kib <= IDLE_GOAL_MIB * 1024),
    }];
    for (records, peers, bound) in MEMORY_GOALS {
        let larger = o.records >= records && o.peers >= peers;
        let (kib, basis) = if (o.records, o.peers) == (records, peers) {
            (o.steady_rss_kib, Basis::Measured)
        } else if larger && o.steady_rss_kib <= bound * 1024 {
            (o.steady_rss_kib, Basis::LargerScale)
        } else {
            (estimate_kib(o, records, peers), Basis::Estimate)
        };
        let holders = if o.holders >= o.peers { peers } else { o.holders.min(peers) };
        rows.push(GoalRow {
            goal: format!(
                "tracker RSS, {} records x {} holders, {} peers",
                thousands(records),
                thousands(holders),
                thousands(peers)
            ),
            target: format!("<= {bound} MiB"),
            measured: mib(kib),
            basis,
            pass: Some(kib <= bound * 1024),
        });
    }
    let (p99_bound, fanout_peers) = FANOUT_GOAL;
    rows.push(if o.edits == 0 {
        skipped(format!("delta fan-out to {} sessions, p99", thousands(fanout_peers)), format!("<= {p99_bound} ms"))
    } else {
        GoalRow {
            goal: format!("delta fan-out to {} sessions, p99", thousands(fanout_peers)),
            target: format!("<= {p99_bound:.0} ms"),
            measured: format!(
                "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} peers; {}/{} edits reached all)",
                o.fanout.p50_ms, o.fanout.p99_ms, o.fanout.max_ms, o.peers, o.edits_complete, o.edits
            ),
            basis: if o.peers >= fanout_peers { Basis::Measured } else { Basis::OtherScale },
            pass: Some(o.fanout.p99_ms <= p99_bound && o.edits_complete == o.edits),
        }
    });
    let (cpu_bound, cpu_peers, interval) = CPU_GOAL;
    let goal = format!("tracker CPU, {} idle peers, keep-alives every {} s", thousands(cpu_peers), interval / 1000);
    rows.push(match o.keepalive_cpu_percent {
        None => skipped(goal, format!("<= {cpu_bound}% of a core")),
        Some(cpu) => GoalRow {
            goal,
            target: format!("<= {cpu_bound}% of a core"),
            measured: format!(
                "{cpu:.2}% ({} peers, every {} ms, {:.0} s window)",
                o.peers, o.interval_ms, o.cpu_window_secs
            ),
            basis: if o.peers >= cpu_peers && o.interval_ms == interval { Basis::Measured } else { Basis::OtherScale },
            pass: Some(cpu <= cpu_bound),
        },
    });
    rows
}

fn skipped(goal: String, target: String) -> GoalRow {
    GoalRow { goal, target, measured: "-".into(), basis: Basis::Skipped, pass: None }
}

/// The markdown report: the goals, then every measurement.
pub fn render(o: &Outcome, rows: &[GoalRow]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "## Tracker load: {} peers x {} records, {} holders each\n\n",
        thousands(o.peers),
        thousands(o.records),
        thousands(o.holders)
    ));
    out.push_str("| goal | target | measured | basis | result |\n|---|---|---|---|---|\n");
    for r in rows {
        let basis = match r.basis {
            Basis::Measured => "measured",
            Basis::OtherScale => "measured, other scale",
            Basis::LargerScale => "measured at a larger scale (at most this)",
            Basis::Estimate => "estimate from this run",
            Basis::Skipped => "not measured",
        };
        let result = match r.pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        out.push_str(&format!("| {} | {} | {} | {basis} | {result} |\n", r.goal, r.target, r.measured));
    }
    out.push_str("\n| measurement | value |\n|---|---|\n");
    let mut row = |what: &str, value: String| out.push_str(&format!("| {what} | {value} |\n"));
    row("tracker RSS: idle", mib(o.idle_rss_kib));
    row("... sessions registered, empty table", mib(o.sessions_rss_kib));
    row("... a quarter of the records", mib(o.quarter_rss_kib));
    row("... every record (author holds)", mib(o.entries_rss_kib));
    row("... every holder", mib(o.holders_rss_kib));
    row("... steady (every peer reported)", mib(o.steady_rss_kib));
    row("... peak of the run", mib(o.peak_rss_kib));
    row("anonymous RSS (heap, not the binary's file pages): idle", mib(o.idle_anon_kib));
    row("... steady", mib(o.steady_anon_kib));
    row("one idle session", format!("{} B", o.session_bytes));
    row("one entry (author holding it)", format!("{} B", o.entry_bytes));
    row("each further holder of an entry", format!("{} B", o.holder_bytes));
    row("steady RSS per (record, holder)", format!("{} B", o.steady_bytes_per_holding));
    row("table growth per (record, holder)", format!("{} B", o.table_bytes_per_holding));
    row(
        "most holders listed on an entry",
        if o.skimmed { "not read (--skim)".to_owned() } else { o.max_holders_listed.to_string() },
    );
    row("connect + register every peer", format!("{:.1} s", o.connect_secs));
    row(
        "every session has every record",
        format!("{:.1} s (tracker CPU {:.1} s)", o.announce_secs, o.announce_cpu_secs),
    );
    row("every session has every holder", format!("{:.1} s (tracker CPU {:.1} s)", o.holders_secs, o.holders_cpu_secs));
    row(
        "keep-alive CPU",
        o.keepalive_cpu_percent.map_or("-".into(), |c| format!("{c:.2}% of a core over {:.0} s", o.cpu_window_secs)),
    );
    row(
        "fan-out, every session",
        format!("p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms", o.fanout.p50_ms, o.fanout.p99_ms, o.fanout.max_ms),
    );
    row(
        "fan-out, last session per edit",
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            o.fanout_all.p50_ms, o.fanout_all.p99_ms, o.fanout_all.max_ms
        ),
    );
    row(
        "a peer leaves: pages to the sessions left",
        if o.departed_held == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} entries, {} (it held {} entries; {:.1} s, tracker CPU {:.1} s)",
                dartsync_shared::human::thousands(o.departure_entries),
                dartsync_shared::human::size(o.departure_bytes),
                dartsync_shared::human::thousands(o.departed_held),
                o.departure_secs,
                o.departure_cpu_secs
            )
        },
    );
    for note in &o.notes {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Outcome {
        Outcome {
            peers: 100,
            records: 1000,
            holders: 100,
            interval_ms: 10_000,
            idle_rss_kib: 6 * 1024,
            sessions_rss_kib: 9 * 1024,
            entries_rss_kib: 16 * 1024,
            steady_rss_kib: 20 * 1024,
            session_bytes: 25_000,
            entry_bytes: 500,
            holder_bytes: 50,
            keepalive_cpu_percent: Some(0.5),
            cpu_window_secs: 30.0,
            fanout: Latencies { count: 500, p50_ms: 20.0, p99_ms: 80.0, max_ms: 90.0 },
            edits: 5,
            edits_complete: 5,
            ..Outcome::default()
        }
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn estimates_scale_the_measured_costs() {
        // Each record held by 10 of the 100 peers: a holding per extra holder.
        let o = Outcome { holders: 10, ..sample() };
        // Explained: 6 MiB + 100 x 25,000 + 1000 x 500 + 1000 x 9 x 50 B;
        // the rest of the 20 MiB is fixed.
        let explained = 6 * 1024 * 1024 + 2_500_000 + 500_000 + 450_000;
        let fixed = 20 * 1024 * 1024 - explained;
        let want = (6 * 1024 * 1024 + fixed + 50 * 25_000 + 100_000 * 500 + 100_000 * 9 * 50) / 1024;
        assert_eq!(estimate_kib(&o, 100_000, 50), want);
        // Own scale: the steady RSS itself.
        assert_eq!(estimate_kib(&o, 1000, 100), 20 * 1024);
    }

    #[test]
    fn with_every_peer_holding_every_record_a_record_held_by_everyone_is_scaled() {
        let o = sample();
        // 4 MiB above the author-held table for 1000 records: 4,194 B each,
        // whatever the number of holders.
        let per_record = 4 * 1024 * 1024 / 1000;
        let explained = 6 * 1024 * 1024 + 2_500_000 + 500_000 + 1000 * per_record;
        let fixed = 20 * 1024 * 1024 - explained;
        let want = (6 * 1024 * 1024 + fixed + 1000 * 25_000 + 100_000 * 500 + 100_000 * per_record) / 1024;
        assert_eq!(estimate_kib(&o, 100_000, 1000), want);
        assert_eq!(estimate_kib(&o, 1000, 100), 20 * 1024);
    }

    #[test]
    fn goals_say_how_they_were_obtained() {
        let rows = goals(&sample());
        assert_eq!(rows.len(), 5);
        assert_eq!((rows[0].basis, rows[0].pass), (Basis::Measured, Some(true)));
        assert_eq!(rows[1].basis, Basis::Estimate);
        assert!(rows[1].goal.contains("100,000 records x 50 holders, 50 peers"), "{}", rows[1].goal);
        assert_eq!(rows[3].basis, Basis::OtherScale);
        assert_eq!(rows[3].pass, Some(true));
        assert_eq!(rows[4].pass, Some(true));
        let mut o = sample();
        o.edits_complete = 4;
        o.keepalive_cpu_percent = None;
        let rows = goals(&o);
        assert_eq!(rows[3].pass, Some(false));
        assert_eq!((rows[4].basis, rows[4].pass), (Basis::Skipped, None));
    }

    #[test]
    fn a_run_above_a_goals_scale_bounds_it_rather_than_scaling_down() {
        let o = Outcome { peers: 1000, records: 1_000_000, steady_rss_kib: 190 * 1024, ..sample() };
        let rows = goals(&o);
        assert_eq!(rows[1].basis, Basis::Estimate, "190 MiB above 32 says nothing of the smaller table");
        let small = Outcome { steady_rss_kib: 30 * 1024, ..o.clone() };
        let rows = goals(&small);
        assert_eq!(
            (rows[1].basis, rows[1].pass, rows[1].measured.as_str()),
            (Basis::LargerScale, Some(true), "30.0 MiB")
        );
        assert_eq!(rows[2].basis, Basis::Measured);
    }

    #[test]
    fn the_table_renders_every_goal() {
        let o = Outcome { notes: vec!["something odd".into()], ..sample() };
        let text = render(&o, &goals(&o));
        assert!(text.starts_with("## Tracker load: 100 peers x 1,000 records, 100 holders each\n"), "{text}");
        assert!(text.contains("| idle tracker RSS | <= 8 MiB | 6.0 MiB | measured | pass |\n"), "{text}");
        assert!(text.contains("| one entry (author holding it) | 500 B |\n"), "{text}");
        assert!(text.contains("measured, other scale | pass |"), "{text}");
        assert!(text.ends_with("\nNote: something odd\n"), "{text}");
        assert!(text.contains("| a peer leaves: pages to the sessions left | - |\n"), "{text}");
        let left = Outcome {
            departed_held: 1000,
            departure_entries: 2500,
            departure_bytes: 300_000,
            departure_secs: 0.25,
            departure_cpu_secs: 0.125,
            ..o.clone()
        };
        let text = render(&left, &goals(&left));
        assert!(
            text.contains(
                "| a peer leaves: pages to the sessions left | 2,500 entries, 300 KB (it held 1,000 entries; 0.2 s, \
                 tracker CPU 0.1 s) |\n"
            ),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("| ")).count(), 1 + 5 + 1 + 22);
    }
}
