"""ExecuTorch: ``.pte`` programs lowered to XNNPACK (Android/iOS CPU), or to Core ML (iOS).

fp32, and int8 through PT2E with the XNNPACK quantizer (static activations, per-channel
symmetric weights). The host runtime is ``executorch.runtime``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Converter, Delegation, RuntimeUnavailableError, UnsupportedError, keep_float, quiet

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


class ExecuTorchConverter(Converter):
    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8")
    packages = ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner")
    runtime_packages = ("executorch.runtime",)
    delegates = ("xnnpack", "coreml")
    layers_source = "int8 activations read from a twin program that taps them as outputs"

    def compare_layers(self, path: Path, graph: Any, x: Any) -> dict[str, Any]:
        return compare_layers(path, graph, x)


    def quantizer(self, precision: str, qat: bool = False):
        if precision != "int8":
            return None
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
        return keep_float(q)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        # XNNPACK's mean takes only NHWC dims (2, 3), so ExecuTorch wraps LayerNorm's means in layout
        # copies; a linear with a 1/C row halves LayerNorm's time here (see layers.LayerNorm)
        from mobilevits.layers import set_layernorm_mean

        return set_layernorm_mean(model, "linear")

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

    def run(self, path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
        from executorch.runtime import Runtime

        _set_threads(threads)
        with quiet():
            method = Runtime.get().load_program(str(path)).load_method("forward")
        outs = []
        # The program was exported at batch 1: run sample by sample.
        for i in range(x.shape[0]):
            (y,) = method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i + 1]))])
            outs.append(y.numpy().copy())
        return np.concatenate(outs)


def _set_threads(n: int) -> None:
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
    return rep
