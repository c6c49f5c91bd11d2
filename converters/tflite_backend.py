"""TFLite / LiteRT: ``.tflite`` through litert-torch, run by ``ai_edge_litert`` with XNNPACK.

fp32, and int8 through PT2E with litert-torch's own quantizer. Inputs and outputs are float32
by default, so apps feed float pixels: litert-torch makes a statically quantised model's I/O int8,
and :func:`float_io` puts a QUANTIZE in front and a DEQUANTIZE behind (the inverse of TFLite's
``modify_model_interface``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .base import FP32_FORMS, Converter, Delegation, Session, keep_float, merge_float_islands, quiet, register_converter


@register_converter
class TFLiteConverter(Converter):
    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32", "int8")
    packages = ("litert_torch",)
    runtime_packages = ("ai_edge_litert.interpreter",)
    fold_quantize = False
    # int8: one-element constants of elementwise ops take the op's rank, so the NHWC layout pass keeps those
    # ops in NHWC (_rank_matched_scalars); off only to measure what it saves (benchmarks/int8_forms.py)
    nhwc_constants: ClassVar[bool] = True
    # keep an add/mul between float-only ops float (converters.base.merge_float_islands), and let litert-torch's
    # annotators see adds, muls and pools (_with_source_fns); off only to measure what they change
    merge_islands: ClassVar[bool] = True
    source_fns: ClassVar[bool] = True
    layers_source = "int8 activations matched a quantize node of the PyTorch graph"

    def compare_layers(self, path: Path, graph: Any, x: Any) -> dict[str, Any]:
        return compare_layers(path, graph, x)


    # int8 keeps one kernel per hardswish, measured on a phone's core: LiteRT's int8 HARD_SWISH counted 6-10% fewer
    # cortex-a76 instructions than the add/clamp/mul rewrite (benchmarks/arm_instructions.py), although on this x86
    # host the rewrite ran faster (MobileNetV3-Large 7.4 -> 4.4 ms) because XNNPACK's x86 delegate takes no int8
    # HARD_SWISH; `--form hardswish=int8` keeps that choice for x86 targets. Dynamic ReLU is written
    # a2 x + relu((a1 - a2) x): LiteRT runs an int8 MAXIMUM with TFLite's slow broadcasting reference kernel outside
    # XNNPACK (9.0 M of Mobile-Former-26M's 47.9 M cortex-a76 instructions per forward, profile --functions); with
    # the rewrite int8 counts 1.03 of fp32 instead of 1.20 (on x86 the maximum ran faster, 10.4 vs 11.2 ms for
    # Mobile-Former-294M: `--form dyrelu=max` there).
    # SiLU is written x * sigmoid(x): litert-torch quantises a sigmoid (fixed range) and a mul but has no SiLU, so
    # the native form ran every SiLU in float (EfficientNet-B0 int8: 0.74 of fp32's cortex-a76 instructions; 0.40
    # written out, the same accuracy against float).
    INT8_FORMS: ClassVar[dict[str, str]] = {"hardswish": "native", "dyrelu": "relu", "silu": "sigmoid"}

    def prepare_model(self, model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
        from mobilevits.layers import set_deploy_forms

        return set_deploy_forms(model, **(self.INT8_FORMS if precision == "int8" else FP32_FORMS))

    def quantizer(self, precision: str, qat: bool = False):
        if precision != "int8":
            return None
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

        if qat:
            _patch_litert_qat_pattern_helper()
        q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
        q = keep_float(_share_resize_qparams(_share_sigmoid_qparams(_with_source_fns(q)) if self.source_fns else q))
        q = float_input_normalization(q)
        # with adds and muls annotated, one between two float-only ops (LeViT's attention bias between its
        # float batch matmul and softmax) would cost a QUANTIZE and a DEQUANTIZE: it stays in the float island
        return merge_float_islands(q) if self.merge_islands else q

    def preflight(self, program: torch.export.ExportedProgram, precision: str) -> list[str]:
        reasons = super().preflight(program, precision)
        for node in program.graph.nodes:
            if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
                continue
            val = node.args[0].meta.get("val")
            # litert-torch 0.10 bug, measured: a linear over (1, n, 1, C) (rank >= 4, leading and
            # second-to-last dims 1) fails in its MLIR passes with "'tfl.batch_matmul' op found invalid
            # output rank, expected 3 but got 4"; (2, n, 1, C) and (1, n, 2, C) convert.
            if isinstance(val, torch.Tensor) and val.dim() >= 4 and val.shape[0] == 1 and val.shape[-2] == 1:
                reasons.append(f"linear {node.name!r} takes a rank-{val.dim()} input of shape {tuple(val.shape)}, "
                               "which litert-torch 0.10 cannot convert (tfl.batch_matmul rank error); write that "
                               "linear over a rank-3 input (drop the size-1 axis) in the model")
                break
        return reasons

    def lower(self, program: torch.export.ExportedProgram, precision: str, path: Path, quantized: bool,
              quantizer: Any = None, module: torch.nn.Module | None = None, **options: Any) -> Delegation:
        import litert_torch

        # litert-torch wants an nn.Module: the eager model (float) or the quantised graph; both in eval.
        module = module if module is not None else program.module()
        example = tuple(program.example_inputs[0])
        with quiet():
            if quantized:
                from litert_torch.quantize.quant_config import QuantConfig

                _patch_litert_layout_pass_meta()
                if self.nhwc_constants:
                    _rank_matched_scalars(module)

                edge = litert_torch.convert(module, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
            else:
                edge = litert_torch.convert(module, example)
            edge.export(str(path))
        float_io(path)
        return self.delegation(path)

    def _interpreter(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        with quiet():
            it = Interpreter(model_path=str(path), num_threads=int(threads))
            it.allocate_tensors()
        return it

    def open(self, path: Path, threads: int = 1) -> Session:
        return _TFLiteSession(self._interpreter(path, threads))

    def delegation(self, path: Path) -> Delegation:
        """Ops by type, and which ones XNNPACK took: a node is delegated when it lies between a
        DELEGATE node's inputs and outputs in the original graph."""
        it = self._interpreter(path)
        ops = it._get_ops_details()
        producer = {}
        for op in ops:
            if op["op_name"] != "DELEGATE":
                for t in op["outputs"]:
                    producer[int(t)] = op["index"]
        taken: set[int] = set()
        delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
        for d in delegates:
            stop = {int(t) for t in d["inputs"]}
            stack = [int(t) for t in d["outputs"]]
            while stack:
                t = stack.pop()
                if t in stop or t not in producer or producer[t] in taken:
                    continue
                idx = producer[t]
                taken.add(idx)
                stack.extend(int(i) for i in ops[idx]["inputs"] if i >= 0)
        inside: Counter[str] = Counter()
        outside: Counter[str] = Counter()
        for op in ops:
            if op["op_name"] == "DELEGATE":
                continue
            (inside if op["index"] in taken else outside)[op["op_name"]] += 1
        return Delegation(sum(inside.values()), sum(outside.values()), dict(outside), dict(inside), len(delegates),
                          note="delegate: XNNPACK (LiteRT default CPU delegate)", float_ops=float_ops(it))


