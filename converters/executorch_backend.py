"""ExecuTorch: ``.pte`` programs lowered to XNNPACK (Android/iOS CPU), or to Core ML (iOS).

fp32, and int8 through PT2E with the XNNPACK quantizer (static activations, per-channel
symmetric weights). The host runtime is ``executorch.runtime``.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .base import (
    FP32_FORMS,
    Converter,
    Delegation,
    RuntimeUnavailableError,
    Session,
    UnsupportedError,
    keep_float,
    merge_float_islands,
    quiet,
    register_converter,
)

_IGNORED = {"getitem", "executorch_call_delegate", "<built-in function getitem>"}


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` / ``<EdgeOpOverload: aten.convolution.default>`` -> ``convolution``."""
    s = str(target)
    if s.startswith("<EdgeOpOverload: "):
        s = s[len("<EdgeOpOverload: "):].split(">")[0]
    parts = s.split(".")
    return parts[1] if len(parts) >= 3 else parts[-1]


def edge_delegation(edge_program: Any) -> Delegation:
    """Count operators inside each lowered delegate and those left for portable kernels."""
    gm = edge_program.graph_module
    inside: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    partitions = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            partitions += 1
            lowered = getattr(gm, node.args[0].target)
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner.target) not in _IGNORED:
                    inside[_op_name(inner.target)] += 1
        elif name not in _IGNORED and "getitem" not in name:
            outside[name] += 1
    return Delegation(sum(inside.values()), sum(outside.values()), dict(outside), dict(inside), partitions)


@register_converter
class ExecuTorchConverter(Converter):
    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8")
    packages = ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner")
    runtime_packages = ("executorch.runtime",)
    delegates = ("xnnpack", "coreml")
    layers_source = "int8 activations read from a twin program that taps them as outputs"
    # int8: an add/sub/mul between float-only ops stays float (converters.base.merge_float_islands); False
    # gives the per-op boundaries of before (benchmarks/int8_forms.py measures both)
    merge_islands: ClassVar[bool] = True

    def compare_layers(self, path: Path, graph: Any, x: Any) -> dict[str, Any]:
        return compare_layers(path, graph, x)


    def quantizer(self, precision: str, qat: bool = False):
        if precision != "int8":
            return None
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        q = keep_float(XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                     is_qat=qat)))
        # XNNPACK runs bmm, softmax, sigmoid, gelu in fp32 only: an add or mul between them stays float too
        return merge_float_islands(q) if self.merge_islands else q

    def prepare_model(self, model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
        # XNNPACK's mean takes only NHWC dims (2, 3), so ExecuTorch wraps LayerNorm's means in layout
        # copies; a linear with a 1/C row halves LayerNorm's time here (see layers.LayerNorm)
        from mobilevits.layers import set_deploy_forms, set_layernorm_mean

        set_layernorm_mean(model, "linear")
        # int8 too keeps the one-kernel forms: XNNPACK runs a hardswish or maximum in fp32 between two Converts,
        # and that measured faster than their int8 rewrites (add, clamp, mul / relu) on every model here, e.g.
        # MobileNetV3-Large 3.6 vs 4.9 ms, LeViT-128S 3.1 vs 3.7 ms (benchmarks/int8_forms.py, BENCHMARKS.md)
        return set_deploy_forms(model, **FP32_FORMS)

    def lower(self, program: torch.export.ExportedProgram, precision: str, path: Path, quantized: bool,
              delegate: str = "xnnpack", **options: Any) -> Delegation:
        from executorch.exir import to_edge_transform_and_lower

        if delegate == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioner = [XnnpackPartitioner()]
        elif delegate == "coreml":
            try:
                from executorch.backends.apple.coreml.partition import CoreMLPartitioner
            except Exception as e:
                raise RuntimeUnavailableError(f"ExecuTorch's Core ML backend cannot be imported: {e}") from None
            partitioner = [CoreMLPartitioner()]
        else:
            raise UnsupportedError(f"unknown ExecuTorch delegate {delegate!r}; "
                                   f"choose one of {', '.join(self.delegates)}")
        with quiet():
            edge = to_edge_transform_and_lower(program, partitioner=partitioner)
            report = edge_delegation(edge.exported_program())
            et = edge.to_executorch()
        with open(path, "wb") as f:
            et.write_to_file(f)
        report.note = f"delegate: {delegate}"
        return report

    def open(self, path: Path, threads: int = 1) -> Session:
        return _ExecuTorchSession(path, threads)


class _ExecuTorchSession(Session):
    def __init__(self, path: Path, threads: int) -> None:
        from executorch.runtime import Runtime

        set_threads(threads)  # XNNPACK binds its thread pool at load
        with quiet():
            self._method = Runtime.get().load_program(str(path)).load_method("forward")
        self.runtime_version = importlib.metadata.version("executorch")

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(x.shape[0]):  # the program was exported at batch 1
            (y,) = self._method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i + 1], dtype=np.float32))])
            outs.append(y.numpy().copy())
        return np.concatenate(outs)

    def close(self) -> None:
        self._method = None


