"""Device selection in one place, so no module hard-codes CUDA."""

from __future__ import annotations

import os

import torch
from torch import nn

from smoothmix.errors import SmoothmixError


def resolve_device(name: str | None = None) -> torch.device:
    """Return the device to use: ``name`` if given ('cpu', 'cuda', 'cuda:1', ...), else the
    local-rank CUDA device when CUDA is available, else the CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SmoothmixError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SmoothmixError(f"device {name!r} requested but CUDA is not available here")
    return device


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """The device of the module's first parameter or buffer (``default`` if it has none)."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return default
