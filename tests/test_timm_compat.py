"""Our models load timm checkpoints (timm key names) and reproduce timm's outputs.

Fixtures were made once with timm by tests/fixtures/make_timm_fixtures.py: re-randomised weights
(timm key names, fp16), a real photo and timm's output on it.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mobilevits

FIXTURES = Path(__file__).parent / "fixtures"
IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))
CASES = {
    # fixture: (our model, overrides, resolution, normalisation)
    "mobilenetv3_small_050": ("mobilenetv3_small_100", {"width": 0.5}, 128, IMAGENET),
    "mobilevit_tiny": ("mobilevit_tiny", {}, 160, (np.zeros(3, np.float32), np.ones(3, np.float32))),
    "levit_tiny": ("levit_tiny", {}, 160, IMAGENET),
    "efficientnet_b0_025": ("efficientnet_tiny", {}, 128, IMAGENET),
    "deit_test_distilled": ("deit_test", {}, 112, IMAGENET),
    "deit_test": ("deit_test", {"distilled": False}, 112, IMAGENET),
    "convit_test": ("convit_test", {}, 112, IMAGENET),
    "tnt_test": ("tnt_test", {}, 112, IMAGENET),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_timm_checkpoint_gives_timm_output(case, tmp_path):
    name, overrides, res, (mean, std) = CASES[case]
    fx = load_file(str(FIXTURES / f"timm_{case}.safetensors"))
    weights = {k[len("weights."):]: v for k, v in fx.items() if k.startswith("weights.")}
    path = tmp_path / "timm.safetensors"
    save_file(weights, str(path))

    model = mobilevits.create_model(name, num_classes=10, resolution=res, weights=path, **overrides).eval()
    img = fx["image"].numpy().astype(np.float32) / 255.0
    x = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        y = model(x)
    expected = fx["output"]
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    # and the fused (deploy) model computes the same thing
    with torch.no_grad():
        torch.testing.assert_close(mobilevits.reparameterize_model(model)(x), expected, rtol=1e-4, atol=1e-4)
