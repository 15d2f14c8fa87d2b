#!/usr/bin/env python3
"""Where a benchmark's attempts spent their time, from the records' stage events.

Reads a flashrack data directory's records (`flashrack.db`, read-only) and
prints, for full and sparse attempts side by side, the median time of each
stage (preparing, writing, flushing, verifying; ms, from the `stage_changed`
events) with the bytes written and verified, and the rate of the writing
and verifying stages. `bench/sparse.py` leaves its records in
`WORKDIR/data` (the last run's attempts).

    python3 bench/stages.py /work/bench-cache/sparse/data [--json]

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from pathlib import Path

STAGES = ["preparing", "writing", "flushing", "verifying"]


def attempts(db: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT id, started_at, finished_at, bytes_written, bytes_verified, bytes_skipped, state "
        "FROM attempts WHERE finished_at IS NOT NULL ORDER BY id"
    ).fetchall()
    out = []
    for id_, started, finished, written, verified, skipped, state in rows:
        events = con.execute(
            "SELECT at, json_extract(detail, '$.stage') FROM events "
            "WHERE attempt_id = ? AND kind = 'stage_changed' ORDER BY at, id",
            (id_,),
        ).fetchall()
        spans: dict[str, int] = {}
        for (at, stage), nxt in zip(events, [e[0] for e in events[1:]] + [finished]):
            spans[stage] = spans.get(stage, 0) + (nxt - at)
        out.append(
            {
                "id": id_,
                "case": "sparse" if skipped > 0 else "full",
                "state": state,
                "ms": finished - started,
                "stages": spans,
                "written": written,
                "verified": verified,
            }
        )
    con.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    db = args.data_dir / "flashrack.db"
    if not db.is_file():
        print(f"no records at {db}", file=sys.stderr)
        return 2
    rows = attempts(db)
    summary = {}
    for case in ["full", "sparse"]:
        mine = [r for r in rows if r["case"] == case]
        if not mine:
            continue
        med = lambda xs: statistics.median(xs) if xs else 0
        s = {
            "attempts": len(mine),
            "attempt_ms": med([r["ms"] for r in mine]),
            "written_mib": med([r["written"] for r in mine]) / (1 << 20),
            "verified_mib": med([r["verified"] for r in mine]) / (1 << 20),
        }
        for st in STAGES:
            s[f"{st}_ms"] = med([r["stages"].get(st, 0) for r in mine])
        for st, key in [("writing", "written_mib"), ("verifying", "verified_mib")]:
            ms = s[f"{st}_ms"]
            s[f"{st}_mb_per_s"] = round(s[key] * (1 << 20) / 1e6 / (ms / 1000), 1) if ms else None
        summary[case] = s
    if args.json:
        print(json.dumps({"attempts": rows, "summary": summary}, indent=2))
        return 0
    print("| case | attempts | attempt | " + " | ".join(STAGES) + " | written | verified | write rate | verify rate |")
    print("|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|")
    for case, s in summary.items():
        stages = " | ".join(f"{s[f'{st}_ms']:.0f}" for st in STAGES)
        print(
            f"| {case} | {s['attempts']} | {s['attempt_ms']:.0f} | {stages} | {s['written_mib']:.0f} MiB"
            f" | {s['verified_mib']:.0f} MiB | {s['writing_mb_per_s']} MB/s | {s['verifying_mb_per_s']} MB/s |"
        )
    if "full" in summary and "sparse" in summary:
        f, sp = summary["full"], summary["sparse"]
        for st in ["writing", "verifying"]:
            if f[f"{st}_ms"]:
                print(f"sparse/full {st}: {sp[f'{st}_ms'] / f[f'{st}_ms']:.2f}")
        print(f"sparse/full attempt: {sp['attempt_ms'] / f['attempt_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
