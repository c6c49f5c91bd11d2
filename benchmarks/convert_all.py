"""Convert every model through every path, check each artifact, time them, and record it in BENCHMARKS.md.

    .venv/bin/python benchmarks/convert_all.py                    # all models, default resolutions (hours)
    .venv/bin/python benchmarks/convert_all.py --resume           # go on after an interrupted run
    .venv/bin/python benchmarks/convert_all.py --models mobilevit_xxs,levit_128s --no-latency
    .venv/bin/python benchmarks/convert_all.py --report-only      # BENCHMARKS.md from the saved results
    .venv/bin/python benchmarks/convert_all.py --resume --redo --models mobilevit_xxs --paths executorch:fp32

Phase 1, per model and path (``--paths``): conversion time (export, quantise, lower; without the
check), artifact size, delegation, and the host check (SQNR vs the PyTorch source on scikit-image's
photos; Core ML through the NumPy MIL executor off macOS) with its time. Models are randomly
initialised with re-randomised norms (seed 0), never degenerate zero-init norms; int8 is
post-training quantisation calibrated on the photos. Results are saved after every cell, so
``--resume`` loses nothing.

Phase 2 (unless ``--no-latency``): the ExecuTorch and LiteRT artifacts of phase 1 (converted again
if a resumed run no longer has them on disk) and PyTorch eager are timed by the shared harness
(:func:`mobilevits.workflows.bench.bench`: shuffled cells, cool-down, median of ``--iterations`` after
``--warmup``) at each of ``--threads``. Do not run anything else meanwhile.

The Markdown tables replace the section between the markers in BENCHMARKS.md; the raw results go
to ``benchmarks/results/convert_all.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mobilevits  # noqa: E402
from converters import (  # noqa: E402
    atomic_write_text,
    check_artifact,  # noqa: E402
    convert,  # noqa: E402
    tool_versions,
)
from mobilevits.workflows.bench import bench, host_environment  # noqa: E402

DEFAULT_PATHS = "executorch:fp32,executorch:int8,tflite:fp32,tflite:int8,coreml:fp32,coreml:fp16,coreml:int8"
TIMED = ("executorch", "tflite")  # runtimes that run on this host
PER_OP = ("executorch", "tflite")  # int8 runtimes whose per-op check judges (Core ML's only names)
BEGIN, END = "<!-- convert_all:begin -->", "<!-- convert_all:end -->"
# latency rows saved before each row named its host (cpu_isa): their run's host is known only by its CPU's name
UNRECORDED_HOST = "not recorded per row (timed before cpu_isa was recorded; see the text above the table)"
NOISY_CV = 0.15  # a timed cell this variable was disturbed (see latency_table)


def _save(path: Path, data: dict[str, Any]) -> None:
    """Write the results atomically: an interrupted run never leaves a truncated file."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _error_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def convert_cell(model: str, backend: str, precision: str, out: Path) -> dict[str, Any]:
    """Convert one model for one path, then check it; failures are recorded, not raised."""
    row: dict[str, Any] = {"model": model, "backend": backend, "precision": precision,
                           "resolution": mobilevits.get_model_info(model).default_resolution}
    try:
        r = convert(model, to=backend, precision=precision, out=out, check=False, show_progress=False)
    except Exception as e:  # a failed cell is a result: record it and go on
        row["error"] = _error_line(e)
        return row
    row.update(artifact=r["artifact"], convert_s=r["seconds"], size_mb=round(r["size_bytes"] / 1e6, 3),
               delegation=r["delegation"])
    t0 = time.perf_counter()
    try:
        c = check_artifact(r["artifact"], show_progress=False)
    except Exception as e:
        row["check_error"] = _error_line(e)
        return row
    row["check_s"] = round(time.perf_counter() - t0, 2)
    row["check"] = {k: c.get(k) for k in ("runtime", "sqnr_db", "sqnr_vs_float_db", "threshold_db", "passed",
                                           "top1_agreement", "top5_agreement", "max_abs_error", "note", "rule",
                                           "sqnr_quantised_vs_float_db", "margin_db", "images", "rule_note",
                                           "escalated_from")}
    if precision == "int8" and backend in PER_OP and not c.get("passed"):
        row["per_op"] = per_op_check(r["artifact"])
    return row


def per_op_check(artifact: str | Path) -> dict[str, Any]:
    """An int8 artifact that failed end to end, checked op by op (``check --layers`` on the first photo): how many
    of its int8 activations are within one int8 step of the quantised graph when each op is recomputed from the
    artifact's own inputs. All of them within: the program is faithful and the end-to-end miss is rounding ties
    compounding through depth (random-init logits over 1000 classes are near ties); any off: a real divergence."""
    t0 = time.perf_counter()
    try:
        c = check_artifact(artifact, limit=1, layers=True, show_progress=False)
    except Exception as e:
        return {"error": _error_line(e)}
    rows = c.get("layers") or []
    return {"compared": len(rows), "within": sum(r["status"] == "ok" for r in rows),
            "runtime_identical": c.get("layers_runtime_identical"), "first_divergence": c.get("first_divergence"),
            "seconds": round(time.perf_counter() - t0, 1)}


