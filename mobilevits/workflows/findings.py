"""The papers' resolution-vs-speed findings, measured with the bench harness (``mobilevits findings``).

Each finding is judged by the *shape* of the result (a sign, a trend, a rank correlation), never
by absolute milliseconds, so the same command means the same thing on this host, over adb on an
Android phone and on an iPhone. Sources and thresholds: ``docs/latency.md#findings``.

One sweep serves every finding: the cells in :func:`plan` are built (random init with
re-randomised norms, so no branch folds away), timed in one random order by
:func:`mobilevits.workflows.bench.bench`, and then read by the evaluators below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MNV3 = "mobilenetv3_large_100"
MOBILE_FORMER = "mobile_former_294m"
MOBILEVIT = "mobilevit_xs"
LEVIT = "levit_128s"
EFFICIENTNET = "efficientnet_b0"
SEPVIT = "sepvit_lite"
DEIT = "deit_tiny"
DEIT_RELU = "deit_tiny_relu_attention"
DEIT_DW = "deit_tiny_dw_attention"

MF_RESOLUTIONS = (96, 160, 224, 288, 384, 512)  # Mobile-Former vs MobileNetV3: small to detection-size inputs
SWEEP_RESOLUTIONS = (160, 192, 224, 256, 288, 320)  # MobileViT's multi-scale sampler set plus 224
SWEEP_MODELS = (MNV3, EFFICIENTNET, MOBILEVIT, MOBILE_FORMER, LEVIT, SEPVIT)
ATTENTION_HEAVY = (MOBILEVIT, LEVIT, SEPVIT)  # Mobile-Former (6 tokens beside a CNN) is in neither group
CONVOLUTIONAL = (MNV3, EFFICIENTNET)
SOFTMAX_FREE = (DEIT, DEIT_RELU, DEIT_DW)  # DeiT-Ti and its softmax-free variants, at 224 only
NOISE = 0.03  # a step down of at most 3% still counts as "grows" (timing noise)


def plan(roles: dict[str, str] | None = None, mf_resolutions: Sequence[int] = MF_RESOLUTIONS,
         sweep_resolutions: Sequence[int] = SWEEP_RESOLUTIONS) -> list[tuple[str, int]]:
    """The (model, resolution) cells every finding together needs, without repeats.

    ``roles`` maps the role names (``MNV3``, ``MOBILE_FORMER``... as their default model names) to
    other registered models, which tests use to run the whole flow on tiny configurations.
    """
    m = _roles(roles)
    cells = {(m[MOBILE_FORMER], r) for r in mf_resolutions} | {(m[MNV3], r) for r in mf_resolutions}
    cells |= {(m[name], r) for name in SWEEP_MODELS for r in sweep_resolutions}
    cells |= {(m[MOBILEVIT], 256), (m[MNV3], 256), (m[LEVIT], 224), (m[EFFICIENTNET], 224), (m[SEPVIT], 224),
              (m[MNV3], 224)}
    cells |= {(m[name], 224) for name in SOFTMAX_FREE}
    return sorted(cells)


def _roles(roles: dict[str, str] | None) -> dict[str, str]:
    out = {name: name for name in SWEEP_MODELS + SOFTMAX_FREE}
    for k, v in (roles or {}).items():
        if k not in out:
            raise ValueError(f"unknown role {k!r}; roles are {', '.join(out)}")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# small statistics
# --------------------------------------------------------------------------------------------


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks; ties get mean ranks)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("spearman needs two sequences of equal length >= 2")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else 0.0


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def pixel_exponent(latency: dict[int, float]) -> float:
    """Slope of log(latency) against log(pixels): 1 means latency proportional to pixel count."""
    res = sorted(latency)
    a, b = fit_line([math.log(r * r) for r in res], [math.log(latency[r]) for r in res])
    return b


def grows(latency: dict[int, float], noise: float = NOISE) -> bool:
    """True when every step up in resolution is slower, allowing a ``noise`` fraction of jitter."""
    vals = [latency[r] for r in sorted(latency)]
    return all(b >= a * (1.0 - noise) for a, b in zip(vals, vals[1:])) and vals[-1] > vals[0]


# --------------------------------------------------------------------------------------------
# the findings
# --------------------------------------------------------------------------------------------


def _latencies(cells: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Median ms per (model, resolution) (mean where a tool gives only a summary)."""
    out = {}
    for c in cells:
        s = c["stats"]
        v = s.get("median_ms") if s.get("median_ms") is not None else s.get("mean_ms")
        if v is not None:
            out[(c["model"], c["resolution"])] = float(v)
    return out


