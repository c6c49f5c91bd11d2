"""Per-op profiles of the paper models: where a forward's time goes, fp32 and int8, host and emulated ARM.

    .venv/bin/python benchmarks/profiles.py [--models ...] [--devices host,qemu-arm64:cortex-a76]

For each model x {fp32, int8} .pte (from ``--out``, converted when missing) and device: ``profile_artifact``
(native runner + ETDump + Inspector, median of ``--iterations`` runs, 1 thread) and, on the host,
instructions per forward under valgrind. Prints a Markdown summary (forward, top operator kinds,
int8<->fp32 Converts) and writes every profile to benchmarks/results/profiles.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from native_runner import _artifact  # noqa: E402

from converters import atomic_write_text  # noqa: E402
from mobilevits.workflows.bench import host_environment  # noqa: E402
from mobilevits.workflows.profile import count_instructions, profile_artifact  # noqa: E402

MODELS = "mobilevit_xxs,levit_128s,mobile_former_294m"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--devices", default="host,qemu-arm64:cortex-a76")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "out/native_bench")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/profiles.json")
    args = ap.parse_args()
    profiles = []
    print("| model | prec | device | forward ms | instr/forward | top 3 operator kinds (share) | Convert ops (share) |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            pte = _artifact(model, precision, args.out)
            for device in args.devices.split(","):
                iters = args.iterations if device == "host" else max(2, args.iterations // 5)
                r = profile_artifact(pte, device=device, iterations=iters, warmup=1)
                if device == "host":
                    r["instructions"] = count_instructions(pte)
                profiles.append(r)
                top = "; ".join(f"{k['kind']} {100 * k['share']:.0f}%" for k in r["kinds"][:3])
                instr = f"{r['instructions']['instructions_per_forward'] / 1e6:.0f} M" if r.get("instructions") else "-"
                label = device + (" (EMULATED)" if r["emulated"] else "")
                print(f"| {model} | {precision} | {label} | {r['total_ms']:.2f} | {instr} | {top} | "
                      f"{r['convert']['count']} ({100 * r['convert']['share']:.1f}%) |", flush=True)
    atomic_write_text(args.json, json.dumps({"environment": host_environment(), "profiles": profiles}, indent=2,
                                            default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
