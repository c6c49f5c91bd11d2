"""One MAC counter for every family: multiply-adds of convolutions, linears and matmuls."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, in_chans: int = 3, count_norms: bool = False,
               count_attention: bool = True) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (eval mode).

    Counted at the ATen level by ``torch.utils.flop_counter`` (conv, mm/addmm/bmm, attention
    matmuls), halved from FLOPs to MACs. Norms, activations, softmax and pooling are not counted:
    the MobileNet and LeViT papers' convention (BatchNorm folds away at deployment; LeViT's official
    counter also adds softmax, ~0.2%).

    ``count_norms=True`` adds two operations per BatchNorm output element (scale and shift), the
    fvcore convention in which Mobile-Former's README reports its MAdds.

    ``count_attention=False`` leaves out the batched matmuls (``bmm``: every model here writes attention's
    q k^T and attn v as ``bmm``, and nothing else), the convention of papers that count only the layers with
    weights (ConViT's Table 1).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, resolution, resolution)
    norm_ops = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal norm_ops
        norm_ops += 2 * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if count_norms and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    flops = counter.get_total_flops()
    if not count_attention:
        flops -= counter.get_flop_counts().get("Global", {}).get(torch.ops.aten.bmm, 0)
    return flops // 2 + norm_ops
