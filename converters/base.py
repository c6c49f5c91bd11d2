"""The one interface every conversion path implements, and what they share."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch


class ConversionError(RuntimeError):
    """A conversion failed; the message says at which stage and what to try."""


class UnsupportedError(ValueError):
    """The request cannot work: unknown backend or precision, or an op the backend cannot take."""


class RuntimeUnavailableError(RuntimeError):
    """The host runtime, compiler or converter package this step needs is missing or cannot run here."""

    code = 2  # the CLI's exit code: a missing tool is bad input to fix, not a failed check


@dataclass
class Delegation:
    """Which operators run inside the accelerated delegate, and which fall back."""

    delegated: int = 0
    not_delegated: int = 0
    not_delegated_ops: dict[str, int] = field(default_factory=dict)
    delegated_ops: dict[str, int] = field(default_factory=dict)
    partitions: int = 0
    note: str = ""
    # a quantised program's ops that compute in float between a dequantise and a quantise, by type
    float_ops: dict[str, int] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        total = self.delegated + self.not_delegated
        return self.delegated / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"delegated": self.delegated, "not_delegated": self.not_delegated,
                "not_delegated_ops": dict(sorted(self.not_delegated_ops.items())),
                "delegated_ops": dict(sorted(self.delegated_ops.items())), "partitions": self.partitions,
                "fraction": round(self.fraction, 4), "note": self.note,
                "float_ops": dict(sorted(self.float_ops.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Delegation:
        return cls(d.get("delegated", 0), d.get("not_delegated", 0), dict(d.get("not_delegated_ops", {})),
                   dict(d.get("delegated_ops", {})), d.get("partitions", 0), d.get("note", ""),
                   dict(d.get("float_ops", {})))

    def summary(self) -> str:
        if not self.delegated and not self.not_delegated:
            return self.note or "n/a"
        left = ", ".join(f"{k} x{v}" for k, v in sorted(self.not_delegated_ops.items())) or "none"
        floats = ", ".join(f"{k} x{v}" for k, v in sorted(self.float_ops.items()))
        return (f"{self.delegated}/{self.delegated + self.not_delegated} ops delegated "
                f"({100 * self.fraction:.1f}%, {self.partitions} partition(s)); outside: {left}"
                + (f"; in float between int8 ops: {floats}" if floats else ""))


class Session(ABC):
    """An artifact loaded in its runtime on this host, ready to run; ``close`` (or ``with``) releases it.

    The converter that made the artifact opens it (:meth:`Converter.open`), so code on top (check, bench,
    the CLI) never touches a runtime's API. Threads are fixed at open: XNNPACK binds its pool at load.
    """

    runtime_version: str = ""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, R, R) float32 -> (N, classes) float32, image by image (the artifacts take batch 1)."""

    @abstractmethod
    def close(self) -> None:
        """Release the runtime's objects."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Converter(ABC):
    """A conversion path: PyTorch program -> deployable artifact, plus the host runtime that runs it.

    Subclasses implement ``lower`` (write the artifact), ``run`` (execute it on this host) and
    ``delegation`` (what the accelerator takes). The shared pipeline in ``converters.pipeline``
    does everything else (model building, BN folding, normalisation, quantisation, atomic writes,
    sidecars, checks), so every model works through every path without per-model code.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    packages: ClassVar[tuple[str, ...]]  # importable modules the converter needs
    runtime_packages: ClassVar[tuple[str, ...]] = ()
    # convert_pt2e(fold_quantize=...): whether quantised weights become int8 constants (ExecuTorch,
    # Core ML) or stay float behind quantize/dequantize pairs (litert-torch pattern-matches those).
    fold_quantize: ClassVar[bool] = True

    def availability(self) -> tuple[bool, str]:
        """Can this host convert? ``(True, "")`` or ``(False, reason and fix)``."""
        return _importable(self.packages)

    def runtime_availability(self) -> tuple[bool, str]:
        """Can this host execute the artifacts? ``(True, "")`` or ``(False, reason)``."""
        return _importable(self.runtime_packages or self.packages)

    def prepare_model(self, model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
        """Pick the deploy formulations this backend runs fastest at ``precision``, in place, before export
        (and before quantisation-aware training for it); returns the model.

        Every choice computes the same function (tested in the model code); default: no change.
        """
        return model

    def preflight(self, program: torch.export.ExportedProgram, precision: str) -> list[str]:
        """Readable reasons this program cannot be converted at ``precision`` (empty: go ahead)."""
        reasons = []
        if precision not in self.precisions:
            reasons.append(f"{self.name} does not support precision {precision!r}; "
                           f"choose one of {', '.join(self.precisions)}")
        ok, why = self.availability()
        if not ok:
            reasons.append(why)
        for node in program.graph.nodes:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() > 5:
                reasons.append(f"tensor of rank {val.dim()} at node {node.name}: mobile runtimes take rank <= 5")
                break
        return reasons

    def quantizer(self, precision: str, qat: bool = False):
        """The PT2E quantizer this backend wants for ``precision`` (None when no activation quantisation)."""
        return None

    def weight_quantization(self, precision: str) -> bool:
        """True when ``precision`` quantises weights after conversion only (Core ML ``w8``)."""
        return False

    @abstractmethod
    def lower(self, program: torch.export.ExportedProgram, precision: str, path: Path,
              quantized: bool, **options: Any) -> Delegation:
        """Convert ``program`` (float, or holding quantize/dequantize ops) and write ``path``."""

    @abstractmethod
    def open(self, path: Path, threads: int = 1) -> Session:
        """Load the artifact in this backend's runtime on this host (RuntimeUnavailableError if it cannot)."""

    def run(self, path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """Execute the artifact on one input batch (N, 3, R, R) float32 and return (N, classes)."""
        with self.open(path, threads) as session:
            return session.run(x)

    def delegation(self, path: Path) -> Delegation:
        """Re-derive the delegation report from an artifact (the sidecar already stores it)."""
        return Delegation(note="not available for this backend")

    # how ``compare_layers`` reads an int8 artifact's activations; empty: this backend has no per-op check
    layers_source = ""
    # whether an int8 op more than one int8 step off fails ``check --layers``: true where the runtime computes
    # an int8 program's float parts in fp32, as the quantised PyTorch graph does
    layers_verdict: ClassVar[bool] = True

    def compare_layers(self, path: Path, graph: Any, x: Any) -> dict[str, Any]:
        """Per-op int8 comparison with the quantised graph (see :mod:`converters.int8_layers`)."""
        raise NotImplementedError(f"no per-op int8 comparison for {self.name}")

    def io_names(self) -> tuple[str, str]:
        return "image", "logits"


_CONVERTERS: dict[str, type[Converter]] = {}
ConverterT = TypeVar("ConverterT", bound=type[Converter])


def register_converter(cls: ConverterT) -> ConverterT:
    """Class decorator: make a backend reachable by its ``name`` (CLI choices, ``get_converter``)."""
    if cls.name in _CONVERTERS:
        raise ValueError(f"backend {cls.name!r} is already registered")
    _CONVERTERS[cls.name] = cls
    return cls


def backends() -> tuple[str, ...]:
    """Names of the registered backends, in registration order."""
    return tuple(_CONVERTERS)


def precisions() -> tuple[str, ...]:
    """Every precision some backend offers (fp32 first)."""
    seen: dict[str, None] = {}
    for cls in _CONVERTERS.values():
        seen.update(dict.fromkeys(cls.precisions))
    return tuple(seen)


def get_converter(name: str) -> Converter:
    """The converter registered as ``name``; anything else is an UnsupportedError naming the choices."""
    if name not in _CONVERTERS:
        raise UnsupportedError(f"unknown backend {name!r}; choose one of {', '.join(_CONVERTERS)}")
    return _CONVERTERS[name]()


def keep_float(quantizer: Any) -> Any:
    """Exclude modules whose internals must stay float from a PT2E quantizer; returns it.

    ``mobilevits.layers.FLOAT_UNDER_INT8``: LayerNorm's deploy formulation computes ``rsqrt(var + eps)``, and
    quantised per tensor to int8 small variances round to zero and the rsqrt becomes inf (seen in QAT of
    MobileViT); ``PrefixTokens`` assembles a class token of a few hundredths with patch tokens of tens, which one
    int8 scale rounds to zero (QAT of DeiT-style models then overflows in the first LayerNorm's backward). Left
    float, the ops still run inside the XNNPACK delegate, with quantize/dequantize at the modules' boundaries.
    """
    from mobilevits.layers import FLOAT_UNDER_INT8

    litert = type(quantizer).__module__.startswith("litert_torch")
    for cls in FLOAT_UNDER_INT8:
        quantizer.set_module_type(cls, None)
        if litert:
            # litert-torch 0.10 matches module types with `tp in types` over nn_module_stack, where
            # torch.export records qualified-name strings, so the class alone never matches and LayerNorm
            # was quantised anyway (QAT then broke: 9 int8 ADDs outside XNNPACK, 9 dB). Give the name too.
            quantizer.set_module_type(f"{cls.__module__}.{cls.__qualname__}", None)
    if type(quantizer).__name__ == "XNNPACKQuantizer":
        _guard_float_modules(quantizer)
    return quantizer


def _guard_float_modules(quantizer: Any) -> None:
    """Make the modules an XNNPACKQuantizer leaves in float (type or name set to None) really float.

    ExecuTorch 1.5.1's XNNPACKQuantizer annotates every ``cat`` whatever module it sits in (its cat annotator
    never calls the module filter), so a float module's cat was quantised anyway (``PrefixTokens`` first lost its
    class token in such a cat; its cat now joins only zero rows, still kept float). Before the quantizer runs,
    the ops of those modules are marked annotated with no quantisation, which every annotator (and its
    propagation to view-like ops) skips.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import _get_not_module_type_or_name_filter
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    annotate = quantizer.annotate

    def guarded(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        types = [t for t, c in quantizer.module_type_config.items() if c is None]
        names = [n for n, c in quantizer.module_name_config.items() if c is None]
        outside = _get_not_module_type_or_name_filter(types, names)
        for node in model.graph.nodes:
            if node.op == "call_function" and not outside(node):
                node.meta.setdefault("quantization_annotation", QuantizationAnnotation(_annotated=True))
        return annotate(model)

    quantizer.annotate = guarded


def merge_float_islands(quantizer: Any) -> Any:
    """Let one fp32 island cover a run of float ops: keep an add/sub/mul float when its inputs are float already.

    A quantizer annotates every add and mul, also one between two ops its backend runs in fp32 only: LeViT's
    attention-bias add sits between ``bmm`` and ``softmax`` (ExecuTorch 1.5.1's XNNPACK has neither in int8), and
    quantised it costs a Convert to int8, an int8 add and a Convert back (0.058 ms against a 0.09 ms batch matmul
    per block in LeViT-128's profile). Left float, the island runs bmm -> add -> softmax -> bmm in one piece.
    An add/sub/mul stays float when each input is float or constant and at least one is float (an op the
    quantizer left unannotated, seen through view ops); the view ops that only propagated its quantisation go
    with it. Never changes what is computed, only where the int8 boundaries sit; the names of the ops kept float
    are in ``quantizer.merged_float_ops`` after annotation. Wraps ``quantizer.annotate``; returns the quantizer.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    binary = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor}
    # what ExecuTorch 1.5.1's XNNPACK runs in fp32 only (docs/conversion.md, "Operators without an int8 path")
    float_only = {aten.bmm.default, aten.matmul.default, aten.softmax.int, aten._softmax.default,
                  aten.sigmoid.default, aten.silu.default, aten.hardswish.default, aten.gelu.default,
                  aten.maximum.default, aten.minimum.default, aten.avg_pool2d.default, aten.div.Tensor,
                  aten.rsqrt.default, aten.sqrt.default, aten.exp.default, aten.tanh.default}
    views = {aten.reshape.default, aten.view.default, aten.permute.default, aten.transpose.int,
             aten.flatten.using_ints, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
             aten.contiguous.default, aten.clone.default, aten.expand.default, aten._unsafe_view.default}

    def role(n: torch.fx.Node, memo: dict[torch.fx.Node, str]) -> str:
        """What ``n``'s output is after prepare: "q" (quantised), "f" (float compute) or "c" (constant);
        ``memo`` holds the answers of one pass over unchanged annotations."""
        if n not in memo:
            memo[n] = _role(n, memo)
        return memo[n]

    def _role(n: torch.fx.Node, memo: dict[torch.fx.Node, str]) -> str:
        if n.op == "get_attr":
            return "c"
        if n.op != "call_function":
            return "q"  # graph inputs: the first op quantises them, as before
        ann = n.meta.get("quantization_annotation")
        if ann is not None and (ann.output_qspec is not None or ann.input_qspec_map):
            return "q"  # quantised, or the head of a fused pattern (conv -> relu)
        roles = {role(a, memo) for a in n.all_input_nodes}
        if roles <= {"c"}:
            return "c"
        if ann is not None or n.target in float_only:
            return "f"  # kept float on purpose (LayerNorm, an op merged before), or no int8 kernel
        # an unannotated view, relu or clamp between a dequantise and a quantise runs in int8 in XNNPACK
        return "q" if "q" in roles else "f"

    def group(n: torch.fx.Node) -> list[torch.fx.Node]:
        """``n`` and the view ops after it whose quantisation only followed n's."""
        out = [n]
        for u in n.users:
            ann = u.meta.get("quantization_annotation")
            if (u.target in views and ann is not None and set(ann.input_qspec_map) <= {n}
                    and isinstance(ann.output_qspec, SharedQuantizationSpec)):
                out += group(u)
        return out

    def shared_refs(model: torch.fx.GraphModule) -> dict[torch.fx.Node, set[torch.fx.Node]]:
        """node -> the nodes whose annotation shares a quantisation spec with its output or an input edge of it."""
        refs: dict[torch.fx.Node, set[torch.fx.Node]] = {}
        for m in model.graph.nodes:
            ann = m.meta.get("quantization_annotation")
            if ann is None:
                continue
            for spec in [*ann.input_qspec_map.values(), ann.output_qspec]:
                if isinstance(spec, SharedQuantizationSpec):
                    e = spec.edge_or_node
                    refs.setdefault(e[1] if isinstance(e, tuple) else e, set()).add(m)
        return refs

    annotate = quantizer.annotate

    def merging(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = annotate(model)
        merged: list[str] = []
        changed = True
        while changed:  # a float add can make the next mul's inputs float
            changed = False
            memo: dict[torch.fx.Node, str] = {}
            refs = shared_refs(model)
            for n in model.graph.nodes:
                ann = n.meta.get("quantization_annotation")
                if n.op != "call_function" or n.target not in binary or ann is None or ann.output_qspec is None:
                    continue
                roles = {role(a, memo) for a in n.all_input_nodes}
                if "f" not in roles or not roles <= {"f", "c"}:
                    continue
                members = group(n)
                if any(refs.get(m, set()) - set(members) for m in members):
                    continue  # another op shares n's int8 parameters (a cat, a pool): leave the boundary as it is
                for m in members:
                    m.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
                    merged.append(m.name)
                changed = True
                break  # roles and shared specs changed: the next pass recomputes them once
        quantizer.merged_float_ops = merged
        return model

    quantizer.annotate = merging
    quantizer.merged_float_ops = []
    return quantizer


def keep_float_modules(quantizer: Any, model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Mixed precision: leave the modules ``patterns`` name in float; returns the module names kept float.

    A pattern is a module name of the model (``head``, ``stages.2``; ``fnmatch`` wildcards: ``stages.*.attn``) or
    a module class name (``Attention``, ``DynamicReLU``). The quantizer does not annotate their ops, so they run
    in fp32 between a dequantise and a quantise (still inside the delegate where the backend has fp32 kernels).
    """
    import fnmatch

    if not hasattr(quantizer, "module_name_config"):
        raise UnsupportedError(f"{type(quantizer).__name__} cannot leave modules in float (--keep-float)")
    inner = model.model if type(model).__name__ == "Normalize" else model  # names as the user's model has them
    prefix = "model." if inner is not model else ""
    modules = [(n, m) for n, m in inner.named_modules() if n]
    kept = []
    for pattern in patterns:
        hits = [n for n, m in modules if fnmatch.fnmatchcase(n, pattern) or type(m).__name__ == pattern]
        if not hits:
            examples = ", ".join(n for n, _ in modules if n.count(".") == 0)
            raise ValueError(f"--keep-float {pattern!r} matches no module of {getattr(inner, 'name', 'the model')}: "
                             f"give module names (top level: {examples}; wildcards like 'stages.*.attn') or "
                             f"class names (e.g. {type(modules[-1][1]).__name__})")
        kept += [n for n in hits if not any(n.startswith(k + ".") for k in hits)]  # outermost only
    litert = type(quantizer).__module__.startswith("litert_torch")
    for name in dict.fromkeys(kept):
        # both quantizers accept None here (skip the module; the global config excludes it too) although
        # their set_module_name asserts a config
        quantizer.module_name_config[prefix + name] = None
        if litert:
            # litert-torch 0.10 reads module names from nn_module_stack keys as key[len("L__self___"):] with "_"
            # turned into ".", written for dynamo's keys; torch.export's are "L__self__" + the qualified name,
            # so it compares against that mangled form (measured: without it nothing is kept float)
            quantizer.module_name_config[("L__self__" + prefix + name)[len("L__self___"):].replace("_", ".")] = None
    return list(dict.fromkeys(kept))


def _importable(modules: tuple[str, ...]) -> tuple[bool, str]:
    for mod in modules:
        try:
            with quiet():
                importlib.import_module(mod)
        except Exception as e:  # ImportError, or a broken native library
            return False, (f"python module {mod!r} cannot be imported ({type(e).__name__}: {e}); "
                           f"install the pinned toolchain with `make install`")
    return True, ""


# Deploy formulations (mobilevits.layers.set_deploy_forms): one kernel per activation, what every backend runs in
# fp32; a backend's int8 may pick another form of the same function where that measured faster on its runtime
# (benchmarks/int8_forms.py on the host, benchmarks/arm_instructions.py on a phone's core).
FP32_FORMS = {"hardswish": "native", "dyrelu": "max", "silu": "native"}


_NOISY_LOGGERS = ("absl", "executorch", "coremltools", "litert_torch", "torch._export", "torchao",
                  "torch.export", "tensorflow", "jax")


@contextlib.contextmanager
def _native_output_captured(sink: Any) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``sink`` for a block, so native libraries' direct writes
    (ExecuTorch's cpuinfo and thread-pool lines, TFLite's INFO lines) are caught too.

    Does nothing where the descriptors cannot be duplicated (no real file descriptors).
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        _flush_c_stdio()  # else C-buffered text would reach the restored descriptors later
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence converter chatter (warnings, INFO logs, progress bars, native libraries' log lines) for a block.

    Errors still propagate as exceptions; when one does, what the native code printed during the block
    is written to stderr after it, so a native failure's own message is not lost.
    """
    if not enabled:
        yield
        return
    names = ("", *_NOISY_LOGGERS)  # "" is the root logger, which litert-torch warns through
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    sink = io.StringIO()
    with tempfile.TemporaryFile() as native:
        try:
            with (_native_output_captured(native), warnings.catch_warnings(), contextlib.redirect_stdout(sink),
                  contextlib.redirect_stderr(sink)):
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            native.seek(0)
            text = native.read().decode(errors="replace").strip()
            if text:
                print(text, file=sys.stderr)
            raise
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes an artifact, recorded in every sidecar."""
    out = {"python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    for dist in ("mobilevits", "torch", "executorch", "torchao", "coremltools", "litert-torch", "ai-edge-litert",
                 "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary name, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_replace(tmp: Path, final: Path) -> None:
    """Move a finished file or directory into place; a good old artifact is replaced only now."""
    if tmp.is_dir():
        backup = final.with_name(final.name + ".old")
        if final.exists():
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(final, backup)
        os.replace(tmp, final)
        if backup.exists():
            shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, final)


def remove_path(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
