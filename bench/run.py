#!/usr/bin/env python3
"""flashrack performance check (issue 2).

Compares `flashrack flash` on real loop devices with the honest shell baselines
(dd write + drop caches + dd read-back | sha256sum / openssl, and the raw dd limit),
checks flashrack's memory bound (also with a 4 GiB image), and measures the
mixed-speed and 32-stick cases on the simulated rack.

Run as root:  sudo python3 bench/run.py [--quick] [--ns 1,4,8] [--reps 5] ...
See bench/README.md. Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import marshal
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
import time
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

REPO = Path(__file__).resolve().parent.parent
GEN_VERSION = 1  # bump when the image generator changes (invalidates cached images)
DEV_EXTRA = 64 * MiB  # loop backing file = image size + this
DD_BS = 4 * MiB

TOOLS = ("flashrack", "a", "b", "c", "c2")
TOOL_LABEL = {
    "flashrack": "flashrack",
    "a": "(a) dd + sha256sum",
    "b": "(b) dd + openssl",
    "c": "(c) dd raw (limit)",
    "c2": "(c') raw, file drop",
}
# (c') is informational, not one of the issue's references: the raw limit with
# the cache drop flashrack can do itself (each target's loop backing file dropped
# with fadvise(DONTNEED)) instead of the machine-wide drop_caches. See README,
# "Why the raw limit's read-back is fast".
# Cold one-shot cases (issue 14 §3): flashrack flashing a file it has not seen
# (imported as part of the run), next to caligula, which writes the file and
# reads every byte back (one process per target).
TOOL_LABEL["cold"] = "flashrack cold"
TOOL_LABEL["caligula"] = "caligula"
COLD_TOOLS = ("cold", "caligula", "a", "c")
COLD_RATIO_TARGETS = {1: 1.0, 4: 0.8}  # flashrack cold / caligula, by N
IMPORT_CPU_PER_GIB_TARGET = 1.5
# Cold one-shot of a single-stream .xz of the same image (N = 1): flashrack's
# wall <= this x (max(decompress, write) + read-back), the parts timed apart.
TOOL_LABEL["cold-xz"] = "flashrack cold .xz"
COLD_XZ_TARGET = 1.1
# Targets of issue 2 (ratios of median wall times, flashrack / reference).
RATIO_TARGETS = {"a": 0.5, "b": 0.9, "c": 1.15}
CPU_PER_GIB_TARGET = 0.5
SIM_CHANGE_TARGET = 0.05
SIM32_TARGET = 1.05


class BenchError(Exception):
    """A setup or tool error that stops the benchmark."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_size(n: int) -> str:
    if n % GiB == 0:
        return f"{n // GiB}GiB"
    if n % MiB == 0:
        return f"{n // MiB}MiB"
    return f"{n}B"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B?|B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1GiB, 256MiB)")
    n = int(m.group(1))
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": GiB * 1024}[unit]
    size = n * mult
    if size % (4 * KiB) != 0:
        raise argparse.ArgumentTypeError("image size must be a multiple of 4 KiB")
    return size


# ----------------------------------------------------------------------------
# processes: started by a small launcher, reaped with wait4 for their rusage
# ----------------------------------------------------------------------------
#
# Linux carries the forking process's RSS high-water mark into the child's
# ru_maxrss across exec (fs/exec.c, exec_mmap). Forked from this script, whose
# peak is tens of MiB (image generation, scribble buffers), every dd would report
# that peak. So every measured process is forked by a tiny separate launcher
# (python3 -I -S, only built-in modules); its own ~7 MiB is then the floor of any
# reported RSS.

LAUNCHER = r"""
import posix, sys, marshal, time, _signal
kids = set()
def stop(signum, frame):
    for pid in list(kids):
        try:
            posix.kill(pid, 15)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while kids and time.monotonic() < deadline:
        try:
            pid, _ = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            kids.discard(pid)
        else:
            time.sleep(0.05)
    for pid in list(kids):
        try:
            posix.kill(pid, 9)
        except OSError:
            pass
    posix._exit(1)
_signal.signal(_signal.SIGTERM, stop)
_signal.signal(_signal.SIGHUP, stop)
_signal.signal(_signal.SIGINT, _signal.SIG_IGN)
rd, wr = sys.stdin.buffer, sys.stdout.buffer
def spawn(argv, fd0, fd1, fd2):
    pid = posix.fork()
    if pid == 0:
        try:
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
            _signal.signal(_signal.SIGHUP, _signal.SIG_DFL)
            posix.dup2(fd0, 0)
            posix.dup2(fd1, 1)
            posix.dup2(fd2, 2)
            posix.closerange(3, 65536)
            posix.execv(argv[0], argv)
        except BaseException:
            pass
        posix._exit(127)
    kids.add(pid)
    return pid
W = posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC
while True:
    hdr = rd.read(8)
    if len(hdr) < 8:
        break
    jobs = marshal.loads(rd.read(int.from_bytes(hdr, "little")))
    procs = {}
    for j, job in enumerate(jobs):
        prev = posix.open("/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
        stages = job["stages"]
        for s, argv in enumerate(stages):
            nxt = None
            if s < len(stages) - 1:
                nxt, out = posix.pipe2(posix.O_CLOEXEC)
            else:
                out = posix.open(job["out"], W, 0o600)
            err = posix.open(job["err"][s], W, 0o600)
            procs[spawn(argv, prev, out, err)] = (j, s)
            posix.close(prev)
            posix.close(out)
            posix.close(err)
            prev = nxt
    done = []
    while procs:
        pid, status, ru = posix.wait4(-1, 0)
        end = time.monotonic()
        kids.discard(pid)
        if pid in procs:
            j, s = procs.pop(pid)
            done.append((j, s, posix.waitstatus_to_exitcode(status), ru.ru_utime, ru.ru_stime, ru.ru_maxrss, end))
    msg = marshal.dumps(done)
    wr.write(len(msg).to_bytes(8, "little") + msg)
    wr.flush()
"""


@dataclass
class Reaped:
    argv: list[str]
    status: int  # exit code, or -signal
    cpu: float  # user + sys seconds
    maxrss_kib: int
    stdout: str  # of the last stage of its pipeline, for that stage only
    stderr: str
    end: float  # time.monotonic() when reaped


LAUNCH: "Launcher | None" = None


class Launcher:
    """Runs batches of pipelines side by side; returns each process's rusage."""

    def __init__(self, tmpdir: Path):
        self.tmp = tmpdir
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self.p = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    @staticmethod
    def _resolve(argv: list[str]) -> list[str]:
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0])
        if not exe:
            raise BenchError(f"{argv[0]} not found")
        return [exe, *argv[1:]]

    def run(self, jobs: list[list[list[str]]]) -> list[list[Reaped]]:
        """jobs: a list of pipelines, each a list of argv. Starts them all at once
        and returns when every process has exited."""
        self.seq += 1
        spec = []
        for j, stages in enumerate(jobs):
            spec.append(
                {
                    "stages": [self._resolve(a) for a in stages],
                    "out": str(self.tmp / f"{self.seq}-{j}.out"),
                    "err": [str(self.tmp / f"{self.seq}-{j}-{s}.err") for s in range(len(stages))],
                }
            )
        msg = marshal.dumps(spec)
        try:
            self.p.stdin.write(len(msg).to_bytes(8, "little") + msg)
            self.p.stdin.flush()
            hdr = self.p.stdout.read(8)
            if len(hdr) < 8:
                raise BenchError("the process launcher died")
            done = marshal.loads(self.p.stdout.read(int.from_bytes(hdr, "little")))
        except BrokenPipeError:
            raise BenchError("the process launcher died")
        out: list[list[Reaped | None]] = [[None] * len(s["stages"]) for s in spec]
        for j, s, status, ut, st, rss, end in done:
            job = spec[j]
            last = s == len(job["stages"]) - 1
            out[j][s] = Reaped(
                argv=jobs[j][s],
                status=status,
                cpu=ut + st,
                maxrss_kib=rss,
                stdout=_slurp(Path(job["out"])) if last else "",
                stderr=_slurp(Path(job["err"][s])),
                end=end,
            )
        for job in spec:
            for f in [job["out"], *job["err"]]:
                Path(f).unlink(missing_ok=True)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()  # the launcher stops its children, then exits
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _slurp(p: Path) -> str:
    try:
        return p.read_text("utf-8", "replace")
    except OSError:
        return ""


