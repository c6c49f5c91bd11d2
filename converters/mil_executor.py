"""A NumPy reference executor for Core ML ML programs (``.mlpackage``), so Core ML numerics can be checked off macOS.

``MLModel.predict`` exists only on macOS. This module reads the MIL program inside a package (the protobuf
spec, with weights from ``Data/com.apple.CoreML/weights/weight.bin``) and runs it op by op with NumPy::

    outputs = run_mlpackage("m.mlpackage", {"image": x})
    outputs, per_op = run_mlpackage("m.mlpackage", {"image": x}, capture=True)

Numerics (a deliberate, documented model of Core ML's CPU execution; bit-exactness is not claimed):

* Every tensor is stored in the dtype the program declares for it: fp16 variables hold ``np.float16``
  values, so an fp16 program's activations and weights carry fp16 rounding as on device.
* Each op computes in fp32 from its (upcast) inputs — conv / linear / matmul accumulate their dot products
  in fp32, softmax / layer_norm / reductions keep their statistics in fp32 — and its result is rounded
  once to the declared output dtype (round-to-nearest-even): "fp16 storage, fp32 accumulation, one
  rounding per op". Hardware that also rounds inside an op (fp16 accumulation on the GPU / Neural
  Engine) drifts somewhat more; on macOS the check runs ``MLModel.predict`` too and reports both.
* int8 ``quantize`` computes ``round_half_even(x * (1 / scale)) + zero_point`` clipped to the dtype's
  range (the reciprocal in fp32, as PyTorch's ``quantize_per_tensor`` does), in the program's float
  precision: an fp16 program quantises with fp16-rounded scales, as on device.

An op this module does not implement raises :class:`UnsupportedOpError` naming the op and listing the
program's op histogram before anything runs — nothing is ever skipped silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import UnsupportedError

__all__ = ["MILOp", "MILProgram", "SUPPORTED_OPS", "UnsupportedOpError", "compare_layers", "load_mlmodel",
           "load_mlpackage", "run_mlpackage"]


class UnsupportedOpError(UnsupportedError):
    """The program contains an op (or a dtype) the NumPy executor does not implement."""

    def __init__(self, op_type: str, op_name: str, histogram: dict[str, int], detail: str = "") -> None:
        self.op_type = op_type
        self.op_name = op_name
        self.histogram = dict(histogram)
        self.detail = detail
        hist = ", ".join(f"{k} x{v}" for k, v in sorted(histogram.items()))
        super().__init__(f"MIL op {op_type!r} (at {op_name!r}) is not supported by the NumPy MIL executor"
                         f"{': ' + detail if detail else ''}; the program's op histogram: {hist}")


class MILExecutionError(RuntimeError):
    """An op produced a result that contradicts the program (shape), or the inputs do not fit."""


# ---------------------------------------------------------------------------------------------
# Program representation
# ---------------------------------------------------------------------------------------------

# MIL proto DataType enum -> numpy dtype (sub-byte and fp8 types are not supported).
_DTYPES: dict[int, Any] = {1: np.bool_, 2: np.str_, 10: np.float16, 11: np.float32, 12: np.float64,
                           21: np.int8, 22: np.int16, 23: np.int32, 24: np.int64, 31: np.uint8,
                           32: np.uint16, 33: np.uint32, 34: np.uint64}
# MIL dtype strings (cast, quantize's output_dtype) -> numpy dtype.
_DTYPE_NAMES: dict[str, Any] = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8,
                                "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                                "uint16": np.uint16, "uint32": np.uint32, "bool": np.bool_}


@dataclass
class VarType:
    """A variable's declared dtype (numpy) and shape."""

    dtype: Any
    shape: tuple[int, ...]


@dataclass
class MILOp:
    """One operation: its type, inputs (variable names or literal values) and declared outputs."""

    type: str
    name: str
    inputs: dict[str, list[tuple[str, Any]]]  # param -> [("var", name) | ("value", ndarray)]
    outputs: list[tuple[str, VarType]]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self.outputs]


