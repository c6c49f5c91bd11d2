"""MobileViT v1 (XXS, XS, S).

Paper: Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
Transformer", ICLR 2022, https://arxiv.org/abs/2110.02178 (Appendix A, Table 4). Block order,
unfold/fold order and the resize of odd-sized maps follow Apple's ml-cvnets, so timm's
``mobilevit_*`` checkpoints (converted from ml-cvnets) load and give the same outputs.
Input: RGB in [0, 1] with no mean/std normalisation, as the official models were trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import (
    Attention,
    ConvNormAct,
    Dropout,
    DropPath,
    InvertedResidual,
    LayerNorm,
    Mlp,
    init_weights_trunc_normal,
    make_divisible,
    split_qkv,
)
from ..weights import register_layout, rename_prefixes

FAMILY = "mobilevit"


@dataclass(frozen=True)
class MobileViTCfg:
    channels: tuple[int, int, int, int, int]  # output channels of the five stages
    dims: tuple[int, int, int]  # transformer width d of the MobileViT blocks in stages 3-5
    num_features: int  # the final 1x1 conv (min(4 x last C, 960))
    exp: float = 4.0  # MV2 expansion (2 for XXS)
    depths: tuple[int, int, int] = (2, 4, 3)  # transformer layers L per MobileViT block
    stage2_blocks: int = 3  # MV2 blocks at 1/4 resolution (first one strided)
    stem: int = 16
    num_heads: int = 4
    patch: int = 2
    mlp_ratio: float = 2.0
    drop_rate: float = 0.1  # before the classifier (official yaml)
    drop_path_rate: float = 0.0


CFGS = {
    # Paper Appendix A, Table 4: output channels C of the five stages, transformer width d of the three
    # MobileViT blocks, the final 1x1 conv and the MV2 expansion factor.
    "mobilevit_xxs": MobileViTCfg(channels=(16, 24, 48, 64, 80),   dims=(64, 80, 96),    num_features=320, exp=2.0),
    "mobilevit_xs":  MobileViTCfg(channels=(32, 48, 64, 80, 96),   dims=(96, 120, 144),  num_features=384, exp=4.0),
    "mobilevit_s":   MobileViTCfg(channels=(32, 64, 96, 128, 160), dims=(144, 192, 240), num_features=640, exp=4.0),
    # reduced config for the fast generic tests (not in the paper)
    "mobilevit_tiny": MobileViTCfg(channels=(8, 16, 16, 24, 32), dims=(16, 24, 32), num_features=64, exp=2.0,
                                   depths=(1, 1, 1), stage2_blocks=1, stem=8),
}


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + FFN(LN(x)); tokens (B, N, d)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act="silu")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MobileViTBlock(nn.Module):
    """Local conv -> unfold into patches -> transformer across patches -> fold -> fuse with input.

    The transformer runs once per pixel position inside a ``patch x patch`` patch, over the
    sequence of all patches (batch B*P, sequence N = HW/P). Maps with a side not divisible by the
    patch are resized bilinearly up to the next multiple before unfolding and back after folding.
    """

    def __init__(self, chs: int, dim: int, depth: int, num_heads: int, patch: int, mlp_ratio: float,
                 drop_path: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.conv_kxk = ConvNormAct(chs, chs, 3, act="silu")
        self.conv_1x1 = nn.Conv2d(chs, dim, 1, bias=False)
        dp = drop_path or (0.0,) * depth
        self.transformer = nn.Sequential(*[TransformerLayer(dim, num_heads, mlp_ratio, dp[i]) for i in range(depth)])
        self.norm = LayerNorm(dim)
        self.conv_proj = ConvNormAct(dim, chs, 1, act="silu")
        self.conv_fusion = ConvNormAct(2 * chs, chs, 3, act="silu")
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        B, C, H, W = x.shape
        p = self.patch
        new_h, new_w = math.ceil(H / p) * p, math.ceil(W / p) * p
        resized = (new_h, new_w) != (H, W)
        if resized:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        n_h, n_w = new_h // p, new_w // p
        N, P = n_h * n_w, p * p
        # Unfold: (B, C, H, W) -> (B*C*n_h, p, n_w, p) -> (B*C*n_h, n_w, p, p) -> (B, C, N, P)
        #         -> (B, P, N, C) -> (B*P, N, C). Patches row-major, pixels in a patch row-major.
        x = x.reshape(B * C * n_h, p, n_w, p).transpose(1, 2)
        x = x.reshape(B, C, N, P).transpose(1, 3).reshape(B * P, N, C)
        x = self.norm(self.transformer(x))
        # Fold, the exact inverse: (B*P, N, C) -> (B, P, N, C) -> (B, C, N, P) -> ... -> (B, C, H, W)
        x = x.reshape(B, P, N, C).transpose(1, 3).reshape(B * C * n_h, n_w, p, p)
        x = x.transpose(1, 2).reshape(B, C, new_h, new_w)
        if resized:
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


def _mv2(in_chs: int, out_chs: int, stride: int, exp: float) -> InvertedResidual:
    return InvertedResidual(in_chs, out_chs, make_divisible(in_chs * exp), 3, stride, act="silu")


class MobileViT(ImageClassifier):
    """MobileViT v1: stem -> MV2 stages -> [MV2 down + MobileViT block] x 3 -> 1x1 conv -> pool -> linear."""

    family = FAMILY

    def __init__(self, cfg: MobileViTCfg, num_classes: int = 1000, resolution: int = 256) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocess = Preprocess(resolution=resolution, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                     crop_pct=0.9, interpolation="bicubic")
        c = cfg.channels
        self.stem = ConvNormAct(3, cfg.stem, 3, 2, act="silu")
        total = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = [
            nn.Sequential(_mv2(cfg.stem, c[0], 1, cfg.exp)),
            nn.Sequential(*[_mv2(c[0] if i == 0 else c[1], c[1], 2 if i == 0 else 1, cfg.exp)
                            for i in range(cfg.stage2_blocks)]),
        ]
        start = 0
        for i in range(3):
            depth = cfg.depths[i]
            stages.append(nn.Sequential(
                _mv2(c[i + 1], c[i + 2], 2, cfg.exp),
                MobileViTBlock(c[i + 2], cfg.dims[i], depth, cfg.num_heads, cfg.patch, cfg.mlp_ratio,
                               tuple(dpr[start:start + depth])),
            ))
            start += depth
        self.stages = nn.Sequential(*stages)
        self.final_conv = ConvNormAct(c[4], cfg.num_features, 1, act="silu")
        self.num_features = cfg.num_features
        self.drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.num_features, num_classes)
        init_weights_trunc_normal(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(x)))  # (B, num_features, R/32, R/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(x.mean((2, 3), keepdim=True).flatten(1)))


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate timm ``mobilevit_*`` keys: ByobNet bottleneck names and fused ``attn.qkv``."""
    mapping = {"head.fc.": "head."}
    for k in state:
        for src, dst in (("conv1_1x1", "conv_pw"), ("conv2_kxk", "conv_dw"), ("conv3_1x1", "conv_pwl")):
            if f".{src}." in k:
                prefix = k.split(f".{src}.")[0]
                mapping[f"{prefix}.{src}."] = f"{prefix}.{dst}."
    state = rename_prefixes(state, mapping)
    for prefix in {k[: -len("qkv.weight")] for k in state if k.endswith("attn.qkv.weight")}:
        split_qkv(state, prefix)
    return state


