"""Per-layer int8 sensitivity: quantise one op group at a time with a backend's own int8 quantizer, everything else
float, and rank the groups by what that costs (logit SQNR against the float model, top-1 on labelled data).

    mobilevits sensitivity deit_tiny --backend executorch --weights w.safetensors --data digits --resolution 96

A group is a block of the model: each child of a top-level ``ModuleList``/``Sequential`` (``blocks.3``,
``stages.2``), or a top-level module (``patch_embed``, ``head``). The graph is exported once; each group costs one
calibration and one evaluation. The worst groups are what ``qat`` / ``convert --keep-float`` should keep in float;
the result names them as a ready ``--keep-float`` value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import create_model
from ..base import Normalize, reparameterize_model


def groups_of(net: nn.Module) -> list[str]:
    """The model's op groups, in forward order of definition: children of top-level containers, else top-level
    modules (parameter-free top-level modules such as activations or pooling are left out)."""
    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    out = []
    for name, child in net.named_children():
        if isinstance(child, nn.ModuleList | nn.Sequential) and len(child) > 1:
            out += [f"{name}.{sub}" for sub, m in child.named_children() if has_params(m)]
        elif has_params(child):
            out.append(name)
    return out


def sensitivity(
    model: str,
    backend: str,
    weights: str | Path | None = None,
    data: str = "digits",
    resolution: int | None = None,
    limit: int | None = 256,
    calibration: int = 32,
    groups: list[str] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quantise each group alone for ``backend``; returns rows (group, sqnr_db, top1, top1_cost, agreement, seconds)
    worst first, the float and all-int8 references, and ``keep_float``: the groups whose cost is above the median.

    ``weights``: a trained checkpoint (on random init every group looks alike); ``data``: ``digits``, ``photos``
    or a folder (labelled data adds top-1); ``limit`` images are evaluated, the first ``calibration`` calibrate.
    """
    from converters import calibrate_and_quantize, keep_float_modules, quiet, sqnr_db

    from ..data import load_data
    from ..weights import load_weights
    from .training import int8_target, outputs

    log = log or (lambda s: None)
    conv, resolution = int8_target(model, backend, resolution)
    probe = create_model(model, resolution=resolution)
    ds = load_data(data, probe.preprocess, limit=limit)
    num_classes = len(ds.classes) if ds.classes else 1000
    torch.manual_seed(0)
    net = create_model(model, num_classes=num_classes, resolution=resolution)
    if weights is not None:
        load_weights(net, weights, new_head=False)
    names = groups or groups_of(net)
    unknown = [g for g in names if g not in dict(net.named_modules())]
    if unknown:
        raise ValueError(f"no such module in {model}: {', '.join(unknown)} (groups: {', '.join(groups_of(net))})")
    ref = conv.prepare_model(reparameterize_model(Normalize(net, net.preprocess.mean, net.preprocess.std)), "int8")
    calib = ds.images[:calibration]
    with quiet():
        program = torch.export.export(ref, (calib[:2],),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))

    def run(m: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        if ds.labels is None:
            with torch.no_grad():
                return np.concatenate([m(ds.images[i:i + 64]).numpy() for i in range(0, len(ds), 64)])
        return outputs(m, ds)[0]

    float_logits = run(ref)
    labels = ds.labels.numpy() if ds.labels is not None else None

    def summary(logits: np.ndarray) -> dict[str, Any]:
        out = {"sqnr_db": sqnr_db(float_logits, logits),
               "agreement": float(np.mean(logits.argmax(1) == float_logits.argmax(1)))}
        if labels is not None:
            out["top1"] = float(np.mean(logits.argmax(1) == labels))
            out["top1_cost"] = float(np.mean(float_logits.argmax(1) == labels)) - out["top1"]
        return out

    def quantised(keep: list[str]) -> nn.Module:
        q = conv.quantizer("int8")
        if keep:
            keep_float_modules(q, ref, keep)
        return calibrate_and_quantize(ref, q, calib, conv.fold_quantize, program=program)

    from .training import _bar

    rows = []
    bar = _bar(len(names) + 1, f"sensitivity {model} ({backend})", show_progress)
    t0 = time.perf_counter()
    all_int8 = {"group": "(all int8)", **summary(run(quantised([]))), "seconds": round(time.perf_counter() - t0, 1)}
    if bar is not None:
        bar.update(1)
    for g in names:
        t0 = time.perf_counter()
        row = {"group": g, **summary(run(quantised([n for n in names if n != g]))),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(f"{g}: {row['sqnr_db']:.1f} dB")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: r["sqnr_db"])  # worst first
    median = float(np.median([r["sqnr_db"] for r in rows]))
    return {"model": model, "backend": backend, "resolution": resolution, "weights": str(weights) if weights else None,
            "data": ds.source, "images": len(ds), "calibration_images": int(calib.shape[0]),
            "float": {"top1": float(np.mean(float_logits.argmax(1) == labels)) if labels is not None else None},
            "all_int8": all_int8, "rows": rows,
            "keep_float": ",".join(r["group"] for r in rows if r["sqnr_db"] < median)}


def format_sensitivity(result: dict[str, Any]) -> str:
    """The ranking as a table for people (worst first)."""
    labelled = result["float"]["top1"] is not None
    head = "| group | SQNR dB vs float | top-1 agreement |" + (" top-1 | cost pt |" if labelled else "")
    lines = [f"{result['model']} @ {result['resolution']} for {result['backend']}: each group int8 alone, the rest "
             f"float ({result['images']} images of {result['data']}; calibrated on {result['calibration_images']})",
             "", head, "|---|---:|---:|" + ("---:|---:|" if labelled else "")]
    for r in [*result["rows"], result["all_int8"]]:
        line = f"| {r['group']} | {r['sqnr_db']:.1f} | {100 * r['agreement']:.1f}% |"
        if labelled:
            line += f" {100 * r['top1']:.2f}% | {100 * r['top1_cost']:+.2f} |"
        lines.append(line)
    if labelled:
        lines.append(f"\nfloat top-1 {100 * result['float']['top1']:.2f}%")
    if result["keep_float"]:
        lines.append(f"most sensitive half: --keep-float {result['keep_float']}")
    return "\n".join(lines)


def write_sensitivity_plot(result: dict[str, Any], path: str | Path) -> Path:
    """A horizontal bar per group: its SQNR when quantised alone (lower = more sensitive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
    ax.barh([r["group"] for r in rows][::-1], [r["sqnr_db"] for r in rows][::-1], color="tab:orange")
    ax.axvline(result["all_int8"]["sqnr_db"], color="k", linestyle="--", label="whole model int8")
    ax.set_xlabel("logit SQNR vs float (dB), this group int8 alone")
    ax.set_title(f"int8 sensitivity: {result['model']} for {result['backend']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
