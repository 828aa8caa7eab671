"""Denoised smoothing: a denoiser D in front of a classifier f, certified as the base
classifier f∘D (Salman et al., 2020; Carlini et al., 2023). Cohen's theorem holds unchanged
because f∘D is just another base classifier, provided D acts per sample, runs in eval mode
inside the module that votes, and draws any randomness from the run's seeded generator
(:mod:`smoothmix.denoisers.compose` enforces and documents these).
"""

from __future__ import annotations

# Built-in kinds register themselves on import (diffusers is imported only when one is built).
from smoothmix.denoisers import ddpm_unet as _ddpm_unet  # noqa: F401  registers "ddpm-unet"
from smoothmix.denoisers import dncnn as _dncnn  # noqa: F401  registers "dncnn"
from smoothmix.denoisers.compose import (
    PROBE_ROWS,
    Denoised,
    IdentityDenoiser,
    denoiser_for_run,
    describe_denoiser,
    load_denoiser,
    module_record,
    probe_denoiser,
)
from smoothmix.denoisers.registry import DENOISERS

__all__ = ["DENOISERS", "PROBE_ROWS", "Denoised", "IdentityDenoiser", "denoiser_for_run",
           "describe_denoiser", "load_denoiser", "module_record", "probe_denoiser"]
