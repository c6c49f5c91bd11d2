"""Conversion paths (ExecuTorch, Core ML, TFLite) behind one interface, with accuracy checks.

The floor above the model core: the workflows reach every backend through this package's names only.
Importing it imports no toolchain: each backend loads its packages when used.
"""

# The backends: importing each registers its Converter (a new backend is a new module and a line here).
from . import coreml_backend, executorch_backend, tflite_backend  # noqa: E402, F401, I001
from .base import (
    ConversionError,
    Converter,
    Delegation,
    RuntimeUnavailableError,
    Session,
    UnsupportedError,
    atomic_replace,
    atomic_write_text,
    backends,
    get_converter,
    keep_float_modules,
    precisions,
    quiet,
    register_converter,
    remove_path,
    tool_versions,
)
from .compare import compare, sqnr_db, topk_agreement
from .parallel import convert_many, usable_cores
from .pipeline import (
    SIDECAR_FORMAT,
    artifact_stem,
    build_source,
    calibrate_and_quantize,
    check_artifact,
    convert,
    open_artifact,
    quantized_reference,
    read_sidecar,
    run_artifact,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "SIDECAR_FORMAT", "ConversionError", "Converter", "Delegation", "RuntimeUnavailableError", "Session",
    "UnsupportedError", "artifact_stem", "atomic_replace", "atomic_write_text", "backends", "build_source",
    "calibrate_and_quantize", "check_artifact", "compare", "convert", "convert_many", "get_converter",
    "keep_float_modules", "open_artifact", "precisions", "quantized_reference", "quiet", "read_sidecar",
    "register_converter", "remove_path", "run_artifact", "sidecar_path", "sqnr_db", "tool_versions",
    "topk_agreement", "usable_cores", "write_sidecar",
]
