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
