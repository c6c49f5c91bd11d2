"""TNT: patches cut without im2col equal nn.Unfold's, at rank 5 at most."""

from __future__ import annotations

import torch

import mobilevits


def test_patches_equal_unfold_in_row_major_order():
    model = mobilevits.create_model("tnt_test", resolution=96).eval()
    x = torch.randn(2, 3, 96, 96)
    ours = model._patches(x)  # (B*N, 3, 16, 16)
    ref = torch.nn.functional.unfold(x, kernel_size=16, stride=16)  # (B, 3*16*16, N)
    ref = ref.transpose(1, 2).reshape(2 * 36, 3, 16, 16)
    assert torch.equal(ours, ref)
    ep = torch.export.export(model, (x,))
    ranks = {len(n.meta["val"].shape) for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)}
    assert max(ranks) <= 5