def run_checked(argv: list[str], what: str, timeout: float | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"{what} failed (exit {r.returncode}): {' '.join(argv)}\n{r.stderr.strip()[-2000:]}")
    return r.stdout


# ----------------------------------------------------------------------------
# system helpers
# ----------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def drop_backing_files(devs: list[str]) -> None:
    """Drops each loop device's backing file from the page cache (what flashrack
    does before its read-back), instead of every cache of the machine."""
    for dev in devs:
        backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file").read_text().strip()
        fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dev_stat(dev: str) -> tuple[int, int]:
    """(bytes read, bytes written) of a block device since attach."""
    name = os.path.basename(dev)
    fields = Path(f"/sys/block/{name}/stat").read_text().split()
    return int(fields[2]) * 512, int(fields[6]) * 512


def disk_stat_path(path: Path) -> Path | None:
    """The sysfs stat file of the block device holding `path` (None if virtual)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    p = Path(f"/sys/dev/block/{major}:{minor}/stat")
    return p if major != 0 and p.exists() else None


def cpu_busy_secs() -> float:
    """Machine-wide busy CPU seconds (all CPUs) since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    busy = sum(f[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def read_disk_stat(p: Path | None) -> tuple[int, int]:
    if p is None:
        return 0, 0
    f = p.read_text().split()
    return int(f[2]) * 512, int(f[6]) * 512


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------


@dataclass
class Image:
    path: Path
    size: int
    sha256: str
    data_bytes: int
    runs: int
    digest: str = ""  # flashrack's cache digest after import


def generate_image(workdir: Path, size: int, seed: int) -> Image:
    """A deterministic image: ~60% random runs, ~40% zero holes, run lengths
    log-uniform in 64 KiB..32 MiB with no alignment. Holes are seeked over, so the
    file is sparse. Reused when present with the right size and metadata."""
    path = workdir / f"image-{fmt_size(size)}-seed{seed}.img"
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("version") == GEN_VERSION
            and meta.get("seed") == seed
            and meta.get("size") == size
            and path.stat().st_size == size
        ):
            log(f"reusing {path.name} (sha256 {meta['sha256'][:16]}…)")
            return Image(path, size, meta["sha256"], meta["data_bytes"], meta["runs"])
    except (OSError, ValueError, KeyError):
        pass

    log(f"generating {path.name} ({fmt_size(size)}, seed {seed}) …")
    t0 = time.monotonic()
    rng = random.Random(f"flashrack-bench/{GEN_VERSION}/{seed}/{size}")
    h = hashlib.sha256()
    zeros = memoryview(bytes(8 * MiB))
    lo, hi = math.log(64 * KiB), math.log(32 * MiB)
    tmp = path.with_suffix(".tmp")
    data_bytes = 0
    runs = 0
    pos = 0
    with open(tmp, "wb") as f:
        while pos < size:
            length = min(int(math.exp(rng.uniform(lo, hi))), size - pos)
            # Keep the byte mix near 60/40 while the run types stay random.
            want_data = data_bytes < 0.6 * (pos + length)
            is_data = want_data if rng.random() < 0.75 else rng.random() < 0.6
            if is_data:
                left = length
                while left:
                    n = min(left, 8 * MiB)
                    block = rng.randbytes(n)
                    f.write(block)
                    h.update(block)
                    left -= n
                data_bytes += length
            else:
                f.seek(length, os.SEEK_CUR)
                left = length
                while left:
                    n = min(left, len(zeros))
                    h.update(zeros[:n])
                    left -= n
            pos += length
            runs += 1
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sha = h.hexdigest()
    meta_path.write_text(
        json.dumps(
            {"version": GEN_VERSION, "seed": seed, "size": size, "sha256": sha, "data_bytes": data_bytes, "runs": runs},
            indent=1,
        )
    )
    log(
        f"  {path.name}: {runs} runs, {100 * data_bytes / size:.1f}% random data, "
        f"sha256 {sha[:16]}…, {time.monotonic() - t0:.1f}s"
    )
    return Image(path, size, sha, data_bytes, runs)


# ----------------------------------------------------------------------------
# loop devices: only those we attach, recorded by name, detached in finally
# ----------------------------------------------------------------------------


class Loops:
    def __init__(self, workdir: Path, direct_io: bool = False):
        self.dir = workdir / "loops"
        # With direct I/O each write to the loop device reaches the backing
        # file's disk as it is made (as on a stick), instead of landing in the
        # backing file's page cache until a flush writes it back.
        self.direct_io = direct_io
        self.attached: list[tuple[str, Path]] = []  # (device, backing file)
        self.backing: list[Path] = []

    def attach_set(self, n: int, dev_size: int, tag: str) -> list[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        devs = []
        for i in range(n):
            backing = self.dir / f"{tag}-{i}.img"
            with open(backing, "wb") as f:  # fresh, sparse
                f.truncate(dev_size)
            self.backing.append(backing)
            dio = ["--direct-io=on"] if self.direct_io else []
            dev = run_checked(["losetup", "--find", "--show", *dio, str(backing)], "losetup").strip()
            if not dev.startswith("/dev/loop"):
                raise BenchError(f"losetup printed {dev!r}")
            self.attached.append((dev, backing))
            devs.append(dev)
        mode = ", direct I/O" if self.direct_io else ""
        log(f"attached {', '.join(devs)} ({fmt_size(dev_size)} each{mode})")
        return devs

    def _ours(self, dev: str, backing: Path) -> bool:
        try:
            name = os.path.basename(dev)
            text = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            return False
        return text.removesuffix(" (deleted)") == str(backing)

    def detach_all(self) -> None:
        # Also any device attached to one of our backing files whose name we did
        # not get to record (interrupted right inside losetup).
        known = {d for d, _ in self.attached}
        for b in self.backing:
            r = subprocess.run(["losetup", "-j", str(b)], capture_output=True, text=True)
            for line in r.stdout.splitlines():
                dev = line.split(":", 1)[0].strip()
                if dev.startswith("/dev/loop") and dev not in known:
                    self.attached.append((dev, b))
                    known.add(dev)
        for dev, backing in reversed(self.attached):
            if self._ours(dev, backing):
                r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
                if r.returncode != 0:
                    log(f"warning: losetup -d {dev}: {r.stderr.strip()}")
            else:
                log(f"warning: {dev} no longer backed by {backing}; left alone")
        if self.attached:
            log(f"detached {', '.join(d for d, _ in self.attached)}")
        self.attached.clear()
        for b in self.backing:
            try:
                b.unlink()
            except FileNotFoundError:
                pass
        self.backing.clear()


# ----------------------------------------------------------------------------
# scribbles: every target starts each run full of fresh garbage, cold
# ----------------------------------------------------------------------------


def scribble(devs: list[str], image_size: int, dev_size: int, random_mib: int, rng: random.Random) -> None:
    """Random bytes over the first 64 MiB, the last 64 MiB of the image area, the
    last 64 MiB of the device, and `random_mib` MiB in 8 MiB pieces at random
    offsets; then fsync, sync, drop caches. A target left stale cannot pass."""
    chunk = 8 * MiB
    random_mib = min(random_mib, image_size // MiB // 2)
    fds = []
    try:
        for dev in devs:
            buf = os.urandom(32 * MiB)
            fd = os.open(dev, os.O_WRONLY | os.O_CLOEXEC)
            fds.append(fd)
            regions = []
            head = min(64 * MiB, image_size)
            regions.append((0, head))
            tail_start = max(0, image_size - 64 * MiB)
            regions.append((tail_start, image_size - tail_start))
            regions.append((dev_size - DEV_EXTRA, DEV_EXTRA))
            for _ in range(random_mib * MiB // chunk):
                off = rng.randrange(0, max(1, (image_size - chunk) // 4096)) * 4096
                regions.append((off, min(chunk, image_size - off)))
            for off, length in regions:
                done = 0
                while done < length:
                    n = min(len(buf), length - done)
                    k = rng.randrange(0, len(buf) - n + 1)  # vary the garbage
                    os.pwrite(fd, memoryview(buf)[k : k + n], off + done)
                    done += n
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    drop_caches()


# ----------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------


@dataclass
class RunResult:
    tool: str
    n: int
    rep: int
    wall: float
    cpu: float
    maxrss_kib: int
    dev_read: dict[str, int]
    dev_written: dict[str, int]
    disk_read: int
    disk_written: int
    write_secs: float = 0.0  # write phase (flashrack: slowest target's write_secs)
    verify_secs: float = 0.0  # read-back phase (flashrack: slowest target's verify_secs)
    other_cpu: float = 0.0  # machine busy CPU s during the run minus the run's own processes
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "tool": self.tool,
            "n": self.n,
            "rep": self.rep,
            "wall_secs": round(self.wall, 4),
            "cpu_secs": round(self.cpu, 4),
            "peak_rss_mib": round(self.maxrss_kib / 1024, 2),
            "dev_read_bytes": self.dev_read,
            "dev_written_bytes": self.dev_written,
            "disk_read_bytes": self.disk_read,
            "disk_written_bytes": self.disk_written,
            "write_secs": round(self.write_secs, 4),
            "verify_secs": round(self.verify_secs, 4),
            "other_cpu_secs": round(self.other_cpu, 3),
            "ok": self.ok,
            "problems": self.problems,
            "detail": self.detail,
        }


class Meter:
    """Byte counters of the targets and of the disk under the work dir."""

    def __init__(self, devs: list[str], disk: Path | None):
        self.devs = devs
        self.disk = disk
        self.before = {d: dev_stat(d) for d in devs}
        self.disk_before = read_disk_stat(disk)
        self.busy_before = cpu_busy_secs()

    def busy(self) -> float:
        return cpu_busy_secs() - self.busy_before

    def finish(self) -> tuple[dict[str, int], dict[str, int], int, int]:
        read, written = {}, {}
        for d in self.devs:
            r, w = dev_stat(d)
            read[d] = r - self.before[d][0]
            written[d] = w - self.before[d][1]
        dr, dw = read_disk_stat(self.disk)
        return read, written, dr - self.disk_before[0], dw - self.disk_before[1]


def dd_write_argv(image: Image, dev: str) -> list[str]:
    return ["dd", f"if={image.path}", f"of={dev}", f"bs={DD_BS}", "oflag=direct", "conv=fsync", "status=none"]


def dd_read_argv(dev: str, size: int, out: str | None = None) -> list[str]:
    argv = ["dd", f"if={dev}", "iflag=direct,count_bytes", f"bs={DD_BS}", f"count={size}", "status=none"]
    if out:
        argv.append(f"of={out}")
    return argv


HEX64 = re.compile(r"\b([0-9a-f]{64})\b")


def run_reference(kind: str, image: Image, devs: list[str], disk: Path | None, rep: int) -> RunResult:
    procs_done: list[Reaped] = []
    meter = Meter(devs, disk)
    t0 = time.monotonic()
    # write phase
    writes = LAUNCH.run([[dd_write_argv(image, dev)] for dev in devs])
    procs_done += [r for job in writes for r in job]
    t1 = max(r.end for r in procs_done)
    if kind == "c2":
        drop_backing_files(devs)
    else:
        drop_caches()
    t2 = time.monotonic()
    # read-back phase
    digests: dict[str, str] = {}
    if kind in ("c", "c2"):
        jobs = [[dd_read_argv(dev, image.size, "/dev/null")] for dev in devs]
    else:
        hasher = ["sha256sum"] if kind == "a" else ["openssl", "dgst", "-sha256"]
        jobs = [[dd_read_argv(dev, image.size), hasher] for dev in devs]
    reads = LAUNCH.run(jobs)
    for dev, results in zip(devs, reads):
        procs_done += results
        if kind not in ("c", "c2"):
            m = HEX64.search(results[-1].stdout)
            digests[dev] = m.group(1) if m else f"<no digest: {results[-1].stdout.strip()!r}>"
    t3 = max(r.end for job in reads for r in job)
    busy = meter.busy()
    read, written, dr, dw = meter.finish()
    res = RunResult(
        tool=kind,
        n=len(devs),
        rep=rep,
        wall=t3 - t0,
        cpu=sum(r.cpu for r in procs_done),
        maxrss_kib=max(r.maxrss_kib for r in procs_done),
        dev_read=read,
        dev_written=written,
        disk_read=dr,
        disk_written=dw,
        write_secs=t1 - t0,
        verify_secs=t3 - t2,
        detail={"drop_secs": round(t2 - t1, 4), "digests": digests},
    )
    res.other_cpu = busy - res.cpu
    for r in procs_done:
        if r.status != 0:
            res.ok = False
            res.problems.append(f"{' '.join(r.argv)} exited {r.status}: {r.stderr.strip()[-300:]}")
    for dev, d in digests.items():
        if d != image.sha256:
            res.ok = False
            res.problems.append(f"{TOOL_LABEL[kind]}: read-back of {dev} has sha256 {d}, image has {image.sha256}")
    return res


def run_flashrack(
    fr: Path, data_dir: Path, image: Image, devs: list[str], disk: Path | None, rep: int, verify: str | None
) -> RunResult:
    """`flashrack flash DIGEST …`: the image is in the cache already."""
    return flash_once("flashrack", fr, data_dir, image.digest, image, devs, disk, rep, verify)


def flash_once(
    tool: str,
    fr: Path,
    data_dir: Path,
    source: str,
    image: Image,
    devs: list[str],
    disk: Path | None,
    rep: int,
    verify: str | None,
) -> RunResult:
    """One `flashrack flash SOURCE …` onto devs, metered: the row of `tool`."""
    argv = [str(fr), "--data-dir", str(data_dir), "flash", source, *devs, "--allow-bus", "loop", "--json", "--quiet"]
    if verify:
        argv += ["--verify", verify]
    meter = Meter(devs, disk)
    t0 = time.monotonic()
    r = LAUNCH.run([[argv]])[0][0]
    busy = meter.busy()
    read, written, dr, dw = meter.finish()
    res = RunResult(
        tool=tool,
        n=len(devs),
        rep=rep,
        wall=r.end - t0,
        cpu=r.cpu,
        maxrss_kib=r.maxrss_kib,
        dev_read=read,
        dev_written=written,
        disk_read=dr,
        disk_written=dw,
        other_cpu=busy - r.cpu,
    )
    check_flash_output(res, r, image, devs)
    return res


def check_flash_output(res: RunResult, r: Reaped, image: Image, targets: list[str]) -> dict | None:
    """Parses flashrack's JSON summary into res.detail; records every failure."""
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        res.ok = False
        res.problems.append(
            f"flashrack exited {r.status} without a JSON summary; stdout {r.stdout.strip()[-300:]!r}; "
            f"stderr {r.stderr.strip()[-800:]!r}"
        )
        return None
    res.detail = {"exit": r.status, "summary": summary}
    if r.status != 0:
        res.ok = False
        res.problems.append(f"flashrack exited {r.status}; stderr {r.stderr.strip()[-500:]!r}")
    if summary.get("image_sha256") != image.sha256:
        res.ok = False
        res.problems.append(f"flashrack image_sha256 {summary.get('image_sha256')} != {image.sha256}")
    if summary.get("failed", 1) != 0 or summary.get("passed") != len(targets):
        res.ok = False
        res.problems.append(
            f"flashrack: passed {summary.get('passed')}, failed {summary.get('failed')}, "
            f"refused {summary.get('refused')}, interrupted {summary.get('interrupted')}"
        )
    tlist = summary.get("targets") or []
    for t in tlist:
        if t.get("verdict") != "pass":
            res.ok = False
            res.problems.append(
                f"flashrack: {t.get('target')} {t.get('verdict')}: {t.get('reason')} {t.get('detail')} "
                f"at {t.get('offset')}"
            )
    if tlist:
        res.write_secs = max(float(t.get("write_secs") or 0) for t in tlist)
        res.verify_secs = max(float(t.get("verify_secs") or 0) for t in tlist)
    return summary


def crosscheck(devs: list[str], image: Image) -> list[str]:
    """Independently reads every target (outside the timing) and compares with
    the image: catches a pass on a target that does not hold the image."""
    drop_caches()
    problems = []
    results = LAUNCH.run([[dd_read_argv(dev, image.size), ["sha256sum"]] for dev in devs])
    for dev, (a, b) in zip(devs, results):
        m = HEX64.search(b.stdout)
        if a.status != 0 or not m or m.group(1) != image.sha256:
            problems.append(
                f"cross-check: {dev} does not hold the image after a flashrack pass "
                f"(sha256 {m.group(1) if m else '?'}, dd exit {a.status})"
            )
    return problems


def honesty(res: RunResult, image: Image) -> None:
    """Every target must have been read in full from the device during the run."""
    total = sum(res.dev_read.values())
    if total < res.n * image.size:
        res.ok = False
        res.problems.append(
            f"{TOOL_LABEL[res.tool]}: read {total} bytes from the targets, fewer than "
            f"N x image = {res.n * image.size}: its verification did not read the media"
        )
    for dev, b in res.dev_read.items():
        if b < image.size:
            res.ok = False
            res.problems.append(
                f"{TOOL_LABEL[res.tool]}: read only {b} of {image.size} image bytes from {dev} during its run"
            )


# ----------------------------------------------------------------------------
# flashrack CLI
# ----------------------------------------------------------------------------


def build_flashrack(skip: bool, explicit: Path | None) -> Path:
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BenchError(f"{explicit} is not executable")
        return explicit
    binary = REPO / "target" / "release" / "flashrack"
    if not skip:
        log("cargo build --release -p flashrack-cli …")
        r = subprocess.run(
            ["cargo", "build", "--release", "-p", "flashrack-cli"], cwd=REPO, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise BenchError("cargo build --release -p flashrack-cli failed:\n" + r.stderr.strip()[-3000:])
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{binary} missing after the build")
    return binary


def import_image(fr: Path, data_dir: Path, image: Image) -> None:
    out = run_checked([str(fr), "--data-dir", str(data_dir), "image", "import", str(image.path)], "flashrack image import")
    lines = [l.strip() for l in out.strip().splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    m = HEX64.search(last)
    if not m:
        raise BenchError(f"flashrack image import printed no sha256 on its last line: {out!r}")
    if m.group(1) != image.sha256:
        raise BenchError(f"flashrack image import says sha256 {m.group(1)}, the bench computed {image.sha256}")
    image.digest = m.group(1)
    log(f"imported {image.path.name} into flashrack's cache ({image.digest[:16]}…)")


# ----------------------------------------------------------------------------
# cold one-shot flashing and the cost of an import (issue 14 §3)
# ----------------------------------------------------------------------------


def ensure_caligula(workdir: Path, explicit: Path | None) -> Path:
    """caligula: the one given, the one on PATH, or installed once with
    `cargo install caligula` into WORKDIR/caligula (not CI's job)."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BenchError(f"{explicit} is not executable")
        return explicit
    found = shutil.which("caligula")
    if found:
        return Path(found)
    root = workdir / "caligula"
    binary = root / "bin" / "caligula"
    if not os.access(binary, os.X_OK):
        if shutil.which("cargo") is None:
            raise BenchError("caligula is missing and cargo is not there to install it (or pass --caligula PATH)")
        log(f"cargo install caligula --root {root} (once) …")
        r = subprocess.run(
            ["cargo", "install", "caligula", "--root", str(root)],
            capture_output=True,
            text=True,
            env={**os.environ, "CARGO_TARGET_DIR": str(root / "build")},
        )
        if r.returncode != 0 or not os.access(binary, os.X_OK):
            raise BenchError("cargo install caligula failed:\n" + r.stderr.strip()[-3000:])
        shutil.rmtree(root / "build", ignore_errors=True)
    return binary


def caligula_argv(cal: Path, image: Image, dev: str) -> list[str]:
    return [
        str(cal), "burn", str(image.path), "-o", dev, "--force", "--hash", "skip",
        "--compression", "none", "--interactive", "never", "--root", "never",
    ]


def run_caligula(cal: Path, image: Image, devs: list[str], disk: Path | None, rep: int) -> RunResult:
    """One caligula process per target, all at once."""
    meter = Meter(devs, disk)
    t0 = time.monotonic()
    done = [r for job in LAUNCH.run([[caligula_argv(cal, image, d)] for d in devs]) for r in job]
    busy = meter.busy()
    read, written, dr, dw = meter.finish()
    res = RunResult(
        tool="caligula",
        n=len(devs),
        rep=rep,
        wall=max(r.end for r in done) - t0,
        cpu=sum(r.cpu for r in done),
        maxrss_kib=max(r.maxrss_kib for r in done),
        dev_read=read,
        dev_written=written,
        disk_read=dr,
        disk_written=dw,
    )
    res.other_cpu = busy - res.cpu
    for r in done:
        if r.status != 0:
            res.ok = False
            res.problems.append(f"caligula exited {r.status}: {(r.stderr or r.stdout).strip()[-400:]}")
    return res


def forget_image(fr: Path, data_dir: Path, image: Image) -> None:
    """Removes the image from flashrack's cache (and with it every hint that
    leads to it), so that the next flash sees a file it has not seen."""
    argv = [str(fr), "--data-dir", str(data_dir), "image", "remove", image.sha256]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0 and "not" not in r.stderr.lower():
        raise BenchError(f"{' '.join(argv)}: {r.stderr.strip()}")


def run_flashrack_cold(
    fr: Path, data_dir: Path, image: Image, devs: list[str], disk: Path | None, rep: int, verify: str | None
) -> RunResult:
    """`flashrack flash IMAGE_FILE …` with the image not in the cache and the
    source file not in the page cache: the import is part of the run."""
    forget_image(fr, data_dir, image)
    drop_caches()
    return flash_once("cold", fr, data_dir, str(image.path), image, devs, disk, rep, verify)


def import_cost(fr: Path, workdir: Path, image: Image, reps: int) -> dict:
    """`flashrack image import` of the image into an empty cache, source not
    in the page cache: wall, user and system CPU seconds (wait4), per GiB."""
    runs = []
    for rep in range(reps):
        data = workdir / "import-cost"
        shutil.rmtree(data, ignore_errors=True)
        drop_caches()
        argv = [str(fr), "--data-dir", str(data), "image", "import", str(image.path)]
        t0 = time.monotonic()
        with open(os.devnull, "wb") as null:
            p = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE)
            err = p.stderr.read().decode(errors="replace")
            _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise BenchError(f"{' '.join(argv)} failed: {err.strip()[-500:]}")
        runs.append({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "stderr": err.strip()})
        log(f"import {fmt_size(image.size)} rep {rep + 1}/{reps}: wall {wall:.2f}s user {ru.ru_utime:.2f}s sys {ru.ru_stime:.2f}s")
    shutil.rmtree(workdir / "import-cost", ignore_errors=True)
    gib = image.size / GiB
    return {
        "runs": runs,
        "wall_median": med([r["wall"] for r in runs]),
        "user_median": med([r["user"] for r in runs]),
        "sys_median": med([r["sys"] for r in runs]),
        "cpu_per_gib_median": med([(r["user"] + r["sys"]) / gib for r in runs]),
    }


def cold_cases(args, fr: Path, data_dir: Path, image: Image, devs_all: list[str], dev_size: int, disk, rng, out, problems: list[str]) -> dict:
    p = lambda s="": print(s, file=out)  # noqa: E731
    cal = ensure_caligula(args.workdir, args.caligula)
    result: dict = {"caligula": str(cal), "per_n": {}}
    cost = import_cost(fr, args.workdir, image, args.reps)
    result["import"] = cost
    ok = cost["cpu_per_gib_median"] <= IMPORT_CPU_PER_GIB_TARGET
    result["import"]["target"] = {"value": cost["cpu_per_gib_median"], "target": IMPORT_CPU_PER_GIB_TARGET, "pass": ok}
    p()
    p(f"== import of the {fmt_size(image.size)} raw image into an empty cache (source cold, {args.reps} reps) ==")
    p(
        f"  wall {cost['wall_median']:.2f}s  user {cost['user_median']:.2f}s  sys {cost['sys_median']:.2f}s (medians); "
        f"last said: {cost['runs'][-1]['stderr'].splitlines()[0] if cost['runs'][-1]['stderr'] else ''}"
    )
    p(f"  CPU s per GiB of import = {cost['cpu_per_gib_median']:6.3f}   target <= {IMPORT_CPU_PER_GIB_TARGET:<5}  {verdict(ok)}")
    for n in args.ns:
        devs = devs_all[:n]
        runs: dict[str, list[RunResult]] = {t: [] for t in args.cold_tools}
        for rep in range(1, args.reps + 1):
            for tool in args.cold_tools:
                scribble(devs, image.size, dev_size, args.scribble_mib, rng)
                if tool == "cold":
                    res = run_flashrack_cold(fr, data_dir, image, devs, disk, rep, args.verify)
                    honesty(res, image)
                elif tool == "caligula":
                    res = run_caligula(cal, image, devs, disk, rep)
                else:
                    res = run_reference(tool, image, devs, disk, rep)
                    honesty(res, image)
                if tool in ("cold", "caligula") and res.ok and not args.no_crosscheck:
                    cp = crosscheck(devs, image)
                    if cp:
                        res.ok = False
                        res.problems += cp
                runs[tool].append(res)
                problems += [f"cold N={n} rep {rep}: {pr}" for pr in res.problems]
                log(
                    f"cold N={n} rep {rep}/{args.reps} {TOOL_LABEL[tool]:<19} wall {res.wall:7.2f}s  cpu {res.cpu:6.2f}s  "
                    f"rss {res.maxrss_kib / 1024:6.1f} MiB  read/dev {sum(res.dev_read.values()) / n / MiB:6.0f} MiB"
                    + ("" if res.ok else "  FAILED: " + "; ".join(res.problems)[:400])
                )
        stats = {t: summarize_tool(rs) for t, rs in runs.items()}
        p()
        p(f"== cold one-shot, N = {n} (image {fmt_size(image.size)} raw, not in flashrack's cache, page cache dropped; {args.reps} interleaved reps) ==")
        hdr = f"{'tool':<20} {'wall s median [min-max]':<26} {'CPU s':>7} {'RSS MiB':>8} {'rd MiB/dev':>10} {'wr MiB/dev':>10}"
        p(hdr)
        p("-" * len(hdr))
        for tool in args.cold_tools:
            st = stats[tool]
            wall = f"{st['wall_median']:.2f} [{st['wall_min']:.2f}-{st['wall_max']:.2f}]"
            fail = f"  ({st['failed_runs']} FAILED)" if st["failed_runs"] else ""
            p(
                f"{TOOL_LABEL[tool]:<20} {wall:<26} {st['cpu_median']:>7.2f} {st['peak_rss_mib']:>8.1f} "
                f"{st['read_mib_per_dev']:>10.0f} {st['written_mib_per_dev']:>10.0f}{fail}"
            )
        ratio = stats["cold"]["wall_median"] / stats["caligula"]["wall_median"]
        bound = COLD_RATIO_TARGETS.get(n)
        targets = {"cold/caligula": {"value": ratio, "target": bound, "pass": None if bound is None else ratio <= bound}}
        mark = f"target <= {bound:<5}  {verdict(ratio <= bound)}" if bound is not None else "(informational)"
        p(f"  flashrack cold / caligula wall (median) = {ratio:6.3f}   {mark}")
        load = os.getloadavg()
        p(f"  load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        stats["loadavg"] = load
        result["per_n"][str(n)] = {"stats": stats, "targets": targets, "runs": [r.to_json() for rs in runs.values() for r in rs]}
        out.flush()
    if args.cold_xz:
        result["xz"] = cold_xz_case(args, fr, data_dir, image, devs_all[:1], dev_size, disk, rng, out, problems)
    return result


def xz_of(workdir: Path, image: Image) -> Path:
    """The image compressed once with `xz -T2 -1` (one stream of 3 MiB blocks,
    its size in the index, so flashrack follows its import), reused while
    newer than the image. Two threads make it in ~5 minutes here where one
    took ~8 CPU minutes; decompressing is single-threaded either way
    (`xz -dc` of xz 5.4 and flashrack's decoder)."""
    path = workdir / (image.path.name + ".xz")
    try:
        if path.stat().st_mtime >= image.path.stat().st_mtime:
            log(f"reusing {path.name}")
            return path
    except FileNotFoundError:
        pass
    log(f"xz -T2 -1 {image.path.name} (once) …")
    t0 = time.monotonic()
    tmp = path.with_suffix(".xz.tmp")
    with open(tmp, "wb") as f:
        r = subprocess.run(["xz", "-T2", "-1", "-c", str(image.path)], stdout=f, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"xz -T2 -1 {image.path}: {r.stderr.strip()}")
    os.replace(tmp, path)
    log(f"  {path.name}: {fmt_size(path.stat().st_size)}, {time.monotonic() - t0:.1f}s")
    return path


def time_decompress(xz: Path) -> float:
    """Wall seconds of `xz -dc FILE > /dev/null`, the file not in the page cache."""
    drop_caches()
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        r = subprocess.run(["xz", "-dc", str(xz)], stdout=null, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"xz -dc {xz}: {r.stderr.strip()}")
    return wall


def cold_xz_case(args, fr: Path, data_dir: Path, image: Image, devs: list[str], dev_size: int, disk, rng, out, problems: list[str]) -> dict:
    """flashrack flashing the .xz of the image it has not seen (N = 1) against
    max(decompress, write) + read-back, each part timed on its own in the same
    rep: `xz -dc > /dev/null` (file cold), and the write and read-back phases
    of reference (c) (dd of the raw image, drop_caches, dd of the device)."""
    p = lambda s="": print(s, file=out)  # noqa: E731
    xz = xz_of(args.workdir, image)
    reps = []
    for rep in range(1, args.reps + 1):
        decompress = time_decompress(xz)
        scribble(devs, image.size, dev_size, args.scribble_mib, rng)
        drop_caches()
        ref = run_reference("c", image, devs, disk, rep)
        honesty(ref, image)
        scribble(devs, image.size, dev_size, args.scribble_mib, rng)
        forget_image(fr, data_dir, image)
        drop_caches()
        res = flash_once("cold-xz", fr, data_dir, str(xz), image, devs, disk, rep, args.verify)
        honesty(res, image)
        if res.ok and not args.no_crosscheck:
            cp = crosscheck(devs, image)
            if cp:
                res.ok = False
                res.problems += cp
        problems += [f"cold .xz rep {rep}: {pr}" for pr in ref.problems + res.problems]
        bound = max(decompress, ref.write_secs) + ref.verify_secs
        reps.append({"decompress": decompress, "write": ref.write_secs, "read_back": ref.verify_secs, "bound": bound, "flashrack": res.to_json()})
        log(
            f"cold .xz rep {rep}/{args.reps}: flashrack wall {res.wall:.2f}s cpu {res.cpu:.2f}s; xz -dc {decompress:.2f}s, "
            f"dd write {ref.write_secs:.2f}s, read-back {ref.verify_secs:.2f}s -> bound {bound:.2f}s"
            + ("" if res.ok and ref.ok else "  FAILED: " + "; ".join(ref.problems + res.problems)[:400])
        )
    fr_wall = med([r["flashrack"]["wall_secs"] for r in reps])
    bound = med([r["bound"] for r in reps])
    ratio = fr_wall / bound
    ok = ratio <= COLD_XZ_TARGET
    load = os.getloadavg()
    p()
    p(f"== cold one-shot of {xz.name} ({fmt_size(xz.stat().st_size)}, one xz stream), N = 1, {args.reps} reps (medians) ==")
    p(f"  xz -dc > /dev/null     {med([r['decompress'] for r in reps]):6.2f}s")
    p(f"  dd write (c)           {med([r['write'] for r in reps]):6.2f}s")
    p(f"  dd read-back (c)       {med([r['read_back'] for r in reps]):6.2f}s")
    per_bound = ", ".join(f"{r['bound']:.2f}" for r in reps)
    per_fr = ", ".join(f"{r['flashrack']['wall_secs']:.2f}" for r in reps)
    fr_cpu = med([r["flashrack"]["cpu_secs"] for r in reps])
    p(f"  max(decompress, write) + read-back = {bound:6.2f}s   (per rep: {per_bound})")
    p(f"  flashrack cold .xz     {fr_wall:6.2f}s  [{per_fr}]  cpu {fr_cpu:.2f}s")
    p(f"  flashrack / bound = {ratio:6.3f}   target <= {COLD_XZ_TARGET:<5}  {verdict(ok)}")
    p(f"  load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out.flush()
    return {"xz": str(xz), "xz_size": xz.stat().st_size, "reps": reps, "loadavg": load,
            "target": {"value": ratio, "target": COLD_XZ_TARGET, "pass": ok}}


# ----------------------------------------------------------------------------
# reporting helpers
# ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize_tool(runs: list[RunResult]) -> dict:
    walls = [r.wall for r in runs]
    n = runs[0].n
    return {
        "runs": len(runs),
        "failed_runs": sum(1 for r in runs if not r.ok),
        "wall_median": med(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "write_median": med([r.write_secs for r in runs]),
        "verify_median": med([r.verify_secs for r in runs]),
        "cpu_median": med([r.cpu for r in runs]),
        "peak_rss_mib": max(r.maxrss_kib for r in runs) / 1024,
        "read_mib_per_dev": med([sum(r.dev_read.values()) / n / MiB for r in runs]),
        "min_read_mib_any_dev": min(min(r.dev_read.values()) for r in runs) / MiB,
        "written_mib_per_dev": med([sum(r.dev_written.values()) / n / MiB for r in runs]),
        "disk_read_mib": med([r.disk_read / MiB for r in runs]),
        "other_cpu_median": med([r.other_cpu for r in runs]),
    }


def print_n_table(n: int, image: Image, reps: int, stats: dict, out) -> dict:
    p = lambda s="": print(s, file=out)  # noqa: E731
    p()
    p(f"== N = {n}  (image {fmt_size(image.size)}, {reps} interleaved reps, {n} loop device(s)) ==")
    hdr = (
        f"{'tool':<20} {'wall s median [min-max]':<26} {'write s':>7} {'verify s':>8} {'CPU s':>7} "
        f"{'RSS MiB':>8} {'rd MiB/dev':>10} {'wr MiB/dev':>10} {'disk rd MiB':>11} {'other CPU s':>11}"
    )
    p(hdr)
    p("-" * len(hdr))
    for tool in TOOLS:
        s = stats.get(tool)  # type: ignore[assignment]
        if not s:
            continue
        wall = f"{s['wall_median']:.2f} [{s['wall_min']:.2f}-{s['wall_max']:.2f}]"
        fail = f"  ({s['failed_runs']} FAILED)" if s["failed_runs"] else ""
        p(
            f"{TOOL_LABEL[tool]:<20} {wall:<26} {s['write_median']:>7.2f} {s['verify_median']:>8.2f} "
            f"{s['cpu_median']:>7.2f} {s['peak_rss_mib']:>8.1f} {s['read_mib_per_dev']:>10.0f} "
            f"{s['written_mib_per_dev']:>10.0f} {s['disk_read_mib']:>11.0f} {s['other_cpu_median']:>11.1f}{fail}"
        )
    targets: dict = {}
    fr = stats.get("flashrack")
    if fr:
        p("targets:")
        for ref, bound in RATIO_TARGETS.items():
            if ref in stats:
                ratio = fr["wall_median"] / stats[ref]["wall_median"]
                ok = ratio <= bound
                targets[f"flashrack/{ref}"] = {"value": ratio, "target": bound, "pass": ok}
                p(f"  flashrack/{ref} wall (median)            = {ratio:6.3f}   target <= {bound:<5}  {verdict(ok)}")
        if "c2" in stats:
            ratio = fr["wall_median"] / stats["c2"]["wall_median"]
            targets["flashrack/c2"] = {"value": ratio, "target": None, "pass": None}
            p(f"  flashrack/c' wall (median)           = {ratio:6.3f}   (informational: the raw limit with flashrack's own cache drop)")
        per_gib = fr["cpu_median"] / (n * image.size / GiB)
        ok = per_gib <= CPU_PER_GIB_TARGET
        targets["cpu_per_gib"] = {"value": per_gib, "target": CPU_PER_GIB_TARGET, "pass": ok}
        p(
            f"  flashrack CPU s per GiB written+verified = {per_gib:6.3f}   target <= {CPU_PER_GIB_TARGET:<5}  "
            f"{verdict(ok)}"
        )
        bound = 64 + 8 * n
        ok = fr["peak_rss_mib"] <= bound
        targets["rss"] = {"value": fr["peak_rss_mib"], "target": bound, "pass": ok}
        p(f"  flashrack peak RSS MiB                   = {fr['peak_rss_mib']:6.1f}   bound <= {bound:<5}  {verdict(ok)}")
        if "c" in stats:
            c = stats["c"]
            p(
                f"  time split vs raw limit: write {fr['write_median']:.2f}s vs {c['write_median']:.2f}s, "
                f"verify {fr['verify_median']:.2f}s vs {c['verify_median']:.2f}s, "
                f"CPU {fr['cpu_median']:.2f}s vs {c['cpu_median']:.2f}s (of {fr['wall_median'] * os.cpu_count():.1f} "
                f"core-seconds available)"
            )
    return targets


# ----------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------


def prerequisites(args) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root (loop devices, drop_caches): sudo python3 bench/run.py")
    missing = [t for t in ("losetup", "dd", "sha256sum") if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")
    if shutil.which("openssl") is None:
        log("openssl missing: apt-get update && apt-get install -y openssl")
        run_checked(["apt-get", "update"], "apt-get update")
        run_checked(["apt-get", "install", "-y", "openssl"], "apt-get install openssl")
    if not args.reference_only and not args.flashrack and not args.skip_build and shutil.which("cargo") is None:
        raise BenchError("cargo not found (needed to build flashrack; or pass --flashrack PATH)")
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        raise BenchError("/proc/sys/vm/drop_caches is not writable")
    if not Path("/dev/loop-control").exists():
        raise BenchError("no /dev/loop-control: the loop driver is missing")


def space_needed(args) -> int:
    need = args.image_size * 2 + max(args.ns) * (args.image_size + DEV_EXTRA)  # image, cache copy, loops
    if not args.no_4g:
        need += 2 * 4 * GiB + args.rss_n * (4 * GiB + DEV_EXTRA)
    if not args.no_sim:
        need += 2 * args.sim_image_size + 32 * args.sim_image_size
    return need


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/flashrack-bench"), help="images, loop backing files, results")
    ap.add_argument("--ns", default=None, help="target counts, comma separated (default 1,4,8)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions per N (default 5)")
    ap.add_argument("--seed", type=int, default=1, help="image generator seed (default 1)")
    ap.add_argument("--image-size", type=parse_size, default=None, help="main image size (default 1GiB)")
    ap.add_argument("--no-4g", action="store_true", help="skip the 4 GiB RSS check")
    ap.add_argument("--rss-n", type=int, default=4, help="targets for the 4 GiB RSS check (default 4; 2 is faster)")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulated-rack cases")
    ap.add_argument("--sim-image-size", type=parse_size, default=None, help="image for the simulated rack (default 256MiB)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="flashrack's data dir (image cache, database) for the flashrack cases (default WORKDIR/data, "
        "on the loop devices' disk; a station's cache is on a disk of its own, never a stick's: "
        "e.g. /dev/shm/flashrack-bench takes the cache's writes off the sticks' disk)",
    )
    ap.add_argument("--sim-data-dir", type=Path, default=None, help="flashrack data dir for the sim cases, where the sticks' backing files live (default: WORKDIR/data; e.g. a tmpfs to take the disk out)")
    ap.add_argument("--scribble-mib", type=int, default=192, help="MiB of random-offset scribbles per target per run (plus 3 x 64 MiB fixed)")
    ap.add_argument("--verify", choices=("compare", "hash", "none"), default=None, help="flashrack --verify mode (default: its own)")
    ap.add_argument(
        "--loop-direct-io",
        action="store_true",
        help="attach the loop devices with --direct-io=on: each write reaches the backing disk "
        "as it is made (as on a stick), instead of landing in the backing file's page cache "
        "until a flush writes it back",
    )
    ap.add_argument("--no-crosscheck", action="store_true", help="skip re-reading targets after each flashrack pass")
    ap.add_argument("--quick", action="store_true", help="smoke test: N=1,4, 2 reps, 256 MiB image, 64 MiB sim image, no 4G")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a performance target is missed")
    ap.add_argument("--skip-build", action="store_true", help="use the existing target/release/flashrack")
    ap.add_argument("--flashrack", type=Path, default=None, help="flashrack binary to use (implies no build)")
    ap.add_argument("--reference-only", action="store_true", help="only the dd baselines (a), (b), (c); no flashrack")
    ap.add_argument("--cold", action="store_true", help="also the cold one-shot cases: import cost, flashrack flashing a file it has not seen next to caligula")
    ap.add_argument("--cold-only", action="store_true", help="only the cold one-shot cases (implies --cold, --no-4g, --no-sim)")
    ap.add_argument("--cold-tools", default=",".join(COLD_TOOLS), help="rows of the cold one-shot cases, interleaved in this order (default cold,caligula,a,c; cold and caligula are needed for the ratio)")
    ap.add_argument("--cold-xz", action="store_true", help="with --cold: also the cold one-shot of the image's .xz, N = 1 (made once with xz -T2 -1 into WORKDIR: ~5 minutes per GiB here)")
    ap.add_argument("--caligula", type=Path, default=None, help="caligula binary (default: on PATH, else cargo install caligula into WORKDIR/caligula)")
    args = ap.parse_args()

    if args.quick:
        args.ns = args.ns or "1,4"
        args.reps = args.reps or 2
        args.image_size = args.image_size or 256 * MiB
        args.sim_image_size = args.sim_image_size or 64 * MiB
        args.no_4g = True
    args.ns = sorted({int(x) for x in (args.ns or "1,4,8").split(",") if x.strip()})
    args.reps = args.reps or 5
    args.image_size = args.image_size or GiB
    args.sim_image_size = args.sim_image_size or 256 * MiB
    if args.reference_only:
        args.no_4g = True
        args.no_sim = True
    if args.cold_only:
        args.cold = True
        args.no_4g = True
        args.no_sim = True
    args.cold_tools = tuple(t.strip() for t in args.cold_tools.split(",") if t.strip())
    if not {"cold", "caligula"} <= set(args.cold_tools) or not set(args.cold_tools) <= set(COLD_TOOLS):
        ap.error(f"--cold-tools: a subset of {','.join(COLD_TOOLS)} with cold and caligula")
    if not args.ns or min(args.ns) < 1 or args.reps < 1:
        ap.error("--ns needs positive counts and --reps >= 1")

    # Ctrl-C, SIGTERM, SIGHUP: unwind through the finally blocks.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    loops = Loops(args.workdir, direct_io=args.loop_direct_io)
    problems: list[str] = []
    try:
        return bench(args, loops, problems)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as e:
        print(f"\nBENCHMARK ERROR: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if LAUNCH is not None:
            LAUNCH.close()
        loops.detach_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def bench(args, loops: Loops, problems: list[str]) -> int:
    global LAUNCH
    prerequisites(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    LAUNCH = Launcher(args.workdir / "tmp")
    free = shutil.disk_usage(args.workdir).free
    if free < space_needed(args):
        raise BenchError(f"{args.workdir}: {free / GiB:.1f} GiB free, about {space_needed(args) / GiB:.1f} GiB needed")
    disk = disk_stat_path(args.workdir)
    started = _dt.datetime.now()
    fr = None if args.reference_only else build_flashrack(args.skip_build, args.flashrack)
    data_dir = args.data_dir or args.workdir / "data"
    out = sys.stdout
    results: dict = {
        "started": started.isoformat(timespec="seconds"),
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
            "loadavg_start": os.getloadavg(),
        },
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "git": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "flashrack": str(fr) if fr else None,
        "per_n": {},
    }
    if fr:
        results["flashrack_version"] = subprocess.run([str(fr), "--version"], capture_output=True, text=True).stdout.strip()

    image = generate_image(args.workdir, args.image_size, args.seed)
    results["image"] = {"path": str(image.path), "size": image.size, "sha256": image.sha256, "random_fraction": image.data_bytes / image.size, "runs": image.runs}
    if fr:
        import_image(fr, data_dir, image)

    rng = random.Random(f"scribble/{args.seed}/{time.time_ns()}")
    tools = ("a", "b", "c", "c2") if args.reference_only else TOOLS
    dev_size = image.size + DEV_EXTRA
    max_n = max(args.ns + ([args.rss_n] if fr and not args.no_4g else []))
    devs_all = loops.attach_set(max_n, dev_size, f"bench-{fmt_size(image.size)}")
    # Prime: every target gets its blocks allocated once, so no tool pays the
    # backing files' first-write allocation in rep 1.
    log("priming the targets (untimed)")
    for (r,) in LAUNCH.run([[dd_write_argv(image, d)] for d in devs_all]):
        if r.status != 0:
            raise BenchError(f"priming {' '.join(r.argv)}: {r.stderr.strip()}")

    all_runs: list[RunResult] = []
    fr_peak_rss_1g: dict[int, float] = {}
    if fr and args.cold:
        results["cold"] = cold_cases(args, fr, data_dir, image, devs_all, dev_size, disk, rng, out, problems)
        # The cases below flash the image by digest: it must be in the cache.
        import_image(fr, data_dir, image)
    for n in ([] if args.cold_only else args.ns):
        devs = devs_all[:n]
        runs: dict[str, list[RunResult]] = {t: [] for t in tools}
        for rep in range(1, args.reps + 1):
            for tool in tools:
                scribble(devs, image.size, dev_size, args.scribble_mib, rng)
                if tool == "flashrack":
                    res = run_flashrack(fr, data_dir, image, devs, disk, rep, args.verify)
                else:
                    res = run_reference(tool, image, devs, disk, rep)
                honesty(res, image)
                if tool == "flashrack" and res.ok and not args.no_crosscheck:
                    cp = crosscheck(devs, image)
                    if cp:
                        res.ok = False
                        res.problems += cp
                runs[tool].append(res)
                all_runs.append(res)
                problems += [f"N={n} rep {rep}: {p}" for p in res.problems]
                log(
                    f"N={n} rep {rep}/{args.reps} {TOOL_LABEL[tool]:<19} wall {res.wall:7.2f}s  cpu {res.cpu:6.2f}s  "
                    f"rss {res.maxrss_kib / 1024:6.1f} MiB  read/dev {sum(res.dev_read.values()) / n / MiB:6.0f} MiB"
                    + ("" if res.ok else "  FAILED: " + "; ".join(res.problems)[:400])
                )
        stats = {t: summarize_tool(rs) for t, rs in runs.items()}
        targets = print_n_table(n, image, args.reps, stats, out)
        stats["loadavg"] = os.getloadavg()
        if "flashrack" in stats:
            fr_peak_rss_1g[n] = stats["flashrack"]["peak_rss_mib"]
        results["per_n"][str(n)] = {"stats": stats, "targets": targets, "runs": [r.to_json() for r in all_runs if r.n == n]}
        out.flush()

    # ---------------------------------------------------------------- 4 GiB RSS
    if fr and not args.no_4g:
        n = args.rss_n
        if n not in fr_peak_rss_1g:
            devs = devs_all[:n]
            scribble(devs, image.size, dev_size, args.scribble_mib, rng)
            res = run_flashrack(fr, data_dir, image, devs, disk, 1, args.verify)
            honesty(res, image)
            problems += [f"RSS check ({fmt_size(image.size)}), N={n}: {p}" for p in res.problems]
            fr_peak_rss_1g[n] = res.maxrss_kib / 1024
        loops.detach_all()
        big = generate_image(args.workdir, 4 * GiB, args.seed)
        import_image(fr, data_dir, big)
        big_dev = big.size + DEV_EXTRA
        devs = loops.attach_set(n, big_dev, "bench-4GiB")
        scribble(devs, big.size, big_dev, args.scribble_mib, rng)
        res = run_flashrack(fr, data_dir, big, devs, disk, 1, args.verify)
        honesty(res, big)
        problems += [f"RSS check (4 GiB), N={n}: {p}" for p in res.problems]
        loops.detach_all()
        rss4 = res.maxrss_kib / 1024
        rss1 = fr_peak_rss_1g[n]
        bound = 64 + 8 * n
        equal = abs(rss4 - rss1) <= max(8.0, 0.2 * rss1)
        p = lambda s="": print(s, file=out)  # noqa: E731
        p()
        p(f"== memory vs image size (flashrack, N = {n}) ==")
        p(f"  peak RSS with the {fmt_size(image.size)} image: {rss1:7.1f} MiB")
        p(f"  peak RSS with the {fmt_size(big.size)} image: {rss4:7.1f} MiB   (wall {res.wall:.1f}s, {'ok' if res.ok else 'FAILED'})")
        p(f"  about equal (within max(8 MiB, 20%))       {verdict(equal)}")
        p(f"  4 GiB run within bound 64 + 8 x {n} = {bound} MiB   {verdict(rss4 <= bound)}")
        results["rss_4g"] = {
            "n": n,
            "rss_1g_mib": rss1,
            "rss_4g_mib": rss4,
            "bound_mib": bound,
            "about_equal": equal,
            "within_bound": rss4 <= bound,
            "run": res.to_json(),
        }
    else:
        loops.detach_all()

    # ---------------------------------------------------------- simulated rack
    if fr and not args.no_sim:
        results["sim"] = sim_cases(args, fr, args.sim_data_dir or data_dir, out, problems)

    # ------------------------------------------------------------------ output
    results["problems"] = problems
    results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    missed = []
    for n, pn in results["per_n"].items():
        missed += [f"N={n} {k}" for k, v in pn["targets"].items() if v["pass"] is False]
    if "rss_4g" in results and not (results["rss_4g"]["about_equal"] and results["rss_4g"]["within_bound"]):
        missed.append("4 GiB RSS")
    for k, v in results.get("sim", {}).get("targets", {}).items():
        if not v["pass"]:
            missed.append(f"sim {k}")
    if "cold" in results:
        if not results["cold"]["import"]["target"]["pass"]:
            missed.append("import CPU per GiB")
        for n, pn in results["cold"]["per_n"].items():
            missed += [f"cold N={n} {k}" for k, v in pn["targets"].items() if v["pass"] is False]
        if "xz" in results["cold"] and not results["cold"]["xz"]["target"]["pass"]:
            missed.append("cold .xz")
    results["missed_targets"] = missed
    path = args.workdir / f"results-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(file=out)
    print(f"results: {path}", file=out)
    if problems:
        print("\nBENCHMARK FAILED (verification / honesty):", file=out)
        for pr in problems:
            print(f"  - {pr}", file=out)
        return 1
    if missed:
        print(f"targets missed: {', '.join(missed)}" + ("" if args.strict else "  (not fatal without --strict)"), file=out)
        if args.strict:
            return 1
    else:
        print("all targets met" if fr else "reference run complete (no flashrack)", file=out)
    return 0


def sim_cases(args, fr: Path, data_dir: Path, out, problems: list[str]) -> dict:
    p = lambda s="": print(s, file=out)  # noqa: E731
    img = generate_image(args.workdir, args.sim_image_size, args.seed)
    import_image(fr, data_dir, img)
    res_all: dict = {"image_size": img.size, "data_dir": str(data_dir), "targets": {}}

    def flash(specs: list[str], label: str) -> tuple[dict[str, float], float, dict | None]:
        argv = [str(fr), "--data-dir", str(data_dir), "flash", img.digest, *specs, "--allow-bus", "loop", "--json", "--quiet"]
        if args.verify:
            argv += ["--verify", args.verify]
        log(f"sim: {label} ({len(specs)} sticks)")
        t0 = time.monotonic()
        r = LAUNCH.run([[argv]])[0][0]
        wall = r.end - t0
        dummy = RunResult("flashrack", len(specs), 1, wall, r.cpu, r.maxrss_kib, {}, {}, 0, 0)
        summary = check_flash_output(dummy, r, img, specs)
        problems.extend(f"sim {label}: {x}" for x in dummy.problems)
        finish: dict[str, float] = {}
        for t in (summary or {}).get("targets", []):
            name = str(t.get("target", "")).removeprefix("sim:").split(":")[0]
            if t.get("finished_after_secs") is not None:
                finish[name] = float(t["finished_after_secs"])
        res_all[label] = {"wall": wall, "cpu": r.cpu, "peak_rss_mib": r.maxrss_kib / 1024, "finish": finish, "summary": summary}
        return finish, wall, summary

    fast = [f"sim:s{i:02d}:capacity=2GiB,write=40MB,read=80MB" for i in range(1, 9)]
    slow = "sim:slow:capacity=2GiB,write=4MB,read=8MB"
    with_slow, wall1, _ = flash(fast + [slow], "with_slow")
    without, wall2, _ = flash(fast, "without_slow")
    p()
    p(f"== mixed speeds, simulated rack (image {fmt_size(img.size)}; fast: write 40 MB/s, read 80 MB/s; slow: 4/8 MB/s) ==")
    p(f"   (sticks' backing files under {data_dir})")
    p(f"{'stick':<8} {'finished s, with slow':>22} {'without slow':>13} {'change':>8}")
    changes = []
    for spec in fast:
        name = spec.split(":")[1]
        a, b = with_slow.get(name), without.get(name)
        if a is not None and b is not None and b > 0:
            ch = (a - b) / b
            changes.append(abs(ch))
            p(f"{name:<8} {a:>22.2f} {b:>13.2f} {100 * ch:>7.1f}%")
        else:
            p(f"{name:<8} {a if a is not None else '-':>22} {b if b is not None else '-':>13}")
    p(f"{'slow':<8} {with_slow.get('slow', float('nan')):>22.2f} {'-':>13}")
    if changes:
        mx = max(changes)
        ok = mx <= SIM_CHANGE_TARGET
        res_all["targets"]["slow_stick_change"] = {"value": mx, "target": SIM_CHANGE_TARGET, "pass": ok}
        p(f"max relative change of the fast sticks' finish times = {100 * mx:.1f}%   target <= 5%   {verdict(ok)}")
    else:
        problems.append("sim: no finish times for the fast sticks")

    sticks = [f"sim:t{i:02d}:capacity=2GiB,write=20MB,read=40MB" for i in range(1, 33)]
    fin32, wall32, summary32 = flash(sticks, "32_sticks")
    ideal = img.size / 20e6 + img.size / 40e6
    p()
    p(f"== 32 simulated sticks (write 20 MB/s, read 40 MB/s, image {fmt_size(img.size)}) ==")
    if fin32:
        slowest = max(fin32.values())
        ratio = slowest / ideal
        ok = ratio <= SIM32_TARGET
        res_all["targets"]["32_sticks_slowest_over_ideal"] = {"value": ratio, "target": SIM32_TARGET, "pass": ok}
        p(
            f"  ideal = image/20 MB/s (write) + image/40 MB/s (read) = {img.size / 20e6:.2f} + {img.size / 40e6:.2f} "
            f"= {ideal:.2f}s (no probe, no overhead)"
        )
        p(f"  finish times: fastest {min(fin32.values()):.2f}s, median {med(list(fin32.values())):.2f}s, slowest {slowest:.2f}s; run wall {wall32:.2f}s")
        p(f"  slowest / ideal = {ratio:.3f}   target <= {SIM32_TARGET}   {verdict(ok)}")
        p(f"  flashrack CPU {res_all['32_sticks']['cpu']:.1f}s, peak RSS {res_all['32_sticks']['peak_rss_mib']:.1f} MiB")
    else:
        problems.append("sim: 32-stick run gave no finish times")
    return res_all


if __name__ == "__main__":
    sys.exit(main())
