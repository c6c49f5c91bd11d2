"""The shared conversion pipeline: model -> artifact + sidecar, and the accuracy check.

    convert("mobilevit_xs", to="executorch", precision="int8")  -> result dict
    check("out/mobilevit_xs_256_executorch_int8.pte")           -> result dict
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mobilevits
from mobilevits import resolve_pretrained
from mobilevits.base import Normalize
from mobilevits.hub import is_hub_id
from mobilevits.labels import resolve_labels
from mobilevits.layers import deploy_forms, parse_deploy_forms, set_deploy_forms

from .base import (
    ConversionError,
    Converter,
    Delegation,
    RuntimeUnavailableError,
    Session,
    UnsupportedError,
    atomic_replace,
    atomic_write_text,
    get_converter,
    keep_float_modules,
    quiet,
    remove_path,
    tool_versions,
)
from .compare import MARGIN_MIN_IMAGES, THRESHOLDS_DB, accuracy, compare, int8_verdict, sqnr_db

SIDECAR_FORMAT = "mobilevits-artifact/1"

# Per-op SQNR (dB) below which ``check --layers`` calls an op divergent. fp32 and fp16 use the output
# thresholds. Intermediate tensors of int8 and w8 programs legitimately sit lower than the logits: a value
# on a rounding boundary requantises one step apart when the summation order or precision differs, and
# small tensors make that step large relative to the signal; a real fault (a wrong constant, a misread
# layout) shows as 0 dB or below.
LAYER_TOLERANCES_DB = {"fp32": 60.0, "fp16": 35.0, "w8": 25.0, "int8": 20.0}


def artifact_stem(model: str, resolution: int, backend: str, precision: str, delegate: str = "xnnpack") -> str:
    label = backend if backend != "executorch" or delegate == "xnnpack" else f"executorch-{delegate}"
    return f"{model}_{resolution}_{label}_{precision}"


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _progress(stages: list[str], enabled: bool) -> Callable[[str], None]:
    """A stage bar on stderr for people; a no-op for --json or when stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return lambda stage: None
    from tqdm import tqdm

    bar = tqdm(total=len(stages), file=sys.stderr, leave=False, bar_format="{desc} [{n}/{total}] {elapsed}")

    def step(stage: str) -> None:
        if bar.n < bar.total and bar.desc:
            bar.update(1)
        bar.set_description_str(stage)
        if stage == "done":
            bar.close()

    return step


# --------------------------------------------------------------------------------------------
# Building the PyTorch source (also from a sidecar)
# --------------------------------------------------------------------------------------------


