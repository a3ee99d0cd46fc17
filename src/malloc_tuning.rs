//! glibc malloc tuning, applied in `main` before any thread exists: at
//! most one malloc arena per core (one for a peer), and for the tracker, large blocks
//! always from `mmap`; and the tracker's `malloc_trim` after bursts of
//! paging (called by `dartsync_tracker`'s `memory` task, which says when)
//! and the peer's after bursts of syncing (its engine says when).
//!
//! glibc gives threads that meet a locked arena a new one, up to 8 per
//! core, and memory freed into an arena stays with it. A peer runs tokio's
//! workers plus a blocking pool that grows to dozens of threads while
//! thousands of small files are fetched (index lookups, installs, fsyncs),
//! so 16 arenas on 2 cores each kept their own freed buffers: measured with
//! `bench/compare` (`small` and `rename`, N = 2 and 4), a receiver peaked at
//! 65-78 MiB with the default and at 39-48 MiB with one arena per core
//! (2 on that machine), the writer at up to 75 and 44 MiB. Receiver CPU
//! per small file did not grow (A/B on the same binary, N = 2, two runs
//! each: 1,441 µs with 16 arenas, 1,395 µs with 2). The limit is one arena
//! per core, at least 2, so threads on different cores still rarely wait
//! for each other's lock.
//!
//! A peer goes further, to one arena ([`use_one_arena`], called once the
//! mode is known and before its runtime starts): its table entries, made
//! by whichever worker applied a delta, were spread over both arenas, each
//! with its own freed download and frame buffers between them. Measured
//! with `bench/peer-memory/run.sh 5000 100000`, the same binary, one run
//! after the other: the author of 100,000 files idled at 50.1 MiB with
//! one arena and 53.8 with two, the receiver at 58.0 (peak 59.4) and
//! 59.7 (peak 63.4); an earlier pair gave 50.2/58.0 and 57.9/60.1. A
//! receiver of 10,000 small files used 7.25 and 6.99 s of CPU with one
//! arena, 6.79 and 7.00 s with two (noise on that machine). Small blocks
//! come from each thread's cache (tcache) without the arena's lock, and a
//! peer takes that lock a few thousand times a second at most (a chunk
//! buffer per chunk), so its threads rarely wait.
//!
//! The tracker's large allocations are few and short-lived (delta pages
//! of up to 1 MiB, batch frames of up to 4 MiB, redb pages): glibc raises
//! its `mmap` threshold to the largest block freed so far, after which
//! such blocks come from the heap and what they leave stays there. A fixed
//! threshold of 128 KiB (glibc's initial one) hands every larger block
//! back to the kernel when it is freed. The gain is small and within the
//! tracker's run-to-run spread of about 1.5 MiB (its peak at N = 4 was
//! 15.6 MiB in one run with it, 17.4 in one without; 16-18 MiB in others),
//! and it costs the tracker nothing measurable. Peers keep glibc's sliding threshold:
//! they allocate a chunk buffer per chunk sent or received, and an
//! `mmap` plus page faults for each would cost CPU on every transfer.
//!
//! A `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES`
//! setting in the environment wins: then that setting is left as it is.
//! Other C libraries (musl) and systems are left alone.

/// Limits glibc's malloc arenas to one per core (at least 2), unless the
/// environment sets them. Call before any thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
    set(libc::M_ARENA_MAX, arenas);
}

/// Limits glibc to one malloc arena (a peer; see the module), unless the
/// environment sets the limit. Call before the peer's runtime starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn use_one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    set(libc::M_ARENA_MAX, 1);
}

/// Serves blocks of 128 KiB and more from `mmap`, returned to the kernel
/// when freed (the tracker; see the module), unless the environment sets
/// the threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn unmap_large_blocks() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    set(libc::M_MMAP_THRESHOLD, 128 * 1024);
}

/// Gives the heap's free pages back to the kernel (`malloc_trim(0)`): the
/// tracker's and the peer's release function (see
/// `dartsync_tracker::ReleaseFn`, `dartsync_peer::ReleaseFn`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    // SAFETY: `malloc_trim` takes an integer, locks each arena itself and
    // only returns pages no live block uses; it is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Not glibc: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn limit_arenas() {}

/// Not glibc: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn use_one_arena() {}

/// Not glibc: the allocator keeps what it keeps.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

/// Not glibc: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn unmap_large_blocks() {}

/// One of the binary's three `unsafe` calls (the library crates forbid
/// `unsafe`; the others are `malloc_trim` and `code_pages`' `madvise`):
/// `mallopt(param, value)` takes two integers, touches no
/// memory of ours and may be called at any time; it returns 0 only for a
/// parameter or value it refuses, which changes nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(param: libc::c_int, value: libc::c_int) {
    // SAFETY: see above; no pointers, no Rust state involved.
    let ok = unsafe { libc::mallopt(param, value) };
    debug_assert_ne!(ok, 0, "glibc refused mallopt({param}, {value})");
}
