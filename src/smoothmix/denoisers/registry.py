"""The registry of denoiser kinds (:class:`smoothmix.registry.Registry` ``"denoiser"``).

An entry is a factory ``(**settings) -> nn.Module`` whose module maps a batch of noisy images
in [0, 1] (N, C, H, W) to a batch of the same shape; ``metadata`` says what it is. The
built-in kinds register themselves from their own modules in this package.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from smoothmix.registry import Registry

__all__ = ["DENOISERS"]

DENOISERS: Registry[Callable[..., nn.Module]] = Registry(
    "denoiser", hint="register one with smoothmix.denoisers.DENOISERS.register(name)")

