//! What the tool reads about the tracker process from `/proc`: resident
//! memory (`VmRSS`) and its peak (`VmHWM`) from `/proc/PID/status`, and
//! CPU time (`utime + stime`) from `/proc/PID/stat`. Any process id works,
//! so a tracker spawned by a test harness is measured the same way as one
//! this tool started. The parsers are pure and unit-tested.

use std::time::{Duration, Instant};

use crate::LoadError;

/// One reading of the tracker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// Of it, anonymous memory (`RssAnon`: heap, stacks; not the
    /// binary's and libraries' file pages, which are shared with every
    /// process mapping them and which the kernel can drop), KiB.
    pub anon_kib: u64,
    /// Peak resident memory since the process started (or since the peak
    /// was last reset), KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample(pid: u32) -> Result<ProcSample, LoadError> {
    let status = read(pid, "status")?;
    let stat = read(pid, "stat")?;
    let bad = |what: &str| LoadError::Proc { pid, what: what.to_owned() };
    Ok(ProcSample {
        rss_kib: status_kib(&status, "VmRSS:").ok_or_else(|| bad("no VmRSS in status"))?,
        hwm_kib: status_kib(&status, "VmHWM:").ok_or_else(|| bad("no VmHWM in status"))?,
        anon_kib: status_kib(&status, "RssAnon:").ok_or_else(|| bad("no RssAnon in status"))?,
        cpu_ticks: stat_cpu_ticks(&stat).ok_or_else(|| bad("malformed stat"))?,
    })
}

/// How long [`settled`] waits at most for the RSS to stop moving.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// A reading once the RSS has stopped moving (two readings 250 ms apart
/// within 256 KiB of each other), or the last one after [`SETTLE_LIMIT`]:
/// the tracker hands freed heap back a moment after a burst of paging,
/// and a reading taken in between would count the pages it is about to
/// give back.
pub async fn settled(pid: u32) -> Result<ProcSample, LoadError> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = sample(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sample(pid)?;
        if now.rss_kib.abs_diff(last.rss_kib) <= 256 || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

fn read(pid: u32, file: &str) -> Result<String, LoadError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| LoadError::Proc { pid, what: format!("cannot read /proc/{pid}/{file}: {e}") })
}

/// The value of a `kB` field of `/proc/PID/status` (`VmRSS:  1234 kB`).
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Field `n` (numbered from 1, as in `proc(5)`; at least 3) of
/// `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// hold spaces or parentheses, so fields are counted from the last `)`.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of `/proc/PID/stat`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// The process's start time, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`).
pub fn stat_start_ticks(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// How long process `pid` has been running.
pub fn age(pid: u32) -> Result<Duration, LoadError> {
    let stat = read(pid, "stat")?;
    let bad = |what: &str| LoadError::Proc { pid, what: what.to_owned() };
    let start = stat_start_ticks(&stat).ok_or_else(|| bad("malformed stat"))?;
    let uptime = std::fs::read_to_string("/proc/uptime").map_err(|_| bad("cannot read /proc/uptime"))?;
    let uptime: f64 =
        uptime.split_whitespace().next().and_then(|u| u.parse().ok()).ok_or_else(|| bad("malformed /proc/uptime"))?;
    let started = start as f64 / ticks_per_second().max(1) as f64;
    Ok(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// CPU use of a process over a window: share of one core, in percent.
pub fn cpu_percent(ticks: u64, ticks_per_second: u64, wall: Duration) -> f64 {
    if wall.is_zero() || ticks_per_second == 0 {
        return 0.0;
    }
    100.0 * ticks as f64 / ticks_per_second as f64 / wall.as_secs_f64()
}

/// Measures the CPU share of `pid` over `window`.
pub async fn measure_cpu(pid: u32, window: Duration) -> Result<f64, LoadError> {
    let before = sample(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let after = sample(pid)?;
    Ok(cpu_percent(after.cpu_ticks.saturating_sub(before.cpu_ticks), ticks_per_second(), start.elapsed()))
}

/// Raises this process's soft open-file limit to its hard limit (children
/// spawned afterwards, such as the tracker, inherit it). Returns the new
/// soft limit.
pub fn raise_nofile_limit() -> Result<u64, LoadError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(|e| LoadError::Limit(e.to_string()))?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tdartsync\nVmPeak:\t  100 kB\nVmHWM:\t    9216 kB\nVmRSS:\t    8192 kB\nRssAnon:\t    1024 kB\nThreads:\t3\n";

    #[test]
    fn status_fields_are_read_in_kib() {
        assert_eq!(status_kib(STATUS, "VmRSS:"), Some(8192));
        assert_eq!(status_kib(STATUS, "VmHWM:"), Some(9216));
        assert_eq!(status_kib(STATUS, "RssAnon:"), Some(1024));
        assert_eq!(status_kib(STATUS, "VmSwap:"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (dart sync (x)) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 37 0 0 20 0 3 0 99 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(287));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_start_ticks(stat), Some(99));
        assert_eq!(stat_start_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_been_running_a_while() {
        let age = age(std::process::id()).unwrap();
        assert!(age < Duration::from_secs(24 * 3600), "{age:?}");
    }

    #[test]
    fn cpu_percent_is_a_share_of_one_core() {
        let p = cpu_percent(60, 100, Duration::from_secs(30));
        assert!((p - 2.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(5, 100, Duration::ZERO), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
