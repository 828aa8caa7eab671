"""Training methods by name: SmoothMix, the five baselines of docs/MATH.md §3 and CAT-RS (§3.8).

>>> method = create_method("smoothmix", sigma=0.5, num_classes=10, eta=5.0)
>>> out = method(model, x, y, epoch)      # StepOutput(loss, metrics)
>>> out.loss.backward()

``method_options(name)`` describes every hyperparameter of a method (default, help, type,
choices) for the CLI and the presets.
"""

from __future__ import annotations

from typing import Any

from smoothmix.errors import SmoothmixError
from smoothmix.methods.base import OptionInfo, StepOutput, TrainingMethod

METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"training method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def _lookup(name: str) -> type[TrainingMethod]:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise SmoothmixError(
            f"unknown method {name!r}; valid methods: {', '.join(list_methods())}"
        ) from None


def list_methods() -> list[str]:
    return list(METHODS)


def create_method(name: str, sigma: float, num_classes: int, **options: Any) -> TrainingMethod:
    """Build a registered method; unknown names or bad options raise SmoothmixError.

    An option given as ``None`` takes its default (convenient for CLI flags left unset).
    """
    return _lookup(name)(sigma, num_classes, **options)


def method_options(name: str) -> dict[str, OptionInfo]:
    """Option name -> :class:`OptionInfo` (``default``, ``help``, ``type``, ``choices``)."""
    return {key: opt.info() for key, opt in _lookup(name).options.items()}


def _register_builtin() -> None:
    # Imported here so that the base module does not depend on its implementations.
    from smoothmix.methods.catrs import CatRS
    from smoothmix.methods.consistency import Consistency
    from smoothmix.methods.gaussian import Gaussian
    from smoothmix.methods.macer import Macer
    from smoothmix.methods.smoothadv import SmoothAdv
    from smoothmix.methods.smoothmix import SmoothMix
    from smoothmix.methods.stability import Stability

    for cls in (SmoothMix, Gaussian, Stability, SmoothAdv, Macer, Consistency, CatRS):
        register_method(cls)


_register_builtin()

__all__ = [
    "METHODS",
    "OptionInfo",
    "StepOutput",
    "TrainingMethod",
    "create_method",
    "list_methods",
    "method_options",
    "register_method",
]
