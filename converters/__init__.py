"""Conversion paths (ExecuTorch, Core ML, TFLite) behind one interface, with accuracy checks.

Importing this package imports no toolchain: each backend loads its packages when used.
"""

from .base import ConversionError, Converter, Delegation, RuntimeUnavailableError, UnsupportedError
from .pipeline import BACKENDS, build_source, check_artifact, convert, get_converter, read_sidecar

__all__ = [
    "BACKENDS",
    "ConversionError",
    "Converter",
    "Delegation",
    "RuntimeUnavailableError",
    "UnsupportedError",
    "build_source",
    "check_artifact",
    "convert",
    "get_converter",
    "read_sidecar",
]
