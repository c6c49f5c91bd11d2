"""Mobile-Former specifics: dynamic ReLU, bridges, channel shuffle, token batching, MAC structure."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mobilevits
from mobilevits.models.mobile_former import (
    CFGS,
    DynamicReLU,
    FormerToMobile,
    GlobalTokens,
    MobileToFormer,
    channel_shuffle,
)


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def test_dynamic_relu_is_max_of_two_token0_slopes():
    # its own seed: with saturating weights some draws leave every slope clamped, so a shifted token 0
    # would not move the output (pytest-randomly's order and seed found one)
    torch.manual_seed(0)
    C, d = 6, 16
    act = _randomize(DynamicReLU(C, d), scale=2.0).double()  # large weights: the hard sigmoid saturates too
    z = torch.randn(3, 4, d, dtype=torch.float64) * 3
    x = torch.randn(3, C, 5, 5, dtype=torch.float64)
    # by hand, from token 0 only
    t = z[:, 0]
    h = F.relu6(act.fc2(torch.relu(act.fc1(t))) + 3) / 6  # (B, 2C)
    a1, a2 = 2 * h[:, :C], 2 * h[:, C:] - 1
    assert a1.min() >= 0 and a1.max() <= 2 and a2.min() >= -1 and a2.max() <= 1
    assert (a1 == 0).any() and (a1 == 2).any()  # both ends reached: the clamp is exercised
    want = torch.maximum(x * a1[:, :, None, None], x * a2[:, :, None, None])
    torch.testing.assert_close(act(x, z), want)
    got1, got2 = act.coefficients(z)
    torch.testing.assert_close(got1.flatten(1), a1)
    torch.testing.assert_close(got2.flatten(1), a2)
    # only token 0 drives it
    z2 = z.clone()
    z2[:, 1:] = torch.randn_like(z2[:, 1:])
    torch.testing.assert_close(act(x, z2), want)
    z2[:, 0] += 1.0
    assert not torch.allclose(act(x, z2), want)


def test_mobile_to_former_with_one_token_equals_hand_attention():
    C, d, B, H, W = 8, 12, 2, 3, 4
    bridge = _randomize(MobileToFormer(C, d, num_heads=2)).double().eval()
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    z = torch.randn(B, 1, d, dtype=torch.float64)
    got = bridge(x, z)
    want = torch.empty_like(z)
    for b in range(B):
        q = bridge.q.weight @ z[b, 0] + bridge.q.bias  # (C,)
        heads = []
        for hd in range(2):
            xs = x[b, hd * 4:(hd + 1) * 4].reshape(4, H * W)  # keys = values = the raw map, no projection
            a = torch.softmax((q[hd * 4:(hd + 1) * 4] @ xs) / 2.0, dim=0)  # over the HW pixels, scale 1/sqrt(4)
            heads.append(xs @ a)
        out = torch.cat(heads)
        gate = 2 * F.relu6(bridge.gate.weight @ z[b, 0] + bridge.gate.bias + 3) / 6
        t = z[b, 0] + bridge.proj.weight @ (out * gate) + bridge.proj.bias
        want[b, 0] = F.layer_norm(t, (d,), bridge.norm.weight, bridge.norm.bias, bridge.norm.eps)
    torch.testing.assert_close(got, want)


def test_former_to_mobile_one_token_is_additive_broadcast():
    # with a single token the softmax over tokens is 1: every pixel gets v(z) added, per channel
    C, d = 8, 12
    bridge = _randomize(FormerToMobile(C, d)).double()
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    z = torch.randn(2, 1, d, dtype=torch.float64)
    want = x + bridge.v(z)[:, 0, :, None, None]
    torch.testing.assert_close(bridge(x, z), want)


def test_shared_token_bridge_matches_batched_bridge_and_fuses():
    C, d, M, B = 8, 12, 3, 2
    tokens = GlobalTokens(M, d)
    shared = _randomize(MobileToFormer(C, d, shared_tokens=tokens)).eval()
    batched = MobileToFormer(C, d).eval()
    batched.load_state_dict(shared.state_dict())
    x = torch.randn(B, C, 4, 4)
    want = batched(x, tokens.weight.unsqueeze(0).repeat(B, 1, 1))
    got = shared(x, tokens.weight)  # (M, d) in, (B, M, d) out
    assert got.shape == (B, M, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    shared.fuse()
    assert shared.q_folded is not None and shared.gate_folded is not None
    torch.testing.assert_close(shared(x, tokens.weight), got, rtol=0, atol=0)


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
def test_channel_shuffle_is_a_permutation(groups):
    C = 24
    x = torch.randn(2, C, 3, 3)
    y = channel_shuffle(x, groups)
    for g in range(groups):  # channel g*(C/groups) + i moves to i*groups + g
        for i in range(C // groups):
            torch.testing.assert_close(y[:, i * groups + g], x[:, g * (C // groups) + i], rtol=0, atol=0)
    torch.testing.assert_close(channel_shuffle(y, C // groups), x, rtol=0, atol=0)  # the inverse shuffle
    assert sorted(y[0, :, 0, 0].tolist()) == sorted(x[0, :, 0, 0].tolist())


def test_parameters_do_not_depend_on_resolution():
    for name in ("mobile_former_26m", "mobile_former_294m"):
        shapes = {r: {k: v.shape for k, v in mobilevits.create_model(name, resolution=r).state_dict().items()}
                  for r in (96, 224, 512)}
        assert shapes[96] == shapes[224] == shapes[512]
    model = mobilevits.create_model("mobile_former_tiny", resolution=512, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 512, 512)).shape == (1, 5)


def _mac_shares(model: torch.nn.Module, res: int) -> tuple[float, float]:
    """(Former + bridges, head) shares of the MACs, from the torch flop counter's per-module breakdown."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, res, res))
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    total = counts["Global"]
    assert total // 2 == mobilevits.count_macs(model, res)
    token_side = sum(v for k, v in counts.items() if re.fullmatch(r".*\.(to_former|former|to_mobile)", k))
    head = sum(v for k, v in counts.items() if k.endswith(".head"))
    return token_side / total, head / total


