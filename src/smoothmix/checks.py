"""The checks of user input that more than one entry point needs, each with one message.

Every public function and CLI command that takes one of these values calls the check here
once, where the value enters, so that a bad value reads the same wherever it is given and
nothing deeper needs to check it again.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import SupportsFloat, SupportsIndex, cast

from smoothmix.errors import SmoothmixError, is_integer, require

__all__ = [
    "SIGMA_LIMIT", "check_alpha", "check_choice", "check_count", "check_num_classes",
    "check_radii", "check_sigma", "is_real", "num_classes_of",
]

#: Above this a sigma is almost surely given in 0..255 units: the toolkit's images are in [0, 1].
SIGMA_LIMIT = 4.0


def is_real(value: object) -> bool:
    """A number (int, float, numpy scalar), not a bool or a string."""
    return _real(value) is not None


def _real(value: object) -> float | None:
    """``value`` as a float when it is a number (see :func:`is_real`), else None."""
    if isinstance(value, (bool, str)):
        return None
    try:
        return float(cast(SupportsFloat, value))
    except (TypeError, ValueError):
        return None


def check_sigma(sigma: object) -> float:
    """sigma, the noise standard deviation for images scaled to [0, 1]: in (0, SIGMA_LIMIT]
    (:data:`SIGMA_LIMIT`; a larger value is a 0..255-units mistake). Returns it as a float."""
    value = _real(sigma)
    if value is None or not math.isfinite(value) or value <= 0:
        raise SmoothmixError(f"sigma must be a positive number in (0, {SIGMA_LIMIT:g}] (the "
                             "noise's standard deviation, for images scaled to [0, 1]), got "
                             f"{sigma!r}")
    require(value <= SIGMA_LIMIT,
            f"sigma must be in (0, {SIGMA_LIMIT:g}], got {value:g}: sigma is in pixel units of "
            "images scaled to [0, 1], not 0..255 (docs/MATH.md §1: sigma 0.5 means "
            "N(0, 0.25 I) noise)")
    return value


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """A failure probability in (0, 1): strictly between 0 and 1."""
    value = _real(alpha)
    if value is None or not 0 < value < 1:
        raise SmoothmixError(f"{name} must lie in (0, 1), strictly between 0 and 1, got "
                             f"{alpha!r}")
    return value


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (numpy integers accepted, bools and floats not)."""
    if not is_integer(value) or operator.index(cast(SupportsIndex, value)) < minimum:
        raise SmoothmixError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return operator.index(cast(SupportsIndex, value))


def check_num_classes(num_classes: object) -> int:
    """The number of classes of a classifier: an integer >= 2."""
    return check_count("num_classes", num_classes, minimum=2)


def num_classes_of(dataset: object, num_classes: object = None) -> int:
    """The classifier's number of classes for ``dataset``: ``num_classes`` when given, else
    the dataset's ``num_classes`` attribute (every :class:`smoothmix.data.ImageDataset` has
    one), checked by :func:`check_num_classes`. The one rule for every entry point."""
    if num_classes is None:
        num_classes = getattr(dataset, "num_classes", None)
        require(num_classes is not None, "num_classes not given and the dataset has none")
    return check_num_classes(num_classes)


def check_radii(radii: Iterable[object], name: str = "radii") -> list[float]:
    """A non-empty list of distinct finite radii >= 0, as floats in the given order."""
    try:
        values = [float(cast(SupportsFloat, r)) for r in radii]
    except (TypeError, ValueError):
        raise SmoothmixError(f"{name} must be numbers >= 0, got {radii!r}") from None
    require(bool(values) and all(math.isfinite(r) and r >= 0 for r in values),
            f"{name} must be finite numbers >= 0, got {values}")
    require(len(set(values)) == len(values), f"{name} repeat a value: {values}")
    return values


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of the named ``choices``."""
    require(isinstance(value, str) and value in choices,
            f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return cast(str, value)
