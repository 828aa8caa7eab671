"""Denoised smoothing: a denoiser D in front of a classifier f, certified as the base
classifier f∘D (Salman et al., 2020; Carlini et al., 2023). Cohen's theorem holds unchanged
because f∘D is just another base classifier, provided D acts per sample, runs in eval mode
inside the module that votes, and draws any randomness from the run's seeded generator.
"""

from __future__ import annotations

# The built-in kinds register themselves when their modules are imported ("dncnn").
from smoothmix.denoisers import dncnn as _dncnn  # noqa: F401
from smoothmix.denoisers.registry import DENOISERS

__all__ = ["DENOISERS"]
