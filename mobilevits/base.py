"""What every model shares: its I/O contract (preprocessing) and the deploy-time fuse step."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: RGB, NCHW, ``(pixel/255 - mean) / std`` at ``resolution``.

    ``crop_pct`` and ``interpolation`` say how an image is resized before that: the short side
    to ``resolution / crop_pct``, then a centre crop of ``resolution``.
    """

    resolution: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    color: str = "RGB"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return asdict(self)


class ImageClassifier(nn.Module):
    """Base class of every model: ``forward_features`` -> ``forward_head``.

    Subclasses set ``family``, ``cfg`` (their frozen config), ``resolution`` and ``preprocess``.
    ``forward`` takes a normalised float tensor (B, 3, R, R) and returns logits (B, num_classes).
    """

    family: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.resolution: int = 0
        self.num_classes: int = 0
        self.preprocess: Preprocess | None = None
        self.name: str = ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fuse(self) -> ImageClassifier:
        """Fold every BatchNorm into its conv/linear (eval-mode maths); returns self in eval mode."""
        return reparameterize_model(self)


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and call ``fuse()`` on every sub-module that has one.

    After this the model computes the same function (to float rounding) with fewer ops; it can
    no longer be trained, since batch statistics are gone.
    """
    model.eval()
    for module in list(model.modules()):
        if module is not model and hasattr(module, "fuse"):
            module.fuse()
    return model


class Normalize(nn.Module):
    """Bake ``(x - mean) / std`` into a graph so apps feed float RGB in [0, 1]."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", (1.0 / torch.tensor(std)).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).reshape(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


@torch.no_grad()
def rerandomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm and bias random, non-degenerate values, in place; returns ``model``.

    Fresh models zero-initialise some norms (LeViT's residual BNs, attention-bias tables), so
    whole branches compute zero: converters fold them away and timing or quantising such a model
    measures a different network. Use trained weights, or call this first: BatchNorm weights
    ~1 +- 0.2, biases and running means ~N(0, 0.1), running variances in [0.5, 1.5], and any
    other 1-D or bias-table parameter ~N(0, 0.2). Conv and linear weights are left as initialised.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, scale: float, offset: float = 0.0) -> torch.Tensor:
        return (torch.randn(t.shape, generator=g) * scale + offset).to(t.dtype)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            if getattr(module, "weight", None) is not None:
                module.weight.copy_(rand(module.weight, 0.2, 1.0))
                module.bias.copy_(rand(module.bias, 0.1))
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.copy_(rand(module.running_mean, 0.1))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    for name, p in model.named_parameters():
        if name.endswith("bias") and not _is_norm_param(model, name):
            p.copy_(rand(p, 0.1))
        elif p.ndim != 0 and p.abs().sum() == 0:  # zero-initialised tables (attention biases, tokens)
            p.copy_(rand(p, 0.2))
    # modules that cache eval-mode tensors derived from parameters (LeViT's dense attention bias)
    # rebuild them on a mode switch
    model.train(model.training)
    return model


def _is_norm_param(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(owner, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm)
