"""Deploy formulations (issue #19): each form of a kind computes the same function, and the int8 forms keep
activations in int8 on the backends that lack an int8 hardswish or maximum."""

from pathlib import Path

import pytest
import torch

import mobilevits
from converters import get_converter
from mobilevits.layers import HardSwish, SiLU, deploy_forms, parse_deploy_forms, set_deploy_forms
from mobilevits.models.mobile_former import DynamicReLU


def test_hardswish_forms_agree():
    x = torch.cat([torch.linspace(-8, 8, 4001), torch.randn(10000) * 4])  # both kinks, both flat ends
    a, b = HardSwish(), HardSwish()
    b.form = "int8"
    torch.testing.assert_close(b(x), a(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a(x), torch.nn.functional.hardswish(x), rtol=0, atol=0)


def test_silu_forms_agree():
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.randn(10000) * 4])
    a, b = SiLU(), SiLU()
    b.form = "sigmoid"
    torch.testing.assert_close(b(x), a(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a(x), torch.nn.functional.silu(x), rtol=0, atol=0)


def test_dynamic_relu_forms_agree():
    torch.manual_seed(0)
    m = DynamicReLU(chs=24, token_dim=16).eval()
    x, z = torch.randn(3, 24, 7, 7) * 3, torch.randn(3, 2, 16)
    plain = m(x, z)
    m.form = "relu"
    torch.testing.assert_close(m(x, z), plain, rtol=1e-6, atol=1e-6)
    a1, a2 = m.coefficients(z)
    torch.testing.assert_close(plain, torch.maximum(x * a1, x * a2))


def _trained(name: str, res: int, tmp_path) -> torch.nn.Module:
    from mobilevits.workflows.training import train

    r = train(name, resolution=res, epochs=2, train_limit=600, out=tmp_path, show_progress=False, log=lambda s: None)
    return mobilevits.create_model(name, num_classes=10, resolution=res, weights=r["weights"]).eval()


@pytest.mark.parametrize("name,res", [("mobile_former_tiny", 96), ("levit_tiny", 128), ("efficientnet_tiny", 96)])
def test_int8_forms_compute_the_same_model(name, res, tmp_path):
    # a model trained on digits (realistic activations) and a re-randomised one
    models = [_trained(name, res, tmp_path), mobilevits.create_model(name, num_classes=10, resolution=res).eval()]
    x = torch.rand(4, 3, res, res)
    for model in models:
        with torch.no_grad():
            plain, own = model(x), deploy_forms(model)
            set_deploy_forms(model, hardswish="int8", dyrelu="relu", silu="sigmoid")  # kinds it lacks: ignored
            assert set(deploy_forms(model).values()) <= {"int8", "relu", "mean", "sigmoid"}
            assert deploy_forms(model) != own  # a form did change
            # equal to float rounding: within 1e-6 of the logits' scale
            assert (model(x) - plain).abs().max() <= 1e-6 * plain.abs().max(), (model(x) - plain).abs().max()


def test_backends_choose_forms_by_precision():
    # measured choices: on a phone's core (benchmarks/arm_instructions.py) every backend counts fewer instructions
    # with one kernel per hardswish, int8 too (the hardswish rewrite is an opt-in form: x86 LiteRT ran it faster);
    # TFLite int8 writes SiLU as x * sigmoid(x), which litert-torch quantises, and dynamic ReLU with a relu (LiteRT's
    # int8 MAXIMUM runs outside XNNPACK); everything else keeps the maximum
    for name in ("mobile_former_tiny", "efficientnet_tiny"):
        for backend, precision in (("tflite", "int8"), ("tflite", "fp32"), ("executorch", "int8"),
                                   ("executorch", "fp32"), ("coreml", "fp16")):
            m = mobilevits.create_model(name)
            if backend != "coreml":  # these set every kind whatever was there; Core ML converts the forms as built
                set_deploy_forms(m, hardswish="int8", dyrelu="relu", silu="sigmoid")
            forms = deploy_forms(get_converter(backend).prepare_model(m, precision))
            litert_int8 = (backend, precision) == ("tflite", "int8")
            expect = {"hardswish": "native", "dyrelu": "relu" if litert_int8 else "max",
                      "silu": "sigmoid" if litert_int8 else "native"}
            assert {k: v for k, v in forms.items() if k in expect} == {k: expect[k] for k in forms if k in expect}
            assert forms.keys() & expect.keys(), (name, forms)  # the model has some of these kinds


def test_form_overrides_are_checked():
    assert parse_deploy_forms(["hardswish=native", "dyrelu=max"]) == {"hardswish": "native", "dyrelu": "max"}
    with pytest.raises(ValueError, match="unknown formulation kind 'swish'; kinds: dyrelu"):
        parse_deploy_forms(["swish=int8"])
    with pytest.raises(ValueError, match="unknown hardswish form 'fast'; choose one of native, int8"):
        parse_deploy_forms({"hardswish": "fast"})


def _linear_inputs(gm: torch.fx.GraphModule) -> list[str]:
    """For each linear of a quantised graph: what feeds its weight (a dequantize when int8)."""
    return [str(n.args[1].target) if n.args[1].op == "call_function" else n.args[1].op
            for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]


@pytest.mark.parametrize("backend", ["executorch", "tflite"])
def test_keep_float_leaves_named_modules_unquantised(backend):
    from converters import calibrate_and_quantize, keep_float_modules
    from mobilevits.base import Normalize

    conv = get_converter(backend)
    net = mobilevits.create_model("levit_tiny", num_classes=10, resolution=128).eval()
    model = conv.prepare_model(Normalize(net, net.preprocess.mean, net.preprocess.std), "int8")
    x = torch.rand(2, 3, 128, 128)
    full = _linear_inputs(calibrate_and_quantize(model, conv.quantizer("int8"), x, conv.fold_quantize))
    q = conv.quantizer("int8")
    assert keep_float_modules(q, model, ["head*", "Attention"]) == [
        "head", "head_dist", "stages.0.blocks.0.attn", "stages.1.blocks.0.attn", "stages.2.blocks.0.attn"]
    mixed = _linear_inputs(calibrate_and_quantize(model, q, x, conv.fold_quantize))
    assert len(mixed) == len(full) == 32
    assert all("dequantize" in w for w in full)  # every linear's weight was int8
    # now the 4 q/k/v/proj linears of each of the 3 stage attentions and the two heads are float
    assert sum("dequantize" not in w for w in mixed) == 14
    assert all("dequantize" not in w for w in mixed[-2:])
    with pytest.raises(ValueError, match="--keep-float 'blocks.9' matches no module of levit_tiny"):
        keep_float_modules(conv.quantizer("int8"), model, ["blocks.9"])


class _Scores(torch.nn.Module):
    """Attention scores plus a constant bias between bmm and softmax (LeViT's pattern); a gate that mixes an int8
    linear with a float sigmoid; a hard sigmoid, relu6(x + 3) * 1/6, which XNNPACK runs in int8:
    (B, 16, 8) -> (B, 16, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (torch.nn.Linear(8, 8) for _ in range(4))
        self.register_buffer("bias", torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.bmm(self.q(x), self.k(x).transpose(1, 2)) + self.bias  # (B, 16, 16)
        y = self.out(torch.bmm(a.softmax(dim=-1), self.v(x)))
        return self.v(x) * torch.sigmoid(y) + torch.nn.functional.relu6(self.k(x) + 3) * (1 / 6)


def _quantized_inputs(gm: torch.fx.GraphModule, name: str) -> list[bool]:
    """For each input of the node ``name`` of a converted graph: does it come from a dequantize?"""
    node = next(n for n in gm.graph.nodes if n.name == name)
    return ["dequantize" in str(getattr(a, "target", "")) for a in node.all_input_nodes]


def test_executorch_keeps_an_add_between_float_ops_in_the_float_island(monkeypatch):
    from converters import calibrate_and_quantize, executorch_backend
    from converters.compare import sqnr_db

    torch.manual_seed(0)
    model, x = _Scores().eval(), torch.randn(2, 16, 8)
    conv = get_converter("executorch")
    q = conv.quantizer("int8")
    gm = calibrate_and_quantize(model, q, x, conv.fold_quantize)
    # bmm and softmax run in fp32 in XNNPACK: the bias add between them stays float (no Convert pair around it)
    assert _quantized_inputs(gm, "add") == [False, False] and q.merged_float_ops == ["add"]
    # the gate takes an int8 linear and a float sigmoid: mixed, so it stays int8 as before
    assert _quantized_inputs(gm, "mul") == [True, True]
    # relu6(x + 3) * 1/6 runs in int8: its multiply stays int8
    assert _quantized_inputs(gm, "mul_1") == [True, True]
    assert sqnr_db(model(x).detach().numpy(), gm(x).detach().numpy()) > 25
    # the per-op boundaries of before (what this test tells apart): the add quantised on both sides
    monkeypatch.setattr(executorch_backend.ExecuTorchConverter, "merge_islands", False)
    before = calibrate_and_quantize(model, conv.quantizer("int8"), x, conv.fold_quantize)
    assert _quantized_inputs(before, "add") == [True, True]


def test_int8_hard_sigmoid_gates_keep_their_int8_boundaries():
    # MobileNetV3's squeeze-excitation gate relu6(x + 3) * 1/6: the quantizer leaves relu6 unannotated, yet
    # XNNPACK runs it in int8 between a dequantise and a quantise, so it is not a float op and its multiply
    # (and the gate's product with the hardswish output) keep their int8 boundaries
    conv = get_converter("executorch")
    model = conv.prepare_model(mobilevits.create_model("mobilenetv3_tiny").eval(), "int8")
    r = mobilevits.get_model_info("mobilenetv3_tiny").default_resolution
    gm = torch.export.export(model, (torch.randn(1, 3, r, r),)).module()
    q = conv.quantizer("int8")
    q.annotate(gm)
    assert any(n.target == torch.ops.aten.relu6.default for n in gm.graph.nodes)  # the gates are there
    assert q.merged_float_ops == []


def test_convert_keep_float_end_to_end(tmp_path):
    from converters import UnsupportedError, convert, read_sidecar

    r = convert("levit_tiny", to="executorch", precision="int8", resolution=128, out=tmp_path,
                keep_float=["head*"], show_progress=False)
    meta = read_sidecar(r["artifact"])
    assert meta["quantization"]["keep_float"] == ["head", "head_dist"]
    assert meta["formulation"]["hardswish"] == "native"  # ExecuTorch's measured choice
    # each attention's bias add (bmm -> add -> softmax) stays inside the float island, and so does the average of
    # the two heads kept float (an add and its multiply by 1/2)
    merged = meta["quantization"]["float_between_float_ops"]
    biases = [n for n, _ in mobilevits.create_model("levit_tiny").named_buffers() if n.endswith("attention_bias_dense")]
    assert sum(n.startswith("add") for n in merged) == len(biases) + 1 and sum(n.startswith("mul") for n in merged) == 1
    assert r["check"]["passed"], r["check"]  # the check rebuilt the same mixed-precision reference
    with pytest.raises(UnsupportedError, match="--keep-float chooses what stays float in an int8 model"):
        convert("levit_tiny", to="executorch", precision="fp32", resolution=128, out=tmp_path, keep_float=["head"],
                show_progress=False)


def test_non_default_int8_forms_pass_the_int8_rule(tmp_path):
    # ExecuTorch's default keeps one-kernel forms; the rewrites stay available (--form) and must stay correct
    from converters import convert

    r = convert("mobile_former_tiny", to="executorch", precision="int8", resolution=96, num_classes=10,
                out=tmp_path, forms={"hardswish": "int8", "dyrelu": "relu"}, show_progress=False)
    assert r["check"]["passed"], r["check"]


def test_tflite_int8_elementwise_constants_keep_the_graph_in_nhwc(artifact):
    # litert-torch ran every add/mul of a 0-D constant (the hardswish rewrite's x + 3 and * 1/6) in NCHW
    # between two int8 TRANSPOSEs (12 in this model; the fp32 program has one, on the input)
    from ai_edge_litert.interpreter import Interpreter

    from converters import tflite_backend

    r = artifact("mobilenetv3_tiny", "tflite", "int8", check=True, forms={"hardswish": "int8"})
    ops = [o["op_name"] for o in Interpreter(model_path=r["artifact"])._get_ops_details()]
    assert ops.count("TRANSPOSE") <= 1 and ops.count("MUL") >= 9, ops  # the rewrite is there, in NHWC
    assert r["check"]["passed"], r["check"]
    # the pass itself: a one-element constant takes its op's rank (same values); one shared by two ops stays
    x = torch.randn(1, 2, 3, 4)
    for shared, expect in ((False, 2), (True, 0)):
        g = torch.export.export(_Scalars(shared), (x,)).module()
        before = g(x)
        changed = tflite_backend._rank_matched_scalars(g)
        assert len(changed) == expect and all(getattr(g, c).shape == (1, 1, 1, 1) for c in changed)
        torch.testing.assert_close(g(x), before, rtol=0, atol=0)


def test_tflite_int8_runs_adds_muls_and_pools_in_int8(artifact):
    # litert-torch's annotators find adds, muls, cats and pools by node.meta["source_fn_stack"], which
    # torch.export no longer records: without tflite_backend._with_source_fns an add stayed int8 only where its
    # neighbours happened to quantise (EfficientNet's residual add after a float SiLU block ran in float)
    from converters.tflite_backend import float_ops

    # (with the default native hardswish, its squeeze-excitation means count as pools: 2 HARD_SWISH and 2 MEAN
    # ran in float before they did)
    r = artifact("mobilenetv3_tiny", "tflite", "int8", check=True)
    assert float_ops(r["artifact"]) == {} and r["check"]["passed"], r["check"]
    assert r["delegation"]["float_ops"] == {}
    # the baked-in input normalisation runs in float on the NCHW input, then one QUANTIZE (in int8 LiteRT ran
    # its MUL and ADD per pixel of 3 channels); float_ops does not count that prologue
    first = [op["op_name"] for op in _ops(r["artifact"])[:3]]
    assert first == ["MUL", "ADD", "QUANTIZE"], first
    r = artifact("efficientnet_tiny", "tflite", "int8", check=True)
    assert float_ops(r["artifact"]) == {} and r["check"]["passed"], r["check"]  # its SiLUs as x * sigmoid(x)
    # written as one SiLU, litert-torch quantises none (a LOGISTIC and a MUL in float each), nor the residual
    # add after it without _with_source_fns; the count sees what stays float, and the summary says so
    r = artifact("efficientnet_tiny", "tflite", "int8", check=True, forms={"silu": "native"})
    floats = float_ops(r["artifact"])
    assert "ADD" not in floats and floats.get("LOGISTIC", 0) > 0 and r["check"]["passed"], (floats, r["check"])
    assert "in float between int8 ops: " in get_converter("tflite").delegation(Path(r["artifact"])).summary()


def _ops(path: str) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return it._get_ops_details()


def test_tflite_leaves_the_input_normalisation_float():
    from converters.pipeline import build_source
    from converters.tflite_backend import _input_affines

    model = build_source({"name": "mobilenetv3_tiny", "num_classes": 10, "resolution": 224})
    gm = torch.export.export(model, (torch.rand(1, 3, 224, 224),)).module()
    q = get_converter("tflite").quantizer("int8")
    q.annotate(gm)
    (mul, add), = _input_affines(gm.graph)  # x * scale + shift, read from the input (export's guard call aside)
    for n in (mul, add):
        ann = n.meta["quantization_annotation"]
        assert ann.output_qspec is None and not ann.input_qspec_map, n
    # the first conv quantises what it reads: the one QUANTIZE after the normalisation
    conv = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    assert conv.args[0] is add and add in conv.meta["quantization_annotation"].input_qspec_map
    # a multiply-add inside the model is no input normalisation
    inner = torch.export.export(model.model, (torch.rand(1, 3, 224, 224),)).module()
    assert _input_affines(inner.graph) == []


class _Means(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True) + x.mean(1, keepdim=True) + x.mean(-1, keepdim=True)


def test_only_spatial_means_are_marked_as_pools():
    # a mean over channels (a LayerNorm's statistic) or over one axis is no average pool for litert-torch
    from converters.tflite_backend import _with_source_fns

    class Quantizer:
        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return gm

    gm = torch.export.export(_Means(), (torch.randn(1, 2, 3, 4),)).module()
    _with_source_fns(Quantizer()).annotate(gm)
    marked = {n.args[1][0] % 4 for n in gm.graph.nodes
              if n.target == torch.ops.aten.mean.dim and n.meta.get("source_fn_stack")}
    assert marked == {2}  # the (2, 3) mean alone


class _Scalars(torch.nn.Module):
    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.register_buffer("three", torch.tensor(3.0))
        self.register_buffer("sixth", torch.tensor(3.0 if shared else 1 / 6))
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.three) * (self.three if self.shared else self.sixth)
