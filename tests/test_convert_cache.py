"""No conversion twice (#24): the same inputs reuse the artifact; any input that shapes it converts again."""

import time

import torch

import converters.pipeline as pipeline
from converters import convert, read_sidecar

TINY = dict(resolution=96, num_classes=10, check=False, show_progress=False)


def _convert(out, **kw):
    return convert("mobilevit_tiny", to="tflite", out=out, **{**TINY, **kw})


def test_same_inputs_reuse_the_artifact_and_force_rebuilds(tmp_path):
    first = _convert(tmp_path)
    assert not first["reused"] and {"plan", "export", "lower", "write"} <= set(first["stages"])
    stamp = (tmp_path / "mobilevit_tiny_96_tflite_fp32.tflite").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = _convert(tmp_path)
    assert again["reused"] and again["artifact"] == first["artifact"] and time.perf_counter() - t0 < 10
    assert (tmp_path / "mobilevit_tiny_96_tflite_fp32.tflite").stat().st_mtime_ns == stamp  # not rewritten
    assert read_sidecar(again["artifact"])["cache_key"]["backend"] == "tflite"
    # a check requested now runs once and is then reused with the artifact
    checked = _convert(tmp_path, check=True)
    assert checked["reused"] and checked["check"]["passed"] and "check" in checked["stages"]
    assert _convert(tmp_path, check=True)["stages"].keys() == {"plan"}
    assert not _convert(tmp_path, force=True)["reused"]


def _hit(out, **kw) -> bool:
    """Would convert() reuse the artifact in ``out`` for these inputs? (plans, does not convert)"""
    job = pipeline._plan(pipeline.ConvertRequest(model="mobilevit_tiny", to="tflite", out=out, **{**TINY, **kw}))
    return pipeline._reusable(job) is not None


def test_any_input_that_shapes_the_artifact_is_a_miss(tmp_path, monkeypatch):
    import mobilevits

    for i, scale in enumerate((1.0, 2.0)):  # the same file name with other content must miss
        m = mobilevits.create_model("mobilevit_tiny", num_classes=10, resolution=96)
        torch.save({k: v * scale if v.is_floating_point() else v for k, v in m.state_dict().items()},
                   tmp_path / f"w{i}.pt")
    weights = tmp_path / "w.pt"
    weights.write_bytes((tmp_path / "w0.pt").read_bytes())
    out = tmp_path / "out"
    _convert(out, weights=weights)
    assert _hit(out, weights=weights)
    assert not _hit(out, weights=weights, labels=[f"digit {i}" for i in range(10)])
    assert not _hit(out, weights=weights, forms={"layernorm_mean": "linear"})
    assert not _hit(out, weights=weights, normalize_in_model=False)
    assert not _hit(out)  # random init instead of the weights
    versions = pipeline.tool_versions()
    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "tool_versions", lambda: {**versions, "torch": "9.9.9"})
        assert not _hit(out, weights=weights)
    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "_source_digest", lambda: "0" * 64)  # an edit to the model or converter code
        assert not _hit(out, weights=weights)
    weights.write_bytes((tmp_path / "w1.pt").read_bytes())
    assert not _hit(out, weights=weights)
    # and end to end: another seed converts again
    assert not _convert(out, seed=1)["reused"]


def test_int8_calibration_is_part_of_the_key(tmp_path):
    kw = dict(precision="int8", calibration_count=4)
    _convert(tmp_path, **kw)
    assert _hit(tmp_path, **kw)
    assert not _hit(tmp_path, **{**kw, "calibration_count": 2})
    assert not _hit(tmp_path, **{**kw, "calibration": "digits"})
    assert not _hit(tmp_path, **{**kw, "keep_float": ["head"]})
