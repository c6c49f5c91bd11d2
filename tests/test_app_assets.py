"""The demo apps' contract, checked here because the apps cannot be built here (no Android SDK, no Xcode).

- export-app-assets: manifest fields, expected top-1 on the bundled image, atomic copies, one-line errors;
- the bench-result schema: valid and invalid examples, the parser, the stats definition;
- the Kotlin and Swift sources: the JSON keys they write and read, against the schema files.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevits.workflows import app_assets
from mobilevits.workflows.app_assets import (
    BenchResultError,
    bench_result_errors,
    compute_stats,
    export_app_assets,
    load_bench_result,
    load_schema,
    parse_bench_result,
    validate_bench_result,
    validate_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
ANDROID_SRC = ROOT / "android_demo/app/src/main/java/org/mobilevits/demo"
IOS_SRC = ROOT / "ios_demo/MobileViTsDemo"
RES = 96


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def artifacts(artifact) -> dict[str, Path]:
    """A tiny model converted for each backend whose toolchain is installed (shared by the session)."""
    from converters import get_converter

    return {backend: Path(artifact("mobilenetv3_tiny", backend, resolution=RES)["artifact"])
            for backend in ("tflite", "executorch", "coreml") if get_converter(backend).availability()[0]}


def _need(artifacts: dict[str, Path], *backends: str) -> list[Path]:
    missing = [b for b in backends if b not in artifacts]
    if missing:
        pytest.skip(f"toolchain not installed: {', '.join(missing)}")
    return [artifacts[b] for b in backends]


def _png_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0


# --------------------------------------------------------------------------------------------
# export-app-assets
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_android_manifest_and_expected_top1(artifacts, tmp_path):
    from converters import get_converter

    tfl, pte = _need(artifacts, "tflite", "executorch")
    r = export_app_assets([tfl, pte], to="android_demo", root=tmp_path)
    dest = tmp_path / "android_demo/app/src/main/assets/models"
    assert Path(r["dest"]) == dest and Path(r["manifest"]) == dest / "manifest.json"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert validate_manifest(manifest) == []
    assert manifest["app"] == "android_demo" and manifest["schema_version"] == 1
    assert r["test_images"] == [f"test_image_{RES}.png"]

    by_backend = {m["backend"]: m for m in manifest["models"]}
    assert set(by_backend) == {"tflite", "executorch"}
    image = dest / f"test_image_{RES}.png"
    assert Image.open(image).size == (RES, RES)
    x = _png_pixels(image)
    for backend, art in (("tflite", tfl), ("executorch", pte)):
        m = by_backend[backend]
        assert m["name"] == art.stem and m["file"] == art.name and m["architecture"] == "mobilenetv3_tiny"
        assert (dest / art.name).read_bytes() == art.read_bytes()
        assert m["delegate"] == "xnnpack" and m["precision"] == "fp32"
        assert m["input"] == {"name": "image", "shape": [1, 3, RES, RES], "dtype": "float32", "layout": "NCHW",
                              "color": "RGB"}
        assert m["output"]["num_classes"] == 10
        pp = m["preprocess"]  # normalisation is baked in: the app only scales to [0, 1]
        assert pp["normalization_in_model"] is True and pp["mean"] == [0.0] * 3 and pp["std"] == [1.0] * 3
        assert pp["scale"] == pytest.approx(1 / 255) and pp["resize_short_side"] == round(RES / 0.875)
        assert m["labels"] == [f"class {i}" for i in range(10)] and m["labels_source"] == "generic"
        assert m["test_image"] == {"file": image.name, "source": m["test_image"]["source"], "prepared": True}
        assert "chelsea" in m["test_image"]["source"]
        # the expectation is what the host runtime gives on exactly the PNG's pixels
        logits = get_converter(backend).run(art, x).reshape(-1)
        assert m["expected"]["top1_index"] == int(np.argmax(logits))
        assert m["expected"]["top5"] == [int(i) for i in np.argsort(-logits, kind="stable")[:5]]
        assert m["expected"]["top1_label"] == f"class {int(np.argmax(logits))}"
        assert f"{backend} runtime on the host" in m["expected"]["reference"]
        srt = np.sort(logits)
        assert m["expected"]["margin"] == pytest.approx(float(srt[-1] - srt[-2]), abs=1e-5)


@pytest.mark.slow
def test_test_image_is_the_prepared_photo(artifacts, tmp_path):
    import skimage.data

    from mobilevits.base import Preprocess
    from mobilevits.data import prepare_image

    (tfl,) = _need(artifacts, "tflite")
    export_app_assets([tfl], to="android", dest=tmp_path)
    meta = json.loads(Path(str(tfl) + ".json").read_text())["preprocess"]
    ref = prepare_image(skimage.data.chelsea(), Preprocess(resolution=RES, crop_pct=meta["crop_pct"],
                                                           interpolation=meta["interpolation"]))
    np.testing.assert_allclose(_png_pixels(tmp_path / f"test_image_{RES}.png")[0], ref, atol=0.5 / 255 + 1e-6)


@pytest.mark.slow
def test_export_ios_mlpackage_and_pte(artifacts, tmp_path):
    import torch

    from converters import build_source, get_converter, read_sidecar

    mlp, pte = _need(artifacts, "coreml", "executorch")
    r = export_app_assets([mlp, pte], to="ios_demo", root=tmp_path)
    dest = tmp_path / "ios_demo/MobileViTsDemo/Models"
    assert Path(r["dest"]) == dest
    manifest = json.loads((dest / "manifest.json").read_text())
    assert validate_manifest(manifest) == [] and manifest["app"] == "ios_demo"
    m = {e["backend"]: e for e in manifest["models"]}["coreml"]
    copied = dest / mlp.name
    assert copied.is_dir()
    files = sorted(p.relative_to(mlp) for p in mlp.rglob("*"))
    assert sorted(p.relative_to(copied) for p in copied.rglob("*")) == files
    assert m["sha256"] == app_assets._sha256(mlp) and m["size_bytes"] == app_assets._size(mlp)
    with torch.no_grad():
        x = torch.from_numpy(_png_pixels(dest / m["test_image"]["file"]))
        logits = build_source(read_sidecar(mlp)["source"])(x)
    if m["expected"]["margin"] > 1e-3:
        assert m["expected"]["top1_index"] == int(logits.argmax())
    # without a Core ML runtime on this host the manifest says what stood in for it
    ok, _ = get_converter("coreml").runtime_availability()
    assert ("coreml runtime on the host" if ok else "PyTorch source") in m["expected"]["reference"]


@pytest.mark.slow
def test_merge_replace_labels_and_cli(artifacts, tmp_path, capsys):
    from mobilevits.workflows.cli import main

    tfl, pte = _need(artifacts, "tflite", "executorch")
    export_app_assets([tfl], to="android_demo", dest=tmp_path)
    export_app_assets([pte], to="android_demo", dest=tmp_path)  # merges with the first
    names = [m["name"] for m in json.loads((tmp_path / "manifest.json").read_text())["models"]]
    assert names == sorted([tfl.stem, pte.stem])

    labels = tmp_path.parent / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    r = export_app_assets([pte], to="android_demo", dest=tmp_path, labels=labels, replace=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == [pte.stem]  # --replace dropped the other entry
    assert manifest["models"][0]["labels"][3] == "digit 3" and manifest["models"][0]["labels_source"] == "labels.txt"
    assert r["models"][0]["expected"]["top1_label"].startswith("digit ")

    assert main(["export-app-assets", str(tfl), "--to", "android_demo", "--dest", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["app"] == "android_demo" and out["models"][0]["name"] == tfl.stem


@pytest.mark.slow
def test_copy_is_atomic(artifacts, tmp_path, monkeypatch):
    (tfl,) = _need(artifacts, "tflite")
    export_app_assets([tfl], to="android_demo", dest=tmp_path)
    good = (tmp_path / tfl.name).read_bytes()
    manifest_before = (tmp_path / "manifest.json").read_text()

    def broken_copy(src, dst, *a, **k):
        Path(dst).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        export_app_assets([tfl], to="android_demo", dest=tmp_path)
    assert (tmp_path / tfl.name).read_bytes() == good  # the old copy is untouched
    assert (tmp_path / "manifest.json").read_text() == manifest_before
    assert not list(tmp_path.glob(".*partial*"))  # no temporary left behind


def _fake_artifact(tmp_path: Path, name: str, backend: str, delegate: str, sidecar: bool = True) -> Path:
    art = tmp_path / name
    if name.endswith(".mlpackage"):
        (art / "Data").mkdir(parents=True)
    else:
        art.write_bytes(b"x")
    if sidecar:
        from converters.pipeline import SIDECAR_FORMAT

        Path(str(art) + ".json").write_text(json.dumps({
            "format": SIDECAR_FORMAT, "backend": backend, "delegate": delegate, "precision": "fp32",
            "source": {"name": "mobilenetv3_tiny", "num_classes": 10, "resolution": RES},
            "input": {"name": "image", "shape": [1, 3, RES, RES], "layout": "NCHW"},
            "output": {"name": "logits", "shape": [1, 10]}, "preprocess": {"resolution": RES}}))
    return art


@pytest.mark.parametrize("name,backend,delegate,to,message", [
    ("m.mlpackage", "coreml", "coreml", "android_demo", "is a Core ML model, which android_demo cannot run"),
    ("m.pte", "executorch", "coreml", "android_demo", "ExecuTorch program with the coreml delegate"),
    ("m.tflite", "tflite", "xnnpack", "ios_demo", "is a LiteRT model, which ios_demo cannot run"),
    ("m.tflite", "tflite", "xnnpack", "windows_demo", "unknown app 'windows_demo'"),
])
def test_wrong_platform_and_unknown_app(tmp_path, name, backend, delegate, to, message):
    art = _fake_artifact(tmp_path, name, backend, delegate)
    with pytest.raises(ValueError, match=re.escape(message)):
        export_app_assets([art], to=to, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # validated before anything was written


def test_missing_artifact_sidecar_and_bad_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        export_app_assets([tmp_path / "nope.pte"], to="android_demo", dest=tmp_path / "out")
    art = _fake_artifact(tmp_path, "m.pte", "executorch", "xnnpack", sidecar=False)
    with pytest.raises(ValueError, match="sidecar .* is missing"):
        export_app_assets([art], to="android_demo", dest=tmp_path / "out")
    with pytest.raises(ValueError, match="no artifacts"):
        export_app_assets([], to="android_demo", dest=tmp_path / "out")
    bad = tmp_path / "labels.json"
    bad.write_text('{"not": "a list"}')
    art = _fake_artifact(tmp_path, "n.pte", "executorch", "xnnpack")
    with pytest.raises(ValueError, match="JSON list of strings"):
        export_app_assets([art], to="android_demo", dest=tmp_path / "out", labels=bad)


@pytest.mark.parametrize("argv,message", [
    (["--to", "android_demo"], "is a Core ML model"),
    (["--to", "ios_phone"], "unknown app 'ios_phone'"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    from mobilevits.workflows.cli import EXIT_BAD_INPUT, main

    art = _fake_artifact(tmp_path, "m.mlpackage", "coreml", "coreml")
    assert main(["export-app-assets", str(art), *argv, "--dest", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mobilevits: error:") and message in err


# --------------------------------------------------------------------------------------------
# bench result: schema, validator, parser, stats
# --------------------------------------------------------------------------------------------


def _valid_result(**over) -> dict:
    samples = [4.2, 4.0, 4.1, 5.0, 4.05, 3.98, 4.3, 4.12, 4.07, 4.4]
    obj = {
        "schema_version": 1, "app": "android_demo",
        "device": {"model": "Pixel 8", "manufacturer": "Google", "os": "Android", "os_version": "15",
                   "soc": "Google Tensor G3", "abi": "arm64-v8a", "api_level": 35, "cpu_cores": 9,
                   "memory_mb": 7800, "thermal_state": "none"},
        "model": "mobilevit_xs_256_tflite_fp32", "architecture": "mobilevit_xs",
        "artifact": "mobilevit_xs_256_tflite_fp32.tflite", "backend": "tflite", "delegate": "xnnpack",
        "precision": "fp32", "resolution": 256, "compute_units": None, "threads": 4, "warmup": 10,
        "iterations": len(samples), "load_ms_cold": 35.2, "load_ms_warm": 12.5, "first_inference_ms": 9.8,
        "samples_ms": samples, "stats": compute_stats(samples),
        "top1": {"index": 3, "label": "class 3", "expected_index": 3, "matches": True},
        "actual_backends": None, "runtime_version": "litert 2.3.0", "timestamp": "2026-11-22T02:04:42.123Z",
    }
    obj.update(over)
    return obj


def test_valid_results_pass():
    assert bench_result_errors(_valid_result()) == []
    ios = _valid_result(app="ios_demo", backend="coreml", delegate="coreml", compute_units="cpu_and_ne", threads=None,
                        device={"model": "iPhone15,4", "manufacturer": "Apple", "os": "iOS", "os_version": "18.2.0",
                                "soc": None, "abi": "arm64", "cpu_cores": 6, "memory_mb": 5700,
                                "thermal_state": "nominal"})
    assert validate_bench_result(ios) is ios
    minimal = {k: v for k, v in _valid_result().items() if k in load_schema("bench_result")["required"]}
    assert bench_result_errors(minimal) == []


def _broken(path: str, value=None, delete: bool = False) -> dict:
    obj = copy.deepcopy(_valid_result())
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return obj


@pytest.mark.parametrize("obj,message", [
    (_broken("load_ms_cold", delete=True), "missing 'load_ms_cold'"),
    (_broken("device.soc", delete=True), "device: missing 'soc'"),
    (_broken("stats.p90_ms", delete=True), "stats: missing 'p90_ms'"),
    (_broken("samples_ms", "fast"), "samples_ms: expected array"),
    (_broken("samples_ms", []), "needs at least 1 items"),
    (_broken("samples_ms", [1.0, -2.0] + [1.0] * 8), "below the minimum"),
    (_broken("iterations", 3), "samples_ms has 10 values but iterations is 3"),
    (_broken("backend", "onnx"), "backend: 'onnx' is not one of"),
    (_broken("app", "web_demo"), "app: 'web_demo' is not one of"),
    (_broken("compute_units", "neural_engine"), "compute_units: 'neural_engine'"),
    (_broken("compute_units", "all"), "compute_units is set for a tflite result"),
    (_broken("threads", 2.5), "threads: expected integer or null"),
    (_broken("warmup", True), "warmup: expected integer"),
    (_broken("load_ms_cold", float("nan")), "load_ms_cold: expected number"),
    (_broken("schema_version", 2), "schema_version: expected 1"),
    (_broken("timestamp", "yesterday"), "not an ISO 8601 date-time"),
    (_broken("loadMsCold", 1.0), "unknown field 'loadMsCold'"),
    (_broken("device.gpu", "Mali"), "unknown field 'gpu'"),
    (_broken("stats.median_ms", 99.0), "stats.median_ms is 99.0 but samples_ms give"),
    (_broken("top1.matches", False), "top1.matches disagrees"),
    (_broken("device.os", "iOS"), "app android_demo with device os 'iOS'"),
])
def test_invalid_results_fail(obj, message):
    errors = bench_result_errors(obj)
    assert any(message in e for e in errors), errors
    with pytest.raises(BenchResultError, match="invalid bench result"):
        validate_bench_result(obj)


def test_coreml_result_needs_compute_units():
    obj = _valid_result(app="ios_demo", backend="coreml", delegate="coreml", compute_units=None)
    obj["device"]["os"] = "iOS"
    assert "a coreml result needs compute_units" in bench_result_errors(obj)


def test_parse_and_load(tmp_path):
    text = json.dumps(_valid_result())
    assert parse_bench_result(text)["model"] == "mobilevit_xs_256_tflite_fp32"
    assert parse_bench_result(text.encode())["threads"] == 4
    path = tmp_path / "bench.json"
    path.write_text(text)
    assert load_bench_result(path)["stats"]["median_ms"] == pytest.approx(4.11)
    with pytest.raises(BenchResultError, match="is empty"):
        parse_bench_result("  \n", source="adb output")
    with pytest.raises(BenchResultError, match="not valid JSON"):
        parse_bench_result('{"app": ', source="adb output")
    with pytest.raises(BenchResultError, match=r"adb output: invalid bench result: .*missing 'top1'"):
        parse_bench_result(json.dumps(_broken("top1", delete=True)), source="adb output")
    with pytest.raises(FileNotFoundError):
        load_bench_result(tmp_path / "missing.json")


def test_stats_definition():
    s = compute_stats([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0, 12.0])
    assert s["median_ms"] == 6.0 and s["p90_ms"] == pytest.approx(10.0)
    assert s["trimmed_mean_ms"] == pytest.approx(5.5)  # sorted[1:9], as minibench's subList(n/10, 9n/10)
    assert s["cv"] == pytest.approx(np.std([5, 1, 4, 2, 3, 10, 6, 7, 9, 8, 12], ddof=1) / np.mean(
        [5, 1, 4, 2, 3, 10, 6, 7, 9, 8, 12]))
    assert compute_stats([2.0]) == {"median_ms": 2.0, "p90_ms": 2.0, "trimmed_mean_ms": 2.0, "cv": 0.0}
    xs = list(np.random.default_rng(0).gamma(4.0, 1.0, size=57))
    assert compute_stats(xs)["p90_ms"] == pytest.approx(np.percentile(xs, 90))
    assert compute_stats(xs)["median_ms"] == pytest.approx(np.median(xs))


def test_app_stats_golden_values_match_python():
    """StatsTest.kt and StatsTests.swift assert these constants; they must be Python's numbers."""
    want = compute_stats([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0, 12.0])
    kt = (ROOT / "android_demo/app/src/test/java/org/mobilevits/demo/StatsTest.kt").read_text()
    sw = (ROOT / "ios_demo/MobileViTsDemoTests/StatsTests.swift").read_text()
    for key, kname, sname in (("median_ms", "GOLDEN_MEDIAN", "goldenMedian"), ("p90_ms", "GOLDEN_P90", "goldenP90"),
                              ("trimmed_mean_ms", "GOLDEN_TRIMMED_MEAN", "goldenTrimmedMean"),
                              ("cv", "GOLDEN_CV", "goldenCv")):
        k = float(re.search(rf"{kname} = ([0-9.eE+-]+)", kt).group(1))
        s = float(re.search(rf"{sname} = ([0-9.eE+-]+)", sw).group(1))
        assert k == pytest.approx(want[key], abs=1e-12) and s == pytest.approx(want[key], abs=1e-12), key
    for src in (kt, sw):  # both use the same samples as here
        assert "5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0, 12.0" in src