register_layout(FAMILY, "timm", lambda state: "head.fc.weight" in state, _timm_filter)


# apple/ml-cvnets module names -> ours. ConvLayer2d is ``block.conv`` + ``block.norm`` (our ConvNormAct's ``conv``
# + ``bn``); InvertedResidual is ``block.{exp_1x1,conv_3x3,red_1x1}``; a MobileViT block's transformer is
# ``global_rep`` (its layers, then the final LayerNorm) with ``pre_norm_mha`` = (LayerNorm, attention) and
# ``pre_norm_ffn`` = (LayerNorm, fc1, act, dropout, fc2, dropout).
_CVNETS_CONVS = {
    "block.exp_1x1": "conv_pw", "block.conv_3x3": "conv_dw", "block.red_1x1": "conv_pwl",
    "local_rep.conv_3x3": "conv_kxk", "conv_proj": "conv_proj", "fusion": "conv_fusion",
}
_CVNETS_LAYER = {
    "pre_norm_mha.0.": "norm1.", "pre_norm_mha.1.qkv_proj.": "attn.qkv.", "pre_norm_mha.1.out_proj.": "attn.proj.",
    "pre_norm_ffn.0.": "norm2.", "pre_norm_ffn.1.": "mlp.fc1.", "pre_norm_ffn.4.": "mlp.fc2.",
}


