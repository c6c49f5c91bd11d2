"""Mobile-Former (26M, 52M, 96M, 151M, 214M, 294M, 508M).

Paper: Chen et al., "Mobile-Former: Bridging MobileNet and Transformer", CVPR 2022,
https://arxiv.org/abs/2108.05895. The paper's tables are only partly retrievable, so the
architecture, the per-variant tables and every bias/norm placement follow the official code
(AAboys/MobileFormer, ``mobile_former.py``/``dna_blocks.py``), which reproduces the README's
parameter counts exactly (``docs/models.md#mobile-former``):

* a MobileNet-style CNN (the "Mobile") runs in parallel with M learnable global tokens of width d
  (the "Former"). Every block first lets the tokens read the block's input map (Mobile->Former
  cross-attention, 2 heads, keys = values = the raw map, a dynamic gate, post-LayerNorm), updates
  them by self-attention (query projection only, keys = values = the tokens) and an FFN (x2, GELU),
  runs the convolutions with dynamic ReLUs whose coefficients come from token 0, and finally lets
  every pixel read the tokens (Former->Mobile, additive, no output projection);
* one more Mobile->Former bridge after the last block; the head concatenates token 0 with the
  pooled features;
* 26M uses 4-group 1x1 convolutions with channel shuffles.

Deployment choices (ExecuTorch/XNNPACK, Core ML; see ``layers.py``):

* tokens are kept batch-free, shape (M, d), until the first bridge adds its (B, M, d) update to
  them: that broadcasting add gives them their batch dimension, with no ``expand``/``full`` op.
  The first bridge's queries are batch-free too, so it scores them against the map with a grouped
  1x1 convolution (one group per head) instead of a batched matmul. ``fuse()`` precomputes those
  queries and that bridge's gate from the (then constant) tokens, so the deployed convolution has
  a static weight like any other;
* every attention is a 3-D ``bmm`` with the softmax over the last dim (for Mobile->Former the
  scores are laid out (B*heads, M, HW)); token 0 is taken with a step-1 slice, never ``select``;
* the channel shuffle is a rank-5 reshape/transpose; LayerNorm is :class:`layers.LayerNorm`.

State dicts of the official code (its README links trained weights) load through a key filter
(``features.i.local_global.q`` -> ``blocks.i.to_former.q`` ...); the official ``nn.Embedding`` tokens
keep their key, ``tokens.weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import PaperNumbers, register_family
from ..base import ImageClassifier, Preprocess
from ..layers import (
    ConvNormAct,
    Dropout,
    DropPath,
    HardSigmoid,
    HardSwish,
    LayerNorm,
    Mlp,
    fuse_linear_bn,
    register_deploy_kind,
)
from ..weights import register_layout, rename_prefixes

FAMILY = "mobile_former"


@dataclass(frozen=True)
class BlockCfg:
    """One row of the official block table.

    ``kind``: ``"lite"`` (bneck-lite: depthwise with multiplier ``exp`` -> 1x1, no tokens),
    ``"mf"`` (stride-1 Mobile-Former block, hidden width ``round(in * exp)``) or ``"down"``
    (stride-2 Mobile-Former block: depthwise x``exp`` of the input -> 1x1 -> depthwise x``exp2``
    of the output -> 1x1, with an inner residual).
    """

    kind: str
    exp: float
    out: int
    exp2: float = 0.0  # "down" only
    stride: int = 1  # "lite" only; "mf" is always 1 and "down" always 2


def _lite(exp: float, out: int, stride: int = 1) -> BlockCfg:
    return BlockCfg("lite", exp, out, stride=stride)


def _mf(exp: float, out: int) -> BlockCfg:
    return BlockCfg("mf", exp, out)


def _down(exp: float, out: int, exp2: float = 4) -> BlockCfg:
    return BlockCfg("down", exp, out, exp2, stride=2)


@dataclass(frozen=True)
class MobileFormerCfg:
    blocks: tuple[BlockCfg, ...]
    stem: int
    num_tokens: int  # M
    token_dim: int  # d
    num_features: int  # width of the head's hidden FC
    groups: int = 1  # groups of every 1x1 conv (4 in 26M, with channel shuffles)
    head_exp: int = 6  # head 1x1 conv: last channels -> head_exp x last channels
    bridge_heads: int = 2
    former_heads: int = 4
    ffn_ratio: float = 2.0
    hyper_reduction: int = 4  # dynamic-ReLU coefficient MLP: d -> d / hyper_reduction -> 2C
    drop_rate: float = 0.2  # before the classifier (official README per variant)
    # on every residual branch, token and pixel, linear in depth (official runs use 0). Per sample; the
    # official code's token-side drop path drops whole tokens instead, as its tokens are (M, B, d).
    drop_path_rate: float = 0.0


# Official ``dna_blocks`` tables (docs/models.md#mobile-former-config). 52M and 26M differ only in the grouped
# 1x1 convs. One line per output stride (the stride-2 block first); columns: _lite(exp, out, stride=1),
# _mf(exp, out), _down(exp, out, exp2=4); see BlockCfg.
_B508 = (_lite(2, 24),
         _down(6, 40), _mf(3, 40),
         _down(6, 72), _mf(3, 72),
         _down(6, 128), _mf(4, 128), _mf(6, 176), _mf(6, 176),
         _down(6, 240), _mf(6, 240), _mf(6, 240))
_B294 = (_lite(2, 16),
         _down(6, 24), _mf(4, 24),
         _down(6, 48), _mf(4, 48),
         _down(6, 96), _mf(4, 96), _mf(6, 128), _mf(6, 128),
         _down(6, 192), _mf(6, 192), _mf(6, 192))
_B214 = (_lite(2, 12),
         _down(6, 20), _mf(3, 20),
         _down(6, 40), _mf(4, 40),
         _down(6, 80), _mf(4, 80), _mf(6, 112), _mf(6, 112),
         _down(6, 160), _mf(6, 160), _mf(6, 160))
_B151 = (_lite(2, 12),
         _down(6, 16), _mf(3, 16),
         _down(6, 32), _mf(3, 32),
         _down(6, 64), _mf(4, 64), _mf(6, 88), _mf(6, 88),
         _down(6, 128), _mf(6, 128), _mf(6, 128))
_B96 = (_lite(2, 12),
        _down(6, 16),
        _down(6, 32), _mf(3, 32),
        _down(6, 64), _mf(4, 64), _mf(6, 88),
        _down(6, 128), _mf(6, 128))
_B52 = (_lite(3, 12, stride=2), _mf(3, 12),
        _down(6, 24), _mf(3, 24),
        _down(6, 48), _mf(4, 48), _mf(6, 64),
        _down(6, 96), _mf(6, 96))
# Reduced block list for the fast generic tests (not in the paper); same columns. It starts like 26M/52M
# (a stride-2 lite block straight into a Mobile-Former block), the pattern that tripped litert-torch's int8
# layout pass.
_BTINY = (_lite(2, 8, stride=2), _mf(2, 8),
          _down(2, 16, 2), _mf(2, 16))

CFGS = {
    # docs/models.md#mobile-former-config (official code and README): stem width, M tokens of width d, head FC
    # width, groups of the 1x1 convs, classifier dropout.
    "mobile_former_508m": MobileFormerCfg(
        blocks=_B508, stem=24, num_tokens=6, token_dim=192, num_features=1920, groups=1, drop_rate=0.3),
    "mobile_former_294m": MobileFormerCfg(
        blocks=_B294, stem=16, num_tokens=6, token_dim=192, num_features=1920, groups=1, drop_rate=0.3),
    "mobile_former_214m": MobileFormerCfg(
        blocks=_B214, stem=12, num_tokens=6, token_dim=192, num_features=1600, groups=1, drop_rate=0.2),
    "mobile_former_151m": MobileFormerCfg(
        blocks=_B151, stem=12, num_tokens=6, token_dim=192, num_features=1280, groups=1, drop_rate=0.2),
    "mobile_former_96m": MobileFormerCfg(
        blocks=_B96,  stem=12, num_tokens=4, token_dim=128, num_features=1280, groups=1, drop_rate=0.2),
    "mobile_former_52m": MobileFormerCfg(
        blocks=_B52,  stem=8,  num_tokens=3, token_dim=128, num_features=1024, groups=1, drop_rate=0.2),
    "mobile_former_26m": MobileFormerCfg(
        blocks=_B52,  stem=8,  num_tokens=3, token_dim=128, num_features=1024, groups=4, drop_rate=0.1),
    # reduced config for the fast generic tests (not in the paper): grouped convs and shuffles on, so the
    # generic tests exercise them on a small graph too
    "mobile_former_tiny": MobileFormerCfg(
        blocks=_BTINY, stem=8, num_tokens=2, token_dim=16, num_features=64, groups=2, head_exp=2),
}


# --------------------------------------------------------------------------------------------
# Mobile-side pieces
# --------------------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle of (B, C, H, W): channel ``g * (C/groups) + i`` moves to ``i * groups + g``."""
    B, C, H, W = x.shape
    # rank 5 at most (Core ML's limit); the transpose lowers to one delegated permute
    return x.reshape(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class ChannelShuffle(nn.Module):
    """:func:`channel_shuffle` as a module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _shuffle(groups: int) -> nn.Module:
    return ChannelShuffle(groups) if groups > 1 else nn.Identity()


class DynamicReLU(nn.Module):
    """Dynamic ReLU driven by token 0: ``y = max(a1 * x, a2 * x)`` per channel.

    The coefficients come from the first global token: Linear d -> d/r, ReLU, Linear -> 2C,
    hard sigmoid h in [0, 1]; ``a1 = 2 h[:C]`` in [0, 2] and ``a2 = 2 h[C:] - 1`` in [-1, 1].

    ``form`` (set by :func:`mobilevits.layers.set_deploy_forms`, kind ``dyrelu``): ``"max"`` computes the
    maximum; ``"relu"`` computes the same function as ``a2 * x + relu((a1 - a2) * x)``, since
    max(u, v) = v + relu(u - v). Int8 backends have no int8 maximum (ExecuTorch's XNNPACK, LiteRT's delegate),
    while multiplications, additions and ReLU stay int8. ``a1 - a2`` is computed on the (B, C, 1, 1)
    coefficients, not on the feature map.
    """

    deploy_kind = "dyrelu"
    forms = ("max", "relu")

    def __init__(self, chs: int, token_dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.form = "max"
        self.chs = chs
        self.fc1 = nn.Linear(token_dim, token_dim // reduction)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(token_dim // reduction, 2 * chs)
        self.gate = HardSigmoid()

    def coefficients(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a1, a2), each (B, C, 1, 1), from tokens ``z`` (B, M, d)."""
        h = self.fc2(self.act(self.fc1(z[:, :1])))  # (B, 1, 2C): token 0 by slicing, no select
        # reshape before the (elementwise) gate: reshaping the gate's int8 output trips litert-torch's
        # same-scale check on tfl.reshape (measured on mobile_former_tiny int8)
        h = self.gate(h.reshape(-1, 2 * self.chs, 1, 1))
        return h[:, : self.chs] * 2.0, h[:, self.chs :] * 2.0 - 1.0

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.coefficients(z)
        if self.form == "relu":
            return x * a2 + F.relu(x * (a1 - a2))
        return torch.maximum(x * a1, x * a2)


register_deploy_kind(DynamicReLU.deploy_kind, DynamicReLU.forms)


class Bottleneck(nn.Module):
    """Mobile sub-block of a stride-1 block: grouped 1x1 -> DyReLU -> 3x3 dw -> DyReLU -> grouped 1x1 (linear)."""

    def __init__(self, in_chs: int, out_chs: int, hidden: int, token_dim: int, groups: int = 1,
                 hyper_reduction: int = 4) -> None:
        super().__init__()
        self.conv_pw = ConvNormAct(in_chs, hidden, 1, groups=groups, act=None)
        self.shuffle1 = _shuffle(groups)
        self.act1 = DynamicReLU(hidden, token_dim, hyper_reduction)
        self.conv_dw = ConvNormAct(hidden, hidden, 3, groups=hidden, act=None)
        self.act2 = DynamicReLU(hidden, token_dim, hyper_reduction)
        self.conv_pwl = ConvNormAct(hidden, out_chs, 1, groups=groups, act=None)
        self.shuffle2 = _shuffle(groups)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.shuffle1(self.conv_pw(x)), z)
        x = self.act2(self.conv_dw(x), z)
        return self.shuffle2(self.conv_pwl(x))


