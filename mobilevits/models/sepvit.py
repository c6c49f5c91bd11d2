"""SepViT-Lite: separable vision transformer (depthwise + pointwise self-attention over windows).

Paper: Li et al., "SepViT: Separable Vision Transformer", https://arxiv.org/abs/2203.15380. The
configuration and data flow follow the first author's code (liwei109/SepViT,
``classification/sepvit.py::SepViT_Lite``); at 224 this module computes exactly that network:

* overlapping patch embeddings (conv 7x7/s4, then 3x3/s2) each followed by LayerNorm;
* a conditional position encoding (depthwise 3x3 conv + identity) after the first block of a stage;
* separable blocks: depthwise self-attention (DSA) inside each window, including one learnable
  window token per window, then pointwise self-attention (PSA) among the windows, whose queries
  and keys come from the window tokens and whose values are the windows' features. Blocks with
  14x14 windows are the paper's grouped self-attention (2x2 neighbouring 7x7 windows merged);
* a block that has a single window at 224 is plain global MHSA (no window token, no PSA).

Resolutions. The official code is hard-wired to 224. Here every multiple of 32 from 96 to 512
works, and which blocks are windowed and which are global is fixed by the 224 network, so all
resolutions share one set of parameter names:

* a windowed block zero-pads its (normalised) map on the bottom/right to a multiple of its window
  size, runs DSA/PSA and crops back. Padded tokens are masked out as DSA keys and zeroed as PSA
  values, so they never change the real tokens. It keeps its window token and PSA even when the
  padded map is a single window (at small inputs); PSA over one window then returns
  ``2 * features``, the same formula as with many windows. A global block attends over the whole
  map at any resolution (no padding);
* the learnable window tokens, one per window, have shape (1, n_windows, 1, C) for the resolution
  the model is built at (e.g. stage 1: 8x8 windows at 224, 10x10 at 256). Weights made at another
  resolution load through the checkpoint filter, which resamples each block's token grid
  bicubically as a 2-D map and warns, since the network then differs from the trained one.

At 224 no block pads (56, 28, 14, 7 are multiples of 7 and 14), so no mask op is in the graph.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import Dropout, DropPath, LayerNorm, Mlp, split_qkv
from ..weights import WeightsError, register_checkpoint_fixup, register_layout, rename_prefixes

FAMILY = "sepvit"
REF_RESOLUTION = 224  # the official code computes its window counts for 224; it fixes the block kinds
MASK_VALUE = -1e4  # additive attention mask for padded keys: finite (fp16-safe), softmax weight exp(-1e4) = 0


@dataclass(frozen=True)
class SepViTCfg:
    dims: tuple[int, ...] = (32, 64, 128, 256)  # channels of the four stages
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    depths: tuple[int, ...] = (1, 2, 6, 2)
    window_sizes: tuple[tuple[int, ...], ...] = ((7,), (7, 14), (7, 14, 7, 14, 7, 14), (7, 7))  # per block
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    stem_kernel: int = 7  # first patch embedding: kernel 7, stride 4, padding 3
    drop_rate: float = 0.0  # after each patch embedding, in the MLPs and after the attention projection
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # official default 0 (the README trains SepViT-T with 0.2)


CFGS = {
    # SepViT_Lite of the official code (liwei109/SepViT; the paper's lite table was not available): widths,
    # heads and blocks of the four stages, and each block's window size (14: 2x2 grouped 7x7 windows).
    "sepvit_lite": SepViTCfg(dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8), depths=(1, 2, 6, 2),
                             window_sizes=((7,), (7, 14), (7, 14, 7, 14, 7, 14), (7, 7))),
    # Reduced config for the fast generic tests (not in the paper). At their minimum input (96) it has
    # padded multi-window blocks, a padded single-window block (stage 2, ws 14) and global blocks.
    "sepvit_tiny": SepViTCfg(dims=(16, 16, 32, 32),   num_heads=(1, 1, 2, 2), depths=(1, 2, 2, 1),
                             window_sizes=((7,), (7, 14), (7, 14), (7,))),
}


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``ws`` -> (B, n_h * n_w, ws * ws, C).

    Windows in row-major order, pixels in a window row-major (the official order). Done in two
    rank-4 steps instead of through the rank-6 (B, n_h, ws, n_w, ws, C), which Core ML rejects.
    """
    B, H, W, C = x.shape
    n_h, n_w = H // ws, W // ws
    # (B, H, W, C) = (B*n_h, ws, n_w, ws*C) -> swap the window-row and window-column axes
    x = x.reshape(B * n_h, ws, n_w, ws * C).transpose(1, 2)  # (B*n_h, n_w, ws, ws*C)
    return x.reshape(B, n_h * n_w, ws * ws, C)


