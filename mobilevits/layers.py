"""Shared building blocks used by two or more model families.

Everything here is written for deployment as much as for training:

* every Conv/Linear followed by BatchNorm implements ``fuse()`` so
  :func:`mobilevits.reparameterize_model` can fold the norm away;
* attention is spelled out as ``q @ k^T -> softmax -> @ v`` instead of
  ``F.scaled_dot_product_attention`` (whose safe-softmax mask ops fall out of
  the XNNPACK delegate), and no intermediate tensor exceeds rank 5 (Core ML's
  limit);
* LayerNorm can switch to a mean/rsqrt formulation that XNNPACK and every
  converter lower natively (see :class:`LayerNorm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "make_divisible",
    "get_act",
    "HardSigmoid",
    "SiLU",
    "HardSwish",
    "set_deploy_forms",
    "deploy_forms",
    "ConvNormAct",
    "LinearNorm",
    "SqueezeExcite",
    "InvertedResidual",
    "DropPath",
    "Dropout",
    "LayerNorm",
    "PrefixTokens",
    "FLOAT_UNDER_INT8",
    "Mlp",
    "Attention",
    "fuse_conv_bn",
    "fuse_linear_bn",
    "split_qkv",
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` (never dropping more than 10%)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, written with ops every backend lowers (no aten.hardsigmoid decomposition).

    The 1/6 is a multiplication: ExecuTorch's XNNPACK has no int8 division, so ``/ 6`` would leave an
    fp32 island in every int8 graph (the two differ by at most one rounding).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (1.0 / 6.0)


class HardSwish(nn.Module):
    """x * relu6(x + 3) / 6 in one of two formulations of the same function (``form``):

    * ``"native"``: one ``aten.hardswish``, one fp32 kernel on every backend (the fp32 deploy form);
    * ``"int8"``: ``x * (relu6(x + 3) * (1/6))``, an add, a clamp and two multiplications that int8
      backends keep in int8. ExecuTorch's XNNPACK has no int8 hardswish and LiteRT leaves an int8
      HARD_SWISH outside its delegate, so the native form costs a dequantise -> fp32 -> quantise island
      per activation there. The gate ``relu6(x + 3) / 6`` is in [0, 1], so quantising it loses little.

    :func:`set_deploy_forms` switches it; the two forms agree to within float rounding (tested).
    """

    deploy_kind = "hardswish"
    forms = ("native", "int8")

    def __init__(self) -> None:
        super().__init__()
        self.form = "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "int8":
            return x * (F.relu6(x + 3.0) * (1.0 / 6.0))
        return F.hardswish(x)


class SiLU(nn.Module):
    """x * sigmoid(x) in one of two formulations of the same function (``form``):

    * ``"native"``: one ``aten.silu``, one kernel on every backend (the default);
    * ``"sigmoid"``: ``x * sigmoid(x)``, written out. litert-torch's int8 quantizer has no SiLU, so the native
      form runs in float between a DEQUANTIZE and a QUANTIZE; a sigmoid it gives the fixed int8 range of a
      probability, and the product is an int8 MUL, so the whole activation stays int8 in a .tflite.

    :func:`set_deploy_forms` switches it; the two forms agree to within float rounding (tested).
    """

    deploy_kind = "silu"
    forms = ("native", "sigmoid")

    def __init__(self) -> None:
        super().__init__()
        self.form = "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "sigmoid":
            return x * torch.sigmoid(x)
        return F.silu(x)


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": HardSwish,
    # not nn.Hardsigmoid: ExecuTorch decomposes aten.hardsigmoid with 0-d float64 constants whose dtype
    # casts (_to_dim_order_copy) stay outside the XNNPACK delegate (16 in MobileNetV3-Small)
    "hsigmoid": HardSigmoid,
    "silu": SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def get_act(name: str | None) -> nn.Module:
    """Build an activation module from its short name (``relu``, ``hswish``, ``silu``...)."""
    if name is None:
        return nn.Identity()
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTS)}") from None


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) that an eval-mode BatchNorm applies."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new conv computing ``bn(conv(x))`` in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    )
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def fuse_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """Return a new linear computing ``bn(linear(x))`` (BN over the output features) in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
    fused.weight.copy_(linear.weight * scale[:, None])
    bias = linear.bias if linear.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """Return a new linear computing ``linear(bn(x))`` (BN over the input features) in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
    fused.weight.copy_(linear.weight * scale[None, :])
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    fused.bias.copy_(bias + linear.weight @ shift)
    return fused


# --------------------------------------------------------------------------------------------
# Convolution blocks
# --------------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """Conv2d -> BatchNorm2d -> activation (``conv``, ``bn``, ``act``); ``fuse()`` folds the BN."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        norm: bool = True,
        bias: bool | None = None,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        bias = (not norm) if bias is None else bias
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps) if norm else nn.Identity()
        self.act = get_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class LinearNorm(nn.Module):
    """Linear (no bias) -> BatchNorm1d over features, for token tensors (B, N, C)."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn: nn.Module = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if isinstance(self.bn, nn.Identity):
            return x
        # BatchNorm1d wants (B*N, C); flatten keeps the op rank-2 for every backend.
        return self.bn(x.flatten(0, -2)).reshape(x.shape)

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm1d):
            self.linear = fuse_linear_bn(self.linear, self.bn)
            self.bn = nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale."""

    def __init__(self, chs: int, rd_chs: int, act: str = "relu", gate: str = "hsigmoid") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = get_act(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = get_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project.

    The expand conv is skipped when ``mid_chs == in_chs`` and ``expand`` is False (MobileNetV3's
    first block). A residual is added iff stride is 1 and channels are unchanged. The caller picks the
    squeeze-excite width ``se_chs`` (MobileNetV3 reduces from ``mid_chs``, EfficientNet from ``in_chs``)
    and its activation/gate (``relu``/``hsigmoid`` for MobileNetV3, ``silu``/``sigmoid`` for EfficientNet).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu",
        se_chs: int = 0,
        se_gate: str = "hsigmoid",
        expand: bool = True,
        bn_eps: float = 1e-5,
        drop_path: float = 0.0,
        se_act: str = "relu",
    ) -> None:
        super().__init__()
        self.conv_pw = ConvNormAct(in_chs, mid_chs, 1, act=act, bn_eps=bn_eps) if expand else nn.Identity()
        self.conv_dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride, groups=mid_chs, act=act, bn_eps=bn_eps)
        self.se = SqueezeExcite(mid_chs, se_chs, act=se_act, gate=se_gate) if se_chs else nn.Identity()
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, act=None, bn_eps=bn_eps)
        self.has_residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return x + self.drop_path(y) if self.has_residual else y


