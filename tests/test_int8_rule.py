"""The int8 acceptance rule (``converters.compare.int8_verdict``): faithful artifacts of a trained model pass,
deliberately broken ones (one layer's weight scale doubled) fail under both (a) and (b) on every backend, and
``check --layers`` names the broken op."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import check_artifact, convert, get_converter, read_sidecar
from converters.compare import int8_verdict, sqnr_db
from converters.int8_layers import activation_quantizes, without_activation_quantization
from converters.pipeline import build_source, calibrate_and_quantize, quantized_reference, sidecar_path

MODEL, RES = "mobilevit_tiny", 96
IMAGES = 120  # rule (b) needs >= 100 images


# ------------------------------------------------------------------------------------------------
# the rule itself
# ------------------------------------------------------------------------------------------------


def test_rule_a_passes_at_30_db_whatever_the_margin():
    v = int8_verdict(31.0, 45.0, 0.5, images=8)
    assert v["rule"] == "sqnr" and v["passed"] and v["margin_db"] == pytest.approx(-14.0)


def test_rule_b_passes_a_faithful_artifact_of_a_trained_model():
    v = int8_verdict(28.1, 19.9, 0.975, images=359)  # the digits QAT model on ExecuTorch
    assert v["rule"] == "margin" and v["passed"] and v["margin_db"] == pytest.approx(8.2)


@pytest.mark.parametrize("sqnr, qf, agreement, why", [(18.0, 19.9, 0.99, "margin -1.9 dB < 0"),
                                                      (28.0, 19.9, 0.94, "top-1 agreement 94.0% < 95%")])
def test_rule_b_fails_below_the_quantisation_noise_or_on_disagreement(sqnr, qf, agreement, why):
    v = int8_verdict(sqnr, qf, agreement, images=359)
    assert v["rule"] == "margin" and not v["passed"] and why in v["why"]


def test_fewer_than_100_images_decide_by_rule_a_alone_and_say_so():
    v = int8_verdict(28.0, 19.9, 1.0, images=99)
    assert v["rule"] == "sqnr" and not v["passed"] and "only 99 images" in v["why"]


def test_removing_activation_quantization_keeps_the_quantised_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    data = torch.rand(8, 3, 12, 12)
    conv = get_converter("executorch")
    q = calibrate_and_quantize(net, conv.quantizer("int8"), data)
    twin = without_activation_quantization(q)
    assert activation_quantizes(q) and not activation_quantizes(twin)
    # float activations on the int8 weights: exactly the float net with its weights rounded to int8 steps
    rounded = torch.nn.Sequential(*[m for m in net]).eval()
    for m in rounded:
        if isinstance(m, torch.nn.Conv2d):
            s = m.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127.5
            m.weight.data = torch.clamp(torch.round(m.weight / s), -127, 127) * s
    with torch.no_grad():
        x = data[:2]
        assert sqnr_db(net(x).numpy(), twin(x).numpy()) > sqnr_db(net(x).numpy(), q(x).numpy())
        assert sqnr_db(twin(x).numpy(), q(x).numpy()) < 60  # activations are no longer rounded
        assert torch.allclose(twin(x), rounded(x), atol=2e-2)


# ------------------------------------------------------------------------------------------------
# faithful and broken artifacts of a trained model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(digits_weights, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("int8_rule")
    return {to: Path(convert(MODEL, to=to, precision="int8", resolution=RES, weights=digits_weights, out=out,
                             num_classes=10, calibration="digits", calibration_count=32, check=False,
                             show_progress=False)["artifact"]) for to in ("executorch", "tflite", "coreml")}


def _copy_sidecar(good: Path, bad: Path) -> None:
    shutil.copy(sidecar_path(good), sidecar_path(bad))


def _break_tflite(good: Path, bad: Path) -> str:
    """Double the weight scales of the last CONV_2D in the flatbuffer; returns "CONV_2D"."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(good))
    sg = model.subgraphs[0]
    code = fbu.get_builtin_code_from_operator_code
    convs = [op for op in sg.operators if code(model.operatorCodes[op.opcodeIndex]) == fb.BuiltinOperator.CONV_2D]
    w = sg.tensors[convs[-1].inputs[1]]
    w.quantization.scale = (np.asarray(w.quantization.scale) * 2).astype(np.float32)
    fbu.write_model(model, str(bad))
    _copy_sidecar(good, bad)
    return "CONV_2D"


