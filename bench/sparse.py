#!/usr/bin/env python3
"""Sparse writing on loop devices, side by side (issue 15 §2).

One image with ~60 % of its bytes mapped (an ext4 file system filled by
`mkfs.ext4 -d`), its block map made by `bmaptool create`, and three ways of
putting it on the same loop devices, interleaved rep by rep:

  flashrack full     flashrack flash SHA /dev/loopX … (write everything, read
                     everything back from the medium)
  flashrack sparse   the same with --sparse: only the map's ranges written, and
                     every one of them read back from the medium
  bmaptool copy      bmaptool copy --bmap IMAGE.bmap IMAGE /dev/loopX (writes the
                     ranges, checks the image's bytes against the map's
                     checksums as it reads them; reads nothing back from the
                     stick)

flashrack imports the image with --bmap IMAGE.bmap (the same map; checked
against the image), outside the timing. Before every run each target is
scribbled over (random bytes over the whole image area), synced, and the
caches dropped, so no run finds its work done and every run starts cold.
Bytes read from and written to each device come from /sys/block/loopX/stat.

Targets: sparse <= 1.1 x bmaptool copy's wall time, and <= 0.75 x flashrack's
own full write + verify. Python 3.11, standard library only; needs root.

    sudo python3 bench/sparse.py [--n 1] [--reps 3] [--image-size 1GiB] [--fill 0.6]
    sudo python3 bench/sparse.py --flashrack OLD --flashrack NEW   # both, interleaved rep by rep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
ATTACHED: list[str] = []


def log(msg: str) -> None:
    print(f"[sparse-bench] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} exited {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dev_stat(dev: str) -> tuple[int, int]:
    """(bytes read, bytes written) of a block device since it was attached."""
    f = Path(f"/sys/block/{os.path.basename(dev)}/stat").read_text().split()
    return int(f[2]) * 512, int(f[6]) * 512


def disk_of(path: Path) -> Path | None:
    """The sysfs stat file of the whole disk holding `path` (None for tmpfs
    and other virtual file systems)."""
    st = os.stat(path)
    dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if os.major(st.st_dev) == 0 or not dev.exists():
        return None
    dev = dev.resolve()
    # A partition's stat counts only its own share: use the disk's.
    if (dev / "partition").exists():
        dev = dev.parent
    return dev / "stat"


def disk_stat(stat: Path | None) -> tuple[int, int]:
    """(bytes read, bytes written) of a whole disk since boot (0, 0 for none)."""
    if stat is None:
        return 0, 0
    f = stat.read_text().split()
    return int(f[2]) * 512, int(f[6]) * 512


def detach_all() -> None:
    while ATTACHED:
        dev = ATTACHED.pop()
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def on_signal(signum, frame):
    detach_all()
    sys.exit(130)


def make_image(workdir: Path, size: int, fill: float) -> Path:
    """An ext4 image of `size` bytes whose files hold `fill` of it (random
    bytes, in files of 1-64 MiB), kept for the next run."""
    image = workdir / f"ext4-{size}-{int(fill * 100)}.img"
    if image.exists() and image.stat().st_size == size:
        return image
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    left = int(size * fill)
    n = 0
    while left > 0:
        part = min(left, (1 + (n * 37) % 64) * MIB)
        with open(root / f"f{n:04}.bin", "wb") as f:
            done = 0
            while done < part:
                chunk = min(part - done, 8 * MIB)
                f.write(os.urandom(chunk))
                done += chunk
        left -= part
        n += 1
    tmp = image.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(tmp)])
    tmp.rename(image)
    shutil.rmtree(root)
    return image


def scribble(devs: list[str], size: int) -> None:
    """Random bytes over each target's image area (in 8 MiB pieces, every
    other piece, so it stays quick), then sync and cold caches."""
    block = os.urandom(8 * MIB)
    for dev in devs:
        fd = os.open(dev, os.O_WRONLY)
        try:
            for off in range(0, size, 16 * MIB):
                os.pwrite(fd, block[: min(8 * MIB, size - off)], off)
            os.fsync(fd)
        finally:
            os.close(fd)
    drop_caches()


def timed(tool: str, argv_per_dev: list[list[str]] | list[str], devs: list[str], disk: Path | None) -> dict:
    before = {d: dev_stat(d) for d in devs}
    disk_before = disk_stat(disk)
    t0 = time.monotonic()
    if isinstance(argv_per_dev[0], list):
        procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argv_per_dev]
        outs = [p.communicate() for p in procs]
        codes = [p.returncode for p in procs]
    else:
        p = subprocess.run(argv_per_dev, capture_output=True, text=True)
        outs, codes = [(p.stdout, p.stderr)], [p.returncode]
    wall = time.monotonic() - t0
    after = {d: dev_stat(d) for d in devs}
    disk_after = disk_stat(disk)
    for c, (out, err) in zip(codes, outs):
        if c != 0:
            raise SystemExit(f"{tool} exited {c}: {err.strip()[-800:]}")
    read = sum(after[d][0] - before[d][0] for d in devs) / len(devs)
    written = sum(after[d][1] - before[d][1] for d in devs) / len(devs)
    return {
        "tool": tool,
        "wall": wall,
        "read": read,
        "written": written,
        # The machine's disk under the loop devices' backing files: the
        # targets' traffic plus the source's reads when the image is there too.
        "disk_read": disk_after[0] - disk_before[0],
        "disk_written": disk_after[1] - disk_before[1],
        "stdout": outs[0][0],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/var/tmp/flashrack-bench-sparse")
    ap.add_argument("--n", type=int, default=1, help="loop devices written at once")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--image-size", default="1GiB")
    ap.add_argument("--fill", type=float, default=0.6, help="share of the image the files take")
    ap.add_argument(
        "--loop-direct-io",
        action="store_true",
        help="attach the loop devices with --direct-io=on (each write reaches the disk as it is made, as on a stick)",
    )
    ap.add_argument(
        "--source-dir",
        default=None,
        help="keep the image and its map here instead of WORKDIR (e.g. a tmpfs such as /dev/shm, so that "
        "reading the source does not share the disk with the loop devices' backing files, as on a station "
        "whose sticks are not its system disk); the same image for every tool",
    )
    ap.add_argument(
        "--flashrack",
        action="append",
        default=None,
        help="binary (default: target/release/flashrack, built); given more than once, every binary's "
        "full and sparse cases run interleaved rep by rep in the same time window (old and new side by side)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, drop_caches)", file=sys.stderr)
        return 2
    units = {"GiB": GIB, "MiB": MIB}
    size = next(int(args.image_size[: -len(u)]) * m for u, m in units.items() if args.image_size.endswith(u))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    if args.flashrack:
        binaries = [Path(b) for b in args.flashrack]
    else:
        run(["cargo", "build", "--release", "-q", "-p", "flashrack-cli"], cwd=repo)
        binaries = [repo / "target/release/flashrack"]
    # One label and one data directory per binary: `data` for a single one (as
    # before), `data-<label>` for each of several (bench/stages.py reads either).
    labels: list[str] = []
    for b in binaries:
        label = b.name
        while label in labels:
            label += "'"
        labels.append(label)
    several = len(binaries) > 1
    image = make_image(workdir, size, args.fill)
    bmap = image.with_suffix(".bmap")
    if not bmap.exists():
        bmap.write_text(run(["bmaptool", "create", str(image)]).stdout)
    if args.source_dir:
        source_dir = Path(args.source_dir)
        source_dir.mkdir(parents=True, exist_ok=True)
        for f in (image, bmap):
            copy = source_dir / f.name
            if not copy.exists() or copy.stat().st_size != f.stat().st_size:
                shutil.copyfile(f, copy)
        image, bmap = source_dir / image.name, source_dir / bmap.name
    disk = disk_of(workdir)
    datas = {}
    for fr, label in zip(binaries, labels):
        data = workdir / (f"data-{label}" if several else "data")
        shutil.rmtree(data, ignore_errors=True)
        imported = json.loads(
            run([str(fr), "--data-dir", str(data), "image", "import", str(image), "--bmap", str(bmap), "--json"]).stdout
        )
        sha = imported["sha256"]
        mapped = imported["block_map"]["mapped_bytes"]
        datas[label] = data
    log(f"image {image.name}: {size / MIB:.0f} MiB, bmap maps {mapped / MIB:.1f} MiB ({100 * mapped / size:.1f} %)")
    load_start = os.getloadavg()
    log(f"load average at the start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    devs = []
    try:
        for i in range(args.n):
            backing = workdir / f"loop{i}.img"
            with open(backing, "wb") as f:
                f.truncate(size + 64 * MIB)
            dio = ["--direct-io=on"] if args.loop_direct_io else []
            dev = run(["losetup", "--find", "--show", *dio, str(backing)]).stdout.strip()
            ATTACHED.append(dev)
            devs.append(dev)
        # Prime the backing files (first-write allocation is not any tool's cost).
        for dev in devs:
            run(["dd", f"if={image}", f"of={dev}", "bs=4M", "oflag=direct", "conv=fsync", "status=none"])

        cases = {}
        for fr, label in zip(binaries, labels):
            flash = [str(fr), "--data-dir", str(datas[label]), "flash", sha, *devs, "--allow-bus", "loop", "--json", "--quiet"]
            suffix = f" [{label}]" if several else ""
            for kind, extra in [("full", []), ("sparse", ["--sparse"])]:
                name = f"flashrack {kind}{suffix}"
                cases[name] = lambda name=name, argv=flash + extra: timed(name, argv, devs, disk)
        cases["bmaptool copy"] = lambda: timed(
            "bmaptool copy",
            [["bmaptool", "-q", "copy", "--bmap", str(bmap), str(image), d] for d in devs],
            devs,
            disk,
        )
        results: dict[str, list[dict]] = {k: [] for k in cases}
        for rep in range(args.reps):
            for name, case in cases.items():
                scribble(devs, size)
                r = case()
                if name.startswith("flashrack"):
                    summary = json.loads(r.pop("stdout"))
                    rows = summary["targets"] if "targets" in summary else summary.get("rows", [])
                    # Every target passed: a refused one is counted apart
                    # from the failed ones (`refused`), so `failed` alone is not enough.
                    if summary.get("passed") != len(devs):
                        raise SystemExit(f"{name}: a target did not pass: {json.dumps(summary)[:800]}")
                    r["summary_rows"] = rows
                else:
                    r.pop("stdout")
                results[name].append(r)
                log(
                    f"rep {rep + 1} {name}: {r['wall']:.2f} s, rd {r['read'] / MIB:.0f} MiB, wr {r['written'] / MIB:.0f} MiB "
                    f"per device; disk rd {r['disk_read'] / MIB:.0f} MiB, wr {r['disk_written'] / MIB:.0f} MiB"
                )
    finally:
        detach_all()
        for i in range(args.n):
            (workdir / f"loop{i}.img").unlink(missing_ok=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    load_end = os.getloadavg()
    print(f"\nsparse case: {size / MIB:.0f} MiB ext4 image, {100 * mapped / size:.1f} % mapped by bmaptool's map, "
          f"N = {args.n}, {args.reps} reps (median [min-max]), {'direct-I/O' if args.loop_direct_io else 'buffered'} "
          f"loop devices, the source {'in ' + str(args.source_dir) if args.source_dir else 'on the same disk'}; load average (1/5/15 min) {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f} "
          f"at the start, {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} at the end\n")
    print("| tool | wall s | rd MiB/dev | wr MiB/dev | disk rd MiB | disk wr MiB |")
    print("|---|---|---|---|---|---|")
    for name in cases:
        walls = [r["wall"] for r in results[name]]
        print(f"| {name} | {med(name, 'wall'):.2f} [{min(walls):.2f}-{max(walls):.2f}] | "
              f"{med(name, 'read') / MIB:.0f} | {med(name, 'written') / MIB:.0f} | "
              f"{med(name, 'disk_read') / MIB:.0f} | {med(name, 'disk_written') / MIB:.0f} |")
    bmaptool = med("bmaptool copy", "wall")
    ratios = {}
    for label in labels:
        suffix = f" [{label}]" if several else ""
        sparse, full = med(f"flashrack sparse{suffix}", "wall"), med(f"flashrack full{suffix}", "wall")
        t1, t2 = sparse / bmaptool, sparse / full
        ratios[label] = {"sparse_over_bmaptool": t1, "sparse_over_full": t2}
        print(f"\n{label}:" if several else "")
        print(f"sparse / bmaptool copy = {t1:.3f} (target <= 1.1: {'PASS' if t1 <= 1.1 else 'MISS'})")
        print(f"sparse / full          = {t2:.3f} (target <= 0.75: {'PASS' if t2 <= 0.75 else 'MISS'})")
    out = workdir / f"results-{int(time.time())}.json"
    out.write_text(
        json.dumps(
            {
                "size": size,
                "mapped": mapped,
                "n": args.n,
                "loop_direct_io": args.loop_direct_io,
                "source_dir": args.source_dir,
                "binaries": {label: str(b) for label, b in zip(labels, binaries)},
                "load_start": load_start,
                "load_end": load_end,
                "ratios": ratios,
                "results": results,
            },
            indent=1,
        )
    )
    log(f"raw results in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        detach_all()
