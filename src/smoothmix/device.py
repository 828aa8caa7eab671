"""Device selection in one place, so no module hard-codes CUDA.

:func:`resolve_device` is the only place that turns a device name into a device; every
command (train, certify, targets, reproduce) passes its ``--device`` through it. Under
torchrun each process has its own GPU: ``auto`` and a bare ``cuda`` both mean
``cuda:LOCAL_RANK`` there, while an explicit ``cuda:N`` is taken as given.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from smoothmix.errors import SmoothmixError

__all__ = ["module_device", "resolve_device"]


def _local_rank() -> int | None:
    """torchrun's LOCAL_RANK (this process's GPU on its node), or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SmoothmixError(f"LOCAL_RANK={value!r} is not an integer (torchrun sets it)") from None


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to use for ``name``: 'cpu', 'cuda', 'cuda:1', ... or ``auto``/``None``
    (CUDA when available, else the CPU).

    ``auto`` with CUDA is ``cuda:LOCAL_RANK`` (``cuda:0`` outside torchrun), and so is a bare
    ``cuda`` under torchrun, so that each rank uses its own GPU; ``cuda:N`` stays as given.
    A CUDA device this machine does not have is one :class:`SmoothmixError`."""
    auto = name is None or (isinstance(name, str) and name in ("", "auto"))
    if auto and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        device = torch.device("cuda" if name is None or auto else name)
    except (RuntimeError, TypeError) as exc:
        raise SmoothmixError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from exc
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise SmoothmixError(f"device {str(name)!r} requested but CUDA is not available here")
    local_rank = _local_rank()
    if device.index is None and (auto or local_rank is not None):
        device = torch.device("cuda", local_rank or 0)  # one GPU per torchrun process
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        why = f" (LOCAL_RANK={local_rank}: one GPU per torchrun process)" \
            if local_rank is not None else ""
        raise SmoothmixError(f"device {str(device)!r} requested but this machine has "
                             f"{count} CUDA device(s){why}")
    return device


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """The device of the module's first parameter or buffer (``default`` if it has none)."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return default
