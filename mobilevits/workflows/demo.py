"""``make demo``: the main job on embedded defaults, in a few minutes; ``make demo-full``: the walkthrough.

``demo()`` (``mobilevits demo``, ``make demo``) does what a mobile engineer comes for, on real images:

1. fine-tune MobileViT-XXS on scikit-learn's digits (real scans, bundled) so the checks compare a model that
   has learnt something, not a random init (reused on a second run);
2. convert it for Android (ExecuTorch, TFLite) and iOS (Core ML), the backends side by side in worker
   processes, and check every artifact against PyTorch on the held-out digits;
3. time each artifact this host can run;
4. write the phone apps' assets;
5. print the commands that go further (QAT int8, phones, the full walkthrough).

``demo(full=True)`` (``mobilevits demo --full``, ``make demo-full``) is the whole walkthrough: the model table,
fp32 and QAT int8 through every backend with the accuracy ledger, app assets and a resolution sweep.
Every stage prints its elapsed time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from converters import backends

from .report import conversion_table, format_model_table, model_table, table

DEMO_MODEL, DEMO_RES, DEMO_EPOCHS = "mobilevit_xxs", 96, 6
FAST_MODEL, FAST_RES = "mobilevit_tiny", 96  # --fast: a smoke test of the same stages (tests run it)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _log(msg: str) -> None:
    print(f"   {msg}", file=sys.stderr, flush=True)


@contextmanager
def _stage(title: str, times: dict[str, float]) -> Iterator[None]:
    """Print a stage's title, then its elapsed time when it ends (kept in ``times`` for the summary)."""
    _say(f"\n== {title} ==")
    t = time.perf_counter()
    yield
    times[title] = time.perf_counter() - t
    _say(f"-- {times[title]:.0f} s")


def _train(model: str, res: int, epochs: int, out: Path, train_limit: int | None) -> dict[str, Any]:
    """Train, or pick up the finished run in ``out`` (the same weights come back, so conversions are reused)."""
    from .training import OtherRunError, train

    kw = dict(data="digits", resolution=res, epochs=epochs, out=out, train_limit=train_limit, log=_log)
    try:
        return train(model, resume=True, **kw)
    except OtherRunError as e:  # a run with other settings in that folder: start afresh, say so
        _log(f"{e}; training afresh")
        return train(model, resume=False, **kw)


def demo(out: str | Path = "out/demo", full: bool = False, fast: bool = False, jobs: int | None = None) -> int:
    """The main job on embedded defaults (``full``: the whole walkthrough); returns 0 when every check passed."""
    if full:
        return demo_full(out, fast)
    from converters import convert_many

    from .app_assets import export_app_assets
    from .bench import bench, format_table

    out = Path(out)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    model, res, epochs, limit = (FAST_MODEL, FAST_RES, 1, 256) if fast else (DEMO_MODEL, DEMO_RES, DEMO_EPOCHS, None)

    with _stage(f"1. Fine-tune {model} @ {res} px on digits ({epochs} epochs; real scans bundled with "
                "scikit-learn)", times):
        tr = _train(model, res, epochs, out / "train", limit)
        _say(f"val top-1 {100 * tr['val_top1']:.1f}%   weights: {tr['weights']}")

    targets = backends()
    with _stage(f"2. Convert for Android ({', '.join(b for b in targets if b != 'coreml')}) and iOS (coreml), "
                "side by side; check each artifact on the held-out digits", times):
        results = convert_many(model, targets, precision="fp32", jobs=jobs, log=_log, resolution=res,
                               weights=tr["weights"], out=out / "fp32", data="digits")
        _say(conversion_table(results))
        ok = all(r["check"]["passed"] for r in results)
        _say(f"PyTorch top-1 on the same images: {_pct(results[0]['check'])}; every artifact is compared with it "
             "image by image (SQNR of the logits, top-1 agreement)")
    art = {r["backend"]: r["artifact"] for r in results}

    with _stage("3. Latency of each artifact on this host (one thread; phones: see below)", times):
        host = [art[b] for b in ("executorch", "tflite") if b in art]
        lat = bench(host, threads=[1], warmup=3, iterations=10 if fast else 30, cooldown=0.2, out=out / "bench",
                    log=_log)
        _say(format_table(lat))
        if "coreml" in art:
            _say("Core ML runs on macOS and iPhone only: time it there with "
                 f"`mobilevits bench {art['coreml']} --device ios`")

    with _stage("4. Phone app assets (android_demo, ios_demo)", times):
        for app, arts in (("android_demo", [art.get("executorch"), art.get("tflite")]),
                          ("ios_demo", [art.get("coreml")])):
            arts = [a for a in arts if a]
            try:
                _say(f"{app}: {export_app_assets(arts, to=app)['manifest']}")
            except Exception as e:  # the app folders are optional (a pip install has none): say why, go on
                _say(f"{app}: skipped ({e})")

    w, pte = tr["weights"], art.get("executorch", "ARTIFACT.pte")
    _say("\n== Next ==")
    _say("\n".join([
        f"int8 that keeps its accuracy (QAT, then convert and check):\n"
        f"  mobilevits qat {model} --backend executorch --data digits --resolution {res} --weights {w}",
        f"on a phone (USB debugging), or on an emulated ARM core (qemu-user; its times are not a phone's):\n"
        f"  mobilevits bench {pte} --device adb\n  mobilevits bench {pte} --device qemu-arm64",
        f"where the time goes, op by op:\n  mobilevits profile {pte}",
        "your own model or a pretrained one (timm/..., hf-hub:..., official checkpoints):\n"
        "  mobilevits convert levit_128s --to executorch,tflite,coreml --weights FILE --labels imagenet1k",
        "the whole walkthrough (QAT for every backend, accuracy ledger, resolution sweep; 20+ min here):\n"
        "  make demo-full",
    ]))
    total = time.perf_counter() - t0
    _say(f"\nDone in {total:.0f} s (" + ", ".join(f"{k.split('.')[0]}: {v:.0f} s" for k, v in times.items())
         + f"). Artifacts, sidecars and checkpoints are in {out}/")
    if not ok:
        print("some checks FAILED", file=sys.stderr)
    return 0 if ok else 1


