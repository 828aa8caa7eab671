"""The smoothing noise as an object: what CERTIFY, PREDICT, the pool of
:mod:`smoothmix.sequences` and the dataset runners draw around an image.

A :class:`Noise` prepares one image (:meth:`Noise.prepare`: what its draws need, checked
once), draws noisy copies of it in one of the two orders the package records
(:meth:`Noise.draw` fills a caller's buffer, CERTIFY's chunk order; :meth:`Noise.block`
returns fresh rows, the pool's per-image block order), and describes itself for a result
file's settings (:meth:`Noise.settings`). Both orders are part of the recorded streams of
earlier result files, so each noise keeps them bit-exact.

* :class:`GaussianNoise` - N(0, sigma^2 I) in floating point (Cohen et al. 2019); settings
  ``{}``, so files written before noise was an object keep their settings.
* :class:`GridGaussianNoise` - Gaussian noise rounded to the grid k / levels, sampled soundly
  from integers (:class:`smoothmix.grid.GridNoise`, Voracek & Hein 2023); settings
  ``{"grid": levels}``. Inputs must lie on the grid; a draw the sampler rejects votes for no
  class.

A third noise is one new subclass: it names the settings key that marks it (``key``), and
:meth:`Noise.from_settings` finds it among the subclasses; nothing else changes.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from smoothmix.checks import check_sigma
from smoothmix.errors import SmoothmixError, require
from smoothmix.grid import GridNoise

__all__ = ["GaussianNoise", "GridGaussianNoise", "Noise", "make_noise"]


class Noise(abc.ABC):
    """Noise around an image, drawn from a torch generator (see the module docstring)."""

    # The settings key whose presence marks this noise in a result file (None: the default).
    key: ClassVar[str | None] = None
    # Whether some inputs are refused (by prepare): a dataset run then checks its first
    # image before it writes anything.
    restricts_inputs: ClassVar[bool] = False
    _kinds: ClassVar[list[type[Noise]]] = []

    sigma: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.key is not None:
            Noise._kinds.append(cls)

    @abc.abstractmethod
    def prepare(self, x: torch.Tensor) -> Any:
        """What the draws around image ``x`` need (computed once per image); a one-line
        SmoothmixError when this noise cannot be drawn around ``x``."""

    @abc.abstractmethod
    def draw(self, prepared: Any, out: torch.Tensor, generator: torch.Generator | None
             ) -> torch.Tensor | None:
        """Fill ``out`` (rows x the image's shape) with noisy copies; return which rows were
        rejected (a bool vector), or None when this noise never rejects. CERTIFY's order:
        one buffer of the forward chunk, refilled."""

    @abc.abstractmethod
    def block(self, prepared: Any, rows: int, generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` fresh noisy copies and their rejected flags (a bool vector): the pool's
        order, fixed blocks drawn per image."""

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest input this noise accepts (an attacked point before PREDICT)."""
        return x

    @abc.abstractmethod
    def settings(self) -> dict[str, object]:
        """The keys a result file records beside ``sigma`` (none for the default noise)."""

    @classmethod
    def _from_settings(cls, sigma: float, settings: Mapping[str, object]) -> Noise:
        raise NotImplementedError

    @staticmethod
    def from_settings(sigma: float, settings: Mapping[str, object]) -> Noise:
        """The noise a result file's ``settings`` recorded (Gaussian when no noise key is
        there, as in every file written before a noise was recorded). ``sigma`` is checked as
        any sigma is (every file smoothmix wrote passes; analysis reads a file's sigma without
        building its noise, so an unusual one still analyses)."""
        for kind in Noise._kinds:
            if kind.key is not None and settings.get(kind.key) is not None:
                return kind._from_settings(sigma, settings)
        return GaussianNoise(sigma)


class GaussianNoise(Noise):
    """N(0, sigma^2 I) added in floating point."""

    def __init__(self, sigma: float) -> None:
        self.sigma = check_sigma(sigma)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def draw(self, prepared: torch.Tensor, out: torch.Tensor,
             generator: torch.Generator | None) -> None:
        out.normal_(0.0, self.sigma, generator=generator).add_(prepared)
        return None

    def block(self, prepared: torch.Tensor, rows: int, generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn((rows, *prepared.shape), generator=generator,
                            device=prepared.device, dtype=prepared.dtype)
        return noise.mul_(self.sigma).add_(prepared), torch.zeros(rows, dtype=torch.bool,
                                                                 device=prepared.device)

    def settings(self) -> dict[str, object]:
        return {}


class GridGaussianNoise(Noise):
    """Gaussian noise on the grid k / ``levels`` (255: 8-bit images), sampled soundly from
    integers, so that no base classifier can exploit float rounding of x + noise
    (docs/grid.md). Inputs must lie on the grid."""

    key = "grid"
    restricts_inputs = True

    def __init__(self, sigma: float, levels: int = 255) -> None:
        self.sigma = check_sigma(sigma)
        require(isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1,
                f"grid must be the number of levels of the input grid (255), got {levels!r}")
        self.sampler = GridNoise(self.sigma, levels)

    @classmethod
    def wrap(cls, sampler: GridNoise, sigma: float | None = None) -> GridGaussianNoise:
        """This noise around a given sampler (a test's sampler over its own law); ``sigma``
        is what radii are computed with (default: the sampler's)."""
        noise = cls.__new__(cls)
        noise.sampler = sampler
        noise.sigma = sampler.sigma if sigma is None else sigma
        return noise

    @classmethod
    def _from_settings(cls, sigma: float, settings: Mapping[str, object]) -> Noise:
        return cls(sigma, settings["grid"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"GridGaussianNoise(sigma={self.sigma}, levels={self.sampler.levels})"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.sampler.to_codes(x).contiguous()

    def draw(self, prepared: torch.Tensor, out: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        _, rejected = self.sampler.sample(prepared, len(out), generator, out=out)
        return rejected

    def block(self, prepared: torch.Tensor, rows: int, generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.sample(prepared, rows, generator)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        return self.sampler.snap(x)

    def settings(self) -> dict[str, object]:
        return {"grid": self.sampler.levels}


def make_noise(sigma: float | Noise, grid: int | None = None) -> Noise:
    """The noise of the older ``sigma`` / ``grid`` arguments: a :class:`Noise` as given,
    else :class:`GridGaussianNoise` with ``grid`` levels, else :class:`GaussianNoise`."""
    if isinstance(sigma, Noise):
        if grid is not None and sigma.settings().get("grid") != grid:
            raise SmoothmixError(f"grid={grid!r} contradicts the noise given ({sigma!r})")
        return sigma
    if isinstance(sigma, GridNoise):
        raise SmoothmixError("pass GridGaussianNoise(sigma, levels), not the sampler GridNoise")
    return GridGaussianNoise(sigma, grid) if grid is not None else GaussianNoise(sigma)
