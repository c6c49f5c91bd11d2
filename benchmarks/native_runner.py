"""Native ExecuTorch runner vs the Python bindings: the same .pte files, timed side by side.

    .venv/bin/python benchmarks/native_runner.py [--models ...] [--iterations 30] [--rounds 2]

Each model is converted (fp32 and int8, default resolution, random init with re-randomised norms) into
``out/native_bench`` (reused when present), then every .pte is timed through ``bench`` with runtimes
``executorch`` (Python bindings) and ``executorch-native`` (the C++ runner) in one session, cells in a
shuffled order, ``--rounds`` sessions with different orders. Prints a Markdown table (median of the
rounds' medians, ratio native / bindings) and writes the raw cells to benchmarks/results/native_runner.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text, convert, read_sidecar  # noqa: E402
from mobilevits.workflows.bench import bench, host_environment  # noqa: E402

MODELS = "mobilevit_xxs,levit_128s,mobile_former_294m,mobilenetv3_large_100,efficientnet_b0"


def _artifact(model: str, precision: str, out: Path) -> Path:
    """The model's .pte in ``out``, converted when missing (no check: the check suite covers it)."""
    for p in out.glob(f"{model}_*_executorch_{precision}.pte"):
        if read_sidecar(p)["source"]["name"] == model:
            return p
    return Path(convert(model, to="executorch", precision=precision, out=out, check=False,
                        show_progress=False)["artifact"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "out/native_bench")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/native_runner.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ptes = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            t0 = time.perf_counter()
            ptes.append(_artifact(model, precision, args.out))
            print(f"{ptes[-1].name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    cells = []
    for r in range(args.rounds):
        res = bench(ptes, runtime="executorch,executorch-native", threads=[1], warmup=args.warmup,
                    iterations=args.iterations, seed=r, out=args.out, log=lambda s: None)
        cells += [dict(c, round=r) for c in res["cells"]]
    rows = []
    for pte in ptes:
        meta = read_sidecar(pte)
        med = {rt: statistics.median(c["stats"]["median_ms"] for c in cells
                                     if c["artifact"] == str(pte) and c["runtime"] == rt)
               for rt in ("executorch", "executorch-native")}
        rows.append({"model": meta["source"]["name"], "resolution": meta["source"]["resolution"],
                     "precision": meta["precision"], "bindings_ms": round(med["executorch"], 3),
                     "native_ms": round(med["executorch-native"], 3),
                     "ratio": round(med["executorch-native"] / med["executorch"], 3)})
    print("\n| model | res | precision | Python bindings (ms) | native runner (ms) | native / bindings |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['resolution']} | {row['precision']} | {row['bindings_ms']:.2f} | "
              f"{row['native_ms']:.2f} | {row['ratio']:.2f} |")
    atomic_write_text(args.json, json.dumps({"environment": host_environment(), "rows": rows, "cells": cells},
                                            indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
