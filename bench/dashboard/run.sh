#!/usr/bin/env bash
# Tracker memory with the web dashboard: the same tracker and four peers,
# once without --http and once with it while a headless Chromium keeps the
# dashboard open (polling /api/v1/status every second), side by side in one
# run. Prints the tracker's resident memory (VmRSS) and peak (VmHWM) in
# both cases and the difference. Everything on 127.0.0.1.
#
#   bash bench/dashboard/run.sh            # uses target/release/dartsync
#   DARTSYNC=/path/to/dartsync BROWSE_SECS=120 bash bench/dashboard/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${DARTSYNC:-${CARGO_TARGET_DIR:-target}/release/dartsync}
browse_secs=${BROWSE_SECS:-60}
browser=$(command -v chromium || command -v chromium-browser || true)
[[ -x "$bin" ]] || { echo "no $bin: cargo build --release first" >&2; exit 1; }
[[ -n "$browser" ]] || { echo "no chromium: apt-get install chromium" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" init --key-file "$work/key" >/dev/null

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# start_cluster NAME [tracker args...]: a tracker and four peers; sets
# $tracker_pid and $tracker_log.
start_cluster() {
  local name=$1; shift
  tracker_log="$work/$name-tracker.log"
  "$bin" --tracker --listen 127.0.0.1:0 --data "$work/$name-data" --key-file "$work/key" "$@" 2>"$tracker_log" &
  tracker_pid=$!; pids+=("$tracker_pid")
  local addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'tracker listening on [0-9.:]*' "$tracker_log" | awk '{print $4}' || true)
    [[ -n "$addr" ]] && break
    sleep 0.1
  done
  for peer in alice bob carol dave; do
    mkdir -p "$work/$name-$peer"
    "$bin" --peer "$work/$name-$peer" --name "$peer" --tracker-addr "$addr" --listen 127.0.0.1:0 \
      --key-file "$work/key" --http off 2>"$work/$name-$peer.log" &
    pids+=("$!")
  done
  for peer in alice bob carol dave; do
    "$bin" status --wait 30 "$work/$name-$peer" >/dev/null
  done
}

start_cluster plain
sleep 10   # settle
plain_rss=$(kib "$tracker_pid" VmRSS); plain_hwm=$(kib "$tracker_pid" VmHWM)

start_cluster dash --http 127.0.0.1:0
url="http://$(grep -o 'dashboard on http://[0-9.:]*' "$tracker_log" | sed 's|dashboard on http://||')/"
sleep 10
idle_rss=$(kib "$tracker_pid" VmRSS)
# The browser keeps the page open for BROWSE_SECS of its own time: one
# status request a second, as a user's tab would.
timeout $((browse_secs + 60)) "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --user-data-dir="$work/profile" --virtual-time-budget=$((browse_secs * 1000)) --dump-dom "$url" >/dev/null 2>&1 || true
dash_rss=$(kib "$tracker_pid" VmRSS); dash_hwm=$(kib "$tracker_pid" VmHWM)
requests=$(( browse_secs ))

printf '| tracker (4 peers online) | VmRSS | VmHWM (peak) |\n|---|---|---|\n'
printf '| no dashboard | %d KiB | %d KiB |\n' "$plain_rss" "$plain_hwm"
printf '| --http, before a browser | %d KiB | |\n' "$idle_rss"
printf '| --http, after ~%d s of one browser tab (~%d requests) | %d KiB | %d KiB |\n' "$browse_secs" "$requests" "$dash_rss" "$dash_hwm"
printf '\ndifference with the dashboard open: %+d KiB resident, %+d KiB peak (goal: within +4096 KiB)\n' \
  $((dash_rss - plain_rss)) $((dash_hwm - plain_hwm))
