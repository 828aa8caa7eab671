"""The over-confidence diagnostic of docs/MATH.md §3.7 (the SmoothMix paper's motivating table).

From each test image, run SmoothMix's unrestricted search on the smoothed soft classifier
(:func:`smoothmix.methods.attacks.smoothmix_search`, the attack the training uses) and, at
every point of its path, estimate by Monte Carlo how much of the smoothed vote the true
class keeps and how much the strongest other class gathers. A well-calibrated smoothed
classifier loses confidence on the way out instead of becoming confidently wrong.

The votes are counted by the one vote counter (:meth:`smoothmix.core.Smooth.votes`): the
base classifier in eval mode as its :class:`smoothmix.execution.Execution` runs it, its mode
restored after, and a draw the noise rejects votes for no class. Each image draws its noise
(the search's draws first, then the votes at each point of its path) from its own generator
seeded by (seed, idx), as certify does (:func:`smoothmix.runner.example_generator`), so the
rows do not depend on the batch size or on the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from smoothmix.checks import check_count, is_real
from smoothmix.core import Smooth
from smoothmix.errors import require
from smoothmix.methods.attacks import smoothmix_search
from smoothmix.noise import Noise, make_noise
from smoothmix.progress import Progress

__all__ = ["VOTE_BATCH", "ConfidenceRow", "format_rows", "overconfidence", "vote_fractions"]

VOTE_BATCH = 1000
"""Noisy copies of one image in memory at once while its votes are counted."""


@dataclass(frozen=True)
class ConfidenceRow:
    """Means over the test images at one path length."""

    path_length: float  # t * step_size (the search's path length, an upper bound on ||x~ - x||)
    mean_distance: float  # measured mean ||x~ - x||_2 (the [0,1] clamp can make it shorter)
    true_class: float  # E[P_delta(f(x~ + delta) = y)]
    max_other_class: float  # E[max_{c != y} P_delta(f(x~ + delta) = c)]


def vote_fractions(model: nn.Module, x: torch.Tensor, sigma: float | Noise, num_classes: int,
                   n: int, chunk: int = VOTE_BATCH, *,
                   generators: Sequence[torch.Generator] | None = None,
                   precision: str = "fp32") -> torch.Tensor:
    """Monte-Carlo estimate of P_delta(f(x_b + delta) = c) for a batch: B x num_classes
    (float64), the votes of :meth:`smoothmix.core.Smooth.votes` on ``n`` noisy copies of each
    image (``chunk`` of them in memory at once) over ``n``; a rejected draw votes for no
    class. Image b draws from ``generators[b]`` (on the model's device; None: the global
    RNG)."""
    smooth = Smooth(model, num_classes, sigma, precision=precision)
    return _fractions(smooth, x, n, chunk, generators)


def _fractions(smooth: Smooth, x: torch.Tensor, n: int, chunk: int,
               generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    require(generators is None or len(generators) == len(x),
            f"need one generator per image, got {len(generators or [])} for {len(x)}")
    counts = [smooth.votes(image, n, chunk, None if generators is None else generators[b]).counts
              for b, image in enumerate(x)]
    return torch.stack(counts).double() / n


def overconfidence(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float | Noise,
    num_classes: int,
    *,
    step_size: float = 1.0,
    num_steps: int = 5,
    num_noise: int = 4,
    n: int = 1000,
    batch_size: int = 50,
    progress: bool = True,
    precision: str = "fp32",
    seed: int = 0,
    indices: Sequence[int] | None = None,
) -> list[ConfidenceRow]:
    """docs/MATH.md §3.7 rows for path lengths 0, step_size, ..., num_steps * step_size.

    ``images`` (N x C x H x W in [0, 1]) and ``labels`` live on the model's device; the
    search uses ``num_noise`` Gaussian draws per image (as in training) and the reported
    probabilities ``n`` fresh draws of the noise per point (``sigma``: Gaussian noise's, or a
    :class:`smoothmix.noise.Noise`, whose :meth:`~smoothmix.noise.Noise.snap` gives the point
    voted at). Image i draws from the stream (``seed``, ``indices[i]``) (default: idx = i),
    so equal arguments give equal rows whatever ``batch_size`` (images per search batch).
    ``progress``: a bar on terminals, a line at least once a minute in logs. ``precision``
    "bf16" runs every forward under bf16 autocast (the model as certified in bf16).
    """
    from smoothmix.runner import example_generator

    noise = make_noise(sigma)
    smooth = Smooth(model, num_classes, noise, precision=precision)
    require(is_real(step_size) and step_size > 0, f"step size must be > 0, got {step_size!r}")
    for name, value in (("num_steps", num_steps), ("num_noise", num_noise), ("n", n),
                        ("batch_size", batch_size)):
        check_count(name, value)
    require(images.dim() == 4 and len(images) == len(labels) and len(images) >= 1,
            f"need N x C x H x W images with N labels, got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}")
    idx = list(range(len(images))) if indices is None else [int(i) for i in indices]
    require(len(idx) == len(images), f"need one index per image, got {len(idx)} for "
            f"{len(images)} images")
    sums = torch.zeros(num_steps + 1, 3, dtype=torch.float64)
    bar = Progress(len(images), unit="img", desc="diagnose", disable=not progress)
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        generators = [example_generator(model, seed, i) for i in idx[start:start + batch_size]]
        sums += _path_sums(smooth, x, y, generators, num_noise, num_steps, step_size, n)
        bar.update(len(x))
    bar.close()
    means = (sums / len(images)).tolist()
    return [ConfidenceRow(t * step_size, d, p, q) for t, (d, p, q) in enumerate(means)]


def _path_sums(smooth: Smooth, x: torch.Tensor, y: torch.Tensor,
               generators: Sequence[torch.Generator], num_noise: int, num_steps: int,
               step_size: float, n: int) -> torch.Tensor:
    """Per path point t, the batch's sums of (distance, P(true class), max P(other class))."""
    sigma = smooth.sigma
    # The search's draws, per image from its own stream: num_noise x B x C x H x W.
    noise = torch.stack([torch.randn((num_noise, *x.shape[1:]), generator=g, device=x.device,
                                     dtype=x.dtype) for g in generators], dim=1).mul_(sigma)
    execution = smooth.execution(x.device, min(n, VOTE_BATCH))
    with execution.autocast(x.device):
        path = smoothmix_search(smooth.base_classifier, x, y, noise, num_steps, step_size)
    sums = torch.zeros(num_steps + 1, 3, dtype=torch.float64)
    for t, x_t in enumerate(path):
        x_t = smooth.noise.snap(x_t.float())
        probs = _fractions(smooth, x_t, n, VOTE_BATCH, generators).to(x.device)
        true = probs.gather(1, y.unsqueeze(1)).squeeze(1)
        other = probs.scatter(1, y.unsqueeze(1), -1.0).max(1).values
        dist = (x_t - x).flatten(1).double().norm(dim=1)
        sums[t] = torch.stack([dist.sum(), true.sum(), other.sum()]).cpu()
    return sums


def format_rows(rows: Sequence[ConfidenceRow]) -> str:
    """A markdown table of the rows (probabilities in %)."""
    lines = ["| path length | mean distance | P(true class) % | max P(other class) % |",
             "|---|---|---|---|"]
    lines += [f"| {r.path_length:g} | {r.mean_distance:.3f} | {100 * r.true_class:.1f} | "
              f"{100 * r.max_other_class:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"
