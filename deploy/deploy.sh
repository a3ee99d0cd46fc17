#!/usr/bin/env bash
# deploy/deploy.sh: build DartSync for a Raspberry Pi and install the tracker
# there as a systemd service, over ssh. Run it again to upgrade in place.
# `deploy/deploy.sh --help` explains the options.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
readonly SCRIPT_DIR REPO_DIR
readonly UNIT_FILE="$SCRIPT_DIR/dartsync-tracker.service"
# The oldest glibc we build against: Raspberry Pi OS bullseye ships 2.31.
readonly GLIBC_FLOOR="2.31"

usage() {
    cat <<'EOF'
Usage: deploy/deploy.sh USER@HOST [options]

Builds the dartsync binary for the Pi's CPU, copies it, the cluster key and
the systemd unit to USER@HOST over ssh, then enables and starts the
`dartsync-tracker` service and checks that it listens. Running it again
upgrades in place (the key on the Pi is kept).

Options:
  --arch armv7|aarch64|auto  CPU of the Pi (default auto: asks the Pi; a 32-bit
                             userland on a 64-bit kernel counts as armv7)
  --port N                   TCP port of the tracker (default 7373)
  --identity KEY             ssh private key to log in with
  --ssh-port N               ssh port of the Pi (default: ssh's own default)
  --key-file FILE            local cluster key (default
                             ~/.config/dartsync/cluster.key; created with
                             `dartsync init` if missing)
  --replace-key              overwrite a different key already on the Pi
                             (peers holding the old key are locked out)
  --binary PATH              install this prebuilt binary instead of building
  --builder auto|zigbuild|cross
                             how to build (default auto: cargo-zigbuild when
                             installed, else cross when `docker info` or
                             `podman info` works)
  --no-systemd               only install the files; create no user, start
                             nothing (for systems without systemd)
  --root DIR                 install under DIR on the Pi instead of / (a
                             staging root; needs --no-systemd)
  -h, --help                 this help

Files on the Pi (under --root if given):
  /usr/local/bin/dartsync                       the binary (0755)
  /etc/dartsync/cluster.key                     the cluster key (0600)
  /etc/dartsync/tracker.env                     DARTSYNC_LISTEN=0.0.0.0:PORT
  /etc/systemd/system/dartsync-tracker.service  the unit (runs as user dartsync)
  /var/lib/dartsync                             tracker state (0700)
  /usr/share/bash-completion/completions/dartsync  bash completion
  /usr/local/share/man/man1/dartsync.1          man page (`man dartsync`)

The completion and the man page are made by the new binary on the Pi; when
it cannot run there, by a native dartsync here ($DARTSYNC or on PATH), or
skipped.

Environment:
  DARTSYNC_SSH_OPTS      extra options for ssh and scp, e.g.
                         "-o UserKnownHostsFile=/tmp/kh -o BatchMode=yes"
  DARTSYNC_DEPLOY_ROOT   default for --root
  DARTSYNC_DEPLOY_BINARY default for --binary
  DARTSYNC               a native dartsync binary for `dartsync init` and
                         the completion and man page fallback (default:
                         dartsync on PATH, else `cargo run` for init)
  CARGO_TARGET_DIR       where builds go (default: target/ in the repository)

The login user must be root or have passwordless sudo (Raspberry Pi OS's
default user has), except with --root DIR and --no-systemd.

Examples:
  deploy/deploy.sh pi@raspberrypi.local
  deploy/deploy.sh pi@192.168.1.20 --arch armv7 --port 7400 --identity ~/.ssh/pi
EOF
}

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n==> [%d] %s\n' "$step_no" "$*"
}
info() { printf '    %s\n' "$*"; }
warn() { printf '    warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Quotes one word for a POSIX shell.
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# ---- arguments -------------------------------------------------------------

target_host=""
arch="auto"
port="7373"
identity=""
ssh_port=""
key_file="${DARTSYNC_KEY_FILE:-$HOME/.config/dartsync/cluster.key}"
replace_key=0
binary="${DARTSYNC_DEPLOY_BINARY:-}"
builder="auto"
use_systemd=1
root="${DARTSYNC_DEPLOY_ROOT:-}"

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --arch) need_value "$@"; arch="$2"; shift 2 ;;
        --port) need_value "$@"; port="$2"; shift 2 ;;
        --identity) need_value "$@"; identity="$2"; shift 2 ;;
        --ssh-port) need_value "$@"; ssh_port="$2"; shift 2 ;;
        --key-file) need_value "$@"; key_file="$2"; shift 2 ;;
        --replace-key) replace_key=1; shift ;;
        --binary) need_value "$@"; binary="$2"; shift 2 ;;
        --builder) need_value "$@"; builder="$2"; shift 2 ;;
        --no-systemd) use_systemd=0; shift ;;
        --root) need_value "$@"; root="$2"; shift 2 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z "$target_host" ]] || die "more than one USER@HOST given: $target_host and $1"
            target_host="$1"
            shift
            ;;
    esac
