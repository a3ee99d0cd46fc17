#!/usr/bin/env python3
"""DartSync against Syncthing and rsync on one machine, in a private network
namespace (nothing can leave loopback).

For every N in --n (one writer, N-1 receivers) it runs each system in turn,
never two at once, through the same workloads:

  big      one new random file (--big-mib, default 1024) renamed into the
           writer's folder; time until every receiver has it on disk
  small    --small (default 10,000) files of 1-16 KiB in 100 folders, renamed
           in as one folder; time until every receiver has every file
  edit     one byte changed in the middle of the big file (in place); time
           and bytes on the wire (loopback counters) for the whole exchange
  latency  --edits (default 50) in-place rewrites of a 1 KiB file, one after
           another; close() to every receiver having it: p50 and p99
  rename   a --rename-mib (default 200) file moved into a new subfolder
           (mkdir + rename), --rename-reps (default 3) times, each into a new
           folder; time and bytes on the wire of each move

plus the peak RSS (VmHWM) and CPU time of every receiver (and of DartSync's
tracker) per workload. rsync (daemon on 127.0.0.1, --no-whole-file) is a
baseline for big, small and edit: the writer pushes to each receiver in turn.

"Done" is judged on the receivers' disks: stat until every expected file has
the right size (and, for edits, a new inode/mtime), stop the clock, then
verify content hashes (not timed); a wrong hash means keep waiting.

Writes OUT/results.json (raw numbers) and OUT/results.md (tables and goals).
See bench/compare/README.md.

Usage: sudo python3 bench/compare/run.py [--n 2,4] [--systems dartsync,syncthing,rsync]
         [--workloads big,small,edit,latency,rename] [--big-mib 1024] [--small 10000]
         [--edits 50] [--rename-mib 200] [--rename-reps 3] [--out DIR] [--keep] [--no-build] [--binary PATH]
"""
import argparse
import ctypes
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
NETNS_MARK = "_DARTSYNC_COMPARE_IN_NETNS"
SYSTEMS = ["dartsync", "syncthing", "rsync"]
WORKLOADS = ["big", "small", "edit", "latency", "rename"]
RSYNC_WORKLOADS = ["big", "small", "edit"]
SMALL_DIRS = 100
LATENCY_BYTES = 1024
QUIET_S = 1.0  # loopback silent this long = the exchange is over
QUIET_DEADLINE_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
BIG = "big.bin"
RENAME_FROM = "rename-me.bin"
RENAME_TO = "moved/rename-me.bin"
LATENCY_FILE = "latency/note.txt"
ST_FOLDER = "bench"
ST_APIKEY = "dartsync-compare-benchmark-key"