def window_unpartition(x: torch.Tensor, ws: int, n_h: int, n_w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, n_h * n_w, ws * ws, C) -> (B, n_h * ws, n_w * ws, C)."""
    B, _, _, C = x.shape
    x = x.reshape(B * n_h, n_w, ws, ws * C).transpose(1, 2)  # (B*n_h, ws, n_w, ws*C)
    return x.reshape(B, n_h * ws, n_w * ws, C)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class SeparableAttention(nn.Module):
    """DSA inside each window then PSA among windows, or plain MHSA when the block is global.

    Works on a normalised map (B, H, W, C) for a fixed map side ``size`` and window side ``ws``.
    ``q``/``k``/``v`` replace the official fused ``DSA_qkv`` and ``psa_q``/``psa_k`` the fused
    ``PSA_qk`` (no split op in the graph); the checkpoint filter splits official weights.
    """

    def __init__(self, dim: int, num_heads: int, size: int, ws: int, windowed: bool, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.size = size
        self.windowed = windowed
        self.ws = ws if windowed else size
        self.grid = math.ceil(size / self.ws)  # windows per side
        self.pad = self.grid * self.ws - size  # zero rows/columns added on the bottom/right
        self.num_windows = self.grid ** 2
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        if windowed:
            self.wt_norm = LayerNorm(dim)  # official: nn.LayerNorm(dim), eps 1e-5
            self.wt_act = nn.GELU()
            self.psa_q = nn.Linear(dim, dim, bias=qkv_bias)
            self.psa_k = nn.Linear(dim, dim, bias=qkv_bias)
            self.psa_attn_drop = Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        valid = key_bias = None
        if self.pad:  # masks exist only for padded maps, so an unpadded block has no mask op
            valid = torch.zeros(self.grid * self.ws, self.grid * self.ws, 1)
            valid[:size, :size] = 1.0
            valid = window_partition(valid[None], self.ws)[0]  # (n_win, ws*ws, 1): 1 = real token
            # Additive bias on DSA logits, per key: (n_win, 1, 1 + ws*ws); the window token is always valid.
            key_bias = F.pad((1.0 - valid) * MASK_VALUE, (0, 0, 1, 0)).transpose(1, 2)
        self.valid: torch.Tensor | None
        self.key_bias: torch.Tensor | None
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("key_bias", key_bias, persistent=False)

    def _dsa_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, n, T, _ = t.shape
        # (B, n, T, C) -> (B, n, T, h, hd) -> (B, n, h, T, hd) -> (B*n*h, T, hd): 3-D so matmul is a bmm
        return t.reshape(B, n, T, self.num_heads, self.head_dim).transpose(2, 3).reshape(-1, T, self.head_dim)

    def dsa(self, x: torch.Tensor) -> torch.Tensor:
        """Per-window MHSA plus the inner shortcut: (B, n_win, T, C) -> (B, n_win, T, C)."""
        B, n, T, C = x.shape
        q = self._dsa_heads(self.q(x) * self.scale)
        k = self._dsa_heads(self.k(x))
        v = self._dsa_heads(self.v(x))
        attn = torch.bmm(q, k.transpose(1, 2))  # (B*n*h, T, T)
        if self.key_bias is not None:
            # (B, n, h*T, T) + (n, 1, T): padded keys get -1e4 in every head and query row
            attn = (attn.reshape(-1, n, self.num_heads * T, T) + self.key_bias).reshape(-1, T, T)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = torch.bmm(attn, v).reshape(B, n, self.num_heads, T, self.head_dim)
        return out.transpose(2, 3).reshape(B, n, T, C) + x

    def psa(self, x: torch.Tensor) -> torch.Tensor:
        """Attention among windows: (B, n_win, 1 + ws*ws, C) DSA output -> features (B, n_win, ws*ws, C)."""
        B, n, T, C = x.shape
        h, hd, L = self.num_heads, self.head_dim, T - 1
        # Tokens as (B, n, C), not (B, n, 1, C): litert-torch 0.10 fails on a linear over a rank-4 input
        # of shape (1, n, 1, C) ("'tfl.batch_matmul' op found invalid output rank, expected 3 but got 4").
        tokens = self.wt_act(self.wt_norm(x[:, :, :1, :].reshape(B, n, C)))  # (B, n, C); a select is not delegated
        feats = x[:, :, 1:, :]  # (B, n, L, C)
        # (B, n, C) -> (B, n, h, hd) -> (B, h, n, hd) -> (B*h, n, hd)
        q = (self.psa_q(tokens) * self.scale).reshape(B, n, h, hd).transpose(1, 2).reshape(-1, n, hd)
        k = self.psa_k(tokens).reshape(B, n, h, hd).transpose(1, 2).reshape(-1, n, hd)
        attn = self.psa_attn_drop(torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1))  # (B*h, n, n)
        # Values are the window features: per head, a window's value is its whole (L*hd) block.
        v = feats if self.valid is None else feats * self.valid  # padded positions contribute 0
        v = v.reshape(B, n, L, h, hd).permute(0, 3, 1, 2, 4).reshape(-1, n, L * hd)  # (B*h, n, L*hd)
        out = torch.bmm(attn, v).reshape(B, h, n, L, hd).permute(0, 2, 3, 1, 4)  # (B, n, L, h, hd)
        return out.reshape(B, n, L, C) + feats

    def forward(self, x: torch.Tensor, win_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) normalised map [+ normalised window tokens (1, n_win, 1, C)] -> (B, H, W, C)."""
        B, H, W, C = x.shape
        if not self.windowed:
            out = self.dsa(x.reshape(B, 1, H * W, C)).reshape(B, H, W, C)  # one window: plain MHSA
            return self.proj_drop(self.proj(out))
        if self.pad:
            x = F.pad(x, (0, 0, 0, self.pad, 0, self.pad))
        t = window_partition(x, self.ws)  # (B, n, ws*ws, C)
        # Prepend the window tokens without expanding them to the batch (a cat would need that, and
        # expand is not delegated): a zero slot in front of each window, plus the tokens zero-padded
        # to the window length, added with a batch broadcast.
        t = F.pad(t, (0, 0, 1, 0)) + F.pad(win_tokens, (0, 0, 0, self.ws * self.ws))  # (B, n, 1+ws*ws, C)
        out = self.psa(self.dsa(t))
        out = window_unpartition(out, self.ws, self.grid, self.grid)
        if self.pad:
            out = out[:, :H, :W, :]
        return self.proj_drop(self.proj(out))


