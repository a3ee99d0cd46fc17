#!/usr/bin/env bash
# Join: a fresh, empty peer joins a cluster whose table already holds N
# files. One tracker and two peers of the release binary on 127.0.0.1:
# peer A indexes N files (1 KiB each, 100 per folder) and announces them;
# then peer B starts on an empty folder. Prints, from B's start: when it
# registered, when its first file was synced (issue 18's goal: within 2 s,
# the table arriving in pages), and when it was up to date with all N;
# and B's peak RSS. Times are polled every 10 ms from B's log.
# Not part of CI.
# Usage: bench/join/run.sh [N]   (default 100000)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
n="${1:-100000}"
bin="${DARTSYNC_BIN:-target/release/dartsync}"
[ -x "$bin" ] || { echo "build first: cargo build --release (or set DARTSYNC_BIN)" >&2; exit 1; }
export DARTSYNC_NO_DISCOVERY=1
# shellcheck source=../lib/small-cluster.sh
source bench/lib/small-cluster.sh

pids=()
dir="$(mktemp -d "${TMPDIR:-/tmp}/dartsync-join.XXXXXX")"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

"$bin" init --key-file "$dir/key" >/dev/null
mkdir -p "$dir/a" "$dir/b"
make_files "$dir/a" "$n"
start_tracker "$bin" "$dir"
RUST_LOG=warn "$bin" --peer "$dir/a" --tracker-addr "$addr" --listen 127.0.0.1:0 --key-file "$dir/key" --http off 2>"$dir/a.log" &
pids+=($!)
"$bin" status --wait 900 "$dir/a" >/dev/null

start="$(now)"
RUST_LOG=info "$bin" --peer "$dir/b" --tracker-addr "$addr" --listen 127.0.0.1:0 --key-file "$dir/key" --http off 2>"$dir/b.log" &
b=$!; pids+=($b)
registered="" first=""
deadline=$((SECONDS + 120))
while [ -z "$first" ] && [ $SECONDS -lt $deadline ]; do
  [ -z "$registered" ] && grep -q "registered with tracker" "$dir/b.log" && registered="$(now)"
  grep -q " synced " "$dir/b.log" && first="$(now)"
  sleep 0.01
done
[ -n "$first" ] || { echo "no file synced within 120 s: $(tail -5 "$dir/b.log")" >&2; exit 1; }
[ -n "$registered" ] || registered="$first"
"$bin" status --wait 900 "$dir/b" >/dev/null
done_at="$(now)"
got="$(find "$dir/b" -name '*.txt' | wc -l)"
[ "$got" -eq "$n" ] || { echo "B said up to date with $got of $n files" >&2; exit 1; }
peak="$(awk '$1=="VmHWM:" {print $2}' "/proc/$b/status")"
echo "files registered_s first_file_s all_files_s B_peak_kib"
echo "$n $(since "$start" "$registered") $(since "$start" "$first") $(since "$start" "$done_at") $peak"
