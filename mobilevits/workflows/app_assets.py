"""Assets for the demo apps, and the bench-result contract the apps write.

    export_app_assets(["out/m_96_tflite_fp32.tflite"], to="android_demo")  -> result dict
    load_bench_result("bench/m_96_tflite_fp32.json")                        -> validated dict

``export_app_assets`` copies converted artifacts into an app's model folder, bundles one real test
image per resolution, and writes ``manifest.json`` (schema: ``schemas/app_manifest.schema.json``)
with what the apps need: file, backend, input layout, preprocessing, labels and the top-1 class the
host runtime gives on the bundled image. Both apps write one bench JSON per run
(``schemas/bench_result.schema.json``); ``load_bench_result`` / ``parse_bench_result`` read and
validate it with plain Python checks (no jsonschema dependency).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import resolve_labels

REPO_ROOT = Path(__file__).resolve().parents[2]  # mobilevits/workflows/app_assets.py -> the repository
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
TEST_IMAGE_SOURCE = "skimage.data.chelsea"


@dataclass(frozen=True)
class AppTarget:
    """Where an app keeps its models and which artifacts it can run."""

    name: str
    models_dir: Path  # relative to the repository root
    accepts: tuple[tuple[str, str], ...]  # (backend, delegate) pairs
    runs: str  # human description for errors


APPS: dict[str, AppTarget] = {
    "android_demo": AppTarget("android_demo", Path("android_demo/app/src/main/assets/models"),
                              (("executorch", "xnnpack"), ("tflite", "xnnpack")),
                              ".pte (ExecuTorch, XNNPACK delegate) and .tflite (LiteRT)"),
    "ios_demo": AppTarget("ios_demo", Path("ios_demo/MobileViTsDemo/Models"),
                          (("coreml", "coreml"), ("executorch", "xnnpack"), ("executorch", "coreml")),
                          ".mlpackage (Core ML) and .pte (ExecuTorch, XNNPACK or Core ML delegate)"),
}
_ALIASES = {"android": "android_demo", "ios": "ios_demo"}


class BenchResultError(ValueError):
    """A bench JSON that does not follow schemas/bench_result.schema.json."""


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def export_app_assets(
    artifacts: Sequence[str | Path] | str | Path,
    to: str,
    labels: str | Path | None = None,
    root: str | Path | None = None,
    dest: str | Path | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Copy artifacts into an app's model folder and (re)write its ``manifest.json``.

    Args:
        artifacts: ``.pte`` / ``.tflite`` / ``.mlpackage`` paths, each with its sidecar ``<artifact>.json``.
        to: ``android_demo`` or ``ios_demo`` (``android`` / ``ios`` also accepted).
        labels: text file with one class name per line (or a JSON list), or ``imagenet1k``; default: the
            names in each artifact's sidecar (``convert --labels``), else ``class N``.
        root: repository root holding the app folders (default: this checkout).
        dest: explicit model folder, overriding ``root`` + the app's default folder.
        replace: drop the manifest's other entries instead of merging with them.

    Returns:
        ``app``, ``dest``, ``manifest`` (path), ``models`` (the new entries), ``test_images``.

    Raises:
        ValueError: unknown app, artifact for the other platform, bad labels, missing sidecar.
        FileNotFoundError: missing artifact.
    """
    app = _app(to)
    if isinstance(artifacts, (str, Path)):
        artifacts = [artifacts]
    if not artifacts:
        raise ValueError("no artifacts given")
    out = Path(dest) if dest is not None else Path(root or REPO_ROOT) / app.models_dir
    plans = [_plan(Path(a), app) for a in artifacts]  # validate everything before copying anything
    # validate the labels against every artifact before writing anything
    chosen = [_labels_for(meta, labels) for _, meta in plans]
    out.mkdir(parents=True, exist_ok=True)

    entries: list[dict[str, Any]] = []
    images: set[str] = set()
    for (artifact, meta), (names, labels_source) in zip(plans, chosen):
        resolution = int(meta["input"]["shape"][-1] if meta["input"]["layout"] == "NCHW"
                         else meta["input"]["shape"][-2])
        image_name, pixels = _write_test_image(out, meta, resolution)
        images.add(image_name)
        expected = expected_top1(artifact, meta, pixels)
        _atomic_copy(artifact, out / artifact.name)
        entries.append(_entry(artifact, meta, names, labels_source, image_name, expected, resolution))

    manifest_path = out / MANIFEST_NAME
    manifest = _merge_manifest(manifest_path, app.name, entries, replace, out)
    errors = validate_manifest(manifest)
    if errors:  # a bug here, not bad input: never write a manifest the apps cannot read
        raise RuntimeError("internal error, manifest does not follow its schema: " + "; ".join(errors))
    from converters import atomic_write_text

    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return {"app": app.name, "dest": str(out), "manifest": str(manifest_path), "models": entries,
            "test_images": sorted(images)}


