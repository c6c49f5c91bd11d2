"""ConViT: a DeiT whose first layers are gated positional self-attention (GPSA), a soft convolutional prior.

Paper: d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
ICML 2021, https://arxiv.org/abs/2103.10697 (Section 3: GPSA and its locality initialisation; Table 1: sizes).

* DeiT's patch embedding and MLPs, LayerNorm eps 1e-6, no bias in the attention projections; the width is
  48 per head: Ti 4 heads (192), S 9 (432), B 16 (768); 12 blocks;
* the first 10 blocks use GPSA on the patch tokens only (the position embedding covers the patches only);
  the class token joins before block 10, and the last two blocks are ordinary multi-head self-attention;
* GPSA: each head mixes content attention softmax(q k^T / sqrt(d)) with positional attention
  softmax(r W_pos) over the relative offsets r = (dx, dy, dx^2 + dy^2) of the patches, weighted by
  sigmoid(lambda_h) per head (the gating parameter), then renormalised over the keys;
* locality initialisation: v starts as the identity and each head's W_pos as an attention peaked at one
  offset of a sqrt(heads) x sqrt(heads) kernel (strength alpha = 1), so training starts from a convolution.

Deployment choices (see ``layers.py``):

* the positional attention does not depend on the input: ``fuse()`` computes sigmoid(lambda) softmax(r W_pos)
  once as a constant (heads, N, N) and 1 - sigmoid(lambda) as a per-head scale, so the deployed GPSA is the
  content softmax, a multiply and an add. Both attentions' rows sum to one, so the renormalisation divides by
  1 up to rounding; the fused form leaves it out (a division has no int8 kernel in XNNPACK). Tested against
  timm's output within 1e-4 (fused and unfused);
* the class token joins as in DeiT (:class:`layers.PrefixTokens`, float under int8); q, k, v are separate linears
  (timm's fused ``qk`` / ``qkv`` are split on load).
"""

from __future__ import annotations

import functools
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

FAMILY = "convit"
LN_EPS = 1e-6


@dataclass(frozen=True)
class ConViTCfg:
    """Paper Table 1: heads (48 channels each) and depth; ``local_layers`` GPSA blocks come first."""

    num_heads: int
    depth: int = 12
    head_width: int = 48
    local_layers: int = 10
    locality_strength: float = 1.0
    patch_size: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    @property
    def embed_dim(self) -> int:
        return self.num_heads * self.head_width


# Paper Table 1; columns: ConViTCfg(num_heads, depth, head_width, local_layers).
CFGS = {
    "convit_tiny": ConViTCfg(4),
    "convit_small": ConViTCfg(9),
    "convit_base": ConViTCfg(16),
    # reduced config for the fast generic tests (not in the paper): 2 GPSA blocks, then 1 self-attention block
    "convit_test": ConViTCfg(4, depth=3, head_width=8, local_layers=2, drop_path_rate=0.0),
}


def relative_offsets(grid: int) -> torch.Tensor:
    """(N, N, 3) for N = grid^2 patches in row-major order: (dx, dy, dx^2 + dy^2) from query to key."""
    pos = torch.arange(grid)
    x = pos.repeat(grid)  # column of each patch
    y = pos.repeat_interleave(grid)  # row of each patch
    dx = (x[None, :] - x[:, None]).float()
    dy = (y[None, :] - y[:, None]).float()
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