# --------------------------------------------------------------------------------------------
# Kotlin / Swift sources against the schema files
# --------------------------------------------------------------------------------------------

# which class of each language writes which object of the bench JSON
BENCH_OBJECTS = {"BenchResult": (), "DeviceInfo": ("device",), "Stats": ("stats",), "Top1": ("top1",)}


def _schema_at(schema: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        schema = schema["properties"][key]
    return schema


def _blocks(source: str, keyword: str) -> dict[str, str]:
    """Source text of each top-level `class X` / `struct X`, up to the next one."""
    marks = [(m.group(1), m.start()) for m in re.finditer(rf"^(?:data |final )?{keyword} (\w+)", source, re.M)]
    return {name: source[start:(marks[i + 1][1] if i + 1 < len(marks) else len(source))]
            for i, (name, start) in enumerate(marks)}


def _kotlin_written_keys() -> dict[str, set[str]]:
    blocks = _blocks((ANDROID_SRC / "BenchResult.kt").read_text(), "class")
    return {name: set(re.findall(r'\bput\("([a-z0-9_]+)"', blocks[name])) for name in BENCH_OBJECTS}


def _swift_written_keys() -> dict[str, set[str]]:
    blocks = _blocks((IOS_SRC / "BenchResult.swift").read_text(), "struct")
    out = {}
    for name in BENCH_OBJECTS:
        block = blocks[name]
        coding = re.search(r"enum CodingKeys: String, CodingKey \{(.*?)\n    \}", block, re.S).group(1)
        cases = dict(re.findall(r'case (\w+) = "([a-z0-9_]+)"', coding))
        # every case has an explicit raw value, so nothing is written under a name the regex cannot see
        assert len(cases) == len(re.findall(r"\bcase \w+", coding)), f"{name}: CodingKeys without a raw value"
        encoded = set(re.findall(r"forKey: \.(\w+)", block))
        assert encoded == set(cases), f"{name}.encode(to:) writes {sorted(encoded)} but declares {sorted(cases)}"
        out[name] = set(cases.values())
    return out


@pytest.mark.parametrize("language", ["kotlin", "swift"])
def test_bench_json_keys_match_the_schema(language):
    schema = load_schema("bench_result")
    written = _kotlin_written_keys() if language == "kotlin" else _swift_written_keys()
    for cls, path in BENCH_OBJECTS.items():
        obj = _schema_at(schema, path)
        keys = written[cls]
        unknown = keys - set(obj["properties"])
        missing = set(obj["required"]) - keys
        assert not unknown, f"{language} {cls} writes fields the schema does not have: {sorted(unknown)}"
        assert not missing, f"{language} {cls} does not write required fields: {sorted(missing)}"


def test_the_apps_write_the_same_bench_objects():
    """Both apps write the same required fields; optional extras may differ (e.g. Android threads, api_level)."""
    kt, sw = _kotlin_written_keys(), _swift_written_keys()
    schema = load_schema("bench_result")
    for cls, path in BENCH_OBJECTS.items():
        required = set(_schema_at(schema, path)["required"])
        assert kt[cls] & required == sw[cls] & required == required


def _all_property_names(schema: dict) -> set[str]:
    names: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        names.add(key)
        names |= _all_property_names(sub)
    if "items" in schema:
        names |= _all_property_names(schema["items"])
    return names


def test_manifest_keys_the_apps_read_exist():
    manifest_names = _all_property_names(load_schema("app_manifest"))
    kt = (ANDROID_SRC / "AppManifest.kt").read_text()
    getter = r'\b(?:get|opt)(?:String|Int|Long|Double|Boolean|JSONObject|JSONArray)?\("([a-z0-9_]+)"'
    kt_keys = set(re.findall(getter, kt))
    sw = (IOS_SRC / "AppManifest.swift").read_text()
    sw_keys = set(re.findall(r'case \w+ = "([a-z0-9_]+)"', sw))
    assert {"models", "file", "backend", "preprocess", "test_image", "top1_index"} <= kt_keys & sw_keys
    assert not kt_keys - manifest_names, f"AppManifest.kt reads unknown keys {sorted(kt_keys - manifest_names)}"
    assert not sw_keys - manifest_names, f"AppManifest.swift reads unknown keys {sorted(sw_keys - manifest_names)}"


def test_android_bench_extras_and_manifest():
    kt = (ANDROID_SRC / "BenchActivity.kt").read_text()
    extras = dict(re.findall(r'const val (EXTRA_\w+) = "(\w+)"', kt))
    assert set(extras.values()) == {"model", "threads", "warmup", "iterations", "models_dir"}
    readme = (ROOT / "android_demo/README.md").read_text()
    assert re.search(r"am start -W -S -n org\.mobilevits\.demo/\.BenchActivity\s*\\?\s*--es model \S+ --ei threads \S+ "
                     r"--ei warmup \S+ --ei iterations \S+", readme)
    assert "run-as org.mobilevits.demo cat files/bench/" in readme
    assert "mobilevits bench" in readme and "--device adb" in readme
    ns = "{http://schemas.android.com/apk/res/android}"
    app = ET.parse(ROOT / "android_demo/app/src/main/AndroidManifest.xml").getroot().find("application")
    acts = {a.get(ns + "name"): a for a in app.findall("activity")}
    assert acts[".BenchActivity"].get(ns + "exported") == "true"
    assert acts[".MainActivity"].find("intent-filter/category").get(ns + "name") == "android.intent.category.LAUNCHER"
    assert 'namespace = "org.mobilevits.demo"' in (ROOT / "android_demo/app/build.gradle.kts").read_text()


def _pinned_executorch() -> str:
    return re.search(r'"executorch==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def test_runtime_versions_match_the_exporters():
    """The apps' runtimes must read what this repo's pinned exporters write."""
    toml = (ROOT / "android_demo/gradle/libs.versions.toml").read_text()
    versions = dict(re.findall(r'^(\w+) = "([^"]+)"', toml, re.M))
    assert versions["executorch"] == _pinned_executorch()
    assert versions["litert"].split(".")[0] == "2"
    assert 'group = "org.pytorch", name = "executorch-android"' in toml
    assert 'group = "com.google.ai.edge.litert", name = "litert"' in toml
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((ROOT / "ios_demo/project.yml").read_text())
    branch = spec["packages"]["ExecuTorch"]["branch"]
    assert branch.startswith("swiftpm-") and branch.split("-")[1].rsplit(".", 1)[0] == \
        _pinned_executorch().rsplit(".", 1)[0]


def test_ios_project_spec():
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((ROOT / "ios_demo/project.yml").read_text())
    app, tests = spec["targets"]["MobileViTsDemo"], spec["targets"]["MobileViTsDemoTests"]
    assert spec["options"]["deploymentTarget"]["iOS"] == "17.0"
    products = {d.get("product") for d in app["dependencies"] if d.get("package") == "ExecuTorch"}
    assert {"executorch", "backend_xnnpack", "backend_coreml", "kernels_optimized"} <= products
    assert "-all_load" in app["settings"]["base"]["OTHER_LDFLAGS"]
    models = [s for s in app["sources"] if isinstance(s, dict) and s.get("path") == "MobileViTsDemo/Models"]
    assert models and models[0]["type"] == "folder"  # bundled as Models/, where AppManifest looks
    assert tests["type"] == "bundle.unit-test" and {"target": "MobileViTsDemo"} in tests["dependencies"]
    assert 'Bundle.main.url(forResource: "Models", withExtension: nil)' in (IOS_SRC / "AppManifest.swift").read_text()
    for path in [*app["sources"], *tests["sources"]]:
        assert (ROOT / "ios_demo" / (path["path"] if isinstance(path, dict) else path)).exists()
    readme = (ROOT / "ios_demo/README.md").read_text()
    for needle in ("xcodegen generate", "xcodebuild test-without-building", "xcresulttool get test-results metrics",
                   "mobilevits bench", "--device ios"):
        assert needle in readme, needle


def test_schema_files_are_draft_2020_12():
    for name in ("bench_result", "app_manifest"):
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])