def _per_op_verdict(r: dict[str, Any]) -> str:
    p = r.get("per_op")
    if not p:
        return ""
    if "error" in p:
        return f" (per-op check failed: {p['error']})"
    faithful = p["within"] == p["compared"] and p["runtime_identical"] is not False
    return f" (per-op: {p['within']}/{p['compared']} within one int8 step{'' if faithful else ', DIVERGED'})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated (default: every registered model)")
    ap.add_argument("--paths", default=DEFAULT_PATHS, help=f"backend:precision list (default {DEFAULT_PATHS})")
    ap.add_argument("--out", default="out/benchmarks", help="folder for the artifacts")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "convert_all.json"),
                    help="raw results (JSON), saved after every cell")
    ap.add_argument("--resume", action="store_true", help="keep the finished cells of --results")
    ap.add_argument("--redo", action="store_true",
                    help="with --resume: convert the cells of --models x --paths again even when saved "
                         "(after a change to the models or converters); other cells are kept")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the BENCHMARKS.md tables from --results; convert and time nothing")
    args = ap.parse_args()
    if args.report_only:
        raw = Path(args.results)
        if not raw.is_file():
            ap.error(f"no saved results at {raw}; run without --report-only first")
        write_markdown(json.loads(raw.read_text()), Path(args.markdown), "--report-only of the saved results")
        print(f"wrote {args.markdown} from {raw}", file=sys.stderr)
        return 0
    models = args.models.split(",") if args.models else mobilevits.list_models()
    for m in models:
        mobilevits.get_model_info(m)  # unknown names fail here, before hours of work
    paths = [tuple(p.split(":")) for p in args.paths.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = Path(args.results)
    raw.parent.mkdir(parents=True, exist_ok=True)

    data: dict[str, Any] = {"environment": host_environment(), "conversions": [], "latency": None}
    if args.resume and raw.exists():
        old = json.loads(raw.read_text())
        if old.get("environment", {}).get("tool_versions") == tool_versions():
            data["conversions"] = [r for r in old.get("conversions", []) if "error" not in r]
            data["latency"] = old.get("latency")
            data["latency_settings"] = old.get("latency_settings")
        else:
            print("tool versions changed since the saved run: starting over", file=sys.stderr)
    selected = {(m, b, p) for m in models for b, p in paths}
    if args.redo:
        data["conversions"] = [r for r in data["conversions"]
                               if (r["model"], r["backend"], r["precision"]) not in selected]
        # their old timings describe artifacts that are about to be replaced
        data["latency"] = [c for c in data["latency"] or []
                           if (c["model"], c["runtime"], c["precision"]) not in selected] or None
    done = {(r["model"], r["backend"], r["precision"]) for r in data["conversions"]}

    todo = [(m, b, p) for m in models for b, p in paths if (m, b, p) not in done]
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="cell", file=sys.stderr)
    for m, b, p in todo:
        if bar is not None:
            bar.set_description(f"{m} {b} {p}")
        else:
            print(f"{m} -> {b} {p}", file=sys.stderr, flush=True)
        data["conversions"].append(convert_cell(m, b, p, out))
        _save(raw, data)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()

    if not args.no_latency:
        rows = [r for r in data["conversions"] if r["model"] in models and r["backend"] in TIMED and "artifact" in r]
        for r in rows:
            if not Path(r["artifact"]).exists():  # a resumed run on a machine without phase 1's files
                print(f"{Path(r['artifact']).name} is gone: converting again", file=sys.stderr, flush=True)
                r.update(convert_cell(r["model"], r["backend"], r["precision"], out))
                _save(raw, data)
        # the artifacts (each on its own runtime, shuffled together), then PyTorch eager: the harness takes
        # --runtime as a filter on artifacts, so eager ("torch") needs its own call
        kw = dict(threads=threads, warmup=args.warmup, iterations=args.iterations, out=out,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
        res = bench(artifacts=[r["artifact"] for r in rows if "artifact" in r], **kw)
        eager = bench(models=models, runtime="torch", **kw)
        host = host_tag(data["environment"])
        fresh = [{**{k: c.get(k) for k in ("model", "resolution", "runtime", "precision", "threads")},
                  **{k: c["stats"].get(k) for k in ("median_ms", "p10_ms", "p90_ms", "cv")}, "host": host,
                  "warmup": args.warmup, "iterations": args.iterations}
                 for c in res["cells"] + eager["cells"]]
        # every cell of a timed model is replaced together (ratios only mean something within one run and
        # one host); the other models keep their rows, each naming the host it was timed on
        timed = {c["model"] for c in fresh}
        data["latency"] = [c for c in data["latency"] or [] if c["model"] not in timed] + fresh
        data["latency_settings"] = res["settings"]
        _save(raw, data)
    write_markdown(data, Path(args.markdown), " ".join(sys.argv[1:]))
    print(f"wrote {args.markdown} and {raw}", file=sys.stderr)
    return 0


def host_tag(env: dict[str, Any]) -> str:
    """The host a latency cell was timed on: CPU name, family/model, int8-relevant ISA, date and commit."""
    isa = "+".join(env.get("cpu_isa") or []) or "ISA not recorded"
    ident = f"{env.get('cpu_id')}; " if env.get("cpu_id") else ""
    return (f"{env.get('cpu')} ({ident}{isa}), {env.get('cpu_count')} cores, {time.strftime('%Y-%m-%d')}, "
            f"git {str(env.get('git_commit'))[:7]}")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def conversion_table(rows: list[dict[str, Any]]) -> list[str]:
    """One Markdown row per model x path: time, size, delegation, check."""
    head = "| model | path | convert s | MB | delegated | outside the delegate | SQNR dB (threshold) | check |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        path_s = f"{r['backend']} {r['precision']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {path_s} | failed: {r['error']} | | | | | |")
            continue
        d = r["delegation"]
        if r["backend"] == "coreml":
            deleg, outside = f"{d.get('delegated', '-')} ops", "-"
        else:
            deleg = f"{100 * d['fraction']:.0f}%"
            outside = ", ".join(f"{k} x{v}" for k, v in d.get("not_delegated_ops", {}).items()) or "none"
        c = r.get("check")
        if c is None:
            verdict, sq = f"error: {r.get('check_error', '?')}", "-"
        else:
            verdict = "pass" if c["passed"] else "FAIL" + _per_op_verdict(r)
            sq = f"{_fmt(c['sqnr_db'])} ({_fmt(c['threshold_db'], 0)})"
        lines.append(f"| {r['model']} | {path_s} | {_fmt(r['convert_s'], 0)} | {r['size_mb']:.1f} | {deleg} | "
                     f"{outside} | {sq} | {verdict} |")
    return lines


def int8_table(rows: list[dict[str, Any]]) -> list[str]:
    """The int8 rule per model and path: which rule decided, SQNR vs the quantised graph, quantisation noise
    (quantised graph vs float), margin, top-1 agreement, images, verdict."""
    head = ("| model | path | rule | SQNR vs quantised dB | quantised vs float dB | margin dB | top-1 agreement | "
            "images | check |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r.get("check")
        if r["precision"] != "int8" or not c or c.get("rule") is None:
            continue
        margin = "-" if c.get("margin_db") is None else f"{c['margin_db']:+.1f}"
        lines.append(f"| {r['model']} | {r['backend']} int8 | {c['rule']} | {_fmt(c['sqnr_db'])} | "
                     f"{_fmt(c.get('sqnr_quantised_vs_float_db'))} | {margin} | {100 * c['top1_agreement']:.1f}% | "
                     f"{c.get('images')} | {'pass' if c['passed'] else 'FAIL'} |")
    return lines if len(lines) > 2 else []


def latency_table(cells: list[dict[str, Any]], threads: list[int]) -> list[str]:
    """Median ms per model and runtime, with the ExecuTorch/LiteRT and int8/fp32 ratios at 1 thread.

    A cell whose coefficient of variation exceeds ``NOISY_CV`` is marked with ``*``: on a shared host a
    burst of interference makes a cell bimodal, so the ratio of the cells' 10th percentiles is given
    beside the ratio of medians.
    """
    by = {(c["model"], c["runtime"], c["precision"], c["threads"]): c for c in cells}

    def ms(m: str, rt: str, p: str, t: int, key: str = "median_ms") -> float | None:
        c = by.get((m, rt, p, t))
        return None if c is None else c.get(key)

    def shown(m: str, rt: str, p: str, t: int) -> str:
        c = by.get((m, rt, p, t))
        if c is None or c.get("median_ms") is None:
            return "-"
        return _fmt(c["median_ms"]) + ("*" if (c.get("cv") or 0) > NOISY_CV else "")

    def ratio(a: float | None, b: float | None) -> str:
        return _fmt(a / b, 2) if a and b else "-"

    cols = [("torch", "fp32", "eager"), ("executorch", "fp32", "ET fp32"), ("executorch", "int8", "ET int8"),
            ("tflite", "fp32", "LiteRT fp32"), ("tflite", "int8", "LiteRT int8")]
    head = ("| model | res | " + " | ".join(f"{n} @{t}t" for _, _, n in cols for t in threads)
            + " | ET/LiteRT fp32 @1t (median; p10) | ET int8/fp32 @1t (median; p10) | host |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    res = {c["model"]: c["resolution"] for c in cells}
    hosts: dict[str, str] = {}  # host tag -> letter, in order of first appearance
    for c in sorted(cells, key=lambda c: c["model"]):
        hosts.setdefault(c.get("host") or UNRECORDED_HOST, chr(ord("A") + len(hosts)))
    for m in sorted(res):
        vals = [shown(m, rt, p, t) for rt, p, _ in cols for t in threads]
        et_lt = (f"{ratio(ms(m, 'executorch', 'fp32', 1), ms(m, 'tflite', 'fp32', 1))}; "
                 f"{ratio(ms(m, 'executorch', 'fp32', 1, 'p10_ms'), ms(m, 'tflite', 'fp32', 1, 'p10_ms'))}")
        q = (f"{ratio(ms(m, 'executorch', 'int8', 1), ms(m, 'executorch', 'fp32', 1))}; "
             f"{ratio(ms(m, 'executorch', 'int8', 1, 'p10_ms'), ms(m, 'executorch', 'fp32', 1, 'p10_ms'))}")
        tags = sorted({hosts[c.get("host") or UNRECORDED_HOST] for c in cells if c["model"] == m})
        lines.append(f"| {m} | {res[m]} | " + " | ".join(vals) + f" | {et_lt} | {q} | {','.join(tags)} |")
    runs = {}  # host tag -> the warm-up and timed runs its cells recorded
    for c in cells:
        if c.get("iterations"):
            runs[c.get("host") or UNRECORDED_HOST] = f" (warm-up {c.get('warmup')}, {c['iterations']} timed runs)"
    lines += [""] + [f"- host {letter}: {tag}{runs.get(tag, '')}" for tag, letter in hosts.items()]
    return lines


def write_markdown(data: dict[str, Any], path: Path, argv: str) -> None:
    env = data["environment"]
    lines = [BEGIN, "", "Reproduce: `.venv/bin/python benchmarks/convert_all.py` (`--resume` goes on after an "
             f"interrupted run; this one: `{argv or 'no options'}`; {time.strftime('%Y-%m-%d')}, {env.get('cpu')}, "
             f"{env.get('cpu_count')} cores, "
             f"git {str(env.get('git_commit'))[:7]}). Random init with re-randomised norms (seed 0); int8 is "
             "post-training quantisation calibrated on 8 photos; the check compares with the PyTorch source on "
             "scikit-image's photos (int8: against the quantised PyTorch model). Conversion time excludes the "
             "check.", ""]
    order = {p: i for i, p in enumerate(DEFAULT_PATHS.split(","))}
    rows = sorted(data["conversions"], key=lambda r: (r["model"], order.get(f"{r['backend']}:{r['precision']}",
                                                                            len(order))))
    lines += conversion_table(rows)
    int8 = int8_table(rows)
    if int8:
        lines += ["", "int8 checks under the int8 rule (`converters.compare.int8_verdict`): (a) SQNR >= 30 dB against "
                      "the quantised PyTorch graph, else (b) margin = SQNR - (quantised vs float) >= 0 dB with top-1 "
                      "agreement >= 95% on >= 100 images (below 30 dB on the 8 photos the check runs again on 128 "
                      "photos and crops). An ExecuTorch or TFLite int8 cell that still fails is checked op by op "
                      "(`check --layers`, first photo): 'per-op: n/n within one int8 step' means every int8 activation "
                      "matches the quantised graph when each op is recomputed from the artifact's own inputs, so the "
                      "program is faithful and the end-to-end miss is rounding ties compounding through depth. Core "
                      "ML W8A8 numerics from the NumPy MIL executor.", ""]
        lines += int8
    if data.get("latency"):
        s = data.get("latency_settings") or {}
        threads = sorted({c["threads"] for c in data["latency"]})  # rows of several runs may differ
        runs = ("warm-up and timed runs per cell in the legend" if all(c.get("iterations") for c in data["latency"])
                else f"warm-up {s.get('warmup')}, {s.get('iterations')} timed runs per cell unless the legend says "
                     "otherwise")
        lines += ["", "Latency, median ms on the host named in the last column (legend below the table; "
                      f"{runs}; cells in shuffled order with a cool-down; single image; `*`: CV above "
                      f"{NOISY_CV:g}, a disturbed cell):", ""]
        lines += latency_table(data["latency"], threads)
    lines += ["", END]
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Conversion of every model through every path\n\n" + block + "\n"
    atomic_write_text(path, text)


if __name__ == "__main__":
    sys.exit(main())