def _break_executorch(good: Path, bad: Path) -> str:
    """Lower the quantised graph with the last conv's per-channel weight scales doubled (a converter that
    mangled one constant); returns the conv's node name."""
    meta = read_sidecar(good)
    q = quantized_reference(meta, build_source(meta["source"]))
    deq = [n for n in q.graph.nodes if str(n.target).startswith("quantized_decomposed.dequantize_per_channel")
           and any("conv" in str(u.target) for u in n.users)]
    scales = deq[-1].args[1]
    setattr(q, scales.target, getattr(q, scales.target) * 2)
    conv = get_converter("executorch")
    x = torch.zeros(meta["input"]["shape"])
    conv.lower(torch.export.export(q, (x,)), "int8", bad, quantized=True, module=q)
    _copy_sidecar(good, bad)
    return next(iter(deq[-1].users)).name


def _break_coreml(good: Path, bad: Path) -> str:
    """Double the fp16 weight scales of the last conv in the ML program; returns the conv op's name."""
    import coremltools as ct

    shutil.copytree(good, bad)
    spec = ct.utils.load_spec(str(good))
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    conv = [op for op in ops if op.type == "conv"][-1]
    weight = conv.inputs["weight"].arguments[0].name
    producer = next(op for op in ops if any(o.name == weight for o in op.outputs))
    assert producer.type == "constexpr_affine_dequantize", producer.type
    value = producer.attributes["scale"]
    if value.WhichOneof("value") == "blobFileValue":  # larger constants live in weights/weight.bin
        from coremltools.libmilstoragepython import _BlobStorageReader

        reader = _BlobStorageReader(str(good / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"))
        scales = np.frombuffer(np.asarray(reader.read_fp16_data(value.blobFileValue.offset)).tobytes(), np.float16)
    else:
        scales = np.frombuffer(value.immediateValue.tensor.bytes.values, dtype=np.float16)
    # written back inline (the oneof drops the blob reference)
    value.immediateValue.tensor.bytes.values = (scales * 2).astype(np.float16).tobytes()
    (bad / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec.SerializeToString())
    _copy_sidecar(good, bad)
    return conv.outputs[0].name


BREAK = {"tflite": _break_tflite, "executorch": _break_executorch, "coreml": _break_coreml}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["executorch", "tflite", "coreml"])
def test_faithful_int8_artifact_of_a_trained_model_passes(to, artifacts):
    c = check_artifact(artifacts[to], data="digits", limit=IMAGES, show_progress=False)
    assert c["passed"], c["rule_note"]
    assert c["images"] == IMAGES and c["sqnr_quantised_vs_float_db"] is not None
    if c["rule"] == "margin":
        assert c["margin_db"] >= 0 and c["top1_agreement"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("to", ["executorch", "tflite", "coreml"])
def test_broken_int8_artifact_fails_under_both_rules_and_layers_names_it(to, artifacts, tmp_path):
    good = artifacts[to]
    bad = tmp_path / f"broken{get_converter(to).suffix}"
    broken_op = BREAK[to](good, bad)

    c = check_artifact(bad, data="digits", limit=IMAGES, show_progress=False)
    assert not c["passed"]
    # below 30 dB, so rule (b) was evaluated too, and failed
    assert c["rule"] == "margin" and c["sqnr_db"] < 30 and c["margin_db"] < 0, c["rule_note"]

    layered = check_artifact(bad, data="digits", limit=IMAGES, show_progress=False, layers=True)
    assert not layered["passed"]
    if to == "executorch":
        # XNNPACK runs the delegate as one call: the per-op check reads a twin lowered from the quantised
        # graph, and the twin not reproducing the artifact's output is what gives the broken artifact away
        assert layered["layers_runtime_identical"] is False
        assert "not the lowering of its recorded quantised graph" in layered["rule_note"]
        # ... and the delegate constants that a fresh lowering of that graph lacks name the conv
        differs = layered["layers_artifact_differs"]
        assert differs and {d["xnode"] for d in differs} == {"Conv2d"}, differs
        assert all("convolution" in d["op"] and d["op"] in layered["rule_note"] for d in differs), differs
        return
    worst = max(layered["layers"], key=lambda r: r["local_max_lsb"])
    assert worst["local_max_lsb"] > 10 and "+".join(worst["segment"]) in layered["rule_note"].split("worst first")[1]
    if to == "tflite":  # the last conv is the first op off, by many int8 steps; everything before it is within one
        first = layered["first_divergence"]
        convs = [r for r in layered["layers"] if r["type"] == broken_op]
        assert first == convs[-1] == worst, first
        assert "FAILED per-op" in layered["rule_note"]
    else:  # Core ML: named as the worst op (its fp16 LayerNorms are a few steps off, so no per-op verdict)
        assert worst["segment"] == [broken_op.removesuffix("_cast_fp16")], (broken_op, worst)


@pytest.mark.slow
def test_default_photos_too_few_for_rule_b_check_again_on_128_crops(artifacts, tmp_path):
    bad = tmp_path / "broken.tflite"
    BREAK["tflite"](artifacts["tflite"], bad)
    c = check_artifact(bad, show_progress=False)  # default data: 8 photos, below 30 dB -> photos and crops
    assert c["images"] == 128 and c["escalated_from"]["images"] == 8 and c["data_spec"] == "photos"
    assert c["rule"] == "margin" and not c["passed"] and c["margin_db"] < 0, c["rule_note"]
    assert "checked again on 128 photos and crops" in c["note"] and read_sidecar(bad)["check"]["images"] == 128
    # an op off by many steps is already decided on the first image: no second pass
    layered = check_artifact(bad, show_progress=False, layers=True)
    assert layered["images"] == 8 and "escalated_from" not in layered and "FAILED per-op" in layered["rule_note"]
    # a limit is the user's choice of data: kept
    assert check_artifact(bad, show_progress=False, limit=4)["images"] == 4


def test_photo_crops_are_fixed_distinct_and_start_with_the_photos():
    from mobilevits.base import Preprocess
    from mobilevits.data import load_data, photos

    pp = Preprocess(resolution=32)
    crops = load_data("photo-crops", pp)
    assert len(crops) == 128 and torch.equal(crops.images[:8], photos(pp).images)
    assert torch.equal(load_data("photo-crops", pp, limit=20).images, crops.images[:20])
    flat = crops.images.reshape(128, -1)
    assert torch.cdist(flat, flat).add(torch.eye(128) * 1e9).min() > 0.1  # no two alike


def test_check_text_shows_the_rule_columns():
    from mobilevits.workflows.cli import _describe_check

    c = {"passed": True, "runtime": "tflite", "precision": "int8", "sqnr_db": 27.6, "reference": "quantised graph",
         "sqnr_quantised_vs_float_db": 19.7, "margin_db": 7.9, "top1_agreement": 0.989, "images": 359,
         "rule": "margin", "rule_note": "SQNR 27.6 dB < 30 dB but margin +7.9 dB >= 0", "max_abs_error": 0.1,
         "cosine": 0.99, "top5_agreement": 0.9, "sqnr_vs_float_db": 19.0, "note": "359 images", "threshold_db": 30}
    first = _describe_check(c).splitlines()[0]
    assert first.startswith("PASS [tflite int8] rule margin: SQNR 27.6 dB")
    assert "quantised vs float 19.7 dB, margin +7.9 dB, top-1 agreement 98.9% on 359 images" in first