class BenchError(Exception):
    """A workload failed (timed out, wrong content, a process died)."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes

_procs = []  # every child we started, stopped on exit


def _die_with_parent():
    # The children get SIGTERM if this harness dies without cleaning up.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Proc:
    """A long-running child: its own session (so Ctrl-C reaches only the
    harness, which then stops it), output to a log file, stopped by PID."""

    def __init__(self, name, args, logfile, env=None, cwd=None):
        self.name = name
        self.logfile = logfile
        self.out = open(logfile, "ab")
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
                                  env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.p.pid
        _procs.append(self)

    def alive(self):
        return self.p.poll() is None

    def check(self, context):
        if not self.alive():
            raise BenchError(f"{context}: {self.name} (pid {self.pid}) exited with code {self.p.returncode}; "
                             f"last lines of {self.logfile}:\n{tail(self.logfile)}")

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.logfile, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        if self in _procs:
            _procs.remove(self)


def stop_all():
    for p in reversed(list(_procs)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            print(f"warning: stopping {p.name} (pid {p.pid}): {e}", file=sys.stderr)


def tail(path, n=25):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    " + l for l in lines[-n:])
    except OSError as e:
        return f"    ({e})"


def proc_cpu_s(pid, children=False):
    """utime+stime of a process in seconds (and of its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def reset_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def lo_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                v = rest.split()
                return int(v[0]), int(v[8])
    raise BenchError("no lo in /proc/net/dev")


def wait_quiet(quiet=QUIET_S, deadline=QUIET_DEADLINE_S):
    """Waits until the loopback byte counters have not moved for `quiet`
    seconds; returns (seconds waited, whether it got quiet)."""
    t0 = time.monotonic()
    last = lo_bytes()
    last_change = t0
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        cur = lo_bytes()
        if cur != last:
            last, last_change = cur, now
        elif now - last_change >= quiet:
            return now - t0, True
        if now - t0 > deadline:
            return now - t0, False


# ---------------------------------------------------------------- data

def write_random(path, size, seed, flip_at=None):
    """Writes `size` seeded random bytes; returns sha1 of the content and,
    if flip_at is given, sha1 of the content with that byte inverted."""
    rnd = random.Random(seed)
    h, h2 = hashlib.sha1(), hashlib.sha1()
    pos = 0
    with open(path, "wb") as f:
        while pos < size:
            block = rnd.randbytes(min(size - pos, 8 * MiB))
            f.write(block)
            h.update(block)
            if flip_at is not None:
                if pos <= flip_at < pos + len(block):
                    b = bytearray(block)
                    b[flip_at - pos] ^= 0xFF
                    block = bytes(b)
                h2.update(block)
            pos += len(block)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest(), (h2.hexdigest() if flip_at is not None else None)


def file_sha1(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def make_small_tree(root, count, seed):
    """count files of 1-16 KiB in SMALL_DIRS folders; returns {rel: (size, sha1)}
    relative to root."""
    rnd = random.Random(seed)
    expected = {}
    for i in range(count):
        d = f"d{i % SMALL_DIRS:02d}"
        os.makedirs(os.path.join(root, d), exist_ok=True)
        body = rnd.randbytes(rnd.randint(1024, 16384))
        rel = f"{d}/f{i:05d}.dat"
        with open(os.path.join(root, rel), "wb") as f:
            f.write(body)
        expected[rel] = (len(body), hashlib.sha1(body).hexdigest())
    return expected


def sync_fs(path):
    """syncfs() on the file system holding path (sync() only flushes more:
    the whole machine's dirty data, a shared machine's builds included)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def copy_tree_or_file(src, dst):
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
        shutil.copystat(src, dst)


def sig(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def stat_sig(path):
    try:
        return sig(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


# ---------------------------------------------------------------- on-disk judgement

def describe_missing(folder, rel, size):
    path = os.path.join(folder, rel)
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return f"{rel}: absent"
    except OSError as e:
        return f"{rel}: {e}"
    if st.st_size != size:
        return f"{rel}: {st.st_size} of {size} bytes"
    return f"{rel}: old version (same inode/mtime as before the change)"


def wait_on_disk(ctx, receivers, expected, timeout, interval, baseline=None, gone=(), procs=()):
    """Polls every receiver folder until each expected file exists with the
    expected size (and, when baseline {receiver: {rel: sig}} is given, a
    signature different from it) and every path in `gone` is absent; then
    (clock stopped) verifies sha1s, and keeps waiting for files whose hash is
    wrong. Returns {receiver name: monotonic time its last file appeared}."""
    deadline = time.monotonic() + timeout
    by_dir = {}
    for rel, (size, _) in expected.items():
        d, name = os.path.split(rel)
        by_dir.setdefault(d, {})[name] = (rel, size)
    not_before = {r: dict((baseline or {}).get(r, {})) for r, _ in receivers}
    pending = {r: {d: dict(names) for d, names in by_dir.items()} for r, _ in receivers}
    gone_left = {r: set(gone) for r, _ in receivers}
    done_at = {}
    seen = {r: {} for r, _ in receivers}  # rel -> sig seen with the right size
    while True:
        while len(done_at) < len(receivers):
            for r, folder in receivers:
                if r in done_at:
                    continue
                for d in list(pending[r]):
                    names = pending[r][d]
                    try:
                        with os.scandir(os.path.join(folder, d)) as it:
                            for e in it:
                                item = names.get(e.name)
                                if item is None:
                                    continue
                                rel, size = item
                                try:
                                    s = sig(e.stat(follow_symlinks=False))
                                except OSError:
                                    continue
                                if s[1] == size and s != not_before[r].get(rel):
                                    seen[r][rel] = s
                                    del names[e.name]
                    except (FileNotFoundError, NotADirectoryError):
                        pass
                    if not names:
                        del pending[r][d]
                for g in list(gone_left[r]):
                    if not os.path.lexists(os.path.join(folder, g)):
                        gone_left[r].discard(g)
                if not pending[r] and not gone_left[r]:
                    done_at[r] = time.monotonic()
            for p in procs:
                p.check(ctx)
            if len(done_at) == len(receivers):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{ctx}: timed out after {timeout:.0f} s; " + missing_report(
                    receivers, done_at, pending, gone_left, expected))
            time.sleep(interval)
        # Clock stopped: verify content.
        bad = 0
        for r, folder in receivers:
            for rel, s in list(seen[r].items()):
                path = os.path.join(folder, rel)
                try:
                    ok = file_sha1(path) == expected[rel][1]
                except OSError:
                    ok = False
                del seen[r][rel]  # verified (or back to pending)
                if ok:
                    continue
                bad += 1
                not_before[r][rel] = s
                d, name = os.path.split(rel)
                pending[r].setdefault(d, {})[name] = (rel, expected[rel][0])
                done_at.pop(r, None)
        if not bad:
            return done_at
        log(f"{ctx}: {bad} file(s) had the right size but wrong content; waiting on")


def missing_report(receivers, done_at, pending, gone_left, expected):
    parts = []
    for r, folder in receivers:
        if r in done_at:
            continue
        missing = [(d, name, rel, size) for d, names in pending[r].items() for name, (rel, size) in names.items()]
        bits = []
        if missing:
            examples = "; ".join(describe_missing(folder, rel, size) for _, _, rel, size in missing[:3])
            bits.append(f"missing {len(missing)} of {len(expected)} files (e.g. {examples})")
        if gone_left[r]:
            bits.append("still has " + ", ".join(sorted(gone_left[r])))
        parts.append(f"receiver {r} ({folder}) " + " and ".join(bits))
    return "; ".join(parts)


# ---------------------------------------------------------------- systems

class System:
    """One system's cluster for one N: writer folder, receivers, processes."""
    name = "?"

    def __init__(self, args, n, base, ports):
        self.args, self.n, self.base, self.ports = args, n, base, ports
        self.stage = os.path.join(base, "stage")
        os.makedirs(self.stage)
        self.writer_dir = None
        self.receiver_dirs = []  # [(name, folder)]
        self.writer_proc = None
        self.receiver_procs = []
        self.tracker = None
        self.daemon = None

    def all_procs(self):
        return [p for p in [self.tracker, self.writer_proc, *self.receiver_procs] if p is not None]

    def start(self):
        raise NotImplementedError

    def wait_idle(self, ctx):
        pass

    def push(self, ctx):
        """rsync: copy the writer folder to every receiver; others: nothing."""
        return None

    def app_counters(self):
        return None

    def app_bytes(self, before, offsets):
        return None

    def stop(self):
        for p in reversed(self.all_procs()):
            p.stop()


class DartSync(System):
    name = "dartsync"

    def start(self):
        b = self.args.binary
        key = os.path.join(self.base, "cluster.key")
        subprocess.run([b, "init", "--key-file", key], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        env = dict(os.environ, RUST_LOG="info,dartsync_peer::sync::engine=debug", NO_COLOR="1")
        logs = os.path.join(self.base, "logs")
        os.makedirs(logs)
        self.tracker = Proc("dartsync tracker", [b, "--tracker", "--listen", "127.0.0.1:0", "--key-file", key,
                                                 "--data", os.path.join(self.base, "tracker"), "--http", "off"],
                            os.path.join(logs, "tracker.log"), env=env)
        addr = None
        deadline = time.monotonic() + 60
        while addr is None:
            self.tracker.check("dartsync start")
            m = re.search(r"tracker listening on (\S+)", self.tracker.log_since(0))
            if m:
                addr = m.group(1)
            elif time.monotonic() > deadline:
                raise BenchError(f"dartsync start: the tracker did not log 'tracker listening on' within 60 s:\n"
                                 f"{tail(self.tracker.logfile)}")
            else:
                time.sleep(0.05)
        peers = []
        for i in range(self.n):
            name = "writer" if i == 0 else f"recv{i}"
            folder = os.path.join(self.base, name)
            os.makedirs(folder)
            p = Proc(f"dartsync peer {name}",
                     [b, "--peer", folder, "--name", name, "--tracker-addr", addr, "--listen", "127.0.0.1:0",
                      "--key-file", key, "--http", "off"],
                     os.path.join(logs, f"{name}.log"), env=env)
            peers.append((name, folder, p))
        deadline = time.monotonic() + 60
        for name, folder, p in peers:
            while "registered with tracker" not in p.log_since(0):
                p.check("dartsync start")
                if time.monotonic() > deadline:
                    raise BenchError(f"dartsync start: peer {name} did not log 'registered with tracker' "
                                     f"within 60 s:\n{tail(p.logfile)}")
                time.sleep(0.05)
        self.writer_dir, self.writer_proc = peers[0][1], peers[0][2]
        self.receiver_dirs = [(name, folder) for name, folder, _ in peers[1:]]
        self.receiver_procs = [p for _, _, p in peers[1:]]
        self.wait_idle("dartsync start")

    def wait_idle(self, ctx):
        for (name, folder), p in [(("writer", self.writer_dir), self.writer_proc),
                                  *zip(self.receiver_dirs, self.receiver_procs)]:
            r = subprocess.run([self.args.binary, "status", folder, "--wait", "300"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=330)
            p.check(ctx)
            if r.returncode != 0:
                raise BenchError(f"{ctx}: dartsync peer {name} not up to date after 300 s "
                                 f"(`dartsync status` exit {r.returncode}):\n{r.stdout}")

    def app_counters(self):
        return {p.name: p.log_size() for p in self.receiver_procs}

    def app_bytes(self, before, _after=None):
        """Bytes the receivers fetched from peers (DEBUG line of
        peer/src/sync/engine.rs: `transfer of PATH done: local=N fetched=N
        resumed=N from [...]`)."""
        total, files = 0, 0
        for p in self.receiver_procs:
            for m in re.finditer(r"transfer of .* done: local=(\d+) fetched=(\d+) resumed=(\d+)",
                                 p.log_since(before[p.name])):
                total += int(m.group(2))
                files += 1
        return {"fetched_bytes": total, "transfers_logged": files}


class Syncthing(System):
    name = "syncthing"

    def start(self):
        homes, ids = [], []
        env = dict(os.environ, STMONITORED="1", STNOUPGRADE="1", STNODEFAULTFOLDER="1", STNORESTART="1",
                   HOME=self.base)
        for i in range(self.n):
            h = os.path.join(self.base, f"home{i}")
            r = subprocess.run(["syncthing", "generate", "--home", h, "--no-default-folder", "--skip-port-probing"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=60)
            m = re.search(r"Device ID: (\S+)", r.stdout)
            if r.returncode != 0 or not m:
                raise BenchError(f"syncthing generate failed:\n{r.stdout}")
            homes.append(h)
            ids.append(m.group(1))
        self.ids = ids
        self.gui = [self.ports + 100 + i for i in range(self.n)]
        listen = [self.ports + i for i in range(self.n)]
        folders = []
        for i in range(self.n):
            name = "writer" if i == 0 else f"recv{i}"
            folder = os.path.join(self.base, name)
            os.makedirs(os.path.join(folder, ".stfolder"))
            folders.append((name, folder))
            self._configure(os.path.join(homes[i], "config.xml"), i, ids, listen, folder)
        procs = []
        for i, h in enumerate(homes):
            procs.append(Proc(f"syncthing {folders[i][0]}",
                              ["syncthing", "serve", "--home", h, "--no-browser", "--no-restart", "--no-upgrade"],
                              os.path.join(h, "syncthing.log"), env=env))
        self.procs_by_index = procs
        self.writer_dir, self.writer_proc = folders[0][1], procs[0]
        self.receiver_dirs, self.receiver_procs = folders[1:], procs[1:]
        deadline = time.monotonic() + 60
        for i, p in enumerate(procs):
            while True:
                p.check("syncthing start")
                try:
                    if self.rest(i, "/rest/system/ping").get("ping") == "pong":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"syncthing start: {p.name} REST not answering within 60 s:\n{tail(p.logfile)}")
                time.sleep(0.2)
        self.wait_idle("syncthing start")

    def _configure(self, path, me, ids, listen, folder):
        tree = ET.parse(path)
        root = tree.getroot()
        defaults = root.find("defaults")
        dev_tpl = defaults.find("device")
        fold_tpl = defaults.find("folder")
        for d in root.findall("device"):
            root.remove(d)
        for f in root.findall("folder"):
            root.remove(f)
        fold = ET.fromstring(ET.tostring(fold_tpl))
        fold.attrib.update({"id": ST_FOLDER, "label": ST_FOLDER, "path": folder, "type": "sendreceive",
                            "rescanIntervalS": "3600", "fsWatcherEnabled": "true", "fsWatcherDelayS": "1",
                            "ignorePerms": "false", "autoNormalize": "true"})
        for d in fold.findall("device"):
            fold.remove(d)
        for j, did in enumerate(ids):
            e = ET.Element("device", {"id": did, "introducedBy": ""})
            ET.SubElement(e, "encryptionPassword").text = ""
            fold.insert(1 + j, e)
        mdf = fold.find("minDiskFree")
        mdf.attrib["unit"] = "MB"
        mdf.text = "1024"
        root.insert(0, fold)
        for j, did in enumerate(ids):
            d = ET.fromstring(ET.tostring(dev_tpl))
            d.attrib.update({"id": did, "name": "writer" if j == 0 else f"recv{j}", "compression": "metadata"})
            d.find("address").text = f"tcp://127.0.0.1:{listen[j]}"
            root.insert(1 + j, d)
        gui = root.find("gui")
        gui.attrib["tls"] = "false"
        gui.find("address").text = f"127.0.0.1:{self.gui[me]}"
        gui.find("apikey").text = ST_APIKEY
        opts = root.find("options")
        settings = {
            "listenAddress": f"tcp://127.0.0.1:{listen[me]}",
            "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false", "relaysEnabled": "false",
            "natEnabled": "false", "startBrowser": "false", "announceLANAddresses": "false",
            "crashReportingEnabled": "false", "urAccepted": "-1", "autoUpgradeIntervalH": "0",
            "stunKeepaliveStartS": "0", "stunKeepaliveMinS": "0", "setLowPriority": "false",
            "reconnectionIntervalS": "5",
        }
        for k, v in settings.items():
            e = opts.find(k)
            if e is None:
                e = ET.SubElement(opts, k)
            e.text = v
        mhdf = opts.find("minHomeDiskFree")
        mhdf.attrib["unit"] = "MB"
        mhdf.text = "1024"
        tree.write(path)

    _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy

    def rest(self, i, path, timeout=10):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui[i]}{path}", headers={"X-API-Key": ST_APIKEY})
        with self._opener.open(req, timeout=timeout) as r:
            return json.loads(r.read())

    def wait_idle(self, ctx):
        """All devices connected to each other, every folder idle with
        nothing needed."""
        deadline = time.monotonic() + 300
        while True:
            problems = []
            for i, p in enumerate(self.procs_by_index):
                p.check(ctx)
                try:
                    conns = self.rest(i, "/rest/system/connections")["connections"]
                    down = [did[:7] for did in self.ids if did != self.ids[i]
                            and not conns.get(did, {}).get("connected")]
                    if down:
                        problems.append(f"{p.name} not connected to {', '.join(down)}")
                    st = self.rest(i, f"/rest/db/status?folder={ST_FOLDER}")
                    if st.get("state") != "idle" or st.get("needTotalItems", 0) != 0:
                        problems.append(f"{p.name} folder state {st.get('state')}, needs {st.get('needTotalItems')}")
                except OSError as e:
                    problems.append(f"{p.name} REST: {e}")
            if not problems:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{ctx}: syncthing not idle after 300 s: " + "; ".join(problems))
            time.sleep(0.25)

    def app_counters(self):
        out = {}
        for i, p in enumerate(self.procs_by_index):
            t = self.rest(i, "/rest/system/connections")["total"]
            out[p.name] = (t["inBytesTotal"], t["outBytesTotal"])
        return out

    def app_bytes(self, before, after):
        return {"protocol_out_bytes": sum(after[k][1] - before[k][1] for k in after),
                "note": "sum over all devices of /rest/system/connections total.outBytesTotal (before TLS)"}


class Rsync(System):
    name = "rsync"

    def start(self):
        self.port = self.ports
        self.writer_dir = os.path.join(self.base, "writer")
        os.makedirs(self.writer_dir)
        conf = os.path.join(self.base, "rsyncd.conf")
        lines = ["address = 127.0.0.1", f"port = {self.port}", "use chroot = no", "uid = root", "gid = root",
                 "numeric ids = yes", "hosts allow = 127.0.0.1", f"log file = {os.path.join(self.base, 'rsyncd.log')}",
                 f"pid file = {os.path.join(self.base, 'rsyncd.pid')}", ""]
        for i in range(1, self.n):
            name = f"recv{i}"
            folder = os.path.join(self.base, name)
            os.makedirs(folder)
            self.receiver_dirs.append((name, folder))
            lines += [f"[{name}]", f"path = {folder}", "read only = no", ""]
        with open(conf, "w") as f:
            f.write("\n".join(lines))
        self.daemon = Proc("rsync daemon", ["rsync", "--daemon", "--no-detach", "--config", conf],
                           os.path.join(self.base, "rsyncd.out"))
        deadline = time.monotonic() + 30
        while True:
            self.daemon.check("rsync start")
            r = subprocess.run(["rsync", f"rsync://127.0.0.1:{self.port}/"], capture_output=True, text=True,
                               timeout=30)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"rsync start: daemon not answering on 127.0.0.1:{self.port}: {r.stderr}")
            time.sleep(0.2)
        self.pushes = []

    def all_procs(self):
        return [self.daemon] if self.daemon is not None else []

    def push(self, ctx):
        stats = []
        for name, _ in self.receiver_dirs:
            r = subprocess.run(["rsync", "-a", "--no-whole-file", "--stats", self.writer_dir + "/",
                                f"rsync://127.0.0.1:{self.port}/{name}/"], capture_output=True, text=True,
                               timeout=3600)
            if r.returncode != 0:
                raise BenchError(f"{ctx}: rsync push to {name} failed ({r.returncode}): {r.stderr}")

            def num(label):
                m = re.search(label + r": ([\d,.]+)", r.stdout)
                return int(m.group(1).replace(",", "").replace(".", "")) if m else None
            stats.append({"receiver": name, "sent": num("Total bytes sent"), "received": num("Total bytes received"),
                          "literal": num("Literal data"), "matched": num("Matched data")})
        return stats

    def app_bytes(self, before, after):
        return None


# ---------------------------------------------------------------- workloads

def machine_busy_s():
    """CPU seconds the whole machine spent busy (all processes, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: user + nice + system
    # (interrupt time, loopback's softirq work included, belongs to nobody)
    return (v[0] + v[1] + v[2]) / CLK_TCK


def harness_cpu_s():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def snapshot(sysm):
    """Counters at the start of a measurement."""
    procs = sysm.all_procs()
    for p in procs:
        reset_hwm(p.pid)
    rx, tx = lo_bytes()
    snap = {"lo": (rx, tx), "cpu": {}, "busy": machine_busy_s(), "harness": harness_cpu_s(),
            "wall": time.monotonic()}
    if isinstance(sysm, Rsync):
        snap["cpu"]["receivers"] = proc_cpu_s(sysm.daemon.pid, children=True)
    else:
        for p in procs:
            snap["cpu"][p.name] = proc_cpu_s(p.pid)
    return snap


def measure(sysm, snap, res):
    """Counters at the end (after loopback went quiet): bytes, CPU, peak RSS,
    and how busy the machine was with other work meanwhile."""
    rx, tx = lo_bytes()
    res["lo_rx_bytes"] = rx - snap["lo"][0]
    res["lo_tx_bytes"] = tx - snap["lo"][1]
    if isinstance(sysm, Rsync):
        c = proc_cpu_s(sysm.daemon.pid, children=True)
        res["receiver_cpu_s_total"] = round(c - snap["cpu"]["receivers"], 3)
        res["receiver_cpu_s_mean"] = round(res["receiver_cpu_s_total"] / len(sysm.receiver_dirs), 3)
        res["cpu_note"] = "rsync daemon and its reaped children (all receivers together)"
        own = res["receiver_cpu_s_total"]  # the pushing clients are the harness's children
    else:
        cpu = {p.name: round(proc_cpu_s(p.pid) - snap["cpu"][p.name], 3) for p in sysm.all_procs()}
        rss = {p.name: hwm_kib(p.pid) for p in sysm.all_procs()}
        res["cpu_s"] = cpu
        res["peak_rss_kib"] = rss
        rc = [cpu[p.name] for p in sysm.receiver_procs]
        res["receiver_cpu_s_total"] = round(sum(rc), 3)
        res["receiver_cpu_s_mean"] = round(sum(rc) / len(rc), 3)
        res["receiver_peak_rss_kib_max"] = max(rss[p.name] or 0 for p in sysm.receiver_procs)
        res["writer_peak_rss_kib"] = rss[sysm.writer_proc.name]
        if sysm.tracker is not None:
            res["tracker_peak_rss_kib"] = rss[sysm.tracker.name]
        own = sum(cpu.values())
    # Other people's work on a shared machine: the whole machine's busy CPU
    # time minus the system under test and this harness, as a share of all
    # cores over the measurement.
    wall = time.monotonic() - snap["wall"]
    busy = machine_busy_s() - snap["busy"]
    harness = harness_cpu_s() - snap["harness"]
    others = max(0.0, busy - own - harness)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    res["machine"] = {"wall_s": round(wall, 2), "busy_cpu_s": round(busy, 2), "system_cpu_s": round(own, 2),
                      "harness_cpu_s": round(harness, 2), "others_cpu_s": round(others, 2),
                      "others_share_pct": round(100 * others / (wall * (os.cpu_count() or 1)), 1),
                      "loadavg_1_5_15": load}


def timed_exchange(sysm, ctx, change, expected, timeout, interval, baseline=None, gone=()):
    """Waits idle and quiet, snapshots counters, runs change() (returns t0),
    waits for every receiver on disk, lets loopback settle, measures."""
    sysm.wait_idle(ctx)
    app_before = sysm.app_counters()  # Syncthing: a REST call, so before the quiet wait
    wait_quiet()
    snap = snapshot(sysm)
    t0, pushes = change()
    done = wait_on_disk(ctx, sysm.receiver_dirs, expected, timeout, interval, baseline, gone, sysm.all_procs())
    per = {r: round(t - t0, 4) for r, t in done.items()}
    settle, quiet = wait_quiet()
    res = {"time_s": max(per.values()), "per_receiver_s": per, "settle_s": round(settle, 2)}
    if not quiet:
        res["note"] = f"loopback still busy {QUIET_DEADLINE_S:.0f} s after the last receiver finished"
    measure(sysm, snap, res)
    if pushes is not None:
        res["rsync_pushes"] = pushes
        res["rsync_wire_bytes"] = sum((p["sent"] or 0) + (p["received"] or 0) for p in pushes)
    if app_before is not None:
        res["app"] = sysm.app_bytes(app_before, sysm.app_counters())
    return res


def stage_and_rename(sysm, src, rel):
    """Copies src into the staging folder (same file system), syncfs(), then
    renames it to writer/rel; returns the time of the rename (t0)."""
    staged = os.path.join(sysm.stage, os.path.basename(rel) + ".staged")
    if os.path.lexists(staged):
        shutil.rmtree(staged) if os.path.isdir(staged) else os.unlink(staged)
    copy_tree_or_file(src, staged)
    sync_fs(sysm.stage)
    dst = os.path.join(sysm.writer_dir, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)

    def change():
        os.rename(staged, dst)
        t0 = time.monotonic()
        return t0, sysm.push("push")
    return change


def run_big(sysm, data, ctx):
    change = stage_and_rename(sysm, data["big_path"], BIG)
    expected = {BIG: (data["big_size"], data["big_sha1"])}
    return timed_exchange(sysm, ctx, change, expected, 120 + 0.6 * data["big_size"] / MiB, 0.02)


def run_edit(sysm, data, ctx):
    path = os.path.join(sysm.writer_dir, BIG)
    baseline = {r: {BIG: stat_sig(os.path.join(f, BIG))} for r, f in sysm.receiver_dirs}
    # rsync's quick check compares mtimes in whole seconds.
    while time.time() < os.stat(path).st_mtime + 1.2:
        time.sleep(0.1)

    def change():
        with open(path, "r+b") as f:
            f.seek(data["edit_at"])
            b = f.read(1)
            f.seek(data["edit_at"])
            f.write(bytes([b[0] ^ 0xFF]))
        t0 = time.monotonic()
        return t0, sysm.push("push")
    expected = {BIG: (data["big_size"], data["edit_sha1"])}
    res = timed_exchange(sysm, ctx, change, expected, 120 + 0.3 * data["big_size"] / MiB, 0.02, baseline)
    res["file_bytes"] = data["big_size"]
    return res


def run_small(sysm, data, ctx):
    change = stage_and_rename(sysm, data["small_path"], "small")
    expected = {"small/" + rel: v for rel, v in data["small_expected"].items()}
    res = timed_exchange(sysm, ctx, change, expected, 120 + 0.06 * len(expected), 0.05)
    res["files"] = len(expected)
    res["receiver_cpu_us_per_file"] = round(1e6 * res["receiver_cpu_s_mean"] / len(expected), 1)
    return res


def run_rename(sysm, data, ctx):
    # Setup (timed, but not a goal): the file reaches every receiver first.
    change = stage_and_rename(sysm, data["ren_path"], RENAME_FROM)
    expected = {RENAME_FROM: (data["ren_size"], data["ren_sha1"])}
    setup = timed_exchange(sysm, ctx + " (setup: first copy)", change, expected,
                           120 + 0.6 * data["ren_size"] / MiB, 0.02)
    reps = []
    src = RENAME_FROM
    for k in range(1, data["rename_reps"] + 1):
        dst = f"moved{k}/{RENAME_FROM}"

        def move(src=src, dst=dst):
            os.mkdir(os.path.join(sysm.writer_dir, os.path.dirname(dst)))
            os.rename(os.path.join(sysm.writer_dir, src), os.path.join(sysm.writer_dir, dst))
            return time.monotonic(), None
        expected = {dst: (data["ren_size"], data["ren_sha1"])}
        r = timed_exchange(sysm, f"{ctx} (move {k}: {src} -> {dst})", move, expected,
                           120 + 0.3 * data["ren_size"] / MiB, 0.02, gone=[src])
        r["move"] = f"{src} -> {dst}"
        r["lo_bytes_pct_of_file"] = round(100 * r["lo_rx_bytes"] / data["ren_size"], 4)
        reps.append(r)
        src = dst
    med = lambda k: statistics.median(r[k] for r in reps)
    top = lambda k: max(r[k] or 0 for r in reps)
    res = {"file_bytes": data["ren_size"], "setup_first_copy_s": setup["time_s"], "reps": reps,
           "time_s": med("time_s"), "time_s_max": top("time_s"),
           "lo_rx_bytes": med("lo_rx_bytes"), "lo_rx_bytes_max": top("lo_rx_bytes"),
           "lo_bytes_pct_of_file": med("lo_bytes_pct_of_file"),
           "lo_bytes_pct_of_file_max": top("lo_bytes_pct_of_file"),
           "receiver_cpu_s_mean": med("receiver_cpu_s_mean")}
    for k in ("receiver_peak_rss_kib_max", "writer_peak_rss_kib", "tracker_peak_rss_kib"):
        if k in reps[0]:
            res[k] = top(k)
    res["machine"] = {"others_share_pct": max(r["machine"]["others_share_pct"] for r in reps)}
    return res


def run_latency(sysm, data, ctx):
    rnd = random.Random(5)
    path = os.path.join(sysm.writer_dir, LATENCY_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    targets = [(r, os.path.join(f, LATENCY_FILE)) for r, f in sysm.receiver_dirs]

    def body(n):
        head = f"edit {n:05d}\n".encode()
        return head + rnd.randbytes(LATENCY_BYTES - len(head))

    def write(content):
        with open(path, "wb") as f:  # in place: open (truncate), write, close
            f.write(content)

    # Setup: the file exists everywhere.
    content = body(0)
    write(content)
    wait_on_disk(ctx + " (setup)", sysm.receiver_dirs,
                 {LATENCY_FILE: (len(content), hashlib.sha1(content).hexdigest())}, 120, 0.02,
                 procs=sysm.all_procs())
    sysm.wait_idle(ctx)
    wait_quiet()
    snap = snapshot(sysm)
    samples = []
    procs = sysm.all_procs()
    for n in range(1, data["edits"] + 1):
        content = body(n)
        last = {r: stat_sig(p) for r, p in targets}
        write(content)
        t0 = time.monotonic()
        pending = dict(targets)
        done = {}
        deadline = t0 + 30
        while pending:
            for r, p in list(pending.items()):
                s = stat_sig(p)
                if s is None or s == last[r]:
                    continue
                last[r] = s
                now = time.monotonic()
                try:
                    with open(p, "rb") as f:
                        ok = f.read() == content
                except OSError:
                    ok = False
                if ok:
                    done[r] = now - t0
                    del pending[r]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{ctx}: edit {n} of {data['edits']} not on receiver(s) "
                                 f"{', '.join(pending)} after 30 s (file {LATENCY_FILE})")
            for p in procs:
                p.check(ctx)
            time.sleep(0.001)
        samples.append(max(done.values()))
        time.sleep(0.3)  # let acknowledgements finish before the next edit
    wait_quiet()
    res = {"edits": len(samples), "samples_ms": [round(1000 * s, 1) for s in samples]}
    ordered = sorted(samples)
    res["p50_ms"] = round(1000 * statistics.median(ordered), 1)
    res["p99_ms"] = round(1000 * ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 1)
    res["max_ms"] = round(1000 * ordered[-1], 1)
    measure(sysm, snap, res)
    return res


RUNNERS = {"big": run_big, "edit": run_edit, "small": run_small, "latency": run_latency, "rename": run_rename}


def run_system(args, cls, n, work, data, port_base):
    base = os.path.join(work, f"{cls.name}-n{n}")
    os.makedirs(base)
    sysm = cls(args, n, base, port_base)
    out = {}
    order = [w for w in ["big", "edit", "small", "latency", "rename"] if w in args.workloads]
    if cls is Rsync:
        order = [w for w in order if w in RSYNC_WORKLOADS]
    if not order:
        return out
    try:
        log(f"N={n} {cls.name}: starting")
        sysm.start()
        for w in order:
            ctx = f"{cls.name} N={n} {w}"
            if w == "edit" and "big" not in order:
                log(f"{ctx}: setup: the big file first")
                run_big(sysm, data, ctx + " (setup: big file)")
            log(f"{ctx}: running")
            out[w] = RUNNERS[w](sysm, data, ctx)
            log(f"{ctx}: {summary(w, out[w])}")
    except BenchError as e:
        out["error"] = str(e)
        log(f"ERROR {e}")
        for p in sysm.all_procs():
            print(f"--- last lines of {p.logfile}:\n{tail(p.logfile, 15)}", flush=True)
    finally:
        sysm.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return out


def summary(w, r):
    if w == "latency":
        return f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    s = f"{r['time_s']:.2f} s, lo {r['lo_rx_bytes']:,} bytes"
    if "receiver_cpu_s_mean" in r:
        s += f", receiver CPU {r['receiver_cpu_s_mean']:.2f} s"
    return s


# ---------------------------------------------------------------- report

def fmt_bytes(b):
    if b is None:
        return "n/a"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b} B"


def get(results, n, system, *path):
    v = results["runs"].get(str(n), {}).get(system)
    for p in path:
        if not isinstance(v, dict) or p not in v:
            return None
        v = v[p]
    return v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def render_md(results):
    s = results["settings"]
    m = results["machine"]
    out = ["# DartSync vs Syncthing vs rsync", "",
           f"Run {results['date']} at commit `{results['git_commit']}` on {m['nproc']} cores "
           f"({m['cpu']}), kernel {m['kernel']}, data on {m['tmp_fs']} ({results['workdir_parent']}).",
           f"dartsync `{m['dartsync_version']}`, syncthing `{m['syncthing_version']}`, rsync `{m['rsync_version']}`.",
           "",
           f"Workloads: big = {s['big_mib']} MiB file, small = {s['small']} files of 1-16 KiB in {SMALL_DIRS} folders, "
           f"edit = 1 byte in the middle of the big file, latency = {s['edits']} in-place rewrites of a "
           f"{LATENCY_BYTES}-byte file, rename = a {s['rename_mib']} MiB file moved into a new folder (mkdir + rename), "
           f"{s['rename_reps']} times in a row, each measured. "
           "Times are until the last receiver has the content on disk (judged by stat, verified by hash). "
           "Wire = bytes counted on `lo` in the benchmark's own network namespace, from just before the change "
           f"until loopback was quiet for {QUIET_S:.0f} s after the last receiver. Syncthing runs with "
           "fsWatcherDelayS=1 (its fastest setting; the default is 10 s). "
           "rsync: the writer pushes to each receiver in turn (`--no-whole-file`); **rsync does not fsync**, "
           "DartSync and Syncthing do. Systems ran one after another, never at once; on a shared, noisy "
           "machine read the ratios, not the absolute times.", ""]
    for n in results["settings"]["n"]:
        out += [f"## N = {n} (one writer, {n - 1} receiver{'s' if n > 2 else ''})", "",
                "| workload | DartSync | Syncthing | rsync (no fsync) | DartSync/Syncthing | DartSync/rsync |",
                "|---|---|---|---|---|---|"]

        def row(label, path, fmt, rsync=True, ratios=True):
            vals = [get(results, n, sysn, *path) for sysn in SYSTEMS]
            if not rsync:
                vals[2] = None
            cells = [fmt(v) if v is not None else "n/a" for v in vals]
            r1, r2 = (ratio(vals[0], vals[1]), ratio(vals[0], vals[2])) if ratios else ("", "")
            out.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {r1} | {r2} |")
        secs = lambda v: f"{v:.2f} s"
        ms = lambda v: f"{v:.0f} ms"
        mib = lambda v: f"{v / 1024:.1f} MiB"
        cpu = lambda v: f"{v:.2f} s"
        row("big: time", ["big", "time_s"], secs)
        row("big: wire (lo)", ["big", "lo_rx_bytes"], fmt_bytes)
        row("small: time", ["small", "time_s"], secs)
        row("small: wire (lo)", ["small", "lo_rx_bytes"], fmt_bytes)
        row("small: receiver CPU per file", ["small", "receiver_cpu_us_per_file"], lambda v: f"{v:.0f} µs")
        row("edit: time", ["edit", "time_s"], secs)
        row("edit: wire (lo)", ["edit", "lo_rx_bytes"], fmt_bytes)
        own = {sysn: get(results, n, sysn, "edit", "app", "fetched_bytes") for sysn in ("dartsync",)}
        own["syncthing"] = get(results, n, "syncthing", "edit", "app", "protocol_out_bytes")
        own["rsync"] = get(results, n, "rsync", "edit", "rsync_wire_bytes")
        out.append("| edit: the system's own count¹ | " + " | ".join(fmt_bytes(own[x]) for x in SYSTEMS) + " | | |")
        row("latency p50", ["latency", "p50_ms"], ms, rsync=False)
        row("latency p99", ["latency", "p99_ms"], ms, rsync=False)
        row(f"rename: time, median of {s['rename_reps']}", ["rename", "time_s"], secs, rsync=False)
        row(f"rename: wire (lo), median of {s['rename_reps']}", ["rename", "lo_rx_bytes"], fmt_bytes, rsync=False)
        row(f"rename: wire (lo), worst of {s['rename_reps']}", ["rename", "lo_rx_bytes_max"], fmt_bytes, rsync=False)
        for w in ("big", "small", "edit", "latency", "rename"):
            row(f"{w}: receiver CPU (mean per receiver)", [w, "receiver_cpu_s_mean"], cpu,
                rsync=w in RSYNC_WORKLOADS)
        for w in ("big", "small", "edit", "latency", "rename"):
            row(f"{w}: receiver peak RSS (max)", [w, "receiver_peak_rss_kib_max"], mib, rsync=False)
        for w in ("big", "small", "edit", "latency", "rename"):
            row(f"{w}: other processes' CPU²", [w, "machine", "others_share_pct"], lambda v: f"{v:.0f} %",
                rsync=w in RSYNC_WORKLOADS, ratios=False)
        trk = [get(results, n, "dartsync", w, "tracker_peak_rss_kib") for w in WORKLOADS]
        trk = [t for t in trk if t is not None]
        out.append(f"| DartSync tracker peak RSS (max over workloads) | "
                   f"{mib(max(trk)) if trk else 'n/a'} | — | — | | |")
        errs = [f"{sysn}: {get(results, n, sysn, 'error')}" for sysn in SYSTEMS if get(results, n, sysn, 'error')]
        out.append("")
        if errs:
            out += ["Errors:", ""] + [f"- {e.splitlines()[0]}" for e in errs] + [""]
        out.append("¹ DartSync: content bytes the receivers fetched (its `transfer of PATH done: ... fetched=N` "
                   "log lines); Syncthing: protocol bytes all devices sent, before TLS "
                   "(`/rest/system/connections`); rsync: `Total bytes sent` + `received` of the pushes. "
                   "Different things, shown for orientation; the goals use the `lo` counts.")
        out.append("")
        out.append("² The machine is shared: CPU time other people's processes used during the measurement "
                   "(whole machine's busy time from /proc/stat minus the system under test and this harness), "
                   "as a share of all cores. High values mean that row's times are inflated. "
                   "(rename: the worst of the repetitions.)")
        out.append("")
        out.append("rsync's RSS is not measured (a short-lived child per push); its CPU is the daemon's "
                   "reaped children, all receivers together, divided by the number of receivers.")
        out.append("")
    out += ["## Goals", "", "| goal | measured | |", "|---|---|---|"]
    for goal, measured, met in goals(results):
        out.append(f"| {goal} | {measured} | {'met' if met else ('n/a' if met is None else '**not met**')} |")
    out.append("")
    return "\n".join(out)


def f2(v):
    return "n/a" if v is None else f"{v:.2f}"


def f0(v):
    return "n/a" if v is None else f"{v:.0f}"


def goals(results):
    ns = results["settings"]["n"]
    g = []

    def both(vals, test):
        vals = [v for v in vals if v is not None]
        return (all(test(v) for v in vals)) if vals else None

    for n in ns:
        d, s = get(results, n, "dartsync", "small", "time_s"), get(results, n, "syncthing", "small", "time_s")
        r = d / s if d is not None and s else None
        g.append((f"small N={n}: ≤ 0.5× Syncthing", f"{ratio(d, s)}× ({f2(d)} s vs {f2(s)} s)",
                  None if r is None else r <= 0.5))
    cp = []
    for n in ns:
        d, s = (get(results, n, "dartsync", "small", "receiver_cpu_us_per_file"),
                get(results, n, "syncthing", "small", "receiver_cpu_us_per_file"))
        cp.append((n, d, s))
    g.append(("receiver CPU per small file ≤ Syncthing's",
              "; ".join(f"N={n}: {f0(d)} µs vs {f0(s)} µs" for n, d, s in cp),
              both([None if d is None or s is None else d <= s for _, d, s in cp], lambda v: v)))
    if 2 in ns and 4 in ns:
        b2, b4 = get(results, 2, "dartsync", "big", "time_s"), get(results, 4, "dartsync", "big", "time_s")
        g.append(("big to 3 receivers ≤ 1.3× big to 1 receiver", f"{ratio(b4, b2)}× ({f2(b4)} s vs {f2(b2)} s)",
                  None if b2 is None or b4 is None else b4 <= 1.3 * b2))
    if 4 in ns:
        d, s = get(results, 4, "dartsync", "big", "time_s"), get(results, 4, "syncthing", "big", "time_s")
        g.append(("big N=4 ≤ 0.6× Syncthing", f"{ratio(d, s)}× ({f2(d)} s vs {f2(s)} s)",
                  None if d is None or s is None else d <= 0.6 * s))
    vals = [(n, get(results, n, "dartsync", "rename", "lo_bytes_pct_of_file_max")) for n in ns]
    g.append(("rename: wire ≤ 1% of the file (worst repetition)", "; ".join(f"N={n}: {f2(v)}%" for n, v in vals),
              both([v for _, v in vals], lambda v: v <= 1.0)))
    vals = [(n, get(results, n, "dartsync", "latency", "p50_ms"), get(results, n, "dartsync", "latency", "p99_ms"))
            for n in ns]
    g.append(("latency p50 ≤ 100 ms and p99 ≤ 200 ms", "; ".join(f"N={n}: p50 {f0(a)} ms, p99 {f0(b)} ms" for n, a, b in vals),
              both([None if a is None else (a <= 100 and b <= 200) for _, a, b in vals], lambda v: v)))
    for n in ns:
        d, s, r = (get(results, n, x, "edit", "lo_rx_bytes") for x in SYSTEMS)
        ok = None
        if d is not None and (s is not None or r is not None):
            ok = (r is None or d <= r) and (s is None or d <= 0.25 * s)
        g.append((f"edit N={n}: wire ≤ rsync's and ≤ 0.25× Syncthing's",
                  f"{fmt_bytes(d)} vs rsync {fmt_bytes(r)} ({ratio(d, r)}×), Syncthing {fmt_bytes(s)} "
                  f"({ratio(d, s)}×)", ok))
    peer = [get(results, n, "dartsync", w, k) for n in ns for w in WORKLOADS
            for k in ("receiver_peak_rss_kib_max", "writer_peak_rss_kib")]
    peer = [v for v in peer if v is not None]
    trk = [get(results, n, "dartsync", w, "tracker_peak_rss_kib") for n in ns for w in WORKLOADS]
    trk = [v for v in trk if v is not None]
    g.append(("peer peak RSS ≤ 64 MiB (writer and receivers, every workload)",
              f"max {max(peer) / 1024:.1f} MiB" if peer else "n/a", (max(peer) <= 64 * 1024) if peer else None))
    g.append(("tracker peak RSS ≤ 16 MiB", f"max {max(trk) / 1024:.1f} MiB" if trk else "n/a",
              (max(trk) <= 16 * 1024) if trk else None))
    return g


# ---------------------------------------------------------------- setup

def first_line(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def machine_info(args):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    with open("/proc/meminfo") as f:
        for l in f:
            if l.startswith("MemTotal:"):
                mem = int(l.split()[1])
    fs = first_line(["stat", "-f", "-c", "%T", tempfile.gettempdir()])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_total_kib": mem, "kernel": platform.release(),
            "python": platform.python_version(), "tmp_fs": fs,
            "dartsync_version": first_line([args.binary, "--version"]) if args.binary else None,
            "syncthing_version": first_line(["syncthing", "--version"]) if shutil.which("syncthing") else None,
            "rsync_version": first_line(["rsync", "--version"]) if shutil.which("rsync") else None}


def git_commit():
    c = first_line(["git", "-C", ROOT, "rev-parse", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (c or "?") + ("-dirty" if dirty else "")


def outside(args, argv):
    """Before the namespace: packages, build, then re-exec under unshare -n."""
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates a network namespace (unshare -n) and may apt-get install")
    need = [pkg for pkg, sysn in (("syncthing", "syncthing"), ("rsync", "rsync")) if sysn in args.systems
            and not shutil.which(pkg)]
    if need:
        log(f"installing {' '.join(need)} with apt-get")
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(["apt-get", "install", "-y", *need], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if "dartsync" in args.systems or args.binary is not None:
        if args.binary is None:
            target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
            args.binary = os.path.join(target, "release", "dartsync")
            if not args.no_build:
                log("cargo build --release --locked")
                subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
        if not os.access(args.binary, os.X_OK):
            raise SystemExit(f"no dartsync binary at {args.binary} (build it, or pass --binary PATH)")
    for tool in ("unshare", "ip"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (util-linux / iproute2)")
    cmd = ["unshare", "-n", "--", sys.executable, os.path.abspath(__file__), *argv, "--no-build"]
    if args.binary is not None:
        cmd += ["--binary", os.path.abspath(args.binary)]
    os.execvpe("unshare", cmd, dict(os.environ, **{NETNS_MARK: "1"}))


def check_space(args, work_parent):
    """Rough peak: every folder has the big, rename and small data, each
    receiver a temp copy of the big file during the edit, plus the sources."""
    w = args.workloads
    big = args.big_mib * MiB if ("big" in w or "edit" in w) else 0
    per = big + (args.rename_mib * MiB if "rename" in w else 0) + (args.small * 8.5 * 1024 if "small" in w else 0)
    nmax = max(args.n)
    # + the old big file each receiver keeps during (DartSync: after) the edit, + the sources
    need = nmax * per + ((nmax - 1) * big if "edit" in w else 0) + per + 512 * MiB
    free = shutil.disk_usage(work_parent).free
    if first_line(["stat", "-f", "-c", "%T", work_parent]) == "tmpfs":
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
        free = min(free, avail - (2 << 30))  # leave the processes 2 GiB of RAM
    if free < need:
        raise SystemExit(f"not enough space in {work_parent}: about {need / (1 << 30):.1f} GiB needed at N={nmax}, "
                         f"{free / (1 << 30):.1f} GiB free. Point TMPDIR elsewhere (e.g. TMPDIR=/dev/shm on a "
                         f"machine with enough RAM) or lower --big-mib / --n.")


def inside(args):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/net/dev") as f:
        ifaces = [l.split(":")[0].strip() for l in f.readlines()[2:]]
    if ifaces != ["lo"]:
        raise SystemExit(f"refusing to run: this network namespace has interfaces {ifaces}, expected only lo")
    work_parent = tempfile.gettempdir()
    check_space(args, work_parent)
    work = tempfile.mkdtemp(prefix="dartsync-compare-", dir=work_parent)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "git_commit": git_commit(), "workdir_parent": work_parent, "machine": machine_info(args),
               "settings": {"n": args.n, "systems": args.systems, "workloads": args.workloads,
                            "big_mib": args.big_mib, "small": args.small, "edits": args.edits,
                            "rename_mib": args.rename_mib, "rename_reps": args.rename_reps, "quiet_s": QUIET_S,
                            "dartsync": "--http off (no per-peer dashboard), RUST_LOG=info,"
                                        "dartsync_peer::sync::engine=debug; other settings default",
                            "syncthing": "fsWatcherDelayS=1, fsWatcherEnabled, sendreceive, full mesh on "
                                         "tcp://127.0.0.1, announce/relays/NAT/STUN/UR/crash reports off, "
                                         "setLowPriority=false, reconnectionIntervalS=5, minDiskFree 1024 MB",
                            "rsync": "daemon on 127.0.0.1, rsync -a --no-whole-file --stats, one push per "
                                     "receiver in turn"},
               "runs": {}}
    failed = False
    try:
        log(f"work dir {work}; generating data")
        data = {"edits": args.edits, "rename_reps": args.rename_reps}
        data["big_path"] = os.path.join(work, "src-big.bin")
        data["big_size"] = args.big_mib * MiB
        data["edit_at"] = data["big_size"] // 2
        data["big_sha1"], data["edit_sha1"] = write_random(data["big_path"], data["big_size"], 1, data["edit_at"])
        data["ren_path"] = os.path.join(work, "src-rename.bin")
        data["ren_size"] = args.rename_mib * MiB
        data["ren_sha1"], _ = write_random(data["ren_path"], data["ren_size"], 3)
        data["small_path"] = os.path.join(work, "src-small")
        data["small_expected"] = make_small_tree(data["small_path"], args.small, 2)
        sync_fs(work)
        classes = {"dartsync": DartSync, "syncthing": Syncthing, "rsync": Rsync}
        for k, n in enumerate(args.n):
            results["runs"][str(n)] = {}
            for j, sysn in enumerate(args.systems):
                port_base = 20000 + 1000 * k + 300 * j
                r = run_system(args, classes[sysn], n, work, data, port_base)
                results["runs"][str(n)][sysn] = r
                failed |= "error" in r
    finally:
        stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    md = render_md(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {os.path.join(args.out, 'results.json')} and results.md")
    return 1 if failed else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


def parse_list(s, allowed, what):
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {','.join(allowed)}")
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="2,4", help="cluster sizes, comma-separated (default 2,4)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), type=lambda s: parse_list(s, SYSTEMS, "system"))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), type=lambda s: parse_list(s, WORKLOADS, "workload"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=10000)
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--rename-mib", type=int, default=200)
    ap.add_argument("--rename-reps", type=int, default=3,
                    help="moves of the renamed file, each into a new folder, each measured (default 3)")
    ap.add_argument("--out", default=HERE, help="where results.json and results.md go (default bench/compare)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folders (logs, data)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release --locked")
    ap.add_argument("--binary", help="the dartsync binary (default $CARGO_TARGET_DIR or target/, release)")
    argv = sys.argv[1:]
    args = ap.parse_args()
    try:
        args.n = sorted({int(x) for x in args.n.split(",") if x.strip()})
    except ValueError:
        ap.error("--n takes numbers like 2,4")
    if not args.n or min(args.n) < 2:
        ap.error("--n: every N must be at least 2 (one writer, at least one receiver)")
    if min(args.big_mib, args.rename_mib, args.rename_reps) < 1 or args.small < 1 or args.edits < 1:
        ap.error("sizes and counts must be positive")
    args.out = os.path.abspath(args.out)
    if os.environ.get(NETNS_MARK) != "1":
        outside(args, argv)  # does not return
    # Stop cleanly on SIGTERM/SIGHUP too (Ctrl-C raises KeyboardInterrupt).
    for sig_ in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig_, _interrupt)
    try:
        return inside(args)
    except KeyboardInterrupt:
        stop_all()
        log("interrupted; stopped every process and removed the temp folders")
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