class SepViTBlock(nn.Module):
    """x + DropPath(SeparableAttention(LN(x))), then x + DropPath(MLP(LN(x))) on a map (B, H, W, C).

    ``windowed`` blocks own ``win_tokens`` (1, n_windows, 1, C), zero-initialised; as in the
    official code they pass through ``norm1`` together with the window features.
    """

    def __init__(self, dim: int, num_heads: int, size: int, ws: int, windowed: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = SeparableAttention(dim, num_heads, size, ws, windowed, qkv_bias, attn_drop, drop)
        self.num_windows = self.attn.num_windows if windowed else 1
        self.win_tokens = nn.Parameter(torch.zeros(1, self.num_windows, 1, dim)) if windowed else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act="gelu", drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = None if self.win_tokens is None else self.norm1(self.win_tokens)
        x = x + self.drop_path(self.attn(self.norm1(x), tokens))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (``proj``) then LayerNorm; (B, C_in, H, W) -> (B, H/s, W/s, C)."""

    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, kernel, stride, kernel // 2)
        self.norm = LayerNorm(dim)  # official: default eps 1e-5 here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PosConv(nn.Module):
    """Conditional position encoding: depthwise 3x3 conv + identity, on a map (B, H, W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        return (self.proj(x) + x).permute(0, 2, 3, 1)


class SepViTStage(nn.Module):
    """Patch embedding -> first block -> position conv -> remaining blocks; returns (B, H, W, C)."""

    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int, blocks: list[SepViTBlock],
                 drop: float = 0.0) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chs, dim, kernel, stride)
        self.pos_drop = Dropout(drop)
        self.blocks = nn.ModuleList(blocks)
        self.pos_block = PosConv(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == 0:
                x = self.pos_block(x)
        return x


class SepViT(ImageClassifier):
    """SepViT: four stages of separable transformer blocks -> LayerNorm -> mean over tokens -> linear."""

    family = FAMILY

    def __init__(self, cfg: SepViTCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        n_stages = len(cfg.dims)
        if not (len(cfg.num_heads) == len(cfg.depths) == len(cfg.window_sizes) == n_stages):
            raise ValueError("dims, num_heads, depths and window_sizes need one entry per stage")
        if any(len(ws) != d for ws, d in zip(cfg.window_sizes, cfg.depths)):
            raise ValueError(f"window_sizes {cfg.window_sizes} need one entry per block (depths {cfg.depths})")
        self.cfg = cfg
        self.preprocess = Preprocess(resolution=resolution, crop_pct=0.9, interpolation="bicubic")  # timm _cfg
        total = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        size, ref, in_chs, j = resolution, REF_RESOLUTION, 3, 0
        stages = []
        for i, dim in enumerate(cfg.dims):
            kernel, stride = (cfg.stem_kernel, 4) if i == 0 else (3, 2)
            size, ref = math.ceil(size / stride), math.ceil(ref / stride)  # map sides here and at 224
            blocks = []
            for ws in cfg.window_sizes[i]:
                # The block kind comes from the 224 network: one window there = global attention.
                windowed = math.ceil(ref / ws) ** 2 > 1
                blocks.append(SepViTBlock(dim, cfg.num_heads[i], size, ws, windowed, cfg.mlp_ratio, cfg.qkv_bias,
                                          cfg.drop_rate, cfg.attn_drop_rate, dpr[j]))
                j += 1
            stages.append(SepViTStage(in_chs, dim, kernel, stride, blocks, cfg.drop_rate))
            in_chs = dim
        self.stages = nn.ModuleList(stages)
        self.num_features = cfg.dims[-1]
        self.norm = LayerNorm(self.num_features, eps=1e-6)
        self.head = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # As the official code: trunc-normal linears, conv N(0, 2 / fan_out) with fan_out per group.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (the window tokens, as officially)."""
        return {n for n, _ in self.named_parameters() if n.endswith("win_tokens")}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"{self.name or 'this SepViT'} was built for {self.resolution}x{self.resolution} "
                             f"inputs (window tokens are sized for it), got {tuple(x.shape[-2:])}; create the "
                             f"model with resolution={x.shape[-1]}")
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else x.permute(0, 3, 1, 2))  # stages take NCHW, return (B, H, W, C)
        return self.norm(x).permute(0, 3, 1, 2)  # (B, C, R/32, R/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3), keepdim=True).flatten(1))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _resize_window_tokens(tokens: torch.Tensor, n_windows: int) -> torch.Tensor:
    """(1, g*g, 1, C) -> (1, n_windows, 1, C), resampling the g x g window grid bicubically."""
    g, g_new, C = math.isqrt(tokens.shape[1]), math.isqrt(n_windows), tokens.shape[-1]
    if g * g != tokens.shape[1] or g_new * g_new != n_windows:
        raise WeightsError(f"window tokens {tuple(tokens.shape)} do not form a square grid")
    grid = tokens.reshape(1, g, g, C).permute(0, 3, 1, 2).float()  # (1, C, g, g)
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False, antialias=g_new < g)
    return grid.permute(0, 2, 3, 1).reshape(1, n_windows, 1, C).to(tokens.dtype)


