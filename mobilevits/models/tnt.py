"""TNT: Transformer in Transformer, an inner transformer over the "pixels" of each patch and an outer one over
the patches.

Paper: Han et al., "Transformer in Transformer", NeurIPS 2021, https://arxiv.org/abs/2103.00112 (Section 3:
the block; Table 1: TNT-S and TNT-B). The layout and the pixel embedding follow the official PyTorch code
(huawei-noah/Efficient-AI-Backbones, tnt_pytorch), as timm's ``tnt_*_patch16_224`` does.

* each 16x16 patch is embedded on its own into a 4x4 grid of "pixel" tokens of width c (24 in TNT-S) by a 7x7
  stride-4 convolution, plus a learned pixel position embedding shared by all patches;
* the patch tokens start as LayerNorm -> Linear (16 c -> d) -> LayerNorm of the flattened pixels, with a class
  token in front and a learned patch position embedding;
* each block: the inner transformer block on the pixels of every patch (attention with 4 heads, MLP x4), the
  pixels projected again (LayerNorm -> Linear without bias -> LayerNorm) and added to their patch token, then an
  outer transformer block on the patch tokens (d / 64 heads, MLP x4); no bias in q, k, v; LayerNorm eps 1e-5;
* the class token feeds the head.

Deployment choices (see ``layers.py``):

* patches are cut by reshape and permute with every tensor at rank 5 or less (Core ML's limit), not by
  ``nn.Unfold`` (``im2col``, which XNNPACK does not take); the convolution then runs on the B*N patches as a
  batch;
* the class token joins as in DeiT (:class:`layers.PrefixTokens`, float under int8); the inner and outer attention
  are :class:`layers.Attention` (timm's fused ``qk`` is split on load); the pixel tokens' sum into the patch
  tokens concatenates the class token's row back with a step-1 slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import (
    Attention,
    Dropout,
    DropPath,
    LayerNorm,
    Mlp,
    PrefixTokens,
    init_weights_trunc_normal,
    resize_pos_embed_on_load,
    split_qkv,
)
from ..weights import register_checkpoint_fixup, register_layout

FAMILY = "tnt"


@dataclass(frozen=True)
class TNTCfg:
    """Paper Table 1: outer width d and heads, inner (pixel) width c and heads, depth."""

    embed_dim: int
    num_heads: int
    inner_dim: int
    inner_heads: int = 4
    depth: int = 12
    patch_size: int = 16
    pixel_stride: int = 4  # the pixel embedding's stride: a 16x16 patch -> 4x4 pixel tokens
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1


# Paper Table 1; columns: TNTCfg(embed_dim, num_heads, inner_dim, inner_heads, depth).
CFGS = {
    "tnt_small": TNTCfg(384, 6, 24, 4, 12),
    "tnt_base": TNTCfg(640, 10, 40, 4, 12),
    # reduced config for the fast generic tests (not in the paper)
    "tnt_test": TNTCfg(32, 2, 8, 2, 1, drop_path_rate=0.0),
}


class Block(nn.Module):
    """Inner block on pixels (B*N, P, c), their projection into the patch tokens (B, 1 + N, d), outer block."""

    def __init__(self, cfg: TNTCfg, num_pixel: int, drop_path: float) -> None:
        super().__init__()
        c, d = cfg.inner_dim, cfg.embed_dim
        self.norm_in = LayerNorm(c)
        self.attn_in = Attention(c, cfg.inner_heads, qkv_bias=False, proj_drop=cfg.drop_rate)
        self.norm_mlp_in = LayerNorm(c)
        self.mlp_in = Mlp(c, 4 * c, act="gelu", drop=cfg.drop_rate)
        self.norm1_proj = LayerNorm(c * num_pixel)
        self.proj = nn.Linear(c * num_pixel, d, bias=False)
        self.norm2_proj = LayerNorm(d)
        self.norm_out = LayerNorm(d)
        self.attn_out = Attention(d, cfg.num_heads, qkv_bias=False, proj_drop=cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm_mlp = LayerNorm(d)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), act="gelu", drop=cfg.drop_rate)

    def forward(self, pixels: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = pixels + self.drop_path(self.attn_in(self.norm_in(pixels)))
        pixels = pixels + self.drop_path(self.mlp_in(self.norm_mlp_in(pixels)))
        B, n, d = patches.shape  # n = 1 + N
        flat = pixels.reshape(B, n - 1, -1)  # (B, N, P*c)
        patches = torch.cat([patches[:, 0:1], patches[:, 1:] + self.norm2_proj(self.proj(self.norm1_proj(flat)))],
                            dim=1)
        patches = patches + self.drop_path(self.attn_out(self.norm_out(patches)))
        patches = patches + self.drop_path(self.mlp(self.norm_mlp(patches)))
        return pixels, patches


class TNT(ImageClassifier):
    """TNT for ``resolution`` x ``resolution`` inputs (a multiple of the patch size)."""

    family = FAMILY

    def __init__(self, cfg: TNTCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        if resolution % cfg.patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg, self.num_classes, self.resolution = cfg, num_classes, resolution
        self.preprocess = Preprocess(resolution=resolution)
        c, d, p = cfg.inner_dim, cfg.embed_dim, cfg.patch_size
        self.grid = resolution // p
        self.num_prefix = 1
        side = -(-p // cfg.pixel_stride)  # 4: pixel tokens per patch side
        num_pixel = side * side
        self.pixel_embed = nn.Conv2d(3, c, 7, stride=cfg.pixel_stride, padding=3)  # per patch: (3, p, p) -> (c, 4, 4)
        self.pixel_pos = nn.Parameter(torch.zeros(1, c, side, side))
        self.norm1_proj = LayerNorm(num_pixel * c)
        self.proj = nn.Linear(num_pixel * c, d)
        self.norm2_proj = LayerNorm(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, d))  # timm: patch_pos
        self.prefix = PrefixTokens()
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([Block(cfg, num_pixel, r) for r in rates])
        self.norm = LayerNorm(d)
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(d, num_classes)
        init_weights_trunc_normal(self)
        for t in (self.cls_token, self.pos_embed, self.pixel_pos):
            nn.init.trunc_normal_(t, std=0.02)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B*N, 3, p, p), row-major patches, never above rank 5."""
        B, C, _, W = x.shape
        g, p = self.grid, self.cfg.patch_size
        x = x.reshape(B, C, g, p, W).permute(0, 2, 1, 3, 4)  # (B, g_row, C, p, W)
        x = x.reshape(B * g, C, p, g, p).permute(0, 3, 1, 2, 4)  # (B*g_row, g_col, C, p, p)
        return x.reshape(B * g * g, C, p, p)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        pixels = self.pixel_embed(self._patches(x)) + self.pixel_pos  # (B*N, c, 4, 4)
        pixels = pixels.flatten(2).transpose(1, 2)  # (B*N, P, c)
        patches = self.norm2_proj(self.proj(self.norm1_proj(pixels.reshape(B, self.grid ** 2, -1))))  # (B, N, d)
        patches = self.prefix(patches, [self.cls_token], self.pos_embed)  # (B, 1 + N, d)
        patches = self.pos_drop(patches)
        for block in self.blocks:
            pixels, patches = block(pixels, patches)
        return self.norm(patches)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x[:, 0:1].flatten(1)))


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``tnt_*_patch16_224`` keys: ``pixel_embed.proj`` -> ``pixel_embed``, ``patch_pos`` -> ``pos_embed``,
    the fused ``qk`` of both attentions split in halves (q rows, then k rows)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = k.replace("pixel_embed.proj.", "pixel_embed.", 1) if k.startswith("pixel_embed.proj.") else k
        out["pos_embed" if k == "patch_pos" else k] = v
    for i in range(len(model.blocks)):
        for attn in ("attn_in", "attn_out"):
            split_qkv(out, f"blocks.{i}.{attn}.", "qk")
    return out



register_layout(FAMILY, "timm", lambda state: "patch_pos" in state, _from_timm)
register_checkpoint_fixup(FAMILY, resize_pos_embed_on_load)

# Params: timm's tnt_*_patch16_224 (= the official PyTorch code) to the unit. MACs and top-1: paper Table 1
# (5.2 G and 14.1 G; ours, attention's matmuls included, 5217 M and 14049 M).
_SRC = "Han et al. 2021, Table 1; params: timm tnt_*_patch16_224"
_PAPER = {
    "tnt_small": PaperNumbers(23_768_584, 5200, 81.5, 224, _SRC),
    "tnt_base": PaperNumbers(65_428_680, 14100, 82.9, 224, _SRC),
}
register_family(FAMILY, TNT, CFGS, _PAPER, default_resolution=224, min_resolution=96, resolution_step=16)
