"""Softmax-free attention on phones (issue #22): DeiT-Ti against its relu_attention and dw_attention variants.

    .venv/bin/python benchmarks/softmax_free.py                  # latency, then the QAT ledger on digits
    .venv/bin/python benchmarks/softmax_free.py --skip-qat       # latency only

Latency: each model converted at 224 px for ExecuTorch (XNNPACK) and LiteRT, fp32 and int8 (PTQ, checked under
the int8 rule), then all artifacts timed side by side in one process (``mobilevits bench``: one thread, cells
shuffled, ``--rounds`` sessions, median of the session medians). What stays outside int8: ExecuTorch's operator
kinds still in fp32 and its int8<->fp32 Converts (native-runner profile), LiteRT's ops outside its delegate.

Accuracy: each attention kind trained on scikit-learn's digits at 96 px (``--float-epochs``), then fine-tuned
with QAT for ExecuTorch (``--epochs``): the ledger's top-1 figures and the artifact's int8 check.

Writes benchmarks/results/softmax_free.json and prints the Markdown tables of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from qat_ledger import table as ledger_table  # noqa: E402

from converters import atomic_write_text, convert, read_sidecar  # noqa: E402
from mobilevits.workflows.bench import bench, host_environment  # noqa: E402
from mobilevits.workflows.profile import profile_artifact  # noqa: E402
from mobilevits.workflows.training import DivergedError, qat, train  # noqa: E402

MODELS = "deit_tiny,deit_tiny_relu_attention,deit_tiny_dw_attention"
BACKENDS = ("executorch", "tflite")


def log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def latency(models: list[str], rounds: int, iterations: int, out: Path) -> list[dict]:
    arts: dict[tuple[str, str, str], Path] = {}
    for model in models:
        for backend in BACKENDS:
            for precision in ("fp32", "int8"):
                t0 = time.perf_counter()
                r = convert(model, to=backend, precision=precision, out=out, check=True, show_progress=False)
                log(f"  {model} {backend} {precision}: {'reused' if r['reused'] else 'converted'} "
                    f"in {time.perf_counter() - t0:.0f} s, check {'pass' if r['check']['passed'] else 'FAIL'}")
                arts[(model, backend, precision)] = Path(r["artifact"])
    medians: dict[str, list[float]] = {str(p): [] for p in arts.values()}
    for k in range(rounds):
        result = bench(artifacts=list(arts.values()), warmup=5, iterations=iterations, seed=k, out=out / "bench",
                       log=lambda s: None)
        for cell in result["cells"]:
            medians[cell["artifact"]].append(cell["stats"]["median_ms"])
    rows = []
    for (model, backend, precision), path in arts.items():
        meta = read_sidecar(path)
        check = meta.get("check") or {}
        row = {"model": model, "backend": backend, "precision": precision, "artifact": str(path),
               "ms": statistics.median(medians[str(path)]), "session_ms": medians[str(path)],
               "delegation": meta.get("delegation"),
               "check": {k: check.get(k) for k in ("passed", "rule", "sqnr_db", "sqnr_quantised_vs_float_db",
                                                    "margin_db", "top1_agreement", "images")}}
        if backend == "executorch" and precision == "int8":
            p = profile_artifact(path, iterations=10)
            row["converts"], row["convert_share"] = p["convert"]["count"], p["convert"]["share"]
            # XNNPACK's operator names carry the datatype: "... (F32)" kinds are the fp32 islands
            row["fp32_kinds"] = [{"kind": k["kind"], "count": k["count"], "share": k["share"]} for k in p["kinds"]
                                 if "F32" in k["kind"] and not k["kind"].startswith("Convert")]
        rows.append(row)
    return rows


def latency_table(rows: list[dict], models: list[str]) -> list[str]:
    by = {(r["model"], r["backend"], r["precision"]): r for r in rows}
    lines = ["| model | backend | fp32 ms | int8 ms | int8 / fp32 | outside int8 | int8 check (rule, SQNR, margin, "
             "agreement, images) |", "|---|---|---:|---:|---:|---|---|"]
    for model in models:
        for backend in BACKENDS:
            f, q = by[(model, backend, "fp32")], by[(model, backend, "int8")]
            if backend == "executorch":
                kinds = ", ".join(f"{k['kind']} x{k['count']} {100 * k['share']:.0f}%" for k in q["fp32_kinds"][:4])
                still = f"{q['converts']} Converts ({100 * q['convert_share']:.0f}% of time); fp32: {kinds or 'none'}"
            else:
                ops = (q["delegation"] or {}).get("not_delegated_ops") or {}
                still = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) or "none"
            c = q["check"]
            margin = "-" if c["margin_db"] is None else f"{c['margin_db']:+.1f} dB"
            check = (f"{'pass' if c['passed'] else 'FAIL'} ({c['rule']}, {c['sqnr_db']:.1f} dB, {margin}, "
                     f"{100 * c['top1_agreement']:.1f}%, {c['images']})")
            lines.append(f"| {model} | {backend} | {f['ms']:.2f} | {q['ms']:.2f} | {q['ms'] / f['ms']:.2f} | "
                         f"{still} | {check} |")
    return lines


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    """Grouped bars: latency of each model per (backend, precision), one thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["model"], r["backend"], r["precision"]): r["ms"] for r in rows}
    groups = [(b, p) for b in BACKENDS for p in ("fp32", "int8")]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [by[(model, b, p)] for b, p in groups], width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{'LiteRT' if b == 'tflite' else 'ExecuTorch'} {p}" for b, p in groups])
    ax.set_ylabel("ms per image (median, 1 thread)")
    ax.set_title("DeiT-Ti at 224: softmax vs softmax-free attention (host CPU)")
    ax.set_ylim(0, max(by.values()) * 1.25)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=len(models), loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ledger(models: list[str], float_epochs: int, epochs: int, out: Path) -> list[dict]:
    """Float training then QAT for ExecuTorch, per model; a finished run in ``out`` is read back, not redone."""
    results = []
    for model in models:
        t0 = time.perf_counter()
        fl = train(model, resolution=96, epochs=float_epochs, out=out / model / "float", resume=True,
                   show_progress=False, log=log)
        done = sorted((out / model / "executorch").glob("*_int8.pte.json"))
        meta = json.loads(done[0].read_text()) if done else {}
        row = {"model": model, "resolution": 96, "backend": f"{model}, executorch", "float_top1": fl["val_top1"]}
        if meta.get("ledger") and meta.get("check"):
            row.update(ledger=meta["ledger"], check=meta["check"], artifact=str(done[0])[:-len(".json")])
        else:
            try:
                r = qat(model, backend="executorch", weights=fl["weights"], resolution=96, epochs=epochs,
                        out=out / model / "executorch", show_progress=False, log=log)
                row.update({k: r[k] for k in ("ledger", "check", "artifact")})
            except DivergedError as e:  # reported as a row: QAT of this attention kind does not train
                row["error"] = str(e)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(row)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--rounds", type=int, default=3, help="bench sessions, cells shuffled in each")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--float-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip-qat", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "out/softmax_free")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/softmax_free.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/softmax_free.png")
    ap.add_argument("--tables-only", action="store_true", help="print the tables and plot from --json")
    args = ap.parse_args()
    models = args.models.split(",")
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if args.tables_only:
        args.skip_latency = args.skip_qat = True
    else:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        doc.update(environment=host_environment())
        # each part records when and at which commit it ran: --skip-* runs keep the other part's results
        stamp = {"date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip()}
    if not args.skip_latency:
        doc["latency"] = {"rounds": args.rounds, "iterations": args.iterations, **stamp,
                          "rows": latency(models, args.rounds, args.iterations, args.out / "latency")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(doc, indent=1, default=str) + "\n")
    if not args.skip_qat:
        doc["qat"] = {"float_epochs": args.float_epochs, "epochs": args.epochs, **stamp,
                      "results": ledger(models, args.float_epochs, args.epochs, args.out / "qat")}
        atomic_write_text(args.json, json.dumps(doc, indent=1, default=str) + "\n")
    if "latency" in doc:
        print("\n".join(latency_table(doc["latency"]["rows"], models)))
        plot(doc["latency"]["rows"], models, args.plot)
    if "qat" in doc:
        print()
        print("\n".join(ledger_table([r for r in doc["qat"]["results"] if "ledger" in r])))
        for r in doc["qat"]["results"]:
            if "error" in r:
                print(f"\n{r['model']} (float top-1 {100 * r['float_top1']:.1f}%): {r['error']}")
    for part in ("latency", "qat"):
        if part in doc:
            print(f"\n{part}: {doc[part]['date']}, git {doc[part]['commit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
