"""DeiT: parameter counts by hand, the distillation head, position embeddings at another resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mobilevits
from mobilevits.models.deit import CFGS

FIXTURES = Path(__file__).parent / "fixtures"


def _hand_count(c: int, depth: int, distilled: bool, classes: int = 1000, res: int = 224) -> int:
    tokens = (res // 16) ** 2 + (2 if distilled else 1)
    block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
    heads = (2 if distilled else 1) * (c * classes + classes)
    return (3 * 16 * 16 * c + c) + c * (2 if distilled else 1) + tokens * c + depth * block + 2 * c + heads


@pytest.mark.parametrize("name", [n for n in CFGS if n != "deit_test"])
def test_params_equal_a_hand_count(name):
    cfg = CFGS[name]
    model = mobilevits.create_model(name)
    assert mobilevits.num_params(model) == _hand_count(cfg.embed_dim, cfg.depth, cfg.distilled)


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
