"""``make demo``: the main job on embedded defaults, start to finish, on this machine.

1. list every model with params and MACs next to the papers';
2. train a small model on scikit-learn's digits (real scans, bundled: no download);
3. convert it in fp32 through ExecuTorch, TFLite and Core ML and check each artifact;
4. QAT int8 for each backend, convert, and print the accuracy ledger;
5. write the phone apps' assets for one model;
6. a small latency-vs-resolution sweep on this host's runtimes, with its plot.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from converters import backends

from .report import format_model_table, model_table, table

DEMO_MODEL, DEMO_RES = "mobilevit_xxs", 96
FAST_MODEL, FAST_RES = "mobilevit_tiny", 96


def _say(msg: str) -> None:
    print(msg, flush=True)


def _log(msg: str) -> None:
    print(f"   {msg}", file=sys.stderr, flush=True)


def demo(out: str | Path = "out/demo", fast: bool = False) -> int:
    """Run the whole pipeline on embedded defaults; returns 0 when every check passed."""
    from converters import convert

    from .app_assets import export_app_assets
    from .training import qat, train

    out = Path(out)
    t0 = time.perf_counter()
    model, res = (FAST_MODEL, FAST_RES) if fast else (DEMO_MODEL, DEMO_RES)
    float_epochs, qat_epochs, limit = (4, 1, None) if fast else (6, 2, None)

    _say("== 1. Models: params exact to the papers, MACs from one shared counter ==")
    _say(format_model_table(model_table(show_progress=True)))

    _say(f"\n== 2. Train {model} @ {res} px on digits (float, {float_epochs} epochs) ==")
    tr = train(model, data="digits", resolution=res, epochs=float_epochs, out=out / "train", train_limit=limit,
               log=_log)
    _say(f"val top-1 {100 * tr['val_top1']:.1f}%  weights: {tr['weights']}")

    _say("\n== 3. Convert the float model (fp32) through every path; check each artifact on digits ==")
    rows: list[list[Any]] = []
    ok = True
    fp32: dict[str, str] = {}
    for backend in backends():
        r = convert(model, to=backend, precision="fp32", resolution=res, weights=tr["weights"], num_classes=10,
                    out=out / "fp32", data="digits")
        fp32[backend] = r["artifact"]
        ok &= _row(rows, r)
    _say(table(rows, ["artifact", "MB", "s", "delegated", "SQNR dB", "top-1", "check", "against"]))

    _say(f"\n== 4. Quantization-aware training ({qat_epochs} epochs) and int8 conversion for each backend ==")
    ledgers = []
    rows = []
    for backend in backends():
        q = qat(model, backend=backend, data="digits", weights=tr["weights"], resolution=res, epochs=qat_epochs,
                out=out / f"qat_{backend}", train_limit=limit, log=_log)
        ledgers.append(q)
        ok &= bool((q["check"] or {}).get("passed", False))
    _say(_ledger_table(ledgers))

    _say("\n== 5. Phone app assets ==")
    for app, arts in (("android_demo", [fp32["executorch"], fp32["tflite"]]), ("ios_demo", [fp32["coreml"]])):
        try:
            res_assets = export_app_assets(arts, to=app)
            _say(f"{app}: {res_assets.get('manifest', res_assets)}")
        except Exception as e:  # the apps are optional for the demo; say why and go on
            _say(f"{app}: skipped ({e})")

    _say("\n== 6. Latency vs resolution on this host (relative numbers; phones: --device adb / ios) ==")
    from .bench import bench, format_table

    sweep_model, sweep_res = ("mobilenetv3_tiny", [96, 128]) if fast else ("mobilevit_xxs", [128, 192, 256])
    plot = out / "sweep.png"
    sweep = bench(models=[sweep_model], resolutions=sweep_res, runtime=["executorch", "tflite"], threads=[1],
                  warmup=3, iterations=10 if fast else 20, cooldown=0.5, out=out / "bench", plot=plot, log=_log)
    _say(format_table(sweep))
    _say(f"plot: {plot}")

    _say(f"\nArtifacts, sidecars and checkpoints are in {out}/ ; total {time.perf_counter() - t0:.0f} s.")
    if not ok:
        print("some checks FAILED", file=sys.stderr)
    return 0 if ok else 1


def _row(rows: list[list[Any]], r: dict[str, Any]) -> bool:
    c = r["check"]
    d = r["delegation"]
    backend = Path(r["artifact"]).suffix
    acc = (c.get("accuracy") or {}).get("artifact")
    rows.append([Path(r["artifact"]).name, f"{r['size_bytes'] / 1e6:.2f}", f"{r['seconds']:.0f}",
                 f"{d['delegated']} ops" if backend == ".mlpackage" else f"{100 * d['fraction']:.0f}%",
                 "-" if c["sqnr_db"] is None else c["sqnr_db"], "-" if acc is None else f"{100 * acc:.1f}%",
                 "PASS" if c["passed"] else "FAIL", c["runtime"]])
    return bool(c["passed"])


def _ledger_table(results: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    rows = []
    for q in results:
        led = q["ledger"]
        verdict = "-" if "passed" not in led else "PASS" if led["passed"] else "FAIL"
        rows.append([q["backend"], pct(led["float_top1"]), pct(led["ptq_int8_top1"]), pct(led["qat_int8_top1"]),
                     pct(led.get("quantized_top1")), pct(led["artifact_top1"]), verdict,
                     Path(q["artifact"]).name if q["artifact"] else "-"])
    return table(rows, ["backend", "float", "PTQ int8", "QAT fake-quant", "quantised graph", "artifact",
                        "within 1.5 pt", "file"])