def _fixed_share(xs: dict[int, float]) -> dict[str, Any]:
    """Fit ``y = a + b * pixels`` and report the resolution-independent part ``a`` as a share of y."""
    res = sorted(xs)
    a, b = fit_line([r * r for r in res], [xs[r] for r in res])
    return {"intercept": a, "per_megapixel": b * 1e6,
            "share": {r: (a / xs[r] if xs[r] else None) for r in res}}


def mobile_former_vs_mobilenet(lat: dict[tuple[str, int], float], roles: dict[str, str],
                               resolutions: Sequence[int], macs: Callable[[str, int], float] | None = None
                               ) -> dict[str, Any]:
    mf, mn = roles[MOBILE_FORMER], roles[MNV3]
    res = [r for r in resolutions if (mf, r) in lat and (mn, r) in lat]
    ratio = {r: lat[(mf, r)] / lat[(mn, r)] for r in res}
    rho = spearman(res, [ratio[r] for r in res]) if len(res) >= 2 else float("nan")
    cross = next((r for r in res if ratio[r] < 1.0), None)
    measured: dict[str, Any] = {
        "ratio": ratio, "spearman": rho, "crossover_resolution": cross,
        "latency_ms": {mf: {r: lat[(mf, r)] for r in res}, mn: {r: lat[(mn, r)] for r in res}},
        "latency_fixed_share": {mf: _fixed_share({r: lat[(mf, r)] for r in res}),
                                mn: _fixed_share({r: lat[(mn, r)] for r in res})} if len(res) >= 2 else None,
    }
    if macs is not None and len(res) >= 2:
        measured["macs_fixed_share"] = {m: _fixed_share({r: macs(m, r) for r in res}) for m in (mf, mn)}
    ok = len(res) >= 3 and rho < 0 and ratio[res[-1]] < ratio[res[0]]
    return {"id": "mobile_former_vs_resolution",
            "claim": (f"Mobile-Former loses its lead over MobileNetV3 as resolution drops: {mf}/{mn} latency "
                      "ratio falls as resolution grows (Spearman < 0) [Mobile-Former, Limitations]"),
            "measured": measured, "reproduced": bool(ok)}


def mobilevit_vs_mobilenet(lat: dict[tuple[str, int], float], roles: dict[str, str]) -> dict[str, Any]:
    mv, mn = roles[MOBILEVIT], roles[MNV3]
    ratio = lat[(mv, 256)] / lat[(mn, 256)] if (mv, 256) in lat and (mn, 256) in lat else None
    return {"id": "mobilevit_vs_mobilenet",
            "claim": (f"MobileViT is slower than a MobileNet of similar accuracy despite few FLOPs: {mv}/{mn} "
                      "latency ratio > 2 at 256 [MobileViT, Table 3: 7.9x vs MobileNetV2 on iPhone 12]"),
            "measured": {"ratio_at_256": ratio, "latency_ms": {mv: lat.get((mv, 256)), mn: lat.get((mn, 256))}},
            "reproduced": ratio is not None and ratio > 2.0}


def levit_vs_efficientnet(lat: dict[tuple[str, int], float], roles: dict[str, str], threads: int
                          ) -> dict[str, Any]:
    lv, ef = roles[LEVIT], roles[EFFICIENTNET]
    a, b = lat.get((lv, 224)), lat.get((ef, 224))
    ok = a is not None and b is not None and a < b
    return {"id": "levit_vs_efficientnet",
            "claim": (f"LeViT beats EfficientNet on CPU at equal accuracy: {lv} faster than {ef} at 224, single "
                      "thread [LeViT, Table 3: 39.1 vs 3.5 images/s on ARM]"),
            "measured": {"latency_ms": {lv: a, ef: b}, "ratio": (a / b) if a and b else None, "threads": threads,
                         "note": None if threads == 1 else "the paper's claim is single-threaded; run --threads 1"},
            "reproduced": bool(ok) and threads == 1}


