"""Model tables (``mobilevits list``) and small output helpers shared by the CLI."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def model_table(resolution: int | None = None, pattern: str | None = None, show_progress: bool = True,
                include_tiny: bool = False) -> list[dict[str, Any]]:
    """One row per model: name, family, resolution, params, MACs, and the paper's numbers (or None).

    With ``resolution``, models that cannot take it are left out (their valid range is in
    ``mobilevits.get_model_info(name)``).
    """
    from .. import create_model, get_model_info, list_models, num_params
    from ..macs import count_macs

    names = list_models(pattern, include_tiny=include_tiny)
    rows = []
    for name in progress(names, "counting MACs", show_progress):
        info = get_model_info(name)
        res = info.default_resolution if resolution is None else resolution
        if res not in info.valid_resolutions():
            continue
        model = create_model(name, resolution=res)
        row = {"name": name, "family": info.family, "resolution": res, "params": num_params(model),
               "macs": count_macs(model, res), "paper": info.paper.to_dict() if info.paper else None}
        if info.paper and not info.paper.own_convention:
            # the paper counts BatchNorm too, or leaves attention's matmuls out: compare like with like
            row["macs_paper_convention"] = count_macs(model, res, count_norms=info.paper.macs_counts_norms,
                                                      count_attention=info.paper.macs_counts_attention)
        rows.append(row)
    return rows


def progress(items: Sequence[Any], desc: str, enabled: bool = True) -> Iterable[Any]:
    """tqdm on stderr for people; plain iteration for --json or when stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, leave=False)


def fmt_count(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_num(r[i]) for r in rows) if rows else False for i in range(len(headers))]

    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def conversion_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per conversion result: artifact, size, time (or reused), delegation, check against PyTorch."""
    from pathlib import Path

    rows = []
    for r in results:
        c, d = r.get("check") or {}, r.get("delegation") or {}
        acc = (c.get("accuracy") or {}).get("artifact")
        coreml = Path(r["artifact"]).suffix == ".mlpackage"
        rows.append([Path(r["artifact"]).name, f"{r['size_bytes'] / 1e6:.2f}",
                     "reused" if r.get("reused") else f"{r['seconds']:.0f}",
                     f"{d.get('delegated')} ops" if coreml else f"{100 * d.get('fraction', 0):.0f}%",
                     "-" if c.get("sqnr_db") is None else f"{c['sqnr_db']:.1f}",
                     "-" if acc is None else f"{100 * acc:.1f}%",
                     "-" if not c else "PASS" if c["passed"] else "FAIL", c.get("runtime", "-")])
    return table(rows, ["artifact", "MB", "s", "delegated", "SQNR dB", "top-1", "check", "against"])


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def to_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    def clean(o: Any) -> Any:
        if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
            return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, default=default)


def format_model_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        p = r["paper"] or {}
        dev = None
        if p.get("macs") and p.get("resolution") == r["resolution"]:
            ours = r.get("macs_paper_convention", r["macs"])
            dev = f"{100 * (ours - p['macs']) / p['macs']:+.1f}%" + ("*" if "macs_paper_convention" in r else "")
        out.append([r["name"], r["family"], r["resolution"], f"{r['params']:,}", fmt_count(r["macs"]),
                    f"{p['params']:,}" if p.get("params") else "-",
                    fmt_count(p.get("macs")) + (f"@{p['resolution']}" if p.get("macs") else ""), dev or "-",
                    p.get("top1")])
    text = table(out, ["model", "family", "res", "params", "MACs", "paper params", "paper MACs", "MACs diff",
                       "paper top-1"])
    if any("macs_paper_convention" in r for r in rows):
        text += ("\n* counted the paper's way (its macs_convention): BatchNorm included (2 ops per element) or "
                 "attention's matmuls left out")
    return text
