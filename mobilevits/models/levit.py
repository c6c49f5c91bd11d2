"""LeViT (128S, 128, 192, 256, 384).

Paper: Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
ICCV 2021, https://arxiv.org/abs/2104.01136 (Table 2 for the stage configs, Table 3 for the numbers).
Widths, the per-head q/k/v layout and the attention-bias indexing follow the official code (and
timm's ``levit_*`` port of it), so timm checkpoints load and give the same outputs.

Deployment choices (see ``docs/models.md#levit`` and the ExecuTorch notes in ``layers.py``):

* q, k and v are separate Linear+BN projections, so no split of a fused ``qkv`` reaches a graph;
  timm's fused, per-head-interleaved ``qkv``/``kv`` weights are split on load.
* Attention runs as 3-D ``bmm`` on (B*heads, N, d) tensors.
* The attention bias is a learnable table per head, gathered with an index while training. In eval
  mode a dense (heads, N_q, N_k) copy, computed when the module switches to eval, after loading
  weights and in ``fuse()``, is used instead, so exported graphs hold a constant and no gather.
  Edit the tables in place in eval mode (``rerandomize_`` does) and you must call ``.eval()`` again.
  The dense copies grow with the token count squared: 1.8 MB for levit_128s at 224, 48 MB at 512.
* The shrink blocks subsample queries with a depthwise 1x1 stride-2 convolution of unit weights,
  which picks exactly the tokens ``x[:, ::2, ::2]`` would, without a step-2 slice or a strided
  1x1 pool (see :func:`subsample_tokens`).
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
from ..layers import ConvNormAct, Dropout, DropPath, HardSwish, LinearNorm, conv_out, fuse_bn_linear
from ..weights import register_checkpoint_fixup, register_layout

FAMILY = "levit"


@dataclass(frozen=True)
class LeViTCfg:
    embed_dims: tuple[int, int, int]  # channels C of the three stages
    num_heads: tuple[int, int, int]  # attention heads of the stage blocks
    depths: tuple[int, int, int]  # attention+MLP blocks per stage
    key_dim: int  # D: query/key width per head (also sets the shrink heads, C_in / D)
    attn_ratio: float = 2.0  # value width / D in the stage blocks
    mlp_ratio: float = 2.0
    down_attn_ratio: float = 4.0  # value width / D in the shrink attention
    down_mlp_ratio: float = 2.0
    drop_rate: float = 0.0  # before each classifier
    drop_path_rate: float = 0.0  # the same rate on every residual branch, as in the official code


CFGS = {
    # Paper Table 2: widths C and heads N of the three stages, attention+MLP blocks per stage, key width D.
    "levit_128s": LeViTCfg(embed_dims=(128, 256, 384), num_heads=(4, 6, 8),  depths=(2, 3, 4), key_dim=16),
    "levit_128":  LeViTCfg(embed_dims=(128, 256, 384), num_heads=(4, 8, 12), depths=(4, 4, 4), key_dim=16),
    "levit_192":  LeViTCfg(embed_dims=(192, 288, 384), num_heads=(3, 5, 6),  depths=(4, 4, 4), key_dim=32),
    "levit_256":  LeViTCfg(embed_dims=(256, 384, 512), num_heads=(4, 6, 8),  depths=(4, 4, 4), key_dim=32),
    "levit_384":  LeViTCfg(embed_dims=(384, 512, 768), num_heads=(6, 9, 12), depths=(4, 4, 4), key_dim=32,
                           drop_path_rate=0.1),
    # reduced config for the fast generic tests (not in the paper)
    "levit_tiny": LeViTCfg(embed_dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=8),
}


def attention_bias_index(res: int, stride: int = 1) -> torch.Tensor:
    """Table index (N_q, N_k) for queries on the stride-subsampled grid and keys on the res x res grid.

    Query (i, j) sits at pixel (stride*i, stride*j); for key (a, b) the entry is
    ``|stride*i - a| * res + |stride*j - b|``, i.e. the table is a res x res map over (|d_row|, |d_col|).
    """
    k = torch.arange(res)
    q = torch.arange(0, res, stride)
    d = (q[:, None] - k[None, :]).abs()  # (res_q, res): |offset| along one axis
    idx = d[:, None, :, None] * res + d[None, :, None, :]  # (i, j, a, b)
    return idx.reshape(len(q) ** 2, res * res)


def subsample_tokens(x: torch.Tensor, res: int, ones: torch.Tensor) -> torch.Tensor:
    """Tokens (B, res*res, C) of a row-major grid -> the tokens at even rows and columns (B, ceil(res/2)^2, C).

    Equals ``x.reshape(B, res, res, C)[:, ::2, ::2]`` (14 -> 7, 7 -> 4). Written as a depthwise 1x1
    convolution of stride 2 with unit weights ``ones`` (C, 1, 1, 1), the one form every target
    delegates: ExecuTorch's XNNPACK takes no step-2 slice; LiteRT's XNNPACK takes no 1x1 stride-2
    pool; a zero pad to an even side fails in ExecuTorch's quantised XNNPACK ("Failed to create
    StaticConstantPad node"), and a concat of the odd row breaks its quantised slices. The unit
    weights are exact in int8 (per-channel scale 1/127), and the cost is C MACs per output token.
    """
    B, N, C = x.shape
    m = x.transpose(1, 2).reshape(B, C, res, res)
    m = F.conv2d(m, ones, stride=2, groups=C)  # (B, C, ceil(res/2), ceil(res/2))
    return m.flatten(2).transpose(1, 2)


def _refresh_after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.refresh_attention_bias()


class BiasedAttention(nn.Module):
    """Base of LeViT's two attentions: multi-head attention with a learnable relative-position bias.

    ``attention_biases`` (heads, res*res) holds one scalar per head and offset (|d_row|, |d_col|) on the
    key grid (res x res); ``attention_bias_idxs`` (N_q, N_k) says which entry each query/key pair uses
    (timm's layout). Training gathers with it; eval mode adds ``attention_bias_dense`` (heads, N_q, N_k),
    the same gather done once: on switching to eval, after loading weights and in ``fuse()``. Both
    buffers are derived, so neither is saved in state dicts. Subclasses define ``q``, ``k``, ``v``, ``proj``.
    """

    def __init__(self, num_heads: int, key_dim: int, val_dim: int, res: int, stride: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = val_dim
        self.scale = key_dim ** -0.5
        self.res = res  # side of the key grid
        self.stride = stride  # query grid = key grid subsampled by this
        idx = attention_bias_index(res, stride)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, res * res))
        self.register_buffer("attention_bias_idxs", idx, persistent=False)
        self.register_buffer("attention_bias_dense", torch.zeros(num_heads, *idx.shape), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _bias_index(self) -> torch.Tensor:
        idx = self._buffers.get("attention_bias_idxs")
        if idx is None:  # released by fuse()
            idx = attention_bias_index(self.res, self.stride).to(self.attention_biases.device)
        return idx

    def gathered_attention_bias(self) -> torch.Tensor:
        """The bias (heads, N_q, N_k) gathered from the table: differentiable, used in training."""
        return self.attention_biases[:, self._bias_index()]

    @torch.no_grad()
    def refresh_attention_bias(self) -> None:
        """Recompute the eval-mode dense bias from the table (in place, so the buffer object stays).

        Called automatically by ``eval()``, ``load_state_dict`` and ``fuse()``; call it (or ``eval()``)
        yourself after editing ``attention_biases`` in place while in eval mode.
        """
        self.attention_bias_dense.copy_(self.gathered_attention_bias())

    def train(self, mode: bool = True) -> BiasedAttention:
        super().train(mode)
        if not mode:
            self.refresh_attention_bias()
        return self

    @torch.no_grad()
    def fuse(self) -> None:
        """Deploy form: precompute the dense bias, fold the scale D^-0.5 into q, release the index buffer.

        Exporters serialise every buffer, used or not (ExecuTorch does): the int64 index is 0.76 MB for
        levit_128s at 224 and 21 MB at 512, and an eval graph never reads it. Training recomputes it.
        """
        self.refresh_attention_bias()
        self._buffers.pop("attention_bias_idxs", None)
        if self.scale != 1.0:
            self.q.fuse()
            self.q.linear.weight.mul_(self.scale)
            self.q.linear.bias.mul_(self.scale)
            self.scale = 1.0

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        # (B, N, h*d) -> (B, h, N, d) -> (B*h, N, d): 3-D operands keep matmul a plain bmm.
        return t.reshape(B, N, self.num_heads, -1).transpose(1, 2).reshape(B * self.num_heads, N, -1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, N_q, h*D), k (B, N_k, h*D), v (B, N_k, h*Dv) -> (B, N_q, h*Dv)."""
        B, Nq, _ = q.shape
        if self.scale != 1.0:  # 1.0 once fuse() has folded it into q
            q = q * self.scale
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        attn = torch.bmm(q, k.transpose(1, 2))  # (B*h, N_q, N_k)
        # Training: gather from the table (differentiable). Eval/export: the precomputed constant.
        bias = self.gathered_attention_bias() if self.training else self.attention_bias_dense
        attn = (attn.reshape(B, self.num_heads, Nq, -1) + bias).reshape(B * self.num_heads, Nq, -1)
        x = torch.bmm(attn.softmax(dim=-1), v)  # (B*h, N_q, Dv)
        return x.reshape(B, self.num_heads, Nq, self.val_dim).transpose(1, 2).reshape(B, Nq, -1)


class Attention(BiasedAttention):
    """LeViT self-attention on a res x res token grid: q, k (D per head), v (attn_ratio*D) -> hswish -> proj."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, res: int) -> None:
        val_dim = int(attn_ratio * key_dim)
        super().__init__(num_heads, key_dim, val_dim, res, stride=1)
        self.q = LinearNorm(dim, num_heads * key_dim)
        self.k = LinearNorm(dim, num_heads * key_dim)
        self.v = LinearNorm(dim, num_heads * val_dim)
        self.act = HardSwish()
        self.proj = LinearNorm(num_heads * val_dim, dim, bn_weight_init=0.0)  # residual branch starts at 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self._attend(self.q(x), self.k(x), self.v(x))))  # (B, N, C)


class AttentionDownsample(BiasedAttention):
    """Shrink attention: queries from every other token (res -> ceil(res/2)), keys/values from all tokens.

    Heads = C_in / D, value width 4D, output width C_out; no residual around it.
    """

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, attn_ratio: float, res: int) -> None:
        val_dim = int(attn_ratio * key_dim)
        super().__init__(num_heads, key_dim, val_dim, res, stride=2)
        self.q = LinearNorm(in_dim, num_heads * key_dim)
        self.k = LinearNorm(in_dim, num_heads * key_dim)
        self.v = LinearNorm(in_dim, num_heads * val_dim)
        self.act = HardSwish()
        self.proj = LinearNorm(num_heads * val_dim, out_dim)
        self.subsample_weight: torch.Tensor
        self.register_buffer("subsample_weight", torch.ones(in_dim, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(subsample_tokens(x, self.res, self.subsample_weight))  # (B, N/4, h*D)
        return self.proj(self.act(self._attend(q, self.k(x), self.v(x))))  # (B, N/4, C_out)


class LeViTMlp(nn.Module):
    """Linear+BN (C -> hidden) -> hswish -> Linear+BN (hidden -> C, BN weight starting at 0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = LinearNorm(dim, hidden)
        self.act = HardSwish()
        self.ln2 = LinearNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.act(self.ln1(x)))


class LeViTBlock(nn.Module):
    """x + attn(x), then x + mlp(x), on tokens (B, N, C)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, mlp_ratio: float, res: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio, res)
        self.mlp = LeViTMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class LeViTDownsample(nn.Module):
    """Shrink attention (no residual, res -> ceil(res/2), C_in -> C_out), then a residual MLP."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, attn_ratio: float, mlp_ratio: float, res: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn_downsample = AttentionDownsample(in_dim, out_dim, key_dim, in_dim // key_dim, attn_ratio, res)
        self.mlp = LeViTMlp(out_dim, int(out_dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_downsample(x)
        return x + self.drop_path(self.mlp(x))


class LeViTStage(nn.Module):
    """[shrink block] -> blocks; tokens (B, N, C)."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NormLinear(nn.Module):
    """BatchNorm1d -> dropout -> Linear, LeViT's classifier; ``fuse()`` folds the BN into the Linear."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm1d(in_features)
        self.drop = Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm1d):
            self.linear = fuse_bn_linear(self.bn, self.linear)
            self.bn = nn.Identity()


class LeViT(ImageClassifier):
    """LeViT: conv stem (stride 16) -> 3 attention stages joined by shrink blocks -> mean -> two heads.

    ``head`` is trained on the labels and ``head_dist`` on a teacher's hard labels (DeiT-style
    distillation). ``forward`` returns their average, in eval and (by default) in training; set
    ``distilled_training = True`` to get the pair ``(head, head_dist)`` in training mode instead.
    ``both_heads = True`` returns the pair in every mode.
    """

    family = FAMILY

    def __init__(self, cfg: LeViTCfg, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        self.cfg = cfg
        # The official eval transform (DeiT's: resize 256/224, bicubic); timm lists crop 0.9.
        self.preprocess = Preprocess(resolution=resolution, crop_pct=0.875, interpolation="bicubic")
        self.distilled_training = False
        # both heads' logits in any mode: hard distillation of a QAT graph, exported from eval-mode code
        self.both_heads = False
        c = cfg.embed_dims
        # Patch stem: 4 x (conv3x3 s2 + BN), hswish between: 3 -> C/8 -> C/4 -> C/2 -> C, stride 16.
        chs = (3, c[0] // 8, c[0] // 4, c[0] // 2, c[0])
        self.stem = nn.Sequential(*[
            ConvNormAct(chs[i], chs[i + 1], 3, 2, act="hswish" if i < 3 else None) for i in range(4)
        ])
        res = resolution
        for _ in range(4):
            res = conv_out(res, 2)
        dp = cfg.drop_path_rate
        stages = []
        for i in range(3):
            down: nn.Module = nn.Identity()
            if i > 0:
                down = LeViTDownsample(c[i - 1], c[i], cfg.key_dim, cfg.down_attn_ratio, cfg.down_mlp_ratio, res, dp)
                res = (res - 1) // 2 + 1
            blocks = [LeViTBlock(c[i], cfg.key_dim, cfg.num_heads[i], cfg.attn_ratio, cfg.mlp_ratio, res, dp)
                      for _ in range(cfg.depths[i])]
            stages.append(LeViTStage(down, blocks))
        self.stages = nn.Sequential(*stages)
        self.final_res = res
        self.num_features = c[2]
        self.head = NormLinear(c[2], num_classes, cfg.drop_rate)
        self.head_dist = NormLinear(c[2], num_classes, cfg.drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C0, R/16, R/16)
        B, C, H, W = x.shape
        x = self.stages(x.flatten(2).transpose(1, 2))  # tokens (B, N, C) through the stages
        return x.transpose(1, 2).reshape(B, -1, self.final_res, self.final_res)  # (B, C2, r, r)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # Token mean as a 4-D mean over (2, 3): the form XNNPACK takes.
        x = x.mean((2, 3), keepdim=True).flatten(1)  # (B, C2)
        logits, logits_dist = self.head(x), self.head_dist(x)
        if self.both_heads or (self.training and self.distilled_training):
            return logits, logits_dist
        return (logits + logits_dist) * 0.5  # a float scalar: an int divisor exports as a cast outside XNNPACK


# --------------------------------------------------------------------------------------------
# Checkpoints: timm key names, and attention-bias tables made at another resolution
# --------------------------------------------------------------------------------------------


def _split_rows(state: dict[str, torch.Tensor], src: str, dsts: dict[str, int], heads: int) -> None:
    """In place: split ``{src}.linear.weight`` and ``{src}.bn.*`` (rows interleaved per head) into ``dsts``.

    timm's fused projection has output rows (heads, sum(widths)) with each head's [q | k | v] (or
    [k | v]) side by side; ``dsts`` maps our module prefixes to their per-head widths, in that order.
    """
    for kind in ("linear.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        key = f"{src}.{kind}"
        if key not in state:
            continue
        t = state[key]
        if t.shape[0] != heads * sum(dsts.values()):
            return  # another variant's projection: left whole, so the strict load names it
        del state[key]
        per_head = t.reshape(heads, -1, *t.shape[1:])  # (heads, sum(widths), [C_in])
        for (dst, part) in zip(dsts, per_head.split(list(dsts.values()), dim=1)):
            state[f"{dst}.{kind}"] = part.reshape(-1, *t.shape[1:]).contiguous()
    key = f"{src}.bn.num_batches_tracked"
    if key in state:
        n = state.pop(key)
        for dst in dsts:
            state[f"{dst}.bn.num_batches_tracked"] = n.clone()


def _split_fused(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """In place: split fused ``qkv`` (stage blocks) and ``kv`` (shrink blocks) projections into q, k, v."""
    for name, module in model.named_modules():
        if isinstance(module, Attention) and f"{name}.qkv.linear.weight" in state:
            d, dv = module.key_dim, module.val_dim
            _split_rows(state, f"{name}.qkv", {f"{name}.q": d, f"{name}.k": d, f"{name}.v": dv}, module.num_heads)
        elif isinstance(module, AttentionDownsample) and f"{name}.kv.linear.weight" in state:
            d, dv = module.key_dim, module.val_dim
            _split_rows(state, f"{name}.kv", {f"{name}.k": d, f"{name}.v": dv}, module.num_heads)
    return state


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename timm ``levit_*`` (and ``levit_conv_*``) keys to ours and split the fused ``qkv``/``kv`` projections."""
    out = {}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):  # derived; old checkpoints saved it
            continue
        if key.startswith("stem.conv"):  # stem.conv{i}.{linear,bn} -> stem.{i-1}.{conv,bn}
            i, rest = key[len("stem.conv"):].split(".", 1)
            key = f"stem.{int(i) - 1}." + ("conv." + rest[len("linear."):] if rest.startswith("linear.") else rest)
        key = key.replace(".proj.ln.", ".proj.").replace(".q.ln.", ".q.")
        if value.ndim == 4 and not key.startswith("stem."):  # levit_conv_*: 1x1 convs (out, in, 1, 1)
            value = value.flatten(1)
        out[key] = value
    return _split_fused(out, model)


def _identity_bn(state: dict[str, torch.Tensor], prefix: str, bias: torch.Tensor, eps: float = 1e-5) -> None:
    """In place: a BatchNorm (default eps, as every LeViT norm) that only adds ``bias``: a fused checkpoint's bias.

    running_var = 1 - eps makes the BN scale 1 / sqrt(var + eps) = 1 to within one rounding (< 1e-7).
    """
    n = bias.shape[0]
    # fp32 whatever the checkpoint's dtype: 1 - eps in fp16 rounds to 1, a 5e-6 error in every layer
    state[f"{prefix}.weight"] = torch.ones(n)
    state[f"{prefix}.bias"] = bias.float()
    state[f"{prefix}.running_mean"] = torch.zeros(n)
    state[f"{prefix}.running_var"] = torch.full((n,), 1.0 - eps)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def _official_targets(model: nn.Module) -> list[tuple[str, str]]:
    """Our module for each entry of the official code's flat ``blocks`` list, in its order.

    The official model is one Sequential: per stage, (attention, MLP) residual pairs; between stages, the
    shrink attention and its MLP. Ours nests the same sequence as stages -> [downsample] -> blocks.
    """
    targets = []
    for i, stage in enumerate(model.stages):
        if i > 0:
            targets += [(f"stages.{i}.downsample.attn_downsample", "down"), (f"stages.{i}.downsample.mlp", "mlp")]
        for j in range(len(stage.blocks)):
            targets += [(f"stages.{i}.blocks.{j}.attn", "attn"), (f"stages.{i}.blocks.{j}.mlp", "mlp")]
    return targets


# Official sub-module (inside a ``blocks`` entry) -> ours, by entry kind: Residual wraps attention and MLP in ``m``,
# ``proj`` and the shrink's ``q`` are Sequential(activation or subsample, Linear_BN).
_OFFICIAL_PARTS = {
    "attn": {"m.qkv": "qkv", "m.proj.1": "proj"},
    "mlp": {"m.0": "ln1", "m.2": "ln2"},
    "down": {"kv": "kv", "q.1": "q", "proj.1": "proj"},
}


def _from_official(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate facebookresearch/LeViT checkpoints, plain (Conv2d_BN/Linear_BN: ``c`` + ``bn``) or fused by its
    ``utils.replace_batchnorm`` (a plain Conv2d/Linear with bias, which becomes our conv/linear and a BN that only
    adds the bias); then split the fused ``qkv``/``kv`` rows as for timm.
    """
    targets = _official_targets(model)
    # official module prefix -> (our module prefix, our child for the conv/linear: "conv" or "linear")
    modules: dict[str, tuple[str, str]] = {f"patch_embed.{2 * i}": (f"stem.{i}", "conv") for i in range(4)}
    for n, (ours, kind) in enumerate(targets):
        for src, dst in _OFFICIAL_PARTS[kind].items():
            modules[f"blocks.{n}.{src}"] = (f"{ours}.{dst}", "linear")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):  # derived
            continue
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and int(parts[1]) < len(targets) \
                and parts[-1] == "attention_biases":
            ours, kind = targets[int(parts[1])]
            out[f"{ours}.attention_biases"] = value
            continue
        if parts[0] in ("head", "head_dist"):
            if parts[1] == "l":  # BN_Linear: bn, l
                key = f"{parts[0]}.linear.{parts[2]}"
            elif len(parts) == 2:  # fused: one Linear
                key = f"{parts[0]}.linear.{parts[1]}"
                if parts[1] == "weight":
                    _identity_bn(out, f"{parts[0]}.bn", torch.zeros(value.shape[1], dtype=value.dtype))
            out[key] = value
            continue
        for cut in (2, 1):  # "X.c.weight" / "X.bn.bias" (plain) or "X.weight" / "X.bias" (fused)
            prefix, leaf = ".".join(parts[:-cut]), ".".join(parts[-cut:])
            if prefix in modules:
                ours, child = modules[prefix]
                if leaf.startswith("c."):
                    out[f"{ours}.{child}.{leaf[2:]}"] = value
                elif leaf.startswith("bn."):
                    out[f"{ours}.{leaf}"] = value
                elif leaf == "weight":
                    out[f"{ours}.{child}.weight"] = value
                else:  # fused bias
                    _identity_bn(out, f"{ours}.bn", value)
                break
        else:
            out[key] = value  # not ours: reported by the strict load
    if "head.linear.weight" in out and not any(k.startswith("head_dist.") for k in out):
        # distillation=False: one head; the average of two copies is that head
        out.update({"head_dist." + k[len("head."):]: v.clone() for k, v in list(out.items()) if k.startswith("head.")})
    return _split_fused(out, model)


def _resize_bias_tables(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize attention-bias tables made at another input resolution, bicubically as 2-D maps, with a warning."""
    resized: dict[tuple[int, int], int] = {}
    for name, module in model.named_modules():
        key = f"{name}.attention_biases"
        if not isinstance(module, BiasedAttention) or key not in state:
            continue
        table = state[key]
        heads, n_old = table.shape
        old, new = math.isqrt(n_old), module.res
        if heads != module.num_heads or old * old != n_old or old == new:
            continue  # same size, or a mismatch that the strict load reports
        grid = table.reshape(1, heads, old, old).float()  # (1, heads, |d_row|, |d_col|)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        state[key] = grid.reshape(heads, new * new).to(table.dtype)
        resized[(old, new)] = resized.get((old, new), 0) + 1
    if resized:
        # The stage-1 key grid is the input side / 16, so the largest old grid names the source resolution.
        items = sorted(resized.items(), reverse=True)
        sizes = ", ".join(f"{o}x{o} -> {n}x{n} ({count})" for (o, n), count in items)
        warnings.warn(f"LeViT weights were made at resolution {16 * items[0][0][0]}, the model is at "
                      f"{getattr(model, 'resolution', '?')}: resized {sum(resized.values())} attention-bias "
                      f"tables bicubically: {sizes}", stacklevel=4)
    return state


register_layout(FAMILY, "timm", lambda state: "stem.conv1.linear.weight" in state, _from_timm)
register_layout(FAMILY, "facebookresearch/LeViT",
                lambda state: "patch_embed.0.weight" in state or "patch_embed.0.c.weight" in state, _from_official)
register_checkpoint_fixup(FAMILY, _resize_bias_tables)


# Params: the official code with both heads (= timm). MACs: paper Table 3 (the official counter,
# which also counts softmax; ours counts convs, linears and matmuls only, ~0.2% less).
_SRC = "Graham et al. 2021, Table 3 (params with both heads from the official code)"
_PAPER = {
    "levit_128s": PaperNumbers(7_777_058, 305, 76.6, 224, _SRC, macs_tolerance=0.01),
    "levit_128": PaperNumbers(9_213_936, 406, 78.6, 224, _SRC, macs_tolerance=0.01),
    "levit_192": PaperNumbers(10_947_069, 658, 80.0, 224, _SRC, macs_tolerance=0.01),
    "levit_256": PaperNumbers(18_893_876, 1128, 81.6, 224, _SRC + "; 1128 M official counter, paper says 1120",
                              macs_tolerance=0.01),
    "levit_384": PaperNumbers(39_128_836, 2353, 82.6, 224, _SRC, macs_tolerance=0.01),
}
register_family(FAMILY, LeViT, CFGS, _PAPER, default_resolution=224, min_resolution=128)
