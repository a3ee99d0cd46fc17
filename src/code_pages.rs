//! Handing the tracker's start-up code pages back to the kernel once it
//! has started.
//!
//! A process's resident set counts every page of its binary and libraries
//! that it has touched, and the kernel maps code around each page fault in
//! blocks of 16 pages ("fault-around"). The tracker's start-up (argument
//! parsing, opening and loading the database, binding the listeners) runs
//! code spread over most of the binary, so an idle tracker showed about
//! 7.9 MiB of file pages in an RSS of 8.9 MiB, while what it runs from then
//! on (keep-alives, timers, deltas) is a small part of that.
//!
//! [`spawn_release_after_start`] waits [`SETTLE`] after start-up and then
//! advises the kernel to reclaim (`MADV_PAGEOUT`, Linux 5.4 and later) the
//! read-only file-backed mappings: the binary's and the libraries' code and
//! constants. These pages are clean, so nothing is written anywhere; pages
//! the tracker still uses are simply mapped again at their next use, and
//! pages other processes map too (a shared libc) are left alone by the
//! kernel. Measured on the release build: an idle tracker went from
//! 9.2 MiB to 3.1 MiB at once and sat at 4.0 MiB twenty seconds later.
//!
//! Best effort: a kernel without `MADV_PAGEOUT`, or an unreadable
//! `/proc/self/maps`, leaves everything as it was (logged at debug).

use std::time::Duration;

/// How long after start-up the pages are handed back: enough for the
/// listeners to be up and the first sessions of reconnecting peers (whose
/// code then stays mapped) to have been served.
pub(crate) const SETTLE: Duration = Duration::from_secs(10);

/// Spawns the one-shot release on the current tokio runtime.
pub(crate) fn spawn_release_after_start() {
    tokio::spawn(async {
        tokio::time::sleep(SETTLE).await;
        match tokio::task::spawn_blocking(release_code_pages).await {
            Ok(Ok((mappings, bytes))) => {
                tracing::debug!("released start-up code pages: {mappings} mappings, {} KiB advised", bytes / 1024);
            }
            Ok(Err(e)) => tracing::debug!("start-up code pages not released: {e}"),
            Err(_) => {}
        }
    });
}

/// One mapping of `/proc/self/maps` that may be handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The read-only (not writable), file-backed mappings of a
/// `/proc/self/maps` text: code and constants of the binary and its
/// libraries. Anonymous memory, the heap, stacks, `[vdso]` and writable
/// data are skipped.
fn read_only_file_mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?;
            if !path.starts_with('/') || perms.as_bytes().get(1) != Some(&b'-') || !perms.starts_with('r') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some(Mapping { start, end })
        })
        .collect()
}

/// Advises the kernel to reclaim every read-only file-backed mapping;
/// returns how many mappings and bytes were advised.
fn release_code_pages() -> std::io::Result<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mappings = read_only_file_mappings(&maps);
    let mut advised = 0usize;
    for m in &mappings {
        page_out(m)?;
        advised += m.end - m.start;
    }
    Ok((mappings.len(), advised))
}

/// `madvise(MADV_PAGEOUT)` over one mapping.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_out(m: &Mapping) -> std::io::Result<()> {
    // SAFETY: the range is a whole mapping of this process as the kernel
    // listed it; MADV_PAGEOUT only drops clean pages from the page tables
    // (they fault back in unchanged), so no memory Rust refers to changes.
    // If the mapping went away meanwhile the kernel answers ENOMEM.
    let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_PAGEOUT) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn page_out(_: &Mapping) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 123 /usr/bin/dartsync
55d0c0100000-55d0c0500000 r-xp 00100000 08:01 123 /usr/bin/dartsync
55d0c0500000-55d0c0510000 rw-p 00500000 08:01 123 /usr/bin/dartsync
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000020000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7ffd00002000-7ffd00003000 ---p 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
garbage line
";
        let got = read_only_file_mappings(maps);
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x55d0c0000000, end: 0x55d0c0100000 },
                Mapping { start: 0x55d0c0100000, end: 0x55d0c0500000 },
                Mapping { start: 0x7f0000010000, end: 0x7f0000020000 },
            ]
        );
    }

    /// Every read-only file mapping of this process is advised without an
    /// error (a wrong range would be refused with `ENOMEM` or `EINVAL`).
    /// Whether the pages then leave the resident set depends on who else
    /// maps them and on what other threads run meanwhile, so that is
    /// measured by `bench/load`, not asserted here.
    #[test]
    fn every_read_only_file_mapping_is_advised() {
        match release_code_pages() {
            Ok((mappings, bytes)) => assert!(mappings > 0 && bytes > 0, "nothing advised"),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("skipped: this kernel has no MADV_PAGEOUT (Linux 5.4 or later): {e}");
            }
            Err(e) => panic!("release failed: {e}"),
        }
    }
}
