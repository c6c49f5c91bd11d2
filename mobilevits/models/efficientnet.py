"""EfficientNet-B0, the CNN baseline of LeViT's speed comparison.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
https://arxiv.org/abs/1905.11946 (Table 1). Blocks are MBConv with squeeze-excite and SiLU (swish);
the squeeze-excite width is a quarter of the block's *input* channels (not of the expanded width), with
SiLU inside and a sigmoid gate. Channel/depth scaling and key names follow timm's ``efficientnet_b0``
(PyTorch-trained, BatchNorm eps 1e-5, symmetric padding), whose checkpoints load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import ConvNormAct, Dropout, InvertedResidual, make_divisible
from ..weights import register_layout, rename_prefixes

FAMILY = "efficientnet"


@dataclass(frozen=True)
class Row:
    """One stage of the paper's Table 1: ``repeats`` MBConv blocks, the first with ``stride``."""

    kernel: int
    exp: int  # expansion ratio (MBConv1 / MBConv6)
    out: int
    stride: int
    repeats: int


@dataclass(frozen=True)
class EfficientNetCfg:
    rows: tuple[Row, ...]
    width: float = 1.0  # channel multiplier (rounded to multiples of 8, as timm)
    depth: float = 1.0  # repeat multiplier (rounded up)
    stem: int = 32
    num_features: int = 1280  # the 1x1 head conv, scaled by width
    se_ratio: float = 0.25  # squeeze-excite width / block input channels
    drop_rate: float = 0.2  # before the classifier (paper: 0.2 for B0)
    drop_path_rate: float = 0.2  # stochastic depth, linear in block index (paper: survival 0.8)
    bn_eps: float = 1e-5


# Paper Table 1 (B0): MBConv1 k3 16; MBConv6 k3 24 x2; k5 40 x2; k3 80 x3; k5 112 x3; k5 192 x4; k3 320.
# One Row per stage 2-8; columns: Row(kernel, exp (MBConv1/6), out channels, stride, repeats (#layers)).
B0 = (
    Row(3, 1, 16,  1, 1),
    Row(3, 6, 24,  2, 2),
    Row(5, 6, 40,  2, 2),
    Row(3, 6, 80,  2, 3),
    Row(5, 6, 112, 1, 3),
    Row(5, 6, 192, 2, 4),
    Row(3, 6, 320, 1, 1),
)

CFGS = {
    # B0 is the unscaled network of Table 1 (stem 32, head 1280).
    "efficientnet_b0": EfficientNetCfg(rows=B0, width=1.0, depth=1.0),
    # reduced config for the fast generic tests (not in the paper): B0 scaled by width and depth 0.25
    "efficientnet_tiny": EfficientNetCfg(rows=B0, width=0.25, depth=0.25),
}


class EfficientNet(ImageClassifier):
    """EfficientNet: conv3x3 s2 stem -> MBConv stages -> 1x1 conv -> pool -> dropout -> linear."""

    family = FAMILY

    def __init__(self, cfg: EfficientNetCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocess = Preprocess(resolution=resolution, crop_pct=0.875, interpolation="bicubic")

        def chs(c: int) -> int:
            return make_divisible(c * cfg.width) if cfg.width != 1.0 else c

        stem = chs(cfg.stem)
        self.stem = ConvNormAct(3, stem, 3, 2, act="silu", bn_eps=cfg.bn_eps)
        repeats = [math.ceil(row.repeats * cfg.depth) for row in cfg.rows]
        n_blocks, block_idx, in_chs = sum(repeats), 0, stem
        stages = []
        for row, n in zip(cfg.rows, repeats):
            out = chs(row.out)
            blocks = []
            for r in range(n):
                blocks.append(InvertedResidual(
                    in_chs, out, in_chs * row.exp, row.kernel, row.stride if r == 0 else 1, act="silu",
                    se_chs=round(in_chs * cfg.se_ratio), se_act="silu", se_gate="sigmoid", expand=row.exp != 1,
                    bn_eps=cfg.bn_eps, drop_path=cfg.drop_path_rate * block_idx / n_blocks,
                ))
                in_chs = out
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = chs(cfg.num_features)
        self.conv_head = ConvNormAct(in_chs, self.num_features, 1, act="silu", bn_eps=cfg.bn_eps)
        self.drop = Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.out_features), 1.0 / math.sqrt(m.out_features))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.blocks(self.stem(x)))  # (B, num_features, R/32, R/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean((2, 3), keepdim=True).flatten(1)  # (B, num_features)
        return self.classifier(self.drop(x))


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate timm ``efficientnet_*`` keys (conv_stem/bn1, blocks.s.i.{conv_pw,bn1,...}, conv_head/bn2)."""
    mapping = {"conv_stem.": "stem.conv.", "bn1.": "stem.bn.", "conv_head.": "conv_head.conv.",
               "bn2.": "conv_head.bn."}
    for b in {k.rsplit(".", 2)[0] for k in state if k.startswith("blocks.")}:
        names = {k[len(b) + 1:].split(".")[0] for k in state if k.startswith(b + ".")}
        if "conv_pwl" in names:  # MBConv6
            pairs = (("conv_pw", "conv_pw.conv"), ("bn1", "conv_pw.bn"), ("conv_dw", "conv_dw.conv"),
                     ("bn2", "conv_dw.bn"), ("conv_pwl", "conv_pwl.conv"), ("bn3", "conv_pwl.bn"))
        else:  # MBConv1: depthwise-separable, no expansion
            pairs = (("conv_dw", "conv_dw.conv"), ("bn1", "conv_dw.bn"), ("conv_pw", "conv_pwl.conv"),
                     ("bn2", "conv_pwl.bn"))
        mapping.update({f"{b}.{src}.": f"{b}.{dst}." for src, dst in pairs})
    return rename_prefixes(state, mapping)


register_layout(FAMILY, "timm", lambda state: "conv_stem.weight" in state, _timm_filter)


# Params: timm efficientnet_b0 (5,288,548; the paper's "5.3M"). MACs: paper Table 2 ("0.39B FLOPs").
_PAPER = {
    "efficientnet_b0": PaperNumbers(5_288_548, 390, 77.1, 224, "Tan & Le 2019, Table 2", macs_tolerance=0.03),
}
register_family(FAMILY, EfficientNet, CFGS, _PAPER, default_resolution=224)