def _app(to: str) -> AppTarget:
    name = _ALIASES.get(to, to)
    if name not in APPS:
        raise ValueError(f"unknown app {to!r}; choose android_demo or ios_demo")
    return APPS[name]


def _plan(artifact: Path, app: AppTarget) -> tuple[Path, dict[str, Any]]:
    from converters import read_sidecar

    if not artifact.exists():
        raise FileNotFoundError(f"artifact not found: {artifact}")
    suffix = artifact.suffix.lower()
    if suffix not in (".pte", ".tflite", ".mlpackage"):
        raise ValueError(f"{artifact.name} is not a .pte, .tflite or .mlpackage artifact")
    meta = read_sidecar(artifact)
    backend, delegate = meta["backend"], meta.get("delegate", "xnnpack")
    if (backend, delegate) not in app.accepts:
        what = {"coreml": "a Core ML model", "tflite": "a LiteRT model"}.get(
            backend, f"an ExecuTorch program with the {delegate} delegate")
        raise ValueError(f"{artifact.name} is {what}, which {app.name} cannot run; {app.name} runs {app.runs}")
    for key in ("input", "output", "preprocess"):
        if key not in meta:
            raise ValueError(f"sidecar of {artifact.name} has no {key!r}; re-run `mobilevits convert`")
    return artifact, meta


def _labels_for(meta: dict[str, Any], labels: str | Path | None) -> tuple[list[str], str]:
    """Names for an artifact: ``labels`` (a file or ``imagenet1k``), else its sidecar's, else ``class N``."""
    num_classes = int(meta["source"]["num_classes"])
    if labels is not None:
        return resolve_labels(labels, num_classes)
    if meta.get("labels"):
        return list(meta["labels"]["names"]), meta["labels"]["source"]
    return [f"class {i}" for i in range(num_classes)], "generic"