class DualDepthwise(nn.Module):
    """Mobile sub-block of a downsampling block.

    3x3 dw stride 2 (x e1) -> DyReLU -> grouped 1x1 (linear) = s -> 3x3 dw (x e2) -> DyReLU ->
    grouped 1x1 (linear), plus s. The depthwise convs have a channel multiplier, so the shuffles
    after them interleave the copies of each input channel (``groups`` = input channels).
    """

    def __init__(self, in_chs: int, out_chs: int, hidden1: int, hidden2: int, token_dim: int, groups: int = 1,
                 hyper_reduction: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw1 = ConvNormAct(in_chs, hidden1, 3, 2, groups=in_chs, act=None)
        self.shuffle1 = _shuffle(in_chs if groups > 1 else 1)
        self.act1 = DynamicReLU(hidden1, token_dim, hyper_reduction)
        self.conv_pw1 = ConvNormAct(hidden1, out_chs, 1, groups=groups, act=None)
        self.conv_dw2 = ConvNormAct(out_chs, hidden2, 3, groups=out_chs, act=None)
        self.shuffle2 = _shuffle(out_chs if groups > 1 else 1)
        self.act2 = DynamicReLU(hidden2, token_dim, hyper_reduction)
        self.conv_pw2 = ConvNormAct(hidden2, out_chs, 1, groups=groups, act=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = self.conv_pw1(self.act1(self.shuffle1(self.conv_dw1(x)), z))
        y = self.conv_pw2(self.act2(self.shuffle2(self.conv_dw2(s)), z))
        return s + self.drop_path(y)


class LiteBlock(nn.Module):
    """bneck-lite, the first block: 3x3 dw (x exp) + BN + ReLU6 -> 1x1 (linear); no token interaction."""

    def __init__(self, in_chs: int, out_chs: int, exp: float, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        hidden = int(in_chs * exp)
        self.conv_dw = ConvNormAct(in_chs, hidden, 3, stride, groups=in_chs, act="relu6")
        self.shuffle = _shuffle(in_chs if groups > 1 else 1)
        self.conv_pw = ConvNormAct(hidden, out_chs, 1, groups=groups, act=None)
        self.has_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv_pw(self.shuffle(self.conv_dw(x)))
        return (x + y if self.has_residual else y), z


# --------------------------------------------------------------------------------------------
# Token-side pieces
# --------------------------------------------------------------------------------------------


class GlobalTokens(nn.Module):
    """The M learnable global tokens, (M, d), initialised N(0, 1) (``nn.Embedding``'s key name and init)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self) -> torch.Tensor:
        return self.weight


class MobileToFormer(nn.Module):
    """Tokens gather from the map: cross-attention with keys = values = the raw map, dynamic gate, post-norm.

    ``z <- LN(z + proj(gate(z) * concat_heads(softmax_HW(q(z) x_h^T / sqrt(C/h)) x_h)))`` with
    ``gate(z) = 2 hsigmoid(Linear(z))``. Tokens ``z`` are (B, M, d), or (M, d) for the bridge with
    ``shared_tokens`` (the first one), which returns (B, M, d).
    """

    def __init__(self, chs: int, token_dim: int, num_heads: int = 2, drop_path: float = 0.0,
                 shared_tokens: GlobalTokens | None = None) -> None:
        super().__init__()
        if chs % num_heads:
            raise ValueError(f"channels {chs} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (chs // num_heads) ** -0.5
        self.q: nn.Linear | None = nn.Linear(token_dim, chs)
        self.gate: nn.Linear | None = nn.Linear(token_dim, chs)
        self.gate_act = HardSigmoid()
        self.proj = nn.Linear(chs, token_dim)
        self.norm = LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # A plain tuple so the tokens stay registered once, on the model; fuse() reads them here.
        self._shared_tokens = (shared_tokens,) if shared_tokens is not None else None
        # Set by fuse() on the shared-token bridge: its batch-free queries and gate, precomputed.
        self.register_buffer("q_folded", None)
        self.register_buffer("gate_folded", None)

    @property
    def shared(self) -> bool:
        return self._shared_tokens is not None

    def _query_conv_weight(self, z: torch.Tensor) -> torch.Tensor:
        """Batch-free queries (M, d) -> grouped 1x1 conv weight (h*M, C/h, 1, 1), softmax scale folded in."""
        if self.q_folded is not None:
            return self.q_folded
        M = z.shape[0]
        q = (self.q(z) * self.scale).reshape(M, self.num_heads, -1)  # (M, h, C/h)
        return q.transpose(0, 1).reshape(self.num_heads * M, -1, 1, 1)

    def _gate(self, z: torch.Tensor) -> torch.Tensor:
        if self.gate_folded is not None:
            return self.gate_folded
        return self.gate_act(self.gate(z)) * 2.0  # (M, C) or (B, M, C), in [0, 2]

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
        v = x.reshape(B * h, C // h, H * W)  # keys = values = the map, heads split channel-wise
        if self.shared:
            # (M, d) tokens: head g's scores are a 1x1 conv of its C/h channels with the M queries
            M = z.shape[0]
            attn = F.conv2d(x, self._query_conv_weight(z), groups=h).reshape(B * h, M, H * W)
        else:
            M = z.shape[1]
            q = (self.q(z) * self.scale).reshape(B, M, h, -1).transpose(1, 2).reshape(B * h, M, -1)
            attn = torch.bmm(q, v)  # (B*h, M, HW)
        attn = attn.softmax(dim=-1)  # over the pixels, the last dim
        # (B*h, C/h, HW) @ (B*h, HW, M): transposing the small attention map, not the feature map
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(B, C, M).transpose(1, 2)  # (B, M, C)
        out = self.proj(out * self._gate(z))  # (B, M, d)
        # For shared tokens this add broadcasts (M, d) + (B, M, d): the tokens get their batch dim here.
        return self.norm(z + self.drop_path(out))

    @torch.no_grad()
    def fuse(self) -> None:
        """Precompute the shared-token bridge's queries and gate (the tokens are constants at deploy time)."""
        if self.shared and self.q_folded is None:
            z = self._shared_tokens[0].weight
            self.q_folded = self._query_conv_weight(z).detach().clone()
            self.gate_folded = self._gate(z).detach().clone()
            # no longer used: drop them so they are not carried into exported programs as dead weights
            self.q = None
            self.gate = None


class Former(nn.Module):
    """Token self-attention (query projection only, keys = values = tokens) + FFN, both post-norm.

    ``z <- LN(z + proj(MHA(q(z), z, z)))``, then ``z <- LN(z + FFN(z))``; tokens (B, M, d).
    """

    def __init__(self, dim: int, num_heads: int = 4, ffn_ratio: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"token dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * ffn_ratio), act="gelu")
        self.norm2 = LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, M, d = t.shape
        # (B, M, d) -> (B*h, M, d/h): 3-D operands so attention is a plain bmm
        return t.reshape(B, M, self.num_heads, -1).transpose(1, 2).reshape(B * self.num_heads, M, -1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B, M, d = z.shape
        q = self._heads(self.q(z) * self.scale)
        kv = self._heads(z)
        attn = torch.bmm(q, kv.transpose(1, 2)).softmax(dim=-1)  # (B*h, M, M)
        out = torch.bmm(attn, kv).reshape(B, self.num_heads, M, -1).transpose(1, 2).reshape(B, M, d)
        z = self.norm1(z + self.drop_path(self.proj(out)))
        return self.norm2(z + self.mlp(z))


class FormerToMobile(nn.Module):
    """Pixels gather from the tokens: ``x <- x + concat_heads(softmax_M(x_h k_h(z)^T / sqrt(C/h)) v_h(z))``.

    Queries are the raw map (no projection), keys and values are projected tokens; no output
    projection or norm. Map (B, C, H, W), tokens (B, M, d).
    """

    def __init__(self, chs: int, token_dim: int, num_heads: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        if chs % num_heads:
            raise ValueError(f"channels {chs} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (chs // num_heads) ** -0.5
        self.k = nn.Linear(token_dim, chs)
        self.v = nn.Linear(token_dim, chs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        M = z.shape[1]
        h = self.num_heads
        q = x.reshape(B * h, C // h, H * W).transpose(1, 2)  # (B*h, HW, C/h)
        k = (self.k(z) * self.scale).transpose(1, 2).reshape(B * h, C // h, M)  # (B*h, C/h, M)
        attn = torch.bmm(q, k).softmax(dim=-1)  # (B*h, HW, M): softmax over the tokens, the last dim
        v_t = self.v(z).transpose(1, 2).reshape(B * h, C // h, M)  # (B*h, C/h, M)
        # (B*h, C/h, M) @ (B*h, M, HW) lands directly in (B, C, H, W) order
        out = torch.bmm(v_t, attn.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.drop_path(out)


class MobileFormerBlock(nn.Module):
    """Mobile->Former, Former, the Mobile sub-block (with DyReLUs from token 0), [+ identity], Former->Mobile."""

    def __init__(self, in_chs: int, cfg: BlockCfg, mcfg: MobileFormerCfg, drop_path: float = 0.0,
                 shared_tokens: GlobalTokens | None = None) -> None:
        super().__init__()
        d, g, r = mcfg.token_dim, mcfg.groups, mcfg.hyper_reduction
        self.to_former = MobileToFormer(in_chs, d, mcfg.bridge_heads, drop_path, shared_tokens)
        self.former = Former(d, mcfg.former_heads, mcfg.ffn_ratio, drop_path)
        if cfg.kind == "mf":
            self.mobile: nn.Module = Bottleneck(in_chs, cfg.out, round(in_chs * cfg.exp), d, g, r)
        else:
            self.mobile = DualDepthwise(in_chs, cfg.out, round(in_chs * cfg.exp), round(cfg.out * cfg.exp2), d, g, r,
                                        drop_path)
        self.to_mobile = FormerToMobile(cfg.out, d, mcfg.bridge_heads, drop_path)
        self.has_residual = cfg.kind == "mf" and in_chs == cfg.out
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.former(self.to_former(x, z))  # (B, M, d)
        y = self.mobile(x, z)
        if self.has_residual:
            y = x + self.drop_path(y)
        return self.to_mobile(y, z), z


class MergeHead(nn.Module):
    """[shuffle] grouped 1x1 conv (x6) + BN + ReLU6 -> pool -> h-swish -> concat token 0 -> FC + BN1d + h-swish
    -> dropout -> classifier."""

    def __init__(self, in_chs: int, token_dim: int, num_features: int, num_classes: int, exp: int = 6,
                 groups: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        hidden = in_chs * exp
        self.shuffle = _shuffle(groups)
        self.conv = ConvNormAct(in_chs, hidden, 1, groups=groups, act="relu6")
        self.pool_act = HardSwish()
        self.fc = nn.Linear(hidden + token_dim, num_features)
        self.bn: nn.Module = nn.BatchNorm1d(num_features)
        self.act = HardSwish()
        self.drop = Dropout(drop_rate)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.shuffle(x))
        x = self.pool_act(x.mean((2, 3), keepdim=True)).flatten(1)  # (B, hidden)
        x = torch.cat((x, z[:, :1].flatten(1)), dim=1)  # + token 0 -> (B, hidden + d)
        x = self.act(self.bn(self.fc(x)))
        return self.classifier(self.drop(x))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm1d):
            self.fc = fuse_linear_bn(self.fc, self.bn)
            self.bn = nn.Identity()


class MobileFormer(ImageClassifier):
    """Mobile-Former: stem -> [bneck-lite, Mobile-Former blocks] with M global tokens -> Mobile->Former -> head."""

    family = FAMILY

    def __init__(self, cfg: MobileFormerCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocess = Preprocess(resolution=resolution, crop_pct=0.875, interpolation="bilinear")
        self.tokens = GlobalTokens(cfg.num_tokens, cfg.token_dim)
        self.stem = ConvNormAct(3, cfg.stem, 3, 2, act="relu6")
        n = len(cfg.blocks)
        in_chs = cfg.stem
        blocks: list[nn.Module] = []
        shared: GlobalTokens | None = self.tokens  # handed to the first bridge, which adds the batch dim
        for i, b in enumerate(cfg.blocks):
            dpr = cfg.drop_path_rate * (i + 1) / n  # official schedule: block index + 1 over the block count
            if b.kind == "lite":
                blocks.append(LiteBlock(in_chs, b.out, b.exp, b.stride, cfg.groups))
            elif b.kind in ("mf", "down"):
                blocks.append(MobileFormerBlock(in_chs, b, cfg, dpr, shared))
                shared = None
            else:
                raise ValueError(f"unknown block kind {b.kind!r}; valid: 'lite', 'mf', 'down'")
            in_chs = b.out
        self.blocks = nn.ModuleList(blocks)
        self.to_former = MobileToFormer(in_chs, cfg.token_dim, cfg.bridge_heads, cfg.drop_path_rate, shared)
        self.num_features = cfg.num_features
        self.head = MergeHead(in_chs, cfg.token_dim, cfg.num_features, num_classes, cfg.head_exp, cfg.groups,
                              cfg.drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        # Official init: conv N(0, sqrt(2 / (k*k*C_out))), linear N(0, 0.01) with zero bias, norms (1, 0).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final map (B, C, R/32, R/32) and tokens (B, M, d) after the last Mobile->Former bridge."""
        x = self.stem(x)
        z = self.tokens()  # (M, d): batch-free until the first bridge
        for blk in self.blocks:
            x, z = blk(x, z)
        return x, self.to_former(x, z)

    def forward_head(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Logits from ``forward_features``' (map, tokens): the head needs token 0 as well as the map."""
        return self.head(*x)


def _official_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate the official AAboys/MobileFormer keys (``features.i.conv1.0``, ``local_global.q``...) to ours."""
    bridge_in = {"q.": "q.", "alpha.0.": "gate.", "proj.": "proj.", "layer_norm.": "norm."}
    mapping = {"stem.0.": "stem.conv.", "stem.1.": "stem.bn.",
               "classifier.conv.1.": "head.conv.conv.", "classifier.conv.2.": "head.conv.bn.",
               "classifier.fc.0.": "head.fc.", "classifier.fc.1.": "head.bn.",
               "classifier.classifier.1.": "head.classifier."}
    mapping.update({f"local_global.{s}": f"to_former.{d}" for s, d in bridge_in.items()})
    for i, b in enumerate(model.cfg.blocks):
        src, dst = f"features.{i}.", f"blocks.{i}."
        if b.kind == "lite":  # Sequential(dw, bn, relu6, shuffle, pw, bn)
            pairs = {"conv.0.": "conv_dw.conv.", "conv.1.": "conv_dw.bn.", "conv.4.": "conv_pw.conv.",
                     "conv.5.": "conv_pw.bn."}
        else:
            if b.kind == "mf":
                convs = ("conv_pw", "conv_dw", "conv_pwl")
                hypers = {"hyper1.": "act1.", "hyper2.": "act2."}
            else:
                convs = ("conv_dw1", "conv_pw1", "conv_dw2", "conv_pw2")
                hypers = {"hyper1.": "act1.", "hyper3.": "act2."}
            pairs = {}
            for j, name in enumerate(convs, start=1):
                pairs[f"conv{j}.0."] = f"mobile.{name}.conv."
                pairs[f"conv{j}.1."] = f"mobile.{name}.bn."
            for h, a in hypers.items():
                pairs[f"{h}hyper.0."] = f"mobile.{a}fc1."
                pairs[f"{h}hyper.2."] = f"mobile.{a}fc2."
            pairs.update({f"local_global.{s}": f"to_former.{d}" for s, d in bridge_in.items()})
            pairs.update({"global_block.q.": "former.q.", "global_block.channel_mlp.": "former.proj.",
                          "global_block.layer_norm.": "former.norm1.", "global_block.ffn.0.": "former.mlp.fc1.",
                          "global_block.ffn.2.": "former.mlp.fc2.", "global_block.ffn_norm.": "former.norm2.",
                          "global_local.k.": "to_mobile.k.", "global_local.proj.": "to_mobile.v."})
        mapping.update({src + s: dst + d for s, d in pairs.items()})
    return rename_prefixes(state, mapping)


register_layout(FAMILY, "AAboys/MobileFormer", lambda state: any(k.startswith("features.") for k in state),
                _official_filter)


# The README's MAdds also count BatchNorm, two ops (scale, shift) per output element as fvcore does, so
# these entries set macs_counts_norms: count_macs(count_norms=True) gives 510.4 / 295.2 / 215.0 / 151.8 /
# 96.2 / 51.7 / 26.0 M (within 0.6%). Without norms (our default convention, BN folds away when deployed)
# it finds 1.9% (508M) to 9.4% (26M) fewer, the fixed-size BN share being larger in small variants.
_SRC = "AAboys/MobileFormer README (= paper): params, MAdds incl. BatchNorm, top-1"
_PAPER = {  # params exact (official code), MAdds (M) at 224 incl. BatchNorm, top-1
    "mobile_former_508m": PaperNumbers(13_976_976, 508, 79.3, 224, _SRC, macs_counts_norms=True),
    "mobile_former_294m": PaperNumbers(11_422_648, 294, 77.9, 224, _SRC, macs_counts_norms=True),
    "mobile_former_214m": PaperNumbers(9_425_920, 214, 76.7, 224, _SRC, macs_counts_norms=True),
    "mobile_former_151m": PaperNumbers(7_595_828, 151, 75.2, 224, _SRC, macs_counts_norms=True),
    "mobile_former_96m": PaperNumbers(4_585_252, 96, 72.8, 224, _SRC, macs_counts_norms=True),
    "mobile_former_52m": PaperNumbers(3_469_092, 52, 68.7, 224, _SRC, macs_counts_norms=True),
    "mobile_former_26m": PaperNumbers(3_232_788, 26, 64.0, 224, _SRC, macs_counts_norms=True),
}
register_family(FAMILY, MobileFormer, CFGS, _PAPER, default_resolution=224)
