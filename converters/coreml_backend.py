"""Core ML: ``.mlpackage`` ML programs (iOS 17+, fixed input shape) through coremltools.

Precisions: ``fp32``; ``fp16`` (compute precision); ``int8`` (weights and activations: a PT2E
graph quantised with the XNNPACK quantizer, which coremltools turns into quantize/dequantize and
``constexpr_affine_dequantize`` ops, W8A8); ``w8`` (weight-only int8 by
``linear_quantize_weights``, fp16 compute). ``MLModel.predict`` exists only on macOS; elsewhere
``run`` raises :class:`RuntimeUnavailableError`, and ``mobilevits check`` computes the package's
numerics with the NumPy MIL executor (``converters.mil_executor``) after a structural validation.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Converter, Delegation, RuntimeUnavailableError, Session, quiet, register_converter


@register_converter
class CoreMLConverter(Converter):
    name = "coreml"
    suffix = ".mlpackage"
    precisions = ("fp32", "fp16", "int8", "w8")
    packages = ("coremltools",)
    layers_source = "int8 activations from the NumPy MIL executor's run of the ML program"
    # a W8A8 ML program runs its float parts in fp16: LayerNorm's variance alone moves its output several
    # int8 steps from the fp32 graph, so the per-op table is reported (worst op first) without a verdict
    layers_verdict = False

    def compare_layers(self, path: Path, graph: Any, x: Any) -> dict[str, Any]:
        return compare_layers(path, graph, x)

    def runtime_availability(self) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, "Core ML predictions need macOS (coremltools can only convert on this host)"
        return super().runtime_availability()

    def quantizer(self, precision: str, qat: bool = False):
        if precision != "int8":
            return None
        # coremltools' own CoreMLQuantizer fails to import against torch 2.13
        # (torch.ao.quantization.quantizer is gone); the XNNPACK quantizer's W8A8 graph converts to a
        # Core ML W8A8 program with the same semantics, so QAT and PTQ share it.
        from .executorch_backend import ExecuTorchConverter

        return ExecuTorchConverter().quantizer(precision, qat)

    def weight_quantization(self, precision: str) -> bool:
        return precision == "w8"

    def lower(self, program: torch.export.ExportedProgram, precision: str, path: Path, quantized: bool,
              **options: Any) -> Delegation:
        import coremltools as ct

        shape = tuple(program.example_inputs[0][0].shape)
        in_name, out_name = self.io_names()
        kwargs = dict(
            minimum_deployment_target=ct.target.iOS17, convert_to="mlprogram",
            inputs=[ct.TensorType(name=in_name, shape=shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=out_name, dtype=np.float32)],
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,
        )
        # coremltools requires the inference dialect ("Provided Dialect: TRAINING" otherwise).
        program = program.run_decompositions({})
        note = ""
        with quiet(), _float_scalar_dequantize():
            _fresh_op_names()
            try:
                ml = ct.convert(program, **kwargs)
            except Exception as e:
                if "not broadcastable" not in str(e) and "reduce_transposes" not in str(e):
                    raise
                # coremltools 9.0 bug: common::reduce_transposes crashes on `x @ x.transpose(1, 2)`
                # ("Op matmul: x ..., y ... are not broadcastable"). Convert without that pass.
                pipeline = ct.PassPipeline.DEFAULT
                pipeline.remove_passes(["common::reduce_transposes"])
                _fresh_op_names()
                ml = ct.convert(program, pass_pipeline=pipeline, **kwargs)
                note = "common::reduce_transposes disabled (coremltools 9.0 crash)"
            if precision == "w8":
                from coremltools.optimize.coreml import (
                    OpLinearQuantizerConfig,
                    OptimizationConfig,
                    linear_quantize_weights,
                )

                cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                               dtype="int8"))
                ml = linear_quantize_weights(ml, config=cfg)
            ml.save(str(path))
        report = self.delegation(path)
        report.note = "; ".join(x for x in ("Core ML op histogram (placement on CPU/GPU/ANE is decided on device)",
                                            note) if x)
        return report

    def open(self, path: Path, threads: int = 1, compute_units: str = "cpu_only") -> Session:
        """``MLModel`` on macOS; ``compute_units``: cpu_only (the check's numerics), all, cpu_and_gpu, ..."""
        ok, why = self.runtime_availability()
        if not ok:
            raise RuntimeUnavailableError(why)
        return _CoreMLSession(path, self.io_names(), compute_units)

    def delegation(self, path: Path) -> Delegation:
        hist = op_histogram(path)
        return Delegation(delegated=sum(hist.values()), delegated_ops=hist, partitions=1)

    def validate(self, path: Path, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
        """Structural checks that need no Mac: loads, declared I/O names/shapes/types, an ML program."""
        import coremltools as ct

        problems = []
        try:
            with quiet():
                spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        except Exception as e:
            return [f"package does not load: {type(e).__name__}: {e}"]
        if spec.WhichOneof("Type") != "mlProgram":
            problems.append(f"expected an ML program, got {spec.WhichOneof('Type')}")
        in_name, out_name = self.io_names()
        ins = {i.name: i for i in spec.description.input}
        outs = {o.name: o for o in spec.description.output}
        if in_name not in ins:
            problems.append(f"no input named {in_name!r} (has {sorted(ins)})")
        else:
            arr = ins[in_name].type.multiArrayType
            if tuple(arr.shape) != tuple(input_shape):
                problems.append(f"input shape {tuple(arr.shape)} != {tuple(input_shape)}")
            if arr.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
                problems.append("input is not float32")
        if out_name not in outs:
            problems.append(f"no output named {out_name!r} (has {sorted(outs)})")
        else:
            shape = tuple(outs[out_name].type.multiArrayType.shape)
            if shape and shape[-1] != num_classes:
                problems.append(f"output shape {shape} does not end in {num_classes} classes")
        if spec.specificationVersion < 8:  # iOS 17 = spec 8
            problems.append(f"specification version {spec.specificationVersion} < 8 (iOS 17)")
        if not op_histogram(path):
            problems.append("the ML program has no operations")
        return problems


@contextmanager
def _float_scalar_dequantize() -> Iterator[None]:
    """Work around a coremltools 9.0 bug in ``frontend/torch/quantization_ops._dequantize_general``.

    A dequantised 0-d constant (PT2E quantises scalar operands such as the attention scale) is folded
    as ``scale * (input - zero_point)`` with int8 NumPy operands, so the subtraction wraps: 127 - (-128)
    = -1, and a 0.5 scale becomes -0.00196. That silently breaks the attention of every int8 package
    (LeViT's int8 output fell to 0 dB). Here the fold is done in float32; every other case is passed to
    the original function unchanged. Found with ``mobilevits check --layers``.
    """
    from coremltools.converters.mil import Builder
    from coremltools.converters.mil.frontend.torch import quantization_ops as qops

    original = qops._dequantize_general

    def patched(context, node, input, scale, zero_point, axis, qmin, qmax):  # noqa: A002 (upstream names)
        if input.rank == 0 and input.val is not None:
            value = np.float32(scale.val) * (np.float32(input.val) - np.float32(zero_point.val))
            context.add(Builder.const(val=np.float32(value), name=node.name), node.name)
            return
        original(context, node, input, scale, zero_point, axis, qmin, qmax)

    qops._dequantize_general = patched
    try:
        yield
    finally:
        qops._dequantize_general = original


def _fresh_op_names() -> None:
    """Restart coremltools' op naming. It names new ops from one process-wide counter per op type and its
    fp16 pass names casts after them, so without this a conversion after any other MIL work in the same
    process yields linear_1, linear_2, ... instead of linear_0, ...: the package then differs byte for byte
    and the per-op check pairs ops with the wrong PyTorch nodes."""
    from coremltools.converters.mil.mil.builder import Builder

    Builder.name_count.clear()


def op_histogram(path: Path) -> dict[str, int]:
    """Operation types of the ML program's main function and their counts (constants excluded)."""
    import coremltools as ct

    with quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    counts: Counter[str] = Counter()
    for func in spec.mlProgram.functions.values():
        block = func.block_specializations[func.opset]
        counts.update(op.type for op in block.operations if op.type != "const")
    return dict(counts)


def compare_layers(path: Path, graph: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Every int8 activation of a W8A8 ML program against the quantised PyTorch graph (see
    :func:`converters.int8_layers.local_layer_report`), on one image ``x`` of shape (1, 3, H, W).

    The NumPy MIL executor runs the program and keeps every variable; each ``quantize`` op's int8
    output is matched to the graph's quantize node by scale (rounded to fp16, as the program stores
    it), zero point and element count, in program order. ``runtime_identical``: the capturing run
    gave the same output as a plain run of the executor.
    """
    from .int8_layers import closest, local_layer_report
    from .mil_executor import const_value, load_mlpackage

    x = x[:1].contiguous()
    program = load_mlpackage(path)
    in_name, out_name = CoreMLConverter().io_names()
    outputs, captured = program.run({in_name: x.numpy().astype(np.float32)}, capture=True)

    by_qparams: dict[tuple[float, int], list[tuple[str, np.ndarray]]] = {}
    for op in program.ops:
        scale, zp = const_value(program, op.inputs.get("scale")), const_value(program, op.inputs.get("zero_point"))
        if op.type != "quantize" or scale is None or scale.size != 1:
            continue
        t = np.asarray(captured[op.output_names[0]]).astype(np.int32)
        zp_i = 0 if zp is None else int(zp.reshape(-1)[0])
        if op.outputs[0][1].dtype is np.uint8:  # coremltools stores an int8 tensor of zero point z as uint8, z + 128
            t, zp_i = t - 128, zp_i - 128
        by_qparams.setdefault((float(np.float16(scale.reshape(-1)[0])), zp_i), []).append((op.name, t))

    def lookup(node: torch.fx.Node, value: torch.Tensor, scale: float, zp: int) -> tuple[str, torch.Tensor] | None:
        return closest(((f"{name} (MIL)", torch.from_numpy(t.astype(np.int8)).reshape(value.shape))
                        for name, t in by_qparams.get((float(np.float16(scale)), zp), []) if t.size == value.numel()),
                       value)

    rep = local_layer_report(graph, x, lookup)
    plain = program.run({in_name: x.numpy().astype(np.float32)})
    rep["runtime_identical"] = bool(np.array_equal(np.asarray(outputs[out_name]), np.asarray(plain[out_name])))
    return rep


class _CoreMLSession(Session):
    def __init__(self, path: Path, io_names: tuple[str, str], compute_units: str) -> None:
        import coremltools as ct

        with quiet():
            self._ml = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units.upper()))
        self._in, self._out = io_names
        self.runtime_version = ct.__version__

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._ml.predict({self._in: x[i:i + 1].astype(np.float32)})[self._out]
                               for i in range(x.shape[0])])

    def close(self) -> None:
        self._ml = None
