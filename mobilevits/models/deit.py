"""DeiT: the plain vision transformer, trained data-efficiently, with an optional distillation token.

Paper: Touvron et al., "Training data-efficient image transformers & distillation through attention",
ICML 2021, https://arxiv.org/abs/2012.12877 (Table 1: the three sizes; Section 4: the distillation token).

* 16x16 patches embedded by one stride-16 convolution, a class token (and, distilled, a distillation token)
  in front, one learned absolute position embedding added to all tokens;
* ``depth`` pre-norm blocks: x + attention(LN(x)), x + MLP(LN(x)) with a 4x GELU MLP, LayerNorm eps 1e-6;
* a final LayerNorm; the class token feeds ``head``; distilled, the distillation token feeds ``head_dist``
  (trained on a teacher's hard labels) and ``forward`` returns the average of the two, as the paper evaluates.

Deployment choices (see ``layers.py``):

* the prefix tokens join in :class:`layers.PrefixTokens` (no ``expand``, which XNNPACK does not take; float
  under int8, where one per-tensor scale would round the class token to zero next to the patch tokens);
* attention is :class:`layers.Attention` (separate q, k, v; 3-D ``bmm``); checkpoints with a fused ``qkv``
  (timm's and the official repository's, which is built on timm) are split on load;
* the tokens are taken with step-1 slices, never ``select``.

At another resolution than the weights', the position embedding's patch grid is resized bicubically on load
(with a warning), as the paper does to fine-tune at 384 px.
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

FAMILY = "deit"
LN_EPS = 1e-6


@dataclass(frozen=True)
class DeiTCfg:
    """Paper Table 1: embedding dimension, heads and depth; ``distilled`` adds the distillation token."""

    embed_dim: int
    num_heads: int
    depth: int
    distilled: bool = False
    patch_size: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attention: str = "softmax"  # "relu" (ReluAttention) or "dw" (DwAttention): the softmax-free variants


ATTENTIONS = ("softmax", "relu", "dw")

# Paper Table 1 (and Table 5 for the distilled models); columns: DeiTCfg(embed_dim, num_heads, depth, distilled).
CFGS = {
    "deit_tiny": DeiTCfg(192, 3, 12),
    "deit_small": DeiTCfg(384, 6, 12),
    "deit_base": DeiTCfg(768, 12, 12),
    "deit_tiny_distilled": DeiTCfg(192, 3, 12, True),
    "deit_small_distilled": DeiTCfg(384, 6, 12, True),
    "deit_base_distilled": DeiTCfg(768, 12, 12, True),
    # softmax-free attention on the DeiT-Ti/S backbones (docs/models.md, "Softmax-free attention"; no paper
    # table: the definitions are ours, from the dynamic-convolution reading of attention)
    "deit_tiny_relu_attention": DeiTCfg(192, 3, 12, attention="relu"),
    "deit_small_relu_attention": DeiTCfg(384, 6, 12, attention="relu"),
    "deit_tiny_dw_attention": DeiTCfg(192, 3, 12, attention="dw"),
    "deit_small_dw_attention": DeiTCfg(384, 6, 12, attention="dw"),
    # reduced configs for the fast generic tests (not in the paper)
    "deit_test": DeiTCfg(32, 2, 1, True, drop_path_rate=0.0),
    "deit_test_relu_attention": DeiTCfg(32, 2, 1, drop_path_rate=0.0, attention="relu"),
    "deit_test_dw_attention": DeiTCfg(32, 2, 1, drop_path_rate=0.0, attention="dw"),
}


def relative_index(grid: int) -> torch.Tensor:
    """(grid, grid) long: ``q - j + grid - 1``, the row of a (2 grid - 1)-row table for query row (or column)
    ``q`` and key row (or column) ``j``."""
    pos = torch.arange(grid)
    return pos[:, None] - pos[None, :] + grid - 1


class _KeyNormalizedAttention(nn.Module):
    """Shared part of the softmax-free attentions: ``q``, ``k`` projections and the attention weights
    ``A = ReLU(LN_keys(Q K^T)) / N`` per head, (B*h, N, N). The LayerNorm over the N keys (no affine: N depends
    on the resolution) replaces softmax's normalisation; it makes the scores' scale irrelevant, so the usual
    1/sqrt(head_dim) is left out. ReLU keeps the weights non-negative, as softmax's are; 1/N keeps a row's sum
    near 0.4 whatever the token count (a unit-variance row after ReLU has mean about 0.4)."""

    def __init__(self, dim: int, num_heads: int, tokens: int, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.tokens = num_heads, dim // num_heads, tokens
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.key_norm = LayerNorm(tokens, eps=LN_EPS, elementwise_affine=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape  # (B, N, C) -> (B*h, N, hd)
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2).reshape(B * self.num_heads, N, -1)

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(q, k.transpose(1, 2))  # (B*h, N, N)
        return torch.relu(self.key_norm(scores)) * (1.0 / self.tokens)

    def _out(self, x: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
        # (B*h, N, hd) -> (B, N, C)
        x = x.reshape(batch, self.num_heads, tokens, self.head_dim).transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(x))


class ReluAttention(_KeyNormalizedAttention):
    """Softmax-free self-attention with relative positions on the values (docs/models.md, "relu_attention").

    ``out_i = sum_j A_ij (v_j + ry[qy_i - jy_j] + rx[qx_i - jx_j])`` over the patch tokens, with
    ``A = ReLU(LN_keys(Q K^T)) / N``; the prefix (class, distillation) tokens take no relative term. The 2-D
    offset table is factorised into a row table ``rel_y`` and a column table ``rel_x``, each (h, 2g - 1, hd):
    the weights summed over key columns (rows) pick row (column) offsets, so every product is a matmul.
    """

    def __init__(self, dim: int, num_heads: int, grid: int, num_prefix: int, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, num_prefix + grid * grid, proj_drop)
        self.grid, self.num_prefix = grid, num_prefix
        self.v = nn.Linear(dim, dim)
        self.rel_y = nn.Parameter(torch.zeros(num_heads, 2 * grid - 1, self.head_dim))
        self.rel_x = nn.Parameter(torch.zeros(num_heads, 2 * grid - 1, self.head_dim))
        self.register_buffer("rel_index", relative_index(grid), persistent=False)  # (g, g)
        self.register_buffer("ones_row", torch.ones(1, grid), persistent=False)  # sums g values by a linear
        self.fused = False

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(h*g, g, hd) each: for head h and query row (column) q, the entries for key rows (columns) j."""
        h, g = self.num_heads, self.grid
        return (self.rel_y[:, self.rel_index].reshape(h * g, g, self.head_dim),
                self.rel_x[:, self.rel_index].reshape(h * g, g, self.head_dim))

    @torch.no_grad()
    def fuse(self) -> None:
        """Freeze the gathered offset tables into constants (deploy form: no gather in the graph)."""
        table_y, table_x = self._tables()
        self.register_buffer("table_y", table_y.contiguous(), persistent=False)
        self.register_buffer("table_x", table_x.contiguous(), persistent=False)
        self.fused = True

    def _relative(self, attn: torch.Tensor, batch: int) -> torch.Tensor:
        """sum_j A_ij (ry[qy - jy] + rx[qx - jx]) for every token: (B*h, N, hd), zero for the prefix tokens."""
        h, g, P, B = self.num_heads, self.grid, self.num_prefix, batch  # noqa: N806
        table_y, table_x = (self.table_y, self.table_x) if self.fused else self._tables()
        a = attn[:, P:, P:].reshape(B * h, g * g, g, g)  # (B*h, query, key row, key column)
        by_row = torch.nn.functional.linear(a, self.ones_row).reshape(B, h * g, g, g)  # (B, h*qy, qx, jy)
        by_col = torch.nn.functional.linear(a.transpose(2, 3), self.ones_row)  # (B*h, q, jx, 1)
        by_col = by_col.reshape(B, h, g, g, g).permute(1, 3, 0, 2, 4).reshape(h * g, B * g, g)  # (h*qx, B*qy, jx)
        out_y = torch.bmm(by_row.transpose(0, 1).reshape(h * g, B * g, g), table_y)  # (h*qy, B*qx, hd)
        out_y = out_y.reshape(h, g, B, g, -1).permute(2, 0, 1, 3, 4)  # (B, h, qy, qx, hd)
        out_x = torch.bmm(by_col, table_x).reshape(h, g, B, g, -1).permute(2, 0, 3, 1, 4)  # (B, h, qy, qx, hd)
        rel = (out_y + out_x).reshape(B * h, g * g, -1)
        return torch.cat([rel[:, :P] * 0.0, rel], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = self._weights(q, k)
        return self._out(torch.bmm(attn, v) + self._relative(attn, B), B, N)


class DwAttention(_KeyNormalizedAttention):
    """Depth-wise self-attention (docs/models.md, "dw_attention"): no value projection; the key kernels are
    averaged with the softmax-free weights, and each query is multiplied by its averaged kernel element-wise,
    ``out_i = q_i * sum_j A_ij k_j`` per head, like a depth-wise (per-channel) dynamic 1x1 convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k = self._heads(self.q(x)), self._heads(self.k(x))
        return self._out(q * torch.bmm(self._weights(q, k), k), B, N)



class Block(nn.Module):
    """Pre-norm transformer block on tokens (B, N, C); ``attention`` one of :data:`ATTENTIONS`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, drop_path: float,
                 attention: str = "softmax", grid: int = 0, num_prefix: int = 1) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LN_EPS)
        if attention == "relu":
            self.attn = ReluAttention(dim, num_heads, grid, num_prefix, proj_drop=drop)
        elif attention == "dw":
            self.attn = DwAttention(dim, num_heads, num_prefix + grid * grid, proj_drop=drop)
        elif attention == "softmax":
            self.attn = Attention(dim, num_heads, qkv_bias=True, proj_drop=drop)
        else:
            raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act="gelu", drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class DeiT(ImageClassifier):
    """DeiT for ``resolution`` x ``resolution`` inputs (a multiple of the patch size).

    Distilled: ``head`` is trained on the labels and ``head_dist`` on a teacher's hard labels; ``forward``
    returns their average, in eval and (by default) in training; set ``distilled_training = True`` to get the
    pair ``(head, head_dist)`` in training mode instead.
    ``both_heads = True`` returns the pair in every mode.
    """

    family = FAMILY

    def __init__(self, cfg: DeiTCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        if resolution % cfg.patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg, self.num_classes, self.resolution = cfg, num_classes, resolution
        self.preprocess = Preprocess(resolution=resolution)
        self.distilled_training = False
        # both heads' logits in any mode: hard distillation of a QAT graph, exported from eval-mode code
        self.both_heads = False
        c = cfg.embed_dim
        self.grid = resolution // cfg.patch_size
        self.num_prefix = 2 if cfg.distilled else 1
        self.patch_embed = nn.Conv2d(3, c, cfg.patch_size, stride=cfg.patch_size)  # (B, C, R/16, R/16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c)) if cfg.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid ** 2, c))
        self.prefix = PrefixTokens()
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate, r, cfg.attention,
                                            self.grid, self.num_prefix) for r in rates])
        self.norm = LayerNorm(c, eps=LN_EPS)
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(c, num_classes)
        self.head_dist = nn.Linear(c, num_classes) if cfg.distilled else None
        init_weights_trunc_normal(self)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, ReluAttention):
                nn.init.trunc_normal_(m.rel_y, std=0.02)
                nn.init.trunc_normal_(m.rel_x, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C), N = (R/16)^2
        tokens = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        x = self.prefix(x, tokens, self.pos_embed)  # (B, prefix + N, C)
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.head_drop(x[:, 0:1].flatten(1)))  # the class token: (B, C) -> (B, classes)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(self.head_drop(x[:, 1:2].flatten(1)))
        if self.both_heads or (self.training and self.distilled_training):
            return logits, logits_dist
        return (logits + logits_dist) * 0.5


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``deit_*`` keys (the official repository builds on timm's VisionTransformer): the same names
    except the patch embedding's ``proj`` and the fused ``qkv``, which is split."""
    out = {k.replace("patch_embed.proj.", "patch_embed.", 1) if k.startswith("patch_embed.proj.") else k: v
           for k, v in state.items()}
    for i in range(len(model.blocks)):
        split_qkv(out, f"blocks.{i}.attn.")
    return out



register_layout(FAMILY, "timm", lambda state: "blocks.0.attn.qkv.weight" in state, _from_timm)
def _fit_resolution(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights made at another resolution: the position embedding resized (with a warning), and the relative
    offset tables of ``relu_attention`` (h, 2g - 1, hd) resampled linearly to the new grid (centre kept)."""
    resize_pos_embed_on_load(state, model)
    own = model.state_dict()
    for key, table in state.items():
        if key.endswith(("attn.rel_y", "attn.rel_x")) and key in own and table.shape != own[key].shape \
                and table.dim() == 3 and table.shape[::2] == own[key].shape[::2]:
            t = torch.nn.functional.interpolate(table.permute(0, 2, 1).float(), size=own[key].shape[1],
                                                mode="linear", align_corners=True)  # (h, hd, 2g - 1)
            state[key] = t.permute(0, 2, 1).to(table.dtype).contiguous()
    return state


register_checkpoint_fixup(FAMILY, _fit_resolution)

# Params: timm's deit_* (= the official code) to the unit. MACs (ours: convs, linears and attention matmuls):
# Table 1 gives none. DeiT-Ti is quoted as 1.3 G (MobileViT paper, Table 3, rounded to 0.1 G) and, distilled, as
# 1220 M (LeViT paper, Table 3): those two sources differ by 6.5% between them, so no count meets both within
# 3%; ours, 1254 M and 1261 M, sits between them (-3.6%, +3.4%). The small and base counts, 4.60 G and 17.56 G,
# match the 4.6 G and 17.6 G the literature quotes; LeViT's 4522 M for the distilled DeiT-S is 2.2% below ours.
_SRC = "Touvron et al. 2021, Tables 1 and 5; params: timm deit_*"
_PAPER = {
    "deit_tiny": PaperNumbers(5_717_416, 1300, 72.2, 224, _SRC + "; MACs: Mehta & Rastegari 2022, Table 3",
                              macs_tolerance=0.04),
    "deit_small": PaperNumbers(22_050_664, None, 79.8, 224, _SRC),
    "deit_base": PaperNumbers(86_567_656, None, 81.8, 224, _SRC),
    "deit_tiny_distilled": PaperNumbers(5_910_800, 1220, 74.5, 224, _SRC + "; MACs: Graham et al. 2021, Table 3",
                                        macs_tolerance=0.04),
    "deit_small_distilled": PaperNumbers(22_436_432, 4522, 81.2, 224,
                                         _SRC + "; MACs: Graham et al. 2021, Table 3", macs_tolerance=0.04),
    "deit_base_distilled": PaperNumbers(87_338_192, None, 83.4, 224, _SRC),
}
# The softmax-free variants have no paper table: params are the definition's own (a hand count in the tests),
# no MACs or accuracy are published to compare with.
_OURS = "definition: docs/models.md, softmax-free attention (Zhou, Loy & Dai 2023 describe, no table)"
_PAPER.update({name: PaperNumbers(params, None, None, 224, _OURS) for name, params in (
    ("deit_tiny_relu_attention", 5_841_832), ("deit_small_relu_attention", 22_299_496),
    ("deit_tiny_dw_attention", 5_272_744), ("deit_small_dw_attention", 20_276_584))})
register_family(FAMILY, DeiT, CFGS, _PAPER, default_resolution=224, min_resolution=96, resolution_step=16)
