"""SepViT-specific guarantees: window bookkeeping, the official data flow at 224, padding, checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import mobilevits
from mobilevits.models import sepvit
from mobilevits.models.sepvit import SepViTBlock, window_partition, window_unpartition


def _model(resolution: int = 224, num_classes: int = 10, name: str = "sepvit_lite") -> sepvit.SepViT:
    torch.manual_seed(0)
    model = mobilevits.create_model(name, num_classes=num_classes, resolution=resolution).eval()
    return mobilevits.rerandomize_(model, seed=1)  # non-zero window tokens, biases and norms


def _ln(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def test_window_partition_matches_rank6_reference_and_round_trips():
    B, H, W, C, ws = 2, 14, 21, 5, 7
    x = torch.randn(B, H, W, C)
    ref = x.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, ws * ws, C)
    win = window_partition(x, ws)
    assert torch.equal(win, ref)
    assert torch.equal(window_unpartition(win, ws, H // ws, W // ws), x)
    # window 1 (row 0, column 1) holds pixel (0, 7) first
    assert torch.equal(win[:, 1, 0], x[:, 0, 7])


def test_window_counts_at_224_match_the_paper():
    model = _model()
    counts = [[blk.num_windows for blk in stage.blocks] for stage in model.stages]
    assert counts == [[64], [16, 4], [4, 1, 4, 1, 4, 1], [1, 1]]
    for stage, dim in zip(model.stages, (32, 64, 128, 256)):
        for blk in stage.blocks:
            assert blk.attn.pad == 0 and blk.attn.key_bias is None and blk.attn.valid is None
            if blk.num_windows > 1:
                assert blk.win_tokens.shape == (1, blk.num_windows, 1, dim)
            else:  # a single window is plain attention: no window token, no PSA
                assert blk.win_tokens is None and not hasattr(blk.attn, "psa_q")


def test_single_window_block_is_plain_mhsa():
    torch.manual_seed(0)
    dim, heads, size = 32, 4, 7
    blk = mobilevits.rerandomize_(SepViTBlock(dim, heads, size, 7, windowed=False).eval())
    x = torch.randn(2, size, size, dim)
    with torch.no_grad():
        y = blk(x)
        # hand-built: LN -> MHSA (torch's SDPA) -> + normalised input -> proj -> residual; then MLP
        a = blk.attn
        t = _ln(x.reshape(2, size * size, dim), blk.norm1)

        def heads_of(lin: torch.nn.Linear) -> torch.Tensor:
            return lin(t).reshape(2, -1, heads, dim // heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads_of(a.q), heads_of(a.k), heads_of(a.v))
        r = x.reshape(2, -1, dim) + a.proj(o.transpose(1, 2).reshape(2, -1, dim) + t)
        r = r + blk.mlp(_ln(r, blk.norm2))
    torch.testing.assert_close(y, r.reshape(2, size, size, dim), rtol=1e-5, atol=1e-5)


def _ref_block(blk: SepViTBlock, x: torch.Tensor, h_map: int, w_map: int) -> torch.Tensor:
    """The official block on tokens (B, N, C): rank-6 partition, expand + cat, fused qkv, 4-D matmuls."""
    a = blk.attn
    B, N, C = x.shape
    H, W = h_map, w_map
    h, hd = a.num_heads, C // a.num_heads
    if blk.win_tokens is None:
        t = x.unsqueeze(1)
    else:
        ws = a.ws
        t = x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(2, 3).reshape(B, -1, ws * ws, C)
        t = torch.cat((blk.win_tokens.expand(B, -1, -1, -1), t), dim=2)
    t = _ln(t, blk.norm1)
    n, T = t.shape[1:3]
    w = torch.cat([a.q.weight, a.k.weight, a.v.weight])
    b = torch.cat([a.q.bias, a.k.bias, a.v.bias])
    qkv = F.linear(t, w, b).reshape(B, n, T, 3, h, hd).permute(3, 0, 1, 4, 2, 5)
    attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * a.scale).softmax(-1)
    out = (attn @ qkv[2]).transpose(2, 3).reshape(B, n, T, C) + t
    if blk.win_tokens is None:
        out = out.squeeze(1)
    else:
        wt, z = F.gelu(_ln(out[:, :, 0], a.wt_norm)), out[:, :, 1:]
        qk = F.linear(wt, torch.cat([a.psa_q.weight, a.psa_k.weight]), torch.cat([a.psa_q.bias, a.psa_k.bias]))
        qk = qk.reshape(B, n, 2, h, hd).permute(2, 0, 3, 1, 4)
        v = z.reshape(B, n, ws * ws, h, hd).permute(0, 3, 1, 2, 4).reshape(B, h, n, -1)
        pattn = ((qk[0] @ qk[1].transpose(-2, -1)) * a.scale).softmax(-1)
        o = (pattn @ v).transpose(1, 2).reshape(B, n, h, ws * ws, hd).transpose(2, 3).reshape(B, n, ws * ws, C)
        out = (o + z).reshape(B, H // ws, W // ws, ws, ws, C).transpose(2, 3).reshape(B, N, C)
    x = x + a.proj(out)
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(_ln(x, blk.norm2))))


def _ref_model(model: sepvit.SepViT, img: torch.Tensor) -> torch.Tensor:
    """The official SepViT forward with our model's parameters."""
    B, x = img.shape[0], img
    for i, stage in enumerate(model.stages):
        x = stage.patch_embed.proj(x)
        H, W = x.shape[-2:]
        x = _ln(x.flatten(2).transpose(1, 2), stage.patch_embed.norm)  # (B, N, C)
        for j, blk in enumerate(stage.blocks):
            x = _ref_block(blk, x, H, W)
            if j == 0:
                f = x.transpose(1, 2).reshape(B, -1, H, W)
                x = (stage.pos_block.proj(f) + f).flatten(2).transpose(1, 2)
        if i < len(model.stages) - 1:
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2)
    return model.head(_ln(x, model.norm).mean(dim=1))