def build_source(source: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the float PyTorch model an artifact was made from, as the sidecar's ``source`` says.

    Returns the eval-mode, BN-fused model wrapped with the baked-in normalisation, i.e. a function
    of float RGB in [0, 1] exactly like the artifact.
    """
    weights = source.get("weights")
    if weights:
        path = Path(weights["path"])
        if not path.is_file():
            raise FileNotFoundError(f"weights {path} recorded in the sidecar are missing; the PyTorch source "
                                    "cannot be rebuilt")
        digest = mobilevits.weights.file_sha256(path)
        if digest != weights["sha256"]:
            raise ValueError(f"weights {path} changed since conversion (sha256 {digest[:12]} != "
                             f"{weights['sha256'][:12]}); re-convert")
    torch.manual_seed(source.get("seed", 0))
    model = mobilevits.create_model(source["name"], num_classes=source["num_classes"],
                                    resolution=source["resolution"],
                                    weights=weights["path"] if weights else None, **source.get("overrides", {}))
    if not weights:
        mobilevits.rerandomize_(model, seed=source.get("seed", 0))
    model.eval()
    mobilevits.reparameterize_model(model)
    pp = model.preprocess
    if source.get("normalize_in_model", True) and (tuple(pp.mean) != (0.0, 0.0, 0.0)
                                                   or tuple(pp.std) != (1.0, 1.0, 1.0)):
        model = Normalize(model, pp.mean, pp.std).eval()
    model.preprocess = pp  # keep the contract reachable on the wrapper
    return model


def calibrate_and_quantize(model: torch.nn.Module, quantizer: Any, data: torch.Tensor,
                           fold_quantize: bool = True,
                           program: torch.export.ExportedProgram | None = None) -> torch.nn.Module:
    """PTQ: insert observers, run the calibration images one by one, convert to a quantised graph.

    ``program``: ``model`` already exported (at batch 1; conversion passes its one export). Without it
    the model is exported here with a dynamic batch, so the quantised graph also takes whole batches.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with quiet():
        if program is None:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(model, (data[:2],), dynamic_shapes=({0: batch},))
        prepared = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for i in range(data.shape[0]):
                prepared(data[i:i + 1])
        return convert_pt2e(prepared, fold_quantize=fold_quantize)


def _calibration_data(spec: str, pp: Any, count: int) -> torch.Tensor:
    from mobilevits.data import load_data

    return load_data(spec, pp, limit=count, split="train").images


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------


@dataclass
class ConvertRequest:
    """What to convert and how: the options of :func:`convert`, checked once in :func:`_plan`.

    model: registered name; to: a registered backend (``executorch``, ``coreml``, ``tflite``); precision:
    ``fp32``, ``int8`` (all), ``fp16`` and ``w8`` (Core ML); resolution: input side (the model's default if
    None); weights: state dict to load (without: random init with re-randomised norms from ``seed``); out:
    output folder; check: run the accuracy check after converting, on ``data`` (``photos``, ``digits`` or a
    folder); delegate: ExecuTorch only, ``xnnpack`` or ``coreml``; calibration/calibration_count: images that
    calibrate int8 activations (PTQ); require_full_delegation: fail when an operator stays outside the
    delegate; quantized_model: an already quantised graph (QAT), which skips calibration, with
    ``quantization_info`` recorded in the sidecar; labels: class names (``imagenet1k``, a file, or a list),
    written into the sidecar for ``predict`` and the apps; forms: deploy formulations that override the
    backend's choice (``{"hardswish": "native"}`` or ``["hardswish=native"]``; same function, other ops);
    keep_float: int8 only, module names or class names left in float (mixed precision, PTQ); force: convert
    even when the output folder holds an artifact made from the same inputs (otherwise it is reused).
    """

    model: str
    to: str
    precision: str = "fp32"
    resolution: int | None = None
    weights: str | Path | None = None
    out: str | Path = "out"
    check: bool = True
    data: str = "photos"
    delegate: str = "xnnpack"
    num_classes: int | None = None  # None: what the weights were made for (their classifier), else 1000
    seed: int = 0
    calibration: str = "photos"
    calibration_count: int = 8
    require_full_delegation: bool = False
    normalize_in_model: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    quantized_model: torch.nn.Module | None = None
    quantization_info: dict[str, Any] | None = None
    labels: str | Path | list[str] | None = None
    forms: dict[str, str] | list[str] | None = None
    keep_float: list[str] | None = None
    force: bool = False
    show_progress: bool = True


@dataclass
class Conversion:
    """The state a conversion carries from stage to stage (plan -> export -> quantise -> lower -> write -> check)."""

    request: ConvertRequest
    conv: Converter
    info: Any  # mobilevits.ModelInfo
    resolution: int
    out_dir: Path
    source: dict[str, Any]  # how to rebuild the float model: goes into the sidecar
    labels: dict[str, Any] | None = None  # {"source", "names"}: goes into the sidecar
    model: torch.nn.Module | None = None  # the float source in this backend's deploy formulation
    program: torch.export.ExportedProgram | None = None  # what the backend lowers
    quantizer: Any = None
    quantized: torch.nn.Module | None = None  # the quantised graph (PTQ or QAT): also the check's reference
    quant_meta: dict[str, Any] | None = None
    key: dict[str, Any] | None = None  # cache_key, once computed
    calib: torch.Tensor | None = None  # the PTQ calibration images, loaded once (key digest and calibration)
    report: Delegation | None = None
    artifact: Path | None = None
    step: Callable[[str], None] = lambda stage: None

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.resolution, self.resolution)

    def say(self, stage: str) -> None:
        r = self.request
        self.step(f"{r.model} -> {r.to} {r.precision}: {stage}")


def convert(model: str, to: str, precision: str = "fp32", **options: Any) -> dict[str, Any]:
    """Convert a registered model for one backend and precision, then check it on this host.

    ``options`` are the fields of :class:`ConvertRequest` (resolution, weights, out, check, data, ...).
    The model is exported once; int8 calibrates once, and the check compares the artifact with that same
    quantised graph. Returns ``artifact``, ``sidecar``, ``size_bytes``, ``seconds``, ``delegation``, ``check``.
    """
    t0 = time.perf_counter()
    try:
        request = ConvertRequest(model=model, to=to, precision=precision, **options)
    except TypeError as e:
        raise TypeError(f"convert(): {e}; options are the fields of ConvertRequest") from None
    stages: dict[str, float] = {}
    t = time.perf_counter()
    job = _plan(request)
    stages["plan"] = time.perf_counter() - t
    reused = None if request.force or request.quantized_model is not None else _reusable(job)
    if reused is not None:
        job.artifact, meta = reused
        report = meta.get("delegation")
    else:
        for stage in (_export, _quantize, _lower, _write):
            t = time.perf_counter()
            stage(job)
            stages[stage.__name__.lstrip("_")] = time.perf_counter() - t
        meta, report = None, job.report.to_dict() if job.report else None
    assert job.artifact is not None
    result: dict[str, Any] = {"artifact": str(job.artifact), "sidecar": str(sidecar_path(job.artifact)),
                              "size_bytes": _size(job.artifact), "seconds": None, "reused": reused is not None,
                              "delegation": report, "check": None, "stages": stages}
    if request.check:
        if meta is not None and (meta.get("check") or {}).get("data_spec") == request.data:
            result["check"] = meta["check"]  # the reused artifact's own check, on the same data
        else:
            job.say("check")
            t = time.perf_counter()
            result["check"] = check_artifact(job.artifact, data=request.data, show_progress=False,
                                             quantized=job.quantized)
            stages["check"] = time.perf_counter() - t
    job.step("reused" if reused is not None else "done")
    result["stages"] = {k: round(v, 2) for k, v in stages.items()}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _calibration(job: Conversion) -> torch.Tensor:
    """The request's calibration images, loaded on first use: the cache key digests them, PTQ calibrates on them."""
    if job.calib is None:
        r = job.request
        job.calib = _calibration_data(r.calibration, job.model.preprocess, r.calibration_count)
    return job.calib


