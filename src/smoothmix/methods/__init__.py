"""Training methods by name: SmoothMix, the five baselines of docs/MATH.md §3, CAT-RS (§3.8),
plain training without noise, and the denoiser objectives of denoised smoothing
(``denoise-mse``, ``denoise-stability``, ``ddpm``; their methods declare ``trains = "denoiser"``).

>>> method = create_method("smoothmix", sigma=0.5, num_classes=10, eta=5.0)
>>> out = method(model, x, y, epoch)      # StepOutput(loss, metrics)
>>> out.loss.backward()

``method_options(name)`` describes every hyperparameter of a method (default, help, type,
choices) for the CLI and the presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from smoothmix.errors import SmoothmixError
from smoothmix.methods.base import OptionInfo, StepOutput, TrainingMethod
from smoothmix.registry import Registry

_METHODS: Registry[type[TrainingMethod]] = Registry(
    "method", hint="add your own with smoothmix.methods.register_method")

#: name -> method class, a live read-only view of the registry (built-ins first).
METHODS: Mapping[str, type[TrainingMethod]] = _METHODS.view()

_Method = TypeVar("_Method", bound=type[TrainingMethod])


def register_method(cls: _Method | None = None, *, overwrite: bool = False) -> Any:
    """Class decorator adding a :class:`TrainingMethod` subclass under ``cls.name``.

    ``@register_method`` or ``register_method(cls)`` returns the class unchanged;
    ``@register_method(overwrite=True)`` replaces a method of the same name. Registering the
    same class again is a no-op; another class under a taken name is a
    :class:`SmoothmixError` unless ``overwrite=True``.
    """

    def add(method: _Method) -> _Method:
        if not (isinstance(method, type) and issubclass(method, TrainingMethod)):
            raise SmoothmixError(f"register_method: {method!r} is not a TrainingMethod "
                                 "subclass")
        name: str = getattr(method, "name", "")
        if name in _METHODS and _METHODS.get(name) is method:
            return method
        return _METHODS.register(name, method, overwrite=overwrite)

    return add if cls is None else add(cls)


def list_methods() -> list[str]:
    """Names of every registered method, built-ins first."""
    return _METHODS.names()


def create_method(name: str, sigma: float | None, num_classes: int,
                  **options: Any) -> TrainingMethod:
    """Build a registered method; unknown names or bad options raise SmoothmixError.

    An option given as ``None`` takes its default (convenient for CLI flags left unset).
    """
    return _METHODS.get(name)(sigma, num_classes, **options)


def method_options(name: str) -> dict[str, OptionInfo]:
    """Option name -> :class:`OptionInfo` (``default``, ``help``, ``type``, ``choices``)."""
    return {key: opt.info() for key, opt in _METHODS.get(name).options.items()}


def _register_builtin() -> None:
    # Imported here so that the base module does not depend on its implementations.
    from smoothmix.methods.catrs import CatRS
    from smoothmix.methods.consistency import Consistency
    from smoothmix.methods.ddpm import DDPM
    from smoothmix.methods.denoise_mse import DenoiseMSE
    from smoothmix.methods.denoise_stability import DenoiseStability
    from smoothmix.methods.gaussian import Gaussian
    from smoothmix.methods.macer import Macer
    from smoothmix.methods.plain import Plain
    from smoothmix.methods.smoothadv import SmoothAdv
    from smoothmix.methods.smoothmix import SmoothMix
    from smoothmix.methods.stability import Stability

    for cls in (SmoothMix, Gaussian, Stability, SmoothAdv, Macer, Consistency, CatRS, Plain,
                DenoiseMSE, DenoiseStability, DDPM):
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
