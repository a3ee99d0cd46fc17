#!/usr/bin/env bash
# deploy/tracker-rss.sh: the tracker's resident memory when idle with N peers
# registered (default 4). Everything runs on 127.0.0.1 in a temp directory
# and is stopped (by PID) at the end. Run it on a Pi to get the real figure:
#
#   deploy/tracker-rss.sh /usr/local/bin/dartsync
#   deploy/tracker-rss.sh target/release/dartsync
#   PEERS=8 deploy/tracker-rss.sh qemu-aarch64-static -L /usr/aarch64-linux-gnu \
#       target/aarch64-unknown-linux-gnu/release/dartsync     # includes qemu itself
#
# Arguments: the command that runs the tracker's dartsync (a binary, or an
# emulator plus the binary). The peers run $PEER_BIN (default: the last
# argument, which must then run natively).
set -euo pipefail

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
tracker=("$@")
peer_bin="${PEER_BIN:-${!#}}"
peers="${PEERS:-4}"
settle="${SETTLE_SECS:-5}"

dir="$(mktemp -d "${TMPDIR:-/tmp}/dartsync-rss.XXXXXX")"
pids=()
cleanup() {
    if ((${#pids[@]})); then
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# Polls CONDITION (a command) every 0.1 s for up to SECS seconds.
wait_for() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

"$peer_bin" init --key-file "$dir/cluster.key" >/dev/null
NO_COLOR=1 RUST_LOG=info "${tracker[@]}" --tracker --listen 127.0.0.1:0 --data "$dir/tracker" \
    --key-file "$dir/cluster.key" 2>"$dir/tracker.log" &
tracker_pid=$!
pids+=("$tracker_pid")
wait_for 60 grep -q 'listening on' "$dir/tracker.log" || {
    cat "$dir/tracker.log" >&2
    echo "error: the tracker did not start" >&2
    exit 1
}
addr="$(grep -o 'listening on [0-9.:]*' "$dir/tracker.log" | head -n 1 | cut -d' ' -f3)"

for i in $(seq "$peers"); do
    mkdir -p "$dir/peer$i"
    NO_COLOR=1 "$peer_bin" --peer "$dir/peer$i" --tracker-addr "$addr" --listen 127.0.0.1:0 \
        --key-file "$dir/cluster.key" 2>"$dir/peer$i.log" &
    pids+=("$!")
done
registered() { [[ "$(grep -c ' registered from ' "$dir/tracker.log")" -ge "$peers" ]]; }
wait_for 60 registered || {
    tail -n 20 "$dir/tracker.log" >&2
    echo "error: only $(grep -c ' registered from ' "$dir/tracker.log") of $peers peers registered" >&2
    exit 1
}
# Idle: every peer registered and synced its (empty) folder; let it settle.
sleep "$settle"
rss="$(sed -n 's/^VmRSS:[[:space:]]*//p' "/proc/$tracker_pid/status")"
hwm="$(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$tracker_pid/status")"
echo "tracker idle with $peers peers registered: RSS $rss (peak $hwm)"