def test_224_model_is_the_official_network():
    """At 224 the pad/crop and mask code is inert and the deploy rewrites change nothing."""
    model = _model()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _ref_model(model, x), rtol=1e-4, atol=1e-4)


def test_256_pads_each_stage_and_crops_back():
    model = _model(256)
    sides = []
    hooks = [s.register_forward_hook(lambda m, i, o: sides.append(tuple(o.shape))) for s in model.stages]
    with torch.no_grad():
        y = model(torch.randn(2, 3, 256, 256))
    for hk in hooks:
        hk.remove()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert sides == [(2, 64, 64, 32), (2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256)]
    windows = [[(blk.num_windows, blk.attn.pad) for blk in s.blocks] for s in model.stages]
    # 64 -> 70 (10x10 windows of 7); 32 -> 35 / 42; 16 -> 21; the blocks global at 224 stay global.
    assert windows == [[(100, 6)], [(25, 3), (9, 10)], [(9, 5), (1, 0)] * 3, [(1, 0), (1, 0)]]


def test_padding_never_reaches_real_tokens(monkeypatch):
    """Masked padding: filling the padded rows/columns with anything else leaves the output unchanged."""
    torch.manual_seed(0)
    blk = mobilevits.rerandomize_(SepViTBlock(16, 2, 10, 7, windowed=True).eval())  # 10 -> 14: 2x2 windows
    x = torch.randn(2, 10, 10, 16)
    with torch.no_grad():
        y = blk(x)
        pad = F.pad

        def noisy_pad(t, p, mode="constant", value=None):  # only the map padding (B, H, W, C) gets noise
            return pad(t, p, mode, 7.0 if len(p) == 6 and p[3] else value)

        monkeypatch.setattr(sepvit.F, "pad", noisy_pad)
        y_noisy = blk(x)
    torch.testing.assert_close(y_noisy, y, rtol=1e-5, atol=1e-5)


def test_padded_single_window_equals_unpadded_window():
    """A 7x7 window over a 3x3 map (padded, masked) computes what a 3x3 window computes."""
    torch.manual_seed(0)
    padded = mobilevits.rerandomize_(SepViTBlock(16, 2, 3, 7, windowed=True).eval())
    exact = SepViTBlock(16, 2, 3, 3, windowed=True).eval()
    exact.load_state_dict(padded.state_dict())
    assert padded.attn.pad == 4 and exact.attn.pad == 0
    x = torch.randn(2, 3, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), exact(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("resolution", [256, 96])
def test_224_weights_load_at_other_resolution_with_warning(tmp_path, resolution):
    src = _model()
    with torch.no_grad():
        src.stages[0].blocks[0].win_tokens.copy_(torch.arange(32.0).reshape(1, 1, 1, 32))  # constant grid
    path = tmp_path / "w224.pt"
    torch.save(src.state_dict(), path)
    with pytest.warns(UserWarning, match="window tokens .* resampled"):
        dst = mobilevits.create_model("sepvit_lite", num_classes=10, resolution=resolution, weights=path).eval()
    grid = 10 if resolution == 256 else 4
    tok = dst.stages[0].blocks[0].win_tokens
    assert tok.shape == (1, grid * grid, 1, 32)
    torch.testing.assert_close(tok, torch.arange(32.0).reshape(1, 1, 1, 32).expand_as(tok))  # constants stay
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    for k, v in dst_sd.items():
        if not k.endswith("win_tokens"):
            assert torch.equal(v, src_sd[k]), k
    with torch.no_grad():
        assert torch.isfinite(dst(torch.randn(1, 3, resolution, resolution))).all()


def test_same_resolution_loads_silently(tmp_path, recwarn):
    src = _model()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    mobilevits.create_model("sepvit_lite", num_classes=10, weights=path)
    assert not [w for w in recwarn if "window tokens" in str(w.message)]


def _to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> liwei109/SepViT keys (fused DSA_qkv / PSA_qk, per-stage module lists)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^stages\.(\d+)\.patch_embed\.", r"patch_embeds.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.pos_block\.proj\.", r"pos_block.\1.proj.0.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", r"blocks.\1.", k)
        out[k.replace(".attn.wt_norm.", ".attn.win_tokens_norm.")] = v
    for key in [k for k in out if ".attn.q." in k]:
        pre, kind = key.split(".attn.q.")
        out[f"{pre}.attn.DSA_qkv.{kind}"] = torch.cat([out.pop(f"{pre}.attn.{n}.{kind}") for n in "qkv"])
        if f"{pre}.attn.psa_q.{kind}" in out:
            out[f"{pre}.attn.PSA_qk.{kind}"] = torch.cat([out.pop(f"{pre}.attn.psa_{n}.{kind}") for n in "qk"])
    return out


def test_official_checkpoint_keys_load(tmp_path):
    src = _model()
    official = _to_official(src.state_dict())
    assert "blocks.2.1.attn.DSA_qkv.weight" in official and "blocks.1.0.attn.PSA_qk.bias" in official
    assert sum(v.numel() for v in official.values()) == 3_661_128 - 256 * 1000 - 1000 + 10 * 256 + 10
    path = tmp_path / "official.pt"
    torch.save(official, path)
    dst = mobilevits.create_model("sepvit_lite", num_classes=10, weights=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_wrong_input_size_is_a_clear_error():
    model = mobilevits.create_model("sepvit_tiny", resolution=96).eval()
    with pytest.raises(ValueError, match="resolution=128"):
        model(torch.randn(1, 3, 128, 128))