def test_normalization_outside_the_model(tmp_path, monkeypatch):
    """normalization_in_model = false: the manifest carries mean/std and the host feeds normalised pixels."""
    import converters.pipeline

    seen = {}

    class FakeConverter:
        def runtime_availability(self):
            return True, ""

        def run(self, path, x):
            seen["x"] = x
            return np.arange(10, dtype=np.float32)[None]

    monkeypatch.setattr(converters, "get_converter", lambda backend: FakeConverter())
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    meta = {"backend": "tflite", "delegate": "xnnpack", "precision": "fp32", "tool_versions": {},
            "source": {"name": "mobilenetv3_tiny", "num_classes": 10},
            "input": {"name": "image", "shape": [1, 3, 4, 4], "layout": "NCHW"},
            "output": {"name": "logits"},
            "preprocess": {"mean": mean, "std": std, "crop_pct": 0.875, "interpolation": "bilinear",
                           "normalization_in_model": False}}
    pixels = np.full((3, 4, 4), 0.5, np.float32)
    expected = app_assets.expected_top1(tmp_path / "m.tflite", meta, pixels)
    np.testing.assert_allclose(seen["x"][0, :, 0, 0], (0.5 - np.array(mean)) / np.array(std), rtol=1e-6)
    assert expected["top1_index"] == 9 and expected["top5"] == [9, 8, 7, 6, 5] and expected["margin"] == 1.0
    art = tmp_path / "m.tflite"
    art.write_bytes(b"x")
    entry = app_assets._entry(art, meta, [f"c{i}" for i in range(10)], "generic", "test_image_4.png", expected, 4)
    pp = entry["preprocess"]
    assert pp["normalization_in_model"] is False and pp["mean"] == mean and pp["std"] == std
    assert pp["resize_short_side"] == 5 and entry["expected"]["top1_label"] == "c9"
