//! Calendar formatting without a time-zone database: `YYYYMMDD-HHMMSS` in
//! UTC, used in conflict-copy names (from a record's mtime) and version
//! history names (from the local clock), and the times a user types
//! (`dartsync restore --at`). Names and display only: no time here ever
//! decides causality.

/// Formats seconds since the Unix epoch as `YYYYMMDD-HHMMSS` in UTC.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a Gregorian date (inverse of
/// [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Nanoseconds per second.
const NANOS: i64 = 1_000_000_000;

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` in
/// UTC (for people; the zone is stated by the caller).
pub fn utc_display(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// A span of time a user typed: from `start_ns` (nanoseconds since the
/// Unix epoch) for `len_ns`, the precision it was written with (a day, a
/// minute, a second, or a fraction of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSpan {
    /// The first instant of the span.
    pub start_ns: i64,
    /// Its length (at least 1).
    pub len_ns: i64,
}

impl TimeSpan {
    /// Whether `ns` falls in the span.
    pub fn contains(&self, ns: i64) -> bool {
        ns >= self.start_ns && ns - self.start_ns < self.len_ns
    }
}

/// Parses a time as `dartsync versions` prints it or as RFC 3339, UTC
/// unless an offset is given: `YYYYMMDD-HHMMSS[.fff]` (a history file's
/// stamp), `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS[.fff]`
/// (`T` instead of the space too), each optionally followed by `Z` or
/// `+HH:MM` / `-HH:MM`. The span is the precision written: a whole day, a
/// minute, a second, or the fraction's last digit.
pub fn parse_user_time(text: &str) -> Result<TimeSpan, String> {
    let bad = || {
        format!(
            "cannot read the time {text:?}: write it as dartsync versions shows it (2024-05-01 10:15:00, UTC), \
             as RFC 3339 (2024-05-01T12:15:00+02:00) or as a history stamp (20240501-101500)"
        )
    };
    let s = text.trim();
    let (body, offset) = split_offset(s).ok_or_else(bad)?;
    let (date, time) = if let Some((d, t)) = body.split_once(['T', 't', ' ']) {
        (parse_date(d), Some(t))
    } else if body.len() > 8 && body.as_bytes()[8] == b'-' && body[..8].bytes().all(|b| b.is_ascii_digit()) {
        // A history stamp: YYYYMMDD-HHMMSS[.fff].
        let (d, t) = body.split_at(8);
        let date = (|| Some((d[..4].parse().ok()?, d[4..6].parse().ok()?, d[6..].parse().ok()?)))();
        let t = &t[1..];
        if t.len() < 6 || !t[..6].bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let colons = format!("{}:{}:{}{}", &t[..2], &t[2..4], &t[4..6], &t[6..]);
        return finish(date, Some(&colons), offset).ok_or_else(bad);
    } else {
        (parse_date(body), None)
    };
    finish(date, time, offset).ok_or_else(bad)
}

fn finish(date: Option<(i64, i64, i64)>, time: Option<&str>, offset_secs: i64) -> Option<TimeSpan> {
    let (y, m, d) = date?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || civil_from_days(days_from_civil(y, m, d)) != (y, m, d) {
        return None;
    }
    let day_start = days_from_civil(y, m, d).checked_mul(86_400)?;
    let (secs, frac_ns, len_ns) = match time {
        None => (0, 0, 86_400 * NANOS),
        Some(t) => parse_clock(t)?,
    };
    let start = (day_start + secs - offset_secs).checked_mul(NANOS)?.checked_add(frac_ns)?;
    Some(TimeSpan { start_ns: start, len_ns })
}

fn parse_date(d: &str) -> Option<(i64, i64, i64)> {
    let mut parts = d.split('-');
    let (y, m, dd) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || dd.len() != 2 {
        return None;
    }
    Some((y.parse().ok()?, m.parse().ok()?, dd.parse().ok()?))
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff`: (seconds of the day, fraction
/// in ns, precision in ns).
fn parse_clock(t: &str) -> Option<(i64, i64, i64)> {
    let two = |s: &str| -> Option<i64> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let mut parts = t.splitn(3, ':');
    let h = two(parts.next()?)?;
    let mi = two(parts.next()?)?;
    let (sec, frac, len) = match parts.next() {
        None => (0, 0, 60 * NANOS),
        Some(rest) => {
            let (s, f) = rest.split_once(['.', ',']).map_or((rest, None), |(s, f)| (s, Some(f)));
            let s = two(s)?;
            match f {
                None => (s, 0, NANOS),
                Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
                    let scale = 10i64.pow(9 - f.len() as u32);
                    (s, f.parse::<i64>().ok()? * scale, scale)
                }
                Some(_) => return None,
            }
        }
    };
    (h < 24 && mi < 60 && sec < 61).then_some((h * 3600 + mi * 60 + sec, frac, len))
}

/// Splits a trailing `Z` or `+HH:MM` / `-HH:MM` off; the offset in seconds.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(body) = s.strip_suffix(['Z', 'z']) {
        return Some((body, 0));
    }
    let b = s.as_bytes();
    if b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' && b.len() > 16 {
        let (body, off) = s.split_at(s.len() - 6);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let h: i64 = off[1..3].parse().ok()?;
        let m: i64 = off[4..6].parse().ok()?;
        return Some((body, sign * (h * 3600 + m * 60)));
    }
    Some((s, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_dates() {
        for (secs, want) in [
            (0, "19700101-000000"),
            (951_782_400, "20000229-000000"),
            (1_700_000_000, "20231114-221320"),
            (-1, "19691231-235959"),
            (4_102_444_800, "21000101-000000"),
        ] {
            assert_eq!(utc_stamp(secs), want, "{secs}");
        }
    }

    #[test]
    fn user_times_parse_with_their_precision() {
        let t = |s: &str| parse_user_time(s).unwrap();
        let base = 1_700_000_000 * NANOS; // 2023-11-14 22:13:20 UTC
        assert_eq!(t("20231114-221320"), TimeSpan { start_ns: base, len_ns: NANOS });
        assert_eq!(t("20231114-221320.5"), TimeSpan { start_ns: base + NANOS / 2, len_ns: NANOS / 10 });
        assert_eq!(t("2023-11-14 22:13:20"), TimeSpan { start_ns: base, len_ns: NANOS });
        assert_eq!(t("2023-11-14T22:13:20Z"), TimeSpan { start_ns: base, len_ns: NANOS });
        assert_eq!(t("2023-11-14T23:13:20+01:00"), TimeSpan { start_ns: base, len_ns: NANOS });
        assert_eq!(t("2023-11-14 22:13"), TimeSpan { start_ns: base - 20 * NANOS, len_ns: 60 * NANOS });
        assert_eq!(t("2023-11-14").len_ns, 86_400 * NANOS);
        assert_eq!(utc_display(t("2023-11-14").start_ns), "2023-11-14 00:00:00");
        assert_eq!(utc_display(base + 5), "2023-11-14 22:13:20");
        for bad in
            ["", "yesterday", "2023-13-01", "2023-02-30", "2023-11-14 25:00", "20231114-22", "2023-11-14 22:13:20.x"]
        {
            assert!(parse_user_time(bad).is_err(), "{bad}");
        }
        assert!(t("2023-11-14 22:13").contains(base));
        assert!(!t("2023-11-14 22:13").contains(base + 40 * NANOS));
        for days in [-1000, 0, 19_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
