"""Model registry: names -> builders, with the paper's numbers and the resolution contract."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from .base import ImageClassifier

if TYPE_CHECKING:
    from .hub import HubModel


@dataclass(frozen=True)
class PaperNumbers:
    """What the paper (or official repo) reports for a variant; None where it gives nothing."""

    params: int | None = None
    macs_m: float | None = None  # millions of multiply-adds at ``resolution``
    top1: float | None = None  # ImageNet-1k top-1, percent
    resolution: int = 224
    source: str = ""
    macs_tolerance: float = 0.02  # how close our counted MACs must be (relative)
    macs_counts_norms: bool = False  # the paper's MACs include BatchNorm (count_macs(count_norms=True))
    macs_counts_attention: bool = True  # False: the paper leaves out attention's matmuls (count_attention=False)

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": None if self.macs_m is None else round(self.macs_m * 1e6),
                "top1": self.top1, "resolution": self.resolution, "source": self.source,
                "macs_convention": ("conv+linear+matmul" if self.macs_counts_attention else "conv+linear")
                + ("+batchnorm" if self.macs_counts_norms else "")}

    @property
    def own_convention(self) -> bool:
        """The paper counts MACs as ``count_macs`` does by default."""
        return self.macs_counts_attention and not self.macs_counts_norms


@dataclass(frozen=True)
class ModelInfo:
    """A registered variant: how to build it and what it promises."""

    name: str
    family: str
    builder: Callable[..., ImageClassifier]
    default_resolution: int
    min_resolution: int = 96
    max_resolution: int = 512
    resolution_step: int = 32
    paper: PaperNumbers | None = None
    tiny: bool = False  # reduced configs for fast tests; hidden from list_models() by default

    def valid_resolutions(self) -> list[int]:
        return list(range(self.min_resolution, self.max_resolution + 1, self.resolution_step))

    def check_resolution(self, resolution: int) -> None:
        if resolution not in self.valid_resolutions():
            raise ValueError(
                f"{self.name} does not take resolution {resolution!r}: use a multiple of "
                f"{self.resolution_step} from {self.min_resolution} to {self.max_resolution} "
                f"(default {self.default_resolution})"
            )


_REGISTRY: dict[str, ModelInfo] = {}
CfgT = TypeVar("CfgT")


def apply_overrides(cfg: CfgT, overrides: dict) -> CfgT:
    """``dataclasses.replace`` with a readable error for fields the config does not have."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{type(cfg).__name__} has no field(s) {', '.join(unknown)}; "
                         f"overridable fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(cfg, **overrides)


def register_model(info: ModelInfo) -> ModelInfo:
    """Add a variant; registering the same name twice is an error."""
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is already registered (by the {_REGISTRY[info.name].family} family)")
    _REGISTRY[info.name] = info
    return info


def register_family(family: str, model_cls: Callable[..., ImageClassifier], cfgs: dict[str, object],
                    papers: dict[str, PaperNumbers], default_resolution: int, **info: object) -> None:
    """Register every config of a family: ``model_cls(cfg, num_classes, resolution)`` builds each one.

    A config with an entry in ``papers`` is a paper variant; one without is a reduced config for fast
    tests (``tiny``: hidden from :func:`list_models` by default). ``info``: further ModelInfo fields
    (``min_resolution``, ``resolution_step``, ...).
    """
    unknown = sorted(set(papers) - set(cfgs))
    if unknown:
        raise ValueError(f"{family}: paper numbers for unknown configs {', '.join(unknown)}")

    def builder(cfg: object):
        def build(num_classes: int = 1000, resolution: int = default_resolution, **overrides) -> ImageClassifier:
            return model_cls(apply_overrides(cfg, overrides), num_classes, resolution)

        return build

    for name, cfg in cfgs.items():
        register_model(ModelInfo(name=name, family=family, builder=builder(cfg),
                                 default_resolution=default_resolution, paper=papers.get(name),
                                 tiny=name not in papers, **info))  # type: ignore[arg-type]


def list_models(pattern: str | None = None, include_tiny: bool = False) -> list[str]:
    """Registered model names, sorted, optionally filtered by an fnmatch pattern (``'levit*'``)."""
    names = [n for n, i in _REGISTRY.items() if include_tiny or not i.tiny]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(names)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises ValueError with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = list_models()
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid models: {', '.join(valid)}") from None


def resolve_pretrained(spec: str) -> HubModel:
    """A hub model (:func:`mobilevits.hub.resolve_hub`) whose architecture is one registered here."""
    from .hub import HubError, resolve_hub

    hub = resolve_hub(spec)
    try:
        get_model_info(hub.architecture)
    except ValueError:
        raise HubError(f"hub architecture {hub.architecture!r} of {spec} is not a model mobilevits defines "
                       "(see `mobilevits list`)") from None
    return hub


def create_model(
    name: str,
    num_classes: int | None = None,
    resolution: int | None = None,
    weights: str | Path | None = None,
    pretrained: str | None = None,
    **overrides,
) -> ImageClassifier:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (e.g. ``"mobilevit_xs"``), or a hub id
            (``hf-hub:OWNER/NAME[@REV]``, ``timm/NAME``), which is the same as ``pretrained=`` that id.
        num_classes: size of the classifier (default: the hub model's, else 1000).
        resolution: input side in pixels; defaults to the hub model's, else the paper's. Checked against
            the family's range.
        weights: path to a ``.pt``/``.pth``/``.safetensors``/``.bin`` state dict (ours or timm's key names).
        pretrained: a hub id whose weights are loaded from the Hugging Face cache (:mod:`mobilevits.hub`).
        **overrides: fields of the family's config dataclass to replace (e.g. ``drop_path_rate=0.1``).

    Returns:
        The model, in training mode like any fresh ``nn.Module``; call ``.eval()`` for inference.
        A hub model carries ``hub`` (its :class:`mobilevits.hub.HubModel`, with the class names).
    """
    from .hub import is_hub_id

    hub = None
    if is_hub_id(name) or pretrained is not None:
        if weights is not None:
            raise ValueError("give weights= or a pretrained hub id, not both")
        hub = resolve_pretrained(pretrained if pretrained is not None else name)
        if is_hub_id(name) or name == hub.architecture:
            name = hub.architecture
        else:
            raise ValueError(f"pretrained {hub.hub_id} is a {hub.architecture}, not a {name}")
        weights = hub.weights
        num_classes = hub.num_classes if num_classes is None else num_classes
        resolution = hub.resolution if resolution is None else resolution
    num_classes = 1000 if num_classes is None else num_classes
    info = get_model_info(name)
    resolution = info.default_resolution if resolution is None else resolution
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise ValueError(f"resolution must be an int, got {resolution!r}")
    info.check_resolution(resolution)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    model = info.builder(num_classes=num_classes, resolution=resolution, **overrides)
    model.name = name
    model.resolution = resolution
    model.num_classes = num_classes
    if weights is not None:
        from .weights import load_weights

        load_weights(model, weights)
    model.hub = hub
    return model


def num_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
