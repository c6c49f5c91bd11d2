"""mobilevits: compact vision transformers from PyTorch to phones.

Public API::

    import mobilevits
    mobilevits.list_models("mobilevit*")
    model = mobilevits.create_model("mobilevit_xs", resolution=256, weights="w.safetensors")
    mobilevits.reparameterize_model(model.eval())

The names below load on first use (PEP 562), so ``import mobilevits`` and the command line's help and
argument errors do not pay for importing torch; the model registry fills when the first of them is used.
Use the registry through this package (``mobilevits.get_model_info``), not ``mobilevits._registry``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "ModelInfo": "_registry", "PaperNumbers": "_registry", "create_model": "_registry",
    "get_model_info": "_registry", "list_models": "_registry", "num_params": "_registry",
    "resolve_pretrained": "_registry",
    "ImageClassifier": "base", "Normalize": "base", "Preprocess": "base", "reparameterize_model": "base",
    "rerandomize_": "base", "count_macs": "macs",
    "WeightsError": "weights", "checkpoint_num_classes": "weights", "load_weights": "weights",
    "read_state_dict": "weights",
}

__all__ = [
    "ImageClassifier", "ModelInfo", "Normalize", "PaperNumbers", "Preprocess", "WeightsError",
    "checkpoint_num_classes", "count_macs", "create_model", "get_model_info", "list_models", "load_weights",
    "num_params", "read_state_dict", "reparameterize_model", "rerandomize_",
]
assert set(__all__) <= set(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from ._registry import ModelInfo, PaperNumbers, create_model, get_model_info, list_models, num_params
    from .base import ImageClassifier, Normalize, Preprocess, reparameterize_model, rerandomize_
    from .macs import count_macs
    from .weights import WeightsError, checkpoint_num_classes, load_weights, read_state_dict


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if _LAZY[name] == "_registry":
            # the registry fills as the family modules import: load them before handing out its functions
            importlib.import_module(".models", __name__)
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'mobilevits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