def _pct(check: dict[str, Any] | None) -> str:
    acc = ((check or {}).get("accuracy") or {}).get("pytorch_float")
    return "-" if acc is None else f"{100 * acc:.1f}%"


def demo_full(out: str | Path = "out/demo", fast: bool = False) -> int:
    """The whole walkthrough on embedded defaults; returns 0 when every check passed."""
    from converters import convert

    from .app_assets import export_app_assets
    from .training import qat

    out = Path(out) / "full"
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    model, res = (FAST_MODEL, FAST_RES) if fast else (DEMO_MODEL, DEMO_RES)
    float_epochs, qat_epochs, limit = (1, 1, 256) if fast else (DEMO_EPOCHS, 2, None)

    with _stage("1. Models: params exact to the papers, MACs from one shared counter", times):
        _say(format_model_table(model_table(show_progress=True)))

    with _stage(f"2. Train {model} @ {res} px on digits (float, {float_epochs} epochs)", times):
        tr = _train(model, res, float_epochs, out / "train", limit)
        _say(f"val top-1 {100 * tr['val_top1']:.1f}%  weights: {tr['weights']}")

    with _stage("3. Convert the float model (fp32) through every path; check each artifact on digits", times):
        converted = [convert(model, to=backend, precision="fp32", resolution=res, weights=tr["weights"],
                             out=out / "fp32", data="digits") for backend in backends()]
        fp32 = {b: r["artifact"] for b, r in zip(backends(), converted)}
        ok = all(r["check"]["passed"] for r in converted)
        _say(conversion_table(converted))

    with _stage(f"4. Quantization-aware training ({qat_epochs} epochs) and int8 conversion for each backend",
                times):
        ledgers = []
        for backend in backends():
            q = qat(model, backend=backend, data="digits", weights=tr["weights"], resolution=res, epochs=qat_epochs,
                    out=out / f"qat_{backend}", train_limit=limit, log=_log)
            ledgers.append(q)
            ok &= bool((q["check"] or {}).get("passed", False))
        _say(_ledger_table(ledgers))

    with _stage("5. Phone app assets", times):
        for app, arts in (("android_demo", [fp32["executorch"], fp32["tflite"]]), ("ios_demo", [fp32["coreml"]])):
            try:
                res_assets = export_app_assets(arts, to=app)
                _say(f"{app}: {res_assets.get('manifest', res_assets)}")
            except Exception as e:  # the apps are optional for the demo; say why and go on
                _say(f"{app}: skipped ({e})")

    with _stage("6. Latency vs resolution on this host (relative numbers; phones: --device adb / ios)", times):
        from .bench import bench, format_table

        sweep_model, sweep_res = ("mobilenetv3_tiny", [96, 128]) if fast else ("mobilevit_xxs", [128, 192, 256])
        plot = out / "sweep.png"
        sweep = bench(models=[sweep_model], resolutions=sweep_res, runtime=["executorch", "tflite"], threads=[1],
                      warmup=3, iterations=10 if fast else 20, cooldown=0.5, out=out / "bench", plot=plot, log=_log)
        _say(format_table(sweep))
        _say(f"plot: {plot}")

    _say(f"\nDone in {time.perf_counter() - t0:.0f} s. Artifacts, sidecars and checkpoints are in {out}/")
    if not ok:
        print("some checks FAILED", file=sys.stderr)
    return 0 if ok else 1


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
