"""Deploy formulations in mobilevits.layers compute what the textbook ops compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilevits.layers import HardSigmoid, LayerNorm, set_layernorm_mean


@pytest.mark.parametrize("shape", [(2, 7, 96), (3, 5, 4, 144), (1, 240)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mean_op", ["mean", "linear"])
def test_layernorm_eval_matches_f_layer_norm(shape, affine, mean_op):
    torch.manual_seed(0)
    c = shape[-1]
    norm = set_layernorm_mean(LayerNorm(c, eps=1e-6, elementwise_affine=affine).eval(), mean_op)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    x = torch.randn(shape) * 3 + 2  # a non-zero mean, so a missing centring would show
    want = F.layer_norm(x, (c,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), want, atol=2e-5, rtol=1e-5)


def test_layernorm_keeps_nn_layernorm_state_dict_and_rejects_multi_dim():
    assert set(LayerNorm(8).state_dict()) == set(torch.nn.LayerNorm(8).state_dict())
    with pytest.raises(ValueError, match="last dimension only"):
        LayerNorm((4, 8))
    with pytest.raises(ValueError, match="unknown LayerNorm mean_op 'sum'"):
        set_layernorm_mean(LayerNorm(8), "sum")


@pytest.mark.parametrize("mean_op", ["mean", "linear"])
def test_layernorm_exports_the_chosen_formulation_without_layer_norm(mean_op):
    # XNNPACK rejects layer_norm; "linear" must also avoid mean, which ExecuTorch wraps in layout copies
    norm = set_layernorm_mean(LayerNorm(16).eval(), mean_op)
    ep = torch.export.export(norm, (torch.randn(2, 5, 16),)).run_decompositions({})
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("layer_norm" in t for t in targets), targets
    assert any("mean" in t for t in targets) == (mean_op == "mean"), targets


def test_executorch_converter_picks_the_linear_means():
    from converters import get_converter

    model = torch.nn.Sequential(LayerNorm(8), torch.nn.Linear(8, 8), LayerNorm(8))
    get_converter("executorch").prepare_model(model)
    assert [m.mean_op for m in model if isinstance(m, LayerNorm)] == ["linear", "linear"]
    assert get_converter("tflite").prepare_model(LayerNorm(8)).mean_op == "mean"


def test_hardsigmoid_matches_torch():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(HardSigmoid()(x), F.hardsigmoid(x))


@pytest.mark.parametrize("count", [1, 2])
def test_prefix_tokens_equal_a_plain_concatenation(count):
    from mobilevits.layers import PrefixTokens

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    tokens = [torch.randn(1, 1, 8, requires_grad=True) for _ in range(count)]
    pos = torch.randn(1, count + 5, 8)
    out = PrefixTokens()(x, tokens, pos)
    plain = torch.cat([*(t.expand(3, 1, 8) for t in tokens), x], dim=1)
    assert out.shape == (3, count + 5, 8)
    assert torch.equal(out, plain + pos)
    assert torch.equal(PrefixTokens()(x, tokens), plain)
    out.sum().backward()  # every batch row's token is the parameter: its gradient is the batch size
    assert all(torch.equal(t.grad, torch.full((1, 1, 8), 3.0)) for t in tokens)