class Dropout(nn.Dropout):
    """``nn.Dropout`` that is skipped entirely in eval mode, so no dropout op reaches an export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.training and self.p > 0 else x


class DropPath(nn.Module):
    """Per-sample stochastic depth; the identity in eval mode (so it never reaches an export)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------------
# Transformer pieces
# --------------------------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim, with the same parameters and state-dict keys as ``nn.LayerNorm``.

    In eval mode it is written as arithmetic rather than ``aten.layer_norm``, which ExecuTorch 1.5's
    XNNPACK partitioner rejects (it would run on slow portable kernels). The two means over C can be
    taken two ways (``mean_op``), because the fastest differs by runtime (measured on this host,
    LayerNorm over (4, 256, 144) tokens, 1 thread; ``benchmarks/runtime_kernels.py``):

    * ``"mean"`` (default): reshape to (M, 1, C, 1) and ``mean`` over dims (2, 3), the only mean
      XNNPACK takes. LiteRT runs it as MEAN: 0.14 ms. ExecuTorch's layout pass wraps each such mean
      in NCHW<->NHWC copies (4 per LayerNorm): 0.77 ms.
    * ``"linear"``: a linear with a constant ``1/C`` row (..., C) -> (..., 1). ExecuTorch 0.38 ms,
      LiteRT 0.23 ms (a 1-column FULLY_CONNECTED).

    Converters pick one with :func:`set_layernorm_mean` before export. The math is the same either
    way (biased variance, eps inside the root); ``tests/test_layers.py`` checks both against
    ``F.layer_norm``. Training keeps the fused kernel for speed. Only the last dim is normalised.
    """

    mean_op: str = "mean"
    deploy_kind = "layernorm_mean"  # set_deploy_forms(model, layernorm_mean=...) sets mean_op
    forms = ("mean", "linear")

    @property
    def form(self) -> str:
        return self.mean_op

    @form.setter
    def form(self, value: str) -> None:
        self.mean_op = value

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, **kwargs) -> None:
        super().__init__(normalized_shape, eps=eps, **kwargs)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm normalises the last dimension only, got shape {self.normalized_shape}")
        c = self.normalized_shape[0]
        # not in the state dict: checkpoints keep nn.LayerNorm's keys
        self.register_buffer("avg_row", torch.full((1, c), 1.0 / c), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        shape = x.shape
        if self.mean_op == "linear":
            if x.dim() > 3:
                # litert-torch 0.10 cannot convert a linear over a rank-4 input such as (1, n, 1, C)
                # (see TFLiteConverter.preflight): (B, H, W, C) -> (B*H*W, C) and back
                x = x.reshape(-1, shape[-1])
            mu = F.linear(x, self.avg_row)  # (..., C) -> (..., 1)
            xc = x - mu
            var = F.linear(xc * xc, self.avg_row)
        else:
            x = x.reshape(-1, 1, shape[-1], 1)  # (..., C) -> (M, 1, C, 1)
            mu = x.mean((2, 3), keepdim=True)
            xc = x - mu
            var = (xc * xc).mean((2, 3), keepdim=True)
        y = (xc * torch.rsqrt(var + self.eps)).reshape(shape)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y


# kind -> its forms, for every module class that offers alternatives (register_deploy_kind)
DEPLOY_KINDS: dict[str, tuple[str, ...]] = {}


def register_deploy_kind(kind: str, forms: tuple[str, ...]) -> None:
    """Declare a kind of deploy formulation and its forms (the first is the module's default)."""
    DEPLOY_KINDS[kind] = forms


def parse_deploy_forms(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["hardswish=native", ...]`` or a dict -> ``{kind: form}``, every kind and form checked."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [i.partition("=")[::2] for i in items]
    out = {}
    for kind, form in pairs:
        if kind not in DEPLOY_KINDS:
            raise ValueError(f"unknown formulation kind {kind!r}; kinds: "
                             + ", ".join(f"{k} ({'/'.join(v)})" for k, v in sorted(DEPLOY_KINDS.items())))
        if form not in DEPLOY_KINDS[kind]:
            raise ValueError(f"unknown {kind} form {form!r}; choose one of {', '.join(DEPLOY_KINDS[kind])}")
        out[kind] = form
    return out


def set_deploy_forms(model: nn.Module, **forms: str) -> nn.Module:
    """Choose deploy formulations in place, by kind: ``set_deploy_forms(m, hardswish="int8", dyrelu="relu")``.

    Modules that offer alternatives carry ``deploy_kind``, ``forms`` and ``form``; every form of a kind computes
    the same function. Converters call this per backend and precision (``Converter.prepare_model``).
    """
    kinds = {}
    for m in model.modules():
        kind = getattr(m, "deploy_kind", None)
        if kind is not None:
            kinds[kind] = m.forms
    for kind, form in forms.items():
        if kind in kinds and form not in kinds[kind]:
            raise ValueError(f"unknown {kind} form {form!r}; choose one of {', '.join(kinds[kind])}")
    for m in model.modules():
        form = forms.get(getattr(m, "deploy_kind", None))
        if form is not None:
            m.form = form
    return model


def deploy_forms(model: nn.Module) -> dict[str, str]:
    """The formulation of each kind in ``model`` (``{"hardswish": "int8", "layernorm_mean": "linear"}``)."""
    out: dict[str, set[str]] = {}
    for m in model.modules():
        kind = getattr(m, "deploy_kind", None)
        if kind is not None:
            out.setdefault(kind, set()).add(m.form)
    return {k: "/".join(sorted(v)) for k, v in sorted(out.items())}


register_deploy_kind(HardSwish.deploy_kind, HardSwish.forms)
register_deploy_kind(SiLU.deploy_kind, SiLU.forms)
register_deploy_kind(LayerNorm.deploy_kind, LayerNorm.forms)


def set_layernorm_mean(model: nn.Module, mean_op: str) -> nn.Module:
    """Choose how every :class:`LayerNorm` in ``model`` takes its means (``"mean"`` or ``"linear"``), in place."""
    if mean_op not in LayerNorm.forms:
        raise ValueError(f"unknown LayerNorm mean_op {mean_op!r}; choose 'mean' or 'linear'")
    return set_deploy_forms(model, layernorm_mean=mean_op)


class PrefixTokens(nn.Module):
    """Learned tokens (class, distillation), each (1, 1, C), put in front of the patch tokens, then an optional
    position embedding: (B, N, C) -> (B, P + N, C). No parameters of its own: the model keeps its ``cls_token``
    and ``pos_embed`` (checkpoint keys unchanged) and passes them in.

    Written as ``cat([zeros, x]) + table``: P zero rows (a step-1 slice of the patch tokens times a float zero:
    no ``expand``, which XNNPACK does not take) in front of the patch tokens, plus a (1, P + N, C) table of the
    tokens over N zero rows (and the position embedding), broadcast over the batch; equal to
    ``cat([token, x]) + pos``. The tokens never meet the patch tokens in a ``cat``: int8 converters give a cat's
    inputs one scale, and LiteRT's moves the dequantize behind a float cat (zero rows survive that exactly). The
    table is one pad per token: XNNPACK takes a pad of constants, not a cat of them, and no pad of a dequantised
    tensor (its int8 program then fails to load).

    Its ops stay float under int8 (:data:`FLOAT_UNDER_INT8`). The class token is a few hundredths where trained
    patch embeddings reach tens, so one per-tensor int8 scale for the assembled tokens rounds the class token to
    zero (measured: 0.14 int8 steps of spread in a digits-trained DeiT-Ti); the first LayerNorm then divides
    rounding noise by a spread near zero, and QAT's gradients through it reach 1e5-1e27. Float here, the first
    LayerNorm sees the true token; the first residual add quantises it again, next to the attention's output.
    """

    def forward(self, x: torch.Tensor, tokens: list[torch.Tensor], pos: torch.Tensor | None = None) -> torch.Tensor:
        prefix, n = len(tokens), x.shape[1]
        # (1, P + N, C): token i in row i, zero rows elsewhere
        pads = [F.pad(t, (0, 0, i, prefix - 1 - i + n)) for i, t in enumerate(tokens)]
        table = pads[0]
        for pad in pads[1:]:  # not sum(): its int 0 start exports as a cast outside XNNPACK
            table = table + pad
        if pos is not None:
            table = table + pos
        return torch.cat([x[:, :prefix] * 0.0, x], dim=1) + table  # (B, N, C) -> (B, P + N, C)


# Modules whose ops PT2E quantizers leave in float (converters.keep_float): LayerNorm's rsqrt(var + eps) and the
# token assembly above lose everything to a per-tensor int8 scale.
FLOAT_UNDER_INT8: tuple[type[nn.Module], ...] = (LayerNorm, PrefixTokens)


class Mlp(nn.Module):
    """Linear -> act -> Linear (``fc1``, ``fc2``), the transformer feed-forward block."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = get_act(act)
        self.drop1 = Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C) with separate ``q``, ``k``, ``v`` projections.

    Written explicitly (matmul, softmax, matmul) for export, with three projections instead of a
    fused ``qkv`` so neither training, QAT nor the exported graph needs a split/unbind (which
    XNNPACK does not take) or a rank-5 tensor. Checkpoints with a fused ``qkv`` (timm) are split
    on load by the families' checkpoint filters.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        # (B, N, C) -> (B, h, N, hd) -> (B*h, N, hd): 3-D operands make matmul a plain bmm, where a
        # 4-D matmul decomposes into expand + bmm and the expand falls out of XNNPACK.
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2).reshape(B * self.num_heads, N, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self._heads(self.q(x) * self.scale)
        k = self._heads(self.k(x))
        v = self._heads(self.v(x))
        attn = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (B*h, N, N)
        attn = self.attn_drop(attn)
        x = torch.bmm(attn, v).reshape(B, self.num_heads, N, self.head_dim)  # (B, h, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def split_qkv(state_dict: dict[str, torch.Tensor], prefix: str, fused: str = "qkv",
              names: tuple[str, ...] | None = None) -> None:
    """In place: replace ``{prefix}{fused}.{weight,bias}`` (projections stacked on dim 0, in the order of ``names``;
    default the letters of ``fused``: ``qkv`` -> q, k, v; ``qk`` -> q, k) by one entry per name."""
    names = names or tuple(fused)
    for kind in ("weight", "bias"):
        key = f"{prefix}{fused}.{kind}"
        if key in state_dict:
            for name, part in zip(names, state_dict.pop(key).chunk(len(names), 0)):
                state_dict[f"{prefix}{name}.{kind}"] = part.contiguous()


def resize_pos_embed_on_load(state: dict[str, torch.Tensor], model: nn.Module,
                             note: str = "") -> dict[str, torch.Tensor]:
    """Checkpoint fixup (returns ``state``, changed in place): a ``pos_embed`` made for another patch grid is
    resized to ``model.grid``.

    ``model`` has ``pos_embed`` (1, num_prefix + grid^2, C), ``num_prefix``, ``grid``, ``resolution`` and
    ``cfg.patch_size``. A warning names both resolutions; any other misfit is left to the strict load.
    """
    import warnings

    pos, own = state.get("pos_embed"), model.pos_embed
    if pos is None or pos.shape == own.shape or pos.dim() != 3 or pos.shape[2] != own.shape[2]:
        return state
    old = math.isqrt(pos.shape[1] - model.num_prefix)
    if old * old != pos.shape[1] - model.num_prefix:
        return state
    state["pos_embed"] = resample_pos_embed(pos, model.num_prefix, model.grid)
    warnings.warn(f"{type(model).__name__} weights were made at resolution {old * model.cfg.patch_size}, the model "
                  f"is at {model.resolution}: resized the position embedding bicubically ({old}x{old} -> "
                  f"{model.grid}x{model.grid} patches){note}", stacklevel=4)
    return state


def resample_pos_embed(pos: torch.Tensor, prefix: int, grid: int) -> torch.Tensor:
    """A learned position embedding (1, prefix + g*g, C) for a g x g patch grid, resized to ``grid`` x ``grid``
    bicubically (antialiased when shrinking); the ``prefix`` tokens' rows are kept."""
    old = math.isqrt(pos.shape[1] - prefix)
    if old * old != pos.shape[1] - prefix:
        raise ValueError(f"position embedding of {pos.shape[1] - prefix} patch rows is not a square grid")
    g = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()  # (1, C, old, old)
    g = F.interpolate(g, size=(grid, grid), mode="bicubic", align_corners=False, antialias=grid < old)
    return torch.cat([pos[:, :prefix], g.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)], dim=1)


def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """ViT-style init: trunc-normal linears, kaiming convs, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_out(size: int, stride: int) -> int:
    """Output side of a 'same'-padded conv with odd kernel and the given stride."""
    return math.ceil(size / stride)