def test_token_side_share_grows_as_resolution_drops():
    model = mobilevits.create_model("mobile_former_294m").eval()
    shares = {r: _mac_shares(model, r) for r in (96, 160, 224, 320)}
    fb = [shares[r][0] for r in (96, 160, 224, 320)]
    head = [shares[r][1] for r in (96, 160, 224, 320)]
    assert fb == sorted(fb, reverse=True) and head == sorted(head, reverse=True), shares
    assert fb[0] > 2 * fb[2]  # docs/models.md#mobile-former-resolution: 31% at 96 vs 11% at 224
    assert fb[2] < 0.2  # the paper: Former + bridges cost under 20% of the total at 224


@pytest.mark.parametrize("name", [n for n in CFGS if not n.endswith("tiny")])
def test_paper_madds_are_conv_matmul_macs_plus_batchnorm(name):
    # The README's MAdds also count BatchNorm, two ops (scale, shift) per output element as fvcore does;
    # with those counted our total matches to 1% for every variant (tighter than the registry's 2%).
    model = mobilevits.create_model(name)
    paper = mobilevits.get_model_info(name).paper
    assert paper.macs_counts_norms
    macs = mobilevits.count_macs(model, 224, count_norms=True)
    assert abs(macs / 1e6 - paper.macs_m) / paper.macs_m < 0.01, macs
    assert mobilevits.count_macs(model, 224) < macs  # the default convention leaves norms out


def test_fused_graph_is_deploy_friendly():
    # Checked on the exported ATen graph that ExecuTorch's partitioner sees (linear not yet decomposed):
    # ops the XNNPACK delegate does not take would run outside it.
    model = mobilevits.create_model("mobile_former_tiny", resolution=96).eval()
    mobilevits.rerandomize_(model)
    ep_unfused = torch.export.export(model, (torch.randn(2, 3, 96, 96),))
    mobilevits.reparameterize_model(model)
    ep = torch.export.export(model, (torch.randn(2, 3, 96, 96),))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    banned = ("expand", "full", "zeros", "select", "split", "unbind", "chunk", "squeeze", "gather", "index",
              "layer_norm", "batch_norm", "repeat", "matmul")
    assert not [t for t in targets if any(b in t for b in banned)], targets
    for n in ep.graph.nodes:  # softmax over the last dim only; means only over (2, 3) of 4-D tensors
        if n.target == torch.ops.aten.softmax.int:
            assert n.args[1] in (-1, n.args[0].meta["val"].dim() - 1)
        if n.target == torch.ops.aten.mean.dim:
            assert sorted(d % 4 for d in n.args[1]) == [2, 3] and n.args[0].meta["val"].dim() == 4
    # every conv weight is a constant after fuse(), including the first bridge's query conv ...
    consts = set(ep.graph_signature.inputs_to_parameters) | set(ep.graph_signature.inputs_to_buffers)
    convs = [n for n in ep.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert convs and all(n.args[1].op == "placeholder" and n.args[1].name in consts for n in convs)
    # ... which before fuse() is computed from the tokens
    convs = [n for n in ep_unfused.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert any(n.args[1].op != "placeholder" for n in convs)
