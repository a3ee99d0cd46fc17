//! Numbers for people, in one style everywhere (logs, `dartsync status`,
//! the demo): `1,204`, `1 file` / `2 files`, `3.2 GB` (powers of 1000, one
//! decimal below 100 of a unit), `2 h 5 min`.

/// `noun`, or `nouns` unless `n` is 1.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 { noun.to_owned() } else { format!("{noun}s") }
}

/// `n` with thousands separators: `1,204`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n noun`, plural with an `s` unless `n` is 1: `1 file`, `1,204 files`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{} {noun}s", thousands(n)) }
}

/// A decimal size: `512 B`, `3.2 GB`, `45.0 MB`, `340 MB` (one decimal
/// below 100 of a unit).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value < 99.95 { format!("{value:.1} {}", UNITS[unit]) } else { format!("{value:.0} {}", UNITS[unit]) }
}

/// A duration, coarse as a human says it: `8 s`, `5 min`, `2 h 5 min`,
/// `3 d 4 h`.
pub fn duration(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MIN => format!("{s} s"),
        s if s < HOUR => format!("{} min", s / MIN),
        s if s < DAY => match (s % HOUR) / MIN {
            0 => format!("{} h", s / HOUR),
            m => format!("{} h {m} min", s / HOUR),
        },
        s => match (s % DAY) / HOUR {
            0 => format!("{} d", s / DAY),
            h => format!("{} d {h} h", s / DAY),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_decimal_with_one_decimal_below_100() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1000), "1.0 KB");
        assert_eq!(size(1_234), "1.2 KB");
        assert_eq!(size(45_000_000), "45.0 MB");
        assert_eq!(size(99_960_000), "100 MB");
        assert_eq!(size(340_000_000), "340 MB");
        assert_eq!(size(999_999_999), "1.0 GB");
        assert_eq!(size(3_200_000_000), "3.2 GB");
        assert_eq!(size(u64::MAX), "18.4 EB");
    }

    #[test]
    fn counts_have_separators_and_plurals() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_204), "1,204");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(2, "file"), "2 files");
        assert_eq!(count(1_204, "file"), "1,204 files");
    }

    #[test]
    fn durations_are_coarse() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(60), "1 min");
        assert_eq!(duration(3_599), "59 min");
        assert_eq!(duration(3_600), "1 h");
        assert_eq!(duration(7_500), "2 h 5 min");
        assert_eq!(duration(86_400), "1 d");
        assert_eq!(duration(3 * 86_400 + 4 * 3_600 + 59), "3 d 4 h");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "peer"), "peer");
        assert_eq!(plural(0, "peer"), "peers");
        assert_eq!(plural(3, "peer"), "peers");
    }
}