done

[[ -n "$target_host" ]] || {
    usage >&2
    die "missing USER@HOST"
}
[[ "$target_host" == *@* ]] || die "give the login as USER@HOST (got $target_host)"
case "$arch" in auto | armv7 | aarch64) ;; *) die "--arch must be armv7, aarch64 or auto (got $arch)" ;; esac
case "$builder" in auto | zigbuild | cross) ;; *) die "--builder must be auto, zigbuild or cross (got $builder)" ;; esac
if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((port < 1 || port > 65535)); then
    die "--port must be 1..65535 (got $port)"
fi
[[ -z "$ssh_port" || "$ssh_port" =~ ^[0-9]+$ ]] || die "--ssh-port must be a number (got $ssh_port)"
if [[ -n "$root" ]]; then
    [[ "$root" == /* ]] || die "--root must be an absolute path on the Pi (got $root)"
    ((use_systemd == 0)) || die "--root installs into a staging directory: pass --no-systemd too"
    root="${root%/}"
fi
[[ -z "$identity" || -r "$identity" ]] || die "cannot read the ssh key $identity"
[[ -z "$binary" || -f "$binary" ]] || die "no binary at $binary"
[[ -r "$UNIT_FILE" ]] || die "missing $UNIT_FILE (run this script from a DartSync checkout)"

# ---- ssh plumbing ----------------------------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/dartsync-deploy.XXXXXX")"
remote_tmp=""
ssh_opts=(-o ControlMaster=auto -o "ControlPath=$work/ssh-%C" -o ControlPersist=120 -o ConnectTimeout=15)
[[ -n "$identity" ]] && ssh_opts+=(-i "$identity" -o IdentitiesOnly=yes)
# Word splitting is the point: DARTSYNC_SSH_OPTS holds several options.
# shellcheck disable=SC2206
[[ -n "${DARTSYNC_SSH_OPTS:-}" ]] && ssh_opts+=(${DARTSYNC_SSH_OPTS})
ssh_cmd=(ssh "${ssh_opts[@]}")
scp_cmd=(scp -q "${ssh_opts[@]}")
if [[ -n "$ssh_port" ]]; then
    ssh_cmd+=(-p "$ssh_port")
    scp_cmd+=(-P "$ssh_port")
fi

cleanup() {
    local status=$?
    if [[ -n "$remote_tmp" ]]; then
        "${ssh_cmd[@]}" "$target_host" "rm -rf $(shq "$remote_tmp")" </dev/null >/dev/null 2>&1 || true
    fi
    # Ends the shared connection this script opened, if any.
    "${ssh_cmd[@]}" -O exit "$target_host" >/dev/null 2>&1 || true
    rm -rf "$work"
    if ((status != 0)); then
        printf '\ndeploy failed (exit %d); nothing after the failed step was changed.\n' "$status" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

# Runs the POSIX shell script on stdin on the Pi, optionally under sudo.
remote_sh() { "${ssh_cmd[@]}" "$target_host" "$1 sh -s"; }

# ---- 1. ask the Pi ---------------------------------------------------------

step "Checking $target_host"
probe="$(
    remote_sh "" <<'EOF'
echo "machine=$(uname -m)"
echo "bits=$(getconf LONG_BIT 2>/dev/null || echo unknown)"
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //')"
echo "uid=$(id -u)"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then echo systemd=1; else echo systemd=0; fi
if sudo -n true >/dev/null 2>&1; then echo sudo=1; else echo sudo=0; fi
EOF
)" || die "cannot log in to $target_host with ssh (check the address, --ssh-port and --identity)"
probe_get() { printf '%s\n' "$probe" | sed -n "s/^$1=//p" | head -n 1; }
remote_machine="$(probe_get machine)"
remote_bits="$(probe_get bits)"
remote_glibc="$(probe_get glibc)"
remote_uid="$(probe_get uid)"
info "machine: $remote_machine (${remote_bits}-bit userland), glibc: ${remote_glibc:-none}"

if [[ "$remote_uid" == 0 ]]; then
    sudo=""
elif [[ -n "$root" ]]; then
    sudo=""
elif [[ "$(probe_get sudo)" == 1 ]]; then
    sudo="sudo -n"
    info "using sudo on the Pi"
else
    die "${target_host%@*} is not root and cannot use sudo without a password on the Pi; log in as root or allow passwordless sudo"
fi
if ((use_systemd)) && [[ "$(probe_get systemd)" != 1 ]]; then
    die "systemd is not running on the Pi; pass --no-systemd to only install the files"
fi

# The Pi's CPU, as a userland: a 32-bit Raspberry Pi OS on a 64-bit kernel
# reports aarch64 but can only run armv7 binaries.
remote_arch=""
case "$remote_machine" in
    aarch64 | arm64) if [[ "$remote_bits" == 32 ]]; then remote_arch=armv7; else remote_arch=aarch64; fi ;;
    armv7l | armv8l) remote_arch=armv7 ;;
esac
if [[ "$arch" == auto ]]; then
    case "$remote_machine" in
        armv6l) die "the Pi reports armv6 (Pi 1 or Zero): DartSync supports armv7 and aarch64 only" ;;
    esac
    [[ -n "$remote_arch" ]] || die "the host reports $remote_machine, not a Raspberry Pi CPU; pass --arch to deploy anyway"
    arch="$remote_arch"
elif [[ "$arch" != "$remote_arch" ]]; then
    warn "deploying an $arch binary to a host that reports $remote_machine; it will not run there natively"
fi
case "$arch" in
    aarch64) triple="aarch64-unknown-linux-gnu" elf_machine=183 ;;
    armv7) triple="armv7-unknown-linux-gnueabihf" elf_machine=40 ;;
esac
info "target: $triple"

# ---- 2. the binary ---------------------------------------------------------

have_zigbuild() {
    command -v cargo-zigbuild >/dev/null 2>&1 || return 1
    command -v zig >/dev/null 2>&1 && return 0
    python3 -c 'import ziglang' >/dev/null 2>&1
}
container_engine_works() {
    { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; } ||
        { command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; }
}

if [[ -n "$binary" ]]; then
    step "Using the prebuilt binary $binary"
else
    if [[ "$builder" == auto ]]; then
        if have_zigbuild; then
            builder=zigbuild
        elif command -v cross >/dev/null 2>&1 && container_engine_works; then
            builder=cross
        else
            die "no cross builder found. Either install cargo-zigbuild:
    pip install ziglang && cargo install cargo-zigbuild --locked
or install cross and start Docker or Podman (\`docker info\` must work):
    cargo install cross --version 0.2.5 --locked
or build elsewhere and pass --binary PATH"
        fi
    fi
    target_dir="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
    case "$builder" in
        zigbuild)
            have_zigbuild || die "--builder zigbuild: install it with: pip install ziglang && cargo install cargo-zigbuild --locked"
            step "Building dartsync for $triple with cargo zigbuild (glibc $GLIBC_FLOOR)"
            if command -v rustup >/dev/null 2>&1; then
                rustup target add "$triple" >/dev/null
            fi
            (cd "$REPO_DIR" && cargo zigbuild --release --locked --bin dartsync --target "$triple.$GLIBC_FLOOR" \
                --target-dir "$target_dir")
            binary="$target_dir/$triple/release/dartsync"
            ;;
        cross)
            command -v cross >/dev/null 2>&1 || die "--builder cross: install it with: cargo install cross --version 0.2.5 --locked"
            container_engine_works || die "--builder cross needs a running Docker or Podman daemon (\`docker info\` failed)"
            step "Building dartsync for $triple with cross (see Cross.toml)"
            # A separate target dir: host-built build scripts do not run in
            # the image's older glibc.
            (cd "$REPO_DIR" && cross build --release --locked --bin dartsync --target "$triple" \
                --target-dir "$target_dir/cross")
            binary="$target_dir/cross/$triple/release/dartsync"
            ;;
    esac
    [[ -f "$binary" ]] || die "the build did not produce $binary"
fi

# The binary must be an ELF for the chosen CPU...
magic="$(od -An -c -N4 "$binary" | tr -d ' ')"
[[ "$magic" == '177ELF' ]] || die "$binary is not an ELF executable"
machine="$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')"
[[ "$machine" == "$elf_machine" ]] || die "$binary is not an $arch binary (ELF machine $machine, expected $elf_machine)"
# ...and need no newer glibc than the Pi has.
if command -v objdump >/dev/null 2>&1; then
    needed="$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1 || true)"
    if [[ -z "$needed" ]]; then
        info "binary needs no glibc symbols (static)"
    elif [[ -z "$remote_glibc" ]]; then
        die "the binary needs glibc $needed but the Pi has no glibc (musl?); build a static binary"
    elif [[ "$(printf '%s\n%s\n' "$needed" "$remote_glibc" | sort -V | tail -n 1)" != "$remote_glibc" ]]; then
        die "the binary needs glibc $needed but the Pi has $remote_glibc; build with cargo zigbuild (glibc $GLIBC_FLOOR)"
    else
        info "binary needs glibc $needed; the Pi has $remote_glibc"
    fi
else
    warn "objdump not found (Debian: binutils): not checking the binary's glibc needs"
fi
info "$(wc -c <"$binary" | tr -d ' ') bytes"

# ---- 3. the cluster key ----------------------------------------------------

step "Cluster key $key_file"
if [[ -f "$key_file" ]]; then
    info "using the existing key"
else
    if [[ -n "${DARTSYNC:-}" ]]; then
        init_cmd=("$DARTSYNC")
    elif command -v dartsync >/dev/null 2>&1; then
        init_cmd=(dartsync)
    else
        init_cmd=(cargo run --quiet --locked --manifest-path "$REPO_DIR/Cargo.toml" --bin dartsync --)
    fi
    info "no key yet: creating one with dartsync init"
    "${init_cmd[@]}" init --key-file "$key_file" | sed 's/^/    /'
fi
[[ -f "$key_file" ]] || die "no cluster key at $key_file"
# The same check as `dartsync`'s key loader: 64 hex digits, nothing else.
if ! grep -Eqx '[0-9a-fA-F]{64}' "$key_file" || [[ "$(wc -l <"$key_file")" -gt 1 ]]; then
    die "$key_file is not a cluster key (64 hex digits, as written by dartsync init)"
fi

# ---- 4. upload -------------------------------------------------------------

step "Uploading to $target_host"
remote_tmp="$(remote_sh "" <<<'umask 077; mktemp -d /tmp/dartsync-deploy.XXXXXX')" ||
    die "cannot create a temporary directory on the Pi"
cp "$binary" "$work/dartsync"
cp "$key_file" "$work/cluster.key"
cp "$UNIT_FILE" "$work/dartsync-tracker.service"
chmod 0755 "$work/dartsync"
chmod 0600 "$work/cluster.key"
upload=("$work/dartsync" "$work/cluster.key" "$work/dartsync-tracker.service")
# A fallback bash completion and man page, from a native dartsync here: the
# Pi makes its own with the new binary when that runs there.
native="${DARTSYNC:-}"
if [[ -z "$native" ]] && command -v dartsync >/dev/null 2>&1; then
    native=dartsync
fi
if [[ -n "$native" ]] && "$native" completions bash >"$work/dartsync.bash" 2>/dev/null &&
    "$native" man >"$work/dartsync.1" 2>/dev/null; then
    upload+=("$work/dartsync.bash" "$work/dartsync.1")
fi
"${scp_cmd[@]}" "${upload[@]}" "$target_host:$remote_tmp/" ||
    die "copying files to the Pi failed"
info "binary, key and unit copied to $remote_tmp"

# Refuse a binary the Pi cannot run before it replaces a working one.
if [[ "$arch" == "$remote_arch" ]]; then
    version="$(remote_sh "" <<<"$(shq "$remote_tmp/dartsync") --version")" ||
        die "the new binary does not run on the Pi (see the error above; is /tmp mounted noexec?); nothing was installed"
    info "runs on the Pi: $version"
else
    info "the Pi is not an $arch host: the binary was not tried there"
fi

# ---- 5. install ------------------------------------------------------------

step "Installing${root:+ under $root}"
{
    printf 'ROOT=%s TMP=%s PORT=%s SYSTEMD=%s REPLACE_KEY=%s\n' \
        "$(shq "$root")" "$(shq "$remote_tmp")" "$port" "$use_systemd" "$replace_key"
    cat <<'EOF'
set -eu
umask 022
bin_dir="$ROOT/usr/local/bin"
etc_dir="$ROOT/etc/dartsync"
unit_dir="$ROOT/etc/systemd/system"
state_dir="$ROOT/var/lib/dartsync"

changed=0
# Puts SRC at DEST with MODE: a copy next to it, then a rename, so a running
# tracker keeps its old file and a half-written file is never visible.
put() {
    src=$1 dest=$2 mode=$3 what=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        echo "    $what: unchanged ($dest)"
        return 0
    fi
    verb=installed
    [ -e "$dest" ] && verb=upgraded
    changed=1
    cp "$src" "$dest.new"
    chmod "$mode" "$dest.new"
    mv -f "$dest.new" "$dest"
    echo "    $what: $verb ($dest)"
}

# The key: never silently replaced, since peers holding the old one would be
# locked out. Checked before anything is touched.
key="$etc_dir/cluster.key"
if [ -f "$key" ] && ! cmp -s "$TMP/cluster.key" "$key" && [ "$REPLACE_KEY" != 1 ]; then
    echo "error: $key on the Pi holds a different cluster key; copy it to your peers" >&2
    echo "       (scp it back to your --key-file), or pass --replace-key to overwrite it" >&2
    exit 3
fi

if [ "$SYSTEMD" = 1 ] && ! id dartsync >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/dartsync --no-create-home \
        --shell /usr/sbin/nologin --comment "DartSync tracker" dartsync
    echo "    created the system user dartsync"
fi

mkdir -p "$bin_dir" "$unit_dir" "$etc_dir" "$state_dir"
# /etc/dartsync: root only, or readable by the service's group.
if [ "$SYSTEMD" = 1 ]; then
    chown root:dartsync "$etc_dir"
    chmod 0750 "$etc_dir"
else
    chmod 0700 "$etc_dir"
fi
put "$TMP/dartsync" "$bin_dir/dartsync" 0755 binary
put "$TMP/cluster.key" "$key" 0600 "cluster key"
put "$TMP/dartsync-tracker.service" "$unit_dir/dartsync-tracker.service" 0644 "systemd unit"
printf 'DARTSYNC_LISTEN=0.0.0.0:%s\n' "$PORT" >"$TMP/tracker.env"
if [ -f "$etc_dir/tracker.env" ]; then
    # Keep the user's other settings (DARTSYNC_ARGS=...), update the port.
    grep -v '^DARTSYNC_LISTEN=' "$etc_dir/tracker.env" >>"$TMP/tracker.env" || true
fi
put "$TMP/tracker.env" "$etc_dir/tracker.env" 0644 "settings"
chmod 0700 "$state_dir"

# Bash completion and man page: made by the new binary itself when it runs
# here (same version), else the copies made on the deploying machine. They
# never restart the tracker.
if "$TMP/dartsync" completions bash >"$TMP/gen.bash" 2>/dev/null && "$TMP/dartsync" man >"$TMP/gen.1" 2>/dev/null; then
    mv -f "$TMP/gen.bash" "$TMP/dartsync.bash"
    mv -f "$TMP/gen.1" "$TMP/dartsync.1"
fi
if [ -s "$TMP/dartsync.bash" ] && [ -s "$TMP/dartsync.1" ]; then
    completion_dir="$ROOT/usr/share/bash-completion/completions"
    man_dir="$ROOT/usr/local/share/man/man1"
    mkdir -p "$completion_dir" "$man_dir"
    was_changed=$changed
    put "$TMP/dartsync.bash" "$completion_dir/dartsync" 0644 "bash completion"
    put "$TMP/dartsync.1" "$man_dir/dartsync.1" 0644 "man page"
    changed=$was_changed
else
    echo "    bash completion and man page: skipped (the binary does not run here and no native dartsync made them)"
fi

if [ "$SYSTEMD" = 1 ]; then
    chown dartsync:dartsync "$key" "$state_dir"
    systemctl daemon-reload
    systemctl enable --quiet dartsync-tracker.service
    if [ "$changed" = 1 ]; then
        systemctl restart dartsync-tracker.service
        echo "    service dartsync-tracker enabled and restarted"
    else
        # Nothing changed: leave a running tracker (and its peers) alone.
        systemctl start dartsync-tracker.service
        echo "    service dartsync-tracker enabled; nothing changed, not restarted"
    fi
fi
EOF
} >"$work/install.sh"
remote_sh "$sudo" <"$work/install.sh" || die "installing on the Pi failed (see above)"

# ---- 6. check --------------------------------------------------------------

if ((use_systemd == 0)); then
    step "Done (no systemd: nothing started)"
    info "start the tracker on the Pi with:"
    info "  $root/usr/local/bin/dartsync --tracker --listen 0.0.0.0:$port --data $root/var/lib/dartsync --key-file $root/etc/dartsync/cluster.key"
    exit 0
fi

step "Checking that the tracker answers on port $port"
{
    printf 'PORT=%s\n' "$port"
    cat <<'EOF'
hex=$(printf ':%04X ' "$PORT")
i=0
while [ $i -lt 50 ]; do
    if systemctl is-active --quiet dartsync-tracker.service &&
        grep -qi "$hex[0-9A-F:]* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
        echo "    dartsync-tracker is active and listening on port $PORT"
        exit 0
    fi
    i=$((i + 1))
    sleep 0.2
done
echo "error: dartsync-tracker is not listening on port $PORT; its last log lines:" >&2
journalctl -u dartsync-tracker.service -n 20 --no-pager >&2 || true
exit 1
EOF
} | remote_sh "$sudo" || die "the tracker did not come up (see its log above)"

host="${target_host#*@}"
if command -v timeout >/dev/null 2>&1 && timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
    info "reachable from this machine at $host:$port"
else
    warn "$host:$port does not answer from this machine: check the Pi's firewall"
fi

step "Done"
info "peers: dartsync --peer ~/DartSync --tracker-addr $host:$port --key-file $key_file"
info "logs:  ssh $target_host journalctl -u dartsync-tracker -f"
info "state: ssh $target_host sudo -u dartsync dartsync status --tracker --data /var/lib/dartsync"
