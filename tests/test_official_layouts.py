"""Checkpoints in the official code's layouts load and give the official code's outputs.

Fixtures were made once by tests/fixtures/make_official_fixtures.py, running facebookresearch/LeViT and
apple/ml-cvnets themselves: re-randomised weights under their key names, a real photo and their outputs.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mobilevits
from mobilevits.weights import WeightsError, load_weights

FIXTURES = Path(__file__).parent / "fixtures"
IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))
RAW = (np.zeros(3, np.float32), np.ones(3, np.float32))


def _fixture(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}.safetensors"))


def _part(fx: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in fx.items() if k.startswith(prefix + ".")}


def _input(fx: dict[str, torch.Tensor], norm: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    mean, std = norm
    img = fx["image"].numpy().astype(np.float32) / 255.0
    return torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].copy())


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


def _check(model_name: str, path: Path, x: torch.Tensor, expected: torch.Tensor, layout: str, **overrides) -> None:
    model = mobilevits.create_model(model_name, num_classes=10, resolution=160, **overrides).eval()
    assert load_weights(model, path)["layout"] == layout
    with torch.no_grad():
        y = model(x)
        deployed = mobilevits.reparameterize_model(model)(x)
    assert y.shape == expected.shape
    assert _rel_err(y, expected) < 1e-5, _rel_err(y, expected)
    assert _rel_err(deployed, expected) < 1e-5  # and the fused deploy form computes the same


def test_levit_official_checkpoint_gives_official_output(tmp_path):
    fx = _fixture("official_levit_tiny")
    path = tmp_path / "LeViT-tiny.pth"
    # as the official training script saves it: the weights under "model", beside the optimiser state
    torch.save({"model": _part(fx, "weights"), "optimizer": {"state": {}}, "epoch": 299}, path)
    _check("levit_tiny", path, _input(fx, IMAGENET), fx["output"], "facebookresearch/LeViT")


def test_levit_official_fused_checkpoint_gives_official_output(tmp_path):
    # utils.replace_batchnorm(model) makes every Conv2d_BN/Linear_BN/BN_Linear one Conv2d/Linear with a bias
    fx = _fixture("official_levit_tiny")
    path = tmp_path / "LeViT-tiny-fused.pth"
    torch.save(_part(fx, "fused"), path)
    _check("levit_tiny", path, _input(fx, IMAGENET), fx["output_fused"], "facebookresearch/LeViT")


def test_levit_official_one_head_checkpoint(tmp_path):
    # distillation=False: no head_dist; ours averages two heads, so both get the one head
    fx = _fixture("official_levit_tiny")
    path = tmp_path / "LeViT-tiny-nodist.pth"
    torch.save({k: v for k, v in _part(fx, "weights").items() if not k.startswith("head_dist.")}, path)
    _check("levit_tiny", path, _input(fx, IMAGENET), fx["output_nodist"], "facebookresearch/LeViT")


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "training-checkpoint"])
def test_mobilevit_cvnets_checkpoint_gives_cvnets_output(tmp_path, wrapped):
    fx = _fixture("cvnets_mobilevit_tiny")
    state = _part(fx, "weights")
    path = tmp_path / "mobilevit_tiny.pt"
    # ml-cvnets publishes bare state dicts (mobilevit_xxs.pt); its training checkpoints nest them
    torch.save({"model_state_dict": state, "epoch": 300} if wrapped else state, path)
    # ml-cvnets' stem is 16 channels in every variant
    _check("mobilevit_tiny", path, _input(fx, RAW), fx["output"], "apple/ml-cvnets", stem=16)


def test_misfit_names_the_layout_and_the_offenders(tmp_path):
    fx = _fixture("official_levit_tiny")
    path = tmp_path / "LeViT.pth"
    torch.save({"model": _part(fx, "weights")}, path)
    with pytest.raises(WeightsError) as err:  # a tiny checkpoint into LeViT-128S: wrong variant
        mobilevits.create_model("levit_128s", weights=path)
    msg = str(err.value)
    assert "read as the facebookresearch/LeViT layout" in msg
    assert "shape mismatches: stem.0.conv.weight: checkpoint (4, 3, 3, 3) vs model (16, 3, 3, 3)" in msg
    assert "layouts read for levit: mobilevits, timm, facebookresearch/LeViT" in msg

    cv = tmp_path / "mobilevit.pt"
    torch.save(_part(_fixture("cvnets_mobilevit_tiny"), "weights"), cv)
    with pytest.raises(WeightsError, match="read as the apple/ml-cvnets layout") as err:
        mobilevits.create_model("mobilevit_xxs", weights=cv)
    assert "shape mismatches: stages.0.0.conv_pw.conv.weight: checkpoint (32, 16, 1, 1) vs model (32, 16, 1, 1)" \
        not in str(err.value)
    assert "stages.0.0.conv_pwl.conv.weight: checkpoint (8, 32, 1, 1) vs model (16, 32, 1, 1)" in str(err.value)


def test_mobile_former_official_checkpoint_gives_official_output(tmp_path):
    fx = _fixture("official_mobile_former_tiny")
    path = tmp_path / "mobile-former-tiny.pth.tar"
    # the official release: a .pth.tar training checkpoint, weights under "state_dict"
    torch.save({"state_dict": _part(fx, "weights"), "epoch": 449}, path)
    _check("mobile_former_tiny", path, _input(fx, IMAGENET), fx["output"], "AAboys/MobileFormer")