def _from_official(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate official (liwei109/SepViT) key names: per-stage lists, fused DSA qkv and PSA qk."""
    mapping = {}
    for k in state:
        parts = k.split(".")
        if parts[0] == "patch_embeds":
            mapping[f"patch_embeds.{parts[1]}."] = f"stages.{parts[1]}.patch_embed."
        elif parts[0] == "pos_block":
            mapping[f"pos_block.{parts[1]}.proj.0."] = f"stages.{parts[1]}.pos_block.proj."
        elif parts[0] == "blocks":
            mapping[f"blocks.{parts[1]}."] = f"stages.{parts[1]}.blocks."
    state = rename_prefixes(state, mapping)
    state = {k.replace(".attn.DSA_qkv.", ".attn.qkv.").replace(".attn.win_tokens_norm.", ".attn.wt_norm."): v
             for k, v in state.items()}
    for prefix in {k[: -len("qkv.weight")] for k in state if k.endswith("attn.qkv.weight")}:
        split_qkv(state, prefix)
    for prefix in {k[: k.index("PSA_qk.")] for k in state if ".attn.PSA_qk." in k}:
        split_qkv(state, prefix, "PSA_qk", ("psa_q", "psa_k"))
    return state


def _resize_windows(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample window tokens made at another resolution (any layout), with a warning."""
    own = model.state_dict()
    resized = []
    for key, value in list(state.items()):
        if key.endswith("win_tokens") and key in own and value.shape != own[key].shape \
                and value.shape[::2] == own[key].shape[::2]:
            state[key] = _resize_window_tokens(value, own[key].shape[1])
            resized.append(f"{key.removesuffix('.win_tokens')} {math.isqrt(value.shape[1])}^2->"
                           f"{math.isqrt(own[key].shape[1])}^2")
    if resized:
        warnings.warn(
            f"SepViT window tokens were made for another resolution than {getattr(model, 'resolution', '?')} "
            f"and were resampled (bicubic, as 2-D window grids): {', '.join(resized)}. The model differs from "
            f"the one the weights were trained as; fine-tune at this resolution for best accuracy.",
            UserWarning, stacklevel=4,
        )
    return state


register_layout(FAMILY, "liwei109/SepViT", lambda state: any(k.startswith("patch_embeds.") for k in state),
                _from_official)
register_checkpoint_fixup(FAMILY, _resize_windows)


# Params and MACs are our measurements of the official code (docs/models.md#sepvit-lite); the paper's lite
# table was not available. MACs: 568 M is the torch flop counter on the official code, i.e. the same
# counter as mobilevits.count_macs and the same convention (convs, linears, matmuls only); we count
# 568.4 M. fvcore's 573 M adds 5 per LayerNorm element (963k elements = 4.8 M), which count_macs
# deliberately leaves out.
_PAPER = {
    "sepvit_lite": PaperNumbers(3_661_128, 568.0, 72.3, 224,
                                "Li et al. 2022 (top-1); params/MACs measured on liwei109/SepViT SepViT_Lite"),
}
register_family(FAMILY, SepViT, CFGS, _PAPER, default_resolution=224)
