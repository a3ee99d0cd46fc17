#!/usr/bin/env bash
# Scan benchmark: index 100,000 small files, then restart over the unchanged
# folder and check that no file content is read. Not part of CI.
# Usage: bench/scan/run.sh [--files N] [--per-dir N] [--dir PARENT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
files=100000
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo run --release -p dartsync-peer --example scan_bench -- \
  --files "$files" --out "$here/results.json" "${args[@]+"${args[@]}"}"
