"""``make demo``: the main job on embedded defaults, start to finish, on this machine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .report import format_model_table, model_table, table

DEMO_MODEL = "mobilevit_xxs"


def _say(msg: str) -> None:
    print(msg, flush=True)


def demo(out: str | Path = "out/demo", fast: bool = False) -> int:
    """List every model, then convert one through ExecuTorch, TFLite and Core ML and check each artifact.

    Returns a process exit code: 0 when every check passed.
    """
    from converters import convert

    out = Path(out)
    t0 = time.perf_counter()
    _say("== 1. Models (params exact to the papers; MACs by one shared counter) ==")
    _say(format_model_table(model_table(show_progress=True)))

    model, res = ("mobilevit_tiny", 96) if fast else (DEMO_MODEL, 256)
    _say(f"\n== 2. Convert {model} @ {res} through every path, then check each artifact on real photos ==")
    rows = []
    ok = True
    for backend, precision in (("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"),
                               ("tflite", "int8"), ("coreml", "fp32"), ("coreml", "fp16")):
        _say(f"-- {backend} {precision} ...")
        r = convert(model, to=backend, precision=precision, resolution=res, out=out)
        c = r["check"]
        ok &= bool(c["passed"])
        d = r["delegation"]
        rows.append([Path(r["artifact"]).name, f"{r['size_bytes'] / 1e6:.2f}", f"{r['seconds']:.0f}",
                     f"{100 * d['fraction']:.0f}%" if backend != "coreml" else f"{d['delegated']} ops",
                     "-" if c["sqnr_db"] is None else c["sqnr_db"], "PASS" if c["passed"] else "FAIL",
                     "structural only (needs macOS)" if c["sqnr_db"] is None else c["reference"]])
    _say(table(rows, ["artifact", "MB", "s", "delegated", "SQNR dB", "check", "against"]))
    _say(f"\nArtifacts and sidecars are in {out}/ ; total {time.perf_counter() - t0:.0f} s.")
    if not ok:
        print("some checks FAILED", file=sys.stderr)
    return 0 if ok else 1