def _source_digest() -> str:
    """sha256 over the source of the model core and the converters: an edit to either changes every key."""
    h = hashlib.sha256()
    for root in (Path(mobilevits.__file__).parent, Path(__file__).parent):
        for f in sorted(root.rglob("*.py")):
            if "workflows" not in f.relative_to(root).parts:  # the floor above does not shape artifacts
                h.update(f.relative_to(root.parent).as_posix().encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(job: Conversion) -> dict[str, Any]:
    """Everything that shapes the artifact: the model and its config, weights (digest) or seed, backend,
    precision, resolution, formulation, quantisation settings and calibration data (digest), labels, the
    toolchain versions and the source of the model core and converters. Kept in the sidecar."""
    r = job.request
    calib = None
    if r.precision == "int8" and r.quantized_model is None:
        data = _calibration(job)
        calib = {"data": r.calibration, "count": r.calibration_count,
                 "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}
    return {"source": job.source, "backend": r.to, "delegate": r.delegate, "precision": r.precision,
            "resolution": job.resolution, "formulation": deploy_forms(job.model), "keep_float": r.keep_float,
            "calibration": calib, "labels": job.labels, "tools": tool_versions(), "code": _source_digest()}


def _reusable(job: Conversion) -> tuple[Path, dict[str, Any]] | None:
    """The artifact in the output folder made from exactly these inputs (sidecar ``cache_key``), if any."""
    r = job.request
    final = job.out_dir / f"{artifact_stem(r.model, job.resolution, r.to, r.precision, r.delegate)}{job.conv.suffix}"
    if not final.exists() or not sidecar_path(final).is_file():
        return None
    try:
        meta = read_sidecar(final)
    except Exception:  # unreadable or another format: convert again
        return None
    job.key = cache_key(job)
    return (final, meta) if meta.get("cache_key") == json.loads(json.dumps(job.key)) else None


def _plan(r: ConvertRequest) -> Conversion:
    """Validate the request before anything is written; build the float source."""
    hub_id = None
    if is_hub_id(r.model):  # a hub model: its architecture, weights, classes, input size and names
        hub = resolve_pretrained(r.model)
        hub_id = hub.hub_id
        names_from_hub = r.labels is None and hub.labels is not None
        r = dataclasses.replace(r, model=hub.architecture, weights=hub.weights, num_classes=hub.num_classes,
                                resolution=r.resolution or hub.resolution,
                                labels=hub.labels if names_from_hub else r.labels)
    conv = get_converter(r.to)
    if r.precision not in conv.precisions:
        raise UnsupportedError(f"{r.to} does not support precision {r.precision!r}; "
                               f"choose one of {', '.join(conv.precisions)}")
    if r.to == "executorch" and r.delegate not in ("xnnpack", "coreml"):
        raise UnsupportedError(f"unknown ExecuTorch delegate {r.delegate!r}; choose xnnpack or coreml")
    if r.to != "executorch" and r.delegate != "xnnpack":
        raise UnsupportedError("--delegate applies to the executorch backend only")
    if r.keep_float and r.precision != "int8":
        raise UnsupportedError(f"--keep-float chooses what stays float in an int8 model; this is {r.precision}")
    if r.to == "executorch" and r.delegate == "coreml" and r.precision != "fp32":
        raise UnsupportedError("the ExecuTorch Core ML delegate is offered in fp32 here; use --to coreml for "
                               "fp16/int8/w8 Core ML models")
    ok, why = conv.availability()
    if not ok:
        raise RuntimeUnavailableError(f"cannot convert to {r.to}: {why}")
    info = mobilevits.get_model_info(r.model)
    resolution = info.default_resolution if r.resolution is None else r.resolution
    info.check_resolution(resolution)
    probe = None  # a model to validate the weights with, when one at the right class count is already built
    if r.num_classes is None:  # the class count the weights were made for (a digits model: 10), else 1000
        n = None
        if r.weights is not None:
            probe = mobilevits.create_model(r.model, resolution=resolution, **(r.overrides or {}))
            n = mobilevits.checkpoint_num_classes(probe, r.weights)
            probe = None if n is not None else probe  # built for 1000 classes; the weights want n
        r = dataclasses.replace(r, num_classes=n or 1000)
    named = resolve_labels(r.labels, r.num_classes)  # (names, source) or None; a misfit fails here
    if named is not None and hub_id is not None and names_from_hub:
        named = (named[0], hub_id)
    forms = parse_deploy_forms(r.forms)  # an unknown kind or form fails here
    overrides = dict(r.overrides or {})
    for key, value in overrides.items():
        # the sidecar must rebuild the source from JSON; a dataclass or tensor would come back a string
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"override {key}={value!r} is not a plain JSON value (number, string, bool or list), "
                             "so the sidecar could not rebuild this model; register a named variant instead") from None
    out_dir = Path(r.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"output folder {out_dir} is not writable; choose another with --out")
    source = {"name": r.model, "num_classes": r.num_classes, "resolution": resolution, "overrides": overrides,
              "weights": None, "seed": r.seed, "normalize_in_model": r.normalize_in_model, "hub": hub_id}
    if r.weights is not None:
        # validates the file (clear WeightsError for corrupt / mismatched checkpoints) and hashes it
        probe = probe or mobilevits.create_model(r.model, num_classes=r.num_classes, resolution=resolution,
                                                 **overrides)
        loaded = mobilevits.load_weights(probe, r.weights)
        source["weights"] = {"path": str(Path(r.weights).resolve()), "sha256": loaded["sha256"]}
    job = Conversion(request=r, conv=conv, info=info, resolution=resolution, out_dir=out_dir, source=source,
                     labels=None if named is None else {"source": named[1], "names": named[0]},
                     step=_progress(["export", "quantize", "lower", "check"], r.show_progress))
    job.model = set_deploy_forms(conv.prepare_model(build_source(source), r.precision), **forms)
    return job


def _export(job: Conversion) -> None:
    """The one export of the float model; the backend's preflight reads it."""
    r = job.request
    job.say("export")
    try:
        with quiet():
            job.program = torch.export.export(job.model, (job.example,))
    except Exception as e:
        raise ConversionError(f"torch.export failed for {r.model} (a model problem, not a backend one): "
                              f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    reasons = job.conv.preflight(job.program, r.precision)
    if reasons:
        raise UnsupportedError(f"cannot convert {r.model} to {r.to} {r.precision}: " + "; ".join(reasons))


def _quantize(job: Conversion) -> None:
    """int8: calibrate once (PTQ) or take the QAT graph; the quantised graph becomes what is lowered."""
    r = job.request
    job.quantizer = job.conv.quantizer(r.precision)
    kept = keep_float_modules(job.quantizer, job.model, r.keep_float) if r.keep_float and job.quantizer else None
    if r.quantized_model is not None:
        job.quantized = r.quantized_model
        job.quant_meta = dict(r.quantization_info or {"source": "provided"})
    elif job.quantizer is not None:
        job.say("calibrate")
        calib = _calibration(job)
        job.quantized = calibrate_and_quantize(job.model, job.quantizer, calib, job.conv.fold_quantize,
                                               program=job.program)
        job.quant_meta = {"source": "ptq", "quantizer": type(job.quantizer).__name__,
                          "scheme": "int8 static activations, per-channel symmetric int8 weights",
                          "calibration": {"data": r.calibration, "count": int(calib.shape[0])}}
        if kept:
            job.quant_meta["keep_float"] = kept
        if getattr(job.quantizer, "merged_float_ops", None):
            job.quant_meta["float_between_float_ops"] = list(job.quantizer.merged_float_ops)
    elif job.conv.weight_quantization(r.precision):
        job.quant_meta = {"source": "weight-only", "scheme": "int8 symmetric per-channel weights, fp16 compute"}
    if job.quantized is not None:
        # lowering takes an ExportedProgram: the quantised graph (not the model again) is exported for it
        with quiet():
            job.program = torch.export.export(job.quantized, (job.example,))


def _lower(job: Conversion) -> None:
    """The backend writes the artifact under a temporary name in the output folder."""
    r = job.request
    stem = artifact_stem(r.model, job.resolution, r.to, r.precision, r.delegate)
    tmp = job.out_dir / f".{stem}.partial{job.conv.suffix}"
    remove_path(tmp)
    job.say("lower")
    try:
        job.report = job.conv.lower(job.program, r.precision, tmp, quantized=job.quantized is not None,
                                    quantizer=job.quantizer, delegate=r.delegate,
                                    module=job.quantized if job.quantized is not None else job.model)
    except (UnsupportedError, RuntimeUnavailableError):
        remove_path(tmp)
        raise
    except Exception as e:
        remove_path(tmp)
        raise ConversionError(f"{r.to} conversion of {r.model} ({r.precision}) failed in the backend: "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}. "
                              "This is a converter limitation; try another precision or backend, and "
                              "report it with the model name and tool versions.") from None
    if r.require_full_delegation and r.to != "coreml" and job.report.not_delegated:
        remove_path(tmp)
        raise ConversionError(f"{r.model}: {job.report.not_delegated} operator(s) stay outside the delegate "
                              f"({job.report.summary()}) and --require-full-delegation is set")
    job.artifact = tmp


def _write(job: Conversion) -> None:
    """Rename the finished artifact into place, then write its sidecar (both atomically)."""
    r, conv = job.request, job.conv
    tmp = job.artifact
    final = job.out_dir / f"{artifact_stem(r.model, job.resolution, r.to, r.precision, r.delegate)}{conv.suffix}"
    pp = job.model.preprocess
    sidecar = {
        "format": SIDECAR_FORMAT,
        "artifact": final.name,
        "backend": r.to,
        "delegate": r.delegate if r.to == "executorch" else ("xnnpack" if r.to == "tflite" else "coreml"),
        "precision": r.precision,
        "source": job.source,
        "model": {"name": r.model, "family": job.info.family,
                  "config": _jsonable(getattr(_unwrap(job.model), "cfg", None))},
        "input": {"name": conv.io_names()[0], "shape": [1, 3, job.resolution, job.resolution], "dtype": "float32",
                  "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0]},
        "output": {"name": conv.io_names()[1], "shape": [1, r.num_classes], "dtype": "float32",
                   "meaning": "logits (apply softmax for probabilities)"},
        "labels": job.labels,
        "preprocess": {**pp.to_dict(), "normalization_in_model": r.normalize_in_model,
                       "app_steps": "resize short side to resolution/crop_pct, centre-crop resolution, "
                                    "RGB float in [0,1]" + ("" if r.normalize_in_model else ", then (x-mean)/std")},
        "quantization": job.quant_meta,
        "formulation": deploy_forms(job.model),
        "cache_key": None if r.quantized_model is not None else (job.key or cache_key(job)),
        "tool_versions": tool_versions(),
        "delegation": job.report.to_dict(),
        "check": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_replace(tmp, final)
    write_sidecar(final, sidecar)
    job.artifact = final


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.model if isinstance(m, Normalize) else m


def _jsonable(cfg: Any) -> Any:
    import dataclasses

    if cfg is None:
        return None
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def write_sidecar(artifact: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(sidecar_path(artifact), json.dumps(meta, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def read_sidecar(artifact: str | Path) -> dict[str, Any]:
    artifact = Path(artifact)
    if not artifact.exists():
        raise FileNotFoundError(f"artifact not found: {artifact}")
    path = sidecar_path(artifact)
    if not path.is_file():
        raise ValueError(f"sidecar {path} is missing: mobilevits needs it to rebuild the PyTorch source. "
                         "Keep the .json next to the artifact, or re-run `mobilevits convert`.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"sidecar {path} is not valid JSON ({e}); re-run `mobilevits convert`") from None
    missing = [k for k in ("format", "backend", "precision", "source") if k not in meta]
    if missing or meta.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"sidecar {path} is not a {SIDECAR_FORMAT} sidecar (missing: {', '.join(missing) or '-'}, "
                         f"format: {meta.get('format')!r}); re-run `mobilevits convert`")
    return meta


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------


def quantized_reference(meta: dict[str, Any], src: torch.nn.Module) -> torch.nn.Module | None:
    """The quantised PyTorch model an int8 artifact should match, rebuilt as its sidecar says."""
    q = meta.get("quantization") or {}
    if q.get("source") == "ptq":
        conv = get_converter(meta["backend"])
        calib = _calibration_data(q["calibration"]["data"], src.preprocess, q["calibration"]["count"])
        src = conv.prepare_model(copy.deepcopy(src), meta["precision"])
        set_deploy_forms(src, **parse_deploy_forms(meta.get("formulation")))  # as the artifact was exported
        quantizer = conv.quantizer(meta["precision"])
        if q.get("keep_float"):
            keep_float_modules(quantizer, src, q["keep_float"])
        return calibrate_and_quantize(src, quantizer, calib, conv.fold_quantize)
    if q.get("source") == "qat" and q.get("reference"):
        ref = Path(q["reference"])
        if not ref.is_file():
            raise FileNotFoundError(f"QAT reference program {ref} recorded in the sidecar is missing")
        return torch.export.load(str(ref)).module()
    return None


def check_artifact(
    artifact: str | Path,
    data: str = "photos",
    limit: int | None = None,
    threads: int = 1,
    show_progress: bool = True,
    layers: bool = False,
    quantized: torch.nn.Module | None = None,
    session: Session | None = None,
) -> dict[str, Any]:
    """Run an artifact and its rebuilt PyTorch source on the same images and compare them.

    ``session``: the artifact already opened somewhere else (a device, e.g. an ARM CPU), run instead of
    this host's runtime under the same rules; its ``runtime_version`` names it in ``runtime``.

    ``quantized``: the quantised graph this int8 artifact was lowered from, when the caller holds it
    (``convert`` does): used as the reference instead of calibrating again from the sidecar's recipe.

    int8 artifacts are compared with the quantised PyTorch model and judged by the int8 rule
    (``compare.int8_verdict``: SQNR >= 30 dB, or on >= 100 images a margin over the quantisation
    noise with >= 95% top-1 agreement); ``rule``, ``margin_db``, ``sqnr_quantised_vs_float_db`` and
    ``images`` say how it was decided. The SQNR against the float source is reported too.
    A Core ML package is executed by the NumPy MIL executor (``converters.mil_executor``) on every host,
    after its structural validation; on macOS
    ``MLModel.predict`` runs as well and both are reported (``coreml_predict``,
    ``executor_vs_coreml_sqnr_db``) and must both pass. ``layers``: for a Core ML package, every op
    output against the PyTorch graph on the first image, naming the first below the precision's per-op
    tolerance (``LAYER_TOLERANCES_DB``); for an int8 TFLite or ExecuTorch model, every int8 activation
    against the quantised graph, each op also recomputed from the artifact's own inputs
    (:mod:`converters.int8_layers`; a W8A8 Core ML package the same way, from the MIL executor's
    tensors). For int8 TFLite and ExecuTorch, an op off by more than one int8 step fails the check,
    named in ``rule_note`` worst first (Core ML: named, not judged, as its float parts run in fp16);
    for the other precisions the per-op report does not change ``passed``.
    An op the executor does not implement fails the check with the op's name and the package's op
    histogram. The result is also stored in the artifact's sidecar.

    The default data (``photos``, no ``limit``) are 8 images, too few for the int8 rule's margin test: when an
    int8 check on them falls below 30 dB with no op off by more than one step, it runs again on 128 photos and
    crops of them (``photo-crops``) so that rule (b) can decide (on this host; ``escalated_from`` keeps the first
    numbers). Deep transformers need this: ties compound through 12 blocks to 27-28 dB on faithful artifacts.
    """
    holder: dict[str, Any] = {}
    result = _check_once(artifact, data, limit, threads, layers, quantized, session, holder)
    if not (result["precision"] == "int8" and not result["passed"] and result.get("rule") == "sqnr"
            and data == "photos" and limit is None and session is None and result.get("sqnr_db") is not None
            and (result.get("images") or 0) < MARGIN_MIN_IMAGES and "FAILED per-op" not in result["rule_note"]):
        return result
    first = result
    result = _check_once(artifact, "photo-crops", None, threads, False, holder.get("qref", quantized), None, holder)
    for key, value in first.items():  # the per-op report of the first image stays
        if (key.startswith("layers") or key in ("first_divergence", "runtime_identical")) and key not in result:
            result[key] = value
    result["data_spec"] = data
    result["escalated_from"] = {k: first[k] for k in ("data", "images", "sqnr_db", "sqnr_quantised_vs_float_db",
                                                     "top1_agreement", "rule_note")}
    result["note"] = (f"{first['images']} photos gave SQNR {first['sqnr_db']:.1f} dB < {THRESHOLDS_DB['int8']:g} "
                      f"dB, too few images for rule (b): checked again on {result['images']} photos and crops of "
                      f"them; {result['note']}")
    _store_check(Path(artifact), read_sidecar(artifact), result)
    return result


def _check_once(artifact: str | Path, data: str, limit: int | None, threads: int, layers: bool,
                quantized: torch.nn.Module | None, session: Session | None, holder: dict[str, Any]) -> dict[str, Any]:
    """One pass of :func:`check_artifact` on one data set; ``holder["qref"]`` keeps the quantised reference."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    conv = get_converter(meta["backend"])
    precision = meta["precision"]
    src = build_source(meta["source"])
    from mobilevits.data import load_data

    ds = load_data(data, src.preprocess, limit=limit)
    x = ds.images
    ref_float = _run_per_image(src, x)
    threshold = THRESHOLDS_DB[precision]
    result: dict[str, Any] = {
        "artifact": str(artifact), "runtime": conv.name, "precision": precision, "data": ds.source, "data_spec": data,
        "sqnr_db": None, "max_abs_error": None, "cosine": None, "top1_agreement": None, "top5_agreement": None,
        "sqnr_vs_float_db": None, "accuracy": None, "threshold_db": threshold, "passed": False, "note": "",
        "reference": "float PyTorch model", "rule": None, "images": None,
    }
    if precision == "int8":
        result.update(sqnr_quantised_vs_float_db=None, margin_db=None)
    ok, why = conv.runtime_availability()
    if session is not None:
        ok, why = True, ""
    elif meta["backend"] == "executorch" and meta.get("delegate") == "coreml":
        ok, why = False, "an ExecuTorch program with the Core ML delegate runs only on Apple devices"
    # Core ML packages run everywhere through the NumPy MIL executor (it needs coremltools only to read them).
    mil = meta["backend"] == "coreml" and conv.availability()[0] and session is None
    # (an ExecuTorch program with the Core ML delegate is not ``ok`` here)
    int8_layers = layers and precision == "int8" and (ok or mil) and bool(conv.layers_source) and session is None
    if layers and session is not None:
        result["layers_note"] = "per-layer comparison runs on this host only (without --device)"
    elif layers and not (mil or int8_layers):
        result["layers_note"] = ("per-layer comparison is available for Core ML packages (NumPy MIL executor) and "
                                 "int8 TFLite and ExecuTorch (XNNPACK) models on a host that runs them")
    problems = conv.validate(artifact, tuple(meta["input"]["shape"]), meta["source"]["num_classes"]) \
        if hasattr(conv, "validate") and (mil or not ok) else []
    structural = ("structural validation passed (loads; input/output names, shapes and types as declared; "
                  "ML program ops present)" if not problems else "structural validation FAILED: " + "; ".join(problems))
    if not ok and not mil:
        result["passed"] = not problems
        result["note"] = f"numerics not run: {why}. {structural[0].upper()}{structural[1:]}"
        result["runtime"] = f"{conv.name} (structural)"
        _store_check(artifact, meta, result)
        return result

    ref = ref_float
    qref = (quantized if quantized is not None else quantized_reference(meta, src)) if precision == "int8" else None
    holder["qref"] = qref
    # the same weights without activation quantisation: how far quantisation itself moved the model
    same_weights_float = ref_float
    if qref is not None:
        ref = _run_per_image(qref, x)
        result["reference"] = "quantised PyTorch model (after convert_pt2e)"
        if (meta.get("quantization") or {}).get("source") == "qat" and isinstance(qref, torch.fx.GraphModule):
            # QAT changed the weights: its float is the fine-tuned graph, not the model QAT started from
            from .int8_layers import without_activation_quantization

            same_weights_float = _run_per_image(without_activation_quantization(qref), x)
    elif precision == "int8":
        result["note"] = "no quantised reference recorded: compared with the float model"

    if mil:
        from .mil_executor import UnsupportedOpError, load_mlpackage

        result["runtime"] = "coreml (numpy MIL executor)"
        try:
            program = load_mlpackage(artifact)
            out = _run_mil(program, conv, x.numpy())
        except UnsupportedOpError as e:
            result["note"] = f"{e}. {structural}"
            result["error"] = {"unsupported_op": e.op_type, "at": e.op_name, "op_histogram": e.histogram}
            _store_check(artifact, meta, result)
            return result
        mil_note = ("numerics from the NumPy reference executor of the ML program (fp16 ops stored in fp16 with "
                    "fp32 accumulation, rounded after each op), not from Core ML" if not ok else
                    "numerics from the NumPy reference executor and from Core ML (MLModel.predict, CPU only); "
                    "both must pass")
    elif session is not None:
        out = session.run(x.numpy())
        result["runtime"] = session.runtime_version
        result["device"] = getattr(session, "device_spec", None) or session.runtime_version
    else:
        out = conv.run(artifact, x.numpy(), threads=threads)
    result.update(compare(ref, out))
    result["images"] = int(x.shape[0])
    result["sqnr_vs_float_db"] = sqnr_db(ref_float, out)
    if precision == "int8":
        result["sqnr_quantised_vs_float_db"] = sqnr_db(same_weights_float, ref) if qref is not None else None
    if ds.labels is not None:
        labels = ds.labels.numpy()
        result["accuracy"] = {"pytorch_float": accuracy(ref_float, labels), "artifact": accuracy(out, labels)}
        if qref is not None:
            result["accuracy"]["pytorch_quantized"] = accuracy(ref, labels)
    result.update(_verdict(precision, result))
    if mil:
        result["passed"] = result["passed"] and not problems
        if ok:  # macOS: Core ML itself, so the executor is checked against it wherever a Mac runs this
            predicted = conv.run(artifact, x.numpy(), threads=threads)
            p = {**compare(ref, predicted), "sqnr_vs_float_db": sqnr_db(ref_float, predicted),
                 "images": result["images"], "sqnr_quantised_vs_float_db": result.get("sqnr_quantised_vs_float_db")}
            p.update(_verdict(precision, p))
            result["coreml_predict"] = p
            result["executor_vs_coreml_sqnr_db"] = sqnr_db(predicted, out)
            result["passed"] = result["passed"] and result["coreml_predict"]["passed"]
            result["runtime"] = "coreml (numpy MIL executor + MLModel.predict)"
        if layers and not int8_layers:  # fp32/fp16/w8: each op against the float graph (cumulative SQNR)
            example = qref if qref is not None else src
            result.update(_layer_report(program, example, x[:1], tuple(meta["input"]["shape"]),
                                        LAYER_TOLERANCES_DB[precision]))
    if int8_layers:
        if isinstance(qref, torch.fx.GraphModule):
            result.update(_int8_layer_report(conv, artifact, qref, x[:1]))
        else:
            result["layers_note"] = "per-op comparison needs the quantised PyTorch graph; the sidecar records none"
    if precision == "int8" and "layers_tolerance_lsb" in result:
        failed = _layer_failures(result)
        if failed and conv.layers_verdict:
            result["passed"] = False
            result["rule_note"] = f"{result['rule_note']}; FAILED per-op: {failed}"
        elif failed:
            result["rule_note"] = (f"{result['rule_note']}; per-op (reported, not judged: {conv.name} computes the "
                                   f"float parts in fp16): {failed}")
    if not result["note"]:
        rule = "" if precision == "int8" else f"; {result['rule_note']}"
        result["note"] = f"{len(x)} images from {ds.source}{rule}"
    if mil:
        result["note"] += f"; {mil_note}; {structural}"
    _store_check(artifact, meta, result)
    return result


@contextlib.contextmanager
def open_artifact(artifact: str | Path, threads: int = 1) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """An artifact loaded once on this host, as a function (N, 3, R, R) -> (N, classes) logits: its runtime, or for
    a Core ML package on a host without Core ML, the NumPy MIL executor (the numerics ``check`` judges)."""
    meta = read_sidecar(artifact)
    conv = get_converter(meta["backend"])
    if conv.runtime_availability()[0] or meta["backend"] != "coreml":
        with conv.open(Path(artifact), threads) as session:
            yield session.run
        return
    from .mil_executor import load_mlpackage

    program = load_mlpackage(artifact)
    yield lambda x: _run_mil(program, conv, x)


def run_artifact(artifact: str | Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """(N, classes) logits of an artifact on this host (see :func:`open_artifact`)."""
    with open_artifact(artifact, threads) as run:
        return run(x)


def _run_per_image(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, classes) logits, one image at a time (the check's per-sample contract; a QAT reference is
    exported at batch 1)."""
    with torch.no_grad():
        return np.concatenate([model(x[i:i + 1]).numpy() for i in range(x.shape[0])])


def _verdict(precision: str, r: dict[str, Any]) -> dict[str, Any]:
    """``rule``, ``margin_db``, ``passed`` and ``rule_note`` of a comparison ``r`` (see ``compare.int8_verdict``)."""
    if precision == "int8":
        v = int8_verdict(r["sqnr_db"], r.get("sqnr_quantised_vs_float_db"), r["top1_agreement"], r["images"])
        return {"rule": v["rule"], "margin_db": v["margin_db"], "passed": v["passed"], "rule_note": v["why"]}
    threshold = THRESHOLDS_DB[precision]
    passed = bool(r["sqnr_db"] >= threshold)
    return {"rule": "sqnr", "passed": passed,
            "rule_note": f"SQNR {r['sqnr_db']:.1f} dB {'>=' if passed else '<'} {threshold:g} dB vs the float model"}


def _layer_failures(result: dict[str, Any]) -> str:
    """Why an int8 per-op comparison fails (worst op first), or "" when every op is within tolerance."""
    # int8 steps, each op recomputed from the artifact's own inputs (converters.int8_layers)
    bad = sorted((r for r in result.get("layers") or [] if r["status"] != "ok"), key=lambda r: -r["local_max_lsb"])
    names = [f"{'+'.join(r.get('segment') or [r['op']])} ({r['type']}, {r['local_max_lsb']} int8 steps off)"
             for r in bad]
    why = []
    if names:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        why.append(f"{len(names)} op(s) more than one int8 step off, worst first: " + ", ".join(names[:5]) + more)
    if result.get("layers_runtime_identical") is False:
        why.append("the program the per-op check inspected is not what the artifact computes: the artifact is not "
                   "the lowering of its recorded quantised graph")
        differs = result.get("layers_artifact_differs") or []
        if differs:
            why.append("its constants differ from that lowering's at " + ", ".join(
                f"{d['op']} ({d['xnode']}{', module ' + d['module'] if d.get('module') else ''})" for d in differs[:5]))
    return "; ".join(why)


def _run_mil(program: Any, conv: Converter, x: np.ndarray) -> np.ndarray:
    """Run a loaded ML program image by image (its input shape is fixed at batch 1)."""
    in_name, out_name = conv.io_names()
    return np.concatenate([np.asarray(program.run({in_name: x[i:i + 1].astype(np.float32)})[out_name],
                                      dtype=np.float32) for i in range(x.shape[0])])


def torch_node_outputs(module: torch.nn.Module, x: torch.Tensor, input_shape: tuple[int, ...]
                       ) -> dict[str, np.ndarray]:
    """Every tensor a module's exported graph computes on ``x``, by fx node name.

    The graph is exported exactly as for conversion (``torch.export`` at ``input_shape``, then the
    inference decompositions coremltools requires), so node names are the ones coremltools gave the
    ML program's variables.
    """
    with quiet():
        ep = torch.export.export(module, (torch.zeros(input_shape),)).run_decompositions({})
    captured: dict[str, np.ndarray] = {}

    class _Capture(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if n.op == "call_function" and isinstance(value, torch.Tensor):
                captured[n.name] = value.detach().float().numpy()
            return value

    with torch.no_grad(), quiet():
        # contiguous like the export example: the decomposed graph's views assume its strides
        _Capture(ep.module()).run(x.contiguous())
    return captured


def _layer_report(program: Any, module: torch.nn.Module, x: torch.Tensor, input_shape: tuple[int, ...],
                  tolerance_db: float) -> dict[str, Any]:
    """``layers`` / ``first_divergence`` / ``layers_note`` of a Core ML check (first image only)."""
    from .mil_executor import compare_layers

    in_name, _ = get_converter("coreml").io_names()
    _, captured = program.run({in_name: x.numpy().astype(np.float32)}, capture=True)
    reference = torch_node_outputs(module, x, input_shape)
    rep = compare_layers(program, captured, reference, tolerance_db)
    rescaled = sum(r["status"] == "rescaled" for r in rep["layers"])
    note = (f"per-op SQNR on the first image: {rep['compared']} of {rep['total']} op outputs matched a PyTorch "
            f"node by name and shape (the rest were created, fused or re-laid out by coremltools)")
    if rescaled:
        note += f"; {rescaled} quantised add/sub match up to a constant factor (coremltools' scale normalisation)"
    benign = {k: sum(r["status"] == k for r in rep["layers"]) for k in ("rounding", "cancellation")}
    if any(benign.values()):
        note += ("; below tolerance but not divergent: " + ", ".join(f"{v} {k}" for k, v in benign.items() if v)
                 + " (int8 one-step rounding flips; outputs much smaller than their inputs)")
    return {"layers": rep["layers"], "first_divergence": rep["first_divergence"], "layers_note": note,
            "layers_tolerance_db": tolerance_db, "layers_unmatched": rep["unmatched"]}


def _int8_layer_report(conv: Converter, artifact: Path, qref: torch.fx.GraphModule, x: torch.Tensor
                       ) -> dict[str, Any]:
    """``layers`` / ``first_divergence`` / ``layers_note`` of an int8 TFLite or ExecuTorch check (first image)."""
    from .int8_layers import LOCAL_TOLERANCE_LSB

    rep = conv.compare_layers(artifact, qref, x)
    how = conv.layers_source
    within = sum(r["status"] == "ok" for r in rep["layers"])
    note = (f"per-op comparison on the first image: {rep['compared']} of {rep['total']} {how}; SQNR is cumulative "
            f"(the graph run on its own), 'local' recomputes each op from the artifact's own int8 inputs: {within} "
            f"of {rep['compared']} within {LOCAL_TOLERANCE_LSB} int8 step (rounding ties)")
    if not rep["runtime_identical"]:
        note += ("; the inspected run's output differs from the artifact's, so the tensors shown are not what the "
                 "deployed model computes")
    return {"layers": rep["layers"], "first_divergence": rep["first_divergence"], "layers_note": note,
            "layers_tolerance_lsb": LOCAL_TOLERANCE_LSB, "layers_unmatched": rep["unmatched"],
            "layers_runtime_identical": rep["runtime_identical"],
            "layers_artifact_differs": rep.get("artifact_differs")}


def _store_check(artifact: Path, meta: dict[str, Any], result: dict[str, Any]) -> None:
    meta = dict(meta)
    # the per-op table stays out of the sidecar (hundreds of rows); first_divergence is kept
    kept = {k: v for k, v in result.items() if k not in ("artifact", "layers", "layers_unmatched")}
    if result.get("device"):  # a check on another machine sits beside the host's, one per device
        meta["device_checks"] = dict(meta.get("device_checks") or {}, **{result["device"]: kept})
    else:
        meta["check"] = kept
    write_sidecar(artifact, meta)
