"""Conversion time of one model, two source trees side by side (issue #17: before/after the staged convert).

    .venv/bin/python benchmarks/convert_time.py --before /tmp/before --after . [--model mobilevit_xs]

Each run is a fresh process (``convert`` with its default check) timed from the call to its return;
the trees alternate run by run so both see the same machine state. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text  # noqa: E402

CHILD = """
import json, sys, time
from converters import convert
t0 = time.perf_counter()
r = convert(sys.argv[1], to=sys.argv[2], precision=sys.argv[3], out=sys.argv[4], show_progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "passed": r["check"]["passed"],
                  "sqnr_db": r["check"]["sqnr_db"]}))
"""


def run_once(tree: Path, model: str, to: str, precision: str) -> dict:
    """One conversion in a fresh interpreter importing the packages of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run([sys.executable, "-c", CHILD, model, to, precision, out], cwd=tree, env=env,
                           capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{tree}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="source tree of the old code (a git worktree)")
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--model", default="mobilevit_xs")
    ap.add_argument("--backends", default="executorch,tflite")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/convert_time.json")
    args = ap.parse_args()
    rows = []
    for to in args.backends.split(","):
        times: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for which in order:
                res = run_once(getattr(args, which).resolve(), args.model, to, args.precision)
                times[which].append(res["seconds"])
                print(f"{to} {which}: {res['seconds']:.1f} s (check passed {res['passed']}, "
                      f"{res['sqnr_db']:.1f} dB)", flush=True)
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        rows.append({"model": args.model, "backend": to, "precision": args.precision, "before_s": times["before"],
                     "after_s": times["after"], "median_before_s": round(b, 1), "median_after_s": round(a, 1),
                     "change": round(a / b - 1, 3)})
    print("\n| backend | before (s) | after (s) | change |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} {row['precision']} | {row['median_before_s']} | {row['median_after_s']} | "
              f"{100 * row['change']:+.0f}% |")
    atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
