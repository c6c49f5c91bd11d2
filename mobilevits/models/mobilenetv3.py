"""MobileNetV3 (Large and Small), the CNN baseline.

Paper: Howard et al., "Searching for MobileNetV3", ICCV 2019, https://arxiv.org/abs/1905.02244
(final tables 1 and 2). Channel rounding follows timm's ``mobilenetv3_*`` so timm checkpoints
load: expansion widths are ``make_divisible(in_chs * ratio)``, squeeze-excite widths
``make_divisible(mid / 4)``, and the 1280/1024 head is not scaled by the width multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import ConvNormAct, Dropout, HardSwish, InvertedResidual, make_divisible
from ..weights import register_layout, rename_prefixes

FAMILY = "mobilenetv3"


@dataclass(frozen=True)
class Row:
    """One row group of the paper's table: ``repeats`` blocks, the first with ``stride``."""

    kernel: int
    exp_ratio: float  # expansion width / input width (the paper's "exp" column divided by input)
    out: int
    se: bool
    act: str  # "relu" (RE) or "hswish" (HS)
    stride: int = 1
    repeats: int = 1


@dataclass(frozen=True)
class MobileNetV3Cfg:
    stages: tuple[tuple[Row, ...], ...]
    last_conv: int  # the 1x1 conv before pooling (960 Large, 576 Small), scaled by width
    head: int  # the pooled 1x1 conv (1280 Large, 1024 Small), not scaled
    width: float = 1.0
    stem: int = 16
    first_block_expands: bool = False  # the first block is depthwise-separable (no 1x1 expand)
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0  # stochastic depth on residual blocks, linear in depth
    bn_eps: float = 1e-5


# Paper Table 1 (Large): exp column / input channels gives the ratios 1, 4, 3, 3, 6, 2.5, 2.3, 6, 6.
# One inner tuple per stage; columns: Row(kernel, exp_ratio, out, se, act (NL), stride, repeats).
LARGE = (
    (Row(3, 1,   16,  False, "relu",   1, 1),),
    (Row(3, 4,   24,  False, "relu",   2, 1),
     Row(3, 3,   24,  False, "relu",   1, 1)),
    (Row(5, 3,   40,  True,  "relu",   2, 3),),
    (Row(3, 6,   80,  False, "hswish", 2, 1),
     Row(3, 2.5, 80,  False, "hswish", 1, 1),
     Row(3, 2.3, 80,  False, "hswish", 1, 2)),
    (Row(3, 6,   112, True,  "hswish", 1, 2),),
    (Row(5, 6,   160, True,  "hswish", 2, 3),),
)
# Paper Table 2 (Small): 16, 72/16, 88/24, 96/24, 240/40, 120/40, 144/48, 288/48, 576/96.
# One inner tuple per stage; columns: Row(kernel, exp_ratio, out, se, act (NL), stride, repeats).
SMALL = (
    (Row(3, 1,    16, True,  "relu",   2, 1),),
    (Row(3, 4.5,  24, False, "relu",   2, 1),
     Row(3, 3.67, 24, False, "relu",   1, 1)),
    (Row(5, 4,    40, True,  "hswish", 2, 1),
     Row(5, 6,    40, True,  "hswish", 1, 2)),
    (Row(5, 3,    48, True,  "hswish", 1, 2),),
    (Row(5, 6,    96, True,  "hswish", 2, 3),),
)
# Reduced stages for the fast generic tests (not in the paper); same columns as above.
TINY = (
    (Row(3, 1, 8,  True,  "relu",   2, 1),),
    (Row(3, 3, 16, False, "hswish", 2, 1),
     Row(3, 3, 16, True,  "hswish", 1, 1)),
)

CFGS = {
    # Paper Tables 1 and 2 (last_conv: the 1x1 conv before pooling; head: the pooled 1x1 conv, not scaled).
    "mobilenetv3_large_100": MobileNetV3Cfg(stages=LARGE, last_conv=960, head=1280, width=1.0),
    "mobilenetv3_large_075": MobileNetV3Cfg(stages=LARGE, last_conv=960, head=1280, width=0.75),
    "mobilenetv3_small_100": MobileNetV3Cfg(stages=SMALL, last_conv=576, head=1024, width=1.0),
    "mobilenetv3_small_075": MobileNetV3Cfg(stages=SMALL, last_conv=576, head=1024, width=0.75),
    # reduced config for the fast generic tests (not in the paper)
    "mobilenetv3_tiny": MobileNetV3Cfg(stages=TINY, last_conv=64, head=128, stem=8),
}


