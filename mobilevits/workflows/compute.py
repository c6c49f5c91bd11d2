"""Where training runs: the device (``--device auto|cpu|cuda|cuda:N|mps``) and mixed precision (``--amp``).

``auto`` takes CUDA, then Apple's MPS, then the CPU. Under ``torchrun`` each process takes the GPU of its local
rank. ``--amp bf16`` runs the forward pass under ``torch.autocast`` in bfloat16 (no loss scaling needed);
``--amp fp16`` in float16 with a ``GradScaler``. Parameters, optimizer state and checkpoints stay float32, and
checkpoints are saved from and loaded onto any device.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

AMP = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """The requested device or precision is not available here."""


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> the device to train on; an unavailable one raises
    :class:`DeviceError` naming what this machine has."""
    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError(f"--device mps: Apple's Metal backend is not available here ({available()}); "
                              "use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceError(f"--device {spec}: CUDA is not available ({why}; {available()}); use --device cpu "
                              "or auto")
        index = local_rank % torch.cuda.device_count() if spec == "cuda" else int(spec.split(":", 1)[1] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    raise DeviceError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")


def available() -> str:
    """The devices this machine offers, for messages and results."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return "available: " + ", ".join(found)


def check_amp(amp: str | None, device: torch.device) -> str:
    """``none``, ``bf16`` or ``fp16``, validated for ``device``."""
    amp = amp or "none"
    if amp not in AMP:
        raise DeviceError(f"--amp must be one of {', '.join(AMP)}, got {amp!r}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --amp fp16")
    return amp


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's mixed-precision context (a no-op for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (float16's range underflows small gradients); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a step draws from: CPU, and the GPU's when training on one."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Any, device: torch.device) -> None:
    """Restore :func:`rng_state` (or an older checkpoint's bare CPU state)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
