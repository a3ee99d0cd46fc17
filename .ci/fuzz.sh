#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets in tests/fuzz (one per decoder of
# wire or on-disk bytes) and runs each for a bounded time, starting from
# its seed corpus in tests/fuzz/corpus/<target>/. Fails if any target
# crashes (panic, overflow, sanitizer report, timeout, out of memory), and
# prints the crashing input in hex.
#
# Needs a nightly toolchain (libFuzzer's coverage instrumentation): without
# one, and if `rustup` cannot install one, it says why and exits 0, since
# the proptests of peer/tracker/shared (`cargo test`) cover the same
# decoders on stable. Installs cargo-fuzz from crates.io (a no-op when the
# current version is there already); nothing is cached.
#
# Knobs (environment):
#   FUZZ_SECONDS     run time per target (default 20)
#   FUZZ_TARGETS     space-separated targets (default: all of them)
#   FUZZ_SANITIZER   address | none (default none, see below)
#   FUZZ_JOBS        targets fuzzed at once (default: one per core)
#   FUZZ_TARGET_DIR  cargo target dir of the fuzz build (default target/fuzz:
#                    not under tests/, whose .rs files tests/tidy.rs reads)
#
# The sanitizer is off by default: the workspace forbids unsafe code, so
# what a run can find is a panic (overflow checks are on, `-a`), a hang or
# unbounded memory; ASan would slow both the build and every execution of
# a short run. FUZZ_SANITIZER=address turns it on.
#
# New inputs found during a run go to a temporary folder, never into the
# committed corpus. Crash inputs are kept in tests/fuzz/artifacts/<target>/
# (ignored by git); reproduce one with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz --target-dir target/fuzz -s none -a <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-target/fuzz}
jobs=${FUZZ_JOBS:-$(nproc)}
step() { printf '\n==> %s\n' "$*"; }
skip() {
  printf 'fuzz: skipped: %s\nThe proptests in `cargo test` cover the decoders on stable.\n' "$*"
  exit 0
}

step "nightly toolchain"
if ! rustup run nightly rustc --version 2>/dev/null; then
  if ! out=$(rustup toolchain install nightly --profile minimal 2>&1); then
    skip "no nightly toolchain and rustup could not install one: $(tail -n 3 <<<"$out")"
  fi
  rustup run nightly rustc --version
fi

step "cargo-fuzz"
if ! out=$(cargo install cargo-fuzz --locked 2>&1); then
  if cargo fuzz --version >/dev/null 2>&1; then
    echo "cannot update cargo-fuzz ($(tail -n 1 <<<"$out")); using the installed one"
  else
    skip "cannot install cargo-fuzz: $(tail -n 3 <<<"$out")"
  fi
fi
cargo fuzz --version

flags=(--fuzz-dir tests/fuzz --target-dir "$target_dir" --sanitizer "$sanitizer" --debug-assertions)
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir tests/fuzz)
fi

step "build ${#targets[@]} targets (sanitizer: $sanitizer)"
build_started=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "built in $((SECONDS - build_started)) s"
bin_dir=$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One libFuzzer process per target, `jobs` at a time.
run_one() {
  local target=$1 t0=$SECONDS status=0
  mkdir -p "$work/$target" "tests/fuzz/artifacts/$target"
  "$bin_dir/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="tests/fuzz/artifacts/$target/" "$work/$target" "tests/fuzz/corpus/$target" \
    >"$work/$target.log" 2>&1 || status=$?
  echo "$status $((SECONDS - t0))" >"$work/$target.status"
}
step "run each target for $seconds s, $jobs at a time"
running=0
for target in "${targets[@]}"; do
  if [[ $running -ge $jobs ]]; then
    wait -n || true
    running=$((running - 1))
  fi
  echo "$target"
  run_one "$target" &
  running=$((running + 1))
done
wait

step "summary"
failed=()
for target in "${targets[@]}"; do
  log=$work/$target.log
  read -r status took <"$work/$target.status"
  statval() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
  printf '%-20s %4d s  %9s execs  %7s execs/s  corpus %4s (+%s new)  rss %s MB%s\n' "$target" "$took" \
    "$(statval number_of_executed_units)" "$(statval average_exec_per_sec)" \
    "$(find "$work/$target" "tests/fuzz/corpus/$target" -type f | wc -l)" "$(statval new_units_added)" \
    "$(statval peak_rss_mb)" "$([[ $status -eq 0 ]] || echo "  FAILED (exit $status)")"
  [[ $status -eq 0 ]] || failed+=("$target")
done
for target in "${failed[@]}"; do
  log=$work/$target.log
  step "$target failed; the end of its output"
  grep -v '^#[0-9]\|^INFO:\|^stat::' "$log" | tail -n 40 || true
  for artifact in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
    [[ -f "$artifact" ]] || continue
    echo "input $artifact ($(wc -c <"$artifact") bytes), hex:"
    od -An -v -tx1 "$artifact" | tr -d ' \n' | fold -w 96
    echo
  done
done
echo "total: $((SECONDS - started)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz: no crash in ${#targets[@]} targets"
