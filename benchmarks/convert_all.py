"""Convert every model through every path and record what happened, into BENCHMARKS.md.

    .venv/bin/python benchmarks/convert_all.py                       # all models, default resolutions
    .venv/bin/python benchmarks/convert_all.py --models mobilevit_xxs,levit_128s --no-latency

Per model and path: conversion time, artifact size, delegation, check result (SQNR vs the
PyTorch source on scikit-image's photos), and single-image latency (median ms over --iterations
after --warmup) on PyTorch eager, ExecuTorch and LiteRT at 1 and 2 threads. Models are randomly
initialised with re-randomised norms (never degenerate zero-init norms). The Markdown table
replaces the section between the markers in BENCHMARKS.md; the raw results go to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mobilevits  # noqa: E402
from converters import convert  # noqa: E402
from converters.base import quiet, tool_versions  # noqa: E402
from converters.pipeline import build_source  # noqa: E402

PATHS = (("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("coreml", "fp32"))
BEGIN, END = "<!-- convert_all:begin -->", "<!-- convert_all:end -->"


def _median_ms(fn, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(samples)


def latency(artifact: str, backend: str, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float | None:
    """Median single-image latency of an artifact on this host's runtime (None if it cannot run here)."""
    if backend == "executorch":
        from executorch.runtime import Runtime

        from converters.executorch_backend import _set_threads

        _set_threads(threads)  # before loading: XNNPACK binds its pool at load
        with quiet():
            method = Runtime.get().load_program(artifact).load_method("forward")
        xt = torch.from_numpy(x)
        return _median_ms(lambda: method.execute([xt]), warmup, iterations)
    if backend == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=artifact, num_threads=threads)
        it.allocate_tensors()
        idx = it.get_input_details()[0]["index"]

        def run() -> None:
            it.set_tensor(idx, x)
            it.invoke()

        return _median_ms(run, warmup, iterations)
    return None


def eager_latency(source: dict, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float:
    model = build_source(source)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return _median_ms(lambda: model(xt), warmup, iterations)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated (default: all)")
    ap.add_argument("--out", default="out/benchmarks")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    models = args.models.split(",") if args.models else mobilevits.list_models()
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    for name in models:
        for backend, precision in PATHS:
            print(f"{name} -> {backend} {precision}", file=sys.stderr, flush=True)
            row = {"model": name, "backend": backend, "precision": precision}
            try:
                r = convert(name, to=backend, precision=precision, out=args.out, show_progress=False)
            except Exception as e:  # record the failure and go on with the next cell
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                results.append(row)
                continue
            c = r["check"]
            row.update(artifact=r["artifact"], seconds=r["seconds"], size_mb=r["size_bytes"] / 1e6,
                       delegation=r["delegation"], sqnr_db=c["sqnr_db"], passed=c["passed"],
                       top1_agreement=c["top1_agreement"])
            if not args.no_latency:
                res = mobilevits.get_model_info(name).default_resolution
                x = np.random.default_rng(0).random((1, 3, res, res), dtype=np.float32)
                row["latency_ms"] = {str(t): latency(r["artifact"], backend, x, t, args.warmup, args.iterations)
                                     for t in threads}
                if backend == "executorch" and precision == "fp32":
                    meta = json.loads(Path(r["sidecar"]).read_text())
                    row["eager_ms"] = {str(t): eager_latency(meta["source"], x, t, args.warmup, args.iterations)
                                       for t in threads}
            results.append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    raw = Path(args.out) / "convert_all.json"
    raw.write_text(json.dumps({"environment": {"host": platform.platform(), "cpus": torch.get_num_threads(),
                                               **tool_versions()}, "results": results}, indent=2, default=str))
    write_markdown(results, Path(args.markdown), threads, " ".join(sys.argv[1:]))
    print(f"wrote {args.markdown} and {raw}", file=sys.stderr)
    return 0


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_markdown(results: list[dict], path: Path, threads: list[int], argv: str) -> None:
    head = ("| model | path | convert s | MB | delegated | outside the delegate | SQNR dB | check | "
            + " | ".join(f"ms @{t}t" for t in threads) + " | eager ms @1t/@2t |")
    lines = [BEGIN, "", f"Reproduce: `.venv/bin/python benchmarks/convert_all.py {argv}`".rstrip() + " "
             f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} threads available).", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        path_s = f"{r['backend']} {r['precision']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {path_s} | failed: {r['error']} |")
            continue
        d = r["delegation"]
        outside = ", ".join(f"{k}x{v}" for k, v in d.get("not_delegated_ops", {}).items()) or "none"
        deleg = f"{100 * d['fraction']:.0f}%" if r["backend"] != "coreml" else f"{d['delegated']} ops"
        lat = " | ".join(_fmt((r.get("latency_ms") or {}).get(str(t))) for t in threads)
        eager = "/".join(_fmt(v) for v in (r.get("eager_ms") or {}).values()) or "-"
        lines.append(f"| {r['model']} | {path_s} | {_fmt(r['seconds'], 0)} | {r['size_mb']:.1f} | {deleg} | "
                     f"{outside if r['backend'] != 'coreml' else '-'} | {_fmt(r['sqnr_db'])} | "
                     f"{'pass' if r['passed'] else 'FAIL'} | {lat} | {eager} |")
    lines += ["", END]
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Conversion of every model through every path\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
