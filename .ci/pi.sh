#!/usr/bin/env bash
# CI for the Raspberry Pi builds (issue 6): installs what they need, builds
# the release `dartsync` for armv7 and aarch64 with cargo-zigbuild against
# glibc 2.31 (Raspberry Pi OS bullseye), then runs tests/pi.rs for real:
# ELF checks, glibc floor, `--version` and an emulated tracker under qemu,
# and deploy/deploy.sh against a throwaway sshd on 127.0.0.1.
#
# Called from .ci/run; runnable on its own: `bash .ci/pi.sh`.
# Nothing here needs Docker: `cross` (Cross.toml) is for users who have it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> pi: %s\n' "$*"; }
started=$SECONDS

readonly TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
readonly GLIBC_FLOOR=2.31
# Versions this script was measured with; newer ones are fine too.
readonly ZIGLANG_VERSION=0.17.1
readonly ZIGBUILD_VERSION=0.24.0

sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi

step "system packages"
# qemu-user-static runs the ARM binaries; libc6-*-cross is the ARM glibc
# qemu loads them with; openssh-server is the deploy test's throwaway "Pi";
# binutils (objdump, readelf) checks the glibc floor; systemd gives
# systemd-analyze for the unit files; shellcheck lints the scripts.
packages=(qemu-user-static libc6-arm64-cross libc6-armhf-cross openssh-server openssh-client binutils systemd shellcheck)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "all present: ${packages[*]}"
fi

step "rust targets"
rustup target add "${TARGETS[@]}"

step "zig and cargo-zigbuild (PyPI: ziglang, cargo-zigbuild)"
# pip puts cargo-zigbuild in Python's scripts directory, which may not be on
# PATH (pyenv shims, --user installs).
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v zig >/dev/null 2>&1 && ! python3 -c 'import ziglang' >/dev/null 2>&1; then
    python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
fi
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    # The PyPI wheel is a prebuilt binary: seconds instead of a minute of
    # compiling; crates.io is the fallback.
    python3 -m pip install --quiet "cargo-zigbuild==$ZIGBUILD_VERSION" ||
        cargo install --quiet --locked cargo-zigbuild --version "$ZIGBUILD_VERSION"
fi
echo "zig $(python3 -m ziglang version 2>/dev/null || zig version), $(command -v cargo-zigbuild)"

step "release build for ${TARGETS[*]} (glibc $GLIBC_FLOOR)"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
zig_targets=()
for t in "${TARGETS[@]}"; do zig_targets+=(--target "$t.$GLIBC_FLOOR"); done
build_started=$SECONDS
cargo zigbuild --release --locked --bin dartsync "${zig_targets[@]}" --target-dir "$target_dir"
echo "built in $((SECONDS - build_started)) s"
for t in "${TARGETS[@]}"; do
    bin="$target_dir/$t/release/dartsync"
    glibc="$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
    printf '%-32s %9d bytes, needs %s\n' "$t" "$(wc -c <"$bin")" "${glibc:-no glibc}"
done

step "shellcheck deploy/*.sh .ci/pi.sh"
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck deploy/deploy.sh deploy/tracker-rss.sh .ci/pi.sh
else
    echo "shellcheck not installed: skipped"
fi

step "tests/pi.rs with the cross-built binaries"
# --workspace: the same feature set as .ci/run's `cargo test --workspace`,
# so the test binary it built is reused rather than rebuilt.
DARTSYNC_PI_BIN_DIR="$target_dir" DARTSYNC_PI_REQUIRE=1 cargo test --workspace --locked --test e2e pi::

step "done in $((SECONDS - started)) s"
