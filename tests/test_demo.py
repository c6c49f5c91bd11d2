"""`make demo` (the main job in minutes), converting for several backends at once, and class counts read
from the weights."""

from __future__ import annotations

import re

import pytest
import torch

import mobilevits
from converters import UnsupportedError, convert_many
from mobilevits.workflows import app_assets
from mobilevits.workflows.demo import demo


def test_demo_runs_the_main_job_and_a_second_run_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app_assets, "REPO_ROOT", tmp_path / "repo")  # not the checkout's app folders
    out = tmp_path / "demo"
    assert demo(out=out, fast=True, jobs=2) == 0  # the backends in worker processes
    first = capsys.readouterr().out
    for stage in ("== 1. Fine-tune", "== 2. Convert for Android", "== 3. Latency", "== 4. Phone app assets"):
        assert stage in first
    assert len(re.findall(r"^-- \d+ s$", first, re.M)) == 4, first  # every stage says how long it took
    rows = [ln for ln in first.splitlines() if re.match(r"mobilevit_tiny_96_\w+_fp32\.", ln)]
    assert len(rows) == 3 and all(" PASS " in r for r in rows), first
    assert "executorch" in first and "tflite" in first and "--device ios" in first  # latency; Core ML: a phone
    for app in ("android_demo", "ios_demo"):
        assert (tmp_path / "repo" / app).is_dir() and list((tmp_path / "repo" / app).rglob("manifest.json"))
    assert "mobilevits qat mobilevit_tiny" in first and "make demo-full" in first  # what to do next
    assert re.search(r"Done in \d+ s", first)
    # the same inputs again: training picks up its finished run, every conversion is reused (in this process)
    assert demo(out=out, fast=True, jobs=1) == 0
    again = capsys.readouterr().out
    rows = [ln for ln in again.splitlines() if re.match(r"mobilevit_tiny_96_\w+_fp32\.", ln)]
    assert len(rows) == 3 and all(" reused " in r for r in rows), again


def test_convert_many_finishes_the_other_backends_when_one_fails(monkeypatch):
    calls, lines = [], []

    def fake_convert(model, to, precision="fp32", **options):
        calls.append(to)
        if to == "executorch":
            raise UnsupportedError("executorch broke")
        return {"artifact": f"{model}.{to}", "seconds": 1.0, "reused": False, "check": {"passed": True}}

    monkeypatch.setattr("converters.pipeline.convert", fake_convert)
    with pytest.raises(UnsupportedError, match="executorch broke"):
        convert_many("m", ["tflite", "executorch", "coreml"], jobs=1, log=lines.append)
    assert calls == ["tflite", "executorch", "coreml"]  # the failure did not stop the backend after it
    assert [ln.split(":")[0] for ln in lines] == ["tflite", "executorch", "coreml"]
    assert "FAILED: executorch broke" in lines[1] and "check PASS" in lines[2]
    monkeypatch.setattr("converters.pipeline.convert", lambda model, to, precision="fp32", **o: {
        "artifact": to, "seconds": 0.0, "check": None})
    assert [r["backend"] for r in convert_many("m", ["coreml", "tflite"], jobs=1)] == ["coreml", "tflite"]


@pytest.mark.parametrize("to,precision,message", [
    (["tflite", "onnx"], "fp32", "unknown backend 'onnx'"),
    (["tflite", "tflite"], "fp32", "named twice"),
    (["coreml", "tflite"], "w8", "tflite does not support precision 'w8'"),
    ([], "fp32", "no backend given"),
])
def test_convert_many_refuses_before_any_work(monkeypatch, to, precision, message):
    monkeypatch.setattr("converters.pipeline.convert", lambda *a, **k: pytest.fail("converted anyway"))
    with pytest.raises(UnsupportedError, match=message):
        convert_many("mobilevit_tiny", to, precision=precision)


def test_class_count_is_read_from_the_weights(tmp_path):
    from safetensors.torch import save_file

    digits = mobilevits.create_model("mobilevit_tiny", num_classes=10, resolution=96)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in digits.state_dict().items()}, str(path))
    assert mobilevits.checkpoint_num_classes(mobilevits.create_model("mobilevit_tiny", resolution=96), path) == 10
    assert mobilevits.checkpoint_num_classes(digits, path) is None  # the head fits: nothing to infer
    # predict with a model name and those weights builds a 10-class model without --num-classes
    from mobilevits.workflows.predict import predict

    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(img)
    r = predict("mobilevit_tiny", [img], weights=path, resolution=96, top=3)
    top = r["predictions"][0]["top"]
    assert len(top) == 3 and all(0 <= t["index"] < 10 for t in top) and r["labels"] == "generic"