@dataclass
class MILProgram:
    """The ``main`` function of an ML program: inputs, constants, ops in order, outputs."""

    inputs: dict[str, VarType]
    outputs: list[str]
    consts: dict[str, Any]
    ops: list[MILOp]
    opset: str = ""
    source: str = ""

    # ---- loading ----------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Any, weights_dir: str | Path | None, source: str = "") -> MILProgram:
        """Parse a ``Model`` protobuf whose ``mlProgram`` references blobs in ``weights_dir``."""
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{source or 'model'} is not an ML program ({spec.WhichOneof('Type')})")
        func = spec.mlProgram.functions["main"]
        block = func.block_specializations[func.opset]
        prog = cls(inputs={i.name: _var_type(i.type, i.name) for i in func.inputs}, outputs=list(block.outputs),
                   consts={}, ops=[], opset=func.opset, source=source)
        readers: dict[str, Any] = {}
        try:
            prog._parse_ops(block, weights_dir, readers)
        except UnsupportedOpError as e:
            if e.histogram:
                raise
            # a type or value the parser cannot represent: report it like an unknown op, with the histogram
            hist = dict(Counter(op.type for op in block.operations if op.type != "const"))
            raise UnsupportedOpError(e.op_type, e.op_name, hist, e.detail) from None
        return prog

    def _parse_ops(self, block: Any, weights_dir: str | Path | None, readers: dict[str, Any]) -> None:
        """Constants into ``consts``, everything else into ``ops`` (in program order)."""
        for op in block.operations:
            if op.blocks:
                # control flow (cond / while_loop) has nested blocks; our models never produce it
                self.ops.append(MILOp(op.type, _op_name(op), {}, []))
                continue
            outputs = [(o.name, _var_type(o.type, o.name)) for o in op.outputs]
            if op.type == "const":
                name = outputs[0][0]
                self.consts[name] = _load_value(op.attributes["val"], weights_dir, readers, name)
                continue
            inputs: dict[str, list[tuple[str, Any]]] = {}
            for param, arg in op.inputs.items():
                bindings = []
                for b in arg.arguments:
                    if b.WhichOneof("binding") == "name":
                        bindings.append(("var", b.name))
                    else:
                        bindings.append(("value", _load_value(b.value, weights_dir, readers, f"{op.type}.{param}")))
                inputs[param] = bindings
            for param, value in op.attributes.items():
                # constexpr_* ops carry their (constant) parameters as attributes, not inputs
                if param != "name" and param not in inputs:
                    inputs[param] = [("value", _load_value(value, weights_dir, readers, f"{op.type}.{param}"))]
            self.ops.append(MILOp(op.type, _op_name(op), inputs, outputs))

    def histogram(self) -> dict[str, int]:
        """Op types and their counts (constants excluded), as ``coreml_backend.op_histogram``."""
        return dict(Counter(op.type for op in self.ops))

    def unsupported(self) -> list[MILOp]:
        return [op for op in self.ops if op.type not in SUPPORTED_OPS]

    # ---- execution --------------------------------------------------------------------------

    def run(self, inputs: dict[str, np.ndarray], capture: bool = False, fp16_as_fp32: bool = False
            ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Execute the program on one set of inputs.

        Returns the outputs by name; with ``capture`` also every op output by variable name (in
        execution order), for per-layer comparison. ``fp16_as_fp32`` keeps fp16 variables in fp32 (a
        diagnosis aid: separates fp16 rounding from every other source of error).
        """
        bad = self.unsupported()
        if bad:
            raise UnsupportedOpError(bad[0].type, bad[0].name, self.histogram())
        env: dict[str, Any] = dict(self.consts)
        for name, vt in self.inputs.items():
            if name not in inputs:
                raise MILExecutionError(f"missing input {name!r} (the program takes {sorted(self.inputs)})")
            x = np.asarray(inputs[name])
            if tuple(x.shape) != vt.shape:
                raise MILExecutionError(f"input {name!r} has shape {tuple(x.shape)}, the program declares {vt.shape}")
            env[name] = x.astype(vt.dtype, copy=False)
        captured: dict[str, np.ndarray] = {}
        for op in self.ops:
            args = _Args(op, env)
            try:
                result = SUPPORTED_OPS[op.type](args)
            except (UnsupportedOpError, MILExecutionError):
                raise
            except Exception as e:
                raise MILExecutionError(f"op {op.type} {op.name!r} failed: {type(e).__name__}: {e}") from e
            results = list(result) if isinstance(result, (list, tuple)) else [result]
            if len(results) != len(op.outputs):
                raise MILExecutionError(f"op {op.type} {op.name!r} produced {len(results)} outputs, "
                                        f"the program declares {len(op.outputs)}")
            for (name, vt), value in zip(op.outputs, results):
                value = _conform(np.asarray(value), vt, op, fp16_as_fp32)
                env[name] = value
                if capture:
                    captured[name] = value
        outputs = {name: np.asarray(env[name]) for name in self.outputs}
        return (outputs, captured) if capture else outputs


def load_mlpackage(path: str | Path) -> MILProgram:
    """Read the ML program of an ``.mlpackage`` (no Core ML runtime needed)."""
    import coremltools as ct

    from .base import quiet

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Core ML package not found: {path}")
    with quiet():
        ml = ct.models.MLModel(str(path), skip_model_load=True)
    return load_mlmodel(ml, source=str(path))


def load_mlmodel(ml: Any, source: str = "") -> MILProgram:
    """Read the ML program of an in-memory ``coremltools.models.MLModel`` (e.g. straight from ``ct.convert``)."""
    return MILProgram.from_spec(ml.get_spec(), getattr(ml, "weights_dir", None), source=source)


def run_mlpackage(path: str | Path | MILProgram, inputs: dict[str, np.ndarray], capture: bool = False
                  ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Execute an ``.mlpackage`` (or an already loaded program) with NumPy; see :meth:`MILProgram.run`."""
    prog = path if isinstance(path, MILProgram) else load_mlpackage(path)
    return prog.run(inputs, capture=capture)


# ---------------------------------------------------------------------------------------------
# Per-layer comparison
# ---------------------------------------------------------------------------------------------

# Ops whose outputs are not layer activations: weights materialised at load time.
_NOT_LAYERS = ("constexpr_",)


def _source_name(var: str) -> str:
    # coremltools' fp16 pass renames every op it retypes "<torch node>_cast_fp16"
    return var.removesuffix("_cast_fp16")


def compare_layers(program: MILProgram, captured: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   tolerance_db: float) -> dict[str, Any]:
    """Compare every MIL op output with the reference tensor of the same source name and shape.

    ``captured`` comes from ``program.run(..., capture=True)``; ``reference`` maps source (torch
    node) names to arrays. MIL output variables carry the torch node names of the exported graph
    (``_cast_fp16`` appended in fp16 programs); ops that coremltools created itself, fused away or
    re-laid out have no same-shaped counterpart and are listed as unmatched. Two low-SQNR cases are
    not divergences: an add/sub whose output matches up to a constant factor is ``rescaled``
    (coremltools' ``distributive_quantized_binary_op_scale_normalization`` moves one input scale into
    the next quantize), an output far smaller than its inputs whose error is within tolerance of
    the inputs' magnitude is ``cancellation``, and a dequantized int8 tensor within two quantisation
    steps of the reference everywhere is ``rounding``.

    Returns ``layers`` (one row per compared op, in execution order), ``first_divergence`` (the
    first row below ``tolerance_db``, or None), ``compared``, ``total`` and ``unmatched`` (op names).
    """
    from .compare import sqnr_db

    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    total = 0
    for index, op in enumerate(program.ops):
        if op.type.startswith(_NOT_LAYERS):
            continue
        for var, vt in op.outputs:
            total += 1
            src = _source_name(var)
            ref = reference.get(src)
            out = captured.get(var)
            if ref is None or out is None or tuple(np.shape(ref)) != tuple(out.shape):
                unmatched.append(var)
                continue
            ref64 = np.asarray(ref, dtype=np.float64)
            out64 = np.asarray(out, dtype=np.float64)
            row: dict[str, Any] = {"index": index, "op": op.name, "type": op.type, "output": var, "source": src,
                                   "shape": list(out.shape), "dtype": np.dtype(vt.dtype).name, "status": "ok"}
            if not np.all(np.isfinite(out64)):
                row["sqnr_db"] = float("-inf")
                row["status"] = "non-finite (fp16 overflow?)"
            else:
                row["sqnr_db"] = sqnr_db(ref64, out64)
                if row["sqnr_db"] < tolerance_db:
                    row["status"] = _explain(op, ref64, out64, program, captured, tolerance_db, row)
            rows.append(row)
    first = next((r for r in rows if r["status"] not in _BENIGN), None)
    return {"layers": rows, "first_divergence": first, "compared": len(rows), "total": total,
            "unmatched": unmatched, "tolerance_db": tolerance_db}


_BENIGN = ("ok", "rescaled", "cancellation", "rounding")


def const_value(program: MILProgram, binding: list[tuple[str, Any]] | None) -> np.ndarray | None:
    """The value of an op input bound to a constant (a ``const`` variable or a literal), else None."""
    if not binding:
        return None
    kind, v = binding[0]
    value = program.consts.get(v) if kind == "var" else v
    return None if value is None else np.asarray(value)


def _const_int(program: MILProgram, binding: list[tuple[str, Any]] | None) -> int | None:
    value = const_value(program, binding)
    return None if value is None else int(value.reshape(-1)[0])


def _explain(op: MILOp, ref: np.ndarray, out: np.ndarray, program: MILProgram, captured: dict[str, np.ndarray],
             tolerance_db: float, row: dict[str, Any]) -> str:
    """Status of an op below tolerance: ``rounding``, ``rescaled``, ``cancellation`` or ``diverged``."""
    from .compare import sqnr_db

    if op.type == "dequantize" and "scale" in op.inputs:
        # int8 requantisation flips: values that straddle a rounding boundary (ties after a mean, last-ulp
        # differences upstream) land a step apart, two where flips meet. Within two steps everywhere is
        # rounding, not an error (a wrong scale or constant moves large values by many steps).
        kind, v = op.inputs["scale"][0]
        step = program.consts.get(v) if kind == "var" else v
        if isinstance(step, np.ndarray):
            step = _along(np.abs(step.astype(np.float64)), ref.ndim, _const_int(program, op.inputs.get("axis")))
            if np.all(np.abs(ref - out) <= 2.001 * step):
                return "rounding"
    denom = float(np.sum(out * out))
    scale = float(np.sum(ref * out)) / denom if denom else 0.0
    if op.type in ("add", "sub") and scale and abs(scale - 1) > 1e-2 and sqnr_db(ref, scale * out) >= tolerance_db:
        row["scale"] = scale
        return "rescaled"
    # An output much smaller than its inputs (a LayerNorm's mean of a centred signal, x - mean(x)) inherits
    # the inputs' absolute error, so its own SQNR is low for no fault of the op: judge the error against
    # the inputs' magnitude instead.
    powers = []
    for param in ("x", "y"):
        for kind, v in op.inputs.get(param, []):
            value = captured.get(v, program.consts.get(v)) if kind == "var" else v
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
                powers.append(float(np.mean(np.square(value, dtype=np.float64))))
    noise = float(np.mean(np.square(ref - out)))
    if powers and noise and float(np.mean(ref * ref)) < 0.01 * max(powers):
        relative = 10 * math.log10(max(powers) / noise)
        row["sqnr_vs_input_db"] = relative
        if relative >= tolerance_db:
            return "cancellation"
    return "diverged"


def _op_name(op: Any) -> str:
    if "name" in op.attributes:
        vals = op.attributes["name"].immediateValue.tensor.strings.values
        if vals:
            return str(vals[0])
    return op.outputs[0].name if op.outputs else op.type


def _var_type(value_type: Any, what: str) -> VarType:
    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise UnsupportedOpError(f"<{kind}>", what, {}, "only tensor-typed variables are supported")
    tt = value_type.tensorType
    if tt.dataType not in _DTYPES:
        raise UnsupportedOpError(f"<dtype {tt.dataType}>", what, {}, "sub-byte and fp8 tensors are not supported")
    shape = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            raise UnsupportedOpError("<flexible shape>", what, {}, "only fixed input shapes are supported")
        shape.append(int(d.constant.size))
    return VarType(_DTYPES[tt.dataType], tuple(shape))


def _load_value(value: Any, weights_dir: str | Path | None, readers: dict[str, Any], what: str) -> Any:
    """A proto ``Value`` (immediate or blob-file) as a numpy array of its declared dtype and shape (or a str)."""
    vt = _var_type(value.type, what)
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        arr = _read_blob(value.blobFileValue, vt, weights_dir, readers, what)
    elif kind == "immediateValue":
        imm = value.immediateValue
        if imm.WhichOneof("value") != "tensor":
            raise UnsupportedOpError("<non-tensor immediate value>", what, {})
        t = imm.tensor
        which = t.WhichOneof("value")
        if which == "bytes":  # fp16, int8, uint8, ... immediates are stored as raw little-endian bytes
            arr = np.frombuffer(t.bytes.values, dtype=vt.dtype).copy()
        elif which == "strings":
            vals = list(t.strings.values)
            return str(vals[0]) if not vt.shape else np.array(vals, dtype=object).reshape(vt.shape)
        elif which is None:
            arr = np.zeros(0, dtype=vt.dtype)
        else:
            arr = np.array(list(getattr(t, which).values)).astype(vt.dtype)
    else:
        raise UnsupportedOpError(f"<value {kind}>", what, {})
    return arr.reshape(vt.shape)


def _read_blob(blob: Any, vt: VarType, weights_dir: str | Path | None, readers: dict[str, Any], what: str
               ) -> np.ndarray:
    if weights_dir is None:
        raise FileNotFoundError(f"{what} references {blob.fileName} but the package has no weights folder")
    # fileName is "@model_path/weights/weight.bin"; weights_dir is <pkg>/Data/com.apple.CoreML/weights
    path = str(Path(weights_dir) / blob.fileName.split("/")[-1])
    if path not in readers:
        # coremltools' own reader for the MIL blob-storage format (header, per-blob metadata, alignment)
        from coremltools.libmilstoragepython import _BlobStorageReader

        readers[path] = _BlobStorageReader(path)
    reader = readers[path]
    readers_by_dtype: dict[Any, Callable[[int], np.ndarray]] = {
        np.float32: reader.read_float_data, np.int8: reader.read_int8_data, np.uint8: reader.read_uint8_data,
        np.int16: reader.read_int16_data, np.uint16: reader.read_uint16_data, np.int32: reader.read_int32_data,
        np.uint32: reader.read_uint32_data,
    }
    if vt.dtype is np.float16:
        raw = reader.read_fp16_data(blob.offset)  # uint16 bit patterns
        arr = np.frombuffer(np.asarray(raw).tobytes(), dtype=np.float16).copy()
    elif vt.dtype in readers_by_dtype:
        arr = np.asarray(readers_by_dtype[vt.dtype](blob.offset)).copy()
    else:
        raise UnsupportedOpError(f"<blob of {np.dtype(vt.dtype).name}>", what, {})
    if arr.size != int(np.prod(vt.shape)):
        raise MILExecutionError(f"{what}: blob at offset {blob.offset} holds {arr.size} values, "
                                f"the program declares shape {vt.shape}")
    return arr.astype(vt.dtype, copy=False)


def _conform(value: np.ndarray, vt: VarType, op: MILOp, fp16_as_fp32: bool = False) -> np.ndarray:
    """Round/cast an op result to its declared dtype and insist on the declared shape."""
    if tuple(value.shape) != vt.shape:
        if value.size == int(np.prod(vt.shape)) and value.size == 1:
            value = value.reshape(vt.shape)  # scalar vs [1]: same thing for MIL's shape inference
        else:
            raise MILExecutionError(f"op {op.type} {op.name!r} produced shape {tuple(value.shape)}, "
                                    f"the program declares {vt.shape}")
    if vt.dtype is np.str_:
        return value
    if fp16_as_fp32 and vt.dtype is np.float16:
        return value.astype(np.float32, copy=False)
    return value.astype(vt.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Argument access
# ---------------------------------------------------------------------------------------------


class _Args:
    """An op's resolved inputs, with typed accessors and defaults for optional parameters."""

    def __init__(self, op: MILOp, env: dict[str, Any]) -> None:
        self.op = op
        self._env = env

    def _resolve(self, binding: tuple[str, Any]) -> Any:
        kind, v = binding
        if kind == "value":
            return v
        if v not in self._env:
            raise MILExecutionError(f"op {self.op.type} {self.op.name!r} reads {v!r} before it is defined")
        return self._env[v]

    def has(self, name: str) -> bool:
        return name in self.op.inputs

    def __getitem__(self, name: str) -> Any:
        if name not in self.op.inputs:
            raise MILExecutionError(f"op {self.op.type} {self.op.name!r} has no input {name!r}")
        b = self.op.inputs[name]
        return self._resolve(b[0]) if len(b) == 1 else [self._resolve(x) for x in b]

    def list(self, name: str) -> list[Any]:
        """A variadic input (concat's ``values``): always a list."""
        return [self._resolve(x) for x in self.op.inputs.get(name, [])]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if self.has(name) else default

    def f(self, name: str) -> np.ndarray:
        """A float input upcast to fp32 for computation (fp16 storage, fp32 arithmetic)."""
        return _f32(self[name])

    def scalar(self, name: str, default: Any = None) -> Any:
        v = self.get(name, default)
        if isinstance(v, np.ndarray):
            return v.reshape(-1)[0].item() if v.size else default
        return v

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        v = self.get(name, None)
        if v is None:
            return None if default is None else list(default)
        return [int(i) for i in np.asarray(v).reshape(-1)]

    def bools(self, name: str, default: Sequence[bool] | None = None) -> list[bool] | None:
        v = self.get(name, None)
        if v is None:
            return None if default is None else list(default)
        return [bool(i) for i in np.asarray(v).reshape(-1)]

    @property
    def out_dtype(self) -> Any:
        return self.op.outputs[0][1].dtype

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.op.outputs[0][1].shape


def _f32(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _axes(axes: list[int] | None, rank: int) -> tuple[int, ...]:
    """Normalised reduction axes; None means all of them."""
    if axes is None:
        return tuple(range(rank))
    return tuple(sorted(ax % rank for ax in axes)) if rank else ()


def _along(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Broadcast a scalar or per-``axis`` vector parameter (quantisation scale, zero point) against a tensor."""
    p = np.asarray(param)
    if p.ndim == 0 or axis is None:
        return p
    shape = [1] * rank
    shape[axis % rank] = p.size
    return p.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Elementwise ops
# ---------------------------------------------------------------------------------------------

SUPPORTED_OPS: dict[str, Callable[[_Args], Any]] = {}


def _op(*names: str) -> Callable[[Callable[[_Args], Any]], Callable[[_Args], Any]]:
    def register(fn: Callable[[_Args], Any]) -> Callable[[_Args], Any]:
        for n in names:
            SUPPORTED_OPS[n] = fn
        return fn

    return register


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[_Args], Any]:
    # numpy broadcasting is MIL's broadcasting (trailing-aligned, size-1 expansion)
    return lambda a: fn(_f32(a["x"]), _f32(a["y"]))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[_Args], Any]:
    return lambda a: fn(a.f("x"))


def _real_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        return np.floor_divide(x, y)  # integer real_div: the program declares an int result
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(x, y)


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.power(x, y)


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": _real_div, "pow": _pow,
    "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "less": np.less, "less_equal": np.less_equal, "logical_and": np.logical_and, "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    SUPPORTED_OPS[_name] = _binary(_fn)


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # scipy comes with scikit-learn; keep a slow exact fallback anyway
        return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)
    return erf(x).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so exp never overflows
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


_UNARY = {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh, "ceil": np.ceil,
    "cos": np.cos, "cosh": np.cosh, "erf": _erf, "exp": np.exp, "exp2": np.exp2, "floor": np.floor,
    "round": np.round,  # MIL round: half to even, like numpy
    "sign": np.sign, "sin": np.sin, "sinh": np.sinh, "sqrt": np.sqrt, "square": np.square, "tan": np.tan,
    "tanh": np.tanh, "logical_not": np.logical_not, "relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "relu6": lambda x: np.clip(x, 0, 6).astype(x.dtype), "sigmoid": _sigmoid, "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus, "softsign": lambda x: x / (1 + np.abs(x)),
}
for _name, _fn in _UNARY.items():
    SUPPORTED_OPS[_name] = _unary(_fn)


@_op("inverse")
def _inverse(a: _Args) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / (a.f("x") + np.float32(a.scalar("epsilon", 1e-4)))


@_op("log")
def _log(a: _Args) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a.f("x") + np.float32(a.scalar("epsilon", 1e-45)))


@_op("rsqrt")
def _rsqrt(a: _Args) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(a.f("x") + np.float32(a.scalar("epsilon", 1e-12)))


@_op("clip")
def _clip(a: _Args) -> np.ndarray:
    return np.minimum(np.maximum(a.f("x"), a.scalar("alpha")), a.scalar("beta"))


@_op("threshold")
def _threshold(a: _Args) -> np.ndarray:
    return np.maximum(a.f("x"), a.scalar("alpha"))


@_op("thresholded_relu")
def _thresholded_relu(a: _Args) -> np.ndarray:
    x = a.f("x")
    return np.where(x >= a.scalar("alpha"), x, 0).astype(x.dtype)


@_op("sigmoid_hard")
def _sigmoid_hard(a: _Args) -> np.ndarray:
    return np.clip(a.scalar("alpha") * a.f("x") + a.scalar("beta"), 0, 1)


@_op("leaky_relu")
def _leaky_relu(a: _Args) -> np.ndarray:
    x = a.f("x")
    return np.where(x >= 0, x, a.scalar("alpha") * x)


@_op("elu")
def _elu(a: _Args) -> np.ndarray:
    x = a.f("x")
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, a.scalar("alpha") * np.expm1(np.minimum(x, 0)))


@_op("clamped_relu")
def _clamped_relu(a: _Args) -> np.ndarray:
    x = a.f("x")
    return np.minimum(np.where(x >= 0, x, a.scalar("alpha") * x), a.scalar("beta"))


@_op("linear_activation")
def _linear_activation(a: _Args) -> np.ndarray:
    return a.scalar("alpha") * a.f("x") + a.scalar("beta")


@_op("scaled_tanh")
def _scaled_tanh(a: _Args) -> np.ndarray:
    return a.scalar("alpha") * np.tanh(a.scalar("beta") * a.f("x"))


@_op("prelu")
def _prelu(a: _Args) -> np.ndarray:
    x = a.f("x")
    alpha = _along(a.f("alpha"), x.ndim, 1)  # per channel (axis 1)
    return np.where(x > 0, x, alpha * x)


@_op("gelu")
def _gelu(a: _Args) -> np.ndarray:
    x = a.f("x")
    mode = a.scalar("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(np.float32(1.702) * x)
    if mode != "EXACT":
        raise MILExecutionError(f"gelu mode {mode!r}")
    return 0.5 * x * (1 + _erf(x / np.float32(math.sqrt(2))))


@_op("cast")
def _cast(a: _Args) -> np.ndarray:
    dtype = _DTYPE_NAMES[a.scalar("dtype")]
    x = np.asarray(a["x"])
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)  # float -> int truncates toward zero
    return x.astype(dtype)


@_op("select")
def _select(a: _Args) -> np.ndarray:
    return np.where(np.asarray(a["cond"]).astype(bool), _f32(a["a"]), _f32(a["b"]))


@_op("identity")
def _identity(a: _Args) -> np.ndarray:
    return np.asarray(a["x"])


# ---------------------------------------------------------------------------------------------
# Linear algebra and convolution (fp32 accumulation)
# ---------------------------------------------------------------------------------------------


@_op("linear")
def _linear(a: _Args) -> np.ndarray:
    x, w = a.f("x"), a.f("weight")  # weight is (out, in), like torch.nn.Linear
    y = np.matmul(x, w.T)
    b = a.get("bias")
    return y + _f32(b) if b is not None else y


@_op("matmul")
def _matmul(a: _Args) -> np.ndarray:
    x, y = a.f("x"), a.f("y")
    if a.scalar("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.scalar("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)  # numpy's rank-1 and batch-broadcast rules are MIL's


def _spatial_pads(pad_type: str, pad: list[int] | None, in_sp: Sequence[int], eff_k: Sequence[int],
                  strides: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for MIL's pad_type ``valid``/``custom``/``same``/``same_lower``."""
    n = len(in_sp)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = pad or [0] * 2 * n
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for i, k, s in zip(in_sp, eff_k, strides):
            total = max(0, s * math.ceil(i / s) - i + k - s)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise MILExecutionError(f"unknown pad_type {pad_type!r}")


@_op("conv")
def _conv(a: _Args) -> np.ndarray:
    x, w = a.f("x"), a.f("weight")
    nsp = x.ndim - 2
    strides = a.ints("strides", [1] * nsp)
    dil = a.ints("dilations", [1] * nsp)
    groups = int(a.scalar("groups", 1))
    k = w.shape[2:]
    eff_k = [(kk - 1) * d + 1 for kk, d in zip(k, dil)]
    pads = _spatial_pads(a.scalar("pad_type", "valid"), a.ints("pad"), x.shape[2:], eff_k, strides)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    out_sp = [(x.shape[2 + i] - eff_k[i]) // strides[i] + 1 for i in range(nsp)]
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    xg = x.reshape(n, groups, cg, *x.shape[2:])
    p = int(np.prod(out_sp))
    out = np.zeros((n, groups, og, p), dtype=np.float32)
    wg = w.reshape(groups, og, cg, *k)
    # One (grouped) 1x1 convolution per kernel tap, accumulated in fp32.
    for tap in np.ndindex(*k):
        sl = tuple(slice(t * d, t * d + (os - 1) * s + 1, s) for t, d, os, s in zip(tap, dil, out_sp, strides))
        patch = xg[(slice(None), slice(None), slice(None), *sl)].reshape(n, groups, cg, p)
        wt = wg[(slice(None), slice(None), slice(None), *tap)]  # (groups, og, cg)
        if cg == 1:  # depthwise: a broadcast multiply beats thousands of 1x1 matmuls
            out += wt[None, :, :, 0, None] * patch
        else:
            out += np.matmul(wt[None], patch)
    out = out.reshape(n, o, *out_sp)
    b = a.get("bias")
    if b is not None:
        out += _f32(b).reshape(1, o, *([1] * nsp))
    return out


# ---------------------------------------------------------------------------------------------
# Normalisation and softmax (statistics in fp32)
# ---------------------------------------------------------------------------------------------


@_op("softmax")
def _softmax(a: _Args) -> np.ndarray:
    x = a.f("x")
    axis = int(a.scalar("axis", -1))
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@_op("layer_norm")
def _layer_norm(a: _Args) -> np.ndarray:
    x = a.f("x")
    axes = _axes(a.ints("axes"), x.ndim)
    eps = np.float32(a.scalar("epsilon", 1e-5))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    norm_shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if a.get("gamma") is not None:
        y = y * a.f("gamma").reshape(norm_shape)
    if a.get("beta") is not None:
        y = y + a.f("beta").reshape(norm_shape)
    return y


def _per_channel(v: Any, rank: int) -> np.ndarray:
    return _f32(v).reshape(1, -1, *([1] * (rank - 2)))


def _affine_per_channel(a: _Args, y: np.ndarray) -> np.ndarray:
    """Optional ``gamma`` / ``beta`` of a normalisation op, on the channel axis (1)."""
    if a.get("gamma") is not None:
        y = y * _per_channel(a["gamma"], y.ndim)
    if a.get("beta") is not None:
        y = y + _per_channel(a["beta"], y.ndim)
    return y


@_op("batch_norm")
def _batch_norm(a: _Args) -> np.ndarray:
    x = a.f("x")
    eps = np.float32(a.scalar("epsilon", 1e-5))
    y = (x - _per_channel(a["mean"], x.ndim)) / np.sqrt(_per_channel(a["variance"], x.ndim) + eps)
    return _affine_per_channel(a, y)


@_op("instance_norm")
def _instance_norm(a: _Args) -> np.ndarray:
    x = a.f("x")
    axes = tuple(range(2, x.ndim))
    eps = np.float32(a.scalar("epsilon", 1e-5))
    mean = np.mean(x, axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(np.mean(np.square(x - mean), axis=axes, keepdims=True) + eps)
    return _affine_per_channel(a, y)


@_op("l2_norm")
def _l2_norm(a: _Args) -> np.ndarray:
    x = a.f("x")
    axes = tuple(range(max(0, x.ndim - 3), x.ndim))  # MIL l2_norm: over the last three dims
    eps = np.float32(a.scalar("epsilon", 1e-6))
    return x / np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True) + eps)


# ---------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------


def _reduction(fn: Callable[..., np.ndarray]) -> Callable[[_Args], Any]:
    def run(a: _Args) -> np.ndarray:
        x = a.f("x")
        axes = _axes(a.ints("axes"), x.ndim)
        return fn(x, axis=axes, keepdims=bool(a.scalar("keep_dims", False)))

    return run


def _log_sum_exp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    r = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis=axis)


_REDUCTIONS = {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min, "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": _log_sum_exp,
}
for _name, _fn in _REDUCTIONS.items():
    SUPPORTED_OPS[_name] = _reduction(_fn)


def _arg_reduction(fn: Callable[..., np.ndarray]) -> Callable[[_Args], Any]:
    def run(a: _Args) -> np.ndarray:
        x = a.f("x")
        axis = int(a.scalar("axis", -1))
        r = fn(x, axis=axis)
        return np.expand_dims(r, axis) if a.scalar("keep_dims", False) else r

    return run


SUPPORTED_OPS["reduce_argmax"] = _arg_reduction(np.argmax)
SUPPORTED_OPS["reduce_argmin"] = _arg_reduction(np.argmin)


# ---------------------------------------------------------------------------------------------
# Pooling and resizing
# ---------------------------------------------------------------------------------------------


def _pool(kind: str) -> Callable[[_Args], Any]:
    def run(a: _Args) -> np.ndarray:
        x = a.f("x")
        nsp = x.ndim - 2
        k = a.ints("kernel_sizes")
        strides = a.ints("strides", [1] * nsp)
        in_sp = x.shape[2:]
        pads = _spatial_pads(a.scalar("pad_type", "valid"), a.ints("pad"), in_sp, k, strides)
        ceil = bool(a.scalar("ceil_mode", False))
        out_sp = []
        for i in range(nsp):
            size = in_sp[i] + pads[i][0] + pads[i][1]
            if ceil:
                o = -(-(size - k[i]) // strides[i]) + 1
                if (o - 1) * strides[i] >= in_sp[i] + pads[i][0]:  # last window must start inside (torch rule)
                    o -= 1
            else:
                o = (size - k[i]) // strides[i] + 1
            out_sp.append(o)
        # pad further on the right so partial (ceil-mode) windows exist
        extra = [max(0, (o - 1) * s + kk - (i + pb + pa)) for o, s, kk, i, (pb, pa)
                 in zip(out_sp, strides, k, in_sp, pads)]
        widths = [(0, 0), (0, 0)] + [(pb, pa + e) for (pb, pa), e in zip(pads, extra)]
        fill = -np.inf if kind == "max" else 0.0
        xp = np.pad(x, widths, constant_values=fill)
        # masks: 1 where a real input element sits, and where the (custom/same) padded input extends
        real = np.pad(np.ones(in_sp, np.float32), [w for w in widths[2:]])
        padded = np.pad(np.ones([i + pb + pa for i, (pb, pa) in zip(in_sp, pads)], np.float32),
                        [(0, e) for e in extra])
        acc = None
        cnt_real = np.zeros(out_sp, np.float32)
        cnt_pad = np.zeros(out_sp, np.float32)
        for tap in np.ndindex(*k):
            sl = tuple(slice(t, t + (o - 1) * s + 1, s) for t, o, s in zip(tap, out_sp, strides))
            v = xp[(slice(None), slice(None), *sl)]
            if kind == "max":
                acc = v if acc is None else np.maximum(acc, v)
            else:
                v = v * v if kind == "l2" else v
                acc = v if acc is None else acc + v
                cnt_real += real[sl]
                cnt_pad += padded[sl]
        if kind == "max":
            return acc
        if kind == "l2":
            return np.sqrt(acc)
        exclude = bool(a.scalar("exclude_padding_from_average", False))
        return acc / (cnt_real if exclude else cnt_pad)

    return run


SUPPORTED_OPS["max_pool"] = _pool("max")
SUPPORTED_OPS["avg_pool"] = _pool("avg")
SUPPORTED_OPS["l2_pool"] = _pool("l2")


def _interp_1d(x: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at (already clamped) fractional source ``coords``."""
    n = x.shape[axis]
    coords = np.clip(coords, 0, n - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (coords - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Source coordinates of the output samples for MIL's sampling modes (see ``resize_bilinear``)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            return np.array([0.0 if mode == "STRICT_ALIGN_CORNERS" else (n_in - 1) / 2])
        return i * (n_in - 1) / (n_out - 1)
    if mode == "DEFAULT":  # TF legacy: src = i * in/out
        return i * (n_in / n_out)
    if mode == "UNALIGN_CORNERS":  # half-pixel centres (torch align_corners=False)
        return (i + 0.5) * (n_in / n_out) - 0.5
    if mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        return 0.5 * delta + i * delta
    raise MILExecutionError(f"unknown sampling mode {mode!r}")


def _bilinear(x: np.ndarray, out_hw: Sequence[int], mode_h: str, mode_w: str) -> np.ndarray:
    h, w = x.shape[-2:]
    y = _interp_1d(x, x.ndim - 2, _grid(h, out_hw[0], mode_h))
    return _interp_1d(y, x.ndim - 1, _grid(w, out_hw[1], mode_w))


@_op("upsample_bilinear")
def _upsample_bilinear(a: _Args) -> np.ndarray:
    x = a.f("x")
    align = bool(a.scalar("align_corners", True))
    half = bool(a.scalar("half_pixel_centers", not align))
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half else "DEFAULT")
    return _bilinear(x, a.out_shape[-2:], mode, mode)


@_op("resize_bilinear")
def _resize_bilinear(a: _Args) -> np.ndarray:
    mode = a.scalar("sampling_mode", "DEFAULT")
    return _bilinear(a.f("x"), a.out_shape[-2:], mode, mode)


def _nearest(x: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    h, w = x.shape[-2:]
    # torch/Core ML "nearest": src = floor(dst * in / out)
    ih = np.minimum(np.floor(np.arange(out_hw[0]) * (h / out_hw[0])).astype(np.int64), h - 1)
    iw = np.minimum(np.floor(np.arange(out_hw[1]) * (w / out_hw[1])).astype(np.int64), w - 1)
    return np.take(np.take(x, ih, axis=x.ndim - 2), iw, axis=x.ndim - 1)


@_op("upsample_nearest_neighbor", "resize_nearest_neighbor")
def _upsample_nearest(a: _Args) -> np.ndarray:
    return _nearest(np.asarray(a["x"]), a.out_shape[-2:])


# ---------------------------------------------------------------------------------------------
# Shape and data movement (exact: no arithmetic)
# ---------------------------------------------------------------------------------------------


@_op("reshape")
def _reshape(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = a.ints("shape")
    if len(shape) == x.ndim:  # 0 copies the input's dim when the ranks match
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("transpose")
def _transpose(a: _Args) -> np.ndarray:
    return np.transpose(np.asarray(a["x"]), a.ints("perm"))


@_op("squeeze")
def _squeeze(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(ax % x.ndim for ax in axes))


@_op("expand_dims")
def _expand_dims(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    out_rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(ax % out_rank for ax in axes)))


@_op("flatten2d")
def _flatten2d(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@_op("concat")
def _concat(a: _Args) -> np.ndarray:
    values = [np.asarray(v) for v in a.list("values")]
    axis = int(a.scalar("axis"))
    if a.scalar("interleave", False):
        # [[a0, b0, a1, b1, ...]]: stack right after `axis` and merge the two
        ax = axis % values[0].ndim
        stacked = np.stack(values, axis=ax + 1)
        shape = list(values[0].shape)
        shape[ax] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@_op("stack")
def _stack(a: _Args) -> np.ndarray:
    return np.stack([np.asarray(v) for v in a.list("values")], axis=int(a.scalar("axis")))


@_op("split")
def _split(a: _Args) -> list[np.ndarray]:
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis")) % x.ndim
    sizes = a.ints("split_sizes")
    if sizes is None:
        num = int(a.scalar("num_splits"))
        step = math.ceil(x.shape[axis] / num)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(num)]
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@_op("slice_by_index")
def _slice_by_index(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    r = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r)
    bm = a.bools("begin_mask", [False] * r)
    em = a.bools("end_mask", [False] * r)
    sm = a.bools("squeeze_mask", [False] * r)
    idx: list[Any] = []
    for i in range(r):
        if sm[i]:
            idx.append(begin[i])  # pure indexing drops the dim
        else:
            idx.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return x[tuple(idx)]


@_op("slice_by_size")
def _slice_by_size(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    begin, size = a.ints("begin"), a.ints("size")
    idx = []
    for i, (b, s) in enumerate(zip(begin, size)):
        b = b % x.shape[i] if x.shape[i] else 0
        idx.append(slice(b, None if s == -1 else b + s))
    return x[tuple(idx)]


@_op("gather")
def _gather(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    axis = int(a.scalar("axis", 0)) % x.ndim
    bd = int(a.scalar("batch_dims", 0))
    if bd == 0:
        return np.take(x, idx, axis=axis)  # negative indices count from the end
    lead = x.shape[:bd]
    xb = x.reshape(-1, *x.shape[bd:])
    ib = idx.reshape(-1, *idx.shape[bd:])
    out = np.stack([np.take(xb[i], ib[i], axis=axis - bd) for i in range(xb.shape[0])])
    return out.reshape(*lead, *out.shape[1:])


@_op("gather_along_axis")
def _gather_along_axis(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", 0)) % x.ndim
    idx = np.asarray(a["indices"]).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


@_op("gather_nd")
def _gather_nd(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    bd = int(a.scalar("batch_dims", 0))
    lead = x.shape[:bd]
    xb = x.reshape(-1, *x.shape[bd:])
    ib = idx.reshape(-1, *idx.shape[bd:])
    outs = []
    for i in range(xb.shape[0]):
        ii = ib[i]
        outs.append(xb[i][tuple(np.moveaxis(ii, -1, 0))])
    out = np.stack(outs)
    return out.reshape(*lead, *out.shape[1:])


@_op("tile")
def _tile(a: _Args) -> np.ndarray:
    return np.tile(np.asarray(a["x"]), a.ints("reps"))


@_op("pad")
def _pad(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    pad = a.ints("pad")
    n = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    mode = a.scalar("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=a.scalar("constant_val", 0.0))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


@_op("reverse")
def _reverse(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    return np.flip(x, axis=None if axes is None else tuple(axes))


# depth_to_space / space_to_depth are left out on purpose: the MIL spec does not pin down their channel
# order (TF's DCR or PyTorch's CRD), and a guessed layout would be a silent error.


@_op("pixel_shuffle")
def _pixel_shuffle(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    r = int(a.scalar("upscale_factor"))
    n, c, h, w = x.shape
    # torch.pixel_shuffle's channel order: input channel c * r * r + i * r + j -> (c, h * r + i, w * r + j)
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


@_op("pixel_unshuffle")
def _pixel_unshuffle(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    r = int(a.scalar("downscale_factor"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * r * r, h // r, w // r)


@_op("shape")
def _shape(a: _Args) -> np.ndarray:
    return np.array(np.asarray(a["x"]).shape, dtype=np.int32)


@_op("fill")
def _fill(a: _Args) -> np.ndarray:
    return np.full(a.ints("shape"), a.scalar("value", 0.0))


@_op("cumsum")
def _cumsum(a: _Args) -> np.ndarray:
    x = a.f("x")
    axis = int(a.scalar("axis", 0))
    if a.scalar("reverse", False):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if a.scalar("exclusive", False):
        y = y - x
    return np.flip(y, axis) if a.scalar("reverse", False) else y


@_op("topk")
def _topk(a: _Args) -> list[np.ndarray]:
    x = a.f("x")
    k, axis = int(a.scalar("k", 1)), int(a.scalar("axis", -1))
    ascending = bool(a.scalar("ascending", False))
    order = np.argsort(x if ascending else -x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int32)]


@_op("argsort")
def _argsort(a: _Args) -> np.ndarray:
    x = a.f("x")
    axis = int(a.scalar("axis", -1))
    return np.argsort(x if a.scalar("ascending", False) else -x, axis=axis, kind="stable").astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------


@_op("quantize")
def _quantize(a: _Args) -> np.ndarray:
    x = a.f("input")
    axis = a.scalar("axis")
    dtype = _DTYPE_NAMES[a.scalar("output_dtype")]
    # x * (1/scale) with an fp32 reciprocal, as PyTorch's quantize_per_tensor and int8 kernels compute it,
    # not x / scale: the two break round-half-to-even ties differently, and ties are frequent (a mean or
    # average pool of quantised values, requantised with the same scale, lands on k + 0.5)
    inv = (1.0 / np.asarray(a["scale"], dtype=np.float64)).astype(np.float32)
    q = np.round(x * _along(inv, x.ndim, axis))
    zp = a.get("zero_point")
    if zp is not None:
        q = q + _along(zp, x.ndim, axis).astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


@_op("dequantize")
def _dequantize(a: _Args) -> np.ndarray:
    q = np.asarray(a["input"]).astype(np.float32)
    axis = a.scalar("axis")
    zp = a.get("zero_point")
    if zp is not None:
        q = q - _along(zp, q.ndim, axis).astype(np.float32)
    return q * _along(a.f("scale"), q.ndim, axis)


@_op("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(a: _Args) -> np.ndarray:
    q = np.asarray(a["quantized_data"]).astype(np.float32)
    axis = int(a.scalar("axis"))
    zp = _along(np.asarray(a["zero_point"]).astype(np.float32), q.ndim, axis)
    return (q - zp) * _along(a.f("scale"), q.ndim, axis)


def _blockwise(p: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Expand a per-block parameter (same rank as the data, each dim dividing the data's) to the data's shape."""
    p = np.asarray(p)
    if p.ndim == 0:
        return p
    for ax, (n, m) in enumerate(zip(shape, p.shape)):
        if m != n:
            p = np.repeat(p, n // m, axis=ax)
    return p


@_op("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a: _Args) -> np.ndarray:
    data = np.asarray(a["data"])
    q = data.astype(np.float32)
    off = a.get("offset")
    if off is not None:
        q = q - _blockwise(_f32(off), data.shape).astype(np.float32)
    return q * _blockwise(a.f("scale"), data.shape)


@_op("constexpr_cast")
def _constexpr_cast(a: _Args) -> np.ndarray:
    return np.asarray(a["source_val"]).astype(_DTYPE_NAMES[a.scalar("output_dtype")])
