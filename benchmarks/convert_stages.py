"""Where conversion time goes (issue #24): seconds per stage for each model x backend x precision, next to
ExecuTorch's documented route, and several backends converted side by side against one after the other.

    .venv/bin/python benchmarks/convert_stages.py [--models mobilevit_xxs,levit_128s,mobile_former_294m]
        [--precisions fp32,int8] [--skip-parallel] [--json benchmarks/results/convert_stages.json]

Every conversion runs in a fresh interpreter (what a user's `mobilevits convert` pays, imports included) with
``force=True`` (no reuse), one at a time on a quiet machine. The documented route is ExecuTorch's own recipe on
the same architecture and weights: ``torch.export.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)``
-> ``to_executorch`` -> write (int8: ``prepare_pt2e`` / calibrate / ``convert_pt2e`` with the XNNPACK quantizer
first), without our checks. Results are written after each row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text  # noqa: E402

OURS = """
import json, sys, time
t0 = time.perf_counter()
from converters import convert
t_import = time.perf_counter() - t0
r = convert(sys.argv[1], to=sys.argv[2], precision=sys.argv[3], out=sys.argv[4], force=True, show_progress=False)
print(json.dumps({"import": t_import, "stages": r["stages"], "convert_s": r["seconds"],
                  "total_s": time.perf_counter() - t0, "passed": r["check"]["passed"],
                  "sqnr_db": r["check"]["sqnr_db"]}))
"""

# ExecuTorch's documented XNNPACK route, on the same model and input (our float source, deploy-formulated
# for ExecuTorch and the precision, as convert does).
DOCUMENTED = """
import json, sys, time
t0 = time.perf_counter()
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
import mobilevits
from converters import get_converter
t_import = time.perf_counter() - t0
name, precision, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = get_converter("executorch").prepare_model(mobilevits.create_model(name).eval(), precision)
x = (torch.randn(1, 3, model.resolution, model.resolution),)
stages = {}
t = time.perf_counter()
ep = torch.export.export(model, x)
stages["export"] = time.perf_counter() - t
if precision == "int8":
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    t = time.perf_counter()
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    m = prepare_pt2e(ep.module(), q)
    for _ in range(8):
        m(*x)
    m = convert_pt2e(m)
    ep = torch.export.export(m, x)
    stages["quantize"] = time.perf_counter() - t
t = time.perf_counter()
prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
stages["lower"] = time.perf_counter() - t
t = time.perf_counter()
with open(out + "/model.pte", "wb") as f:
    prog.write_to_file(f)
stages["write"] = time.perf_counter() - t
print(json.dumps({"import": t_import, "stages": stages, "total_s": time.perf_counter() - t0}))
"""

PARALLEL = """
import json, sys, time
t0 = time.perf_counter()
from converters import convert_many
if __name__ == "__main__":
    rs = convert_many(sys.argv[1], sys.argv[2].split(","), precision=sys.argv[3], out=sys.argv[4], force=True,
                      jobs=int(sys.argv[5]), show_progress=False)
    print(json.dumps({"total_s": time.perf_counter() - t0, "passed": all(r["check"]["passed"] for r in rs)}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"  # a file, not -c: spawned workers re-import the main module
        script.write_text(code)
        out = Path(tmp) / "out"
        out.mkdir()
        argv = [a if a != "{out}" else str(out) for a in args]
        p = subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else str(p.returncode)
        raise RuntimeError(f"{args}: {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilevit_xxs,levit_128s,mobile_former_294m")
    ap.add_argument("--backends", default="executorch,tflite,coreml")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--skip-parallel", action="store_true")
    ap.add_argument("--parallel-only", action="store_true", help="add the side-by-side runs to an existing --json")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/convert_stages.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "rows": [], "parallel": []}

    def save() -> None:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")

    if args.parallel_only:
        result = json.loads(args.json.read_text())
    for model in args.models.split(","):
        for precision in ([] if args.parallel_only else args.precisions.split(",")):
            for backend in args.backends.split(","):
                r = _child(OURS, model, backend, precision, "{out}")
                result["rows"].append({"model": model, "backend": backend, "precision": precision, "route": "ours",
                                       **r})
                print(f"{model} {backend} {precision}: {r['total_s']:.0f} s {r['stages']}", flush=True)
                save()
            try:
                d = _child(DOCUMENTED, model, precision, "{out}")
            except RuntimeError as e:  # the documented route can fail where ours does not: record why
                d = {"error": str(e).split(": ", 1)[-1]}
            result["rows"].append({"model": model, "backend": "executorch", "precision": precision,
                                   "route": "documented", **d})
            print(f"{model} executorch {precision} documented: {d}", flush=True)
            save()
        if not args.skip_parallel:
            for jobs in (1, 2):
                p = _child(PARALLEL, model, args.backends, "fp32", "{out}", str(jobs))
                result["parallel"].append({"model": model, "backends": args.backends, "precision": "fp32",
                                           "jobs": jobs, **p})
                print(f"{model} --to {args.backends} fp32 jobs={jobs}: {p['total_s']:.0f} s", flush=True)
                save()
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    """The tables BENCHMARKS.md shows."""
    keys = ["plan", "export", "quantize", "lower", "write", "check"]
    lines = ["| model | backend | precision | route | import | " + " | ".join(keys) + " | total (s) |",
             "|---" * (6 + len(keys)) + "|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['route']} | fails: "
                         f"{r['error'][:90]} |" + " |" * len(keys) + " - |")
            continue
        st = r["stages"]
        lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['route']} | {r['import']:.1f} | "
                     + " | ".join("-" if k not in st else f"{st[k]:.1f}" for k in keys)
                     + f" | {r['total_s']:.0f} |")
    if result["parallel"]:
        lines += ["", "| model | --to | jobs | wall (s) |", "|---|---|---|---|"]
        lines += [f"| {p['model']} | {p['backends']} {p['precision']} | {p['jobs']} | {p['total_s']:.0f} |"
                  for p in result["parallel"]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
