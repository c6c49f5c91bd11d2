"""Per-op comparison of an int8 artifact with the quantised PyTorch graph it was converted from.

End to end, an int8 artifact and its quantised PyTorch graph (the ``convert_pt2e`` result) part by
more than any single op explains: where the two round a value that sits on a rounding tie to
different int8 steps, the next layer sees different inputs, and a trained network amplifies that
layer by layer. So each segment of the graph (the ops from dequantized inputs to one activation
``quantize_per_tensor``: a conv with its requantisation, a float LayerNorm, ...) is also recomputed
from the artifact's *own* int8 inputs: only that segment's arithmetic differs, and a faithful kernel
is within one int8 step. Backends supply the artifact's int8 tensors (TFLite from an interpreter that
keeps every tensor, ExecuTorch from a program with the activations tapped as extra outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

LOCAL_TOLERANCE_LSB = 1  # a rounding tie broken the other way moves a value by one int8 step, never more

# (quantize node, PyTorch's int8 value, scale, zero point) -> (artifact op label, artifact's int8 value) or None
Lookup = Callable[[torch.fx.Node, torch.Tensor, float, int], "tuple[str, torch.Tensor] | None"]


def local_layer_report(graph: torch.nn.Module, x: torch.Tensor, lookup: Lookup) -> dict[str, Any]:
    """Compare each activation quantize of ``graph`` with the artifact's tensor that ``lookup`` finds.

    Rows (graph order): ``op`` (the PyTorch node the quantize reads), ``segment`` (the segment's
    PyTorch ops), ``type`` (the artifact's op label), ``shape``, ``sqnr_db`` (the artifact's tensor
    against the graph run on its own: cumulative), ``local_max_lsb`` and ``local_flips`` (the segment
    recomputed from the artifact's inputs: largest difference in int8 steps, fraction of elements
    that differ) and ``status`` (``ok`` or ``diverged``: more than ``LOCAL_TOLERANCE_LSB`` steps off).

    Returns ``layers``, ``first_divergence`` (first ``diverged`` row or None), ``compared``, ``total``
    and ``unmatched`` (quantize nodes ``lookup`` found nothing for).
    """
    if not isinstance(graph, torch.fx.GraphModule):
        raise TypeError("a per-op comparison needs the quantised fx graph (convert_pt2e's result)")
    live = _depends_on_input(graph)
    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    clean: dict[str, torch.Tensor] = {}  # the PyTorch graph on its own, for the cumulative SQNR

    class _Clean(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if _is_quantize(n) and n.name in live:
                clean[n.name] = value
            return value

    class _Isolated(torch.fx.Interpreter):
        """Runs the graph with each matched quantize replaced by the artifact's tensor."""

        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if not (_is_quantize(n) and n.name in live):
                return value
            args, _ = self.fetch_args_kwargs_from_env(n)
            scale, zp = float(args[1]), int(args[2])
            found = lookup(n, value, scale, zp)
            if found is None:
                unmatched.append(n.name)
                return value
            label, got = found
            err = (got.int() - value.int()).abs()
            producer = n.args[0]
            ref = clean.get(n.name)
            row = {"index": len(rows), "op": producer.name, "type": label, "output": n.name,
                   "segment": _segment(producer, live), "shape": list(value.shape),
                   "sqnr_db": _dequant_sqnr(ref, got, scale, zp) if ref is not None else None,
                   "local_max_lsb": int(err.max()), "local_flips": float((err > 0).float().mean())}
            row["status"] = "ok" if row["local_max_lsb"] <= LOCAL_TOLERANCE_LSB else "diverged"
            rows.append(row)
            return got.to(value.dtype)  # downstream segments start from the artifact's values

    x = x[:1].contiguous()
    with torch.no_grad():
        _Clean(graph).run(x)
        _Isolated(graph).run(x)
    first = next((r for r in rows if r["status"] != "ok"), None)
    return {"layers": rows, "first_divergence": first, "compared": len(rows), "total": len(rows) + len(unmatched),
            "unmatched": unmatched}


def closest(candidates: Iterable[tuple[str, torch.Tensor]], value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The candidate (label, int8 tensor already in ``value``'s shape) nearest to ``value`` by mean absolute
    difference: several artifact tensors can share quantisation parameters (a reshape keeps its input's)."""
    best: tuple[str, torch.Tensor, float] | None = None
    for label, t in candidates:
        err = float((t.int() - value.int()).abs().float().mean())
        if best is None or err < best[2]:
            best = (label, t, err)
    return None if best is None else best[:2]


def without_activation_quantization(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of a quantised graph with every activation quantize -> dequantize pair removed.

    Weights stay exactly as the quantised graph holds them (int8 constants and their dequantize, or
    float weights behind their own quantize/dequantize), so this is "the same weights without
    activation quantisation": the float model a QAT graph is measured against (its fine-tuned weights,
    not the model QAT started from).
    """
    import copy

    if not isinstance(graph, torch.fx.GraphModule):
        raise TypeError("removing activation quantisation needs the quantised fx graph (convert_pt2e's result)")
    twin = copy.deepcopy(graph)
    for q in activation_quantizes(twin):
        for user in list(q.users):
            if str(user.target).startswith("quantized_decomposed.dequantize_per_tensor"):
                user.replace_all_uses_with(q.args[0])
                twin.graph.erase_node(user)
        if not q.users:
            twin.graph.erase_node(q)
    twin.graph.lint()
    twin.recompile()
    return twin


def activation_quantizes(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The graph's ``quantize_per_tensor`` nodes of activations (computed from the input, not weights)."""
    live = _depends_on_input(graph)
    return [n for n in graph.graph.nodes if _is_quantize(n) and n.name in live]


def _is_quantize(n: torch.fx.Node) -> bool:
    # by name: the quantized_decomposed namespace exists only once torchao has registered it
    return n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_tensor")


def _depends_on_input(graph: torch.fx.GraphModule) -> set[str]:
    """Names of the nodes computed from the graph's input (activations, not weights)."""
    live: set[str] = set()
    for n in graph.graph.nodes:
        if n.op == "placeholder" or any(a.name in live for a in n.all_input_nodes):
            live.add(n.name)
    return live


def _segment(last: Any, live: set[str]) -> list[str]:
    """The PyTorch ops between the segment's dequantized inputs and ``last`` (its output), in order."""
    seen: dict[str, Any] = {}
    stack = [last]
    while stack:
        n = stack.pop()
        if not isinstance(n, torch.fx.Node) or n.name in seen or n.name not in live or n.op != "call_function":
            continue
        if str(n.target).startswith("quantized_decomposed.dequantize"):
            continue
        if not isinstance(n.meta.get("val", torch.empty(0)), torch.Tensor):
            continue  # shape arithmetic of a dynamic batch (sym_size, mul of SymInts), not a tensor op
        seen[n.name] = n
        stack.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(last.graph.nodes)}
    return [n.name for n in sorted(seen.values(), key=order.__getitem__)]


def _dequant_sqnr(ref: torch.Tensor, got: torch.Tensor, scale: float, zp: int) -> float:
    from .compare import sqnr_db

    a = (ref.double() - zp) * scale
    b = (got.double() - zp) * scale
    return sqnr_db(a.numpy(), b.numpy())
