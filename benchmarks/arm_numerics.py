"""ARM numerics: every family's .pte checked on emulated ARM CPUs against its PyTorch source and the host.

    .venv/bin/python benchmarks/arm_numerics.py [--models ...] [--cpus cortex-a53,cortex-a76,max,max,sme=off]

For each model (default: one per family) x {fp32, int8} x backend: the .pte or .tflite (converted into
``--out`` when missing, random init with re-randomised norms), checked by ``check_artifact`` on the host's
Python runtime and on ``qemu-arm64:CPU`` for each CPU (the native runner; LiteRT (ai-edge-litert 1.4) in Debian's
arm64 Python for .tflite), on the same photos. Reports the check's
SQNR against the reference (float source, or the quantised graph for int8) and pass/fail by the same
rules, plus the SQNR of the ARM output against the host's output. Needs qemu-user and
g++-aarch64-linux-gnu (``make system-deps``); ``$MOBILEVITS_QEMU`` picks another qemu-aarch64 (``max`` with
SME needs qemu >= 10). Writes benchmarks/results/arm_numerics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from native_runner import _artifact  # noqa: E402

from converters import (  # noqa: E402
    Session,
    atomic_write_text,
    check_artifact,
    convert,
    get_converter,
    read_sidecar,
    sqnr_db,
)
from mobilevits.workflows.bench import host_environment  # noqa: E402
from mobilevits.workflows.machines import NativeSession, open_device, qemu_binary, qemu_version  # noqa: E402

MODELS = "mobilevit_xxs,levit_128s,mobile_former_294m,sepvit_lite,mobilenetv3_large_100,efficientnet_b0"
# qemu's `max` has SVE, SVE2, i8mm and SME; `max,sme=off` is the same CPU without SME
CPUS = ("cortex-a53", "cortex-a76", "max", "max,sme=off")


class Recording(Session):
    """Passes ``run`` to another session and keeps the last output (to compare devices on the same images)."""

    def __init__(self, inner: Session, name: str) -> None:
        self.inner, self.output = inner, None
        self.runtime_version = name
        self.device_spec = getattr(inner, "device_spec", None)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.output = self.inner.run(x)
        return self.output

    def close(self) -> None:
        self.inner.close()


def _converted(model: str, backend: str, precision: str, out: Path) -> Path:
    if backend == "executorch":
        return _artifact(model, precision, out)
    for p in out.glob(f"{model}_*_{backend}_{precision}.*"):
        if p.suffix != ".json" and read_sidecar(p)["source"]["name"] == model:
            return p
    return Path(convert(model, to=backend, precision=precision, out=out, check=False,
                        show_progress=False)["artifact"])


def _row(r: dict[str, Any], host_out: np.ndarray | None, out: np.ndarray | None, seconds: float) -> dict[str, Any]:
    return {"passed": r["passed"], "sqnr_db": r["sqnr_db"], "rule": r.get("rule"),
            "sqnr_vs_float_db": r["sqnr_vs_float_db"], "top1_agreement": r["top1_agreement"],
            "vs_host_sqnr_db": None if host_out is None or out is None else sqnr_db(host_out, out),
            "identical_to_host": bool(host_out is not None and out is not None and np.array_equal(host_out, out)),
            "seconds": round(seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--backends", default="executorch", help="executorch and/or tflite")
    ap.add_argument("--cpus", default=";".join(CPUS), help="semicolon-separated qemu CPU models")
    ap.add_argument("--limit", type=int, default=3, help="photos per check")
    ap.add_argument("--out", type=Path, default=ROOT / "out/native_bench")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/arm_numerics.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, precision, backend in [(m, p, b) for m in args.models.split(",") for p in args.precisions.split(",")
                                      for b in args.backends.split(",")]:
        pte = _converted(model, backend, precision, args.out)
        t0 = time.perf_counter()
        host = Recording(get_converter(backend).open(pte), f"{backend} (host, Python)")
        r = check_artifact(pte, limit=args.limit, show_progress=False, session=host)
        row = {"model": model, "precision": precision, "backend": backend, "artifact": pte.name,
               "host": _row(r, None, host.output, time.perf_counter() - t0)}
        for cpu in args.cpus.split(";"):
            t0 = time.perf_counter()
            with open_device(f"qemu-arm64:{cpu}") as dev:
                arm = Recording(NativeSession(dev, pte), f"qemu-arm64:{cpu}")
                r = check_artifact(pte, limit=args.limit, show_progress=False, session=arm)
            row[cpu] = _row(r, host.output, arm.output, time.perf_counter() - t0)
            c = row[cpu]
            vs_host = "identical" if c["identical_to_host"] else f"{c['vs_host_sqnr_db']:.1f} dB"
            print(f"{model:22s} {backend:10s} {precision:5s} {cpu:12s} {'PASS' if c['passed'] else 'FAIL'} "
                  f"{c['sqnr_db']:7.1f} dB (host {row['host']['sqnr_db']:.1f}), vs host {vs_host} "
                  f"({c['seconds']:.0f} s)", flush=True)
        rows.append(row)
    atomic_write_text(args.json, json.dumps({"environment": host_environment(), "limit": args.limit,
                                             "qemu": {"binary": qemu_binary(), "version": qemu_version()},
                                             "cpus": args.cpus.split(";"), "rows": rows}, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
