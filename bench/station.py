#!/usr/bin/env python3
"""Station-level benchmarks: the whole path (hotplug -> station -> engine ->
records -> web) on a simulated rack, measured side by side in one run.

  sudo python3 bench/station.py [--reps 3] [--sticks 32] [--image-size 256MiB]

Cases (each a `flashrack demo --burst N --exit-when-done` run, interleaved):
  burst          N sticks plugged within a moment (20 MB/s write, 40 MB/s read):
                 slowest finish / ideal (image/write + image/read). Target <= 1.05.
  no-records     the same with records kept in memory only: the recorder's cost is
                 burst / no-records. Target <= 1.02.
  web-load       the same while 50 SSE clients listen and 200 requests/s hit
                 /api/v1/ports: load / burst. Target <= 1.02; p99 latency < 50 ms.

The simulated sticks' media live in a tmpfs (/dev/shm) so that the host disk's
write-back does not pace them: the sticks' own speed limits are the clock.
Stdlib only. Prints a table and writes JSON next to the work directory.
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_burst(binary, args, extra, load=None):
    """Runs one burst; returns its JSON summary (and the load's figures)."""
    data = tempfile.mkdtemp(prefix="flashrack-station-bench-", dir="/dev/shm")
    try:
        cmd = [binary, "--data-dir", data, "demo", "--listen", "127.0.0.1:0",
               "--ports", str(args.sticks), "--burst", str(args.sticks),
               "--image-size", args.image_size, "--write-speed", args.write_speed,
               "--read-speed", args.read_speed, "--exit-when-done"] + extra
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first = proc.stdout.readline().strip()
        if not first.startswith("dashboard: http://"):
            proc.kill()
            raise SystemExit(f"unexpected output from flashrack: {first!r}")
        address = first[len("dashboard: http://"):].rstrip("/")
        loader = None
        if load:
            loader = Load(address, sse_clients=load[0], rate=load[1])
            loader.start()
        summary_line = proc.stdout.readline().strip()
        # The summary comes just before the station shuts down: stop the load
        # first, so that requests to a closing server are not counted as errors.
        if loader:
            loader.stop()
        proc.wait(timeout=600)
        summary = json.loads(summary_line)
        if summary["passed"] != summary["sticks"]:
            raise SystemExit(f"not every stick passed: {summary}")
        return summary, (loader.figures() if loader else None)
    finally:
        shutil.rmtree(data, ignore_errors=True)


class Load:
    """50 SSE listeners and a paced stream of GET /api/v1/ports."""

    def __init__(self, address, sse_clients, rate):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.sse_clients, self.rate = sse_clients, rate
        self.stopping = threading.Event()
        self.latencies = []
        self.errors = 0
        self.sse_events = 0
        self.lock = threading.Lock()
        self.threads = []

    def start(self):
        for _ in range(self.sse_clients):
            self.threads.append(threading.Thread(target=self.listen, daemon=True))
        self.threads.append(threading.Thread(target=self.requests, daemon=True))
        for t in self.threads:
            t.start()

    def listen(self):
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            conn.request("GET", "/api/v1/events")
            response = conn.getresponse()
            while not self.stopping.is_set():
                line = response.fp.readline()
                if not line:
                    break
                if line.startswith(b"event:"):
                    with self.lock:
                        self.sse_events += 1
        except Exception:  # the server going away ends the listener
            pass

    def requests(self):
        # A small pool of keep-alive connections, requests sent on a fixed
        # schedule; latency counts from the scheduled time (no coordinated omission).
        interval = 1.0 / self.rate
        pool = [None] * 8
        slots = threading.Semaphore(len(pool))
        free = list(range(len(pool)))
        free_lock = threading.Lock()

        def one(scheduled):
            with free_lock:
                index = free.pop()
            try:
                conn = pool[index] or http.client.HTTPConnection(self.host, self.port, timeout=5)
                pool[index] = conn
                conn.request("GET", "/api/v1/ports")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except Exception:
                pool[index] = None
                ok = False
            latency = time.monotonic() - scheduled
            with self.lock:
                if ok:
                    self.latencies.append(latency)
                elif not self.stopping.is_set():
                    self.errors += 1
            with free_lock:
                free.append(index)
            slots.release()

        next_at = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.01))
                continue
            slots.acquire()
            threading.Thread(target=one, args=(next_at,), daemon=True).start()
            next_at += interval

    def stop(self):
        self.stopping.set()

    def figures(self):
        lat = sorted(self.latencies)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
        return {"requests": len(lat), "errors": self.errors, "p50_ms": p(0.50),
                "p99_ms": p(0.99), "max_ms": lat[-1] * 1000 if lat else float("nan"),
                "sse_events": self.sse_events}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sticks", type=int, default=32)
    parser.add_argument("--image-size", default="256MiB")
    parser.add_argument("--write-speed", default="20MB")
    parser.add_argument("--read-speed", default="40MB")
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--rate", type=int, default=200, help="API requests a second")
    parser.add_argument("--flashrack", default=os.path.join(ROOT, "target/release/flashrack"))
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--out", default="/var/tmp/flashrack-bench")
    args = parser.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "flashrack-cli"], cwd=ROOT, check=True)

    cases = {"burst": ([], None), "no-records": (["--no-records"], None),
             "web-load": ([], (args.sse_clients, args.rate))}
    results = {name: [] for name in cases}
    loads = []
    for rep in range(args.reps):
        for name, (extra, load) in cases.items():
            summary, figures = run_burst(args.flashrack, args, extra, load)
            results[name].append(summary)
            if figures:
                loads.append(figures)
            print(f"rep {rep + 1} {name:<10} slowest {summary['slowest_secs']:.2f} s "
                  f"(ideal {summary['ideal_secs']:.2f} s, ratio {summary['ratio']:.3f})"
                  + (f"  load: {figures['requests']} req, p99 {figures['p99_ms']:.1f} ms, "
                     f"{figures['errors']} errors, {figures['sse_events']} SSE events" if figures else ""),
                  flush=True)

    med = {name: statistics.median(r["slowest_secs"] for r in runs) for name, runs in results.items()}
    ideal = results["burst"][0]["ideal_secs"]
    p99 = max(f["p99_ms"] for f in loads)
    rows = [
        ("burst: slowest / ideal", med["burst"] / ideal, 1.05),
        ("recorder: burst / no-records", med["burst"] / med["no-records"], 1.02),
        ("web load: load / burst", med["web-load"] / med["burst"], 1.02),
        ("web load: worst p99 latency (ms)", p99, 50.0),
    ]
    print(f"\n{args.sticks} sticks, image {args.image_size}, {args.write_speed}/s write, "
          f"{args.read_speed}/s read, {args.reps} reps (medians of the slowest finish)")
    for name, runs in results.items():
        times = [r["slowest_secs"] for r in runs]
        print(f"  {name:<11} median {statistics.median(times):7.2f} s  [{min(times):.2f}-{max(times):.2f}]")
    for label, value, target in rows:
        print(f"  {label:<34} {value:8.3f}  target <= {target:<5}  {'PASS' if value <= target else 'MISS'}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"station-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "results": results, "load": loads,
                   "ratios": {label: value for label, value, _ in rows}}, f, indent=1)
    print(f"  results: {path}")


if __name__ == "__main__":
    main()
