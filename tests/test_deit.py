"""DeiT: parameter counts by hand, the distillation head, position embeddings at another resolution, and the
softmax-free attentions (relu_attention, dw_attention) against their formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mobilevits
from mobilevits.models.deit import CFGS, DwAttention, ReluAttention

FIXTURES = Path(__file__).parent / "fixtures"


def _hand_count(c: int, depth: int, distilled: bool, attention: str = "softmax", classes: int = 1000,
                res: int = 224) -> int:
    grid = res // 16
    tokens = grid ** 2 + (2 if distilled else 1)
    projections = {"softmax": 3, "relu": 3, "dw": 2}[attention]  # q, k (, v); dw keeps no value projection
    relative = 2 * (2 * grid - 1) * c if attention == "relu" else 0  # row and column tables, (h, 2g-1, hd) each
    block = 2 * 2 * c + projections * (c * c + c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + relative
    heads = (2 if distilled else 1) * (c * classes + classes)
    return (3 * 16 * 16 * c + c) + c * (2 if distilled else 1) + tokens * c + depth * block + 2 * c + heads


@pytest.mark.parametrize("name", [n for n in CFGS if not n.startswith("deit_test")])
def test_params_equal_a_hand_count(name):
    cfg = CFGS[name]
    model = mobilevits.create_model(name)
    assert mobilevits.num_params(model) == _hand_count(cfg.embed_dim, cfg.depth, cfg.distilled, cfg.attention)


def test_softmax_free_params_at_another_resolution_follow_the_grid():
    model = mobilevits.create_model("deit_tiny_relu_attention", resolution=160)
    assert mobilevits.num_params(model) == _hand_count(192, 12, False, "relu", res=160)


def _naive_relu_attention(a: ReluAttention, x: torch.Tensor) -> torch.Tensor:
    """out_i = sum_j A_ij (v_j + ry[qy_i - jy_j] + rx[qx_i - jx_j]), one (query, key) pair at a time."""
    B, N, C = x.shape
    h, g, P, hd = a.num_heads, a.grid, a.num_prefix, a.head_dim
    q, k, v = (t.reshape(B, N, h, hd).transpose(1, 2) for t in (a.q(x), a.k(x), a.v(x)))  # (B, h, N, hd)
    scores = q @ k.transpose(-1, -2)  # no 1/sqrt(hd): the LayerNorm over keys removes the scale
    attn = torch.relu(torch.nn.functional.layer_norm(scores, (N,), eps=1e-6)) / N
    out = attn @ v
    for i in range(g * g):
        for j in range(g * g):
            rel = a.rel_y[:, i // g - j // g + g - 1] + a.rel_x[:, i % g - j % g + g - 1]  # (h, hd)
            out[:, :, P + i] += attn[:, :, P + i, P + j, None] * rel
    return a.proj(out.transpose(1, 2).reshape(B, N, C))


@torch.no_grad()
def test_relu_attention_equals_its_formula_fused_and_not():
    torch.manual_seed(0)
    a = ReluAttention(32, 2, grid=4, num_prefix=2).eval()
    torch.nn.init.normal_(a.rel_y)
    torch.nn.init.normal_(a.rel_x)
    x = torch.randn(3, 2 + 16, 32)
    ref = _naive_relu_attention(a, x)
    torch.testing.assert_close(a(x), ref, rtol=1e-5, atol=1e-5)
    a.fuse()
    torch.testing.assert_close(a(x), ref, rtol=1e-5, atol=1e-5)
    # the relative term matters: without it the output changes
    a.table_y.zero_()
    a.table_x.zero_()
    assert (a(x) - ref).abs().max() > 1e-2


@torch.no_grad()
def test_dw_attention_multiplies_each_query_by_its_averaged_key_kernel():
    torch.manual_seed(0)
    a = DwAttention(32, 2, tokens=17).eval()
    x = torch.randn(2, 17, 32)
    B, N, C = x.shape
    q, k = (t.reshape(B, N, 2, 16).transpose(1, 2) for t in (a.q(x), a.k(x)))  # (B, h, N, hd)
    attn = torch.relu(torch.nn.functional.layer_norm(q @ k.transpose(-1, -2), (N,), eps=1e-6)) / N
    ref = a.proj((q * (attn @ k)).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(a(x), ref, rtol=1e-5, atol=1e-5)
    assert not hasattr(a, "v")


def test_relu_attention_weights_from_another_resolution_get_resampled_tables(tmp_path):
    torch.manual_seed(0)
    small = mobilevits.create_model("deit_test_relu_attention", num_classes=10, resolution=96)  # 6x6 grid
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match=r"made at resolution 96, the model is at 160"):
        big = mobilevits.create_model("deit_test_relu_attention", num_classes=10, resolution=160, weights=path)
    table, resized = small.blocks[0].attn.rel_y, big.blocks[0].attn.rel_y
    assert resized.shape == (2, 19, 16) and table.shape == (2, 11, 16)
    torch.testing.assert_close(resized[:, 9], table[:, 5])  # offset 0 stays offset 0
    torch.testing.assert_close(resized[:, [0, -1]], table[:, [0, -1]])  # the ends stay the ends


def test_distilled_heads_average_in_eval_and_pair_in_distilled_training():
    torch.manual_seed(0)
    model = mobilevits.create_model("deit_test", num_classes=5, resolution=96).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        both = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(model(x), both)
    model.train()
    model.distilled_training = True
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2


def test_weights_from_another_resolution_get_a_resized_position_embedding(tmp_path):
    fx = load_file(str(FIXTURES / "timm_deit_test_distilled.safetensors"))  # made at 112 px: a 7x7 grid
    path = tmp_path / "w.safetensors"
    save_file({k[len("weights."):]: v for k, v in fx.items() if k.startswith("weights.")}, str(path))
    with pytest.warns(UserWarning, match=r"made at resolution 112, the model is at 160: .*7x7 -> 10x10"):
        model = mobilevits.create_model("deit_test", num_classes=10, resolution=160, weights=path).eval()
    assert model.pos_embed.shape == (1, 2 + 100, 32)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 160, 160))).all()



@pytest.mark.parametrize("backend", ["executorch", "tflite"])
def test_token_assembly_stays_float_under_int8(backend):
    """Trained patch embeddings reach tens while the class token stays at hundredths: one per-tensor int8 scale
    for the assembled tokens rounds the class token to zero, and the first LayerNorm divides rounding noise by a
    near-zero spread (QAT of a digits-trained dw_attention DeiT-Ti overflowed there at its first step; BENCHMARKS.md).
    Both int8 quantizers leave ``PrefixTokens``' ops unannotated and still quantise the patch embedding."""
    from converters import get_converter, quiet

    conv = get_converter(backend)
    net = conv.prepare_model(mobilevits.create_model("deit_test", resolution=96).eval(), "int8")
    with quiet():
        gm = torch.export.export(net, (torch.rand(1, 3, 96, 96),)).module()
    conv.quantizer("int8").annotate(gm)

    def where(node) -> str:
        return " ".join(str(v) for v in (node.meta.get("nn_module_stack") or {}).values())

    def quantised(node) -> bool:
        a = node.meta.get("quantization_annotation")
        return a is not None and (a.output_qspec is not None or bool(a.input_qspec_map))

    annotated = {n.name: where(n) for n in gm.graph.nodes if quantised(n)}
    assembly = [n.name for n in gm.graph.nodes if "PrefixTokens" in where(n) and n.op == "call_function"]
    assert len(assembly) >= 6  # pads of the two tokens, their sum, position add, slice, mul by zero, cat, add
    assert not [n for n in assembly if n in annotated]
    assert any("Conv2d" in w for w in annotated.values())  # the quantizer did run: the patch embedding is int8