class GPSA(nn.Module):
    """Gated positional self-attention over patch tokens (B, N, C) on a ``grid`` x ``grid`` patch map."""

    def __init__(self, dim: int, num_heads: int, grid: int, locality_strength: float = 1.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.locality_strength = locality_strength
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel", relative_offsets(grid), persistent=False)  # (N, N, 3)
        self.fused = False

    @torch.no_grad()
    def local_init(self) -> None:
        """v = identity; head h attends around offset (h mod k, h div k) - centre of a k x k kernel, k = sqrt(heads)."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        k = int(self.num_heads ** 0.5)
        centre = (k - 1) / 2 if k % 2 == 0 else k // 2
        for h1 in range(k):
            for h2 in range(k):
                head = h1 + k * h2
                self.pos_proj.weight[head, 2] = -1.0
                self.pos_proj.weight[head, 1] = 2.0 * (h1 - centre)
                self.pos_proj.weight[head, 0] = 2.0 * (h2 - centre)
        self.pos_proj.weight.mul_(self.locality_strength)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape  # (B, N, C) -> (B*h, N, hd)
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2).reshape(B * self.num_heads, N, -1)

    def _positional(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid(lambda) softmax(r W_pos): (h, N, N), 1 - sigmoid(lambda): (h, 1, 1)), from the parameters."""
        gate = torch.sigmoid(self.gating_param).reshape(-1, 1, 1)
        pos = self.pos_proj(self.rel).permute(2, 0, 1).softmax(dim=-1)  # (h, N, N)
        return gate * pos, 1.0 - gate

    @torch.no_grad()
    def fuse(self) -> None:
        """Freeze the input-independent positional attention into constants (deploy form)."""
        pos, content_scale = self._positional()
        self.register_buffer("pos_attn", pos.contiguous(), persistent=False)
        self.register_buffer("content_scale", content_scale.contiguous(), persistent=False)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._heads(self.q(x) * self.scale), self._heads(self.k(x)), self._heads(self.v(x))
        content = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (B*h, N, N)
        content = content.reshape(B, self.num_heads, N, N)
        if self.fused:
            attn = content * self.content_scale + self.pos_attn  # rows already sum to 1
        else:
            pos, content_scale = self._positional()
            attn = content * content_scale + pos
            attn = attn / attn.sum(dim=-1, keepdim=True)
        x = torch.bmm(attn.reshape(B * self.num_heads, N, N), v).reshape(B, self.num_heads, N, self.head_dim)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm block: GPSA (patch tokens) or self-attention (class token + patches), then the MLP."""

    def __init__(self, dim: int, num_heads: int, cfg: ConViTCfg, grid: int, gpsa: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LN_EPS)
        self.attn = GPSA(dim, num_heads, grid, cfg.locality_strength, cfg.drop_rate) if gpsa \
            else Attention(dim, num_heads, qkv_bias=False, proj_drop=cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act="gelu", drop=cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(ImageClassifier):
    """ConViT for ``resolution`` x ``resolution`` inputs (a multiple of the patch size)."""

    family = FAMILY

    def __init__(self, cfg: ConViTCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        if resolution % cfg.patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg, self.num_classes, self.resolution = cfg, num_classes, resolution
        self.preprocess = Preprocess(resolution=resolution)
        c = cfg.embed_dim
        self.grid = resolution // cfg.patch_size
        self.num_prefix = 0  # the position embedding covers the patches only
        self.patch_embed = nn.Conv2d(3, c, cfg.patch_size, stride=cfg.patch_size)  # (B, C, R/16, R/16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2, c))
        self.prefix = PrefixTokens()
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([Block(c, cfg.num_heads, cfg, self.grid, i < cfg.local_layers, r)
                                     for i, r in enumerate(rates)])
        self.norm = LayerNorm(c, eps=LN_EPS)
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(c, num_classes)
        init_weights_trunc_normal(self)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = self.pos_drop(x + self.pos_embed)
        for i, block in enumerate(self.blocks):
            if i == self.cfg.local_layers:  # the class token joins: (B, 1 + N, C)
                x = self.prefix(x, [self.cls_token])
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x[:, 0:1].flatten(1)))


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``convit_*`` (= facebookresearch/convit): ``patch_embed.proj`` and fused ``qk`` / ``qkv`` aside,
    the same names."""
    out = {k.replace("patch_embed.proj.", "patch_embed.", 1) if k.startswith("patch_embed.proj.") else k: v
           for k, v in state.items()}
    for i in range(len(model.blocks)):
        split_qkv(out, f"blocks.{i}.attn.", "qk")  # GPSA: q rows then k rows
        split_qkv(out, f"blocks.{i}.attn.")
    return out



register_layout(FAMILY, "timm", lambda state: "blocks.0.attn.qk.weight" in state, _from_timm)
register_checkpoint_fixup(FAMILY, functools.partial(
    resize_pos_embed_on_load, note="; GPSA's relative offsets follow the new grid"))

# Params: timm's convit_* (= the official code) to the unit. MACs: paper Table 1 counts the layers with weights
# only (ours without attention's matmuls: 1075 M, 5345 M, 16790 M; with them 1252 M, 5747 M, 17505 M); Ti's
# "1 G" is given to one digit, hence its wider tolerance. Top-1: Table 1 (300 epochs, 224 px).
_SRC = "d'Ascoli et al. 2021, Table 1; params: timm convit_*"
_PAPER = {
    "convit_tiny": PaperNumbers(5_710_512, 1000, 73.1, 224, _SRC + "; 1 G to one digit", macs_tolerance=0.1,
                                macs_counts_attention=False),
    "convit_small": PaperNumbers(27_777_322, 5400, 81.3, 224, _SRC, macs_tolerance=0.02,
                                 macs_counts_attention=False),
    "convit_base": PaperNumbers(86_540_040, 17000, 82.4, 224, _SRC, macs_tolerance=0.02,
                                macs_counts_attention=False),
}
register_family(FAMILY, ConViT, CFGS, _PAPER, default_resolution=224, min_resolution=96, resolution_step=16)
