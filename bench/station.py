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
                 The requests come from wrk (Debian's package, installed on first
                 use) paced by bench/paced.lua; the SSE clients are raw sockets
                 read by one thread, so the load costs the measured machine little.

The simulated sticks' media live in a tmpfs (/dev/shm) so that the host disk's
write-back does not pace them: the sticks' own speed limits are the clock.
Stdlib only. Prints a table and writes JSON next to the work directory.
"""
import argparse
import json
import os
import selectors
import signal
import socket
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
               "--read-speed", args.read_speed] + extra
        # Under load the station is stopped by the bench, after the load: a
        # station exiting on its own would leave wrk reconnecting to nothing.
        if not load:
            cmd.append("--exit-when-done")
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
        # The summary comes when every stick has its verdict: stop the load
        # first, then the station, so that no request meets a closing server.
        if loader:
            loader.stop()
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
        summary = json.loads(summary_line)
        if summary["passed"] != summary["sticks"]:
            raise SystemExit(f"not every stick passed: {summary}")
        return summary, (loader.figures() if loader else None)
    finally:
        shutil.rmtree(data, ignore_errors=True)


class Load:
    """The web load: SSE listeners on one thread, and wrk pacing GET /api/v1/ports.

    wrk (Debian's package) sends the requests: `connections` keep-alive
    connections, each waiting a fixed delay between its requests, so that the
    offered rate is `rate` requests a second; its Lua script (bench/paced.lua)
    reports the latency percentiles. The SSE listeners are plain sockets read by
    one selector thread, so the load generator itself costs little CPU on the
    machine it measures.
    """

    CONNECTIONS = 8

    def __init__(self, address, sse_clients, rate):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.sse_clients, self.rate = sse_clients, rate
        self.stopping = threading.Event()
        self.sse_events = 0
        self.sse_connected = 0
        self.wrk = None
        self.thread = None

    def start(self):
        socks = []
        for _ in range(self.sse_clients):
            s = socket.create_connection((self.host, self.port), timeout=5)
            s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {self.host}\r\n"
                      "Accept: text/event-stream\r\n\r\n".encode())
            s.setblocking(False)
            socks.append(s)
        self.thread = threading.Thread(target=self.listen, args=(socks,), daemon=True)
        self.thread.start()
        # A connection's cycle is its delay plus the request's own latency (and
        # wrk's timer granularity): aim 5 % high so that at least `rate`
        # requests a second are offered; the achieved rate is reported.
        delay_ms = 1000.0 * self.CONNECTIONS / (self.rate * 1.05)
        self.wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{self.CONNECTIONS}", "-d3600s", "--timeout", "5s",
             "-s", os.path.join(ROOT, "bench", "paced.lua"),
             f"http://{self.host}:{self.port}/api/v1/ports"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "WRK_DELAY_MS": f"{delay_ms:.3f}"})

    def listen(self, socks):
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        open_socks = len(socks)
        while open_socks and not self.stopping.is_set():
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    open_socks -= 1
                    continue
                if data.startswith(b"HTTP/1.1 200"):
                    self.sse_connected += 1
                self.sse_events += data.count(b"\nevent:") + data.startswith(b"event:")
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    def stop(self):
        self.stopping.set()
        self.wrk.send_signal(signal.SIGINT)
        out, _ = self.wrk.communicate(timeout=30)
        self.thread.join(timeout=5)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        if not lines:
            raise SystemExit(f"wrk printed no summary: {out!r}")
        self.wrk_summary = json.loads(lines[-1])

    def figures(self):
        w = self.wrk_summary
        secs = w["duration_us"] / 1e6
        return {"requests": w["requests"],
                "errors": w["status_errors"] + w["timeouts"] + w["socket_errors"],
                "rate": w["requests"] / secs if secs else float("nan"),
                "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000,
                "p99_ms": w["p99_us"] / 1000, "p999_ms": w["p999_us"] / 1000,
                "max_ms": w["max_us"] / 1000,
                "sse_clients": self.sse_connected, "sse_events": self.sse_events}


def ensure_wrk():
    """wrk comes from Debian's package; installed on first use (root)."""
    if shutil.which("wrk"):
        return
    print("installing wrk (apt-get install wrk) for the web load", flush=True)
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)


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
    parser.add_argument("--cases", default="burst,no-records,web-load",
                        help="comma-separated subset of burst,no-records,web-load")
    args = parser.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "flashrack-cli"], cwd=ROOT, check=True)

    cases = {"burst": ([], None), "no-records": (["--no-records"], None),
             "web-load": ([], (args.sse_clients, args.rate))}
    chosen = args.cases.split(",")
    unknown = set(chosen) - set(cases)
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    cases = {name: case for name, case in cases.items() if name in chosen}
    if "web-load" in cases:
        ensure_wrk()
    results = {name: [] for name in cases}
    loads = []
    for rep in range(args.reps):
        for name, (extra, load) in cases.items():
            summary, figures = run_burst(args.flashrack, args, extra, load)
            results[name].append(summary)
            if figures:
                loads.append(figures)
                if figures["sse_clients"] < args.sse_clients:
                    raise SystemExit(f"only {figures['sse_clients']} of {args.sse_clients} SSE clients connected")
            print(f"rep {rep + 1} {name:<10} slowest {summary['slowest_secs']:.2f} s "
                  f"(ideal {summary['ideal_secs']:.2f} s, ratio {summary['ratio']:.3f})"
                  + (f"  load: {figures['requests']} req ({figures['rate']:.0f}/s), "
                     f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
                     f"max {figures['max_ms']:.1f} ms, {figures['errors']} errors, "
                     f"{figures['sse_clients']} SSE clients got {figures['sse_events']} events"
                     if figures else ""),
                  flush=True)

    med = {name: statistics.median(r["slowest_secs"] for r in runs) for name, runs in results.items()}
    rows = []
    if "burst" in med:
        rows.append(("burst: slowest / ideal", med["burst"] / results["burst"][0]["ideal_secs"], 1.05))
    if "burst" in med and "no-records" in med:
        rows.append(("recorder: burst / no-records", med["burst"] / med["no-records"], 1.02))
    if "burst" in med and "web-load" in med:
        rows.append(("web load: load / burst", med["web-load"] / med["burst"], 1.02))
    if loads:
        rows.append(("web load: worst p99 latency (ms)", max(f["p99_ms"] for f in loads), 50.0))
        rows.append(("web load: median p99 latency (ms)", statistics.median(f["p99_ms"] for f in loads), 50.0))
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
