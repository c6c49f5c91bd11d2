"""int8 against fp32 on ARM without a phone (issue #19): instructions per forward under an emulated ARM CPU.

    .venv/bin/python benchmarks/arm_instructions.py [--models all|m1,m2] [--backends executorch,tflite]
                                                    [--before] [--form KIND=FORM] [--shard K/N]
                                                    [--cpu cortex-a76] [--out out/int8_forms]

For each model and backend, the fp32 and int8 artifacts of ``benchmarks/int8_forms.py`` (reused from ``--out``,
converted there when missing; int8 as each backend now converts it) run under ``qemu-aarch64 -cpu CPU`` with the
instruction-counting plugin, one thread: ExecuTorch's aarch64 native runner, and LiteRT (ai-edge-litert 1.4) in Debian's
arm64 Python (``mobilevits.workflows.profile.count_instructions``). XNNPACK picks its kernels from the emulated
CPU's features: ``cortex-a76`` (a phone's big core) has the int8 dot product this x86 host lacks. ``--before`` also
counts int8 "before"; ``--form hardswish=native`` also counts int8 with that form instead of the backend's own
(to decide a backend's default for ARM). Rows are kept in
``--json`` as each one finishes (a rerun skips what it has); prints the Markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from int8_forms import FAMILIES, artifact, default_forms, variant_forms  # noqa: E402

from converters import atomic_write_text  # noqa: E402
from mobilevits.workflows.profile import count_instructions  # noqa: E402


def _save(path: Path, row: dict) -> None:
    """Put ``row`` into the rows at ``path`` (replacing the one for its model, backend and device) under a lock,
    so that two runs (``--shard``) can share one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (row["model"], row["backend"], row["device"])
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {"rows": []}
        doc["rows"] = [r for r in doc["rows"] if (r["model"], r["backend"], r["device"]) != key] + [row]
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all", help="comma-separated, or 'all' (the 21 models of the six families)")
    ap.add_argument("--backends", default="executorch,tflite")
    ap.add_argument("--before", action="store_true",
                    help="also count int8 'before' (one-kernel forms, per-op int8 boundaries) where it differs")
    ap.add_argument("--form", action="append", default=[], metavar="KIND=FORM",
                    help="also count int8 with this deploy form instead of the backend's own (repeatable), "
                         "e.g. hardswish=native")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (qemu-aarch64 -cpu help)")
    ap.add_argument("--out", type=Path, default=ROOT / "out/int8_forms")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/arm_instructions.json")
    ap.add_argument("--shard", default="0/1", help="K/N: count every N-th model from the K-th (one qemu per core)")
    args = ap.parse_args()
    kinds = [f.split("=", 1)[0] for f in args.form]
    if any("=" not in f for f in args.form) or len(set(kinds)) != len(kinds):
        ap.error(f"--form takes KIND=FORM, one per kind (got {args.form}); run once per alternative")
    models = FAMILIES if args.models == "all" else args.models.split(",")
    k, n_shards = (int(v) for v in args.shard.split("/"))
    backends = args.backends.split(",")
    device = f"qemu-arm64:{args.cpu}"
    variants = [("fp32", "fp32"), ("int8-default", "int8")] + [("int8-before", "int8_before")] * args.before
    if args.form:  # e.g. ("int8-hardswish=native", "int8 hardswish=native")
        variants.append(("int8-" + ",".join(sorted(args.form)), "int8 " + ",".join(sorted(args.form))))
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    done = {(r["model"], r["backend"], r["device"]): r for r in doc["rows"]}
    for model in models[k::n_shards]:
        for backend in backends:
            row = done.get((model, backend, device))
            if row is not None and all(key in row for _, key in variants):
                continue
            t0 = time.time()
            if row is None:
                row = {"model": model, "backend": backend, "device": device, "date": time.strftime("%Y-%m-%d")}
            for variant, key in variants:
                if key in row:
                    continue
                forms = variant_forms(variant)
                own = default_forms(model, backend) if forms is not None else {}
                # the backend's own forms already, or kinds the model lacks: the same program
                if forms is not None and all(own.get(k, v) == v for k, v in forms.items()):
                    row[key] = dict(row["int8"])
                    continue
                path = artifact(model, backend, variant, args.out)
                if key == "int8_before" and path == Path(row["int8"]["artifact"]):
                    row[key] = dict(row["int8"])  # the same program: nothing changed for this backend
                    continue
                n = count_instructions(path, device=device)
                row[key] = {"artifact": str(path), "instructions_per_forward": n["instructions_per_forward"],
                                  "instructions_load_and_first": n["instructions_load_and_first"], "tool": n["tool"]}
            row["int8_over_fp32"] = row["int8"]["instructions_per_forward"] / row["fp32"]["instructions_per_forward"]
            _save(args.json, row)
            print(f"  {model} {backend}: int8/fp32 {row['int8_over_fp32']:.2f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}  # with the other shards' rows
    by = {(r["model"], r["backend"]): r for r in doc["rows"] if r["device"] == device}
    both = set(backends) >= {"executorch", "tflite"}  # then also ExecuTorch's fp32 against LiteRT's
    print("| model | " + " | ".join(f"{b} fp32 M instr | {b} int8 M instr | {b} int8/fp32" for b in backends)
          + " | ExecuTorch / LiteRT fp32 |" * both)
    print("|---|" + "---:|---:|---:|" * len(backends) + "---:|" * both)
    for model in models:
        cells = []
        for b in backends:
            r = by.get((model, b))
            if r is None:
                cells.append("- | - | -")
                continue
            f, i = r["fp32"]["instructions_per_forward"], r["int8"]["instructions_per_forward"]
            before = r.get("int8_before", {}).get("instructions_per_forward")
            was = f" (before {before / f:.2f})" if before and before != i else ""
            for key in (k for k in r if k.startswith("int8 ")):  # the --form variants
                n = r[key]["instructions_per_forward"]
                was += f" ({key.removeprefix('int8 ')}: {n / f:.2f})" if n != i else ""
            cells.append(f"{f / 1e6:.0f} | {i / 1e6:.0f} | {i / f:.2f}{was}")
        if both:
            e, t = by.get((model, "executorch")), by.get((model, "tflite"))
            cells.append(f"{e['fp32']['instructions_per_forward'] / t['fp32']['instructions_per_forward']:.2f}"
                         if e and t else "-")
        print(f"| {model} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
