"""`check --layers` for int8 TFLite and ExecuTorch: the artifact's tensors against the quantised PyTorch graph,
op by op, each op also recomputed from the artifact's own int8 inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("executorch")

from converters import executorch_backend  # noqa: E402
from converters.pipeline import calibrate_and_quantize  # noqa: E402
from converters.tflite_backend import TFLiteConverter, compare_layers  # noqa: E402


class _ResizeNet(nn.Module):
    """conv -> bilinear resize to a size that is not a multiple of the input -> conv, as in MobileViT's unfold."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(torch.relu(self.a(x)), size=(11, 11), mode="bilinear", align_corners=False)
        return self.c(torch.relu(self.b(y)))


def _int8(quantizer, path: Path, converter=None, seed: int = 0) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    converter = converter or TFLiteConverter()
    torch.manual_seed(seed)
    net = _ResizeNet().eval()
    data = torch.rand(8, 3, 9, 9) * 2 - 1
    q = calibrate_and_quantize(net, quantizer, data, fold_quantize=converter.fold_quantize)
    program = torch.export.export(q, (data[:1],))
    converter.lower(program, "int8", path, quantized=True, quantizer=quantizer, module=q)
    return q, data[:1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfl") / "resize_int8.tflite"
    q, x = _int8(TFLiteConverter().quantizer("int8"), path)
    return path, q, x


def test_every_int8_activation_matches_within_one_step(artifact):
    path, q, x = artifact
    rep = compare_layers(path, q, x)
    assert rep["runtime_identical"]
    assert rep["unmatched"] == [] and rep["compared"] == rep["total"] >= 4
    types = [r["type"] for r in rep["layers"]]
    assert "RESIZE_BILINEAR" in types and types.count("CONV_2D") == 3
    assert rep["first_divergence"] is None, rep["first_divergence"]
    assert all(r["local_max_lsb"] <= 1 for r in rep["layers"])
    assert rep["layers"][0]["sqnr_db"] == float("inf")  # the input quantize is exact


def test_a_tampered_bias_is_named_as_the_first_divergence(artifact, tmp_path):
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    path, q, x = artifact
    model = fbu.read_model(str(path))
    sg = model.subgraphs[0]
    code = fbu.get_builtin_code_from_operator_code
    convs = [op for op in sg.operators if code(model.operatorCodes[op.opcodeIndex]) == fb.BuiltinOperator.CONV_2D]
    bias = sg.tensors[convs[1].inputs[2]]  # the 1x1 conv after the resize
    values = np.frombuffer(bytes(model.buffers[bias.buffer].data), dtype=np.int32).copy()
    values[0] += 50_000  # channel 0 shifted by many int8 steps
    model.buffers[bias.buffer].data = np.frombuffer(values.tobytes(), dtype=np.uint8)
    bad = tmp_path / "tampered.tflite"
    fbu.write_model(model, str(bad))

    rep = compare_layers(bad, q, x)
    first = rep["first_divergence"]
    assert first is not None and first["type"] == "CONV_2D" and first["segment"] == ["conv2d_1", "relu_1"], first
    assert first["local_max_lsb"] > 1 and first["status"] == "diverged"
    earlier = rep["layers"][:first["index"]]
    assert earlier and all(r["status"] == "ok" for r in earlier)

    from mobilevits.workflows.cli import _describe_layers

    text = _describe_layers({**rep, "layers_tolerance_lsb": 1, "threshold_db": 30.0})
    assert text.startswith("first divergence: conv2d_1+relu_1 (CONV_2D")
    marked = [line.split() for line in text.splitlines() if line.endswith("<--")]
    assert len(marked) == 1 and marked[0][1:3] == ["CONV_2D", "conv2d_1+relu_1"]


def test_resize_shares_its_input_quantisation_as_litert_runs_it(tmp_path):
    """litert-torch's own quantizer leaves the resize unannotated; litert-torch then gives the int8 resize
    (and the conv before it) the scale observed after the resize, so the conv saturates where the quantised
    PyTorch graph does not. The layer check finds it; our quantizer avoids it (first test)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    plain = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    q, x = _int8(plain, tmp_path / "plain.tflite")
    rep = compare_layers(tmp_path / "plain.tflite", q, x)
    first = rep["first_divergence"]
    assert first is not None and first["segment"] == ["upsample_bilinear2d"] and first["local_max_lsb"] > 1, first
    assert rep["unmatched"]  # the conv's own quantize has no counterpart in the artifact


def test_executorch_activations_tapped_through_the_delegate_match_within_one_step(tmp_path):
    conv = executorch_backend.ExecuTorchConverter()
    q, x = _int8(conv.quantizer("int8"), tmp_path / "net.pte", conv)
    rep = executorch_backend.compare_layers(tmp_path / "net.pte", q, x)
    assert rep["runtime_identical"]  # the tapped twin computes what the artifact computes
    assert rep["unmatched"] == [] and rep["compared"] >= 4
    assert [r["segment"] for r in rep["layers"]][1:] == [["conv2d", "relu"], ["upsample_bilinear2d"],
                                                         ["conv2d_1", "relu_1"], ["conv2d_2"]]
    assert rep["first_divergence"] is None, rep["first_divergence"]
    assert rep["layers"][0]["sqnr_db"] == float("inf")

    # an artifact that is not this graph's lowering (other weights) is flagged, not silently inspected
    _int8(conv.quantizer("int8"), tmp_path / "other.pte", conv, seed=1)
    other = executorch_backend.compare_layers(tmp_path / "other.pte", q, x)
    assert not other["runtime_identical"]
    # and the delegate constants a lowering of this graph lacks name every conv (all three have other weights)
    named = sorted(d["op"] for d in other["artifact_differs"])
    assert named == [f"aten_convolution_default{s}" for s in ("", "_1", "_2")], other["artifact_differs"]
