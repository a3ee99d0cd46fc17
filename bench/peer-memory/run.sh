#!/usr/bin/env bash
# Peer memory: one tracker and two peers of the release binary on
# 127.0.0.1. Peer A indexes N small files (1 KiB each, 100 per folder) and
# announces them; peer B, empty, fetches all of them. Prints each peer's
# RSS once it is up to date (and its peak), for two sizes, and the slope
# per file: the constants of the peer formula in ARCHITECTURE.md ("Peer
# memory"). Not part of CI.
# Usage: bench/peer-memory/run.sh [SMALL_N] [LARGE_N]   (default 10000 50000)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
small="${1:-10000}"
large="${2:-50000}"
bin="${DARTSYNC_BIN:-target/release/dartsync}"
[ -x "$bin" ] || { echo "build first: cargo build --release (or set DARTSYNC_BIN)" >&2; exit 1; }
export DARTSYNC_NO_DISCOVERY=1
# shellcheck source=../lib/small-cluster.sh
source bench/lib/small-cluster.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }

measure() {
  local n="$1" dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/dartsync-peer-memory.XXXXXX")"
  "$bin" init --key-file "$dir/key" >/dev/null
  mkdir -p "$dir/a" "$dir/b"
  make_files "$dir/a" "$n"
  local addr
  start_tracker "$bin" "$dir"
  local start=$SECONDS
  RUST_LOG=warn "$bin" --peer "$dir/a" --tracker-addr "$addr" --listen 127.0.0.1:0 --key-file "$dir/key" --http off 2>"$dir/a.log" &
  local a=$!; pids+=($a)
  "$bin" status --wait 600 "$dir/a" >/dev/null
  RUST_LOG=warn "$bin" --peer "$dir/b" --tracker-addr "$addr" --listen 127.0.0.1:0 --key-file "$dir/key" --http off 2>"$dir/b.log" &
  local b=$!; pids+=($b)
  "$bin" status --wait 900 "$dir/b" >/dev/null
  sleep 2
  echo "$n $(kib $a VmRSS) $(kib $a VmHWM) $(kib $b VmRSS) $(kib $b VmHWM) $((SECONDS - start))"
  kill "$a" "$b" 2>/dev/null || true
  cleanup
  pids=()
  rm -rf "$dir"
}

echo "files A_rss_kib A_peak_kib B_rss_kib B_peak_kib seconds"
s="$(measure "$small")"; echo "$s"
l="$(measure "$large")"; echo "$l"
read -r n1 a1 _ b1 _ _ <<<"$s"
read -r n2 a2 _ b2 _ _ <<<"$l"
echo "per file: author $(( (a2 - a1) * 1024 / (n2 - n1) )) B, receiver $(( (b2 - b1) * 1024 / (n2 - n1) )) B (RSS slope between $n1 and $n2 files)"