def _write_test_image(out: Path, meta: dict[str, Any], resolution: int) -> tuple[str, np.ndarray]:
    """Save the bundled photo at the model's resolution; return its name and its (3, R, R) pixels in [0, 1]."""
    import skimage.data
    from PIL import Image

    from ..base import Preprocess
    from ..data import prepare_image

    pp = meta["preprocess"]
    prep = Preprocess(resolution=resolution, crop_pct=float(pp.get("crop_pct", 0.875)),
                      interpolation=pp.get("interpolation", "bicubic"))
    chw = prepare_image(skimage.data.chelsea(), prep)
    hwc = np.clip(np.round(chw.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    name = f"test_image_{resolution}.png"
    tmp = out / f".{name}.partial"
    Image.fromarray(hwc).save(tmp, format="PNG")
    os.replace(tmp, out / name)
    # what the app feeds: the PNG's own 8-bit pixels, not the float image before rounding
    pixels = np.asarray(Image.open(out / name).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return name, pixels


def expected_top1(artifact: Path, meta: dict[str, Any], pixels: np.ndarray) -> dict[str, Any]:
    """Logits of ``artifact`` on the (3, R, R) test pixels: by the host runtime when it can run the
    artifact here, else by the PyTorch source rebuilt from the sidecar (the quantised one for int8 PTQ)."""
    from converters import get_converter

    pp = meta["preprocess"]
    x = pixels[None].astype(np.float32)
    if not pp.get("normalization_in_model", True):
        x = (x - np.asarray(pp["mean"], np.float32)[:, None, None]) / np.asarray(pp["std"], np.float32)[:, None, None]
    if meta["input"]["layout"] == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    x = np.ascontiguousarray(x)
    conv = get_converter(meta["backend"])
    ok, why = conv.runtime_availability()
    if meta["backend"] == "executorch" and meta.get("delegate") == "coreml":
        ok, why = False, "the ExecuTorch Core ML delegate runs on Apple platforms only"
    versions = meta.get("tool_versions", {})
    if ok:
        logits = np.asarray(conv.run(artifact, x)).reshape(-1)
        tool = {"executorch": "executorch", "tflite": "ai-edge-litert", "coreml": "coremltools"}[meta["backend"]]
        reference = f"{meta['backend']} runtime on the host ({tool} {versions.get(tool, '?')})"
    else:
        logits, reference = _pytorch_reference(meta, x, why)
    order = np.argsort(-logits, kind="stable")
    margin = float(logits[order[0]] - logits[order[1]]) if logits.size > 1 else float("inf")
    return {"top1_index": int(order[0]), "top5": [int(i) for i in order[:5]],
            "margin": round(margin, 6) if math.isfinite(margin) else 1e9, "reference": reference}


def _pytorch_reference(meta: dict[str, Any], x: np.ndarray, why: str) -> tuple[np.ndarray, str]:
    import torch

    from converters import build_source, quantized_reference

    src = build_source(meta["source"])
    model, what = src, "float PyTorch source"
    if meta.get("precision") == "int8":
        q = quantized_reference(meta, src)
        if q is not None:
            model, what = q, "quantised PyTorch source"
    t = torch.from_numpy(x if meta["input"]["layout"] == "NCHW" else x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = model(t).numpy().reshape(-1)
    return logits, f"{what} rebuilt from the sidecar ({why})"


def _entry(artifact: Path, meta: dict[str, Any], labels: list[str], labels_source: str, image: str,
           expected: dict[str, Any], resolution: int) -> dict[str, Any]:
    pp = meta["preprocess"]
    in_model = bool(pp.get("normalization_in_model", True))
    crop_pct = float(pp.get("crop_pct", 0.875))
    return {
        "name": artifact.name[: -len(artifact.suffix)],
        "architecture": meta["source"]["name"],
        "file": artifact.name,
        "backend": meta["backend"],
        "delegate": meta.get("delegate", "xnnpack"),
        "precision": meta["precision"],
        "size_bytes": _size(artifact),
        "sha256": _sha256(artifact),
        "input": {"name": meta["input"]["name"], "shape": [int(s) for s in meta["input"]["shape"]],
                  "dtype": meta["input"].get("dtype", "float32"), "layout": meta["input"]["layout"],
                  "color": meta["input"].get("color", "RGB")},
        "output": {"name": meta["output"]["name"], "num_classes": len(labels),
                   "meaning": meta["output"].get("meaning", "logits")},
        "preprocess": {
            "resolution": resolution,
            # the same arithmetic as mobilevits.data.prepare_image
            "resize_short_side": max(resolution, int(round(resolution / crop_pct))),
            "crop_pct": crop_pct,
            "interpolation": pp.get("interpolation", "bicubic"),
            "scale": 1.0 / 255.0,
            "mean": [0.0, 0.0, 0.0] if in_model else [float(v) for v in pp["mean"]],
            "std": [1.0, 1.0, 1.0] if in_model else [float(v) for v in pp["std"]],
            "normalization_in_model": in_model,
        },
        "labels": labels,
        "labels_source": labels_source,
        "test_image": {"file": image, "source": f"{TEST_IMAGE_SOURCE}, resized and centre-cropped to "
                                                f"{resolution}x{resolution}", "prepared": True},
        "expected": {**expected, "top1_label": labels[expected["top1_index"]]},
    }


def _merge_manifest(path: Path, app: str, entries: list[dict[str, Any]], replace: bool, out: Path) -> dict[str, Any]:
    old: list[dict[str, Any]] = []
    if path.is_file() and not replace:
        try:
            prev = json.loads(path.read_text())
            if prev.get("schema_version") == MANIFEST_SCHEMA_VERSION and prev.get("app") == app:
                old = [e for e in prev.get("models", []) if isinstance(e, dict)]
        except (json.JSONDecodeError, AttributeError):
            old = []  # an unreadable manifest is rewritten from the new entries
    new_names = {e["name"] for e in entries}
    # keep older entries whose files are still there and which follow the current schema
    kept = [e for e in old if e.get("name") not in new_names and (out / str(e.get("file", ""))).exists()
            and not _validate(e, load_schema("app_manifest")["properties"]["models"]["items"], "entry")]
    from .. import __version__

    return {"schema_version": MANIFEST_SCHEMA_VERSION, "app": app, "generated_by": f"mobilevits {__version__}",
            "created": _now(), "models": sorted(kept + entries, key=lambda e: e["name"])}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy a file or an .mlpackage folder under a temporary name, then rename it into place."""
    from converters import atomic_replace, remove_path

    if src.resolve() == dst.resolve():
        return
    tmp = dst.with_name(f".{dst.name}.partial")
    remove_path(tmp)
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        atomic_replace(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# schemas and validation (the subset of JSON Schema 2020-12 the two schema files use)
# --------------------------------------------------------------------------------------------


def load_schema(name: str) -> dict[str, Any]:
    """``bench_result`` or ``app_manifest``: the schema file in mobilevits/workflows/schemas as a dict."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
                                       "integer": (int,), "number": (int, float), "null": (type(None),)}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    if name == "number" and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _TYPES[name])


def _validate(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in names):
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema \
            and value < schema["minimum"]:
        errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if schema.get("format") == "date-time" and not _is_datetime(value):
            errors.append(f"{where}: {value!r} is not an ISO 8601 date-time")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: needs at least {schema['minItems']} items, has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += _validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unknown field {k!r}" for k in value if k not in props]
        for k, sub in props.items():
            if k in value:
                errors += _validate(value[k], sub, f"{where}.{k}" if where else k)
    return errors


def _is_datetime(s: str) -> bool:
    try:
        _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in s


def validate_manifest(obj: Any) -> list[str]:
    """Problems of an app manifest against schemas/app_manifest.schema.json (empty when valid)."""
    return _validate(obj, load_schema("app_manifest"), "")


def compute_stats(samples: Iterable[float]) -> dict[str, float]:
    """median, p90, trimmed mean and CoV of latency samples, defined exactly as the apps compute them
    (see the ``stats`` description in schemas/bench_result.schema.json)."""
    xs = sorted(float(s) for s in samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    median = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0
    pos = 0.9 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    p90 = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    a, b = n // 10, n * 9 // 10
    kept = xs[a:b] if b > a else xs
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"median_ms": median, "p90_ms": p90, "trimmed_mean_ms": sum(kept) / len(kept),
            "cv": sd / mean if mean > 0 else 0.0}


def bench_result_errors(obj: Any, check_stats: bool = True) -> list[str]:
    """Every problem of a bench result against the schema and its internal consistency (empty when valid)."""
    errors = _validate(obj, load_schema("bench_result"), "")
    if errors or not isinstance(obj, dict):
        return errors
    samples = obj["samples_ms"]
    if len(samples) != obj["iterations"]:
        errors.append(f"samples_ms has {len(samples)} values but iterations is {obj['iterations']}")
    if obj["app"] == "android_demo" and obj["device"]["os"] != "Android":
        errors.append(f"app android_demo with device os {obj['device']['os']!r}")
    if obj["backend"] == "coreml" and obj["compute_units"] is None:
        errors.append("a coreml result needs compute_units")
    if obj["backend"] != "coreml" and obj["compute_units"] is not None:
        errors.append(f"compute_units is set for a {obj['backend']} result")
    top1 = obj["top1"]
    if top1["expected_index"] is not None and top1["matches"] is not None \
            and top1["matches"] != (top1["index"] == top1["expected_index"]):
        errors.append("top1.matches disagrees with top1.index and top1.expected_index")
    if check_stats:
        ref = compute_stats(samples)
        for k, v in ref.items():
            got = obj["stats"][k]
            if abs(got - v) > 1e-3 * max(abs(v), 1e-3) + 1e-6:
                errors.append(f"stats.{k} is {got} but samples_ms give {v:.6g}")
    return errors


def validate_bench_result(obj: Any, check_stats: bool = True) -> dict[str, Any]:
    """Return ``obj`` if it is a valid bench result; else raise :class:`BenchResultError` listing the problems."""
    errors = bench_result_errors(obj, check_stats=check_stats)
    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BenchResultError("invalid bench result: " + "; ".join(errors[:5]) + more)
    return obj


def parse_bench_result(text: str | bytes, source: str = "bench result") -> dict[str, Any]:
    """Parse and validate bench JSON text (e.g. the stdout of ``adb shell run-as <pkg> cat ...``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        raise BenchResultError(f"{source} is empty (did the app finish the run?)")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchResultError(f"{source} is not valid JSON ({e})") from None
    try:
        return validate_bench_result(obj)
    except BenchResultError as e:
        raise BenchResultError(f"{source}: {e}") from None


def load_bench_result(path: str | Path) -> dict[str, Any]:
    """Read and validate a bench JSON file written by android_demo or ios_demo."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bench result not found: {p}")
    return parse_bench_result(p.read_bytes(), source=str(p))