class MobileNetV3(ImageClassifier):
    """MobileNetV3: stem -> inverted residual stages -> 1x1 conv -> pool -> 1x1 head conv -> classifier."""

    family = FAMILY

    def __init__(self, cfg: MobileNetV3Cfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocess = Preprocess(resolution=resolution, interpolation="bilinear")
        w = cfg.width
        # timm keeps the stem at 16 unless the multiplier is below 0.75.
        stem = make_divisible(cfg.stem * w) if w >= 0.75 else cfg.stem
        self.stem = ConvNormAct(3, stem, 3, 2, act="hswish", bn_eps=cfg.bn_eps)
        in_chs = stem
        stages = []
        n_blocks = sum(row.repeats for rows in cfg.stages for row in rows)
        block_idx = 0
        for si, rows in enumerate(cfg.stages):
            blocks = []
            for row in rows:
                out = make_divisible(row.out * w)
                for r in range(row.repeats):
                    first = si == 0 and not blocks and not cfg.first_block_expands
                    mid = in_chs if first else make_divisible(in_chs * row.exp_ratio)
                    blocks.append(InvertedResidual(
                        in_chs, out, mid, row.kernel, row.stride if r == 0 else 1, act=row.act,
                        se_chs=make_divisible(mid * 0.25) if row.se else 0, expand=not first,
                        bn_eps=cfg.bn_eps, drop_path=cfg.drop_path_rate * block_idx / n_blocks,
                    ))
                    in_chs = out
                    block_idx += 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.final_conv = ConvNormAct(in_chs, make_divisible(cfg.last_conv * w), 1, act="hswish", bn_eps=cfg.bn_eps)
        self.num_features = cfg.head
        self.conv_head = nn.Conv2d(self.final_conv.conv.out_channels, cfg.head, 1, bias=True)
        self.head_act = HardSwish()
        self.drop = Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(cfg.head, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.blocks(self.stem(x)))  # (B, last_conv, R/32, R/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        x = self.head_act(self.conv_head(x)).flatten(1)
        return self.classifier(self.drop(x))


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate timm ``mobilenetv3_*`` keys (conv_stem/bn1, blocks.s.i.{conv_pw,bn1,...}) to ours."""
    mapping = {"conv_stem.": "stem.conv.", "bn1.": "stem.bn."}
    last = len(model.cfg.stages)
    blocks = {k.rsplit(".", 2)[0] for k in state if k.startswith("blocks.")}
    for b in blocks:
        names = {k[len(b) + 1:].split(".")[0] for k in state if k.startswith(b + ".")}
        if b.startswith(f"blocks.{last}."):  # the final 1x1 ConvBnAct
            mapping.update({f"{b}.conv.": "final_conv.conv.", f"{b}.bn1.": "final_conv.bn."})
        elif "conv_pwl" in names:  # inverted residual
            for src, dst in (("conv_pw", "conv_pw.conv"), ("bn1", "conv_pw.bn"), ("conv_dw", "conv_dw.conv"),
                             ("bn2", "conv_dw.bn"), ("conv_pwl", "conv_pwl.conv"), ("bn3", "conv_pwl.bn")):
                mapping[f"{b}.{src}."] = f"{b}.{dst}."
        else:  # depthwise-separable first block
            for src, dst in (("conv_dw", "conv_dw.conv"), ("bn1", "conv_dw.bn"), ("conv_pw", "conv_pwl.conv"),
                             ("bn2", "conv_pwl.bn")):
                mapping[f"{b}.{src}."] = f"{b}.{dst}."
    return rename_prefixes(state, mapping)


register_layout(FAMILY, "timm", lambda state: "conv_stem.weight" in state, _timm_filter)


_SRC = "Howard et al. 2019, Table 3"
_PAPER = {  # paper Table 3 (final version): params, MAdds (M), top-1
    "mobilenetv3_large_100": PaperNumbers(5_483_032, 219, 75.2, 224, _SRC),
    "mobilenetv3_large_075": PaperNumbers(3_993_528, 155, 73.3, 224, _SRC),
    "mobilenetv3_small_100": PaperNumbers(2_542_856, 56, 67.4, 224, _SRC),
    "mobilenetv3_small_075": PaperNumbers(2_041_872, 44, 65.4, 224, _SRC),
}
register_family(FAMILY, MobileNetV3, CFGS, _PAPER, default_resolution=224)
