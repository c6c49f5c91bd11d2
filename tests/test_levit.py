"""LeViT specifics: attention-bias tables (index, dense eval copy, resizing on load), the shrink
subsampling, and a gather-free export."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mobilevits
from mobilevits.models.levit import BiasedAttention, attention_bias_index, subsample_tokens


def _tiny(resolution: int = 224, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mobilevits.create_model("levit_tiny", num_classes=10, resolution=resolution)
    mobilevits.rerandomize_(model, seed=seed)
    return model.eval()  # eval() after rerandomize_: the dense biases are computed from the random tables


def _attentions(model: torch.nn.Module) -> list[tuple[str, BiasedAttention]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BiasedAttention)]


@pytest.mark.parametrize(("res", "stride"), [(14, 1), (7, 1), (4, 1), (14, 2), (7, 2), (5, 2)])
def test_bias_index_is_abs_offset_row_major(res, stride):
    idx = attention_bias_index(res, stride)
    rq = (res - 1) // stride + 1
    assert idx.shape == (rq * rq, res * res)
    for (i, j), (a, b) in itertools.product(itertools.product(range(rq), repeat=2), itertools.product(range(res),
                                                                                                     repeat=2)):
        assert idx[i * rq + j, a * res + b] == abs(stride * i - a) * res + abs(stride * j - b)


def test_dense_bias_equals_gather_from_table():
    model = _tiny(160)  # grids 10 -> 5 -> 3
    attns = _attentions(model)
    assert len(attns) == 5
    for name, attn in attns:
        assert attn.attention_biases.abs().sum() > 0, name  # re-randomised, so the check means something
        gathered = attn.attention_biases[:, attn.attention_bias_idxs]
        torch.testing.assert_close(attn.attention_bias_dense, gathered, rtol=0, atol=0)
    # and the eval forward uses it: the same as the training-mode gather with norms frozen
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        y_eval = model(x)
        model.train()
        for m in model.modules():  # keep BatchNorm on running stats, so only the bias path differs
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        y_train = model(x)
    torch.testing.assert_close(y_train, y_eval, rtol=1e-5, atol=1e-5)


def test_dense_bias_follows_weights_loaded_in_eval_mode():
    model, other = _tiny(seed=0), _tiny(seed=1)
    model.load_state_dict(other.state_dict())
    for (_, a), (_, b) in zip(_attentions(model), _attentions(other)):
        torch.testing.assert_close(a.attention_bias_dense, b.attention_bias_dense, rtol=0, atol=0)
    # in-place edits in eval mode need eval() (or refresh_attention_bias()) again
    _, attn = _attentions(model)[0]
    with torch.no_grad():
        attn.attention_biases.add_(1.0)
    model.eval()
    torch.testing.assert_close(attn.attention_bias_dense, attn.attention_biases[:, attn.attention_bias_idxs])


def test_bias_tables_resized_when_loading_weights_of_another_resolution(tmp_path):
    src = _tiny(224)  # key grids 14, 14 (shrink), 7, 7 (shrink), 4
    path = tmp_path / "levit_224.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))

    with pytest.warns(UserWarning, match=r"14x14 -> 16x16 \(2\).*7x7 -> 8x8 \(2\)"):
        dst = mobilevits.create_model("levit_tiny", num_classes=10, resolution=256, weights=path).eval()
    src_state, dst_state = src.state_dict(), dst.state_dict()
    for name, attn in _attentions(dst):
        old = src_state[f"{name}.attention_biases"]
        h, n = old.shape
        r_old, r_new = int(n ** 0.5), attn.res
        expected = F.interpolate(old.reshape(1, h, r_old, r_old), size=(r_new, r_new), mode="bicubic",
                                 align_corners=False).reshape(h, r_new * r_new)
        if r_old == r_new:  # the last stage is 4x4 at both 224 and 256: untouched
            expected = old
        torch.testing.assert_close(dst_state[f"{name}.attention_biases"], expected, rtol=0, atol=0)
        torch.testing.assert_close(attn.attention_bias_dense, expected[:, attn.attention_bias_idxs], rtol=0, atol=0)
    for k, v in src_state.items():  # everything else is copied as is
        if not k.endswith("attention_biases"):
            torch.testing.assert_close(dst_state[k], v, rtol=0, atol=0)
    with torch.no_grad():
        assert dst(torch.randn(1, 3, 256, 256)).shape == (1, 10)


@pytest.mark.parametrize("res", [14, 7, 5, 16, 1, 2])
def test_subsample_equals_step2_slice(res):
    x = torch.randn(2, res * res, 6)
    expected = x.reshape(2, res, res, 6)[:, ::2, ::2].reshape(2, -1, 6)
    out = subsample_tokens(x, res, torch.ones(6, 1, 1, 1))
    assert out.shape == (2, ((res + 1) // 2) ** 2, 6)  # 14 -> 7, 7 -> 4, 5 -> 3
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


_NOT_IN_XNNPACK = ("index", "gather", "take", "embedding", "select", "split", "unbind", "squeeze", "layer_norm")


@pytest.mark.parametrize("fused", [False, True])
def test_export_has_no_gather_or_strided_slice(fused):
    model = _tiny(224)
    if fused:
        mobilevits.reparameterize_model(model)
    ep = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
    for graph in (ep.graph, ep.run_decompositions().graph):
        targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
        bad = [t for t in targets if any(s in t for s in _NOT_IN_XNNPACK)]
        assert not bad, bad
        for n in graph.nodes:
            if n.op == "call_function" and "slice" in str(n.target):
                assert (n.args[4] if len(n.args) > 4 else 1) == 1, n.format_node()
    buffers = {n.target for n in ep.graph.nodes if n.op == "placeholder"}
    # fuse() releases the index buffer: exporters would serialise it unused
    assert any("attention_bias_idxs" in b for b in buffers) != fused


def test_training_gathers_from_table_and_returns_both_heads_on_request():
    torch.manual_seed(0)
    model = mobilevits.create_model("levit_tiny", num_classes=10, resolution=128).train()
    y = model(torch.randn(2, 3, 128, 128))
    assert y.shape == (2, 10)
    y.sum().backward()
    assert all(a.attention_biases.grad is not None for _, a in _attentions(model))
    model.distilled_training = True
    logits, logits_dist = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == logits_dist.shape == (2, 10)
    with torch.no_grad():
        x = torch.randn(2, 3, 128, 128)
        model.eval()  # eval always averages the two heads
        torch.testing.assert_close(model(x), (model.head(model.forward_features(x).mean((2, 3)))
                                              + model.head_dist(model.forward_features(x).mean((2, 3)))) / 2)


def test_fused_model_can_still_run_in_training_mode():
    model = _tiny(128)
    mobilevits.reparameterize_model(model)
    assert all("attention_bias_idxs" not in dict(a.named_buffers()) for _, a in _attentions(model))
    model.train()
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 10)


def test_every_declared_resolution_builds_and_runs():
    info = mobilevits.get_model_info("levit_128s")
    assert info.valid_resolutions() == list(range(128, 513, 32))
    for res in info.valid_resolutions():
        model = mobilevits.create_model("levit_tiny", num_classes=3, resolution=res).eval()
        grids = [a.res for _, a in _attentions(model)]
        r1 = res // 16
        r2 = (r1 - 1) // 2 + 1
        assert grids == [r1, r1, r2, r2, (r2 - 1) // 2 + 1]  # block, shrink, block, shrink, block
        with torch.no_grad():
            assert model(torch.randn(1, 3, res, res)).shape == (1, 3)
