# Shared by bench/peer-memory and bench/join (sourced, not run): N small
# files for a peer to index, and a tracker on 127.0.0.1.

# make_files DIR N: N files of 1 KiB (8 bytes of the index, 128 times),
# 100 per folder, named d00000/f0000000.txt and so on.
make_files() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}.txt"), "wb") as f:
        f.write(i.to_bytes(8, "little") * 128)
PY
}

# start_tracker BIN DIR: starts `BIN --tracker` with its data, key and log
# in DIR (the key must exist: DIR/key), appends its PID to the caller's
# `pids` array and sets `addr` to where it listens.
start_tracker() {
  local bin="$1" dir="$2"
  RUST_LOG=info "$bin" --tracker --listen 127.0.0.1:0 --data "$dir/t" --key-file "$dir/key" 2>"$dir/t.log" &
  pids+=($!)
  addr=""
  for _ in $(seq 100); do
    addr="$(grep -o 'listening on [0-9.:]*' "$dir/t.log" | head -1 | cut -d' ' -f3 || true)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "the tracker did not start: $(cat "$dir/t.log")" >&2; exit 1; }
}
