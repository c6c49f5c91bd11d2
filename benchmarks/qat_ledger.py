"""The QAT accuracy ledger of one model on every backend, as a table for BENCHMARKS.md.

    .venv/bin/python benchmarks/qat_ledger.py                       # mobilevit_tiny, digits, 96 px
    .venv/bin/python benchmarks/qat_ledger.py --float-epochs 4 --epochs 2 --out out/qat

Trains the float model once (``mobilevits train``), then runs ``mobilevits qat`` from those weights for
ExecuTorch, TFLite and Core ML (W8A8; numerics from the NumPy MIL executor off macOS), and prints
one row per backend: the ledger's five top-1 figures, the paired step differences with their 95%
intervals, and the artifact's int8 check under the int8 rule. Raw results go to
``benchmarks/results/qat_ledger.json``.
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
    head = ("| backend | float | PTQ int8 | QAT fake-quant | quantised graph | artifact | QAT - float pt | "
            "convert step pt | artifact - quantised pt | ledger | check rule | SQNR vs quantised | "
            "quantised vs float | margin | agreement | check |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        led, c = r["ledger"], r["check"] or {}
        steps = led.get("steps", {})
        margin = "-" if c.get("margin_db") is None else f"{c['margin_db']:+.1f} dB"
        lines.append(
            f"| {r['backend']} | {_pct(led['float_top1'])} | {_pct(led['ptq_int8_top1'])} | "
            f"{_pct(led['qat_int8_top1'])} | {_pct(led.get('quantized_top1'))} | {_pct(led['artifact_top1'])} | "
            f"{_step(steps.get('qat_vs_float'))} | {_step(steps.get('quantized_vs_qat'))} | "
            f"{_step(steps.get('artifact_vs_quantized'))} | {'pass' if led.get('passed') else 'FAIL'} | "
            f"{c.get('rule')} | {c.get('sqnr_db', 0):.1f} dB | {c.get('sqnr_quantised_vs_float_db') or 0:.1f} dB | "
            f"{margin} | {100 * c.get('top1_agreement', 0):.1f}% | {'pass' if c.get('passed') else 'FAIL'} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilevit_tiny")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--float-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backends", default="executorch,tflite,coreml")
    ap.add_argument("--out", default="out/qat_ledger")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "qat_ledger.json"))
    args = ap.parse_args()
    out = Path(args.out)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    fl = train(args.model, resolution=args.resolution, epochs=args.float_epochs, out=out / "float",
               show_progress=False, log=log)
    results, seconds = [], {"float": round(time.perf_counter() - t0, 1)}
    for b in args.backends.split(","):
        t0 = time.perf_counter()
        r = qat(args.model, backend=b, weights=fl["weights"], resolution=args.resolution, epochs=args.epochs,
                out=out / b, show_progress=False, log=log)
        seconds[b] = round(time.perf_counter() - t0, 1)
        results.append({k: r[k] for k in ("model", "backend", "resolution", "ledger", "check", "artifact")})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    raw = {"date": time.strftime("%Y-%m-%d"), "commit": commit.strip(), "argv": sys.argv[1:], "seconds": seconds,
           "results": results}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.results), json.dumps(raw, indent=2, default=str))
    print("\n".join(table(results)))
    print(f"\n{raw['date']}, git {raw['commit']}, seconds {seconds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