def set_threads(n: int) -> None:
    """XNNPACK binds its thread pool when a program loads, so this must run before loading."""
    try:
        with quiet():  # the first import logs cpuinfo lines, the reset a thread-pool line, natively
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(int(n))
    except Exception:  # older/newer builds without the hook: keep the default pool
        pass


def compare_layers(path: Path, graph: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Every int8 activation of an ExecuTorch int8 program against the quantised PyTorch graph (see
    :func:`converters.int8_layers.local_layer_report`), on one image ``x`` of shape (1, 3, H, W).

    XNNPACK computes a whole delegate at once, so the activations are read from a twin program:
    the same quantised graph, each activation's int8 tensor tapped as an extra output (ExecuTorch's
    ``intermediate_output_tap``), lowered the same way. ``runtime_identical``: the twin's logits
    equal the artifact's, so the taps did not change what was computed.
    """
    import copy

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.intermediate_output_tap import FULL_TENSOR, strip_taps_, tap_intermediate_outputs_
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from .int8_layers import activation_quantizes, local_layer_report

    x = x[:1].contiguous()
    with quiet():
        ep = torch.export.export(graph, (x,))
    reference = copy.deepcopy(ep).module()  # same node names as ep's graph
    wanted = {n.name for n in activation_quantizes(reference)}
    with quiet():
        ep, specs = tap_intermediate_outputs_(ep, [(lambda n: n.name in wanted, FULL_TENSOR)])
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        strip_taps_(edge)
        program = edge.to_executorch()
        method = Runtime.get().load_program(program.buffer).load_method("forward")
        outs = method.execute([x])
    taps = {s.node_name: outs[s.output_index] for s in specs}

    def lookup(node: torch.fx.Node, value: torch.Tensor, scale: float, zp: int) -> tuple[str, torch.Tensor] | None:
        got = taps.get(node.name)
        if got is None or got.numel() != value.numel():
            return None
        op = str(getattr(node.args[0], "target", "input")).replace("aten.", "").split(".")[0]
        return f"{op} (XNNPACK)", got.reshape(value.shape).to(torch.int8)

    rep = local_layer_report(reference, x, lookup)
    deployed = ExecuTorchConverter().run(path, x.numpy())
    rep["runtime_identical"] = bool(np.array_equal(outs[0].numpy(), deployed))
    if not rep["runtime_identical"]:
        # the taps cannot see inside the artifact's delegate: find the constants it holds that a lowering of
        # the quantised graph does not, and the XNNPACK nodes that read them
        rep["artifact_differs"] = constants_not_in_graph(path, graph, x)
    return rep


def _xnnpack_graphs(pte: bytes) -> list[dict[str, Any]]:
    """The XNNPACK delegate payloads of a program as JSON (xnodes, xvalues, constant_data), via flatc."""
    import json
    import re
    import subprocess
    import tempfile

    import executorch.backends.xnnpack.serialization as xnn_serialization
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _get_flatc_path
    from executorch.exir._serialize._program import _extract_delegate_payload

    schema = Path(xnn_serialization.__path__[0]) / "schema.fbs"
    graphs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1 << 16):
            payload = _extract_delegate_payload(pte, "xnnpack", delegate_index=i)
            if payload is None:
                break
            header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
            flat = Path(tmp) / f"g{i}.bin"
            flat.write_bytes(payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
            subprocess.run([_get_flatc_path(), "--json", "--raw-binary", "--strict-json", "-o", tmp, str(schema),
                            "--", str(flat)], check=True, capture_output=True)
            # flatc writes infinite clamp bounds as bare inf / -inf / nan, which JSON does not have
            text = re.sub(r"(?<=[:\[,\s])(-?)(inf|nan)\b", lambda m: {"inf": f"{m[1]}Infinity", "nan": "NaN"}[m[2]],
                          (Path(tmp) / f"g{i}.json").read_text())
            graphs.append(json.loads(text))
    return graphs


def constants_not_in_graph(path: Path, graph: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """XNNPACK nodes of the artifact that read a constant (weights, bias, per-channel scales) which a fresh
    lowering of ``graph`` does not produce: where an artifact that is not this graph's lowering differs.

    XNNPACK stores each constant under the SHA-256 of its bytes, so a changed value is a key the fresh
    lowering lacks. Rows: ``xnode`` (XNNPACK node type), ``debug_handle``, ``op`` (the edge graph's node)
    and ``module`` (the PyTorch module it came from).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with quiet():
        edge = to_edge_transform_and_lower(torch.export.export(graph, (x[:1].contiguous(),)),
                                           partitioner=[XnnpackPartitioner()])
        fresh = edge.to_executorch().buffer
    by_handle: dict[int, torch.fx.Node] = {}
    gm = edge.exported_program().graph_module
    for node in gm.graph.nodes:
        if node.op == "get_attr" and hasattr(getattr(gm, node.target, None), "original_module"):
            for inner in getattr(gm, node.target).original_module.graph.nodes:
                if "debug_handle" in inner.meta:
                    by_handle[int(inner.meta["debug_handle"])] = inner
    known = {c.get("named_key") or (c.get("offset"), c.get("size"))
             for g in _xnnpack_graphs(fresh) for c in g.get("constant_data", [])}
    rows: list[dict[str, Any]] = []
    for g in _xnnpack_graphs(path.read_bytes()):
        changed = {i for i, c in enumerate(g.get("constant_data", []))
                   if (c.get("named_key") or (c.get("offset"), c.get("size"))) not in known}
        ids = set()
        for v in g.get("xvalues", []):
            u = v.get("xvalue_union", {})
            t = u.get("tensor_value", {})
            if t.get("constant_buffer_idx") in changed or u.get("quant_params", {}).get("scale_buffer_idx") in changed:
                ids.add(t.get("id_out"))
        for n in g.get("xnodes", []):
            u = n.get("xnode_union", {})
            if not any(u.get(k) in ids for k in u if k.endswith("_id") and k != "output_id"):
                continue
            inner = by_handle.get(int(n.get("debug_handle", -1)))
            # the handle may sit on the fused group's output quantize/dequantize: name the op that computed it
            while (inner is not None and "quantize" in inner.name and inner.args
                   and isinstance(inner.args[0], torch.fx.Node) and inner.args[0].op == "call_function"):
                inner = inner.args[0]
            stack = (inner.meta.get("nn_module_stack") or {}) if inner is not None else {}
            rows.append({"xnode": n.get("xnode_union_type", "?").removeprefix("XNN"),
                         "debug_handle": n.get("debug_handle"), "op": inner.name if inner is not None else None,
                         "module": next((path for path, _ in reversed(stack.values()) if path), None)})
    return rows
