"""The QAT accuracy ledger of one model on every backend, as a table for BENCHMARKS.md.

    .venv/bin/python benchmarks/qat_ledger.py                       # mobilevit_tiny, digits, 96 px
    .venv/bin/python benchmarks/qat_ledger.py --float-epochs 4 --epochs 2 --out out/qat
    # issue #20: at 224 on a generated ImageFolder, with and without distillation from the float model
    .venv/bin/python benchmarks/qat_ledger.py --models mobilevit_xxs,levit_128s --resolution 224 \
        --data generated:1000 --teacher self --float-epochs 3 --epochs 2 --qat-train-limit 256 \
        --results benchmarks/results/qat_ledger_folder.json

Trains each float model once (``mobilevits train``), then runs ``mobilevits qat`` from those weights for
ExecuTorch, TFLite and Core ML (W8A8; numerics from the NumPy MIL executor off macOS), and prints
one row per model and backend: the ledger's top-1 figures (with ``--teacher``, QAT with and without
distillation), the paired step differences with their 95% intervals, and the artifact's int8 check under the
int8 rule. ``--data generated:N`` makes (and reuses) the 10-class folder of ``streaming_data.py``: crops of ten
photos, one photo per class, so it is easy to learn; it shows whether each stage keeps what the float model
learned, not how a model does on real classes. Raw results go to ``benchmarks/results/qat_ledger.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text  # noqa: E402
from mobilevits.workflows.training import qat, train  # noqa: E402


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _step(s: dict | None) -> str:
    if not s:
        return "-"
    lo, hi = s["ci95"]
    return f"{100 * s['difference']:+.2f} ({100 * lo:+.1f}, {100 * hi:+.1f})"


def table(results: list[dict]) -> list[str]:
    """One Markdown row per backend."""
    head = ("| model | backend | float | PTQ int8 | QAT fake-quant | QAT + KD | quantised graph | artifact | "
            "QAT - float pt | convert step pt | artifact - quantised pt | ledger | check rule | SQNR vs quantised | "
            "quantised vs float | margin | agreement | check |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        led, c = r["ledger"], r["check"] or {}
        steps = led.get("steps", {})
        margin = "-" if c.get("margin_db") is None else f"{c['margin_db']:+.1f} dB"
        lines.append(
            f"| {r['model']} | {r['backend']} | {_pct(led['float_top1'])} | {_pct(led['ptq_int8_top1'])} | "
            f"{_pct(led['qat_int8_top1'])} | {_pct(led.get('qat_kd_int8_top1'))} | "
            f"{_pct(led.get('quantized_top1'))} | {_pct(led['artifact_top1'])} | "
            f"{_step(steps.get('qat_vs_float'))} | {_step(steps.get('quantized_vs_qat'))} | "
            f"{_step(steps.get('artifact_vs_quantized'))} | {'pass' if led.get('passed') else 'FAIL'} | "
            f"{c.get('rule')} | {c.get('sqnr_db', 0):.1f} dB | {c.get('sqnr_quantised_vs_float_db') or 0:.1f} dB | "
            f"{margin} | {100 * c.get('top1_agreement', 0):.1f}% | {'pass' if c.get('passed') else 'FAIL'} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilevit_tiny", help="comma-separated")
    ap.add_argument("--data", default="digits", help="digits, an ImageFolder, or generated:N (N JPEGs, 10 classes)")
    ap.add_argument("--teacher", default=None, help="qat --teacher (e.g. self): adds the QAT + KD column")
    ap.add_argument("--distillation", default=None, choices=("soft", "hard"), help="qat --distillation")
    ap.add_argument("--append", action="store_true", help="add these rows to the results file's (same settings)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--qat-train-limit", type=int, default=None, help="QAT on the first N training images only")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--float-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backends", default="executorch,tflite,coreml")
    ap.add_argument("--out", default="out/qat_ledger")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "qat_ledger.json"))
    args = ap.parse_args()
    out = Path(args.out)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    data = args.data
    if data.startswith("generated:"):
        from streaming_data import make_folder

        n = int(data.split(":", 1)[1])
        data = str(make_folder(out / f"folder_{n}", n))
    results, seconds = [], {}
    for model in args.models.split(","):
        t0 = time.perf_counter()
        fl = train(model, data=data, resolution=args.resolution, epochs=args.float_epochs,
                   out=out / model / "float", show_progress=False, log=log, workers=args.workers)
        seconds[f"{model}/float"] = round(time.perf_counter() - t0, 1)
        for b in args.backends.split(","):
            t0 = time.perf_counter()
            r = qat(model, backend=b, data=data, weights=fl["weights"], resolution=args.resolution,
                    epochs=args.epochs, out=out / model / b, show_progress=False, log=log, workers=args.workers,
                    teacher=args.teacher, distillation=args.distillation, train_limit=args.qat_train_limit)
            seconds[f"{model}/{b}"] = round(time.perf_counter() - t0, 1)
            results.append({k: r[k] for k in ("model", "backend", "resolution", "ledger", "check", "artifact",
                                              "train_data", "val_data")})
            log("\n".join(table(results)))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    raw = {"date": time.strftime("%Y-%m-%d"), "commit": commit.strip(), "argv": sys.argv[1:], "seconds": seconds,
           "results": results}
    if args.append and Path(args.results).is_file():
        old = json.loads(Path(args.results).read_text())
        for r in results:
            r["argv"], r["commit"] = sys.argv[1:], raw["commit"]
        raw = {**old, "results": old["results"] + results, "seconds": {**old["seconds"], **seconds},
               "runs": old.get("runs", [{"argv": old["argv"], "commit": old["commit"], "date": old["date"]}])
               + [{"argv": sys.argv[1:], "commit": raw["commit"], "date": raw["date"]}]}
        results = raw["results"]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.results), json.dumps(raw, indent=2, default=str))
    print("\n".join(table(results)))
    print(f"\n{raw['date']}, git {raw['commit']}, seconds {seconds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