def float_ops(interpreter: Any) -> dict[str, int]:
    """Ops of a quantised TFLite program that compute in float (a float32 output; between the program's
    DEQUANTIZE and QUANTIZE ops), by type; empty for a float program. ``interpreter``: a loaded ``Interpreter``
    or a ``.tflite`` path."""
    if not hasattr(interpreter, "_get_ops_details"):
        from ai_edge_litert.interpreter import Interpreter

        with quiet():
            interpreter = Interpreter(model_path=str(interpreter))
    dtype = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    everything = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    produced = {int(t) for op in everything for t in op["outputs"]}
    # the float prologue: ops that read only the program's float inputs (the baked-in input normalisation,
    # float_input_normalization) run before the first QUANTIZE, not between a DEQUANTIZE and a QUANTIZE
    prologue = {int(d["index"]) for d in interpreter.get_input_details()}
    counted = Counter()
    for op in everything:  # in execution order
        outputs = [int(t) for t in op["outputs"]]
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") or not any(dtype[t] == np.float32 for t in outputs):
            continue
        if all(int(t) in prologue for t in op["inputs"] if int(t) in produced or int(t) in prologue):
            prologue.update(outputs)
            continue
        counted[op["op_name"]] += 1
    quantised = any(dtype[int(t)] in (np.int8, np.uint8) for op in everything for t in op["outputs"]
                    if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"))
    return dict(counted) if quantised else {}


def float_io(path: Path) -> bool:
    """Give a quantised ``.tflite`` float32 inputs and outputs, in place; True if it changed anything.

    An int8 input tensor becomes the output of a new QUANTIZE op fed by a new float32 input with
    the same shape; an int8 output gets a DEQUANTIZE op to a new float32 output. Quantisation
    parameters stay those the model was calibrated with, so results are bit-identical.
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(path))
    sg = model.subgraphs[0]
    changed = False

    def opcode(builtin: int) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if fbu.get_builtin_code_from_operator_code(oc) == builtin:
                return i
        oc = fb.OperatorCodeT()
        oc.builtinCode = builtin
        oc.deprecatedBuiltinCode = min(builtin, 127)
        oc.version = 1
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def float_twin(t_idx: int, suffix: str) -> int:
        src = sg.tensors[t_idx]
        t = fb.TensorT()
        t.shape = list(src.shape)
        t.shapeSignature = None if src.shapeSignature is None else list(src.shapeSignature)
        t.type = fb.TensorType.FLOAT32
        t.name = (src.name.decode() if isinstance(src.name, bytes) else str(src.name)) + suffix
        buf = fb.BufferT()
        model.buffers.append(buf)
        t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    quantised = (fb.TensorType.INT8, fb.TensorType.UINT8, fb.TensorType.INT16)
    for pos, t_idx in enumerate(list(sg.inputs)):
        if sg.tensors[t_idx].type in quantised:
            new = float_twin(t_idx, "_float")
            op = fb.OperatorT()
            op.opcodeIndex = opcode(fb.BuiltinOperator.QUANTIZE)
            op.inputs, op.outputs = [new], [t_idx]
            sg.operators.insert(0, op)
            sg.inputs[pos] = new
            _retarget_signature(model, t_idx, new)
            changed = True
    for pos, t_idx in enumerate(list(sg.outputs)):
        if sg.tensors[t_idx].type in quantised:
            new = float_twin(t_idx, "_float")
            op = fb.OperatorT()
            op.opcodeIndex = opcode(fb.BuiltinOperator.DEQUANTIZE)
            op.inputs, op.outputs = [t_idx], [new]
            sg.operators.append(op)
            sg.outputs[pos] = new
            _retarget_signature(model, t_idx, new)
            changed = True
    if changed:
        tmp = Path(str(path) + ".io")
        fbu.write_model(model, str(tmp))
        tmp.replace(path)
    return changed


def _retarget_signature(model: Any, old: int, new: int) -> None:
    for sig in model.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            if tm.tensorIndex == old:
                tm.tensorIndex = new


_PATCHED: set[str] = set()
_ELEMENTWISE = {torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.mul.Tensor,
                torch.ops.aten.div.Tensor}


def _rank_matched_scalars(graph: torch.fx.GraphModule) -> list[str]:
    """Give each one-element constant of an elementwise op the rank of the op's output, in place; returns the
    constants reshaped.

    PT2E turns ``x + 3.0`` into an add of a 0-D constant (so that it can be quantised). litert-torch 0.10's NHWC
    layout pass runs an op in NHWC only when all its inputs are 4-D, so every such add or mul on an image
    tensor ran in NCHW between two int8 TRANSPOSEs of the whole activation (measured: 36 TRANSPOSEs in
    MobileNetV3-Small's int8 hardswish gates, one in its fp32 program). A (1, 1, 1, 1) constant broadcasts
    to the same values, so the function is unchanged; the transposes go.
    """
    changed = []
    if not isinstance(graph, torch.fx.GraphModule):
        return changed
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in _ELEMENTWISE:
            continue
        val = node.meta.get("val")
        rank = val.dim() if isinstance(val, torch.Tensor) else 0
        for arg in node.args:
            alone = True  # the constant feeds this op only (another op may have another rank)
            while isinstance(arg, torch.fx.Node) and arg.op == "call_function" and "quantize" in str(arg.target):
                alone &= len(arg.users) == 1
                arg = arg.args[0]  # through quantize / dequantize to the constant
            if not (isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and alone and len(arg.users) == 1):
                continue
            owner_name, _, attr = arg.target.rpartition(".")
            owner = graph.get_submodule(owner_name) if owner_name else graph
            const = getattr(owner, attr)
            if isinstance(const, torch.Tensor) and const.numel() == 1 and const.dim() < rank:
                setattr(owner, attr, const.reshape([1] * rank))
                changed.append(arg.target)
    return changed


def _patch_litert_layout_pass_meta() -> None:
    """Workaround for litert-torch 0.10.0: int8 conversion fails in its NHWC layout pass with
    "Attempting to convert non-NHWC compatible node to NHWC: dequantize_per_tensor_N" when one
    dequantize feeds both an NCHW and an NHWC consumer (Mobile-Former's residual after the stem).

    ``OptimizeLayoutTransposesPass.insert_t_q_dq`` replaces the existing dequantize node's whole
    ``meta`` with the target's source metadata, dropping its ``val`` (shape) and its layout mark, so
    the next consumer's layout check finds no 4-D tensor (or transposes it twice). The new nodes get
    their own metadata, so give the existing node its own back. Applied once, for int8.
    """
    if "layout_meta" in _PATCHED:
        return
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import pass_body

    cls = pass_body.OptimizeLayoutTransposesPass
    original = cls.insert_t_q_dq

    def patched(self: Any, graph: Any, input_dq: Any, *args: Any, **kwargs: Any) -> Any:
        own = input_dq.meta
        nodes = original(self, graph, input_dq, *args, **kwargs)
        input_dq.meta = own
        return nodes

    cls.insert_t_q_dq = patched
    _PATCHED.add("layout_meta")


def _share_resize_qparams(quantizer: Any) -> Any:
    """Quantise resizes as LiteRT runs them: in int8, with their input's scale; returns ``quantizer``.

    litert-torch 0.10's quantizer leaves ``upsample_*`` unannotated, but its converter lowers a resize
    of an int8 tensor to an int8 RESIZE_BILINEAR that keeps one scale for input and output. Measured
    with ``check --layers`` (tests/test_tflite_layers.py): when a quantised op follows the resize, the
    artifact gives the resize and the op before it the scale observed after the resize, and that op
    saturates (41 int8 steps off in the test net); when float ops follow (MobileViT's resize before
    unfolding, feature maps not divisible by the patch), the PyTorch graph never rounds the resize and
    the next op comes out 2-3 steps off; when the resize reads a float tensor (MobileViT's fold after
    the last LayerNorm), LiteRT quantises before resizing and PyTorch after, 3 steps apart. So the
    resize's output shares its input's quantisation parameters, and a float input is observed and
    quantised first, as LiteRT runs it.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    resize = {torch.ops.aten.upsample_bilinear2d.vec, torch.ops.aten.upsample_bilinear2d.default,
              torch.ops.aten.upsample_nearest2d.vec, torch.ops.aten.upsample_nearest2d.default}
    original = quantizer.annotate

    def annotate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = original(model)
        act = quantizer.global_config.input_activation if quantizer.global_config else None
        for n in model.graph.nodes:
            prev = n.args[0] if n.op == "call_function" and n.target in resize else None
            if not isinstance(prev, torch.fx.Node) or "quantization_annotation" in n.meta:
                continue
            ann = prev.meta.get("quantization_annotation")
            if ann is not None and ann.output_qspec is not None:  # int8 already: keep its scale
                shared = SharedQuantizationSpec(prev)
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True)
            elif act is not None:  # float input (a LayerNorm's output): LiteRT quantises it before resizing
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={prev: act}, output_qspec=SharedQuantizationSpec((prev, n)), _annotated=True)
        return model

    quantizer.annotate = annotate
    return quantizer


# What litert-torch's annotators look for in ``source_fn_stack`` (get_source_partitions), by the aten op
# torch.export leaves: adds, muls, concatenations, pools and the ReLU of its add+relu / mul+relu patterns.
_SOURCE_FNS = {torch.ops.aten.add.Tensor: torch.add, torch.ops.aten.add_.Tensor: torch.add,
               torch.ops.aten.mul.Tensor: torch.mul, torch.ops.aten.mul_.Tensor: torch.mul,
               torch.ops.aten.cat.default: torch.cat,
               torch.ops.aten.max_pool2d.default: torch.nn.functional.max_pool2d,
               torch.ops.aten.adaptive_avg_pool2d.default: torch.nn.functional.adaptive_avg_pool2d,
               torch.ops.aten.relu.default: torch.nn.ReLU, torch.ops.aten.relu_.default: torch.nn.ReLU,
               # a spatial mean (squeeze-excitation, global pool) is what the adaptive-pool annotator accepts
               torch.ops.aten.mean.dim: torch.nn.functional.adaptive_avg_pool2d}


def _image_shaped(n: torch.fx.Node) -> bool:
    """Whether ``n`` computes on an image tensor (N, C, H, W); a mean only if it averages over H and W."""
    if n.target == torch.ops.aten.mean.dim:
        x = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
        dims = n.args[1] if len(n.args) > 1 else None
        # a mean over channels is a LayerNorm's statistic: it keeps its own scale
        return (isinstance(x, torch.Tensor) and x.dim() == 4 and dims is not None
                and sorted(d % 4 for d in dims) == [2, 3])
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 4


def _with_source_fns(quantizer: Any) -> Any:
    """Let litert-torch's quantizer see the adds, muls, concatenations and pools; returns ``quantizer``.

    Its annotators for those ops find them by ``node.meta["source_fn_stack"]``, which torch 2.13's
    ``torch.export`` no longer records, so none of them was annotated: an add stayed int8 in the .tflite only
    where both neighbours happened to quantise, and elsewhere ran in float between a DEQUANTIZE and a QUANTIZE
    (MobileNetV3-Small int8: 4 float ADDs). Before annotating, each such node on an image-shaped (rank-4) tensor
    without a record gets one naming the function the annotator expects (``_SOURCE_FNS``); nothing else changes.
    A spatial mean counts as an average pool: squeeze-excitation's mean of a native int8 HARD_SWISH otherwise
    read it in float (MobileNetV3's tiny model: 2 HARD_SWISH and 2 MEAN between a DEQUANTIZE and a QUANTIZE).

    Token tensors (rank 3) are left as litert-torch finds them: quantising the residual stream of a transformer
    that carries a class token of a few hundredths beside patch tokens of tens put both on one int8 scale, and
    LiteRT's int8 ADD, one step off PyTorch's rounding, moved the class token enough that the final LayerNorm
    amplified it: TNT's tiny test model fell to 16 dB against its quantised graph (tests/test_converters.py).
    """
    original = quantizer.annotate

    def annotate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for n in model.graph.nodes:
            if (n.op == "call_function" and n.target in _SOURCE_FNS and not n.meta.get("source_fn_stack")
                    and _image_shaped(n)):
                n.meta["source_fn_stack"] = [(n.name, _SOURCE_FNS[n.target])]
        return original(model)

    quantizer.annotate = annotate
    return quantizer


def float_input_normalization(quantizer: Any) -> Any:
    """Leave the input normalisation baked into the graph (``Normalize``: ``x * scale + shift``, per channel) in
    float, so the input is quantised once, after it; returns ``quantizer``.

    Quantised, the multiply-add ran after the NCHW -> NHWC change on int8 pixels of 3 channels: LiteRT's XNNPACK
    called its int8 MUL and ADD once per pixel (on cortex-a76, 5.5 M of MobileNetV3-Small-0.75's 26.8 M
    instructions per forward, benchmarks/arm_functions.py). In float it is the multiply-add over whole NCHW
    planes that the fp32 program runs (0.1 M), on a float input that the program would convert anyway.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    original = quantizer.annotate

    def annotate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = original(model)
        for mul, add in _input_affines(model.graph):
            for n in (mul, add):
                n.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
        return model

    quantizer.annotate = annotate
    return quantizer


def _input_affines(graph: torch.fx.Graph) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """(mul, add) pairs that compute ``input * constant + constant`` straight from a graph input."""

    def const(a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and a.op == "get_attr"

    pairs = []
    for x in (n for n in graph.nodes if n.op == "placeholder"):
        users = [u for u in x.users if isinstance(u.target, torch._ops.OpOverload)]  # not export's guard call
        if len(users) != 1 or users[0].target != torch.ops.aten.mul.Tensor:
            continue
        mul = users[0]
        if not any(const(a) for a in mul.args) or len(mul.users) != 1:
            continue
        add = next(iter(mul.users))
        if add.target == torch.ops.aten.add.Tensor and any(const(a) for a in add.args):
            pairs.append((mul, add))
    return pairs


def _share_sigmoid_qparams(quantizer: Any) -> Any:
    """Let an op that reads a sigmoid read its fixed int8 range (scale 1/256) as is; returns ``quantizer``.

    LiteRT's MUL takes the LOGISTIC's int8 output directly, so a requantisation to the mul's observed scale in
    between would be in the PyTorch graph only (24 quantize nodes with no .tflite tensor in MobileViT's tiny
    model with silu=sigmoid, which the per-op layer check could not match).
    """
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, SharedQuantizationSpec

    original = quantizer.annotate

    def annotate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = original(model)
        for n in model.graph.nodes:
            ann = n.meta.get("quantization_annotation")
            for inp in list(ann.input_qspec_map) if ann is not None else []:
                src = inp.meta.get("quantization_annotation")
                if (inp.target == torch.ops.aten.sigmoid.default and src is not None
                        and isinstance(src.output_qspec, FixedQParamsQuantizationSpec)):
                    ann.input_qspec_map[inp] = SharedQuantizationSpec(inp)
        return model

    quantizer.annotate = annotate
    return quantizer


def _patch_litert_qat_pattern_helper() -> None:
    """Workaround for litert-torch 0.10.0 + torchao 0.18: QAT annotation of conv+BN crashes with
    "Expected `mod` to be an instance of `torch.nn.Module`, got function", because torchao's
    pattern helper now exports its argument with torch.export and litert-torch hands it a plain
    function. Wrap that function in a module. Applied once, only when a QAT quantizer is requested.
    """
    if "qat_pattern" in _PATCHED:
        return
    from litert_torch.quantize import pt2e_quantizer_utils as utils

    original = utils._get_aten_graph_module_for_pattern

    class _Wrap(torch.nn.Module):
        def __init__(self, fn: Any) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *args: Any) -> Any:
            return self.fn(*args)

    def patched(pattern: Any, example_inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            pattern = _Wrap(pattern)
        return original(pattern, example_inputs, *args, **kwargs)

    utils._get_aten_graph_module_for_pattern = patched
    _PATCHED.add("qat_pattern")


# --------------------------------------------------------------------------------------------
# per-op comparison of an int8 .tflite with its quantised PyTorch graph
# --------------------------------------------------------------------------------------------


def compare_layers(path: Path, graph: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Every int8 activation of a ``.tflite`` against the quantised PyTorch graph (see
    :func:`converters.int8_layers.local_layer_report`), on one image ``x`` of shape (1, 3, H, W).

    The interpreter keeps every tensor; its int8 tensors are matched to the graph's quantize nodes by
    quantisation parameters (scale, zero point, element count; when a transpose or reshape shares
    them, the layout that agrees best is taken). ``runtime_identical``: that interpreter gave the
    same output as the normal one, so what was inspected is what ``run`` computes.
    """
    from ai_edge_litert.interpreter import Interpreter

    from .int8_layers import closest, local_layer_report

    x = x[:1].contiguous()
    with quiet():
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1)
        it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], x.numpy().astype(np.float32))
    it.invoke()
    final = it.get_tensor(out["index"]).copy()

    # int8 tensors by (scale, zero point): (producing op, tensor); per-channel weights have many scales
    by_qparams: dict[tuple[float, int], list[tuple[str, np.ndarray]]] = {}
    for op in it._get_ops_details():
        for t_idx in op["outputs"]:
            t = it._get_tensor_details(t_idx, 0)
            scale, zp = t["quantization"]
            if t["dtype"] == np.int8 and scale > 0:
                by_qparams.setdefault((float(np.float32(scale)), int(zp)), []).append(
                    (op["op_name"], it.get_tensor(t_idx).copy()))

    def lookup(node: torch.fx.Node, value: torch.Tensor, scale: float, zp: int) -> tuple[str, torch.Tensor] | None:
        # the same data in PyTorch's layout: as is, or from NHWC where litert-torch kept channels last
        return closest(((tfl_op, torch.from_numpy(np.ascontiguousarray(v)).reshape(value.shape))
                        for tfl_op, t in by_qparams.get((float(np.float32(scale)), zp), []) if t.size == value.numel()
                        for v in [t] + ([t.transpose(0, 3, 1, 2)] if t.ndim == 4 else [])), value)

    rep = local_layer_report(graph, x, lookup)
    rep["runtime_identical"] = bool(np.array_equal(final, TFLiteConverter().run(path, x.numpy())))
    return rep


class _TFLiteSession(Session):
    def __init__(self, interpreter: Any) -> None:
        import ai_edge_litert

        self._it = interpreter
        self._in = interpreter.get_input_details()[0]["index"]
        self._out = interpreter.get_output_details()[0]["index"]
        self.runtime_version = getattr(ai_edge_litert, "__version__", "")

    def run(self, x: np.ndarray) -> np.ndarray:
        ys = []
        for i in range(x.shape[0]):  # converted at batch 1
            self._it.set_tensor(self._in, np.ascontiguousarray(x[i:i + 1], dtype=np.float32))
            self._it.invoke()
            ys.append(self._it.get_tensor(self._out).astype(np.float32).copy())
        return np.concatenate(ys)

    def close(self) -> None:
        self._it = None
