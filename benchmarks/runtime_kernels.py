"""Single operators through ExecuTorch (XNNPACK) and LiteRT (XNNPACK) on this host, 1 thread.

Whole-model latency ratios mix two things: how a model is written (which ops, which layout copies)
and how fast each runtime's build runs the same op. This script isolates the second: each case is
one operator at a shape our models use, converted by the project's own converters, checked to give
the same output in both runtimes, and timed in alternating rounds so that a disturbance on this
shared host hits both. It also times both LayerNorm formulations (``layers.LayerNorm.mean_op``),
the evidence for which one each converter picks.

    .venv/bin/python benchmarks/runtime_kernels.py                 # table, and BENCHMARKS.md updated
    .venv/bin/python benchmarks/runtime_kernels.py --json --no-markdown
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import (  # noqa: E402
    atomic_write_text,
    get_converter,  # noqa: E402
    quiet,
    tool_versions,
)
from converters.executorch_backend import set_threads  # noqa: E402
from mobilevits.layers import LayerNorm, set_layernorm_mean  # noqa: E402
from mobilevits.workflows.bench import _timed_loop  # noqa: E402

BEGIN, END = "<!-- runtime_kernels:begin -->", "<!-- runtime_kernels:end -->"


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *mods: nn.Module) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _ln(mean_op: str) -> nn.Module:
    norm = LayerNorm(144)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
        norm.bias.normal_(0.0, 0.2)
    return set_layernorm_mean(norm.eval(), mean_op)


def cases() -> dict[str, tuple[str, nn.Module, tuple[int, ...]]]:
    """name -> (what it is, module, input shape); shapes from MobileViT-S at 256 and Mobile-Former."""
    torch.manual_seed(0)
    conv3 = nn.Conv2d(64, 64, 3, padding=1)
    conv1 = nn.Conv2d(64, 256, 1)
    dw = nn.Conv2d(256, 256, 3, padding=1, groups=256)
    lin = nn.Linear(144, 288)
    return {
        "conv3x3": ("conv 3x3, 64 -> 64, 64x64 map", _Fn(conv3, conv3), (1, 64, 64, 64)),
        "conv1x1": ("conv 1x1, 64 -> 256, 64x64 map", _Fn(conv1, conv1), (1, 64, 64, 64)),
        "depthwise": ("depthwise 3x3, 256 ch, 32x32 map", _Fn(dw, dw), (1, 256, 32, 32)),
        "linear": ("linear 144 -> 288 over 4x256 tokens", _Fn(lin, lin), (4, 256, 144)),
        "attention": ("softmax(q k^T) v, 4 x 256 tokens x 36",
                      _Fn(lambda q: torch.softmax(q @ q.transpose(-1, -2), -1) @ q), (4, 256, 36)),
        "silu": ("x * sigmoid(x), 128 x 64 x 64", _Fn(lambda x: x * torch.sigmoid(x)), (1, 128, 64, 64)),
        "hardswish": ("hardswish, 128 x 64 x 64", _Fn(F.hardswish), (1, 128, 64, 64)),
        "layernorm_mean": ("LayerNorm(144) with mean_op='mean', 4x256 tokens", _ln("mean"), (4, 256, 144)),
        "layernorm_linear": ("LayerNorm(144) with mean_op='linear', 4x256 tokens", _ln("linear"), (4, 256, 144)),
    }


def measure(name: str, module: nn.Module, shape: tuple[int, ...], folder: Path, rounds: int, warmup: int,
            iterations: int) -> dict[str, object]:
    """Convert one case through both paths, check the outputs agree, time them in alternating rounds."""
    from ai_edge_litert.interpreter import Interpreter
    from executorch.runtime import Runtime

    module.eval()
    x = torch.randn(shape)
    with quiet():
        program = torch.export.export(module, (x,))
    pte, tfl = folder / f"{name}.pte", folder / f"{name}.tflite"
    get_converter("executorch").lower(program, "fp32", pte, False)
    get_converter("tflite").lower(program, "fp32", tfl, False, module=module)
    set_threads(1)
    with quiet():
        method = Runtime.get().load_program(str(pte)).load_method("forward")
        it = Interpreter(model_path=str(tfl), num_threads=1)
        it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    xn = x.numpy()

    def run_et() -> np.ndarray:
        return method.execute([x])[0]

    def run_tfl() -> np.ndarray:
        it.set_tensor(i, xn)
        it.invoke()
        return it.get_tensor(o)

    want = module(x).detach().numpy()
    for runtime, fn in (("executorch", run_et), ("litert", run_tfl)):
        got = np.asarray(fn())
        err = float(np.abs(got - want).max())
        if err > 1e-3 * max(1.0, float(np.abs(want).max())):
            raise AssertionError(f"{name}: {runtime} output differs from PyTorch by {err:.3g}")
    samples: dict[str, list[float]] = {"executorch": [], "litert": []}
    for r in range(rounds):  # alternate which runtime goes first
        order = [("executorch", run_et), ("litert", run_tfl)]
        for runtime, fn in order if r % 2 == 0 else order[::-1]:
            samples[runtime].extend(_timed_loop(fn, warmup, iterations))
    stats = {rt: {"median_ms": statistics.median(s), "p10_ms": float(np.percentile(s, 10))}
             for rt, s in samples.items()}
    return {"case": name, **stats,
            "ratio_median": stats["executorch"]["median_ms"] / stats["litert"]["median_ms"],
            "ratio_p10": stats["executorch"]["p10_ms"] / stats["litert"]["p10_ms"]}


def markdown(rows: list[dict], descriptions: dict[str, str], settings: str) -> str:
    lines = [BEGIN, "",
             "Reproduce: `.venv/bin/python benchmarks/runtime_kernels.py` (" + settings + "; raw results in "
             "`benchmarks/results/runtime_kernels.json`).", "",
             "| case | what | ExecuTorch ms (median; p10) | LiteRT ms (median; p10) | ET/LiteRT (median; p10) |",
             "|---|---|---|---|---|"]
    for r in rows:
        e, t = r["executorch"], r["litert"]
        lines.append(f"| {r['case']} | {descriptions[r['case']]} | {e['median_ms']:.3f}; {e['p10_ms']:.3f} | "
                     f"{t['median_ms']:.3f}; {t['p10_ms']:.3f} | {r['ratio_median']:.2f}; {r['ratio_p10']:.2f} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", help="comma-separated (default: all)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "runtime_kernels.json"))
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-markdown", action="store_true")
    args = ap.parse_args()
    all_cases = cases()
    names = args.cases.split(",") if args.cases else list(all_cases)
    unknown = sorted(set(names) - set(all_cases))
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(all_cases)}")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for n in names:
            if not args.json:
                print(f"{n} ...", file=sys.stderr, flush=True)
            _, module, shape = all_cases[n]
            rows.append(measure(n, module, shape, Path(td), args.rounds, args.warmup, args.iterations))
    settings = f"1 thread, {args.rounds} alternating rounds x {args.iterations} runs after {args.warmup} warm-up"
    data = {"tool_versions": tool_versions(), "settings": settings, "rows": rows}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.results), json.dumps(data, indent=2) + "\n")
    block = markdown(rows, {k: v[0] for k, v in all_cases.items()}, settings)
    if not args.no_markdown:
        md = Path(args.markdown)
        text = md.read_text() if md.exists() else ""
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n## ExecuTorch vs LiteRT on single operators\n\n" + block + "\n"
        atomic_write_text(md, text)
    print(json.dumps(data, indent=2) if args.json else block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
