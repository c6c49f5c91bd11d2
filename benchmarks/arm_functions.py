"""Where LiteRT's int8 forward spends its instructions on a phone's core, operator by operator (issue #19).

    .venv/bin/python benchmarks/arm_functions.py [--models m1,m2] [--cpu cortex-a76] [--out out/int8_forms]

For each model, the fp32 and int8 .tflite of ``benchmarks/int8_forms.py`` (reused from ``--out``, converted there
when missing) run in LiteRT (ai-edge-litert 1.4, Debian's arm64 Python) under ``qemu-aarch64 -cpu CPU`` with the
counting plugin's per-block counts; each block is named by the function that holds it (LiteRT's wheel keeps its
symbol table), per forward from (I(11) - I(1)) / 10 (``count_instructions(by_function=True)``). XNNPACK's
microkernels say their operation in their names; they are grouped below into operations, TFLite's own kernels
(ops the delegate left to LiteRT) into one group. This is the per-operator profile LiteRT has no ETDump for.
Rows are kept in ``--json`` (a rerun skips what it has); prints the Markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from arm_instructions import _save  # noqa: E402
from int8_forms import artifact  # noqa: E402

from mobilevits.workflows.profile import count_instructions  # noqa: E402

# (group, test on the XNNPACK operation or the function name), first match wins
GROUPS: list[tuple[str, re.Pattern]] = [
    ("conv 1x1 / matmul (GEMM)", re.compile(r"^(f32|qs8|qd8|qu8)\w*_gemm|^xnn_compute_gemm")),
    ("conv kxk (IGEMM)", re.compile(r"^(f32|qs8|qd8|qu8)\w*_igemm|^xnn_compute_igemm")),
    ("depthwise conv", re.compile(r"dwconv")),
    ("pad", re.compile(r"_pad\b|^xx_pad|^xnn_compute_pad")),
    ("elementwise add/mul", re.compile(r"_v(add|mul|sub)c?$|elementwise_binary")),
    ("hardswish/sigmoid/clamp", re.compile(r"_v(hswish|sigmoid|clamp|lrelu|tanh)$|unary_ukernel")),
    ("int8<->fp32 convert", re.compile(r"_vcvt$")),
    ("mean (reduce)", re.compile(r"_r(d)?sum|_rmax|reduce")),
    ("softmax", re.compile(r"raddstoreexpminusmax|vscaleexpminusmax|_rmax")),
    ("transpose/copy", re.compile(r"transpose|memcpy|memmove|_copy")),
    ("TFLite kernels outside XNNPACK", re.compile(r"^(void )?tflite::(optimized|reference)_\w*ops|"
                                                  r"^(void )?tflite::ops::builtin")),
]


def group_of(fn: dict) -> str:
    """The operation group of one function row of ``count_instructions(by_function=True)``."""
    name = fn["family"] or fn["function"]
    for group, test in GROUPS:
        if test.search(name):
            return group
    return "other (runtime, scheduling, Python)"


def groups(functions: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for fn in functions:
        g = group_of(fn)
        out[g] = out.get(g, 0.0) + fn["instructions_per_forward"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv3_small_075,mobilenetv3_small_100,mobilenetv3_large_075,"
                                        "mobile_former_26m,mobilenetv3_large_100",
                    help="comma-separated (default: LiteRT's models above 0.67 and one below, for contrast)")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (qemu-aarch64 -cpu help)")
    ap.add_argument("--out", type=Path, default=ROOT / "out/int8_forms")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/arm_functions.json")
    args = ap.parse_args()
    device = f"qemu-arm64:{args.cpu}"
    models = args.models.split(",")
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    done = {(r["model"], r["device"]) for r in doc["rows"]}
    for model in models:
        if (model, device) in done:
            continue
        t0 = time.time()
        row = {"model": model, "backend": "tflite", "device": device, "date": time.strftime("%Y-%m-%d")}
        for variant, key in (("fp32", "fp32"), ("int8-default", "int8")):
            path = artifact(model, "tflite", variant, args.out)
            n = count_instructions(path, device=device, by_function=True)
            row[key] = {"artifact": str(path), "instructions_per_forward": n["instructions_per_forward"],
                        "tool": n["tool"], "groups": groups(n["functions"]), "top": n["functions"][:25]}
        _save(args.json, row)
        print(f"  {model}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    doc = json.loads(args.json.read_text())
    by = {r["model"]: r for r in doc["rows"] if r["device"] == device}
    names = [g for g, _ in GROUPS] + ["other (runtime, scheduling, Python)"]
    for model in (m for m in models if m in by):
        r = by[model]
        f, i = r["fp32"]["instructions_per_forward"], r["int8"]["instructions_per_forward"]
        print(f"\n{model}: fp32 {f / 1e6:.1f} M, int8 {i / 1e6:.1f} M instructions per forward ({i / f:.2f})\n")
        print("| operation | fp32 M instr | int8 M instr | int8 - fp32 |")
        print("|---|---:|---:|---:|")
        for g in names:
            a, b = r["fp32"]["groups"].get(g, 0.0), r["int8"]["groups"].get(g, 0.0)
            if max(abs(a), abs(b)) >= 0.005 * f:
                print(f"| {g} | {a / 1e6:.2f} | {b / 1e6:.2f} | {(b - a) / 1e6:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
