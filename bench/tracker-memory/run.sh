#!/usr/bin/env bash
# Tracker memory: runs tracker/tests/memory.rs in an optimised build (each
# test starts a tracker in a process of its own and reads its VmRSS/VmHWM)
# and prints the `memory:` lines the formula in ARCHITECTURE.md ("Tracker
# memory") uses. Not part of CI.
# Usage: bench/tracker-memory/run.sh [ENTRIES]   (default 200000)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
entries="${1:-200000}"
# The release profile without LTO and with parallel codegen: the same
# optimisation level as `dartsync`, built in minutes, not tens of minutes.
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_PROFILE_RELEASE_PANIC=unwind
export DARTSYNC_MEMORY_ENTRIES="$entries"
out="$(cargo test --release -p dartsync-tracker --test memory -- --nocapture --test-threads=1 2>&1)" || {
  printf '%s\n' "$out" >&2
  exit 1
}
printf '%s\n' "$out" | grep -o 'memory: .*'
