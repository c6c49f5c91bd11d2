"""ConViT's gated positional self-attention: relative offsets, locality initialisation, the fused deploy form."""

from __future__ import annotations

import torch

import mobilevits
from mobilevits.models.convit import GPSA, relative_offsets


def test_relative_offsets_are_key_minus_query_in_row_major_patches():
    rel = relative_offsets(3)  # patches 0..8 on a 3x3 grid, row-major
    assert rel.shape == (9, 9, 3)
    # query patch 4 (row 1, col 1) to key patch 2 (row 0, col 2): dx = +1, dy = -1, d^2 = 2
    assert rel[4, 2].tolist() == [1.0, -1.0, 2.0]
    assert rel[0, 8].tolist() == [2.0, 2.0, 8.0] and (rel[range(9), range(9)] == 0).all()


def test_locality_init_makes_each_head_a_kernel_tap():
    torch.manual_seed(0)
    gpsa = GPSA(dim=36, num_heads=9, grid=5).eval()  # 9 heads: a 3x3 kernel
    gpsa.local_init()
    pos, _ = gpsa._positional()  # (heads, N, N), already times sigmoid(gate)
    centre = 12  # patch (2, 2) of the 5x5 grid
    rel = relative_offsets(5)[centre]
    for head in range(9):
        h1, h2 = head % 3, head // 3
        peak = int(pos[head, centre].argmax())
        assert rel[peak, :2].tolist() == [h2 - 1.0, h1 - 1.0], head  # dx = h2 - 1, dy = h1 - 1
    assert torch.equal(gpsa.v.weight, torch.eye(36))  # v starts as the identity


def test_fused_gpsa_matches_the_trained_form_with_random_gates():
    torch.manual_seed(0)
    model = mobilevits.create_model("convit_test", num_classes=7, resolution=112).eval()
    mobilevits.rerandomize_(model, seed=3)  # gates away from their init, so both attentions matter
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        plain = model(x)
        fused = mobilevits.reparameterize_model(model)(x)
    assert all(m.fused for m in model.modules() if isinstance(m, GPSA))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
