"""What 0.5 keeps of the older :class:`smoothmix.core.Smooth` API, for one minor version."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from smoothmix.grid import GridNoise
from smoothmix.noise import GridGaussianNoise, Noise

if TYPE_CHECKING:
    from smoothmix.votes import Votes

__all__ = ["SmoothAliases"]


class SmoothAliases:
    """``Smooth.grid`` and ``Smooth.sample_counts``, as they were before noise was an
    object and votes a record."""

    noise: Noise

    def votes(self, x: torch.Tensor, num: int, batch_size: int,
              generator: torch.Generator | None = None, *, watch: int | None = None,
              need: int | None = None) -> Votes:
        raise NotImplementedError

    @property
    def grid(self) -> GridNoise | None:
        """The sampler of grid noise, else None (prefer ``noise``). Setting a sampler makes
        it the noise, at the same sigma (tests give their own integer laws this way)."""
        return self.noise.sampler if isinstance(self.noise, GridGaussianNoise) else None

    @grid.setter
    def grid(self, sampler: GridNoise) -> None:
        self.noise = GridGaussianNoise.wrap(sampler, self.noise.sigma)

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int,
                      generator: torch.Generator | None, watch: int | None = None,
                      need: int | None = None, *, with_rejected: bool = False
                      ) -> tuple[torch.Tensor, int]:
        """Deprecated (0.5): ``Smooth.votes``, whose :class:`smoothmix.votes.Votes` names the
        rejected draws. Returns (counts, drawn), counts with the rejected draws appended as
        slot num_classes when ``with_rejected``."""
        warnings.warn("Smooth.sample_counts is deprecated; use Smooth.votes (a Votes record) "
                      "or Smooth._sample_noise", DeprecationWarning, stacklevel=2)
        votes = self.votes(x, num, batch_size, generator, watch=watch, need=need)
        counts = votes.counts
        if with_rejected:
            counts = torch.cat([counts, votes.rejected.reshape(1)])
        return counts, votes.drawn
