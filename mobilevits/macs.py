"""One MAC counter for every family: multiply-adds of convolutions, linears and matmuls."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (eval mode).

    Counted at the ATen level by ``torch.utils.flop_counter`` (conv, mm/addmm/bmm, attention
    matmuls), halved from FLOPs to MACs. Norms, activations, softmax and pooling are not counted,
    the convention of the MobileNet and Mobile-Former papers; LeViT's official counter also adds
    softmax (~0.2% there).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
