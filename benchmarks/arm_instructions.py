"""int8 against fp32 on ARM without a phone (issue #19): instructions per forward of the aarch64 native runner.

    .venv/bin/python benchmarks/arm_instructions.py [--models all|m1,m2] [--cpu cortex-a76] [--out out/int8_forms]

For each model, the ExecuTorch fp32 and int8 programs of ``benchmarks/int8_forms.py`` (reused from ``--out``,
converted there when missing; int8 in the forms ExecuTorch takes) run under ``qemu-aarch64 -cpu CPU`` with the
instruction-counting plugin (``mobilevits profile --instructions --device qemu-arm64:CPU``), one thread.
XNNPACK picks its kernels from the emulated CPU's features: ``cortex-a76`` (a phone's big core) has the int8 dot
product this x86 host lacks. Rows are kept in ``--json`` as each model finishes (a rerun skips the models it has);
prints the Markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from int8_forms import FAMILIES, artifact  # noqa: E402

from converters import atomic_write_text  # noqa: E402
from mobilevits.workflows.profile import count_instructions  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all", help="comma-separated, or 'all' (the 21 models of the six families)")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (qemu-aarch64 -cpu help)")
    ap.add_argument("--out", type=Path, default=ROOT / "out/int8_forms")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/arm_instructions.json")
    args = ap.parse_args()
    models = FAMILIES if args.models == "all" else args.models.split(",")
    device = f"qemu-arm64:{args.cpu}"
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    done = {(r["model"], r["device"]) for r in doc["rows"]}
    for model in models:
        if (model, device) in done:
            continue
        t0 = time.time()
        row = {"model": model, "device": device, "date": time.strftime("%Y-%m-%d")}
        for variant, precision in (("fp32", "fp32"), ("int8-default", "int8")):
            path = artifact(model, "executorch", variant, args.out)
            n = count_instructions(path, device=device)
            row[precision] = {"artifact": str(path), "instructions_per_forward": n["instructions_per_forward"],
                              "instructions_load_and_first": n["instructions_load_and_first"], "tool": n["tool"]}
        row["int8_over_fp32"] = row["int8"]["instructions_per_forward"] / row["fp32"]["instructions_per_forward"]
        doc["rows"].append(row)
        doc["rows"].sort(key=lambda r: (r["device"], models.index(r["model"]) if r["model"] in models else 99))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
        print(f"  {model}: int8/fp32 {row['int8_over_fp32']:.2f} ({time.time() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    print(f"| model | fp32 M instr | int8 M instr | int8 / fp32 ({device}) |")
    print("|---|---:|---:|---:|")
    for r in doc["rows"]:
        if r["device"] == device and r["model"] in models:
            f, i = r["fp32"]["instructions_per_forward"], r["int8"]["instructions_per_forward"]
            print(f"| {r['model']} | {f / 1e6:.0f} | {i / 1e6:.0f} | {i / f:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
