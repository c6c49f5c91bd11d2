"""Pretrained weights from the Hugging Face hub's cache: ``hf-hub:OWNER/NAME[@REV]`` or ``timm/NAME``.

    hub = resolve_hub("hf-hub:timm/mobilevit_xxs.cvnets_in1k")
    hub.architecture, hub.weights, hub.num_classes, hub.resolution, hub.labels

Resolved with ``huggingface_hub`` from the local cache first (no network at all when the files are there),
then from the hub unless ``HF_HUB_OFFLINE=1``. A timm-style repository (``config.json`` with
``architecture``, ``num_classes``, ``pretrained_cfg``, optional ``label_names``) and ``model.safetensors``
(or ``pytorch_model.bin``) is what is read; the weights go through the family's checkpoint filter.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WeightsError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HubError(WeightsError):
    """A hub id that cannot be resolved here, or a hub model mobilevits does not define."""


@dataclass(frozen=True)
class HubModel:
    """A resolved hub model: our architecture name, the local weights file and what its config says."""

    hub_id: str
    repo_id: str
    revision: str | None
    architecture: str
    weights: Path
    num_classes: int
    resolution: int | None
    labels: list[str] | None
    config: dict[str, Any]


def is_hub_id(spec: object) -> bool:
    """``hf-hub:OWNER/NAME[@REV]`` or the ``timm/NAME`` shorthand."""
    return isinstance(spec, str) and (spec.startswith("hf-hub:") or spec.startswith("timm/"))


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """(repo_id, revision) of a hub id."""
    body = spec[len("hf-hub:"):] if spec.startswith("hf-hub:") else spec
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"bad hub id {spec!r}: expected hf-hub:OWNER/NAME[@REVISION] or timm/NAME")
    return repo_id, revision or None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _download(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """The file from the cache, else from the hub (unless offline); None when neither has it."""
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    for local_only in (True, False):
        if not local_only and offline:
            break
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only))
        except Exception:  # noqa: BLE001 - not cached, not on the hub, or no network: all mean "try the next"
            continue
    return None


def _architecture(name: str) -> str:
    """timm's architecture name, which is ours for every family timm has (the registry checks it)."""
    if name.startswith("levit_conv_"):
        raise HubError(f"{name} is timm's 1x1-convolution layout of LeViT, which is not read yet: take the same "
                       f"weights in the linear layout, timm/{name.replace('levit_conv_', 'levit_')}.<tag>")
    if name.startswith("tnt_s_legacy"):
        raise HubError(f"{name} embeds pixels by one convolution over the whole image before cutting patches, "
                       "another function than TNT's official code; take timm/tnt_s_patch16_224.<tag>")
    tnt = {"tnt_s_patch16_224": "tnt_small", "tnt_b_patch16_224": "tnt_base"}.get(name)
    if tnt:
        return tnt
    deit = re.fullmatch(r"(deit_(?:tiny|small|base)(?:_distilled)?)_patch16_\d+", name)
    if deit:  # timm names DeiT by patch and training size; the input size comes from the config
        return deit.group(1)
    return name


def resolve_hub(spec: str) -> HubModel:
    """Find a hub model's config and weights in the cache (or on the hub) and read its config."""
    repo_id, revision = parse_hub_id(spec)
    how = (f"fetch it where the hub is reachable with `hf download {repo_id} config.json model.safetensors"
           f"{f' --revision {revision}' if revision else ''}` and copy the cache ({_cache_dir()}) here, or point "
           "HF_HUB_CACHE at a copy")
    config_path = _download(repo_id, "config.json", revision)
    if config_path is None:
        raise HubError(f"{spec} is not in the Hugging Face cache and could not be downloaded: {how}")
    weights = next((p for p in (_download(repo_id, f, revision) for f in WEIGHT_FILES) if p is not None), None)
    if weights is None:
        raise HubError(f"{spec} has a config but no {' or '.join(WEIGHT_FILES)} in the cache: {how}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HubError(f"config.json of {spec} is not readable JSON ({e})") from None
    arch = config.get("architecture") or (config.get("architectures") or [None])[0]
    if not arch:
        raise HubError(f"config.json of {spec} names no architecture (a timm-style config is expected)")
    pretrained = config.get("pretrained_cfg") or {}
    size = pretrained.get("input_size") or config.get("input_size")
    labels = config.get("label_names")
    if labels is None and isinstance(config.get("id2label"), dict):
        labels = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
    num_classes = int(config.get("num_classes") or (len(labels) if labels else 1000))
    if labels is not None and len(labels) != num_classes:
        labels = None  # a config whose names do not match its head is not trusted for names
    return HubModel(hub_id=spec, repo_id=repo_id, revision=revision, architecture=_architecture(arch),
                    weights=weights, num_classes=num_classes, resolution=int(size[-1]) if size else None,
                    labels=list(labels) if labels else None, config=config)
