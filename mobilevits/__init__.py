"""mobilevits: compact vision transformers from PyTorch to phones.

Public API::

    import mobilevits
    mobilevits.list_models("mobilevit*")
    model = mobilevits.create_model("mobilevit_xs", resolution=256, weights="w.safetensors")
    mobilevits.reparameterize_model(model.eval())
"""

# The one place the registry is filled: importing the family modules runs their registrations.
from . import models  # noqa: E402, F401, I001
from ._registry import ModelInfo, PaperNumbers, create_model, get_model_info, list_models, num_params
from .base import ImageClassifier, Normalize, Preprocess, reparameterize_model, rerandomize_
from .macs import count_macs
from .weights import WeightsError, load_weights, read_state_dict

__version__ = "0.1.0"

__all__ = [
    "ImageClassifier",
    "ModelInfo",
    "Normalize",
    "PaperNumbers",
    "Preprocess",
    "WeightsError",
    "count_macs",
    "create_model",
    "get_model_info",
    "list_models",
    "load_weights",
    "num_params",
    "read_state_dict",
    "reparameterize_model",
    "rerandomize_",
]
