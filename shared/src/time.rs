//! Calendar formatting without a time-zone database: `YYYYMMDD-HHMMSS` in
//! UTC, used in conflict-copy names (from a record's mtime) and version
//! history names (from the local clock). Names only: no time here ever
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
}