def latency_vs_resolution(lat: dict[tuple[str, int], float], roles: dict[str, str],
                          resolutions: Sequence[int]) -> dict[str, Any]:
    per_model: dict[str, Any] = {}
    for role in SWEEP_MODELS:
        m = roles[role]
        series = {r: lat[(m, r)] for r in resolutions if (m, r) in lat}
        if len(series) < 2:
            continue
        row: dict[str, Any] = {"latency_ms": series, "exponent": pixel_exponent(series), "grows": grows(series)}
        if role == MOBILEVIT:  # sides whose stride-32 map is odd add MobileViT's resize around unfold/fold
            clean = {r: v for r, v in series.items() if (r // 32) % 2 == 0}
            if len(clean) >= 2:
                row["exponent_even_maps"] = pixel_exponent(clean)
        per_model[m] = row

    def mean_exp(group: Sequence[str]) -> float | None:
        vals = [per_model[roles[g]]["exponent"] for g in group if roles[g] in per_model]
        return sum(vals) / len(vals) if vals else None

    att, conv = mean_exp(ATTENTION_HEAVY), mean_exp(CONVOLUTIONAL)
    return {"id": "latency_vs_resolution",
            "claim": (f"Latency grows with resolution for every model over {{{', '.join(map(str, resolutions))}}}; "
                      "attention-heavy models scale more steeply with pixel count than convolutional ones "
                      "[MobileViT multi-scale sampler; attention is quadratic in tokens]"),
            "measured": {"models": per_model, "mean_exponent_attention": att, "mean_exponent_convolutional": conv,
                         "attention_above_convolutional": None if att is None or conv is None else att > conv},
            "reproduced": bool(per_model) and all(v["grows"] for v in per_model.values())}


def sepvit_tradeoff(lat: dict[tuple[str, int], float], roles: dict[str, str],
                    top1: Callable[[str], float | None]) -> dict[str, Any]:
    sv, mv, mn = roles[SEPVIT], roles[MOBILEVIT], roles[MNV3]
    measured: dict[str, Any] = {"latency_ms_224": {m: lat.get((m, 224)) for m in (sv, mv, mn)},
                                "paper_top1": {m: top1(m) for m in (sv, mv, mn)}}
    verdicts = []
    for other in (mv, mn):
        a, b = lat.get((sv, 224)), lat.get((other, 224))
        ratio = a / b if a and b else None
        measured[f"ratio_vs_{other}"] = ratio
        acc_s, acc_o = top1(sv), top1(other)
        if ratio is None or acc_s is None or acc_o is None:
            continue
        # a better trade-off: at least as accurate and not slower, or faster when less accurate
        verdicts.append(ratio < 1.0 if acc_s < acc_o else ratio <= 1.0 + NOISE)
    return {"id": "sepvit_tradeoff",
            "claim": (f"SepViT-Lite has a better latency-accuracy trade-off than {mv} and {mn} at 224 [SepViT; "
                      "its lite table was not retrieved, so the paper's top-1 (72.3%) is compared]"),
            "measured": measured, "reproduced": bool(verdicts) and all(verdicts)}


def softmax_free(lat: dict[tuple[str, int], float], roles: dict[str, str]) -> dict[str, Any]:
    base, variants = roles[DEIT], (roles[DEIT_RELU], roles[DEIT_DW])
    a = lat.get((base, 224))
    ratio = {v: (lat[(v, 224)] / a if a and (v, 224) in lat else None) for v in variants}
    return {"id": "softmax_free_attention",
            "claim": (f"Softmax-free attention buys speed: {' and '.join(variants)} are faster than {base} at 224 "
                      "[Zhou, Loy & Dai 2023: softmax replaced by ReLU and LayerNorm; depth-wise attention is "
                      "more efficient]"),
            "measured": {"latency_ms": {m: lat.get((m, 224)) for m in (base, *variants)}, "ratio": ratio},
            "reproduced": all(r is not None and r < 1.0 - NOISE for r in ratio.values())}


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def evaluate(result: dict[str, Any], runtime: str, roles: dict[str, str] | None = None,
             mf_resolutions: Sequence[int] = MF_RESOLUTIONS, sweep_resolutions: Sequence[int] = SWEEP_RESOLUTIONS,
             threads: int = 1, macs: Callable[[str, int], float] | None = None,
             top1: Callable[[str], float | None] | None = None) -> list[dict[str, Any]]:
    """The findings from a bench result (cells of one runtime and thread count)."""
    m = _roles(roles)
    cells = [c for c in result["cells"] if c["runtime"] == runtime and (c.get("threads") in (threads, None))]
    lat = _latencies(cells)
    top1 = top1 or _paper_top1
    found = [mobile_former_vs_mobilenet(lat, m, mf_resolutions, macs),
             mobilevit_vs_mobilenet(lat, m),
             levit_vs_efficientnet(lat, m, threads),
             latency_vs_resolution(lat, m, sweep_resolutions),
             sepvit_tradeoff(lat, m, top1),
             softmax_free(lat, m)]
    for f in found:
        f["runtime"] = runtime
    return found


def _paper_top1(model: str) -> float | None:
    import mobilevits

    paper = mobilevits.get_model_info(model).paper
    return paper.top1 if paper else None


def _macs(model: str, resolution: int) -> float:
    import mobilevits

    net = mobilevits.create_model(model, num_classes=1000, resolution=resolution).eval()
    return float(mobilevits.count_macs(net, resolution))


def findings(
    runtime: str | Sequence[str] = "executorch",
    device: str = "host",
    precision: str = "fp32",
    threads: int = 1,
    warmup: int = 5,
    iterations: int = 20,
    cooldown: float = 0.5,
    seed: int = 0,
    out: str | Path = "out/findings",
    reuse: bool = True,
    plot: str | Path | None = None,
    repeats: int = 3,
    roles: dict[str, str] | None = None,
    mf_resolutions: Sequence[int] = MF_RESOLUTIONS,
    sweep_resolutions: Sequence[int] = SWEEP_RESOLUTIONS,
    log: Callable[[str], None] | None = None,
    **bench_options: Any,
) -> dict[str, Any]:
    """Run the sweep on ``device`` for each runtime and judge every finding.

    Returns ``{"findings": [...], "bench": <bench result>}``; each finding has ``id``, ``claim``,
    ``runtime``, ``measured`` and ``reproduced``. The sweep runs ``repeats`` times (sessions, each
    in its own random order); a cell's latency is the median of its session medians, which keeps a
    burst of load on a shared machine from deciding a finding. ``reuse`` takes artifacts already in
    ``out`` that were built from the same source with the same tool versions. Extra keyword
    arguments go to :func:`mobilevits.workflows.bench.bench` (adb/iOS tool paths, ``cpu_mask``...).
    """
    from .bench import bench, write_plot

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runtimes = [runtime] if isinstance(runtime, str) else list(runtime)
    runtimes = [r for part in runtimes for r in part.split(",") if r]
    pairs = plan(roles, mf_resolutions, sweep_resolutions)
    sessions = []
    for k in range(repeats):
        if log and repeats > 1:
            log(f"session {k + 1}/{repeats}")
        sessions.append(bench(pairs=pairs, runtime=runtimes, precision=precision, device=device,
                              threads=(threads,), warmup=warmup, iterations=iterations, cooldown=cooldown,
                              seed=seed + k, out=out, reuse=reuse or k > 0, log=log, **bench_options))
    result = merge_sessions(sessions)
    if plot:
        write_plot(result, plot)
        result["plot"] = str(plot)
    macs = _macs if roles is None else None  # MAC split for the real models only (tests use tiny stand-ins)
    found = [f for rt in runtimes for f in evaluate(result, rt, roles, mf_resolutions, sweep_resolutions,
                                                    threads, macs)]
    return {"findings": found, "bench": result}


def merge_sessions(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench result from several sessions of the same cells.

    A cell's ``stats.median_ms`` becomes the median of its session medians (``session_medians_ms``);
    its raw samples are concatenated in session order and the other statistics recomputed over them.
    """
    from .bench import statistics

    first = sessions[0]
    if len(sessions) == 1:
        return first
    merged_cells = []
    for cell in first["cells"]:
        same = [c for s in sessions for c in s["cells"] if c["id"] == cell["id"]]
        medians = [c["stats"]["median_ms"] for c in same if c["stats"].get("median_ms") is not None]
        samples = [x for c in same for x in (c.get("samples_ms") or [])]
        stats = statistics(samples) if samples else dict(cell["stats"])
        if medians:
            ordered = sorted(medians)
            mid = len(ordered) // 2
            stats["median_ms"] = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        merged_cells.append({**cell, "stats": stats, "samples_ms": samples, "session_medians_ms": medians})
    return {**first, "cells": merged_cells, "sessions": len(sessions),
            "order": [s["order"] for s in sessions],
            "settings": {**first["settings"], "seeds": [s["settings"]["seed"] for s in sessions]}}


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary(f: dict[str, Any]) -> str:
    """One line of numbers behind a finding."""
    m = f["measured"]
    if f["id"] == "mobile_former_vs_resolution":
        ratios = ", ".join(f"{r}: {v:.2f}" for r, v in m["ratio"].items())
        text = f"ratio by resolution {ratios}; Spearman {m['spearman']:.2f}; crossover " + (
            f"at {m['crossover_resolution']}" if m["crossover_resolution"] else "none")
        shares = (m.get("macs_fixed_share") or {})
        for model, fit in shares.items():
            keys = sorted(fit["share"], key=int)  # int keys, or str after a JSON round trip
            lo, hi = keys[0], keys[-1]
            text += (f"; {model} resolution-independent MACs {100 * fit['share'][lo]:.0f}% at {lo}, "
                     f"{100 * fit['share'][hi]:.0f}% at {hi}")
        return text
    if f["id"] == "mobilevit_vs_mobilenet":
        return f"ratio at 256: {_num(m['ratio_at_256'])}"
    if f["id"] == "levit_vs_efficientnet":
        lat = m["latency_ms"]
        return ", ".join(f"{k} {_num(v)} ms" for k, v in lat.items()) + f" (ratio {_num(m['ratio'])})"
    if f["id"] == "latency_vs_resolution":
        parts = [f"{k} {v['exponent']:.2f}{'' if v['grows'] else ' (not monotone)'}" for k, v in m["models"].items()]
        return ("exponent vs pixels: " + ", ".join(parts) + f"; attention mean {_num(m['mean_exponent_attention'])}"
                f" vs convolutional {_num(m['mean_exponent_convolutional'])}")
    if f["id"] == "sepvit_tradeoff":
        return ", ".join(f"{k.removeprefix('ratio_vs_')} {_num(v)}x" for k, v in m.items() if k.startswith("ratio_vs_"))
    if f["id"] == "softmax_free_attention":
        return ", ".join(f"{k} {_num(v)}x" for k, v in m["ratio"].items()) + " of the softmax model's latency"
    return str(m)


def format_findings(result: dict[str, Any]) -> str:
    """A table for people: finding, runtime, reproduced, and the numbers behind it."""
    lines = []
    dev = (result.get("bench") or {}).get("device") or {}
    if dev.get("emulated"):  # an emulator's costs: a finding here says nothing about a phone's speed
        lines.append(f"EMULATED ({dev.get('kind')} CPU {dev.get('cpu')}): latencies are the emulator's, not a "
                     "device's; read these findings as a harness run, not as evidence")
    for f in result["findings"]:
        lines.append(f"[{'yes' if f['reproduced'] else 'NO '}] {f['id']} ({f['runtime']})")
        lines.append(f"      claim:    {f['claim']}")
        lines.append(f"      measured: {summary(f)}")
    return "\n".join(lines)
