"""Loading checkpoints safely: state dicts only, never arbitrary pickled objects."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError

SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")  # .bin: the hub's pytorch_model.bin (a torch.save file)

# A family registers the foreign checkpoint layouts it reads (timm's, the paper's official code): each
# recognises its key names and rewrites them into ours. A family's fix-up runs after any layout
# (LeViT resizes attention-bias tables made at another resolution).
CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
NATIVE_LAYOUT = "mobilevits"


@dataclass(frozen=True)
class Layout:
    """A foreign checkpoint layout: ``detect(state)`` says whether the keys are its, ``convert`` renames them."""

    name: str  # as users know it: "timm", "apple/ml-cvnets", "facebookresearch/LeViT"
    detect: Callable[[dict[str, torch.Tensor]], bool]
    convert: CheckpointFilter


_LAYOUTS: dict[str, list[Layout]] = {}
_FIXUPS: dict[str, CheckpointFilter] = {}


def register_layout(family: str, name: str, detect: Callable[[dict[str, torch.Tensor]], bool],
                    convert: CheckpointFilter) -> None:
    """Teach ``load_weights`` a foreign key layout for ``family``; the first layout that detects wins."""
    _LAYOUTS.setdefault(family, []).append(Layout(name, detect, convert))


def register_checkpoint_fixup(family: str, fn: CheckpointFilter) -> None:
    """A rewrite run on every checkpoint of ``family`` after its layout is translated."""
    _FIXUPS[family] = fn


def layouts(family: str) -> list[str]:
    """Names of the checkpoint layouts ``family`` reads, ours first."""
    return [NATIVE_LAYOUT] + [lay.name for lay in _LAYOUTS.get(family, [])]


def translate(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """Rewrite ``state`` into ``model``'s key names; returns it and the name of the layout recognised."""
    family = getattr(model, "family", "")
    name = NATIVE_LAYOUT
    for lay in _LAYOUTS.get(family, []):
        if lay.detect(state):
            state, name = lay.convert(dict(state), model), lay.name
            break
    if family in _FIXUPS:
        state = _FIXUPS[family](dict(state), model)
    return state, name


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors``.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/``model_state(_dict)``
    (training checkpoints; preferred) or ``model_ema``/``state_dict_ema``/``ema`` (an EMA-only file), and
    strips a DistributedDataParallel ``module.`` prefix. ``.pth.tar`` files are read like ``.pth``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in SUFFIXES and not path.name.endswith(".pth.tar"):  # .pth.tar: ml-cvnets, older repos
        raise WeightsError(f"weights file {path} has suffix {path.suffix!r}; expected one of "
                           f"{', '.join(SUFFIXES)} or .pth.tar")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path} holds pickled objects other than tensors, which are not loaded for safety "
            f"(weights_only=True). Re-save it as a plain state dict: torch.save(model.state_dict(), ...). "
            f"Detail: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # zip/safetensors header errors: the file is damaged or not a checkpoint
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    # training checkpoints: the trained weights win over an EMA copy kept beside them
    for key in ("state_dict", "model", "model_state", "model_state_dict", "model_ema", "state_dict_ema", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not contain a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def checkpoint_num_classes(model: nn.Module, path: str | Path) -> int | None:
    """The number of classes the weights in ``path`` were made for, when it differs from ``model``'s.

    Read from the classifier tensors: those whose first dimension is the model's class count and whose
    other dimensions match. None when the head fits (or no tensor tells); then the model's count stands.
    """
    state, _ = translate(read_state_dict(path), model)
    own = model.state_dict()
    n = getattr(model, "num_classes", None)
    found = {state[k].shape[0] for k in set(state) & set(own)
             if state[k].shape != own[k].shape and state[k].dim() == own[k].dim() and own[k].shape[0] == n
             and state[k].shape[1:] == own[k].shape[1:]}
    return found.pop() if len(found) == 1 else None


def load_weights(model: nn.Module, path: str | Path, new_head: bool = False) -> dict[str, Any]:
    """Load ``path`` into ``model`` strictly; returns ``{"sha256", "path", "layout", "reset"}``.

    Foreign key layouts (timm's, the official code's) are recognised and translated by the family's
    registered layouts (:func:`layouts`); ``layout`` names the one that was read.
    Missing keys, unexpected keys and shape mismatches are reported together in one WeightsError.
    ``new_head``: weights made for another number of classes (fine-tuning a 1000-class model on 10
    classes) keep the backbone; the classifier tensors whose class dimension differs keep the model's
    fresh initialisation and are named in ``reset``. Any other misfit is still an error.
    """
    state, layout = translate(read_state_dict(path), model)
    own = model.state_dict()
    reset = []
    if new_head:
        n = getattr(model, "num_classes", None)
        for k in sorted(set(state) & set(own)):
            a, b = state[k].shape, own[k].shape
            if a != b and len(a) == len(b) and b[0] == n and a[1:] == b[1:]:  # (classes, ...) only differs
                state[k] = own[k]
                reset.append(k)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        family = getattr(model, "family", "")
        lines = [f"weights {path} do not fit {getattr(model, 'name', type(model).__name__)} "
                 f"(resolution {getattr(model, 'resolution', '?')}, {getattr(model, 'num_classes', '?')} classes), "
                 f"read as the {layout} layout:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items) - 6} more)" if len(items) > 6 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        lines.append("  Check the model name, --num-classes and --resolution the weights were made with"
                     + (f"; layouts read for {family}: {', '.join(layouts(family))}." if family else "."))
        raise WeightsError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return {"path": str(path), "sha256": file_sha256(path), "layout": layout, "reset": reset}


def rename_prefixes(state: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename keys whose prefix is in ``mapping`` (longest prefix wins); other keys are kept."""
    prefixes = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        for p in prefixes:
            if key.startswith(p):
                key = mapping[p] + key[len(p):]
                break
        out[key] = value
    return out