def _cvnets_conv(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.block.conv.": f"{dst}.conv.", f"{src}.block.norm.": f"{dst}.bn."}


def _from_cvnets(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate apple/ml-cvnets MobileViT v1 keys: ``conv_1``, ``layer_1..5``, ``conv_1x1_exp``, ``classifier``."""
    mapping = {**_cvnets_conv("conv_1", "stem"), **_cvnets_conv("conv_1x1_exp", "final_conv"),
               "classifier.fc.": "head."}
    for key in state:
        parts = key.split(".")
        if not (parts[0].startswith("layer_") and parts[0][6:].isdigit() and len(parts) > 3 and parts[1].isdigit()):
            continue
        stage, j = int(parts[0][6:]) - 1, int(parts[1])
        src, dst = f"{parts[0]}.{j}", f"stages.{stage}.{j}"
        mapping[f"{src}.local_rep.conv_1x1.block.conv."] = f"{dst}.conv_1x1."
        for a, b in _CVNETS_CONVS.items():
            mapping.update(_cvnets_conv(f"{src}.{a}", f"{dst}.{b}"))
        if parts[2] == "global_rep" and parts[3].isdigit():  # transformer layer i, or the final norm at i == depth
            i = int(parts[3])
            block = model.stages[stage][j] if stage < len(model.stages) and j < len(model.stages[stage]) else None
            if isinstance(block, MobileViTBlock) and i == len(block.transformer):
                mapping[f"{src}.global_rep.{i}."] = f"{dst}.norm."
            else:
                mapping.update({f"{src}.global_rep.{i}.{a}": f"{dst}.transformer.{i}.{b}"
                                for a, b in _CVNETS_LAYER.items()})
    state = rename_prefixes(state, mapping)
    for prefix in {k[: -len("qkv.weight")] for k in state if k.endswith("attn.qkv.weight")}:
        split_qkv(state, prefix)
    return state


register_layout(FAMILY, "apple/ml-cvnets", lambda state: "conv_1x1_exp.block.conv.weight" in state, _from_cvnets)


# MACs: the torch flop counter on timm's port of the official code with explicit attention,
# which equals ours. docs/models.md#mobilevit lists 340/935/1856 M from fvcore with
# F.scaled_dot_product_attention, which neither counter sees: those omit the attention matmuls.
_SRC = "Mehta & Rastegari 2022, App. A (params, top-1); MACs @256 incl. attention matmuls"
_PAPER = {  # params (official code), MACs in M at 256, top-1 (paper)
    "mobilevit_xxs": PaperNumbers(1_272_024, 407.4, 69.0, 256, _SRC),
    "mobilevit_xs": PaperNumbers(2_317_848, 1025.9, 74.8, 256, _SRC),
    "mobilevit_s": PaperNumbers(5_578_632, 2000.8, 78.4, 256, _SRC),
}
register_family(FAMILY, MobileViT, CFGS, _PAPER, default_resolution=256)
