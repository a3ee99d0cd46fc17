#!/usr/bin/env python3
"""DartSync sync benchmark: one tracker and four peers of the release binary
on 127.0.0.1, each in its own temp folder.

Measures, side by side in one run:
  * time for a 1 GiB file to reach the other three peers (and rsync copying
    the same file to three local folders, as a baseline ratio);
  * time for 10,000 small files (1-16 KiB, nested) to reach the other three;
  * bytes on the wire for a 1-byte edit in the middle of the 1 GiB file
    (and rsync's delta-transfer literal bytes for the same edit);
  * p50/p99 latency of a small edit reaching all peers;
  * peak RSS (VmHWM) of every process.
Prints a table and writes JSON (default bench/sync/results.json).

Usage: python3 bench/sync/run.py [--big-mib 1024] [--small 10000] [--edits 50] [--json PATH]
Only loopback addresses are used.
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Proc:
    def __init__(self, name, args):
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.name = name
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env, text=True)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def grep(self, needle):
        with self.lock:
            return [l for l in self.lines if needle in l]

    def peak_rss_kib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait(what, cond, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def count_files(folder):
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        if ".dartsync" in dirnames:
            dirnames.remove(".dartsync")
        n += len(filenames)
    return n


def synced_lines(proc, path):
    return [l for l in proc.grep("synced ") if f"synced {path} (" in l]


def fetched(line):
    m = re.search(r" bytes local, (\d+) bytes fetched", line)
    return int(m.group(1)) if m else None


def write_random(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(rnd.randbytes(n))
            left -= n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=10000)
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "sync", "results.json"))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "dartsync")
    work = tempfile.mkdtemp(prefix="dartsync-bench-")
    procs = []
    results = {"big_mib": args.big_mib, "small_files": args.small, "edits": args.edits}
    try:
        key = os.path.join(work, "cluster.key")
        subprocess.run([binary, "init", "--key-file", key], check=True, stdout=subprocess.DEVNULL)
        tracker = Proc("tracker", [binary, "--tracker", "--listen", "127.0.0.1:0", "--key-file", key,
                                   "--data", os.path.join(work, "tracker"), "--interval", "5"])
        procs.append(tracker)
        wait("tracker address", lambda: tracker.grep("listening on "), 30)
        addr = tracker.grep("listening on ")[0].split("listening on ")[1].split()[0]
        folders = [os.path.join(work, f"peer{i}") for i in range(4)]
        peers = []
        for i, folder in enumerate(folders):
            os.makedirs(folder)
            p = Proc(f"peer{i}", [binary, "--peer", folder, "--tracker-addr", addr, "--listen", "127.0.0.1:0",
                                  "--key-file", key])
            peers.append(p)
            procs.append(p)
        for p in peers:
            wait(f"{p.name} registration", lambda p=p: p.grep("registered with tracker"), 60)

        # 1. Big file.
        size = args.big_mib << 20
        src = os.path.join(work, "big.src")
        write_random(src, size, 1)
        t0 = time.monotonic()
        shutil.copyfile(src, os.path.join(folders[0], "big.bin.tmp"))
        os.rename(os.path.join(folders[0], "big.bin.tmp"), os.path.join(folders[0], "big.bin"))
        wait("big file on all peers", lambda: all(synced_lines(p, "big.bin") for p in peers[1:]), 1800, 0.05)
        results["big_file_s"] = time.monotonic() - t0
        rsync = shutil.which("rsync")
        if rsync:
            t0 = time.monotonic()
            for i in range(3):
                d = os.path.join(work, f"rsync{i}")
                os.makedirs(d)
                subprocess.run([rsync, "-a", src, os.path.join(d, "big.bin")], check=True)
            results["rsync_big_file_s"] = time.monotonic() - t0

        # 2. One-byte edit in the middle.
        before = {p.name: len(synced_lines(p, "big.bin")) for p in peers[1:]}
        with open(os.path.join(folders[0], "big.bin"), "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        wait("edit on all peers", lambda: all(len(synced_lines(p, "big.bin")) > before[p.name] for p in peers[1:]),
             600, 0.05)
        results["edit_bytes_fetched_per_peer"] = [fetched(synced_lines(p, "big.bin")[-1]) for p in peers[1:]]
        if rsync:
            with open(src, "r+b") as f:
                f.seek(size // 2)
                b = f.read(1)
                f.seek(size // 2)
                f.write(bytes([b[0] ^ 0xFF]))
            out = subprocess.run([rsync, "-a", "--no-whole-file", "--stats", src, os.path.join(work, "rsync0", "big.bin")],
                                 check=True, capture_output=True, text=True).stdout
            m = re.search(r"Literal data: ([\d,]+)", out)
            results["rsync_edit_literal_bytes"] = int(m.group(1).replace(",", "")) if m else None

        # 3. Many small files.
        rnd = random.Random(2)
        staging = os.path.join(work, "small-staging")
        for i in range(args.small):
            d = os.path.join(staging, f"d{i % 50}", f"e{i % 7}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}.dat"), "wb") as f:
                f.write(rnd.randbytes(rnd.randint(1024, 16384)))
        t0 = time.monotonic()
        shutil.move(staging, os.path.join(folders[0], "small"))
        target = args.small + 1  # plus big.bin
        wait("small files on all peers", lambda: all(count_files(f) >= target for f in folders[1:]), 1800, 0.2)
        results["small_files_s"] = time.monotonic() - t0

        # 4. Latency of small edits.
        lat = []
        for n in range(args.edits):
            body = f"edit {n} {time.time()}\n".encode()
            t0 = time.monotonic()
            with open(os.path.join(folders[0], "latency.txt.tmp"), "wb") as f:
                f.write(body)
            os.rename(os.path.join(folders[0], "latency.txt.tmp"), os.path.join(folders[0], "latency.txt"))

            def arrived():
                for folder in folders[1:]:
                    try:
                        with open(os.path.join(folder, "latency.txt"), "rb") as f:
                            if f.read() != body:
                                return False
                    except OSError:
                        return False
                return True
            wait("small edit on all peers", arrived, 60, 0.002)
            lat.append(time.monotonic() - t0)
        lat.sort()
        results["edit_latency_p50_ms"] = 1000 * statistics.median(lat)
        results["edit_latency_p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        results["peak_rss_kib"] = {p.name: p.peak_rss_kib() for p in procs}
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    print(f"{'metric':40} value")
    for k, v in results.items():
        print(f"{k:40} {fmt(v)}")
    if "rsync_big_file_s" in results:
        print(f"{'ratio big file (dartsync/rsync)':40} {results['big_file_s'] / results['rsync_big_file_s']:.2f}")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
